"""The encoder classifier's rows for bench_train.py and bench_classify.py.

Its own code end to end: `encoder_model.new_classifier` on a saved encoder,
`NoduleTrainer` with the encoder's collator and logits, `train.training_arguments`
(bf16 autocast and fused AdamW on a GPU, activation checkpointing only there),
effective batch 16; scoring through `encoder_model.score_batches` on a folder
written by `save_classifier`. CPU: the encoder demo's tiny Dinov2 (112 px).
GPU: the RAD-DINO architecture (Dinov2 ViT-B/14 at 518 px) with random weights,
no download.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import torch
from transformers import Dinov2Config, Dinov2Model
from transformers.trainer_callback import PrinterCallback

from benchmarks.common import NO_GPU, timed
from benchmarks.models import synthetic_images
from classification_task.classifiers import batch_collator, logits_function
from classification_task.encoder.model import load_classifier, new_classifier, save_classifier, score_batches
from classification_task.demo.tiny_model import save_tiny_dinov2
from classification_task.demo.preset import ENCODER_DEMO_INPUT_PX
from classification_task.train import TrainConfig, training_arguments
from classification_task.trainer import NoduleTrainer

EFFECTIVE_BATCH = 16
MODEL_CPU, MODEL_GPU = "encoder, tiny Dinov2", "encoder, RAD-DINO ViT-B/14"


def tiny_encoder(folder: Path) -> tuple[Path, int]:
    return save_tiny_dinov2(folder, ENCODER_DEMO_INPUT_PX, patch_size_px=8, hidden=64), ENCODER_DEMO_INPUT_PX


def rad_dino_architecture(folder: Path) -> tuple[Path, int]:
    """microsoft/rad-dino's architecture and input size with random weights."""
    torch.manual_seed(0)
    Dinov2Model(Dinov2Config(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, mlp_ratio=4,
                             image_size=518, patch_size=14)).save_pretrained(folder)
    return folder, 518


class InMemoryImages(torch.utils.data.Dataset):
    """Pre-processed synthetic images at the model's size, alternating labels (the loader is measured elsewhere)."""

    def __init__(self, n: int, size_px: int):
        self.items, self.labels = synthetic_images(n, size_px), np.arange(n) % 2

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict:
        return {"image": self.items[index]["image"], "label": int(self.labels[index])}


def train_row(encoder: Path, size_px: int, mode: str, micro_batch: int, steps: int, tmp: Path, clock) -> dict:
    config = TrainConfig(model_id=str(encoder), model_kind="encoder", encoder_mode=mode,
                         checkpoint_dir=str(tmp / "enc_ckpt"), batch_size=micro_batch,
                         grad_accum=EFFECTIVE_BATCH // micro_batch, max_steps=steps, sampler="random",
                         num_workers=2 if torch.cuda.is_available() else 0)
    args = dataclasses.replace(training_arguments(config), eval_strategy="no", save_strategy="no",
                               load_best_model_at_end=False, report_to="none", logging_strategy="no",
                               disable_tqdm=True)
    model = new_classifier(str(encoder), mode)
    trainer = NoduleTrainer(model=model, args=args, train_dataset=InMemoryImages(EFFECTIVE_BATCH * steps, size_px),
                            data_collator=batch_collator(model, None), callbacks=[clock], answer_ids=None,
                            logits_fn=logits_function(model, None), pos_weight=1.0, focal_gamma=0.0,
                            sampler="random")
    trainer.remove_callback(PrinterCallback)
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    trainer.train()
    return {"setup": f"ours, encoder {mode}", "micro_batch": micro_batch,
            "accumulation": EFFECTIVE_BATCH // micro_batch, "checkpointing": args.activation_checkpointing,
            "samples_per_s": EFFECTIVE_BATCH / float(np.median(np.diff(clock.ends))),
            "peak_gib": torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else None}


def encoder_train_rows(steps: int, tmp: Path, clock_class) -> list[dict]:
    """CPU: the tiny encoder trained in full (the demo's mode); GPU: RAD-DINO, LoRA and full (or placeholders)."""
    encoder, size_px = tiny_encoder(tmp / "tiny_dinov2_cls")
    rows = [{"device": "CPU", "model": MODEL_CPU, **train_row(encoder, size_px, "full", 16, steps, tmp, clock_class())}]
    if not torch.cuda.is_available():
        return rows + [{"device": "GPU", "model": MODEL_GPU, "setup": f"ours, encoder {mode}",
                        "samples_per_s": NO_GPU} for mode in ("lora", "full")]
    encoder, size_px = rad_dino_architecture(tmp / "rad_dino_cls")
    return rows + [{"device": "GPU", "model": MODEL_GPU, **train_row(encoder, size_px, mode, 16, steps, tmp,
                                                                     clock_class())} for mode in ("lora", "full")]


def score_rows(encoder: Path, size_px: int, n_images: int, batches: list[int], device: str, name: str,
               tmp: Path) -> list[dict]:
    """Images/s of the saved classifier (bf16 encoder on a GPU) at each batch size, best of two rounds."""
    folder = save_classifier(new_classifier(str(encoder), "lora"), tmp / f"saved_{size_px}")
    model = load_classifier(folder)
    images = synthetic_images(n_images, size_px)
    rows = []
    for batch in batches:
        seconds = []
        for _ in range(2):
            if torch.cuda.is_available():
                torch.cuda.reset_peak_memory_stats()
            seconds.append(timed(lambda: [p for _, p, _ in score_batches(model, images, batch)])[0])
        peak = torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else None
        rows.append({"device": device, "model": name, "setup": "ours, encoder", "batch": batch,
                     "img_per_s": n_images / min(seconds), "peak_gib": peak})
    return rows


def encoder_score_rows(n_images: int, gpu_images: int, batches: list[int], tmp: Path) -> list[dict]:
    encoder, size_px = tiny_encoder(tmp / "tiny_dinov2_score")
    rows = score_rows(encoder, size_px, n_images, batches, "CPU", MODEL_CPU, tmp)
    if not torch.cuda.is_available():
        return rows + [{"device": "GPU", "model": MODEL_GPU, "setup": "ours, encoder", "batch": batch,
                        "img_per_s": NO_GPU} for batch in batches]
    encoder, size_px = rad_dino_architecture(tmp / "rad_dino_score")
    return rows + score_rows(encoder, size_px, gpu_images, batches, "GPU", MODEL_GPU, tmp)
