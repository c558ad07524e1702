"""Files a run writes: atomic outputs, the run's provenance, the predictions cache, earlier runs.

Every result file is replaced in one step (temp file beside it, then
`os.replace`), so an interrupted run never leaves half a file. Beside the
results, `run_config.json` holds the resolved config, package versions and
git commit. `predictions.jsonl` holds one JSON record per image and is also
the resume cache: records are appended and flushed one by one, and a rerun
skips the images it already holds. A fresh training run refuses to start
over an earlier run's checkpoints or results unless told to continue
(`--resume`) or to replace them (`--overwrite`): `check_fresh_run`.
"""

from __future__ import annotations

import csv
import io
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from importlib import metadata
from pathlib import Path

import numpy as np

from localization_task.dataset import DataError

PREDICTIONS_JSONL = "predictions.jsonl"
RESULTS_CSV = "localization_test_results.csv"
RUN_CONFIG_JSON = "run_config.json"
FROC_PNG, OVERLAY_DIR = "froc.png", "overlays"  # training's pictures of the test split
# What a training run leaves: results in its output folder, checkpoints in its checkpoint folder.
RESULT_FILES = (RUN_CONFIG_JSON, "eval_summary.json", "per_image_metrics.csv", RESULTS_CSV, PREDICTIONS_JSONL,
                "unreadable_files.csv", FROC_PNG)
CHECKPOINT_FOLDERS = ("checkpoint-*", "best_model")
PACKAGES = ("numpy", "scipy", "pandas", "pillow", "torch", "transformers", "accelerate")


@contextmanager
def atomic_output(path: str | Path, suffix: str = ".tmp") -> Iterator[Path]:
    """Yield a temp path beside `path`; when the block succeeds it replaces `path` in one step."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=suffix)
    os.close(handle)
    try:
        yield Path(tmp)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp files are private; results should not be
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)


def write_text_atomic(path: str | Path, text: str) -> None:
    with atomic_output(path) as tmp, open(tmp, "w", encoding="utf-8", newline="") as out:
        out.write(text)
        out.flush()
        os.fsync(out.fileno())


def write_png_atomic(path: str | Path, image) -> None:
    """Save a Pillow image as PNG, replacing `path` in one step."""
    with atomic_output(path, suffix=".png") as tmp:
        image.save(tmp, format="PNG")


def save_figure_atomic(figure, path: str | Path, dpi: int = 100) -> Path:
    """A matplotlib figure as PNG, replacing `path` in one step; returns `path`."""
    with atomic_output(path, suffix=".png") as tmp:
        figure.savefig(tmp, format="png", dpi=dpi)
    return Path(path)


def nan_to_none(obj):
    """Recursively replace NaN/inf floats with None so the JSON stays valid."""
    if isinstance(obj, dict):
        return {k: nan_to_none(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [nan_to_none(v) for v in obj]
    if isinstance(obj, (float, np.floating)):
        return float(obj) if np.isfinite(obj) else None
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, Path):
        return str(obj)
    return obj


def write_json_atomic(path: str | Path, obj) -> None:
    write_text_atomic(path, json.dumps(nan_to_none(obj), indent=2, allow_nan=False) + "\n")


def run_info() -> dict:
    """Package versions and the git commit, saved next to the results."""
    versions: dict[str, str | None] = {"python": platform.python_version()}
    for package in PACKAGES:
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = None
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=Path(__file__).resolve().parent,
            capture_output=True, text=True, timeout=10,
        ).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        commit = None
    return {"git_commit": commit, "versions": versions}


def write_run_config(path: Path, config: dict, settings: dict) -> None:
    """The resolved config, what the cached predictions depend on, versions and commit."""
    run = {
        "config": {k: str(v) if isinstance(v, Path) else v for k, v in config.items()},
        "prediction_settings": settings,
        **run_info(),
    }
    write_json_atomic(path, run)


# --- predictions.jsonl: one record per image, also the resume cache ------------


class JsonLineError(ValueError):
    """A line of a JSON Lines file that is not JSON (`line_no` counts from 1)."""

    def __init__(self, line_no: int):
        super().__init__(f"line {line_no} is not valid JSON")
        self.line_no = line_no


def iter_jsonl(path: Path) -> Iterator[tuple[int, object]]:
    """(line number, decoded value) for each non-blank line of a JSON Lines file.

    The one reader of predictions.jsonl: the evaluator and the resume cache
    check the records each in their own way.
    """
    for line_no, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            yield line_no, json.loads(line)
        except json.JSONDecodeError:
            raise JsonLineError(line_no) from None


def append_record(path: Path, record: dict) -> None:
    """One JSON line per image, flushed to disk at once: a crash loses at most
    the image being written."""
    with path.open("a", encoding="utf-8") as cache:
        cache.write(json.dumps(record) + "\n")
        cache.flush()
        os.fsync(cache.fileno())


def load_records(path: Path) -> dict[str, dict]:
    """Records of predictions.jsonl by file name; a later record for the same
    image wins. An incomplete last line (a crash mid-write) is cut off, so
    that image is predicted again."""
    if not path.is_file():
        return {}
    raw = path.read_bytes()
    partial = raw.rpartition(b"\n")[2]
    if partial:
        with path.open("r+b") as cache:
            cache.truncate(len(raw) - len(partial))
        print(f"ignored an incomplete last record in {path}; that image is redone", file=sys.stderr)
    records = {}
    try:
        for line_no, record in iter_jsonl(path):
            if not _is_record(record):
                raise JsonLineError(line_no)
            records[record["file_name"]] = record
    except JsonLineError as error:
        raise DataError(
            f"{path} line {error.line_no} is not a prediction record: delete the file to start afresh."
        ) from None
    return records


def _is_record(record) -> bool:
    return (
        isinstance(record, dict)
        and isinstance(record.get("file_name"), str)
        and isinstance(record.get("points"), list)
        and all(
            isinstance(p, dict) and {"x", "y", "confidence"} <= p.keys() for p in record["points"]
        )
    )


def check_resumable(output_dir: Path, records: dict, settings: dict) -> None:
    """Refuse to mix cached predictions made with other settings."""
    config_path = output_dir / RUN_CONFIG_JSON
    if not records or not config_path.is_file():
        return
    not_ours = DataError(f"{config_path} is not a run config written by this tool: delete it, or use "
                         "another --output_dir.")
    try:
        saved = json.loads(config_path.read_text())["prediction_settings"]
    except (json.JSONDecodeError, KeyError, TypeError):
        raise not_ours from None
    if not isinstance(saved, dict):
        raise not_ours
    current = json.loads(json.dumps(settings))
    changed = sorted(k for k in current.keys() | saved.keys() if current.get(k) != saved.get(k))
    if changed:
        raise DataError(
            f"{output_dir} holds predictions made with a different {', '.join(changed)}: "
            f"use another --output_dir, or delete {output_dir / PREDICTIONS_JSONL} to start again."
        )


def write_results_csv(path: Path, records: dict[str, dict], names: list[str]) -> int:
    """Submission CSV (one row per keypoint, images in input order), rebuilt
    from the records. Returns the number of keypoints."""
    rows = [
        (name, round(p["x"], 3), round(p["y"], 3), p["confidence"])
        for name in names
        if name in records
        for p in records[name]["points"]
    ]
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(["file_name", "x", "y", "confidence"])
    writer.writerows(rows)
    write_text_atomic(path, text.getvalue())
    return len(rows)


def write_records_jsonl(path: Path, records: dict[str, dict], names: list[str]) -> None:
    """predictions.jsonl with one record per image of `names` (in that order), in one step."""
    lines = [json.dumps(records[name]) + "\n" for name in names if name in records]
    write_text_atomic(path, "".join(lines))


# --- earlier runs --------------------------------------------------------------


def earlier_run(output_dir: Path, checkpoint_dir: Path | None) -> list[Path]:
    """The result files and checkpoint folders an earlier run left in these folders."""
    found = [Path(output_dir) / name for name in RESULT_FILES if (Path(output_dir) / name).is_file()]
    if (Path(output_dir) / OVERLAY_DIR).is_dir():
        found.append(Path(output_dir) / OVERLAY_DIR)
    if checkpoint_dir is not None:
        found += sorted(path for pattern in CHECKPOINT_FOLDERS for path in Path(checkpoint_dir).glob(pattern)
                        if path.is_dir())
    return found


def check_fresh_run(output_dir: Path, checkpoint_dir: Path | None, resume, overwrite: bool) -> list[Path]:
    """Refuse to start a fresh run over an earlier one; return what `overwrite` will replace.

    A fresh run over an earlier run's results would silently replace them, and
    over its checkpoints it would mix two runs (a later --resume would pick the
    earlier run's newest checkpoint). `checkpoint_dir` None: the run writes no
    checkpoints. Raises DataError with one sentence unless the run continues
    (`resume`), replaces (`overwrite`) or finds nothing. Nothing is removed
    here: call `remove_earlier_run` once the inputs have been checked.
    """
    if resume:
        return []
    found = earlier_run(output_dir, checkpoint_dir)
    if found and not overwrite:
        options = ("add --resume to continue it, " if checkpoint_dir is not None else "") + \
            "add --overwrite to replace it, or pass other --output_dir/--checkpoint_dir folders"
        raise DataError(f"{found[0].parent} holds an earlier run ({found[0].name} and {len(found) - 1} more); "
                        f"{options}.")
    return found


def remove_earlier_run(paths: list[Path]) -> None:
    """Delete what `check_fresh_run` found, so no file of the earlier run outlives a crash of the new one."""
    for path in paths:
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)
