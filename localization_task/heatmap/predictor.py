"""Folder inference with a trained heatmap localizer: batched, with real peak confidences.

Images go through the same pre-processing as in training (percentile
stretch, letterbox to the model input, normalisation), in batches and in
data-loader workers; each image's peaks above `min_confidence` (by default
the threshold tuned on validation and stored with the checkpoint) become its
keypoints, in original pixels, each with its peak value as confidence.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pandas as pd

from localization_task.dataset import DataError
from localization_task.heatmap.peaks import iter_peaks
from localization_task.heatmap.model import HeatmapLocalizer
from localization_task.common.processes import process_device
from localization_task.dataset import HeatmapDataset, ItemSettings

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


def predict_records(model: HeatmapLocalizer, paths: list[Path], names: list[str], min_confidence: float,
                    max_points: int, batch_size: int, num_workers: int, clip_pct: tuple[float, float],
                    on_unreadable: Callable[[str, str], None]) -> Iterator[dict]:
    """predictions.jsonl records, batch after batch, for the images `paths` (named `names`)."""
    c = model.config
    settings = ItemSettings(c.input_size_px, c.stride, 1.0, tuple(c.image_mean), tuple(c.image_std), *clip_pct)
    frame = pd.DataFrame({"file_name": names, "path": [str(p) for p in paths], "label": 0,
                          "points_px": [np.zeros((0, 2))] * len(names)})
    dataset = HeatmapDataset(frame, settings, skip_unreadable=True)
    for result in iter_peaks(model, dataset, batch_size, max_points, num_workers, desc="images"):
        for index, reason in result["skipped"]:
            on_unreadable(names[index], reason)
        for row, index in enumerate(result["index"]):
            peaks = result["peaks"][row]
            peaks = peaks[~np.isnan(peaks[:, 2]) & (peaks[:, 2] >= min_confidence)]
            width, height = (int(v) for v in result["box"][row][:2])
            yield {"file_name": names[index], "width": width, "height": height, "response": "", "boxes": [],
                   "points": [{"x": float(x), "y": float(y), "confidence": float(conf)} for x, y, conf in peaks]}
