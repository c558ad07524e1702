"""The Hugging Face hub: the token, load failures in one sentence, pretrained radiograph encoders.

HF_TOKEN comes from the environment or a `.env` file and is only handed to
`from_pretrained`: it is never printed or written. A failed load (unknown id or
folder, no access, no network, not a model) becomes a DataError naming what
could not be loaded and the flag to fix. Encoders, told apart by their
config's `model_type`: Dinov2 (`microsoft/rad-dino`), SigLIP vision
checkpoints (`google/medsiglip-448`: its vision half) and the SigLIP tower of a
Gemma 3 checkpoint (MedGemma's own; the language model is dropped).
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path

import torch
from dotenv import load_dotenv
from transformers import (
    AutoImageProcessor,
    AutoModel,
    AutoModelForImageTextToText,
    PretrainedConfig,
    PreTrainedModel,
    SiglipVisionModel,
)

from .errors import DataError

def hub_token() -> str | None:
    """HF_TOKEN from the environment or a `.env` file; never printed or stored."""
    load_dotenv()
    return os.environ.get("HF_TOKEN") or None


@contextmanager
def explained_load_errors(source: str | Path, flag: str, adapter: str | None = None):
    """from_pretrained failures as one sentence that names `source` (and `adapter`) and the `flag` to check."""
    try:
        yield
    except (OSError, ValueError) as err:  # ValueError: a folder or config that holds no known model
        reason = str(err).strip().splitlines()[0] if str(err).strip() else err.__class__.__name__
        what = repr(str(source)) + (f" with adapter {adapter!r}" if adapter else "")
        raise DataError(f"could not load {what} ({reason}); check {flag} (a hub id or a local folder), and for "
                        "a gated hub model set HF_TOKEN in .env after accepting its licence.") from None


def checkpoint_model_type(source: str | Path, flag: str) -> str:
    """The `model_type` in a checkpoint's config.json (hub id or folder), without building anything."""
    with explained_load_errors(source, flag):
        config_dict, _ = PretrainedConfig.get_config_dict(str(source), token=hub_token())
    return config_dict.get("model_type", "")


def load_pretrained_encoder(source: str | Path, flag: str) -> PreTrainedModel:
    """The encoder of a Dinov2 or SigLIP checkpoint, or the SigLIP tower of a Gemma 3 one, in float32.

    Anything else is refused with a DataError naming `flag` and the checkpoint's model type.
    """
    source = str(source)
    model_type = checkpoint_model_type(source, flag)
    with explained_load_errors(source, flag):
        if model_type == "dinov2":
            return AutoModel.from_pretrained(source, dtype=torch.float32, token=hub_token())
        if model_type in ("siglip", "siglip_vision_model"):  # a full SigLIP checkpoint: its vision half
            return SiglipVisionModel.from_pretrained(source, dtype=torch.float32, token=hub_token())
        if model_type == "gemma3":
            # The stored dtype (bf16 for MedGemma) keeps the soon-dropped language model small.
            full = AutoModelForImageTextToText.from_pretrained(source, dtype="auto", token=hub_token())
            tower = full.model.vision_tower
            del full
            return tower.to(torch.float32)
    raise DataError(f"{flag} {source!r} is a {model_type!r} model; it must be a Dinov2, SigLIP or Gemma 3 "
                    "checkpoint (e.g. microsoft/rad-dino).")


def load_image_processor(source: str | Path):
    """The checkpoint's image processor (its mean and std are used), or None when it has none."""
    try:
        return AutoImageProcessor.from_pretrained(str(source), token=hub_token())
    except (OSError, ValueError):
        return None
