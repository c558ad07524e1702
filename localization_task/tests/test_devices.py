"""Which device each process takes: process r of a launch runs on cuda:LOCAL_RANK, inference and training alike.

No GPU is needed: torch.cuda.is_available / device_count are replaced to describe a
machine with GPUs, and only the chosen device string is checked.
"""

import pytest
import torch

from localization_task.chexagent2 import backend as backends

from localization_task.heatmap import predictor as heatmap_backend

from localization_task.common import processes
from localization_task.dataset import DataError
from localization_task.demo.tiny_encoder import build_tiny_dinov2
from localization_task.heatmap.model import HeatmapLocalizer


@pytest.fixture
def gpus(monkeypatch):
    """A machine with `n` GPUs as torch reports it."""
    def machine(n: int) -> None:
        monkeypatch.setattr(torch.cuda, "is_available", lambda: n > 0)
        monkeypatch.setattr(torch.cuda, "device_count", lambda: n)
    return machine


@pytest.mark.parametrize(("n_gpus", "local_rank", "asked", "expected"), [
    (2, "1", "auto", "cuda:1"),
    (2, "1", "cuda", "cuda:1"),
    (4, "3", "auto", "cuda:3"),
    (2, None, "auto", "cuda:0"),  # one process, no launcher
    (2, "1", "cpu", "cpu"),
    (0, "1", "auto", "cpu"),
])
def test_each_process_takes_its_own_gpu(gpus, monkeypatch, n_gpus, local_rank, asked, expected):
    gpus(n_gpus)
    if local_rank is None:
        monkeypatch.delenv("LOCAL_RANK", raising=False)
    else:
        monkeypatch.setenv("LOCAL_RANK", local_rank)
    assert backends.resolve_device(asked) == expected
    assert processes.process_device(asked) == torch.device(expected)


def test_more_processes_than_gpus_is_one_sentence(gpus, monkeypatch):
    gpus(2)
    monkeypatch.setenv("LOCAL_RANK", "2")
    too_many = r"LOCAL_RANK=2 but only 2 GPU\(s\) are visible.*--nproc_per_node"
    with pytest.raises(backends.BackendUnavailable, match=too_many):
        backends.resolve_device("auto")
    gpus(0)
    with pytest.raises(ValueError, match="no CUDA GPU: use --device cpu or auto"):
        processes.process_device("cuda")


def test_heatmap_localizer_loads_on_the_process_gpu(gpus, monkeypatch, tmp_path):
    encoder = build_tiny_dinov2(tmp_path / "encoder", input_size_px=32, patch_size=8)
    HeatmapLocalizer.from_encoder(encoder, encoder_mode="frozen").save_pretrained(tmp_path / "best_model")
    moved_to = []

    def record(model, device):  # no GPU here: record where the model is sent instead of moving it
        moved_to.append(str(device))
        return model

    monkeypatch.setattr(HeatmapLocalizer, "to", record)
    gpus(2)
    monkeypatch.setenv("LOCAL_RANK", "1")
    heatmap_backend.load_localizer(tmp_path / "best_model")
    assert moved_to == ["cuda:1"]
    monkeypatch.setenv("LOCAL_RANK", "5")
    with pytest.raises(DataError, match="LOCAL_RANK=5"):
        heatmap_backend.load_localizer(tmp_path / "best_model")


@pytest.mark.parametrize("local_rank, expected", [(None, "cuda:0"), ("0", "cuda:0"), ("3", "cuda:3")])
def test_each_training_process_works_on_the_gpu_of_its_local_rank(gpus, monkeypatch, local_rank, expected):
    gpus(4)
    if local_rank is None:
        monkeypatch.delenv("LOCAL_RANK", raising=False)
    else:
        monkeypatch.setenv("LOCAL_RANK", local_rank)
    assert processes.process_device() == torch.device(expected)


def test_a_local_rank_past_the_visible_gpus_is_one_sentence(gpus, monkeypatch):
    gpus(4)
    monkeypatch.setenv("LOCAL_RANK", "4")
    with pytest.raises(ValueError, match=r"LOCAL_RANK=4 but only 4 GPU\(s\) are visible"):
        processes.process_device()


def test_without_cuda_every_process_is_on_the_cpu(monkeypatch):
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert processes.process_device() == torch.device("cpu")
