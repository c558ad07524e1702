"""The Localizer interface every backend implements, the types they share, and the backends by name.

inference.py reads each radiograph once (grey, per-image percentile stretch to
8 bits, original size) and hands the localizer a batch of them as
`ImageInput`s; the localizer answers with one `ImagePrediction` per image, in
order: keypoints (x, y, confidence) in original pixels and, for models that
answer in text, the raw answer and the boxes drawn. A backend may yield each
prediction as soon as it is done: inference saves it before asking for the
next, so an interrupted run keeps it. Any model that fits `Localizer.predict`
plugs in.

Backends, by name (`--backend`):

    heatmap     the keypoint localizer trained by train.py (heatmap/predictor.py),
                batched; needs the main environment (peft, transformers 5)
    chexagent2  CheXagent-2 zero-shot (chexagent2/backend.py), one image at a time;
                needs its own environment (transformers 4.40.0)

Each is imported only when asked for, so each environment imports only what
it has. A backend module provides `from_config(config) -> Localizer` and
`prediction_settings(config) -> dict` (what its cached predictions depend on),
`config` being inference.py's `InferenceConfig`.
"""
from __future__ import annotations

import importlib
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from types import ModuleType
from typing import Any, Protocol

import numpy as np


class BackendUnavailable(RuntimeError):
    """The backend cannot run here; the message says what to do, in one sentence."""


@dataclass(frozen=True)
class ImageInput:
    """One radiograph as every backend gets it: read, stretched to 8 bits, at its original size."""

    file_name: str  # relative to --input_dir, posix
    grey_uint8: np.ndarray  # (height_px, width_px) after the per-image percentile stretch

    @property
    def width_px(self) -> int:
        return int(self.grey_uint8.shape[1])

    @property
    def height_px(self) -> int:
        return int(self.grey_uint8.shape[0])


@dataclass(frozen=True)
class Keypoint:
    """A nodule centre in original pixels and how sure the model is of it, in [0, 1]."""

    x_px: float
    y_px: float
    confidence: float


@dataclass
class ImagePrediction:
    response: str = ""  # raw model answer ("" for models that do not answer in text)
    boxes: list[Any] = field(default_factory=list)  # a grounding model's boxes (dataclasses)
    points: list[Keypoint] = field(default_factory=list)

    def to_record(self, file_name: str, width_px: int, height_px: int) -> dict:
        """One line of predictions.jsonl."""
        return {
            "file_name": file_name,
            "width": width_px,
            "height": height_px,
            "response": self.response,
            "boxes": [asdict(box) for box in self.boxes],
            "points": [{"x": p.x_px, "y": p.y_px, "confidence": p.confidence} for p in self.points],
        }


class Localizer(Protocol):
    """Anything that finds nodules on pre-processed radiographs, a batch at a time."""

    def predict(self, images: Sequence[ImageInput]) -> Iterable[ImagePrediction]:
        """One prediction per image, in order (a generator may yield each as it is done)."""
        ...


@dataclass(frozen=True)
class Backend:
    module: str  # imported on use, with the packages of its environment
    environment: str  # where it runs, for the sentence shown when it cannot be imported
    python: str  # the interpreter to rerun with


BACKENDS: dict[str, Backend] = {
    "heatmap": Backend("localization_task.heatmap.predictor", "the main environment",
                       "the main environment's python, not .venv-chexagent2's"),
    "chexagent2": Backend("localization_task.chexagent2.backend", "its own environment",
                          ".venv-chexagent2/bin/python (see localization_task/chexagent2/requirements.txt)"),
}


def names() -> tuple[str, ...]:
    """The backends `--backend` accepts, as registered now."""
    return tuple(BACKENDS)


def backend_module(name: str) -> ModuleType:
    """The module of backend `name`; BackendUnavailable when this environment cannot import it."""
    backend = BACKENDS[name]
    try:
        return importlib.import_module(backend.module)
    except ImportError as error:
        raise BackendUnavailable(
            f"--backend {name} needs {backend.environment} ({error}): run it with {backend.python}."
        ) from None


def build_localizer(name: str, config) -> Localizer:
    """Backend `name`, built from inference.py's config (this loads its model)."""
    return backend_module(name).from_config(config)


def prediction_settings(name: str, config) -> dict:
    """What backend `name`'s predictions depend on: a resumed run must match it."""
    return backend_module(name).prediction_settings(config)
