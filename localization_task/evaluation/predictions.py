"""The files every localizer's predictions go to: `predictions.jsonl` and `localization_test_results.csv`.

`predictions.jsonl` holds one JSON record per image (`file_name`, `points` of
`{"x", "y", "confidence"}` in original pixels) and is also inference's resume
cache: records are appended and flushed one by one, and a rerun skips the
images it already holds, if its prediction settings are those saved in the
run's own record, `run_config.localization.json` (`check_resumable`; the
classifier's inference may share the folder and keeps its own record).
Several processes each append to their own cache (`Processes.own_file`);
process 0 merges them (`merge_caches`). The submission CSV is rebuilt from
the records every time.
"""

from __future__ import annotations

import csv
import io
import json
import sys
from pathlib import Path

from localization_task.common.errors import DataError
from localization_task.common.processes import rank_files
from localization_task.common.run_files import (
    JsonLineError, inference_run_config_json, iter_jsonl, read_run_config, write_text_atomic,
)

PREDICTIONS_JSONL = "predictions.jsonl"
RESULTS_CSV = "localization_test_results.csv"
RUN_CONFIG_JSON = inference_run_config_json("localization")  # the inference run's record


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
    """Refuse to mix cached predictions made with other settings (saved as `prediction_settings`)."""
    if not records or not (output_dir / RUN_CONFIG_JSON).is_file():
        return
    fix = "delete it, or use another --output_dir"
    saved = read_run_config(output_dir, fix, RUN_CONFIG_JSON).get("prediction_settings")
    if not isinstance(saved, dict):
        raise DataError(f"{output_dir / RUN_CONFIG_JSON} is not a run config written by this tool: {fix}.")
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


def all_records(output_dir: Path) -> dict[str, dict]:
    """The records of predictions.jsonl and of every process's cache (an interrupted shared run)."""
    records = load_records(output_dir / PREDICTIONS_JSONL)
    for path in rank_files(output_dir / PREDICTIONS_JSONL):
        records |= load_records(path)
    return records


def merge_caches(output_dir: Path, names: list[str]) -> dict[str, dict]:
    """Fold the processes' caches into predictions.jsonl (written in one step), then remove them."""
    ranks = rank_files(output_dir / PREDICTIONS_JSONL)
    records = all_records(output_dir)
    if ranks:
        write_records_jsonl(output_dir / PREDICTIONS_JSONL, records, names)
        for path in ranks:
            path.unlink()
    return records
