"""Files a run writes: atomic outputs (JSON, CSV, PNG), the run's provenance, and earlier runs.

Every output is written beside its target and moved into place in one step,
so readers never see half a file and a crash leaves the previous version intact.
`run_config.json` records the resolved config, package versions and git commit;
`operating_point.json` travels with a saved adapter (the set-up and thresholds it was tuned with).
A fresh run refuses to start over an earlier run's checkpoints or results
unless told to continue (`--resume`) or to replace them (`--overwrite`).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import platform
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from importlib import metadata
from pathlib import Path

import numpy as np
import pandas as pd

RUN_CONFIG_JSON = "run_config.json"
OPERATING_POINT_JSON = "operating_point.json"
# What every operating point holds (docs/operating-point.md); more keys may follow them.
OPERATING_POINT_KEYS = ("model_kind", "base_model", "quantization", "preprocessing", "thresholds",
                        "default_threshold")
# What a run leaves: results in the output folder, trainer checkpoints and the final adapter.
RESULT_FILES = (RUN_CONFIG_JSON, OPERATING_POINT_JSON, "metrics.json", "test_predictions.csv", "val_predictions.csv",
                "test_labels.csv", "unreadable_files.csv", "roc.png", "pr.png", "reliability.png",
                "training_curves.png")
CHECKPOINT_FOLDERS = ("checkpoint-*", "best_adapter", "best_model")  # best_model: the encoder classifier
PACKAGES = ("torch", "transformers", "peft", "bitsandbytes", "accelerate", "scikit-learn", "pandas", "pillow")


# ----------------------------------------------------------------------------- atomic outputs


def _default_mode() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


@contextmanager
def atomic_output(path: str | os.PathLike, suffix: str = ".tmp") -> Iterator[Path]:
    """Yield a temporary path beside `path`; when the block succeeds it replaces `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=suffix)
    os.close(handle)
    try:
        yield Path(tmp)
        os.chmod(tmp, _default_mode())  # mkstemp files are private; results should not be
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)


def _jsonable(obj):
    """Plain JSON types; NaN and infinities become null so strict parsers accept the file."""
    if isinstance(obj, dict):
        return {str(key): _jsonable(value) for key, value in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(value) for value in obj]
    if isinstance(obj, np.ndarray):
        return _jsonable(obj.tolist())
    if isinstance(obj, (bool, np.bool_)):
        return bool(obj)
    if isinstance(obj, (int, np.integer)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        return float(obj) if math.isfinite(obj) else None
    if isinstance(obj, Path):
        return str(obj)
    return obj


def write_json_atomic(path: str | os.PathLike, obj) -> Path:
    path = Path(path)
    with atomic_output(path) as tmp, open(tmp, "w", encoding="utf-8") as handle:
        json.dump(_jsonable(obj), handle, indent=2, allow_nan=False)
        handle.write("\n")
    return path


def write_csv_atomic(frame: pd.DataFrame, path: str | os.PathLike) -> Path:
    path = Path(path)
    with atomic_output(path) as tmp:
        frame.to_csv(tmp, index=False)
    return path


def save_png_atomic(figure, path: str | os.PathLike, dpi: int = 120) -> Path:
    """A matplotlib figure as PNG; a crash never leaves a broken file."""
    path = Path(path)
    with atomic_output(path, suffix=".png") as tmp:
        figure.savefig(tmp, format="png", dpi=dpi)
    return path


# ----------------------------------------------------------------------------- provenance


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


def write_run_config(out_dir: str | Path, config, extra: dict | None = None) -> Path:
    """`run_config.json`: the dataclass as resolved, plus versions and commit (no secrets in it),
    and `extra` entries (e.g. where a threshold came from)."""
    record = {"config": dataclasses.asdict(config), **(extra or {}), "versions": package_versions(),
              "git_commit": git_commit()}
    return write_json_atomic(Path(out_dir) / RUN_CONFIG_JSON, record)


# ----------------------------------------------------------------------------- operating point


def write_operating_point(folder: str | Path, record: dict) -> Path:
    """`operating_point.json` in a saved model's folder, atomically: the set-up its scores come from
    (base model, quantization, pre-processing) and the thresholds tuned on them."""
    missing = [key for key in OPERATING_POINT_KEYS if key not in record]
    if missing:
        raise ValueError(f"an operating point needs {', '.join(missing)} as well.")
    return write_json_atomic(Path(folder) / OPERATING_POINT_JSON, record)


def read_operating_point(folder: str | Path | None) -> dict | None:
    """The record `write_operating_point` left in `folder`; None when there is none (or no local folder).

    A file that is not such a record raises ValueError naming it and the fix.
    """
    path = Path(folder) / OPERATING_POINT_JSON if folder else None
    if path is None or not path.is_file():
        return None
    fix = "delete it to use the defaults, or replace it with the one train.py --eval_only writes to its output folder"
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as err:
        raise ValueError(f"{path} could not be read as JSON ({err.__class__.__name__}); {fix}.") from None
    if not isinstance(record, dict) or not isinstance(record.get("thresholds"), dict):
        raise ValueError(f"{path} is not an operating point (no thresholds object in it); {fix}.")
    return record


# ----------------------------------------------------------------------------- earlier runs


def earlier_run(output_dir: str | Path, checkpoint_dir: str | Path | None) -> list[Path]:
    """The result files and checkpoint folders an earlier run left in these folders."""
    found = [Path(output_dir) / name for name in RESULT_FILES if (Path(output_dir) / name).is_file()]
    if checkpoint_dir is not None:
        found += sorted(path for pattern in CHECKPOINT_FOLDERS for path in Path(checkpoint_dir).glob(pattern)
                        if path.is_dir())
    return found


def check_fresh_run(output_dir: str | Path, checkpoint_dir: str | Path | None, resume: str | None,
                    overwrite: bool) -> list[Path]:
    """Refuse to start a fresh run over an earlier one; return what `overwrite` will replace.

    A fresh run over an earlier run's results would silently replace them, and
    over its checkpoints it would mix two runs (a later --resume would pick the
    earlier run's newest checkpoint). `checkpoint_dir` None: the run writes no
    checkpoints (evaluation only). Raises ValueError with one sentence unless the
    run continues (`resume`), replaces (`overwrite`) or finds nothing. Nothing
    is removed here: call `remove_earlier_run` once the inputs have been checked.
    """
    if resume:
        return []
    found = earlier_run(output_dir, checkpoint_dir)
    if found and not overwrite:
        options = ("add --resume to continue it, " if checkpoint_dir is not None else "") + \
            "add --overwrite to replace it, or pass other --output_dir/--checkpoint_dir folders"
        raise ValueError(f"{found[0].parent} holds an earlier run ({found[0].name} and {len(found) - 1} more); "
                         f"{options}.")
    return found


def remove_earlier_run(paths: list[Path]) -> None:
    """Delete what `check_fresh_run` found, so no file of the earlier run outlives a crash of the new one."""
    for path in paths:
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)
    if paths:
        print(f"--overwrite: removed {len(paths)} file(s) and folder(s) of the earlier run, e.g. {paths[0]}")
