"""train.py end to end on the CPU: tiny model, synthetic data, QLoRA, resume (two processes:
test_train_processes.py)."""

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from classification_task import train
from classification_task.demo.synthetic import generate_dataset
from classification_task.trainer import NoduleTrainer


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("data") / "nodulocc"
    generate_dataset(root, n_images=60, positive_rate=0.3, size_px=64, seed=2)
    return root


def _argv(data_root, model_dir, run_dir, *extra):
    return [
        "--data_root", str(data_root), "--model_id", str(model_dir),
        "--output_dir", str(run_dir / "out"), "--checkpoint_dir", str(run_dir / "ckpt"),
        "--batch_size", "4", "--grad_accum", "2", "--eval_batch_size", "8", "--eval_steps", "2",
        "--no-gradient_checkpointing", "--num_workers", "0", "--bootstrap", "20", *extra,
    ]


def _count_loss_calls(monkeypatch) -> list:
    calls = []
    original = NoduleTrainer.compute_loss

    def counting(self, *args, **kwargs):
        calls.append(self.state.global_step)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(NoduleTrainer, "compute_loss", counting)
    return calls


def test_qlora_train_save_resume_continues_from_saved_step(data_root, tiny_model_dir, tmp_path, monkeypatch):
    calls = _count_loss_calls(monkeypatch)
    argv = _argv(data_root, tiny_model_dir, tmp_path, "--quantization", "nf4", "--no-zero_shot")
    assert train.main(argv + ["--max_steps", "4"]) == 0
    assert (tmp_path / "ckpt" / "checkpoint-4" / "adapter_model.safetensors").is_file()
    # 4 optimizer steps x 2 accumulation micro-batches; a step that ends an epoch may have only one.
    assert sorted(set(calls)) == [0, 1, 2, 3] and 4 * 2 - 1 <= len(calls) <= 4 * 2

    calls.clear()
    assert train.main(argv + ["--max_steps", "6", "--resume"]) == 0
    assert calls[0] == 4, "resumed training must start at the saved step"
    assert len(calls) == 2 * 2
    state = json.loads((tmp_path / "ckpt" / "checkpoint-6" / "trainer_state.json").read_text())
    assert state["global_step"] == 6

    out = tmp_path / "out"
    metrics = json.loads((out / "metrics.json").read_text())
    assert "threshold_0.5" in metrics["test"]["fine_tuned"] and "thresholds" in metrics
    assert set(metrics["test"]["fine_tuned"]["threshold_0.5"]) >= {"roc_auc", "pr_auc", "mcc", "brier", "tp"}
    # 3 validation images: PR-AUC may stay undefined, and then no checkpoint is the best.
    assert metrics["best_checkpoint"]["step"] in (None, 2, 4, 6) and metrics["best_checkpoint"]["metric"] == "pr_auc"
    for name in ("test_predictions.csv", "split.csv", "run_config.json"):
        assert (out / name).is_file()
    for name, size in (("roc.png", (600, 540)), ("pr.png", (600, 540)), ("reliability.png", (600, 768)),
                       ("training_curves.png", None)):
        with Image.open(out / name) as png:  # the evaluation's plots, as the demo writes them
            png.verify()
            assert png.format == "PNG" and (size is None or png.size == size), name
    config = json.loads((out / "run_config.json").read_text())
    assert config["config"]["quantization"] == "nf4" and "transformers" in config["versions"]
    assert (tmp_path / "ckpt" / "best_adapter" / "adapter_config.json").is_file()


def _evaluation_lines(printed: str) -> list[str]:
    """The evaluation's printed summary, from its first line to the end of the output."""
    return printed[printed.index("Test: "):].splitlines()


def _split_with_both_classes(data_root, path) -> Path:
    """A split.csv whose validation and test hold both classes, and test both sources."""
    import pandas as pd

    labels = pd.read_csv(data_root / "classification_labels.csv", dtype=str, keep_default_na=False)
    split = pd.Series("train", index=labels.index)
    for label in ("Nodule", "No Finding"):
        rows = labels.index[labels["label"] == label]
        split[rows[:3]], split[rows[3:7]] = "val", "test"
    split[labels.index[labels["LIDC_ID"] != ""][-3:]] = "test"
    pd.DataFrame({"file_name": labels["file_name"], "split": split}).to_csv(path, index=False)
    return path


def test_f_beta_picks_the_checkpoint_and_the_summary_fits_100_columns(data_root, tiny_model_dir, tmp_path,
                                                                       capsys):
    split_file = _split_with_both_classes(data_root, tmp_path / "split.csv")
    argv = _argv(data_root, tiny_model_dir, tmp_path, "--quantization", "none", "--max_steps", "4",
                 "--sampler", "weighted", "--pos_weight", "1", "--f_beta", "2", "--metric_for_best", "f_beta",
                 "--split_file", str(split_file))
    assert train.main(argv) == 0
    state = json.loads((tmp_path / "ckpt" / "checkpoint-4" / "trainer_state.json").read_text())
    assert all("eval_f_beta" in entry for entry in state["log_history"] if "eval_loss" in entry)
    assert state["best_metric"] == max(e["eval_f_beta"] for e in state["log_history"] if "eval_loss" in e)
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert metrics["beta"] == 2.0 and "max_f_beta" in metrics["thresholds"]
    assert metrics["best_checkpoint"] == {"step": state["best_global_step"], "metric": "f_beta",
                                          "value": state["best_metric"]}
    assert set(metrics["test"]) == {"fine_tuned", "zero_shot"} == set(metrics["by_source"])
    assert set(metrics["by_source"]["fine_tuned"]) == {"nih", "lidc"}
    assert "f_beta" in metrics["ci_95"]["fine_tuned"]["threshold_max_f_beta"]
    lines = _evaluation_lines(capsys.readouterr().out)
    assert any(line.startswith("F2 ") for line in lines) and any("by image source" in line for line in lines)
    too_wide = [line for line in lines if len(line) > 100 and str(tmp_path) not in line]
    assert not too_wide, too_wide


def test_eval_only_scores_an_adapter_against_the_zero_shot_base(data_root, tiny_model_dir, tmp_path, capsys):
    argv = _argv(data_root, tiny_model_dir, tmp_path, "--quantization", "none", "--max_steps", "2")
    assert train.main(argv + ["--no-zero_shot"]) == 0
    adapter = tmp_path / "ckpt" / "best_adapter"
    eval_dir = tmp_path / "eval"
    argv_eval = _argv(data_root, tiny_model_dir, tmp_path, "--quantization", "none", "--eval_only",
                      "--output_dir", str(eval_dir), "--split_file", str(tmp_path / "out" / "split.csv"))
    assert train.main(argv_eval + ["--adapter", str(adapter)]) == 0
    metrics = json.loads((eval_dir / "metrics.json").read_text())
    # The thresholds just tuned go to the output folder; the adapter folder, an input here, is left alone.
    assert json.loads((eval_dir / "operating_point.json").read_text())["thresholds"] == metrics["thresholds"]
    assert set(metrics["test"]) == {"fine_tuned", "zero_shot"} and "zero_shot_thresholds" in metrics
    assert metrics["best_checkpoint"] is None
    assert all(len(line) <= 100 for line in _evaluation_lines(capsys.readouterr().out))
    # Without an adapter the base model is scored, and named what it is.
    assert train.main(argv_eval + ["--output_dir", str(tmp_path / "eval_base")]) == 0
    assert set(json.loads((tmp_path / "eval_base" / "metrics.json").read_text())["test"]) == {"zero_shot"}
    assert "Zero-shot model on test" in capsys.readouterr().out


def test_weighted_sampler_resumed_mid_epoch_sees_the_same_images(data_root, tiny_model_dir, tmp_path,
                                                                 monkeypatch):
    from classification_task.dataset import RadiographDataset

    seen = []
    original = RadiographDataset.__getitem__
    monkeypatch.setattr(RadiographDataset, "__getitem__",
                        lambda self, index: seen.append((len(self), index)) or original(self, index))
    extra = ("--quantization", "none", "--sampler", "weighted", "--no-zero_shot", "--bootstrap", "0",
             "--grad_accum", "1")
    assert train.main(_argv(data_root, tiny_model_dir, tmp_path / "a", *extra, "--max_steps", "4")) == 0
    n_train = int((pd.read_csv(tmp_path / "a" / "out" / "split.csv")["split"] == "train").sum())

    def drawn() -> list[int]:
        images, seen[:] = [index for size, index in seen if size == n_train], []
        return images

    straight = drawn()
    argv = _argv(data_root, tiny_model_dir, tmp_path / "b", *extra)
    assert train.main(argv + ["--max_steps", "2"]) == 0
    first_part = drawn()
    assert train.main(argv + ["--max_steps", "4", "--resume"]) == 0
    second_part = drawn()
    # 4 images a step; the loader reads one batch ahead, so a run reads a batch past its last step.
    assert first_part[:8] == straight[:8] and len(straight) == 5 * 4
    assert second_part == straight[8:], "the resumed run must see the images of steps 3 and 4"


def test_bad_values_and_missing_data_exit_2(tmp_path, capsys):
    assert train.main(["--data_root", str(tmp_path), "--model_id", str(tmp_path)]) == 2
    assert "classification_labels.csv" in capsys.readouterr().err
    assert train.main(["--metric_for_best", "nonsense"]) == 2
    assert "--metric_for_best" in capsys.readouterr().err


def test_inference_then_metrics_cli_reproduce_the_training_test_metrics(data_root, tiny_model_dir, tmp_path):
    from classification_task import inference, metrics

    argv = _argv(data_root, tiny_model_dir, tmp_path, "--quantization", "none", "--max_steps", "3",
                 "--no-zero_shot", "--learning_rate", "5e-3")
    assert train.main(argv) == 0
    out = tmp_path / "out"
    adapter = tmp_path / "ckpt" / "best_adapter"
    point = json.loads((adapter / "operating_point.json").read_text())
    from_train = json.loads((out / "metrics.json").read_text())
    assert point["thresholds"] == from_train["thresholds"] and point["default_threshold"] == "max_f1"
    assert point["quantization"] == "none" and point["base_model"] == str(tiny_model_dir)
    assert point["preprocessing"] == {"clip_low_pct": 0.5, "clip_high_pct": 99.5, "image_size_px": None}
    assert inference.main(["--input_dir", str(data_root), "--recursive", "--output_dir", str(tmp_path / "inf"),
                           "--adapter", str(adapter), "--num_workers", "0"]) == 0
    # Labelled at the threshold tuned on validation, which the inference run's record names.
    tuned = point["thresholds"]["max_f1"]
    assert json.loads((tmp_path / "inf" / inference.RUN_CONFIG_JSON).read_text())["threshold"]["value"] == tuned
    scored = pd.read_csv(tmp_path / "inf" / "classification_test_results.csv")
    assert (scored["label"] == np.where(scored["confidence"] >= tuned, "Nodule", "No Finding")).all()
    assert metrics.main(["--labels", str(out / "test_labels.csv"), "--bootstrap", "0",
                         "--predictions", str(tmp_path / "inf" / "classification_test_results.csv"),
                         "--json", str(tmp_path / "cli.json")]) == 0
    from_cli = json.loads((tmp_path / "cli.json").read_text())
    at_half = from_train["test"]["fine_tuned"]["threshold_0.5"]
    assert from_cli["counts"]["scored"] == at_half["tp"] + at_half["tn"] + at_half["fp"] + at_half["fn"]
    for key, value in at_half.items():
        assert from_cli["metrics"][key] == pytest.approx(value, abs=1e-6, nan_ok=True), key
    for source, results in from_train["by_source"]["fine_tuned"].items():
        for key, value in results["threshold_0.5"].items():
            assert from_cli["by_source"][source][key] == pytest.approx(value, abs=1e-6, nan_ok=True), key


def _snapshot(*folders) -> dict:
    return {path: path.read_bytes() for folder in folders for path in sorted(folder.rglob("*")) if path.is_file()}


def test_a_fresh_run_refuses_to_replace_a_finished_run_unless_told(data_root, tiny_model_dir, tmp_path, capsys):
    argv = _argv(data_root, tiny_model_dir, tmp_path, "--quantization", "none", "--no-zero_shot", "--bootstrap", "0")
    assert train.main(argv + ["--max_steps", "4"]) == 0
    finished = _snapshot(tmp_path / "out", tmp_path / "ckpt")
    capsys.readouterr()

    assert train.main(argv + ["--max_steps", "2"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--resume" in err and "--overwrite" in err and str(tmp_path / "out") in err
    eval_only = argv + ["--eval_only", "--adapter", str(tmp_path / "ckpt" / "best_adapter")]
    assert train.main(eval_only) == 2
    err = capsys.readouterr().err
    assert "--overwrite" in err and "--resume" not in err
    assert _snapshot(tmp_path / "out", tmp_path / "ckpt") == finished  # untouched

    assert train.main(argv + ["--max_steps", "2", "--overwrite"]) == 0
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == ["best_adapter", "checkpoint-2", "run_config.json"]
    state = json.loads((tmp_path / "ckpt" / "checkpoint-2" / "trainer_state.json").read_text())
    assert state["max_steps"] == 2
    assert json.loads((tmp_path / "out" / "run_config.json").read_text())["config"]["max_steps"] == 2
    assert train.main(argv + ["--resume", "--overwrite"]) == 2
    assert "pass only one" in capsys.readouterr().err


def test_resume_continues_only_a_run_of_this_task(data_root, tiny_model_dir, tmp_path, capsys):
    """A missing folder, a run of the localizer, or checkpoints beside no run config: one sentence each."""
    argv = _argv(data_root, tiny_model_dir, tmp_path, "--quantization", "none", "--max_steps", "2")
    foreign = tmp_path / "localization" / "checkpoint-2"
    foreign.mkdir(parents=True)
    (foreign / "trainer_state.json").write_text("{}")
    (foreign.parent / "run_config.json").write_text(json.dumps({"task": "localization_task", "config": {}}))
    unrecorded = tmp_path / "ckpt" / "checkpoint-2"
    unrecorded.mkdir(parents=True)
    (unrecorded / "trainer_state.json").write_text("{}")
    cases = {str(tmp_path / "nowhere"): ("is not a complete checkpoint", tmp_path / "nowhere"),
             str(foreign): ("localization_task, not of classification_task", foreign.parent),
             "latest": ("holds no run_config.json of a classification_task training run", unrecorded.parent)}
    for resume, (phrase, folder) in cases.items():
        capsys.readouterr()
        assert train.main(argv + ["--resume", resume]) == 2, resume
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and phrase in err and f"{folder} " in err and "--resume" in err, err
    assert not (tmp_path / "out").exists()
