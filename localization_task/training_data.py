"""Training items for the heatmap localizer: pre-processed image, Gaussian target, image label.

One item per image row (see `dataset.load_localization_data`): the radiograph
goes through the same percentile contrast stretch as inference, is
letterboxed into the square model input, augmented in training (keypoints
move with the pixels), normalised for the encoder, and paired with its
Gaussian target heatmap. Each item also carries its kind (keypointed, weak,
negative), its image label and its letterbox, so the loss and the evaluation
need nothing else.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from PIL import Image
from torch.utils.data import Dataset

from localization_task.augment import KeypointAugmentation
from localization_task.dataset import DataError, percentile_clip_to_uint8, to_grey_array
from localization_task.heatmap import Letterbox, gaussian_heatmap, heatmap_size, input_to_heatmap, letterbox_image
from localization_task.model import pixel_values_from_grey
from localization_task.sampling import KEYPOINTED, NEGATIVE, image_kinds


@dataclass(frozen=True)
class ItemSettings:
    """How images become model inputs and targets; saved with the model so inference matches."""

    input_size_px: int
    stride: int
    sigma_hm: float
    image_mean: tuple[float, ...]
    image_std: tuple[float, ...]
    clip_low_pct: float = 0.5
    clip_high_pct: float = 99.5


class UnreadableImage(DataError):
    """An image file that cannot be decoded; `reason` says why."""

    def __init__(self, path: str, reason: str):
        super().__init__(f"image {path} cannot be read ({reason}); replace it or remove its rows from the label CSVs.")
        self.reason = reason


def read_stretched(path: str) -> np.ndarray:
    """Any radiograph file -> (height, width) uint8 after the per-image percentile stretch."""
    try:
        with Image.open(path) as image:
            image.load()
            grey = to_grey_array(image)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as err:
        raise UnreadableImage(path, f"{type(err).__name__}: {err}") from None
    return percentile_clip_to_uint8(grey)


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
            grey = read_stretched(self.paths[index])
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
    """
    kinds = image_kinds(frame["label"], [len(p) for p in frame["points_px"]])
    negatives = np.flatnonzero(kinds == NEGATIVE)
    if max_negatives is not None and len(negatives) > max_negatives:
        negatives = np.sort(np.random.default_rng(seed).choice(negatives, max_negatives, replace=False))
    keep = np.sort(np.concatenate([np.flatnonzero(kinds == KEYPOINTED), negatives]))
    return frame.iloc[keep].reset_index(drop=True)
