"""Heatmap geometry and training targets for the keypoint localizer.

Coordinates are pixel indices: pixel (i, j) has its centre at x = i, y = j and
covers [i - 0.5, i + 0.5). Resizing by a factor s maps x to (x + 0.5) * s - 0.5,
the half-pixel alignment that OpenCV's resize uses, so resized pixels and
mapped coordinates agree.

Three frames, one `Letterbox` per image to move between them:

    original  the radiograph as read, width_px x height_px
    input     the square model input of input_size_px: the original resized
              keeping its aspect to fit, then padded with black at the bottom
              and right, so the image keeps the top-left corner and the
              padding never shifts a coordinate
    heatmap   the model output, input_size_px // stride cells a side; one
              cell spans input_size_px / heatmap_size input pixels (exactly
              the stride when it divides the input size)

Targets are CenterNet-style Gaussians (the nearest cell of each keypoint is
exactly 1.0, every other cell is below 1), for the penalty-reduced focal loss
in `trainer.py`; `peaks.py` decodes heatmaps back into keypoints.
"""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

# The largest float32 below 1: every cell but a keypoint's own stays under it,
# so `target >= 1` finds exactly one positive cell per keypoint.
_BELOW_ONE = np.nextafter(np.float32(1.0), np.float32(0.0))


# --- geometry ---------------------------------------------------------------


def heatmap_size(input_size_px: int, stride: int) -> int:
    """Cells per side of the heatmap for a square input and an output stride."""
    if input_size_px < stride or stride < 1:
        raise ValueError(f"input size {input_size_px} px is too small for stride {stride}.")
    return input_size_px // stride


def _rescale(xy: np.ndarray, scale_xy) -> np.ndarray:
    """Map pixel-index coordinates through a resize by `scale_xy` (half-pixel aligned)."""
    return (np.asarray(xy, dtype=np.float64) + 0.5) * np.asarray(scale_xy, dtype=np.float64) - 0.5


def input_to_heatmap(xy_in, input_size_px: int, stride: int) -> np.ndarray:
    """Input pixels -> heatmap cells, with the exact scale heatmap_size / input_size_px."""
    return _rescale(xy_in, heatmap_size(input_size_px, stride) / input_size_px)


def heatmap_to_input(xy_hm, input_size_px: int, stride: int) -> np.ndarray:
    """Heatmap cells -> input pixels (inverse of `input_to_heatmap`)."""
    return _rescale(xy_hm, input_size_px / heatmap_size(input_size_px, stride))


@dataclass(frozen=True)
class Letterbox:
    """How one original image sits in the square model input (resized, padded bottom/right)."""

    width_px: int
    height_px: int
    input_size_px: int
    resized_width_px: int
    resized_height_px: int

    def __post_init__(self) -> None:
        if min(self.width_px, self.height_px, self.resized_width_px, self.resized_height_px) < 1:
            raise ValueError(f"image sizes must be positive, got {self}.")
        if max(self.resized_width_px, self.resized_height_px) > self.input_size_px:
            raise ValueError(f"the resized image does not fit the input of {self.input_size_px} px.")

    @classmethod
    def for_image(cls, width_px: int, height_px: int, input_size_px: int) -> Letterbox:
        """The letterbox that fits a width_px x height_px image into input_size_px, aspect kept."""
        scale = input_size_px / max(width_px, height_px)
        return cls(
            width_px=width_px,
            height_px=height_px,
            input_size_px=input_size_px,
            resized_width_px=min(input_size_px, max(1, round(width_px * scale))),
            resized_height_px=min(input_size_px, max(1, round(height_px * scale))),
        )

    @property
    def scale_xy(self) -> np.ndarray:
        # Per axis, because rounding the resized sizes makes the two scales differ slightly.
        return np.array(
            [self.resized_width_px / self.width_px, self.resized_height_px / self.height_px]
        )

    def to_input(self, xy_px) -> np.ndarray:
        """Original pixels (..., 2) -> input pixels."""
        return _rescale(xy_px, self.scale_xy)

    def to_original(self, xy_in) -> np.ndarray:
        """Input pixels (..., 2) -> original pixels."""
        return _rescale(xy_in, 1.0 / self.scale_xy)

    def in_image(self, xy_in) -> np.ndarray:
        """Which input-pixel points (..., 2) fall on the resized image rather than the padding."""
        xy_in = np.asarray(xy_in, dtype=np.float64)
        size = np.array([self.resized_width_px, self.resized_height_px])
        return np.all((xy_in >= -0.5) & (xy_in <= size - 0.5), axis=-1)


def letterbox_image(grey_uint8: np.ndarray, box: Letterbox) -> np.ndarray:
    """Resize a (height, width) grey image into the box's square input, black padding bottom/right."""
    if grey_uint8.shape != (box.height_px, box.width_px):
        raise ValueError(
            f"image of shape {grey_uint8.shape} does not match the letterbox "
            f"{box.width_px} x {box.height_px} px (width x height)."
        )
    size = (box.resized_width_px, box.resized_height_px)
    shrinking = box.resized_width_px < box.width_px
    # Area averaging when shrinking avoids aliasing the fine texture of a 2k radiograph.
    interpolation = cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR
    resized = cv2.resize(grey_uint8, size, interpolation=interpolation)
    canvas = np.zeros((box.input_size_px, box.input_size_px), dtype=grey_uint8.dtype)
    canvas[: box.resized_height_px, : box.resized_width_px] = resized
    return canvas


# --- targets ----------------------------------------------------------------


def sigma_hm_from_frac(sigma_frac: float, input_size_px: int, stride: int) -> float:
    """Gaussian sigma in heatmap cells for a sigma given as a fraction of the input side."""
    if sigma_frac <= 0:
        raise ValueError(f"sigma_frac must be positive, got {sigma_frac}.")
    return sigma_frac * heatmap_size(input_size_px, stride)


def gaussian_heatmap(points_hm, size_hm: int | tuple[int, int], sigma_hm: float) -> np.ndarray:
    """(H, W) float32 target in [0, 1]: the maximum of one Gaussian per keypoint.

    Each Gaussian is centred on the sub-cell keypoint; the keypoint's nearest
    cell is then set to exactly 1.0 and all others stay below 1, so a
    keypoint always yields one positive cell for `focal_heatmap_loss`.
    Keypoints outside the grid are ignored; no keypoints give all zeros.
    """
    height, width = (size_hm, size_hm) if isinstance(size_hm, int) else size_hm
    if sigma_hm <= 0:
        raise ValueError(f"sigma_hm must be positive, got {sigma_hm}.")
    points = np.asarray(points_hm, dtype=np.float64).reshape(-1, 2)
    cells = np.floor(points + 0.5).astype(np.int64)
    inside = np.all((cells >= 0) & (cells < [width, height]), axis=1)
    points, cells = points[inside], cells[inside]
    target = np.zeros((height, width), dtype=np.float32)
    if len(points) == 0:
        return target
    xs = np.arange(width)[None, None, :] - points[:, 0, None, None]
    ys = np.arange(height)[None, :, None] - points[:, 1, None, None]
    gaussians = np.exp(-(xs**2 + ys**2) / (2.0 * sigma_hm**2)).max(axis=0)
    target[:] = np.minimum(gaussians, _BELOW_ONE)
    target[cells[:, 1], cells[:, 0]] = 1.0
    return target
