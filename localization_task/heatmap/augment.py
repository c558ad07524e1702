"""Training augmentations for the heatmap localizer that move keypoints with the pixels.

Built from albumentations, so the geometry of image and keypoints comes from
one place: a small affine jitter (scale, shift, rotation), brightness,
contrast and gamma, and a horizontal flip only when asked for (a radiograph
is not left-right symmetric, so flipping is a choice, not a default).
Keypoints are (x, y) pixel indices; those pushed off the image are dropped.

Reproducible: the same seed gives the same sequence of augmentations, and
passing `sample_seed` makes one call depend on nothing but
(seed, sample_seed), so a resumed run or another worker order draws the same
augmentation for the same sample and epoch.
"""
from __future__ import annotations

import albumentations as A
import cv2
import numpy as np

SCALE_RANGE = (0.9, 1.1)
TRANSLATE_FRAC = 0.05  # of the image side, either way
ROTATE_DEG = 7.0


class KeypointAugmentation:
    """`augment(image_uint8, points_xy, sample_seed=None) -> (image_uint8, points_xy)`."""

    def __init__(self, transforms: list, seed: int = 0) -> None:
        self.seed = seed
        self._compose = A.Compose(
            transforms,
            keypoint_params=A.KeypointParams(format="xy", remove_invisible=True),
            seed=seed,
        )

    def __call__(
        self, image_uint8: np.ndarray, points_xy, sample_seed: int | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        if sample_seed is not None:
            self._compose.set_random_seed(_mixed_seed(self.seed, sample_seed))
        points = np.asarray(points_xy, dtype=np.float32).reshape(-1, 2)
        out = self._compose(image=image_uint8, keypoints=points)
        return out["image"], np.asarray(out["keypoints"], dtype=np.float32).reshape(-1, 2)


def _mixed_seed(seed: int, sample_seed: int) -> int:
    """One 32-bit seed from two, without the collisions of seed + sample_seed."""
    return int(np.random.SeedSequence([seed, sample_seed]).generate_state(1)[0])


def train_augmentation(flip: bool = False, seed: int = 0) -> KeypointAugmentation:
    """The training augmentation; `flip` adds a horizontal flip with probability 0.5."""
    transforms = [
        A.Affine(
            scale=SCALE_RANGE,
            translate_percent=(-TRANSLATE_FRAC, TRANSLATE_FRAC),
            rotate=(-ROTATE_DEG, ROTATE_DEG),
            interpolation=cv2.INTER_LINEAR,
            border_mode=cv2.BORDER_CONSTANT,
            fill=0,  # black, like the letterbox padding
            p=0.8,
        ),
        A.RandomBrightnessContrast(brightness_limit=0.1, contrast_limit=0.15, p=0.5),
        A.RandomGamma(gamma_limit=(85, 115), p=0.5),
    ]
    if flip:
        transforms.append(A.HorizontalFlip(p=0.5))
    return KeypointAugmentation(transforms, seed=seed)
