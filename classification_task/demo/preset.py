"""The classification demo: its settings, and its data and tiny model, made on first use.

    python classification_task/train.py --demo                      # tiny MedGemma, plain LoRA, CPU, minutes
    python classification_task/train.py --demo --model_kind encoder # tiny Dinov2 classifier, CPU, minutes

A small, learnable problem that finishes on a 2-core CPU in minutes: synthetic
radiographs (synthetic.py, 30 % with a nodule) and a tiny random-init model
(tiny_model.py).
"""
from __future__ import annotations

from pathlib import Path

from classification_task.common.errors import DataError

# Demo-only choices: plain LoRA in fp32 (no 4-bit on a random tiny model), a
# higher learning rate for a random base, and pos_weight 1 because the demo
# data has 30 % positives and the balanced sampler already makes batches 50/50.
# Flags that --demo changes; any flag given explicitly still wins.
DEMO_DEFAULTS = dict(
    data_root="data/demo", model_id="checkpoints/tiny-medgemma", output_dir="outputs/demo",
    checkpoint_dir="checkpoints/demo", quantization="none", gradient_checkpointing=False,
    batch_size=8, grad_accum=1, eval_batch_size=16, learning_rate=1e-3, max_steps=600, eval_steps=150,
    max_grad_norm=1.0, pos_weight=1.0, logging_steps=20, num_workers=0, bootstrap=200, lora_alpha=32,
)
# `--demo --model_kind encoder`: the same data, a tiny random-init Dinov2 trained in full.
ENCODER_DEMO_DEFAULTS = DEMO_DEFAULTS | dict(
    model_id="checkpoints/tiny-dinov2-classifier", output_dir="outputs/demo_encoder",
    checkpoint_dir="checkpoints/demo_encoder", encoder_mode="full", learning_rate=1e-3,
)
ENCODER_DEMO_INPUT_PX = 112


def demo_defaults(argv: list[str]) -> dict:
    """The encoder demo's defaults when the command line asks for --model_kind encoder, else the MedGemma demo's."""
    flags = " ".join(argv).replace("=", " ").split()
    wants_encoder = any(a == "--model_kind" and b == "encoder" for a, b in zip(flags, flags[1:]))
    return ENCODER_DEMO_DEFAULTS if wants_encoder else DEMO_DEFAULTS


def prepare_demo(config) -> None:
    """Write the synthetic data into config.data_root and the tiny model into config.model_id, each if missing."""
    from classification_task.demo.synthetic import generate_dataset
    from classification_task.demo.tiny_model import save_tiny_dinov2, save_tiny_medgemma

    if not (Path(config.data_root) / "classification_labels.csv").is_file():
        try:
            generate_dataset(config.data_root, n_images=800, positive_rate=0.3, size_px=256, seed=0)
        except FileExistsError:
            raise DataError(f"{config.data_root} exists but holds no demo data; remove it or pass another "
                            "--data_root.") from None
    if not (Path(config.model_id) / "config.json").is_file():
        if config.model_kind == "encoder":
            save_tiny_dinov2(config.model_id, ENCODER_DEMO_INPUT_PX, patch_size_px=8, hidden=64)
        else:
            save_tiny_medgemma(config.model_id)
