"""Training and scoring items of the heatmap localizer: letterboxed, normalised images and Gaussian targets.

Rows of a labelled frame (columns path, label, points_px; see
dataset.load_localization_data) become model inputs with the per-image
percentile stretch of dataset.py, the letterbox of targets.py and the
encoder's normalisation, plus their heatmap targets; `evaluation_rows` picks
the rows a split is scored on.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import torch
from torch.utils.data import Dataset

from localization_task.dataset import DEFAULT_CLIP_HIGH_PCT, DEFAULT_CLIP_LOW_PCT, UnreadableImage, read_stretched
from localization_task.heatmap.targets import (
    Letterbox, gaussian_heatmap, heatmap_size, input_to_heatmap, letterbox_image,
)
from localization_task.split import KEYPOINTED, NEGATIVE, image_kinds

if TYPE_CHECKING:  # a type only: importing it needs albumentations
    from localization_task.heatmap.augment import KeypointAugmentation


def pixel_values_from_grey(grey_uint8: np.ndarray, image_mean, image_std) -> torch.Tensor:
    """Letterboxed grey uint8 images (S, S) or (B, S, S) -> normalised (B, 3, S, S) float32."""
    images = np.asarray(grey_uint8, dtype=np.float32) / 255.0
    if images.ndim == 2:
        images = images[None]
    if images.ndim != 3:
        raise ValueError(f"expected (S, S) or (B, S, S) grey images, got shape {images.shape}.")
    # NumPy, not torch: this runs per image in data-loader workers, where torch's
    # thread pool makes such small operations slow.
    mean = np.asarray(image_mean, dtype=np.float32).reshape(1, 3, 1, 1)
    std = np.asarray(image_std, dtype=np.float32).reshape(1, 3, 1, 1)
    return torch.from_numpy((images[:, None] - mean) / std)


@dataclass(frozen=True)
class ItemSettings:
    """How images become model inputs and targets; saved with the model so inference matches."""

    input_size_px: int
    stride: int
    sigma_hm: float
    image_mean: tuple[float, ...]
    image_std: tuple[float, ...]
    clip_low_pct: float = DEFAULT_CLIP_LOW_PCT  # the percentile stretch of every image
    clip_high_pct: float = DEFAULT_CLIP_HIGH_PCT


def box_tensor(box: Letterbox) -> torch.Tensor:
    """A letterbox as 5 numbers, so it survives batching and gathering across processes."""
    return torch.tensor([box.width_px, box.height_px, box.input_size_px,
                         box.resized_width_px, box.resized_height_px], dtype=torch.float64)


def box_from_tensor(values) -> Letterbox:
    return Letterbox(*(int(v) for v in values))


class HeatmapDataset(Dataset):
    """Items of a labelled frame (columns path, label, points_px) for training or evaluation."""

    def __init__(self, frame: pd.DataFrame, settings: ItemSettings,
                 augmentation: KeypointAugmentation | None = None, seed: int = 0,
                 skip_unreadable: bool = False):
        self.paths = frame["path"].tolist()
        self.file_names = frame["file_name"].tolist() if "file_name" in frame else self.paths
        self.points_px = [np.asarray(p, dtype=np.float64).reshape(-1, 2) for p in frame["points_px"]]
        self.labels = frame["label"].to_numpy(dtype=np.int64)
        self.kinds = image_kinds(self.labels, [len(p) for p in self.points_px])
        self.settings = settings
        self.augmentation = augmentation
        self.seed, self.epoch = seed, 0
        self.skip_unreadable = skip_unreadable  # one unreadable file must not end a long run

    def set_epoch(self, epoch: int) -> None:
        """Augmentations depend on (seed, epoch, index) only: resumed runs draw the same ones."""
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> dict:
        s = self.settings
        try:
            grey = read_stretched(self.paths[index], s.clip_low_pct, s.clip_high_pct)
        except UnreadableImage as err:
            if not self.skip_unreadable:
                raise
            return {"index": index, "unreadable": err.reason}
        box = Letterbox.for_image(grey.shape[1], grey.shape[0], s.input_size_px)
        image = letterbox_image(grey, box)
        points_in = box.to_input(self.points_px[index])
        if self.augmentation is not None:
            sample_seed = int(np.random.SeedSequence([self.seed, self.epoch, index]).generate_state(1)[0])
            image, points_in = self.augmentation(image, points_in, sample_seed=sample_seed)
        size_hm = heatmap_size(s.input_size_px, s.stride)
        target = gaussian_heatmap(input_to_heatmap(points_in, s.input_size_px, s.stride), size_hm, s.sigma_hm)
        return {
            "pixel_values": pixel_values_from_grey(image, s.image_mean, s.image_std)[0],
            "target": torch.from_numpy(target)[None],
            "kind": int(self.kinds[index]),
            "image_label": float(self.labels[index]),
            "index": index,
            "box": box_tensor(box),
        }


def collate(items: list[dict]) -> dict:
    """Stack the readable items of a batch; unreadable ones pass through as (index, reason)."""
    skipped = [(item["index"], item["unreadable"]) for item in items if "unreadable" in item]
    items = [item for item in items if "unreadable" not in item]
    batch = {key: torch.stack([item[key] for item in items]) if items else torch.zeros(0)
             for key in ("pixel_values", "target", "box")}
    batch["kind"] = torch.tensor([item["kind"] for item in items], dtype=torch.long)
    batch["image_label"] = torch.tensor([item["image_label"] for item in items], dtype=torch.float32)
    batch["index"] = torch.tensor([item["index"] for item in items], dtype=torch.long)
    if skipped:
        batch["skipped"] = skipped
    return batch


def evaluation_rows(frame: pd.DataFrame, max_negatives: int | None, seed: int = 0) -> pd.DataFrame:
    """The rows a split is scored on: every keypointed image plus (a seeded sample of) negatives.

    Nodule images without keypoints are left out: their true number of
    nodules is unknown, so no localization metric can be computed on them.
    Column `weight`: 1, except that each sampled negative stands for
    (negatives in the split) / (negatives sampled), so metrics on a sample
    keep the split's own share of negatives.
    """
    kinds = image_kinds(frame["label"], [len(p) for p in frame["points_px"]])
    negatives = np.flatnonzero(kinds == NEGATIVE)
    n_negatives = len(negatives)
    if max_negatives is not None and len(negatives) > max_negatives:
        negatives = np.sort(np.random.default_rng(seed).choice(negatives, max_negatives, replace=False))
    keep = np.sort(np.concatenate([np.flatnonzero(kinds == KEYPOINTED), negatives]))
    rows = frame.iloc[keep].reset_index(drop=True)
    negative_weight = n_negatives / len(negatives) if len(negatives) else 1.0
    return rows.assign(weight=np.where(kinds[keep] == NEGATIVE, negative_weight, 1.0))
