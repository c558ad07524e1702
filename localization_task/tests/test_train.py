"""The localizer's train.py end to end on a tiny encoder and synthetic data, then inference with its checkpoint."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from localization_task import inference, train
from localization_task.heatmap.model import HeatmapLocalizer

REPO = Path(__file__).resolve().parents[2]


def _argv(root, encoder, out: Path, *extra) -> list[str]:
    return ["--data_root", str(root), "--encoder", str(encoder), "--encoder_mode", "full",
            "--input_size_px", "64", "--head_channels", "16", "--stem_channels", "8",
            "--output_dir", str(out / "out"), "--checkpoint_dir", str(out / "ckpt"),
            "--batch_size", "8", "--grad_accum", "1", "--eval_batch_size", "16", "--max_steps", "6",
            "--eval_steps", "3", "--logging_steps", "3", "--num_workers", "0", "--learning_rate", "3e-3",
            "--weak_per_keypointed", "0.5", "--negatives_per_keypointed", "0.5", *extra]


@pytest.fixture(scope="module")
def trained(labelled_root, tiny_encoder, tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("trained")
    assert train.main(_argv(labelled_root, tiny_encoder, run)) == 0
    return run


def _points_by_name(jsonl: Path) -> dict[str, np.ndarray]:
    records = [json.loads(line) for line in jsonl.read_text().splitlines()]
    return {Path(r["file_name"]).name: np.array([[p["x"], p["y"], p["confidence"]] for p in r["points"]]).reshape(-1, 3)
            for r in records}


def test_training_writes_the_test_evaluation_and_a_model_with_its_thresholds(trained):
    out = trained / "out"
    summary = json.loads((out / "eval_summary.json").read_text())
    for key in ("count_accuracy", "count_accuracy_with_nodules", "count_accuracy_without_nodules", "tight",
                "tolerant", "froc", "min_confidence_f1", "min_confidence_count"):
        assert key in summary, key
    assert summary["n_images_with_gt"] > 0 and summary["n_images"] > summary["n_images_with_gt"]
    per_image = pd.read_csv(out / "per_image_metrics.csv")
    assert len(per_image) == summary["n_images"] and "tolerant_radius_px" in per_image
    model = HeatmapLocalizer.from_pretrained(trained / "ckpt" / "best_model")
    assert model.config.min_confidence_f1 == summary["min_confidence_f1"]
    assert (out / "localization_test_results.csv").is_file() and (out / "run_config.json").is_file()
    split = pd.read_csv(out / "split.csv")
    split["patient"] = split["file_name"].str.split("_").str[0]
    assert split.groupby("patient")["split"].nunique().max() == 1  # no patient in two splits


def test_training_draws_the_froc_curve_and_overlays_of_a_few_test_images(trained):
    out = trained / "out"
    with Image.open(out / "froc.png") as png:
        png.verify()
        assert png.format == "PNG" and png.size == (600, 450)
    per_image = pd.read_csv(out / "per_image_metrics.csv")
    drawn = pd.concat([per_image[per_image["n_gt"] > 0], per_image[(per_image["n_gt"] == 0) & (per_image["n_pred"] > 0)]])
    drawn = drawn.head(4)  # --n_overlays 4: images with ground truth first, then false positives
    assert len(drawn) == 4
    assert sorted(p.name for p in (out / "overlays").iterdir()) == sorted(
        name.rsplit(".", 1)[0] + ".png" for name in drawn["file_name"])
    for row in drawn.itertuples():
        with Image.open(out / "overlays" / (row.file_name.rsplit(".", 1)[0] + ".png")) as png:
            png.verify()
            assert png.format == "PNG" and png.size == (row.width_px, row.height_px)


def test_inference_with_the_checkpoint_reproduces_the_test_predictions(trained, labelled_root, tmp_path):
    argv = ["--input_dir", str(labelled_root), "--recursive", "--output_dir", str(tmp_path),
            "--backend", "heatmap", "--checkpoint", str(trained / "ckpt" / "best_model"), "--num_workers", "0",
            "--batch_size", "5"]
    assert inference.main(argv) == 0
    from_training = _points_by_name(trained / "out" / "predictions.jsonl")
    from_inference = _points_by_name(tmp_path / "predictions.jsonl")
    assert any(len(points) for points in from_training.values())  # something to compare
    for name, points in from_training.items():
        np.testing.assert_allclose(from_inference[name], points, atol=1e-4, err_msg=name)


def test_the_inference_command_needs_no_backend_flag_for_a_trained_localizer(trained, labelled_root, tmp_path):
    """The command as a user first types it: the heatmap localizer is the default backend."""
    command = [sys.executable, str(REPO / "localization_task" / "inference.py"),
               "--input_dir", str(labelled_root / "nih_filtered_images"), "--output_dir", str(tmp_path / "out"),
               "--checkpoint", str(trained / "ckpt" / "best_model")]
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    done = subprocess.run(command, capture_output=True, text=True, timeout=600, env=env, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    run = json.loads((tmp_path / "out" / inference.RUN_CONFIG_JSON).read_text())
    assert run["config"]["backend"] == "heatmap"
    rows = pd.read_csv(tmp_path / "out" / "localization_test_results.csv")
    assert list(rows.columns) == ["file_name", "x", "y", "confidence"]
    assert len(_points_by_name(tmp_path / "out" / "predictions.jsonl")) == len(
        list((labelled_root / "nih_filtered_images").iterdir()))


def test_gating_removes_the_points_of_images_the_classifier_calls_no_finding(trained, labelled_root, tmp_path):
    images = sorted(p.name for p in (labelled_root / "nih_filtered_images").iterdir())
    kept = images[0]
    gate = pd.DataFrame({"file_name": images, "label": ["Nodule" if n == kept else "No Finding" for n in images],
                         "confidence": [0.9 if n == kept else 0.1 for n in images]})
    gate.to_csv(tmp_path / "gate.csv", index=False)
    argv = ["--input_dir", str(labelled_root / "nih_filtered_images"), "--output_dir", str(tmp_path / "out"),
            "--backend", "heatmap", "--checkpoint", str(trained / "ckpt" / "best_model"), "--num_workers", "0",
            "--min_confidence", "0", "--gate_csv", str(tmp_path / "gate.csv")]
    assert inference.main(argv) == 0
    records = [json.loads(line) for line in (tmp_path / "out" / "predictions.jsonl").read_text().splitlines()]
    assert {r["file_name"] for r in records if r["points"]} == {kept}
    assert all(r.get("gated") and r["ungated_points"] for r in records if r["file_name"] != kept)
    rows = pd.read_csv(tmp_path / "out" / "localization_test_results.csv")
    assert set(rows["file_name"]) == {kept}


def test_gate_csv_without_some_images_is_one_sentence(trained, labelled_root, tmp_path, capsys):
    pd.DataFrame({"file_name": ["other.png"], "label": ["Nodule"], "confidence": [0.9]}).to_csv(
        tmp_path / "gate.csv", index=False)
    argv = ["--input_dir", str(labelled_root / "nih_filtered_images"), "--output_dir", str(tmp_path / "out"),
            "--backend", "heatmap", "--checkpoint", str(trained / "ckpt" / "best_model"),
            "--gate_csv", str(tmp_path / "gate.csv")]
    assert inference.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "--gate_csv" in err and "no row" in err


def test_resume_continues_from_the_saved_step(trained, labelled_root, tiny_encoder, tmp_path, capsys):
    shutil.copytree(trained / "ckpt", tmp_path / "ckpt")
    capsys.readouterr()
    assert train.main(_argv(labelled_root, tiny_encoder, tmp_path, "--max_steps", "9", "--resume")) == 0
    assert f"resuming from {tmp_path / 'ckpt' / 'checkpoint-6'}" in capsys.readouterr().out
    state = json.loads((tmp_path / "ckpt" / "checkpoint-9" / "trainer_state.json").read_text())
    first = json.loads((trained / "ckpt" / "checkpoint-6" / "trainer_state.json").read_text())
    assert state["global_step"] == 9
    assert state["log_history"][: len(first["log_history"])] == first["log_history"]  # steps 1-6 not redone


def test_bad_values_and_missing_data_exit_2(tmp_path, capsys):
    assert train.main(["--data_root", str(tmp_path)]) == 2
    assert "classification_labels.csv" in capsys.readouterr().err
    assert train.main(["--metric_for_best", "nonsense"]) == 2
    assert "--metric_for_best" in capsys.readouterr().err
    assert inference.main(["--input_dir", str(tmp_path), "--backend", "heatmap"]) == 2
    assert "--checkpoint" in capsys.readouterr().err


def test_two_process_data_parallel_training(labelled_root, tiny_encoder, tmp_path):
    """torchrun with 2 CPU processes (gloo): each trains a replica; rank 0 evaluates and saves."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               str(REPO / "localization_task" / "train.py"),
               *_argv(labelled_root, tiny_encoder, tmp_path, "--max_steps", "2", "--eval_steps", "2")]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, env=env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    state = json.loads((tmp_path / "ckpt" / "checkpoint-2" / "trainer_state.json").read_text())
    assert state["global_step"] == 2
    assert (tmp_path / "out" / "eval_summary.json").is_file()


def test_gating_applies_to_the_grounding_backends_too(tmp_path, scripted_backend):
    data = REPO / "localization_task" / "tests" / "data"
    names = sorted(p.name for p in data.iterdir() if p.suffix == ".png")
    pd.DataFrame({"file_name": names, "label": "Nodule", "confidence": [0.2, 0.6, 0.9][: len(names)]}).to_csv(
        tmp_path / "gate.csv", index=False)
    argv = ["--input_dir", str(data), "--output_dir", str(tmp_path / "out"), "--backend", "scripted",
            "--gate_csv", str(tmp_path / "gate.csv"), "--gate_threshold", "0.5"]
    assert inference.main(argv) == 0
    records = {json.loads(line)["file_name"]: json.loads(line)
               for line in (tmp_path / "out" / "predictions.jsonl").read_text().splitlines()}
    assert records[names[0]]["points"] == [] and records[names[0]]["gated"] is True  # confidence 0.2 < 0.5
    assert not records[names[-1]].get("gated")


def test_heatmap_inference_resumes_without_redoing_images(trained, labelled_root, tmp_path, capsys):
    argv = ["--input_dir", str(labelled_root / "nih_filtered_images"), "--output_dir", str(tmp_path),
            "--backend", "heatmap", "--checkpoint", str(trained / "ckpt" / "best_model"), "--num_workers", "0"]
    assert inference.main(argv) == 0
    first = (tmp_path / "localization_test_results.csv").read_bytes()
    capsys.readouterr()
    assert inference.main(argv) == 0
    assert capsys.readouterr().out.startswith("0 images predicted")
    assert (tmp_path / "localization_test_results.csv").read_bytes() == first


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def test_a_truncated_training_image_is_skipped_listed_and_training_goes_on(labelled_root, tiny_encoder, tmp_path):
    root = tmp_path / "root"
    shutil.copytree(labelled_root, root)
    split = pd.read_csv(root / "classification_labels.csv")
    broken = sorted((root / "nih_filtered_images").iterdir())[:2]
    for path in broken:
        _truncate(path)
    argv = _argv(root, tiny_encoder, tmp_path, "--max_steps", "3", "--max_unreadable_frac", "0.1",
                 "--negatives_per_keypointed", "3", "--weak_per_keypointed", "3")
    assert train.main(argv) == 0
    listed = pd.read_csv(tmp_path / "out" / "unreadable_files.csv")
    assert set(listed["file_name"]) <= {p.name for p in broken} and len(listed) >= 1
    assert (tmp_path / "out" / "eval_summary.json").is_file() and len(split) > 0


def test_too_many_unreadable_training_images_stop_with_one_sentence(labelled_root, tiny_encoder, tmp_path, capsys):
    root = tmp_path / "root"
    shutil.copytree(labelled_root, root)
    for path in sorted((root / "nih_filtered_images").iterdir())[:10]:
        _truncate(path)
    argv = _argv(root, tiny_encoder, tmp_path, "--max_steps", "3", "--max_unreadable_frac", "0",
                 "--negatives_per_keypointed", "3", "--weak_per_keypointed", "3")
    assert train.main(argv) == 2
    # Progress bars share stderr and redraw their line with a carriage return.
    lines = capsys.readouterr().err.replace("\r", "\n").splitlines()
    errors = [line[line.index("error:"):] for line in lines if "error:" in line]
    assert len(errors) == 1 and "--max_unreadable_frac" in errors[0] and "unreadable" in errors[0]


def test_a_fresh_run_over_a_finished_one_is_refused_and_changes_nothing(trained, labelled_root, tiny_encoder, capsys):
    before = {p: p.read_bytes() for p in sorted((trained / "out").iterdir()) if p.is_file()}
    capsys.readouterr()
    assert train.main(_argv(labelled_root, tiny_encoder, trained)) == 2
    errors = [line for line in capsys.readouterr().err.replace("\r", "\n").splitlines() if "error:" in line]
    assert len(errors) == 1 and "--resume" in errors[0] and "--overwrite" in errors[0]
    assert {p: p.read_bytes() for p in sorted((trained / "out").iterdir()) if p.is_file()} == before
    assert train.main(_argv(labelled_root, tiny_encoder, trained, "--resume", "--overwrite")) == 2


def test_resume_continues_only_a_run_of_this_task(labelled_root, tiny_encoder, tmp_path, capsys):
    """A missing folder, a run of the classifier, or checkpoints beside no run config: one sentence each."""
    foreign = tmp_path / "classification" / "checkpoint-2"
    foreign.mkdir(parents=True)
    (foreign / "trainer_state.json").write_text("{}")
    (foreign.parent / "run_config.json").write_text(json.dumps({"task": "classification_task", "config": {}}))
    unrecorded = tmp_path / "ckpt" / "checkpoint-2"
    unrecorded.mkdir(parents=True)
    (unrecorded / "trainer_state.json").write_text("{}")
    cases = {str(tmp_path / "nowhere"): ("is not a complete checkpoint", tmp_path / "nowhere"),
             str(foreign): ("classification_task, not of localization_task", foreign.parent),
             "latest": ("holds no run_config.json of a localization_task training run", unrecorded.parent)}
    for resume, (phrase, folder) in cases.items():
        capsys.readouterr()
        assert train.main(_argv(labelled_root, tiny_encoder, tmp_path, "--resume", resume)) == 2, resume
        lines = capsys.readouterr().err.replace("\r", "\n").splitlines()
        errors = [line for line in lines if "error:" in line]
        assert len(errors) == 1 and phrase in errors[0] and f"{folder} " in errors[0], errors
        assert "--resume" in errors[0]
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("task", ["classification_task", "localization_task"])
def test_a_bad_flag_run_as_a_script_prints_exactly_one_line(task):
    """Run as scripts, the entry points import transformers: no library warning may join the error."""
    done = subprocess.run([sys.executable, str(REPO / task / "train.py"), "--metric_for_best", "nonsense"],
                          capture_output=True, text=True, timeout=120, cwd=REPO)
    assert done.returncode == 2
    assert done.stderr.strip().count("\n") == 0 and done.stderr.startswith("error: --metric_for_best")


@pytest.mark.parametrize("backend", ["scripted", "heatmap"])
def test_two_inference_processes_write_the_csv_of_one(backend, trained, labelled_root, tmp_path, scripted_backend):
    """torchrun, 2 CPU processes (gloo): each predicts half the images; process 0 merges their caches."""
    argv = ["--input_dir", str(labelled_root / "nih_filtered_images"), "--backend", backend, "--num_workers", "0"]
    script = [str(REPO / "localization_task" / "inference.py")]
    if backend == "heatmap":
        argv += ["--checkpoint", str(trained / "ckpt" / "best_model")]
    else:  # each process registers the double first
        script = ["-m", "localization_task.tests.scripted_localizer", *script]
    assert inference.main([*argv, "--output_dir", str(tmp_path / "one")]) == 0
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               *script, *argv, "--output_dir", str(tmp_path / "two")]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, env=env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    one, two = tmp_path / "one", tmp_path / "two"
    # Batches hold other images in two processes: a float may change in its last digits, nothing more.
    rows_one, rows_two = (pd.read_csv(folder / "localization_test_results.csv") for folder in (one, two))
    assert rows_two["file_name"].tolist() == rows_one["file_name"].tolist()
    np.testing.assert_allclose(rows_two[["x", "y", "confidence"]], rows_one[["x", "y", "confidence"]], atol=1e-4)
    assert _points_by_name(two / "predictions.jsonl").keys() == _points_by_name(one / "predictions.jsonl").keys()
    assert not list(two.glob("predictions.rank*.jsonl"))  # merged into predictions.jsonl


def test_heatmap_inference_defaults_to_the_threshold_tuned_for_count_accuracy(trained, labelled_root, tmp_path,
                                                                                capsys):
    model = HeatmapLocalizer.from_pretrained(trained / "ckpt" / "best_model")
    argv = ["--input_dir", str(labelled_root / "nih_filtered_images"), "--backend", "heatmap", "--num_workers", "0"]
    assert inference.main([*argv, "--checkpoint", str(trained / "ckpt" / "best_model"), "--min_confidence", "0.05",
                           "--output_dir", str(tmp_path / "all")]) == 0
    confidences = sorted(c for points in _points_by_name(tmp_path / "all" / "predictions.jsonl").values()
                         for c in points[:, 2])
    assert len(set(confidences)) > 1  # something between the two thresholds below
    model.config.min_confidence_f1, model.config.min_confidence_count = 0.05, confidences[len(confidences) // 2]
    model.save_pretrained(tmp_path / "model")
    capsys.readouterr()
    assert inference.main([*argv, "--checkpoint", str(tmp_path / "model"), "--output_dir", str(tmp_path / "count")]) == 0
    assert "operating point 'count'" in capsys.readouterr().out
    kept = [c for points in _points_by_name(tmp_path / "count" / "predictions.jsonl").values() for c in points[:, 2]]
    assert sorted(kept) == [c for c in confidences if c >= model.config.min_confidence_count]
    assert inference.main([*argv, "--checkpoint", str(tmp_path / "model"), "--operating_point", "f1",
                           "--output_dir", str(tmp_path / "f1")]) == 0
    assert "operating point 'f1'" in capsys.readouterr().out
