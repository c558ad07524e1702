"""The evaluator's command line on tiny CSV/JSONL files written to tmp_path."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from localization_task.metrics import main

REPO = Path(__file__).resolve().parents[2]
SIZES = {"a.png": (300, 400), "b.png": (600, 800), "c.png": (300, 400), "d.png": (300, 400)}
GT_CSV = "file_name,x,y\na.png,100,100\na.png,200,200\nb.png,300,300\n"
PRED_CSV = "file_name,x,y,confidence\na.png,106,108,0.9\na.png,200,220,0.8\na.png,50,350,0.3\nc.png,10,10,0.5\n"


@pytest.fixture
def case(tmp_path):
    """The hand example of test_metrics.py: images a-c carry points, d.png only exists on disk."""
    roots = tmp_path / "images"
    roots.mkdir()
    for name, size in SIZES.items():
        Image.new("L", size, 128).save(roots / name)
    (tmp_path / "gt.csv").write_text(GT_CSV)
    (tmp_path / "pred.csv").write_text(PRED_CSV)
    (tmp_path / "list.txt").write_text("# test images\na.png\nb.png\nc.png\nd.png\n")
    return tmp_path


def run(case, *extra):
    argv = ["--predictions", str(case / "pred.csv"), "--ground_truth", str(case / "gt.csv"),
            "--output_dir", str(case / "out"), *extra]
    return main(argv)


def summary(case):
    text = (case / "out" / "eval_summary.json").read_text()
    return json.loads(text, parse_constant=lambda c: pytest.fail(f"invalid JSON constant {c}"))


def test_cli_csv_table_and_json(case, capsys):
    assert run(case, "--image_roots", str(case / "images"), "--image_list", str(case / "list.txt"),
               "--pixel_spacing_mm", "0.5") == 0
    table = capsys.readouterr().out
    lines = table.splitlines()
    assert lines[2].split() == ["threshold", "tight", "tolerant"]
    assert lines[3].split()[-2:] == ["0.02", "0.05"]
    assert [ln.split() for ln in lines if ln.startswith(("precision ", "F1 "))] == [
        ["precision", "0.250", "0.500"], ["F1", "0.286", "0.571"]]
    assert [ln.split()[-2:] for ln in lines if ln.startswith(("all images", "images with"))] == [
        ["0.250", "1/4"], ["0.000", "0/2"], ["0.500", "1/2"]]
    assert all(len(ln) <= 100 for ln in lines if not ln.startswith("wrote "))
    s = summary(case)
    assert set(s) >= {"tight", "tolerant", "count_accuracy", "froc", "config", "git_commit", "versions"}
    tight, tol = s["tight"], s["tolerant"]
    assert (tight["tp"], tight["fp"], tight["fn"], tol["tp"], tol["fp"], tol["fn"]) == (1, 3, 2, 2, 2, 1)
    assert tol["precision"] == 0.5 and tol["recall"] == pytest.approx(2 / 3) and tol["pck"] == pytest.approx(2 / 3)
    errors = (tol["mre_px"], tol["mre_std_px"], tol["median_re_px"], tol["median_re_mm"])
    assert errors == pytest.approx((15, 5, 15, 7.5))
    assert tol["mre_frac"] == pytest.approx(0.03)
    assert s["count_accuracy"] == 0.25 and s["n_images"] == 4
    assert (s["count_accuracy_with_nodules"], s["n_count_images_with_nodules"]) == (0, 2)
    assert (s["count_accuracy_without_nodules"], s["n_count_correct_without_nodules"]) == (0.5, 1)
    assert (tight["radius_px_min"], tight["radius_px_max"], tol["radius_px_min"]) == (10, 20, 25)
    # FROC (tolerant, 4 images, 3 GT points): cut-offs .9/.8/.5/.3 give (0, 1/3), (0, 2/3), (.25, 2/3), (.5, 2/3)
    assert s["froc"]["defined"] and s["froc"]["threshold"] == "tolerant"
    assert s["froc"]["sensitivity"] == pytest.approx([2 / 3] * 7) and s["froc"]["cpm"] == pytest.approx(2 / 3)
    assert [p["fp_per_image"] for p in s["froc"]["curve"]] == [0, 0, 0, 0.25, 0.5]
    assert s["froc"]["curve"][0]["confidence"] is None  # the +inf cut-off (nothing kept) is written as null
    per_image = pd.read_csv(case / "out" / "per_image_metrics.csv")
    assert per_image["file_name"].tolist() == ["a.png", "b.png", "c.png", "d.png"]
    assert per_image["tolerant_tp"].tolist() == [2, 0, 0, 0] and per_image["count_correct"].tolist() == [0, 0, 0, 1]
    assert np.isnan(per_image.loc[1, "tolerant_precision"])
    assert per_image["tight_radius_px"][:3].tolist() == [10, 20, 10]
    assert np.isnan(per_image.loc[3, "tight_radius_px"])  # no point on d.png: its size is not read
    assert per_image.loc[0, "tolerant_median_re_px"] == 15 and per_image["tolerant_median_re_px"][1:].isna().all()


def test_cli_without_image_list_evaluates_the_union(case):
    assert run(case, "--image_roots", str(case / "images")) == 0
    s = summary(case)
    assert s["n_images"] == 3 and s["count_accuracy"] == 0
    assert s["tight"]["macro_f1"] == pytest.approx(0.4 / 3)
    assert "mre_mm" not in s["tight"]


def test_cli_scans_image_roots_for_negatives(case):
    assert run(case, "--image_roots", str(case / "images"), "--scan_image_roots") == 0
    assert summary(case)["n_count_images"] == 4 and summary(case)["count_accuracy"] == 0.25


def test_cli_jsonl_sizes_equal_confidences_and_custom_thresholds(case, capsys):
    records = [{"file_name": "a.png", "width": 300, "height": 400, "points": [{"x": 1, "y": 1}]},  # superseded
               {"file_name": "a.png", "width": 300, "height": 400, "response": "...", "boxes": [],
                "points": [{"x": 106, "y": 108}, {"x": 200, "y": 220}, {"x": 50, "y": 350}]},
               {"file_name": "b.png", "width": 600, "height": 800, "points": []},
               {"file_name": "c.png", "width": 300, "height": 400, "points": [{"x": 10, "y": 10}]}]
    (case / "pred.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    argv = ["--predictions", str(case / "pred.jsonl"), "--ground_truth", str(case / "gt.csv"),
            "--output_dir", str(case / "out"), "--thresholds", "t10=0.02", "t25=0.05"]
    assert main(argv) == 0
    assert "FROC not defined" in capsys.readouterr().out
    s = summary(case)
    assert s["t10"]["tp"] == 1 and s["t25"]["tp"] == 2 and s["froc"]["threshold"] == "t25"
    assert s["froc"]["cpm"] is None and s["froc"]["sensitivity"] is None and "no confidence" in s["froc"]["reason"]
    assert s["froc"]["operating_point"] == pytest.approx({"fp_per_image": 2 / 3, "sensitivity": 2 / 3})


def test_cli_tight_and_tolerant_fractions_replace_the_defaults_one_by_one(case):
    assert run(case, "--image_roots", str(case / "images"), "--tolerant_frac", "0.1") == 0
    s = summary(case)
    assert (s["tight"]["threshold_frac"], s["tolerant"]["threshold_frac"]) == (0.02, 0.1)
    assert s["config"]["thresholds"] == {"tight": 0.02, "tolerant": 0.1}


def test_cli_writes_overlays_of_a_16_bit_image(case, capsys):
    pixels = (np.arange(300 * 400).reshape(400, 300) % 4000 + 500).astype(np.uint16)
    Image.fromarray(pixels).save(case / "images" / "a.png")
    assert run(case, "--image_roots", str(case / "images"), "--overlay_dir", str(case / "overlays")) == 0
    assert sorted(p.name for p in (case / "overlays").iterdir()) == ["a.png", "b.png", "c.png"]
    with Image.open(case / "overlays" / "a.png") as im:
        assert im.mode == "RGB" and im.size == (300, 400)


@pytest.mark.parametrize("change, expect", [
    ({"pred.csv": None}, "does not exist"),
    ({"gt.csv": "file_name,x\na.png,1\n"}, "lacks the column(s) y"),
    ({"pred.csv": "file_name,x,y\na.png,abc,3\n"}, "non-numeric x on line 2"),
    ({"pred.csv": ""}, "not a readable CSV"),
    ({"images/b.png": None}, "size of image b.png is unknown"),
    ({"pred.csv": "file_name,x,y\n../secret.png,1,2\n"}, "escape its image folder"),
])
def test_cli_bad_input_is_one_sentence_and_exit_2(case, capsys, change, expect):
    for name, text in change.items():
        (case / name).unlink() if text is None else (case / name).write_text(text)
    assert run(case, "--image_roots", str(case / "images")) == 2
    err = capsys.readouterr().err
    assert expect in err and err.count("\n") == 1 and "Traceback" not in err


def test_cli_bad_jsonl_and_bad_flags(case, capsys):
    (case / "pred.jsonl").write_text('{"file_name": "a.png", "points": []}\n{not json\n')
    assert main(["--predictions", str(case / "pred.jsonl"), "--ground_truth", str(case / "gt.csv")]) == 2
    assert "line 2, is not valid JSON" in capsys.readouterr().err
    (case / "pred.jsonl").write_text('{"file_name": "a.png", "width": "wide", "height": 4, "points": []}\n')
    assert main(["--predictions", str(case / "pred.jsonl"), "--ground_truth", str(case / "gt.csv")]) == 2
    assert "positive whole number" in capsys.readouterr().err
    assert run(case, "--thresholds", "tight=0.02", "--tight_frac", "0.03") == 2
    assert run(case, "--tight_frac", "1.5") == 2
    assert run(case, "--thresholds", "tight") == 2
    assert run(case, "--pixel_spacing_mm", "-1") == 2
    assert run(case, "--pixel_spacing_mm", "inf") == 2
    assert "positive number of mm per pixel" in capsys.readouterr().err


@pytest.mark.parametrize("entry", [["localization_task/metrics.py"], ["-m", "localization_task.metrics"]])
def test_cli_runs_as_script_and_module(case, entry):
    cmd = [sys.executable, *entry, "--predictions", str(case / "pred.csv"), "--ground_truth", str(case / "gt.csv"),
           "--image_roots", str(case / "images"), "--output_dir", str(case / "out")]
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "count accuracy" in done.stdout and (case / "out" / "per_image_metrics.csv").is_file()
    bad = subprocess.run(cmd[:-4], cwd=REPO, capture_output=True, text=True, timeout=120)  # no --image_roots
    assert bad.returncode == 2 and "Traceback" not in bad.stderr and bad.stderr.count("\n") == 1


def test_missing_overlay_image_stops_before_anything_is_written(case, capsys):
    records = [{"file_name": n, "width": w, "height": h, "points": []} for n, (w, h) in SIZES.items()]
    (case / "pred.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    (case / "images" / "b.png").unlink()  # its size comes from the predictions, its pixels are gone
    argv = ["--predictions", str(case / "pred.jsonl"), "--ground_truth", str(case / "gt.csv"),
            "--image_roots", str(case / "images"), "--output_dir", str(case / "out"),
            "--overlay_dir", str(case / "overlays")]
    assert main(argv) == 2
    assert "b.png is not under --image_roots" in capsys.readouterr().err
    assert not (case / "out").exists() and not (case / "overlays").exists()


def test_unwritable_output_dir_is_one_sentence(case, capsys):
    (case / "taken").write_text("a file, not a folder")
    argv = ["--predictions", str(case / "pred.csv"), "--ground_truth", str(case / "gt.csv"),
            "--image_roots", str(case / "images"), "--output_dir", str(case / "taken" / "out")]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "cannot write to the output folder" in err and err.count("\n") == 1


def test_a_csv_without_an_image_list_warns_in_one_line_that_negatives_go_uncounted(case, capsys):
    roots = ("--image_roots", str(case / "images"))
    assert run(case, *roots) == 0
    warnings = [line for line in capsys.readouterr().err.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and "--image_list" in warnings[0] and "true negatives" in warnings[0]
    assert run(case, *roots, "--image_list", str(case / "list.txt")) == 0
    assert "warning:" not in capsys.readouterr().err
    (case / "pred.jsonl").write_text(json.dumps({"file_name": "a.png", "points": []}) + "\n")
    assert main(["--predictions", str(case / "pred.jsonl"), "--ground_truth", str(case / "gt.csv"),
                 *roots, "--output_dir", str(case / "out3")]) == 0
    assert "warning:" not in capsys.readouterr().err  # a JSONL names every image it scored
