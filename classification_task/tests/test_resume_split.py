"""A run's split is decided once: --resume keeps the run's split.csv, drops rows no longer labelled
and refuses labelled images it does not list."""

import shutil
from pathlib import Path

import pandas as pd
import pytest

from classification_task import train
from classification_task.common.run_files import write_run_config
from classification_task.dataset import DataError, load_labels
from classification_task.split import load_or_make_split
from classification_task.demo.synthetic import generate_dataset


@pytest.fixture(scope="module")
def data_template(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("data") / "nodulocc"
    generate_dataset(root, n_images=60, positive_rate=0.3, size_px=64, seed=2)
    return root


@pytest.fixture
def data_root(data_template, tmp_path) -> Path:
    """A copy of its own: the tests edit the labels CSV."""
    return Path(shutil.copytree(data_template, tmp_path / "nodulocc"))


def _argv(data_root, model_dir, run_dir, *extra):
    return ["--data_root", str(data_root), "--model_id", str(model_dir), "--quantization", "none",
            "--output_dir", str(run_dir / "out"), "--checkpoint_dir", str(run_dir / "ckpt"),
            "--batch_size", "4", "--grad_accum", "1", "--eval_batch_size", "8", "--eval_steps", "1",
            "--no-gradient_checkpointing", "--num_workers", "0", "--bootstrap", "0", "--no-zero_shot", *extra]


def _labels(data_root) -> tuple[Path, pd.DataFrame]:
    path = data_root / "classification_labels.csv"
    return path, pd.read_csv(path, dtype=str, keep_default_na=False)


def test_resume_after_a_row_is_dropped_moves_no_image_and_refuses_a_new_one(data_root, tiny_model_dir, tmp_path,
                                                                            capsys):
    argv, out = _argv(data_root, tiny_model_dir, tmp_path), tmp_path / "out"
    assert train.main(argv + ["--max_steps", "1"]) == 0
    before = pd.read_csv(out / "split.csv", dtype=str, keep_default_na=False)
    labels_csv, labels = _labels(data_root)
    dropped = labels["file_name"].iloc[0]
    labels.iloc[1:].to_csv(labels_csv, index=False)

    assert train.main(argv + ["--max_steps", "2", "--resume"]) == 0
    after = pd.read_csv(out / "split.csv", dtype=str, keep_default_na=False)
    kept = before[before["file_name"] != dropped].reset_index(drop=True)
    assert after[["file_name", "split"]].equals(kept[["file_name", "split"]]), "images moved between splits"
    assert "1 image(s) of" in capsys.readouterr().out
    assert list(after.columns) == ["file_name", "split", "label", "patient_id"] and after.equals(kept)

    # A labelled image the run's split does not list: refused, nothing of the run rewritten.
    source = next((data_root / "nih_filtered_images").glob("*.png"))
    shutil.copy(source, source.with_name("99999999_000.png"))
    new_row = pd.DataFrame({"file_name": ["99999999_000.png"], "label": ["No Finding"], "LIDC_ID": [""]})
    pd.concat([labels.iloc[1:], new_row]).to_csv(labels_csv, index=False)
    files = {path: path.read_bytes() for path in out.iterdir() if path.is_file()}
    assert train.main(argv + ["--max_steps", "3", "--resume"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "99999999_000.png" in err and "--overwrite" in err
    assert {path: path.read_bytes() for path in out.iterdir() if path.is_file()} == files
    assert not (tmp_path / "ckpt" / "checkpoint-3").exists()


def test_a_given_split_file_must_agree_with_the_run_s_split(data_root, tmp_path):
    from classification_task.split import keep_run_split, split_table

    frame = load_labels(data_root)
    run_split = tmp_path / "split.csv"
    split_table(load_or_make_split(frame, None, seed=0)).to_csv(run_split, index=False)
    assert keep_run_split(frame, run_split, run_split)["split"].tolist() == \
        pd.read_csv(run_split)["split"].tolist()
    other = tmp_path / "other.csv"
    split_table(load_or_make_split(frame, None, seed=1)).to_csv(other, index=False)
    with pytest.raises(DataError, match="drop --split_file"):
        keep_run_split(frame, run_split, other)


def test_resuming_without_the_run_s_split_is_refused(data_root, tiny_model_dir, tmp_path, capsys):
    """A checkpoint to resume from but no split.csv beside the results (another --output_dir)."""
    checkpoint = tmp_path / "ckpt" / "checkpoint-1"
    checkpoint.mkdir(parents=True)
    (checkpoint / "trainer_state.json").write_text("{}")  # complete, as far as the resume rule reads it
    write_run_config(checkpoint.parent, {"seed": 42})  # beside this task's checkpoints, as train.py writes it
    assert train.main(_argv(data_root, tiny_model_dir, tmp_path, "--max_steps", "2", "--resume")) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "split.csv not found" in err and "--output_dir" in err
    assert not (tmp_path / "out").exists()
