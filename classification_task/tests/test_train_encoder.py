"""The encoder classifier end to end on the CPU: train.py, resume, inference.py, the ensemble command."""

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from classification_task import ensemble, inference, train
from classification_task.demo.synthetic import generate_dataset
from classification_task.trainer import NoduleTrainer


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("data") / "nodulocc"
    generate_dataset(root, n_images=60, positive_rate=0.3, size_px=64, seed=2)
    return root


def _argv(data_root, model_dir, run_dir, *extra):
    return ["--data_root", str(data_root), "--model_id", str(model_dir),
            "--output_dir", str(run_dir / "out"), "--checkpoint_dir", str(run_dir / "ckpt"),
            "--batch_size", "4", "--grad_accum", "2", "--eval_batch_size", "8", "--eval_steps", "2",
            "--num_workers", "0", "--bootstrap", "20", "--learning_rate", "1e-3", *extra]


def test_train_resume_then_inference_and_ensemble(data_root, tiny_dinov2_dir, tiny_model_dir, tmp_path,
                                                  monkeypatch):
    steps = []
    original = NoduleTrainer.compute_loss
    monkeypatch.setattr(NoduleTrainer, "compute_loss",
                        lambda self, *a, **k: steps.append(self.state.global_step) or original(self, *a, **k))
    argv = _argv(data_root, tiny_dinov2_dir, tmp_path, "--encoder_mode", "lora", "--lora_r", "4")
    assert train.main(argv + ["--max_steps", "2"]) == 0
    steps.clear()
    assert train.main(argv + ["--max_steps", "4", "--resume"]) == 0
    # 2 optimizer steps x 2 micro-batches; a step that ends an epoch may have only one.
    assert steps[0] == 2 and sorted(set(steps)) == [2, 3] and 3 <= len(steps) <= 4, "resumed at the saved step"

    out, best = tmp_path / "out", tmp_path / "ckpt" / "best_model"
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics["test"]) == {"fine_tuned"}  # no zero-shot: a random head means nothing
    assert {"threshold_0.5", "threshold_max_f1"} <= set(metrics["test"]["fine_tuned"])
    assert "ci_95" in metrics and metrics["best_checkpoint"]["metric"] == "pr_auc"
    for name in ("test_predictions.csv", "val_predictions.csv", "test_labels.csv", "split.csv", "run_config.json"):
        assert (out / name).is_file(), name
    run_config = json.loads((out / "run_config.json").read_text())["config"]
    assert run_config["model_kind"] == "encoder" and run_config["image_size_px"] == 56
    point = json.loads((best / "operating_point.json").read_text())
    assert point["model_kind"] == "encoder" and point["thresholds"] == metrics["thresholds"]
    assert point["preprocessing"] == {"clip_low_pct": 0.5, "clip_high_pct": 99.5, "image_size_px": 56}

    # inference.py on the saved folder scores the test images as training's evaluation did (LoRA merged).
    assert inference.main(["--input_dir", str(data_root), "--recursive", "--output_dir", str(tmp_path / "enc"),
                           "--model_id", str(best), "--num_workers", "0"]) == 0
    scored = pd.read_csv(tmp_path / "enc" / inference.RESULTS_CSV)
    scored["file_name"] = scored["file_name"].str.rsplit("/", n=1).str[-1]
    test = pd.read_csv(out / "test_predictions.csv").merge(scored, on="file_name", suffixes=("", "_inf"))
    assert len(test) == metrics["n_test"]
    np.testing.assert_allclose(test["confidence_inf"], test["confidence"], atol=1e-5)
    # Labelled at the threshold tuned on validation, which inference takes from operating_point.json.
    threshold = point["thresholds"]["max_f1"]
    assert (scored["label"] == np.where(scored["confidence"] >= threshold, "Nodule", "No Finding")).all()

    # Combined with MedGemma (the tiny zero-shot model) by the ensemble command.
    assert inference.main(["--input_dir", str(data_root), "--recursive", "--output_dir", str(tmp_path / "gem"),
                           "--model_id", str(tiny_model_dir), "--num_workers", "0"]) == 0
    members = [str(tmp_path / "enc" / inference.RESULTS_CSV), str(tmp_path / "gem" / inference.RESULTS_CSV)]
    result_csv = tmp_path / "ens" / "classification_test_results.csv"
    assert ensemble.main(["--predictions", *members, "--labels", str(out / "test_labels.csv"),
                          "--output", str(result_csv), "--json", str(tmp_path / "ens.json")]) == 0
    combined = pd.read_csv(result_csv)
    both = [pd.read_csv(path).set_index("file_name")["confidence"] for path in members]
    np.testing.assert_allclose(combined["confidence"], ((both[0] + both[1]) / 2).loc[combined["file_name"]])
    table = json.loads((tmp_path / "ens.json").read_text())
    assert set(table["metrics"]) == {"enc", "gem", "ensemble"} and table["n_scored"] == metrics["n_test"]


def test_eval_only_scores_a_saved_encoder_classifier(data_root, tiny_dinov2_dir, tmp_path):
    argv = _argv(data_root, tiny_dinov2_dir, tmp_path, "--encoder_mode", "full", "--max_steps", "2",
                 "--bootstrap", "0", "--image_size_px", "64")
    assert train.main(argv) == 0
    first = json.loads((tmp_path / "out" / "metrics.json").read_text())
    best = tmp_path / "ckpt" / "best_model"
    assert train.main(argv[:4] + ["--model_id", str(best), "--eval_only", "--output_dir", str(tmp_path / "eval"),
                                  "--split_file", str(tmp_path / "out" / "split.csv"), "--bootstrap", "0",
                                  "--num_workers", "0"]) == 0
    again = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert set(again["test"]) == {"fine_tuned"}
    assert again["test"]["fine_tuned"]["threshold_0.5"]["roc_auc"] == pytest.approx(
        first["test"]["fine_tuned"]["threshold_0.5"]["roc_auc"], abs=1e-9, nan_ok=True)


def test_a_model_id_that_is_no_classifier_is_refused_in_one_line(data_root, tmp_path, capsys):
    folder = tmp_path / "not-a-model"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "bert"}))
    argv = _argv(data_root, folder, tmp_path, "--model_kind", "encoder", "--max_steps", "2")
    assert train.main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Dinov2" in err and "rad-dino" in err
