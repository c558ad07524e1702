"""What every benchmark shares: the machine it ran on, timing, a printed table, a JSON record."""

from __future__ import annotations

import dataclasses
import os
import platform
import time
from collections.abc import Sequence
from pathlib import Path

import torch

from classification_task.common.run_files import git_commit, package_versions, write_json_atomic

NO_GPU = "not yet measured (no GPU)"
# The reference run: 4,400 steps x 16 images in ~35 h on one RTX 4090.
REFERENCE_TRAIN_SAMPLES_PER_S = 4400 * 16 / (35 * 3600)


def machine() -> dict:
    """nproc, CPU model, RAM and GPU of this machine, as docs/benchmarks.md reports them."""
    cpu_model = platform.processor() or None
    ram_gib = None
    if Path("/proc/cpuinfo").is_file():
        lines = Path("/proc/cpuinfo").read_text().splitlines()
        cpu_model = next((line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")), cpu_model)
    if Path("/proc/meminfo").is_file():
        total_kib = int(Path("/proc/meminfo").read_text().split("MemTotal:")[1].split()[0])
        ram_gib = round(total_kib / 2**20, 1)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    return {"nproc": cores, "cpu_model": cpu_model, "ram_gib": ram_gib, "gpu": gpu,
            "torch_threads": torch.get_num_threads(), "load_average_1min": load}


def machine_line() -> str:
    info = machine()
    return (f"machine: nproc {info['nproc']}, {info['cpu_model']}, {info['ram_gib']} GiB RAM, "
            f"GPU: {info['gpu'] or 'none'}; load average {info['load_average_1min']:.1f} at the start")


def sync() -> None:
    """Wait for queued GPU work, so that a clock reading covers it."""
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def timed(function, *args, **kwargs) -> tuple[float, object]:
    """(seconds, result) of one call, GPU work included."""
    sync()
    start = time.perf_counter()
    result = function(*args, **kwargs)
    sync()
    return time.perf_counter() - start, result


def cell(value, digits: int = 3) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}g}" if abs(value) < 1000 else f"{value:,.0f}"
    return str(value)


def format_table(rows: Sequence[dict], columns: Sequence[str]) -> str:
    """A markdown table (it prints readably and pastes into docs/benchmarks.md as is)."""
    cells = [[cell(row.get(column)) for column in columns] for row in rows]
    widths = [max(len(column), *(len(line[i]) for line in cells)) for i, column in enumerate(columns)]
    lines = ["| " + " | ".join(c.ljust(w) for c, w in zip(columns, widths)) + " |",
             "| " + " | ".join("-" * w for w in widths) + " |"]
    lines += ["| " + " | ".join(c.ljust(w) for c, w in zip(line, widths)) + " |" for line in cells]
    return "\n".join(lines)


def write_record(out: str | Path, config, tables: dict, headline: str) -> Path:
    """The run as JSON: config, machine, versions, commit, every table and the headline."""
    record = {"config": dataclasses.asdict(config), "machine": machine(), "versions": package_versions(),
              "git_commit": git_commit(), "tables": tables, "headline": headline}
    return write_json_atomic(out, record)
