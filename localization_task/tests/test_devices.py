"""Which device each inference process takes: process r of a launch runs on cuda:LOCAL_RANK.

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
    assert processes.process_device(asked) == expected


def test_more_processes_than_gpus_is_one_sentence(gpus, monkeypatch):
    gpus(2)
    monkeypatch.setenv("LOCAL_RANK", "2")
    with pytest.raises(backends.BackendUnavailable, match=r"LOCAL_RANK=2 but torch sees 2 GPU\(s\).*--nproc_per_node"):
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
