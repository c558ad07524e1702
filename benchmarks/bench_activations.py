"""Activation memory of the heatmap localizer's training, with and without activation checkpointing.

    python -m benchmarks.bench_activations [--out PATH]

The localizer as train.py builds it by default (LoRA r=16 on the encoder's
attention, stride 4, head 128 channels, stem 16) on two full-size encoder
architectures with random weights (no download): RAD-DINO (Dinov2 ViT-B/14,
12 layers, 518 px, 1,370 tokens) and MedGemma's SigLIP tower (27 layers,
896 px, 4,096 tokens). bf16 autocast, as train.py trains on a GPU.
CPU: one training step replayed on fake tensors (the same operators, shapes
and dtypes, no arithmetic), counting the bytes of the tensors created in it:
alive after the forward pass (what backward needs) and at the peak through
backward; at batch 1 and 2, so that the per-image part and the part every
batch pays once (bf16 copies of the weights) come apart.
GPU: real steps, peak from `torch.cuda.max_memory_allocated` (weights included).
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass

import torch
from transformers import Dinov2Config, SiglipVisionConfig

from benchmarks.activations import training_step_bytes
from benchmarks.common import NO_GPU, format_table, machine_line, write_record
from localization_task.common import cli
from localization_task.common.processes import process_device
from localization_task.heatmap.model import HeatmapLocalizer, HeatmapLocalizerConfig, enable_activation_checkpointing

MIB = 2**20
CARD_BYTES = 24 * 10**9  # a "24 GB" card (RTX 4090: 23.99 GB usable by CUDA at most)
ENCODERS = {
    "RAD-DINO 518 px": Dinov2Config(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, mlp_ratio=4,
                                    image_size=518, patch_size=14),
    "SigLIP tower 896 px": SiglipVisionConfig(hidden_size=1152, num_hidden_layers=27, num_attention_heads=16,
                                              intermediate_size=4304, image_size=896, patch_size=14),
}
CPU_COLUMNS = ["encoder", "checkpointing", "per_image_after_forward_mib", "per_image_peak_mib",
               "per_batch_peak_mib", "weights_mib", "batch_fits_24gb"]
GPU_COLUMNS = ["encoder", "checkpointing", "batch", "peak_gib", "step_s"]


@dataclass
class ActivationBenchConfig:
    gpu_batches: list[int] = cli.arg([1, 2, 8], "batch sizes measured on the GPU (8 is train.py's default)")
    cpu_rows: bool = cli.arg(True, "also count on the CPU (fake tensors; minutes of one core)")
    out: str = cli.arg("outputs/benchmarks/activations.json", "JSON record of the run")

    def __post_init__(self) -> None:
        if min(self.gpu_batches) < 1:
            raise ValueError("--gpu_batches must all be at least 1.")


def build_localizer(encoder_config, checkpointing: bool, device: str, initialised: bool | None = None
                    ) -> HeatmapLocalizer:
    """train.py's default localizer on this encoder architecture, random weights.

    Real steps (a GPU, or `initialised=True`) build it on the device itself: its buffers, such as
    the encoders' position ids, must hold their values. The CPU counts run on fake tensors, so
    there the memory is left uninitialised (meta, then empty), which is much quicker at full size.
    """
    config = HeatmapLocalizerConfig(encoder_config=encoder_config.to_dict(), encoder_mode="lora",
                                    input_size_px=encoder_config.image_size)
    if device != "cpu" if initialised is None else initialised:
        with torch.device(device):
            model = HeatmapLocalizer(config)
    else:
        with torch.device("meta"):
            model = HeatmapLocalizer(config)
        model = model.to_empty(device=device)
    if checkpointing:
        enable_activation_checkpointing(model.encoder)
    return model


def weight_bytes(model) -> int:
    """fp32 weights, plus gradient and two AdamW moments of every trainable one."""
    total = sum(p.numel() * p.element_size() for p in model.parameters())
    return total + sum(3 * p.numel() * 4 for p in model.parameters() if p.requires_grad)


def cpu_row(name: str, checkpointing: bool) -> dict:
    model = build_localizer(ENCODERS[name], checkpointing, "cpu")
    size = model.config.input_size_px
    one, two = (training_step_bytes(model, torch.zeros(b, 3, size, size), autocast_bf16=True, fake=True)
                for b in (1, 2))
    per_image = two["peak_bytes"] - one["peak_bytes"]
    per_batch = one["peak_bytes"] - per_image
    weights = weight_bytes(model)
    return {"encoder": name, "checkpointing": checkpointing,
            "per_image_after_forward_mib": (two["after_forward_bytes"] - one["after_forward_bytes"]) / MIB,
            "per_image_peak_mib": per_image / MIB, "per_batch_peak_mib": per_batch / MIB,
            "weights_mib": weights / MIB,
            "batch_fits_24gb": math.floor((CARD_BYTES - weights - per_batch) / per_image)}


def gpu_rows(name: str, checkpointing: bool, batches: list[int]) -> list[dict]:
    import time

    device = process_device()
    model = build_localizer(ENCODERS[name], checkpointing, str(device))
    size, rows = model.config.input_size_px, []
    for batch in batches:
        row = {"encoder": name, "checkpointing": checkpointing, "batch": batch}
        try:
            pixels = torch.randn(batch, 3, size, size, device=device)
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            start = time.perf_counter()
            with torch.autocast("cuda", dtype=torch.bfloat16):
                logits = model(pixels)
            logits.float().mean().backward()
            torch.cuda.synchronize()
            row.update(peak_gib=torch.cuda.max_memory_allocated() / 2**30, step_s=time.perf_counter() - start)
        except torch.cuda.OutOfMemoryError:
            row["peak_gib"] = "out of memory"
        model.zero_grad(set_to_none=True)
        del pixels
        torch.cuda.empty_cache()
        rows.append(row)
    return rows


def headline(cpu: list[dict], gpu: list[dict]) -> str:
    """SigLIP at 896 px, without and with checkpointing: per image on the CPU, peak at batch 8 on the GPU."""
    parts = []
    siglip = {row["checkpointing"]: row for row in cpu if row["encoder"].startswith("SigLIP")}
    if siglip:
        parts.append(f"CPU {siglip[False]['per_image_peak_mib']:.0f} -> {siglip[True]['per_image_peak_mib']:.0f} "
                     "MiB per image (fake tensors)")
    measured = {row["checkpointing"]: row for row in gpu if row["encoder"].startswith("SigLIP")
                and row.get("batch") == 8 and isinstance(row.get("peak_gib"), float)}
    if len(measured) == 2:
        parts.append(f"GPU batch 8 peak {measured[False]['peak_gib']:.1f} -> {measured[True]['peak_gib']:.1f} GiB")
    elif not torch.cuda.is_available():
        parts.append(f"GPU {NO_GPU}")
    return "activations, SigLIP tower at 896 px, checkpointing off -> on: " + "; ".join(parts or ["-"])


def main(argv: list[str] | None = None) -> int:
    config = cli.parse(ActivationBenchConfig, __doc__, sys.argv[1:] if argv is None else argv)
    if config is None:
        return 2
    print(machine_line())
    cpu = [cpu_row(name, ckpt) for name in ENCODERS for ckpt in (False, True)] if config.cpu_rows else []
    if cpu:
        print("CPU, one training step on fake tensors (bf16 autocast), MiB; batch_fits_24gb = "
              "(24 GB - weights - per_batch_peak) / per_image_peak:")
        print(format_table(cpu, CPU_COLUMNS))
    if torch.cuda.is_available():
        gpu = [row for name in ENCODERS for ckpt in (False, True) for row in gpu_rows(name, ckpt, config.gpu_batches)]
    else:
        gpu = [{"encoder": name, "checkpointing": ckpt, "batch": "-", "peak_gib": NO_GPU}
               for name in ENCODERS for ckpt in (False, True)]
    print("GPU, one real training step (bf16 autocast), peak memory allocated:")
    print(format_table(gpu, GPU_COLUMNS))
    line = headline(cpu, gpu)
    path = write_record(config.out, config, {"cpu": cpu, "gpu": gpu}, line)
    print(f"record: {path}")
    print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
