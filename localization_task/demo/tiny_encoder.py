"""A tiny random-init Dinov2 saved to disk: the demo's encoder, and the tests'.

Loading it with `HeatmapLocalizer.from_encoder(folder)` runs the same
`from_pretrained` path as a hub model, offline and in seconds.
"""
from __future__ import annotations

from pathlib import Path

import torch
from transformers import Dinov2Config, Dinov2Model
from transformers.models.bit.image_processing_pil_bit import BitImageProcessorPil


def build_tiny_dinov2(
    folder: str | Path,
    input_size_px: int = 56,
    patch_size: int = 8,
    hidden_size: int = 32,
    seed: int = 0,
) -> Path:
    """Save a tiny random-init Dinov2 (2 layers, 2 heads) and its image processor config.

    Loading it with `HeatmapLocalizer.from_encoder(folder)` runs the same
    `from_pretrained` path as the hub model, offline and in seconds. The mean
    and std differ from ImageNet's so that reading them can be checked.
    """
    folder = Path(folder)
    config = Dinov2Config(
        hidden_size=hidden_size,
        num_hidden_layers=2,
        num_attention_heads=2,
        mlp_ratio=2,
        image_size=input_size_px,
        patch_size=patch_size,
    )
    torch.manual_seed(seed)
    Dinov2Model(config).save_pretrained(folder)
    BitImageProcessorPil(
        size={"height": input_size_px, "width": input_size_px},
        do_center_crop=False,
        image_mean=[0.53, 0.53, 0.53],
        image_std=[0.26, 0.26, 0.26],
    ).save_pretrained(folder)
    return folder
