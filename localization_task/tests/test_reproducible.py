"""Seeded localizer training repeats exactly: twice the same run, a killed run resumed, and epochs in every process."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch

from localization_task import train
from localization_task.tests.test_train import _argv

REPO = Path(__file__).resolve().parents[2]


def _env() -> dict:
    # The same number of threads as this process: float sums then run in the same order.
    return {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": str(torch.get_num_threads()),
            "CUDA_VISIBLE_DEVICES": ""}


def _predictions(run: Path) -> bytes:
    return (run / "out" / "predictions.jsonl").read_bytes()


def test_two_identical_runs_and_a_killed_then_resumed_run_give_the_same_test_predictions(
        labelled_root, tiny_encoder, tmp_path):
    argv = lambda run, *extra: _argv(labelled_root, tiny_encoder, run, "--max_steps", "12", *extra)  # noqa: E731
    first, second, killed = tmp_path / "first", tmp_path / "second", tmp_path / "killed"
    assert train.main(argv(first)) == 0
    assert train.main(argv(second)) == 0
    assert _predictions(first) == _predictions(second)

    killed.mkdir()
    command = [sys.executable, str(REPO / "localization_task" / "train.py"), *argv(killed)]
    with open(killed / "log.txt", "w") as log:
        process = subprocess.Popen(command, env=_env(), stdout=log, stderr=subprocess.STDOUT, cwd=killed)
    deadline = time.monotonic() + 300
    while not (killed / "ckpt" / "checkpoint-3" / "trainer_state.json").is_file():
        assert process.poll() is None and time.monotonic() < deadline, (killed / "log.txt").read_text()[-3000:]
        time.sleep(0.01)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    assert not (killed / "ckpt" / "checkpoint-12").exists(), "the kill came too late to test anything"
    assert train.main(argv(killed, "--resume")) == 0
    assert _predictions(killed) == _predictions(first)


def test_the_training_dataset_follows_the_epoch_in_every_process(labelled_root, tiny_encoder, tmp_path):
    """torchrun with 2 CPU processes (gloo) sharing the batches: 4 steps are two epochs here; each process's
    dataset sees both."""
    probe = tmp_path / "probe"
    probe.mkdir()
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               str(REPO / "localization_task" / "tests" / "epoch_probe.py"), str(probe),
               *_argv(labelled_root, tiny_encoder, tmp_path, "--max_steps", "4", "--eval_steps", "4")]
    env = {**_env(), "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, env=env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    for rank in (0, 1):
        epochs = [int(line) for line in (probe / f"rank{rank}.txt").read_text().split()]
        assert sorted(set(epochs)) == [0, 1], (rank, epochs)


def test_an_epoch_given_to_a_sharded_loader_reaches_the_dataset(labelled_root):
    """accelerate's DataLoaderShard over a BatchSamplerShard stops its set_epoch at our sampler; the sampler
    the trainer builds passes the epoch on to the dataset."""
    from types import SimpleNamespace

    from accelerate.data_loader import BatchSamplerShard, DataLoaderShard
    from torch.utils.data import BatchSampler

    from localization_task.dataset import load_localization_data
    from localization_task.heatmap.data import HeatmapDataset, ItemSettings, collate
    from localization_task.heatmap.trainer import HeatmapTrainer

    dataset = HeatmapDataset(load_localization_data(labelled_root), ItemSettings(64, 4, 1.0, (0.5,), (0.5,)))
    trainer = SimpleNamespace(mix=(0.5, 0.5), sampler_seed=0, train_dataset=dataset)
    sampler = HeatmapTrainer._get_train_sampler(trainer, dataset)
    for rank in (0, 1):
        shard = BatchSamplerShard(BatchSampler(sampler, 4, drop_last=False), num_processes=2, process_index=rank)
        loader = DataLoaderShard(dataset, batch_sampler=shard, collate_fn=collate)
        loader.set_epoch(3 + rank)
        assert sampler.epoch == dataset.epoch == 3 + rank
