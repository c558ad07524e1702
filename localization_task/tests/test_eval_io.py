"""Prediction formats (CSV, JSONL, another team's JSON list), finite coordinates, pixel spacings."""

import json

import numpy as np
import pytest

from localization_task.dataset import DataError
from localization_task.evaluation.inputs import read_pixel_spacing, read_predictions
from localization_task.metrics import main
from localization_task.tests.test_metrics_cli import case, run, summary  # noqa: F401  (case: a fixture)

# The hand example's predictions without confidences, and b.png registered with none.
POINTS = {"a.png": [[106, 108], [200, 220], [50, 350]], "b.png": [], "c.png": [[10, 10]]}
SIZES = {"a.png": (300, 400), "b.png": (600, 800), "c.png": (300, 400)}


def write_three_formats(folder):
    rows = [f"{n},{x},{y}" for n, pts in POINTS.items() for x, y in pts] + ["b.png,,"]
    (folder / "p.csv").write_text("file_name,x,y\n" + "\n".join(rows) + "\n")
    jsonl = [{"file_name": n, "width": SIZES[n][0], "height": SIZES[n][1],
              "points": [{"x": x, "y": y} for x, y in pts]} for n, pts in POINTS.items()]
    (folder / "p.jsonl").write_text("".join(json.dumps(r) + "\n" for r in jsonl))
    records = [{"file_name": n, "image_path": f"/data/{n}", "width": SIZES[n][0], "height": SIZES[n][1],
                "pred_points": pts, "n_pred": len(pts)} for n, pts in POINTS.items()]
    (folder / "p.json").write_text(json.dumps(records))


def test_csv_jsonl_and_json_list_give_identical_results(case):
    write_three_formats(case)
    outputs = {}
    for suffix in ("csv", "jsonl", "json"):
        out = case / f"out_{suffix}"
        argv = ["--predictions", str(case / f"p.{suffix}"), "--ground_truth", str(case / "gt.csv"),
                "--image_roots", str(case / "images"), "--output_dir", str(out), "--pixel_spacing_mm", "0.5"]
        assert main(argv) == 0
        s = json.loads((out / "eval_summary.json").read_text())
        for key in ("config", "git_commit", "versions"):
            s.pop(key)
        outputs[suffix] = (s, (out / "per_image_metrics.csv").read_text())
    assert outputs["csv"] == outputs["jsonl"] == outputs["json"]
    s = outputs["json"][0]
    assert s["n_images"] == 3 and s["tolerant"]["tp"] == 2 and s["tolerant"]["median_re_mm"] == 7.5
    assert "no confidence" in s["froc"]["reason"]


def test_json_list_reader_keeps_sizes_and_gives_no_confidence(tmp_path):
    write_three_formats(tmp_path)
    preds = read_predictions(tmp_path / "p.json")
    assert preds.sizes == SIZES and preds.xy["b.png"].shape == (0, 2)
    np.testing.assert_array_equal(preds.xy["a.png"], POINTS["a.png"])
    assert np.isnan(preds.confidence["a.png"]).all() and len(preds.confidence["a.png"]) == 3


GOOD = {"file_name": "a.png", "width": 300, "height": 400, "pred_points": [[1, 2]], "n_pred": 1}


@pytest.mark.parametrize("text, expect", [
    ("[" + json.dumps(GOOD) + ",", "is not valid JSON (line 1)"),
    (json.dumps(GOOD), "does not hold a JSON list of records"),
    (json.dumps([GOOD, {"file_name": "b.png"}]), "record 2, lacks a file_name or a pred_points list"),
    (json.dumps([{**GOOD, "pred_points": [[1, 2, 3]]}]), "record 1 (a.png), has a point that is not a pair"),
    (json.dumps([{**GOOD, "pred_points": ["12"]}]), "not a pair of numbers"),
    (json.dumps([{**GOOD, "pred_points": [[1, "x"]]}]), "not a pair of numbers"),
    ('[{"file_name": "a.png", "pred_points": [[NaN, NaN]], "n_pred": 1}]', "not finite"),
    ('[{"file_name": "a.png", "pred_points": [[1, Infinity]]}]', "not finite"),
    (json.dumps([{**GOOD, "n_pred": 2}]), "gives n_pred 2 but holds 1 points"),
    (json.dumps([GOOD, GOOD]), "two records for a.png (records 1 and 2): keep one per image"),
    (json.dumps([{**GOOD, "width": 0}]), "positive whole number"),
])
def test_bad_json_list_is_one_sentence_naming_file_and_record(case, capsys, text, expect):
    (case / "p.json").write_text(text)
    out = case / "out"
    argv = ["--predictions", str(case / "p.json"), "--ground_truth", str(case / "gt.csv"),
            "--image_roots", str(case / "images"), "--output_dir", str(out)]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert expect in err and str(case / "p.json") in err and err.count("\n") == 1
    assert not out.exists()  # nothing written


@pytest.mark.parametrize("file, text, expect", [
    ("pred.csv", "file_name,x,y\na.png,inf,3\n", "x that is not finite (inf) on line 2"),
    ("pred.csv", "file_name,x,y\na.png,1,2\nc.png,nan,nan\n", "x that is not finite (nan) on line 3"),
    ("pred.csv", "file_name,x,y,confidence\na.png,1,2,-inf\n", "confidence that is not finite"),
    ("gt.csv", "file_name,x,y\na.png,100,-Infinity\n", "y that is not finite (-inf) on line 2"),
    ("pred.jsonl", '{"file_name": "a.png", "points": [{"x": Infinity, "y": 2}]}\n', "line 1, has a coordinate"),
    ("pred.jsonl", '{"file_name": "a.png", "points": [{"x": NaN, "y": NaN}]}\n', "not finite"),
])
def test_nan_or_infinite_coordinates_are_refused_as_not_finite(case, capsys, file, text, expect):
    (case / file).write_text(text)
    predictions = case / ("pred.jsonl" if file.endswith("jsonl") else "pred.csv")
    argv = ["--predictions", str(predictions), "--ground_truth", str(case / "gt.csv"),
            "--image_roots", str(case / "images"), "--output_dir", str(case / "out")]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert expect in err and "not finite" in err and "non-numeric" not in err and err.count("\n") == 1


def test_missing_confidences_stay_allowed(tmp_path):
    (tmp_path / "p.csv").write_text("file_name,x,y,confidence\na.png,1,2,\na.png,3,4,nan\nb.png,,,\n")
    preds = read_predictions(tmp_path / "p.csv")
    assert np.isnan(preds.confidence["a.png"]).all() and preds.xy["b.png"].shape == (0, 2)
    (tmp_path / "p.jsonl").write_text('{"file_name": "a.png", "points": [{"x": 1, "y": 2, "confidence": null}]}\n')
    assert np.isnan(read_predictions(tmp_path / "p.jsonl").confidence["a.png"]).all()


# ---------------------------------------------------------------- pixel spacing

def test_read_pixel_spacing(tmp_path):
    (tmp_path / "s.csv").write_text("file_name,spacing_mm,source\na.png,0.5,lidc\nb.png,0.143,nih\n")
    assert read_pixel_spacing(tmp_path / "s.csv") == {"a.png": 0.5, "b.png": 0.143}


@pytest.mark.parametrize("text, expect", [
    ("file_name,mm\na.png,0.5\n", "lacks the column(s) spacing_mm"),
    ("file_name,spacing_mm\na.png,0\n", "not a positive number on line 2"),
    ("file_name,spacing_mm\na.png,0.5\nb.png,-1\n", "not a positive number on line 3"),
    ("file_name,spacing_mm\na.png,\n", "not a positive number on line 2"),
    ("file_name,spacing_mm\na.png,inf\n", "not a positive number"),
    ("file_name,spacing_mm\na.png,0.5\na.png,0.5\n", "lists a.png more than once"),
])
def test_bad_pixel_spacing_csv_is_one_sentence_and_exit_2(case, capsys, text, expect):
    (case / "spacing.csv").write_text(text)
    assert run(case, "--image_roots", str(case / "images"), "--pixel_spacing_csv", str(case / "spacing.csv")) == 2
    err = capsys.readouterr().err
    assert expect in err and str(case / "spacing.csv") in err and err.count("\n") == 1
    assert not (case / "out").exists()
    with pytest.raises(DataError):
        read_pixel_spacing(case / "spacing.csv")


def test_spacing_csv_wins_over_the_single_value_for_the_images_it_lists(case, capsys):
    # tolerant pairs: both on a.png (10 px and 20 px); tight: one on a.png (10 px)
    (case / "spacing.csv").write_text("file_name,spacing_mm\na.png,0.2\nzzz.png,9\n")
    assert run(case, "--image_roots", str(case / "images"), "--pixel_spacing_csv", str(case / "spacing.csv"),
               "--pixel_spacing_mm", "0.5") == 0
    s = summary(case)
    assert s["n_images_with_spacing"] == 3 and s["tolerant"]["n_matched_mm"] == 2
    assert (s["tolerant"]["mre_mm"], s["tolerant"]["median_re_mm"]) == pytest.approx((3, 3))
    assert s["config"]["pixel_spacing_csv"] == str(case / "spacing.csv")
    assert "Errors in mm cover only" not in capsys.readouterr().out


def test_spacing_csv_alone_covers_only_the_images_it_lists(case, capsys):
    (case / "spacing.csv").write_text("file_name,spacing_mm\nb.png,0.2\n")  # b.png has no match
    assert run(case, "--image_roots", str(case / "images"), "--pixel_spacing_csv", str(case / "spacing.csv")) == 0
    s = summary(case)
    assert s["n_images_with_spacing"] == 1 and s["tolerant"]["n_matched"] == 2
    assert s["tolerant"]["n_matched_mm"] == 0 and s["tolerant"]["mre_mm"] is None
    out = capsys.readouterr().out
    assert "Errors in mm cover only the matched pairs on the 1 of 3 images" in out
