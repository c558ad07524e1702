"""Every GPU row of docs/benchmarks.md in one command, inside a time budget (8 minutes on one H100-class GPU).

    bash benchmarks/gpu.sh                    # installs the carried wheels (wheels/) first, then this
    python -m benchmarks.gpu [--budget_s 470] [--out_dir outputs/benchmarks/gpu] [--only activations,classify]
    python -m benchmarks.gpu --cpu_sanity     # no GPU: run each script's CPU rows, to check the command works

Each step is one benchmark script run as its own process, with its GPU settings
sized to its share of the budget; time a step leaves unused goes to the next
ones. A step still running when its time is up is stopped and reported as
"not measured (time budget)". Without CUDA every step reads "not measured (no
GPU)" unless --cpu_sanity. Each script writes its JSON record and its log to
--out_dir; the summary at the end names them, with each script's headline.

A new row in one of these scripts (a setup added to bench_train.SETUPS, a model
to bench_classify) is measured here with no change; a new script is one more
`Step` in STEPS.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from benchmarks.common import format_table, machine_line
from localization_task.common import cli


@dataclass(frozen=True)
class Step:
    name: str
    module: str
    gpu_args: tuple[str, ...]  # sized so that the step fits its budget_s on one H100-class GPU
    budget_s: float
    cpu_args: tuple[str, ...] = ()  # --cpu_sanity: the script's quickest CPU path


STEPS = (
    # The CPU counts of bench_activations take minutes of one core and are in docs/gpu.md already.
    Step("activations", "benchmarks.bench_activations", ("--gpu_batches", "1", "2", "8", "--no-cpu_rows"), 60),
    Step("localizer_training", "benchmarks.bench_train", ("--task", "localizer", "--steps", "4"), 60,
         ("--task", "localizer", "--steps", "2")),
    Step("classify", "benchmarks.bench_classify", ("--gpu_images", "32"), 150, ("--n_images", "8")),
    Step("classifier_training", "benchmarks.bench_train", ("--steps", "3"), 200, ("--steps", "2")),
)
NOT_MEASURED_NO_GPU = "not measured (no GPU)"
NOT_MEASURED_TIME = "not measured (time budget)"


@dataclass
class GpuBenchConfig:
    budget_s: float = cli.arg(470.0, "seconds for all steps together (8 minutes less start-up)")
    out_dir: str = cli.arg("outputs/benchmarks/gpu", "JSON records and logs of the steps")
    only: str | None = cli.arg(None, f"comma-separated steps to run, from: {', '.join(s.name for s in STEPS)}")
    cpu_sanity: bool = cli.arg(False, "without a GPU, run each script's CPU rows instead of skipping it")

    def __post_init__(self) -> None:
        if self.budget_s <= 0:
            raise ValueError("--budget_s must be positive.")
        unknown = set(self.step_names) - {s.name for s in STEPS}
        if unknown:
            raise ValueError(f"unknown --only {sorted(unknown)}; choose from {', '.join(s.name for s in STEPS)}.")

    @property
    def step_names(self) -> list[str]:
        return [s.name for s in STEPS] if self.only is None else [n.strip() for n in self.only.split(",")]


def run_step(step: Step, args: tuple[str, ...], timeout_s: float, out_dir: Path) -> dict:
    """One script as its own process; its output goes to a log file and its headline to the summary."""
    record, log = out_dir / f"{step.name}.json", out_dir / f"{step.name}.log"
    command = [sys.executable, "-m", step.module, *args, "--out", str(record)]
    start = time.perf_counter()
    with log.open("w") as stream:
        try:
            done = subprocess.run(command, stdout=stream, stderr=subprocess.STDOUT, timeout=timeout_s,
                                  env={**os.environ, "PYTHONUNBUFFERED": "1"})
            status = "done" if done.returncode == 0 else f"failed (exit {done.returncode})"
        except subprocess.TimeoutExpired:
            status = NOT_MEASURED_TIME
    lines = [line for line in log.read_text().splitlines() if line.strip()]
    headline = lines[-1] if status == "done" and lines else "-"
    return {"step": step.name, "status": status, "seconds": time.perf_counter() - start, "headline": headline,
            "log": str(log)}


def main(argv: list[str] | None = None) -> int:
    config = cli.parse(GpuBenchConfig, __doc__, sys.argv[1:] if argv is None else argv)
    if config is None:
        return 2
    print(machine_line())
    out_dir = Path(config.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    gpu = torch.cuda.is_available()
    steps = [s for s in STEPS if s.name in config.step_names]
    deadline = time.perf_counter() + config.budget_s
    rows = []
    for index, step in enumerate(steps):
        if not gpu and not config.cpu_sanity:
            rows.append({"step": step.name, "status": NOT_MEASURED_NO_GPU, "seconds": 0.0, "headline": "-"})
            continue
        later_s = sum(s.budget_s for s in steps[index + 1:])  # kept for the steps after this one
        timeout_s = max(deadline - time.perf_counter() - later_s, step.budget_s) if gpu else config.budget_s
        timeout_s = min(timeout_s, deadline - time.perf_counter())
        if timeout_s <= 0:
            rows.append({"step": step.name, "status": NOT_MEASURED_TIME, "seconds": 0.0, "headline": "-"})
            continue
        print(f"{step.name}: python -m {step.module} ... (at most {timeout_s:.0f} s)", flush=True)
        rows.append(run_step(step, step.gpu_args if gpu else step.cpu_args, timeout_s, out_dir))
    print(format_table(rows, ["step", "status", "seconds", "headline"]))
    print(f"tables and records: {out_dir}/<step>.log and .json")
    return 0 if all(r["status"] in ("done", NOT_MEASURED_NO_GPU) for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
