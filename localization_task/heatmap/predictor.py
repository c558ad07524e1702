"""The trained heatmap localizer behind the Localizer interface: one forward pass per batch.

Each image (already read and stretched by inference.py, with the stretch the
model was trained with) is letterboxed and normalised as in training; its peaks
from `min_confidence` up (by default the threshold tuned on validation and
stored with the checkpoint) become its keypoints, in original pixels, each
with its peak value as confidence.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from localization_task.common.processes import process_device
from localization_task.dataset import DataError
from localization_task.heatmap.data import box_tensor, pixel_values_from_grey
from localization_task.heatmap.model import HeatmapLocalizer
from localization_task.heatmap.peaks import batch_peaks
from localization_task.heatmap.targets import Letterbox, letterbox_image
from localization_task.localizers import ImageInput, ImagePrediction, Keypoint

DEFAULT_MIN_CONFIDENCE = 0.3  # for a checkpoint without a tuned threshold


def load_localizer(checkpoint: str | Path, device: str = "auto") -> HeatmapLocalizer:
    """A `best_model/` folder written by train.py, on --device: by default this process's GPU
    (cuda:LOCAL_RANK) when there is one."""
    try:
        device = process_device(device)
    except ValueError as error:
        raise DataError(str(error)) from None
    folder = Path(checkpoint)
    if not (folder / "config.json").is_file() or not (folder / "model.safetensors").is_file():
        raise DataError(f"--checkpoint {folder} holds no trained localizer (config.json and model.safetensors); "
                        "pass the best_model folder that localization_task/train.py wrote.")
    try:
        model = HeatmapLocalizer.from_pretrained(folder)
    except (OSError, ValueError) as err:
        raise DataError(f"--checkpoint {folder} could not be loaded ({str(err).splitlines()[0]}); "
                        "pass a best_model folder written by this version of train.py.") from None
    return model.to(device).eval()


def min_confidence_of(model: HeatmapLocalizer, asked: float | None, operating_point: str = "count") -> float:
    """The threshold asked for, else the one tuned on validation for `operating_point`
    ("count": count accuracy, what the challenge ranks; "f1"), else a default. Says which."""
    if asked is not None:
        print(f"keeping peaks at confidence >= {asked:g} (--min_confidence)")
        return asked
    tuned = getattr(model.config, f"min_confidence_{operating_point}")
    if tuned is None:
        print(f"the checkpoint has no tuned threshold: keeping peaks at confidence >= {DEFAULT_MIN_CONFIDENCE:g}")
        return DEFAULT_MIN_CONFIDENCE
    goal = "count accuracy" if operating_point == "count" else "F1"
    print(f"operating point {operating_point!r}: keeping peaks at confidence >= {float(tuned):g} "
          f"(tuned on validation for {goal})")
    return float(tuned)


def checkpoint_signature(checkpoint: str | Path) -> list:
    """The folder and its weights' size and time: retraining into it invalidates cached predictions."""
    weights = Path(checkpoint) / "model.safetensors"
    stat = weights.stat() if weights.is_file() else None
    return [str(Path(checkpoint).resolve()), stat.st_size if stat else None, stat.st_mtime_ns if stat else None]


class HeatmapPredictor:
    """A trained `HeatmapLocalizer` keeping the peaks at `min_confidence` and above, at most `max_points`."""

    def __init__(self, model: HeatmapLocalizer, min_confidence: float, max_points: int):
        self.model, self.min_confidence, self.max_points = model, min_confidence, max_points

    def predict(self, images: Sequence[ImageInput]) -> list[ImagePrediction]:
        if not images:
            return []
        c = self.model.config
        boxes = [Letterbox.for_image(image.width_px, image.height_px, c.input_size_px) for image in images]
        inputs = np.stack([letterbox_image(image.grey_uint8, box) for image, box in zip(images, boxes)])
        peaks = batch_peaks(self.model, pixel_values_from_grey(inputs, c.image_mean, c.image_std),
                            torch.stack([box_tensor(box) for box in boxes]), self.max_points)
        kept = [rows[~np.isnan(rows[:, 2]) & (rows[:, 2] >= self.min_confidence)] for rows in peaks]
        return [ImagePrediction(points=[Keypoint(float(x), float(y), float(conf)) for x, y, conf in rows])
                for rows in kept]


# --- the registry's entry points (localizers.py) -------------------------------


def from_config(config) -> HeatmapPredictor:
    """The checkpoint of inference.py's config on its device, with the threshold asked for or tuned."""
    model = load_localizer(config.checkpoint, config.device)
    min_confidence = min_confidence_of(model, config.min_confidence, config.operating_point)
    return HeatmapPredictor(model, min_confidence, config.max_points)


def prediction_settings(config) -> dict:
    """What the heatmap's predictions depend on: the trained weights, the threshold, the stretch."""
    return {"checkpoint": checkpoint_signature(config.checkpoint), "min_confidence": config.min_confidence,
            "operating_point": config.operating_point, "max_points": config.max_points,
            "clip_pct": [config.clip_low_pct, config.clip_high_pct]}
