"""One split for a run and for both tasks; thresholds tuned on the mix they are applied to; bad keypoints refused.

The classifier's split comes from its own code, run as a command (the two task
folders never import each other).
"""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from localization_task import train
from localization_task.heatmap.data import evaluation_rows
from localization_task.heatmap.evaluate import SplitPeaks, f1_and_counts
from localization_task.tests.test_train import _argv

REPO = Path(__file__).resolve().parents[2]
# The classifier's split.csv, as its train.py writes it.
CLASSIFIER_SPLIT = (
    "import sys\n"
    "from classification_task.dataset import load_labels\n"
    "from classification_task.split import split_by_patient, split_table\n"
    "frame = load_labels(sys.argv[1])\n"
    "split_table(frame.assign(split=split_by_patient(frame, seed=7))).to_csv(sys.argv[2], index=False)\n"
)
# What the classifier's train.py trains on with --split_file (argv[2]), written back in its own schema.
CLASSIFIER_READS = (
    "import sys\n"
    "from classification_task.dataset import load_labels\n"
    "from classification_task.split import load_or_make_split, split_table\n"
    "split_table(load_or_make_split(load_labels(sys.argv[1]), sys.argv[2], seed=0)).to_csv(sys.argv[3], index=False)\n"
)


def _run_classifier_code(code: str, *args) -> None:
    done = subprocess.run([sys.executable, "-c", code, *map(str, args)], cwd=REPO, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]


def _classifier_split(root: Path, out_csv: Path) -> pd.DataFrame:
    _run_classifier_code(CLASSIFIER_SPLIT, root, out_csv)
    return pd.read_csv(out_csv, dtype=str, keep_default_na=False)


def _error_lines(capsys) -> list[str]:
    return [line for line in capsys.readouterr().err.replace("\r", "\n").splitlines() if "error:" in line]


@pytest.fixture(scope="module")
def shared(labelled_root, tiny_encoder, tmp_path_factory) -> dict:
    """A localizer run on the classifier's split, gated by a classifier's test CSV (the true labels)."""
    run = tmp_path_factory.mktemp("shared")
    classifier = _classifier_split(labelled_root, run / "classifier_split.csv")
    labels = pd.read_csv(labelled_root / "classification_labels.csv", dtype=str)
    test = labels[labels["file_name"].isin(classifier.loc[classifier["split"] == "test", "file_name"])]
    left_out = test["file_name"].iloc[0]  # as if the classifier had not scored it
    gate = test[test["file_name"] != left_out].assign(confidence=lambda t: (t["label"] == "Nodule") * 0.8 + 0.1)
    gate[["file_name", "label", "confidence"]].to_csv(run / "test_predictions.csv", index=False)
    argv = _argv(labelled_root, tiny_encoder, run, "--split_file", str(run / "classifier_split.csv"),
                 "--gate_csv", str(run / "test_predictions.csv"), "--eval_negatives", "1")
    assert train.main(argv) == 0
    return {"run": run, "classifier": classifier, "left_out": left_out,
            "localizer": pd.read_csv(run / "out" / "split.csv", dtype=str, keep_default_na=False),
            "summary": json.loads((run / "out" / "eval_summary.json").read_text())}


def test_no_image_is_in_one_tasks_train_split_and_the_others_test_split(shared):
    both = shared["classifier"].merge(shared["localizer"], on="file_name", suffixes=("_clf", "_loc"))
    assert len(both) == len(shared["classifier"])
    crossed = both[((both["split_clf"] == "train") & (both["split_loc"] == "test"))
                   | ((both["split_clf"] == "test") & (both["split_loc"] == "train"))]
    assert crossed.empty
    assert (both["split_clf"] == "test").tolist() == (both["split_loc"] == "test").tolist()


def test_the_localizer_writes_the_classifiers_schema_with_the_same_labels_and_patients(shared):
    """The localizer's --split_file read the classifier's split.csv; its own split.csv has the same columns."""
    classifier, localizer = shared["classifier"], shared["localizer"]
    assert list(localizer.columns) == list(classifier.columns) == ["file_name", "split", "label", "patient_id"]
    both = classifier.merge(localizer, on="file_name", suffixes=("_clf", "_loc"))
    assert len(both) == len(classifier) == len(localizer)
    assert (both["label_clf"] == both["label_loc"]).all() and (both["patient_id_clf"] == both["patient_id_loc"]).all()


def test_the_classifier_reads_the_localizers_split_file_and_keeps_every_image_in_it(shared, labelled_root, tmp_path):
    """The classifier's --split_file on the localizer's split.csv: written back, the same table."""
    _run_classifier_code(CLASSIFIER_READS, labelled_root, shared["run"] / "out" / "split.csv", tmp_path / "back.csv")
    back = pd.read_csv(tmp_path / "back.csv", dtype=str, keep_default_na=False)
    localizer = shared["localizer"]
    assert list(back.columns) == list(localizer.columns)
    pd.testing.assert_frame_equal(back.sort_values("file_name").reset_index(drop=True),
                                  localizer.sort_values("file_name").reset_index(drop=True))


def test_the_classifier_split_gives_the_localizer_enough_keypointed_validation_images(shared, labelled_root):
    keypointed = set(pd.read_csv(labelled_root / "localization_labels.csv")["file_name"])
    val = {name: int(((split["split"] == "val") & split["file_name"].isin(keypointed)).sum())
           for name, split in (("classifier", shared["classifier"]), ("localizer", shared["localizer"]))}
    assert val["localizer"] >= 0.15 * len(keypointed) > val["classifier"]
    moved = shared["localizer"].merge(shared["classifier"], on="file_name")
    moved = moved[moved["split_x"] != moved["split_y"]]
    assert set(moved["split_y"]) == {"train"} and set(moved["split_x"]) == {"val"}  # only train -> val
    patients = moved["file_name"].str.split("_").str[0]
    split = shared["localizer"].assign(patient=shared["localizer"]["file_name"].str.split("_").str[0])
    assert split[split["patient"].isin(patients)].groupby("patient")["split"].nunique().max() == 1


def test_the_gated_localization_is_reported_on_test_images_neither_model_trained_on(shared):
    gated = shared["summary"]["gated"]
    test_rows = pd.read_csv(shared["run"] / "out" / "per_image_metrics.csv")
    assert shared["left_out"] not in set(pd.read_csv(shared["run"] / "test_predictions.csv")["file_name"])
    assert gated["n_images"] == len(test_rows) - (shared["left_out"] in set(test_rows["file_name"]))
    assert gated["count_accuracy_without_nodules"] == 1.0  # the gate is the truth: negatives lose every point
    assert gated["n_gated"] == gated["n_count_images_without_nodules"]


def test_thresholds_are_tuned_on_every_validation_negative_and_the_summary_counts_them(shared, labelled_root):
    labels = pd.read_csv(labelled_root / "classification_labels.csv", dtype=str)
    negatives = set(labels.loc[labels["label"] == "No Finding", "file_name"])
    split = shared["localizer"]
    val_negatives = int((split["file_name"].isin(negatives) & (split["split"] == "val")).sum())
    assert val_negatives > 1  # more than --eval_negatives, which only the evaluations during training sample
    summary = shared["summary"]
    per_image = pd.read_csv(shared["run"] / "out" / "per_image_metrics.csv")
    assert summary["n_negatives_scored"] == {"val": val_negatives, "test": int((per_image["n_gt"] == 0).sum())}


def test_a_sampled_negative_counts_for_the_negatives_left_out():
    """Weighted figures on a sample equal those on the split with each sampled negative repeated."""
    rng = np.random.default_rng(0)
    n = 30
    frame = pd.DataFrame({"file_name": [f"{i}.png" for i in range(n)], "label": [int(i < 6) for i in range(n)],
                          "points_px": [np.array([[50.0, 50.0]]) if i < 6 else np.zeros((0, 2)) for i in range(n)]})
    rows = evaluation_rows(frame, max_negatives=12, seed=1)  # 24 negatives -> 12, each standing for 2

    def peaks_of(part):
        xy = [np.array([[50.0 + rng.normal(0, 1), 50.0]]) if len(g) else rng.uniform(0, 100, (int(i) % 3, 2))
              for i, g in zip(part["file_name"].str[:-4], part["points_px"])]
        return SplitPeaks(part["file_name"].tolist(), [np.asarray(g).reshape(-1, 2) for g in part["points_px"]], xy,
                          [np.full(len(p), 0.9) for p in xy], np.full((len(part), 2), 100), part.get("weight"))

    sample = peaks_of(rows)
    assert set(np.round(rows["weight"], 9)) == {1.0, 2.0}
    doubled = np.repeat(np.arange(len(rows)), rows["weight"].astype(int))
    reference = SplitPeaks([sample.file_names[i] for i in doubled], [sample.gt_xy[i] for i in doubled],
                           [sample.peak_xy[i] for i in doubled], [sample.peak_conf[i] for i in doubled],
                           sample.size_px[doubled])
    for key, value in f1_and_counts(reference, 0.5, 0.05).items():
        assert f1_and_counts(sample, 0.5, 0.05)[key] == pytest.approx(value), key


def test_the_test_predictions_use_the_threshold_tuned_for_count_accuracy(shared):
    summary = shared["summary"]
    assert summary["operating_point"] == "count" and summary["min_confidence"] == summary["min_confidence_count"]
    records = [json.loads(line) for line in (shared["run"] / "out" / "predictions.jsonl").read_text().splitlines()]
    confidences = [p["confidence"] for r in records for p in r["points"]]
    assert all(c >= summary["min_confidence_count"] for c in confidences)
    assert summary["count_accuracy"] == summary["test_at_min_confidence_count"]["count_accuracy"]


def test_resume_after_a_row_is_dropped_moves_no_image_between_splits(shared, labelled_root, tiny_encoder, tmp_path):
    root, run = tmp_path / "root", tmp_path / "run"
    shutil.copytree(labelled_root, root)
    shutil.copytree(shared["run"] / "out", run / "out")
    shutil.copytree(shared["run"] / "ckpt", run / "ckpt")
    labels = pd.read_csv(root / "classification_labels.csv", dtype=str, keep_default_na=False)
    dropped = labels[labels["label"] == "No Finding"]["file_name"].iloc[0]
    labels[labels["file_name"] != dropped].to_csv(root / "classification_labels.csv", index=False)
    saved = (run / "out" / "split.csv").read_bytes()

    config = train.TrainConfig(data_root=str(root), output_dir=str(run / "out"), resume="latest")
    frames = train.load_splits(config)
    before = dict(pd.read_csv(run / "out" / "split.csv", dtype=str)[["file_name", "split"]].values)
    after = {name: split for split, part in frames.items() for name in part["file_name"]}
    assert dropped not in after and len(after) == len(before) - 1
    assert all(before[name] == split for name, split in after.items())

    assert train.main(_argv(root, tiny_encoder, run, "--max_steps", "9", "--resume")) == 0  # no --split_file
    assert (run / "out" / "split.csv").read_bytes() == saved


def test_resume_refuses_an_image_the_runs_split_does_not_hold(shared, labelled_root, tiny_encoder, tmp_path, capsys):
    root, run = tmp_path / "root", tmp_path / "run"
    shutil.copytree(labelled_root, root)
    shutil.copytree(shared["run"] / "out", run / "out")
    shutil.copytree(shared["run"] / "ckpt", run / "ckpt")
    shutil.copy(root / "nih_filtered_images" / "00000001_000.png", root / "nih_filtered_images" / "00000099_000.png")
    with open(root / "classification_labels.csv", "a") as labels:
        labels.write("00000099_000.png,No Finding,\n")
    capsys.readouterr()
    assert train.main(_argv(root, tiny_encoder, run, "--max_steps", "9", "--resume")) == 2
    errors = _error_lines(capsys)
    assert len(errors) == 1 and "00000099_000.png" in errors[0] and "split.csv" in errors[0]


def _root_with_keypoint(labelled_root: Path, tmp_path: Path, name: str, x: float, y: float) -> tuple[Path, int]:
    root = tmp_path / "root"
    shutil.copytree(labelled_root, root)
    points = (root / "localization_labels.csv").read_text().splitlines()
    points.insert(3, f"{name},{x},{y}")
    (root / "localization_labels.csv").write_text("\n".join(points) + "\n")
    return root, 4


def test_a_keypoint_outside_its_image_is_refused_before_training(labelled_root, tiny_encoder, tmp_path, capsys):
    name = pd.read_csv(labelled_root / "localization_labels.csv")["file_name"].iloc[0]  # 96 x 96 px
    root, line = _root_with_keypoint(labelled_root, tmp_path, name, 130.0, 40.0)
    capsys.readouterr()
    assert train.main(_argv(root, tiny_encoder, tmp_path)) == 2
    errors = _error_lines(capsys)
    assert len(errors) == 1 and f"line {line} of" in errors[0] and "96 x 96 px" in errors[0] and name in errors[0]
    assert not (tmp_path / "ckpt").exists()


def test_a_keypoint_on_an_image_in_neither_folder_is_refused_naming_its_row(labelled_root, tiny_encoder, tmp_path,
                                                                             capsys):
    root, line = _root_with_keypoint(labelled_root, tmp_path, "00000777_000.png", 10.0, 10.0)
    capsys.readouterr()
    assert train.main(_argv(root, tiny_encoder, tmp_path)) == 2
    errors = _error_lines(capsys)
    assert len(errors) == 1 and f"line {line} of" in errors[0] and "00000777_000.png" in errors[0]
