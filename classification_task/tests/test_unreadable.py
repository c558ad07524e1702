"""Unreadable images in training and evaluation: skipped, counted and listed; too many stop the run."""

import types
from pathlib import Path

import pandas as pd
import pytest
import torch

from classification_task import train
from classification_task.dataset import DataError, RadiographDataset, load_labels
from classification_task.split import split_by_patient
from classification_task.demo.synthetic import generate_dataset
from classification_task.trainer import NoduleTrainer, ReadableBatchCollator
from classification_task.common.unreadable import UNREADABLE_CSV, UnreadableImages


def _truncate(path: str) -> None:
    data = Path(path).read_bytes()
    Path(path).write_bytes(data[: len(data) // 2])  # a valid header, the pixel data cut short


@pytest.fixture
def damaged_root(tmp_path) -> tuple[Path, list[str]]:
    """60 synthetic images; a nodule image of the training split (seen in every epoch) and a test image
    are truncated."""
    root = tmp_path / "data"
    generate_dataset(root, n_images=60, positive_rate=0.3, size_px=64, seed=2)
    frame = load_labels(root)
    split = split_by_patient(frame, seed=42)  # the split train.py makes with its default seed
    damaged = [frame[(split == "train") & (frame["label"] == 1)].iloc[0], frame[split == "test"].iloc[0]]
    for row in damaged:
        _truncate(row["path"])
    return root, [row["file_name"] for row in damaged]


def _argv(root, model_dir, run_dir, *extra):
    return ["--data_root", str(root), "--model_id", str(model_dir), "--output_dir", str(run_dir / "out"),
            "--checkpoint_dir", str(run_dir / "ckpt"), "--quantization", "none", "--max_steps", "4",
            "--batch_size", "8", "--grad_accum", "1", "--eval_steps", "4", "--no-gradient_checkpointing",
            "--bootstrap", "0", "--no-zero_shot", *extra]


def test_a_truncated_image_is_skipped_named_and_listed(damaged_root, tiny_model_dir, tmp_path, capsys):
    root, damaged = damaged_root
    # A worker process decodes the images: the count must still reach the main process.
    argv = _argv(root, tiny_model_dir, tmp_path, "--num_workers", "1", "--max_unreadable_frac", "0.05")
    assert train.main(argv) == 0
    captured = capsys.readouterr()
    for name in damaged:
        assert f"skipped unreadable image {name}: OSError" in captured.err
    assert "skipped 2 unreadable image(s)" in captured.out
    listed = pd.read_csv(tmp_path / "out" / UNREADABLE_CSV)
    assert listed["file_name"].tolist() == sorted(damaged) and listed["error"].str.contains("truncated").all()
    predictions = pd.read_csv(tmp_path / "out" / "test_predictions.csv")
    assert damaged[1] not in set(predictions["file_name"]) and len(predictions) == 8  # 9 test images


def test_more_unreadable_images_than_allowed_stop_the_run(damaged_root, tiny_model_dir, tmp_path, capsys):
    root, _ = damaged_root
    assert train.main(_argv(root, tiny_model_dir, tmp_path, "--num_workers", "0")) == 2  # 1 of 60 > 1 %
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: 1 of 60 images are unreadable, more than --max_unreadable_frac 0.01")
    assert str(tmp_path / "out" / UNREADABLE_CSV) in err[-1] and "--resume" in err[-1]
    assert len(pd.read_csv(tmp_path / "out" / UNREADABLE_CSV)) == 1
    assert not (tmp_path / "out" / "metrics.json").exists()


def test_a_batch_of_only_unreadable_images_trains_nothing_and_crashes_nothing(tmp_path):
    (tmp_path / "a.png").write_bytes(b"not a png")
    dataset = RadiographDataset(pd.DataFrame({"file_name": ["a.png"], "path": [str(tmp_path / "a.png")],
                                              "label": [1]}))
    item = dataset[0]
    assert item["image"] is None and item["error"].startswith("UnidentifiedImageError")
    batch = ReadableBatchCollator(processor=types.SimpleNamespace(apply_chat_template=lambda *a, **k: ""))([item])
    assert batch["labels"].shape == (0,) and batch["unreadable"] == [("a.png", item["error"])]

    log = UnreadableImages(tmp_path, n_images=10, max_frac=0.5)
    trainer = types.SimpleNamespace(unreadable=log, _prepare_inputs=lambda inputs: inputs,
                                    args=types.SimpleNamespace(world_size=1))  # one process
    trainer.readable_inputs = lambda inputs: NoduleTrainer.readable_inputs(trainer, inputs)
    model = torch.nn.Linear(3, 2)
    loss = NoduleTrainer.compute_loss(trainer, model, batch)
    loss.backward()  # a zero loss that still reaches the weights
    assert loss.item() == 0 and model.weight.grad.abs().sum() == 0
    assert NoduleTrainer.prediction_step(trainer, model, batch, prediction_loss_only=False) == (None, None, None)
    assert log.errors == {"a.png": item["error"]}
    with pytest.raises(DataError, match="6 of 10 images are unreadable"):
        log.record([(f"{i}.png", "OSError") for i in range(5)])
