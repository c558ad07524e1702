"""The heatmap localizer's training speed, for `bench_train.py --task localizer`.

Its own code end to end: `localization_task.train`'s model builder, item
settings and training arguments, `HeatmapDataset` (stretch, letterbox,
augmentation, Gaussian targets) and `HeatmapTrainer`, on synthetic radiographs
written to disk. CPU: the demo's tiny Dinov2 trained in full. GPU: the
RAD-DINO architecture (Dinov2 ViT-B/14 at 518 px) with random weights and LoRA,
at train.py's defaults. There is no reference row: the reference localizer was
zero-shot.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image
from transformers import Dinov2Config, Dinov2Model
from transformers.models.bit.image_processing_pil_bit import BitImageProcessorPil
from transformers.trainer_callback import PrinterCallback

from benchmarks.common import NO_GPU
from localization_task.heatmap.augment import train_augmentation
from localization_task.demo.tiny_encoder import build_tiny_dinov2
from localization_task.demo.preset import DEMO_DEFAULTS
from localization_task.train import TrainConfig, build_model, item_settings, training_arguments
from localization_task.heatmap.trainer import HeatmapTrainer
from localization_task.heatmap.data import HeatmapDataset, collate

MODEL_CPU, MODEL_GPU = "heatmap, tiny Dinov2", "heatmap, RAD-DINO ViT-B/14"


def synthetic_frame(folder: Path, n: int, size_px: int = 256, seed: int = 0) -> pd.DataFrame:
    """Images with one keypoint (a third), nodule images without keypoints, and negatives."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        path = folder / f"{i:05d}.png"
        Image.fromarray(rng.integers(0, 255, (size_px, size_px), dtype=np.uint8)).save(path)
        kind = i % 3
        points = [[float(rng.uniform(40, size_px - 40)), float(rng.uniform(40, size_px - 40))]] if kind == 0 else []
        rows.append({"path": str(path), "label": int(kind < 2), "points_px": points})
    return pd.DataFrame(rows)


def save_rad_dino_architecture(folder: Path) -> Path:
    """microsoft/rad-dino's architecture and input size with random weights (no download)."""
    config = Dinov2Config(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, mlp_ratio=4,
                          image_size=518, patch_size=14)
    torch.manual_seed(0)
    Dinov2Model(config).save_pretrained(folder)
    BitImageProcessorPil(size={"height": 518, "width": 518}, do_center_crop=False).save_pretrained(folder)
    return folder


def measure(config: TrainConfig, frame: pd.DataFrame, clock) -> dict:
    model = build_model(config)
    args = dataclasses.replace(training_arguments(config), eval_strategy="no", save_strategy="no",
                               load_best_model_at_end=False, logging_strategy="no", disable_tqdm=True)
    trainer = HeatmapTrainer(
        model=model, args=args, data_collator=collate, callbacks=[clock],
        train_dataset=HeatmapDataset(frame, item_settings(config, model), train_augmentation(False, 0)),
        weak_weight=config.weak_weight, weak_per_keypointed=config.weak_per_keypointed,
        negatives_per_keypointed=config.negatives_per_keypointed, max_points=config.max_points)
    trainer.remove_callback(PrinterCallback)
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    trainer.train()
    effective_batch = config.batch_size * config.grad_accum
    return {"setup": f"ours, encoder {config.encoder_mode}", "micro_batch": config.batch_size,
            "accumulation": config.grad_accum, "checkpointing": config.gradient_checkpointing,
            "samples_per_s": effective_batch / float(np.median(np.diff(clock.ends))),
            "peak_gib": torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else None}


def localizer_rows(steps: int, tmp: Path, clock_class) -> list[dict]:
    """One CPU row (tiny, the demo's settings) and one GPU row (or its placeholder)."""
    demo = {k: v for k, v in DEMO_DEFAULTS.items() if k not in ("data_root", "output_dir")}
    encoder = build_tiny_dinov2(tmp / "tiny_dinov2", input_size_px=128, patch_size=8, hidden_size=64)
    cpu = TrainConfig(**{**demo, "encoder": str(encoder), "checkpoint_dir": str(tmp / "loc_ckpt"),
                         "max_steps": steps})
    frame = synthetic_frame(tmp / "loc_images", 3 * cpu.batch_size * cpu.grad_accum * steps)
    rows = [{"device": "CPU", "model": MODEL_CPU, **measure(cpu, frame, clock_class())}]
    if not torch.cuda.is_available():
        return rows + [{"device": "GPU", "model": MODEL_GPU, "setup": "ours, encoder lora",
                        "samples_per_s": NO_GPU}]
    gpu = TrainConfig(encoder=str(save_rad_dino_architecture(tmp / "rad_dino")), max_steps=steps,
                      checkpoint_dir=str(tmp / "loc_ckpt_gpu"))
    frame = synthetic_frame(tmp / "loc_images_gpu", 3 * gpu.batch_size * gpu.grad_accum * steps, size_px=1024)
    return rows + [{"device": "GPU", "model": MODEL_GPU, **measure(gpu, frame, clock_class())}]
