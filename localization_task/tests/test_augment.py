"""Augmentations move keypoints with the pixels, flip only on request, and are reproducible."""
from __future__ import annotations

import numpy as np
import pytest

from localization_task.heatmap.augment import train_augmentation

HEIGHT_PX, WIDTH_PX = 128, 160


def image_with_dot(xy_px, sigma_px: float = 2.5) -> np.ndarray:
    ys, xs = np.mgrid[:HEIGHT_PX, :WIDTH_PX]
    dot = np.exp(-((xs - xy_px[0]) ** 2 + (ys - xy_px[1]) ** 2) / (2 * sigma_px**2))
    # A dim background, so brightness and gamma changes act on more than the dot.
    return np.round(40 + 200 * dot).astype(np.uint8)


def dot_centroid(image: np.ndarray, radius: int = 7) -> np.ndarray:
    """Intensity centroid above the background around the brightest pixel."""
    signal = np.clip(image.astype(float) - np.median(image), 0, None)
    y0, x0 = np.unravel_index(np.argmax(signal), signal.shape)
    ys, xs = np.mgrid[y0 - radius : y0 + radius + 1, x0 - radius : x0 + radius + 1]
    window = signal[y0 - radius : y0 + radius + 1, x0 - radius : x0 + radius + 1]
    return np.array([(xs * window).sum(), (ys * window).sum()]) / window.sum()


@pytest.mark.parametrize("flip", [False, True])
def test_dot_and_keypoint_move_together(flip):
    augment = train_augmentation(flip=flip, seed=3)
    dot_px = (61.3, 70.6)
    image = image_with_dot(dot_px)
    moved = 0
    for sample_seed in range(12):
        out_image, out_points = augment(image, [dot_px], sample_seed=sample_seed)
        assert out_image.shape == image.shape and out_image.dtype == np.uint8
        assert out_points.shape == (1, 2)
        # Tight enough to catch a half-pixel convention mismatch.
        assert np.linalg.norm(dot_centroid(out_image) - out_points[0]) < 0.3
        moved += np.linalg.norm(out_points[0] - dot_px) > 1.0
    assert moved >= 6  # the augmentation does move things


def test_flip_only_with_the_flag():
    dot_px = (30.0, 64.0)  # mirrored, it would sit near x = 129
    image = image_with_dot(dot_px)

    def right_half_count(flip: bool) -> int:
        augment = train_augmentation(flip=flip, seed=0)
        points = [augment(image, [dot_px], sample_seed=s)[1][0] for s in range(20)]
        return sum(x > WIDTH_PX / 2 for x, _ in points)

    assert right_half_count(flip=False) == 0
    assert 0 < right_half_count(flip=True) < 20


def test_keypoints_pushed_off_the_image_are_dropped():
    augment = train_augmentation(seed=1)
    image = image_with_dot((80.0, 64.0))
    kept = [len(augment(image, [[0.2, 64.0], [80.0, 64.0]], sample_seed=s)[1]) for s in range(20)]
    assert min(kept) == 1 and max(kept) == 2
    _, none = augment(image, np.zeros((0, 2)), sample_seed=0)
    assert none.shape == (0, 2)


def test_same_seeds_give_the_same_augmentation():
    image = image_with_dot((70.0, 50.0))
    first, second = train_augmentation(flip=True, seed=5), train_augmentation(flip=True, seed=5)
    for sample_seed in (0, 7, 7, 123):
        a_image, a_points = first(image, [[70.0, 50.0]], sample_seed=sample_seed)
        b_image, b_points = second(image, [[70.0, 50.0]], sample_seed=sample_seed)
        np.testing.assert_array_equal(a_image, b_image)
        np.testing.assert_array_equal(a_points, b_points)
    # Without a sample seed, the same stream from the same seed.
    stream_a = [first(image, [[70.0, 50.0]])[1] for _ in range(3)]
    stream_b = [second(image, [[70.0, 50.0]])[1] for _ in range(3)]
    np.testing.assert_array_equal(stream_a, stream_b)
    other = first(image, [[70.0, 50.0]], sample_seed=8)[1]
    assert not np.array_equal(other, first(image, [[70.0, 50.0]], sample_seed=7)[1])
