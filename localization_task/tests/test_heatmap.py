"""Heatmap geometry, targets and decoding on synthetic data."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from localization_task.heatmap.peaks import Peak, decode_peaks, peaks_to_original, refine_peak
from localization_task.heatmap.targets import (
    Letterbox, gaussian_heatmap, heatmap_size, heatmap_to_input, input_to_heatmap, letterbox_image,
    sigma_hm_from_frac,
)
from localization_task.localizers import Keypoint

WIDTH_PX, HEIGHT_PX = 2022, 1800  # non-square, like a cropped LIDC image
INPUT_PX, STRIDE = 518, 4


def corner_and_middle_points(width_px: int, height_px: int) -> np.ndarray:
    w, h = width_px - 1, height_px - 1
    return np.array([[0, 0], [w, 0], [0, h], [w, h], [w / 2, h / 2], [1234.5, 321.25]])


def draw_dot(shape: tuple[int, int], xy_px, sigma_px: float) -> np.ndarray:
    """A bright Gaussian dot on black, uint8."""
    ys, xs = np.mgrid[: shape[0], : shape[1]]
    dot = np.exp(-((xs - xy_px[0]) ** 2 + (ys - xy_px[1]) ** 2) / (2 * sigma_px**2))
    return np.round(255 * dot).astype(np.uint8)


def centroid_near(image: np.ndarray, xy, radius: int) -> np.ndarray:
    x0, y0 = np.round(xy).astype(int)
    window = image[y0 - radius : y0 + radius + 1, x0 - radius : x0 + radius + 1].astype(float)
    ys, xs = np.mgrid[y0 - radius : y0 + radius + 1, x0 - radius : x0 + radius + 1]
    return np.array([(xs * window).sum(), (ys * window).sum()]) / window.sum()


# --- geometry ---------------------------------------------------------------


def test_letterbox_fits_long_side_and_keeps_aspect():
    box = Letterbox.for_image(WIDTH_PX, HEIGHT_PX, INPUT_PX)
    assert box.resized_width_px == INPUT_PX
    assert box.resized_height_px == round(HEIGHT_PX * INPUT_PX / WIDTH_PX)
    tall = Letterbox.for_image(300, 1000, 100)
    assert (tall.resized_width_px, tall.resized_height_px) == (30, 100)


def test_round_trip_original_input_heatmap_within_a_pixel():
    box = Letterbox.for_image(WIDTH_PX, HEIGHT_PX, INPUT_PX)
    points_px = corner_and_middle_points(WIDTH_PX, HEIGHT_PX)
    xy_in = box.to_input(points_px)
    xy_hm = input_to_heatmap(xy_in, INPUT_PX, STRIDE)
    assert np.all(xy_hm >= -0.5) and np.all(xy_hm < heatmap_size(INPUT_PX, STRIDE) - 0.5)
    back_in = heatmap_to_input(xy_hm, INPUT_PX, STRIDE)
    np.testing.assert_allclose(back_in, xy_in, atol=1e-9)
    np.testing.assert_allclose(box.to_original(back_in), points_px, atol=1e-6)
    assert box.in_image(xy_in).all()


def test_heatmap_scale_is_exact_when_stride_does_not_divide():
    assert heatmap_size(518, 4) == 129
    # The far edge of the input maps onto the far edge of the heatmap.
    np.testing.assert_allclose(input_to_heatmap([517.5, 517.5], 518, 4), [128.5, 128.5])
    np.testing.assert_allclose(input_to_heatmap([-0.5, -0.5], 518, 4), [-0.5, -0.5])


def test_drawn_dot_lands_where_the_mapped_keypoint_says():
    box = Letterbox.for_image(WIDTH_PX, HEIGHT_PX, INPUT_PX)
    dot_px = np.array([1500.3, 400.7])
    image = draw_dot((HEIGHT_PX, WIDTH_PX), dot_px, sigma_px=12.0)
    letterboxed = letterbox_image(image, box)
    assert letterboxed.shape == (INPUT_PX, INPUT_PX) and letterboxed.dtype == np.uint8
    assert letterboxed[box.resized_height_px :].max() == 0  # padding stays black
    expected_in = box.to_input(dot_px)
    np.testing.assert_allclose(centroid_near(letterboxed, expected_in, radius=8), expected_in, atol=0.5)


def test_letterbox_image_enlarges_small_images_and_checks_shape():
    box = Letterbox.for_image(40, 30, 64)
    image = draw_dot((30, 40), (25.0, 10.0), sigma_px=2.0)
    letterboxed = letterbox_image(image, box)
    np.testing.assert_allclose(centroid_near(letterboxed, box.to_input([25.0, 10.0]), 6),
                               box.to_input([25.0, 10.0]), atol=0.5)
    with pytest.raises(ValueError, match="does not match"):
        letterbox_image(image.T, box)


# --- targets ----------------------------------------------------------------


def test_gaussian_heatmap_peaks_at_the_nearest_cell():
    points_hm = np.array([[10.4, 20.6], [40.0, 5.0], [3.5, 3.49]])
    target = gaussian_heatmap(points_hm, (32, 48), sigma_hm=2.0)
    assert target.shape == (32, 48) and target.dtype == np.float32
    assert target.min() >= 0 and target.max() == 1.0
    positives = np.argwhere(target >= 1.0)
    assert sorted(map(tuple, positives)) == [(3, 4), (5, 40), (21, 10)]  # (row, col), round half up


def test_gaussian_heatmap_one_positive_even_with_a_wide_sigma():
    target = gaussian_heatmap([[7.3, 7.8]], 16, sigma_hm=500.0)
    assert (target >= 1.0).sum() == 1 and target[8, 7] == 1.0


def test_gaussian_heatmap_empty_and_outside_points():
    assert not gaussian_heatmap(np.zeros((0, 2)), 8, 1.0).any()
    assert not gaussian_heatmap([[-3.0, 2.0], [8.6, 1.0]], 8, 1.0).any()


def test_sigma_from_fraction_of_the_input():
    assert sigma_hm_from_frac(0.01, 518, 4) == pytest.approx(1.29)
    with pytest.raises(ValueError):
        sigma_hm_from_frac(0.0, 518, 4)


# --- decoding ---------------------------------------------------------------


def test_encode_decode_round_trip_non_square_image():
    box = Letterbox.for_image(WIDTH_PX, HEIGHT_PX, INPUT_PX)
    points_px = np.array([[300.0, 250.0], [1500.5, 900.2], [1800.0, 1600.0]])
    size_hm = heatmap_size(INPUT_PX, STRIDE)
    points_hm = input_to_heatmap(box.to_input(points_px), INPUT_PX, STRIDE)
    target = gaussian_heatmap(points_hm, size_hm, sigma_hm=2.0)
    (peaks,) = decode_peaks(target, max_points=5, min_confidence=0.5)
    assert len(peaks) == 3
    found_hm = np.array(sorted((p.x_hm, p.y_hm) for p in peaks))
    np.testing.assert_allclose(found_hm, points_hm, atol=0.5)
    keypoints = peaks_to_original(peaks, box, STRIDE)
    found_px = np.array(sorted((k.x_px, k.y_px) for k in keypoints))
    cell_px = WIDTH_PX / size_hm
    assert np.abs(found_px - points_px).max() < cell_px
    assert all(k.confidence == 1.0 for k in keypoints)


def test_refinement_recovers_an_off_grid_gaussian():
    ys, xs = np.mgrid[:20, :20]
    heatmap = 0.9 * np.exp(-((xs - 7.3) ** 2 + (ys - 11.8) ** 2) / (2 * 1.7**2))
    x, y = refine_peak(heatmap, 7, 12)
    assert (x, y) == pytest.approx((7.3, 11.8), abs=1e-6)
    (peaks,) = decode_peaks(torch.from_numpy(heatmap)[None, None])
    assert peaks[0].x_hm == pytest.approx(7.3, abs=1e-4)
    assert peaks[0].confidence == pytest.approx(heatmap[12, 7])


def test_decoding_respects_max_points_and_min_confidence():
    heatmap = np.zeros((2, 1, 16, 16), dtype=np.float32)
    values = [0.9, 0.8, 0.7, 0.5, 0.2]
    for i, value in enumerate(values):
        heatmap[0, 0, 2, 1 + 3 * i] = value
    heatmap[1, 0, 5, 5] = 0.25
    decoded = decode_peaks(heatmap, max_points=3, min_confidence=0.3)
    assert [p.confidence for p in decoded[0]] == pytest.approx([0.9, 0.8, 0.7])
    assert decoded[1] == []
    all_above = decode_peaks(heatmap, max_points=10, min_confidence=0.3)[0]
    assert [p.confidence for p in all_above] == pytest.approx([0.9, 0.8, 0.7, 0.5])
    assert decode_peaks(heatmap, max_points=0)[0] == []


def test_nms_keeps_one_peak_per_blob_and_refines_border_peaks():
    ys, xs = np.mgrid[:16, :16]
    blob = np.exp(-((xs - 8) ** 2 + (ys - 8) ** 2) / 8.0)
    (peaks,) = decode_peaks(blob, max_points=5, min_confidence=0.1)
    assert len(peaks) == 1 and (peaks[0].x_hm, peaks[0].y_hm) == pytest.approx((8, 8))
    corner = np.zeros((8, 8)); corner[0, 0], corner[0, 1] = 1.0, 0.5
    (peaks,) = decode_peaks(corner, min_confidence=0.1)
    assert peaks == [Peak(0.0, 0.0, 1.0)]
    with pytest.raises(ValueError, match="odd"):
        decode_peaks(corner, nms_kernel=2)


def test_peaks_in_the_padding_are_dropped():
    box = Letterbox.for_image(200, 100, 64)  # padding below row 32 of the input
    inside = Peak(4.0, 4.0, 0.9)
    in_padding = Peak(4.0, 12.0, 0.8)  # input row ~50
    keypoints = peaks_to_original([inside, in_padding], box, stride=4)
    assert len(keypoints) == 1 and isinstance(keypoints[0], Keypoint)
    assert keypoints[0].confidence == 0.9
    assert peaks_to_original([], box, 4) == []
