"""What a run records next to its results: resolved config, package versions, git commit."""

from __future__ import annotations

import dataclasses
import platform
import subprocess
from importlib import metadata
from pathlib import Path

import pandas as pd

from classification_task.atomic import atomic_output
from classification_task.metrics import write_json_atomic

PACKAGES = ("torch", "transformers", "peft", "bitsandbytes", "accelerate", "scikit-learn", "pandas", "pillow")


def package_versions() -> dict[str, str | None]:
    versions = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def git_commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True,
            cwd=Path(__file__).resolve().parent, timeout=10,
        )
        return out.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None


def write_run_config(out_dir: str | Path, config) -> Path:
    """`config.json`: the dataclass as resolved, plus versions and commit (no secrets in it)."""
    record = {"config": dataclasses.asdict(config), "versions": package_versions(), "git_commit": git_commit()}
    return write_json_atomic(Path(out_dir) / "config.json", record)


def write_csv_atomic(frame: pd.DataFrame, path: str | Path) -> Path:
    path = Path(path)
    with atomic_output(path) as tmp:
        frame.to_csv(tmp, index=False)
    return path
