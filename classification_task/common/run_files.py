"""Files a run writes: atomic outputs, the run's provenance, JSON Lines, earlier runs and `--resume`.

Every output is written beside its target and moved into place in one step
(temp file, then `os.replace`), so readers never see half a file and a crash
leaves the previous version intact. `run_config.json` records the task, the
resolved config, package versions and git commit of a training run; an
inference run names its record by task (`run_config.classification.json`,
`run_config.localization.json`), since both tasks' inference may write into
one folder and neither may replace the other's record. A fresh training run
refuses to start over an earlier run's checkpoints or results unless told to
continue (`--resume`) or to replace them (`--overwrite`): `check_fresh_run`.
`--resume` continues only a run of this task's train.py: the checkpoint
folder must hold its `run_config.json` (`resume_checkpoint`).
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
from typing import TYPE_CHECKING, Any

import numpy as np

from .cli import arg
from .errors import DataError

if TYPE_CHECKING:
    import pandas as pd

TASK = __name__.split(".")[0]  # "classification_task" or "localization_task": the file is the same in both
RUN_CONFIG_JSON = "run_config.json"  # a training run's; an inference run's is inference_run_config_json(task)
TRAINER_STATE_JSON = "trainer_state.json"  # the Trainer writes it last into each checkpoint folder
CHECKPOINT_FOLDERS = ("checkpoint-*", "best_adapter", "best_model")  # what a training run leaves in its checkpoint_dir
PACKAGES = ("numpy", "scipy", "pandas", "scikit-learn", "pillow", "torch", "transformers", "peft", "bitsandbytes",
            "accelerate")


# ----------------------------------------------------------------------------- atomic outputs


@contextmanager
def atomic_output(path: str | os.PathLike, suffix: str = ".tmp") -> Iterator[Path]:
    """Yield a temporary path beside `path`; when the block succeeds it replaces `path`."""
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


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    with atomic_output(path) as tmp, open(tmp, "w", encoding="utf-8", newline="") as out:
        out.write(text)
        out.flush()
        os.fsync(out.fileno())
    return Path(path)


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
    return write_text_atomic(path, json.dumps(_jsonable(obj), indent=2, allow_nan=False) + "\n")


def write_csv_atomic(frame: pd.DataFrame, path: str | os.PathLike) -> Path:
    with atomic_output(path) as tmp:
        frame.to_csv(tmp, index=False)
    return Path(path)


def save_figure_atomic(figure, path: str | os.PathLike, dpi: int = 120) -> Path:
    """A matplotlib figure as PNG; a crash never leaves a broken file."""
    with atomic_output(path, suffix=".png") as tmp:
        figure.savefig(tmp, format="png", dpi=dpi)
    return Path(path)


def write_png_atomic(path: str | os.PathLike, image) -> Path:
    """A Pillow image as PNG, replacing `path` in one step."""
    with atomic_output(path, suffix=".png") as tmp:
        image.save(tmp, format="PNG")
    return Path(path)


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
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True,
                             cwd=Path(__file__).resolve().parent, timeout=10)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def run_info() -> dict:
    """Package versions and the git commit, saved next to the results."""
    return {"git_commit": git_commit(), "versions": package_versions()}


def inference_run_config_json(task: str) -> str:
    """The name of an inference run's record, `run_config.<task>.json`: README step 3 sends both tasks'
    inference into one folder, and each run's resume check must find its own task's record there."""
    return f"run_config.{task}.json"


def run_config_record(config, extra: dict | None = None) -> dict:
    """What `run_config.json` holds: the task, the config as resolved (a dataclass or a dict), `extra`
    entries (e.g. where a threshold came from), versions and commit. No secrets are in it."""
    fields = dataclasses.asdict(config) if dataclasses.is_dataclass(config) else dict(config)
    return _jsonable({"task": TASK, "config": fields, **(extra or {}), **run_info()})


def write_run_config(folder: str | os.PathLike, config, extra: dict | None = None,
                     name: str = RUN_CONFIG_JSON) -> Path:
    """The record `name` (by default `run_config.json`) in `folder` (see `run_config_record`)."""
    return write_json_atomic(Path(folder) / name, run_config_record(config, extra))


def read_run_config(folder: str | os.PathLike, fix: str, name: str = RUN_CONFIG_JSON) -> dict | None:
    """The record `write_run_config` left in `folder` as `name`; None when there is none.

    A file that is not such a record raises DataError naming it and `fix`.
    """
    path = Path(folder) / name
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        record = None
    if not isinstance(record, dict) or not isinstance(record.get("config"), dict):
        raise DataError(f"{path} is not a run config written by this tool: {fix}.")
    return record


# ----------------------------------------------------------------------------- JSON Lines


class JsonLineError(ValueError):
    """A line of a JSON Lines file that is not JSON (`line_no` counts from 1)."""

    def __init__(self, line_no: int):
        super().__init__(f"line {line_no} is not valid JSON")
        self.line_no = line_no


def iter_jsonl(path: str | os.PathLike) -> Iterator[tuple[int, object]]:
    """(line number, decoded value) for each non-blank line of a JSON Lines file."""
    for line_no, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            yield line_no, json.loads(line)
        except json.JSONDecodeError:
            raise JsonLineError(line_no) from None


def append_record(path: str | os.PathLike, record: dict) -> None:
    """One JSON line, flushed to disk at once: a crash loses at most the record being written."""
    with Path(path).open("a", encoding="utf-8") as out:
        out.write(json.dumps(record) + "\n")
        out.flush()
        os.fsync(out.fileno())


# ----------------------------------------------------------------------------- earlier runs


def earlier_run(output_dir: str | Path, checkpoint_dir: str | Path | None, results: tuple[str, ...]) -> list[Path]:
    """The result files or folders (`results`, by name) and checkpoint folders an earlier run left here."""
    found = [Path(output_dir) / name for name in results if (Path(output_dir) / name).exists()]
    if checkpoint_dir is not None:
        found += sorted(path for pattern in CHECKPOINT_FOLDERS for path in Path(checkpoint_dir).glob(pattern)
                        if path.is_dir())
    return found


def check_fresh_run(output_dir: str | Path, checkpoint_dir: str | Path | None, resume: str | None,
                    overwrite: bool, results: tuple[str, ...]) -> list[Path]:
    """Refuse to start a fresh run over an earlier one; return what `overwrite` will replace.

    A fresh run over an earlier run's results would silently replace them, and
    over its checkpoints it would mix two runs (a later --resume would pick the
    earlier run's newest checkpoint). `checkpoint_dir` None: the run writes no
    checkpoints (evaluation only). Raises DataError with one sentence unless the
    run continues (`resume`), replaces (`overwrite`) or finds nothing. Nothing
    is removed here: call `remove_earlier_run` once the inputs have been checked.
    """
    if resume:
        return []
    found = earlier_run(output_dir, checkpoint_dir, results)
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
    if paths:
        print(f"--overwrite: removed {len(paths)} file(s) and folder(s) of the earlier run, e.g. {paths[0]}")


# ----------------------------------------------------------------------------- --resume


def is_complete_checkpoint(folder: str | Path) -> bool:
    """The Trainer writes trainer_state.json last: a folder without it (as JSON) was cut short."""
    try:
        json.loads((Path(folder) / TRAINER_STATE_JSON).read_text())
    except (OSError, ValueError):
        return False
    return True


def last_complete_checkpoint(checkpoint_dir: str | Path) -> str | None:
    """The newest complete `checkpoint-N` folder: a run killed while saving resumes from the one before."""
    steps = {int(folder.name[11:]): folder for folder in Path(checkpoint_dir).glob("checkpoint-*")
             if folder.name[11:].isdigit() and is_complete_checkpoint(folder)}  # 11 = len("checkpoint-")
    return str(steps[max(steps)]) if steps else None


def check_run_of_this_task(checkpoint_dir: str | Path) -> None:
    """Raise DataError unless `checkpoint_dir` holds the run_config.json this task's train.py writes there."""
    fix = f"pass a checkpoint folder that {TASK}/train.py wrote, or drop --resume to start a fresh run"
    record = read_run_config(checkpoint_dir, fix)
    if record is None:
        raise DataError(f"{checkpoint_dir} holds no {RUN_CONFIG_JSON} of a {TASK} training run: {fix}.")
    if record.get("task") != TASK:
        raise DataError(f"{checkpoint_dir} holds a run of {record.get('task') or 'another tool'}, not of {TASK}: "
                        f"{fix}.")


def resume_checkpoint(resume: str | None, checkpoint_dir: str | Path) -> str | None:
    """The checkpoint `--resume` continues from; None for a fresh start.

    `resume` is None (a fresh run), "latest" (the newest complete checkpoint in
    `checkpoint_dir`; none there: a fresh start) or a checkpoint folder, which
    must be complete. Either way the checkpoint's folder must hold this task's
    run_config.json (`run_config_callback` writes it before the first save):
    a run of the other task, or of nothing, is refused with one sentence.
    """
    if resume is None:
        return None
    if resume == "latest":
        checkpoint = last_complete_checkpoint(checkpoint_dir)
        if checkpoint is None:
            print("no checkpoint to resume from: starting fresh")
            return None
    elif not is_complete_checkpoint(resume):
        raise DataError(f"{resume} is not a complete checkpoint (no {TRAINER_STATE_JSON}); pass another "
                        "checkpoint-N folder, or --resume alone for the latest complete one.")
    else:
        checkpoint = str(resume)
    check_run_of_this_task(Path(checkpoint).parent)
    print(f"resuming from {checkpoint}")
    return checkpoint


def run_config_callback(config):
    """A Trainer callback that writes `config`'s run_config.json into the checkpoint folder before
    each save, so every complete checkpoint lies beside it (`resume_checkpoint` reads it)."""
    from transformers import TrainerCallback  # here: most users of this module need no transformers

    class RunConfigBesideCheckpoints(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            # The flow callback has decided by now whether this step saves; the save comes after.
            if control.should_save and state.is_world_process_zero:
                write_run_config(args.output_dir, config)

    return RunConfigBesideCheckpoints()


# ----------------------------------------------------------------------------- the flags of a training run


def max_unreadable_frac_flag() -> Any:
    return arg(0.01, "skip unreadable images (listed in unreadable_files.csv), but stop when more than this "
                     "fraction are")


def resume_flag() -> Any:
    return arg(None, "'latest' or a checkpoint folder to continue from", const="latest")


def overwrite_flag() -> Any:
    return arg(False, "replace an earlier run's checkpoints and results in these folders")


def check_run_flags(config) -> None:
    """The rules of the flags above, for a config that declares them; ValueError with one sentence."""
    if not 0 <= config.max_unreadable_frac < 1:
        raise ValueError("--max_unreadable_frac must lie in [0, 1).")
    if config.resume and config.overwrite:
        raise ValueError("--resume continues the earlier run and --overwrite replaces it: pass only one.")
