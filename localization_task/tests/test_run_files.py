"""Atomic outputs, the run config and the predictions.jsonl cache."""
import json

import pytest
from PIL import Image

from localization_task.dataset import DataError
from localization_task.common.run_files import (
    JsonLineError,
    append_record,
    check_fresh_run,
    iter_jsonl,
    remove_earlier_run,
    write_png_atomic,
    write_run_config,
)
from localization_task.evaluation.predictions import RUN_CONFIG_JSON, check_resumable, load_records
from localization_task.train import RESULT_FILES


def _record(name, *points):
    return {"file_name": name, "points": [{"x": x, "y": y, "confidence": 1.0} for x, y in points]}


def test_records_round_trip_and_a_later_record_wins(tmp_path):
    path = tmp_path / "predictions.jsonl"
    for record in (_record("a.png", (1, 2)), _record("b.png"), _record("a.png", (3, 4))):
        append_record(path, record)
    records = load_records(path)
    assert list(records) == ["a.png", "b.png"] and records["a.png"] == _record("a.png", (3, 4))
    assert load_records(tmp_path / "absent.jsonl") == {}


def test_the_reader_skips_blank_lines_and_names_the_bad_one(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text('{"a": 1}\n\n  \n[2]\n{oops\n')
    lines = iter_jsonl(path)
    assert [next(lines), next(lines)] == [(1, {"a": 1}), (4, [2])]
    with pytest.raises(JsonLineError) as error:
        next(lines)
    assert error.value.line_no == 5


def test_an_incomplete_last_line_is_cut_off(tmp_path, capsys):
    path = tmp_path / "predictions.jsonl"
    append_record(path, _record("a.png", (1, 2)))
    full = path.read_text()
    path.write_text(full + full[:20])
    assert list(load_records(path)) == ["a.png"]
    assert path.read_text() == full and "incomplete last record" in capsys.readouterr().err


@pytest.mark.parametrize("line", ["{oops", '{"file_name": "a.png"}', '{"file_name": "a.png", "points": [{"x": 1}]}'])
def test_a_line_that_is_not_a_record_is_one_sentence(tmp_path, line):
    path = tmp_path / "predictions.jsonl"
    path.write_text(json.dumps(_record("b.png")) + "\n" + line + "\n")
    with pytest.raises(DataError, match=r"line 2 is not a prediction record: delete the file"):
        load_records(path)


def test_resume_checks_the_saved_settings(tmp_path):
    write_run_config(tmp_path, {"output_dir": tmp_path}, {"prediction_settings": {"prompt": "p", "labels": ["n"]}},
                     RUN_CONFIG_JSON)
    saved = json.loads((tmp_path / "run_config.localization.json").read_text())
    assert saved["config"] == {"output_dir": str(tmp_path)} and "git_commit" in saved and "versions" in saved
    assert saved["task"] == "localization_task"
    records = {"a.png": _record("a.png")}
    check_resumable(tmp_path, records, {"prompt": "p", "labels": ("n",)})  # tuples match their JSON lists
    check_resumable(tmp_path, {}, {"prompt": "other"})  # nothing cached, nothing to mix
    with pytest.raises(DataError, match="different prompt"):
        check_resumable(tmp_path, records, {"prompt": "other", "labels": ["n"]})


def test_png_is_written_in_one_step(tmp_path):
    path = tmp_path / "sub" / "overlay.png"
    write_png_atomic(path, Image.new("RGB", (4, 3)))
    with Image.open(path) as image:
        assert (image.format, image.size) == ("PNG", (4, 3))
    assert [p.name for p in path.parent.iterdir()] == ["overlay.png"]


def test_check_fresh_run_refuses_an_earlier_run_unless_resumed_or_overwritten(tmp_path):
    out, ckpt = tmp_path / "out", tmp_path / "ckpt"
    assert check_fresh_run(out, ckpt, resume=None, overwrite=False, results=RESULT_FILES) == []
    out.mkdir()
    (out / "eval_summary.json").write_text("{}")
    (ckpt / "checkpoint-10").mkdir(parents=True)
    with pytest.raises(DataError, match="--resume to continue it, add --overwrite to replace it"):
        check_fresh_run(out, ckpt, resume=None, overwrite=False, results=RESULT_FILES)
    assert check_fresh_run(out, ckpt, resume="latest", overwrite=False, results=RESULT_FILES) == []
    found = check_fresh_run(out, ckpt, resume=None, overwrite=True, results=RESULT_FILES)
    assert set(found) == {out / "eval_summary.json", ckpt / "checkpoint-10"}
    remove_earlier_run(found)
    assert list(out.iterdir()) == [] and list(ckpt.iterdir()) == []
