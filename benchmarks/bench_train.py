"""Training speed and peak GPU memory at effective batch 16: the reference settings against ours.

    python -m benchmarks.bench_train [--steps 4] [--variants all] [--out PATH]
    python -m benchmarks.bench_train --task localizer     # the heatmap localizer's training

Every setup trains QLoRA (4-bit NF4 base, LoRA r=16 on all linear layers,
class-weighted answer loss) with the project's own `NoduleTrainer` and
`train.training_arguments` (bf16 and fused AdamW on a GPU), on synthetic images
held in memory, at effective batch 16:
  reference     micro-batch 4 x 4 accumulation, gradient checkpointing, and the
                loss read from logits over the whole vocabulary at every position;
  ours          the loss from the two answer logits only (`logits_to_keep`), with
                the micro-batch and checkpointing choices listed per row.
The first optimizer step is a warm-up; samples/s come from the median duration
of the steps after it (robust to other work on a shared machine).
CPU rows: the tiny test model, a sanity check of the code path. GPU rows: the
full-size MedGemma 1.5 4B architecture with random weights (no download).
The encoder classifier's rows follow (benchmarks/encoder_classifier.py): a tiny
Dinov2 on the CPU, the RAD-DINO architecture at 518 px on a GPU, LoRA and full.
Targets on the GPU: ours >= 3x the reference's samples/s at <= 22 GB peak.
"""

from __future__ import annotations

import dataclasses
import gc
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

os.environ.setdefault("TQDM_DISABLE", "1")  # before tqdm's import (torch imports it)

import numpy as np
import torch
from torch.utils.data import Dataset
from transformers import TrainerCallback
from transformers.trainer_callback import PrinterCallback

from benchmarks.common import NO_GPU, format_table, machine_line, sync, write_record
from benchmarks.models import full_size_model_folders, synthetic_images, tiny_model_folders
from classification_task.common import cli
from classification_task.model import (
    PromptCollator, add_lora, answer_positions, answer_token_ids, load_base_model, load_processor, lora_config,
    model_dtype,
)
from classification_task.train import TrainConfig, training_arguments
from classification_task.trainer import NoduleTrainer, answer_loss

EFFECTIVE_BATCH = 16
# name: (micro-batch, gradient checkpointing, answer logits only)
SETUPS = {
    "reference": (4, True, False),
    "ours 4x4 ckpt": (4, True, True),
    "ours 8x2 ckpt": (8, True, True),
    "ours 16x1 ckpt": (16, True, True),
    "ours 4x4 no ckpt": (4, False, True),
    "ours 8x2 no ckpt": (8, False, True),
    "ours 16x1 no ckpt": (16, False, True),
}
CPU_SETUPS = ("reference", "ours 4x4 ckpt", "ours 16x1 no ckpt")
COLUMNS = ["device", "model", "setup", "micro_batch", "accumulation", "checkpointing", "samples_per_s",
           "peak_gib", "vs_reference"]


@dataclass
class TrainBenchConfig:
    task: Literal["classifier", "localizer"] = cli.arg("classifier", "which model's training to measure")
    steps: int = cli.arg(6, "optimizer steps per setup, the first a warm-up")
    variants: str = cli.arg("all", f"setups to run on the GPU, comma-separated, from: {', '.join(SETUPS)}")
    work_dir: str | None = cli.arg(None, "where the models are saved (the full-size one takes ~9 GB)")
    out: str | None = cli.arg(None, "JSON record of the run (default: outputs/benchmarks/train_<task>.json)")

    def __post_init__(self) -> None:
        if self.steps < 2:
            raise ValueError("--steps must be at least 2: one warm-up step and one measured.")
        unknown = set(self.gpu_setups) - set(SETUPS)
        if unknown:
            raise ValueError(f"unknown --variants {sorted(unknown)}; choose from {', '.join(SETUPS)}.")

    @property
    def gpu_setups(self) -> list[str]:
        return list(SETUPS) if self.variants == "all" else ["reference", *self.variants.split(",")]


class InMemoryImages(Dataset):
    """Pre-processed synthetic images with alternating labels (the loader is measured elsewhere)."""

    def __init__(self, n: int, size_px: int):
        self.items = synthetic_images(n, size_px)
        self.labels = np.arange(n) % 2

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict:
        return {"image": self.items[index]["image"], "label": int(self.labels[index])}


class ReferenceTrainer(NoduleTrainer):
    """The reference's loss: a plain forward pass (logits for every position and vocabulary entry),
    then the two answer letters read at the answer position."""

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        labels = inputs["labels"]
        inputs = {k: v for k, v in inputs.items() if k != "labels"}
        inputs["pixel_values"] = inputs["pixel_values"].to(model_dtype(model))
        logits = model(**inputs).logits
        rows = torch.arange(logits.shape[0], device=logits.device)
        answer = logits[rows, answer_positions(inputs["attention_mask"])][:, self.answer_ids]
        loss = answer_loss(answer, labels, self.pos_weight, self.focal_gamma)
        return (loss, answer) if return_outputs else loss


class StepClock(TrainerCallback):
    """The time at the end of every optimizer step, GPU work included."""

    def __init__(self):
        self.ends: list[float] = []

    def on_step_end(self, args, state, control, **kwargs):
        sync()
        self.ends.append(time.perf_counter())


def train_setup(base: Path, setup: str, steps: int, size_px: int, tmp: Path) -> dict:
    micro_batch, checkpointing, answer_only = SETUPS[setup]
    config = TrainConfig(model_id=str(base), checkpoint_dir=str(tmp / "ckpt"), batch_size=micro_batch,
                         grad_accum=EFFECTIVE_BATCH // micro_batch, gradient_checkpointing=checkpointing,
                         max_steps=steps, num_workers=2 if torch.cuda.is_available() else 0, sampler="random")
    args = dataclasses.replace(training_arguments(config), eval_strategy="no", save_strategy="no",
                               load_best_model_at_end=False, report_to="none", logging_strategy="no",
                               disable_tqdm=True)
    processor = load_processor(str(base))
    model = add_lora(load_base_model(str(base), "nf4"), lora_config())
    clock = StepClock()
    trainer_class = NoduleTrainer if answer_only else ReferenceTrainer
    trainer = trainer_class(model=model, args=args, train_dataset=InMemoryImages(EFFECTIVE_BATCH * steps, size_px),
                            data_collator=PromptCollator(processor), callbacks=[clock],
                            answer_ids=answer_token_ids(processor.tokenizer), pos_weight=20.0, focal_gamma=0.0,
                            sampler="random")
    trainer.remove_callback(PrinterCallback)  # the table says it all
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    trainer.train()
    samples_per_s = EFFECTIVE_BATCH / float(np.median(np.diff(clock.ends)))
    peak = torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else None
    return {"setup": setup, "micro_batch": micro_batch, "accumulation": EFFECTIVE_BATCH // micro_batch,
            "checkpointing": checkpointing, "samples_per_s": samples_per_s, "peak_gib": peak}


def run_setups(base: Path, setups, steps: int, size_px: int, device: str, name: str, tmp: Path) -> list[dict]:
    rows = []
    for setup in setups:
        try:
            row = train_setup(base, setup, steps, size_px, tmp)
        except torch.cuda.OutOfMemoryError:
            micro_batch, checkpointing, _ = SETUPS[setup]
            row = {"setup": setup, "micro_batch": micro_batch, "accumulation": EFFECTIVE_BATCH // micro_batch,
                   "checkpointing": checkpointing, "samples_per_s": "out of memory"}
        gc.collect()  # the model of the setup, also after an out-of-memory error
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        rows.append({"device": device, "model": name, **row})
    reference = rows[0]["samples_per_s"]
    for row in rows:
        if isinstance(row["samples_per_s"], float):
            row["vs_reference"] = row["samples_per_s"] / reference
    return rows


def gpu_placeholders(setups) -> list[dict]:
    return [{"device": "GPU", "model": "full-size 4.3B", "setup": setup, "micro_batch": SETUPS[setup][0],
             "accumulation": EFFECTIVE_BATCH // SETUPS[setup][0], "checkpointing": SETUPS[setup][1],
             "samples_per_s": NO_GPU} for setup in setups]


def headline(rows: list[dict]) -> str:
    parts = []
    for device in ("CPU", "GPU"):
        ours = [r for r in rows if r["device"] == device and r["setup"] != "reference"
                and isinstance(r["samples_per_s"], float) and (r.get("peak_gib") or 0) <= 22]
        if not ours:
            parts.append(f"{device}: {NO_GPU if device == 'GPU' else 'no measured row'}")
            continue
        best = max(ours, key=lambda r: r["samples_per_s"])
        if "vs_reference" not in best:  # the localizer has no reference
            parts.append(f"{device} ({best['model']}): {best['samples_per_s']:.1f} samples/s")
            continue
        text = (f"{device} ({best['model']}): ours {best['vs_reference']:.2f}x the reference's samples/s "
                f"({best['setup']})")
        if best.get("peak_gib") is not None:
            text += f", peak {best['peak_gib']:.1f} GiB"
        parts.append(text)
    return "training: " + "; ".join(parts)


def encoder_headline(rows: list[dict]) -> str:
    parts = [f"{r['device']} {r['setup'].removeprefix('ours, ')} "
             + (f"{r['samples_per_s']:.1f} samples/s" if isinstance(r["samples_per_s"], float) else r["samples_per_s"])
             for r in rows]
    return "encoder classifier: " + ", ".join(parts)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    config = cli.parse(TrainBenchConfig, __doc__, argv)
    if config is None:
        return 2
    print(machine_line())
    with tempfile.TemporaryDirectory(dir=config.work_dir) as tmp:
        if config.task == "localizer":  # the heatmap localizer: benchmarks/localizer_training.py
            from benchmarks.localizer_training import localizer_rows

            rows = localizer_rows(config.steps, Path(tmp), StepClock)
        else:
            base, _ = tiny_model_folders(Path(tmp) / "tiny")
            rows = run_setups(base, CPU_SETUPS, config.steps, 112, "CPU", "tiny", Path(tmp))
            if torch.cuda.is_available():
                base, _ = full_size_model_folders(Path(tmp) / "full")
                rows += run_setups(base, config.gpu_setups, config.steps, 896, "GPU", "full-size 4.3B", Path(tmp))
            else:
                rows += gpu_placeholders(config.gpu_setups)
            line = headline(rows)  # MedGemma's; the encoder classifier's rows follow (encoder_classifier.py)
            from benchmarks.encoder_classifier import encoder_train_rows

            encoder_rows = encoder_train_rows(config.steps, Path(tmp), StepClock)
            rows += encoder_rows
            line += "; " + encoder_headline(encoder_rows)
    if config.task == "classifier":
        print(f"effective batch {EFFECTIVE_BATCH}, QLoRA (NF4 base, LoRA r=16), ", end="")
    print(f"{config.steps} steps of which 1 warm-up; samples/s from the median step")
    print(format_table(rows, COLUMNS))
    line = headline(rows) if config.task == "localizer" else line
    out = config.out or f"outputs/benchmarks/train_{config.task}.json"
    path = write_record(out, config, {"training": rows}, line)
    print(f"record: {path}")
    print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
