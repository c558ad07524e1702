"""Scoring speed and peak memory: the reference style against ours.

    python -m benchmarks.bench_classify [--n_images 48] [--batch_sizes 1,8,16] [--out PATH]

(a) reference style: one image per forward pass, logits over the whole
    vocabulary at every position (no `logits_to_keep`), 4-bit NF4 base with the
    LoRA adapter left unmerged;
(b) ours: `classification_task.model.score_batches`, batched, only the two
    answer logits at the answer position (`logits_to_keep`), the adapter merged
    into a bf16 base (fp32 on the CPU), PyTorch's fused attention (sdpa).
Both use the project's loading code and the same prompt; both attend with sdpa.
Then the encoder classifier (benchmarks/encoder_classifier.py): its saved folder
scored by batch size, a tiny Dinov2 on the CPU, the RAD-DINO architecture at
518 px (bf16) on a GPU.
CPU rows use the tiny test model; GPU rows the full-size MedGemma 1.5 4B
architecture (4.30 B parameters) with random weights, saved and loaded from disk
(no download). Images are synthetic and already pre-processed: this measures the
model, not the decoding. Targets on the GPU: (b) >= 10x (a)'s images/s, and
(b) <= 10 GB peak at batch 1.
"""

from __future__ import annotations

import gc
import os
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("TQDM_DISABLE", "1")  # no progress bars between the table's rows; before tqdm's import

import numpy as np
import torch

from benchmarks.common import NO_GPU, format_table, machine_line, timed, write_record
from benchmarks.models import full_size_model_folders, synthetic_images, tiny_model_folders
from classification_task.common import cli
from classification_task.model import (
    PromptCollator, answer_token_ids, load_processor, load_with_adapter, model_dtype, p_nodule_from_logits,
    score_batches,
)

REFERENCE, OURS = "reference", "ours"
LEGEND = ("reference = batch 1, full-vocabulary logits, NF4 base + unmerged LoRA; ours = answer logits only, "
          "adapter merged into a bf16 base (fp32 on the CPU); both sdpa.\n"
          "max_dp = largest |p(nodule) difference| from the reference on the same images (NF4 rounding).")
COLUMNS = ["device", "model", "setup", "batch", "img_per_s", "peak_gib", "vs_reference", "max_dp"]


@dataclass
class ClassifyConfig:
    n_images: int = cli.arg(48, "images scored per setup on the CPU (the GPU scores --gpu_images)")
    gpu_images: int = cli.arg(64, "images scored per setup on the GPU")
    batch_sizes: str = cli.arg("1,8,16", "batch sizes of ours, comma-separated")
    work_dir: str | None = cli.arg(None, "where the models are saved (the full-size one takes ~9 GB)")
    out: str = cli.arg("outputs/benchmarks/classify.json", "JSON record of the run")

    def __post_init__(self) -> None:
        if min(self.n_images, self.gpu_images, *self.batches) < 1:
            raise ValueError("--n_images, --gpu_images and every batch size must be at least 1.")

    @property
    def batches(self) -> list[int]:
        try:
            return [int(b) for b in self.batch_sizes.split(",")]
        except ValueError:
            raise ValueError("--batch_sizes must be integers separated by commas, e.g. 1,8,16.") from None


@torch.no_grad()
def reference_scores(model, processor, images: list[dict]) -> np.ndarray:
    """One image per forward pass; the full batch x sequence x vocabulary logits, read at the last position."""
    collator, answer_ids = PromptCollator(processor), answer_token_ids(processor.tokenizer)
    device, dtype = next(model.parameters()).device, model_dtype(model)
    scores = []
    for item in images:
        inputs = {k: v.to(device) for k, v in collator([{"image": item["image"]}]).items()}
        inputs["pixel_values"] = inputs["pixel_values"].to(dtype)
        logits = model(**inputs).logits
        scores.append(p_nodule_from_logits(logits[:, -1, answer_ids].cpu()))
    return np.concatenate(scores)


def our_scores(model, processor, images: list[dict], batch_size: int) -> np.ndarray:
    """p(nodule) of every image, batched: the toolkit's own scoring loop."""
    batches = score_batches(model, processor, images, batch_size, desc="ours")
    return np.concatenate([p_nodule for _, p_nodule, _ in batches])


def measure(scorers: dict, images: list[dict], rounds: int) -> dict:
    """Per scorer: (images/s of its best round, peak GPU GiB or None on the CPU, scores).

    Rounds go through every scorer in turn, so that on a shared CPU each sees
    the same background load; each timed call starts from a reset GPU peak.
    """
    for score in scorers.values():
        score(images[:2])  # warm-up
    best, peak, scores = {}, {}, {}
    for _ in range(rounds):
        for key, score in scorers.items():
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats()
            seconds, scores[key] = timed(score, images)
            best[key] = min(best.get(key, float("inf")), seconds)
            peak[key] = torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else None
    return {key: (len(images) / best[key], peak[key], scores[key]) for key in scorers}


def free(model) -> None:
    del model
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def run_setups(base: Path, adapter: Path, images: list[dict], batches: list[int], device: str, name: str) -> list:
    """The reference and ours at each batch size. On the GPU one model at a time, so that each
    peak holds only its own weights; on the CPU both at once, their rounds interleaved."""
    processor = load_processor(str(base))
    reference = load_with_adapter(str(base), str(adapter), quantization="nf4", merge=False)
    results = {}
    reference_scorers = {(REFERENCE, 1): lambda imgs: reference_scores(reference, processor, imgs)}
    on_gpu = torch.cuda.is_available() and device == "GPU"
    if on_gpu:
        results |= measure(reference_scorers, images, rounds=2)
        free(reference)
    ours = load_with_adapter(str(base), str(adapter), quantization="none", merge=True)
    label = f"{OURS} ({str(model_dtype(ours)).replace('torch.', '')})"
    our_scorers = {(label, b): (lambda imgs, b=b: our_scores(ours, processor, imgs, b)) for b in batches}
    results |= measure(our_scorers, images, rounds=2) if on_gpu else \
        measure(reference_scorers | our_scorers, images, rounds=3)
    free(ours)
    ref_per_s, _, ref_scores = results[(REFERENCE, 1)]
    return [{"device": device, "model": name, "setup": setup, "batch": batch, "img_per_s": per_s,
             "peak_gib": peak, "vs_reference": per_s / ref_per_s,
             "max_dp": None if setup == REFERENCE else float(np.abs(scores - ref_scores).max())}
            for (setup, batch), (per_s, peak, scores) in results.items()]


def gpu_placeholders(batches: list[int]) -> list[dict]:
    rows = [{"setup": REFERENCE, "batch": 1}] + [{"setup": f"{OURS} (bfloat16)", "batch": b} for b in batches]
    return [{"device": "GPU", "model": "full-size 4.3B", **row, "img_per_s": NO_GPU} for row in rows]


def headline(rows: list[dict]) -> str:
    parts = []
    for device in ("CPU", "GPU"):
        ours = [r for r in rows if r["device"] == device and r["setup"].startswith(OURS)]
        if not ours or isinstance(ours[0]["img_per_s"], str):
            parts.append(f"{device}: {NO_GPU}")
            continue
        best = max(ours, key=lambda r: r["img_per_s"])
        text = (f"{device} ({ours[0]['model']}): ours {best['vs_reference']:.1f}x the reference's images/s "
                f"(batch {best['batch']})")
        batch_one = next((r for r in ours if r["batch"] == 1), None)
        if batch_one and batch_one["peak_gib"] is not None:
            text += f", peak {batch_one['peak_gib']:.1f} GiB at batch 1"
        parts.append(text)
    return "scoring: " + "; ".join(parts)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    config = cli.parse(ClassifyConfig, __doc__, argv)
    if config is None:
        return 2
    print(machine_line())
    with tempfile.TemporaryDirectory(dir=config.work_dir) as tmp:
        base, adapter = tiny_model_folders(Path(tmp) / "tiny")
        rows = run_setups(base, adapter, synthetic_images(config.n_images, 112), config.batches, "CPU", "tiny")
        if torch.cuda.is_available():
            base, adapter = full_size_model_folders(Path(tmp) / "full")
            rows += run_setups(base, adapter, synthetic_images(config.gpu_images, 896), config.batches,
                               "GPU", "full-size 4.3B")
        else:
            rows += gpu_placeholders(config.batches)
        line = headline(rows)  # MedGemma's; the encoder classifier's rows follow (encoder_classifier.py)
        from benchmarks.encoder_classifier import encoder_score_rows

        encoder_rows = encoder_score_rows(config.n_images, config.gpu_images, config.batches, Path(tmp))
    rows += encoder_rows
    best = {}
    for row in encoder_rows:
        if isinstance(row["img_per_s"], float):
            best[row["device"]] = max(best.get(row["device"], 0.0), row["img_per_s"])
    line += "; encoder classifier: " + ", ".join(
        [f"{device} {per_s:.0f} images/s" for device, per_s in best.items()] +
        ([] if "GPU" in best else [f"GPU {NO_GPU}"]))
    print(LEGEND)
    print(format_table(rows, COLUMNS))
    path = write_record(config.out, config, {"scoring": rows}, line)
    print(f"record: {path}")
    print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
