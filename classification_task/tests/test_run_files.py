"""Atomic outputs, the run's provenance file, and earlier runs."""

import json
import math
from dataclasses import dataclass

import numpy as np
import pandas as pd
import pytest

from classification_task.common.run_files import (
    RUN_CONFIG_JSON,
    atomic_output,
    check_fresh_run,
    remove_earlier_run,
    write_csv_atomic,
    write_json_atomic,
    write_run_config,
)
from classification_task.train import RESULT_FILES


def test_write_json_atomic_writes_strict_json_with_nan_as_null(tmp_path):
    path = write_json_atomic(tmp_path / "sub" / "m.json",
                             {"auc": math.nan, "ci": (0.1, np.float64(0.2)), "n": np.int64(3)})
    assert json.loads(path.read_text()) == {"auc": None, "ci": [0.1, 0.2], "n": 3}
    assert [f.name for f in path.parent.iterdir()] == ["m.json"]


def test_a_failed_write_keeps_the_previous_file_and_leaves_no_temp_file(tmp_path):
    path = write_csv_atomic(pd.DataFrame({"file_name": ["a.png"], "split": ["train"]}), tmp_path / "split.csv")
    before = path.read_bytes()
    with pytest.raises(RuntimeError), atomic_output(path) as tmp:
        tmp.write_text("half a file")
        raise RuntimeError("crash")
    assert path.read_bytes() == before
    assert [f.name for f in tmp_path.iterdir()] == ["split.csv"]


def test_run_config_records_the_config_versions_and_commit(tmp_path):
    @dataclass
    class Config:
        seed: int = 3
        model_id: str = "tiny"

    path = write_run_config(tmp_path, Config())
    assert path.name == RUN_CONFIG_JSON == "run_config.json"
    record = json.loads(path.read_text())
    assert record["config"] == {"seed": 3, "model_id": "tiny"} and record["task"] == "classification_task"
    assert {"python", "torch", "transformers"} <= set(record["versions"])
    assert "git_commit" in record


def test_check_fresh_run_refuses_an_earlier_run_unless_resumed_or_overwritten(tmp_path):
    out, ckpt = tmp_path / "out", tmp_path / "ckpt"
    assert check_fresh_run(out, ckpt, resume=None, overwrite=False, results=RESULT_FILES) == []  # nothing there yet
    out.mkdir()
    (out / "split.csv").write_text("file_name,split\n")  # a split alone is no run
    assert check_fresh_run(out, ckpt, resume=None, overwrite=False, results=RESULT_FILES) == []
    (out / "metrics.json").write_text("{}")
    (ckpt / "checkpoint-400").mkdir(parents=True)
    (ckpt / "best_adapter").mkdir()
    with pytest.raises(ValueError, match="--resume to continue it, add --overwrite to replace it") as error:
        check_fresh_run(out, ckpt, resume=None, overwrite=False, results=RESULT_FILES)
    assert str(out) in str(error.value) and "\n" not in str(error.value)
    with pytest.raises(ValueError, match="^(?!.*--resume).*--overwrite"):
        check_fresh_run(out, None, resume=None, overwrite=False, results=RESULT_FILES)  # evaluation only
    assert check_fresh_run(out, ckpt, resume="latest", overwrite=False, results=RESULT_FILES) == []
    found = check_fresh_run(out, ckpt, resume=None, overwrite=True, results=RESULT_FILES)
    assert set(found) == {out / "metrics.json", ckpt / "checkpoint-400", ckpt / "best_adapter"}
    assert (out / "metrics.json").is_file()  # nothing removed until asked
    remove_earlier_run(found)
    assert [p.name for p in out.iterdir()] == ["split.csv"] and list(ckpt.iterdir()) == []
