"""Each process on its own GPU: process r of a torchrun / accelerate launch loads onto cuda:LOCAL_RANK.

No GPU exists on the test machines, so torch's CUDA queries are replaced by what a machine with
several GPUs would answer (a double of the CUDA runtime, the one part that cannot exist here), and
`from_pretrained` is watched: it records the device map it was asked for, then loads for real on the
CPU. Everything else is the entry points' own code path.
"""

import pytest
import torch
import transformers

from classification_task import inference, train
from classification_task.common.processes import process_device
from classification_task.model import device_map
from classification_task.demo.synthetic import generate_dataset

DATA_DIR = inference.Path(__file__).parent / "data"


def test_process_device_follows_local_rank(monkeypatch):
    def device(environ: dict, cuda_devices: int) -> torch.device:
        """process_device() with LOCAL_RANK as in `environ`, on a machine with `cuda_devices` GPUs."""
        monkeypatch.delenv("LOCAL_RANK", raising=False)
        for name, value in environ.items():
            monkeypatch.setenv(name, value)
        monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda_devices > 0)
        monkeypatch.setattr(torch.cuda, "device_count", lambda: cuda_devices)
        return process_device()

    assert device({"LOCAL_RANK": "3"}, cuda_devices=4) == torch.device("cuda", 3)
    assert device({}, cuda_devices=4) == torch.device("cuda", 0)
    assert device({"LOCAL_RANK": "3"}, cuda_devices=0) == torch.device("cpu")
    # A launcher that shows each process only its own GPU: that one, whatever the rank.
    assert device({"LOCAL_RANK": "2"}, cuda_devices=1) == torch.device("cuda", 0)
    with pytest.raises(ValueError, match=r"LOCAL_RANK=5 but only 4 GPU\(s\) are visible"):
        device({"LOCAL_RANK": "5"}, cuda_devices=4)
    with pytest.raises(ValueError, match="not a process index"):
        device({"LOCAL_RANK": "one"}, cuda_devices=4)


@pytest.fixture
def four_gpus(monkeypatch):
    """CUDA as a 4-GPU machine reports it; returns the calls in order (set_device, bf16 query, load)."""
    calls = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    monkeypatch.setattr(torch.cuda, "set_device", lambda device: calls.append(("set_device", torch.device(device))))
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: calls.append(("bf16?",)) or False)
    load = transformers.AutoModelForImageTextToText.from_pretrained.__func__

    def watched(cls, *args, **kwargs):
        calls.append(("from_pretrained", kwargs.get("device_map")))
        return load(cls, *args, **{**kwargs, "device_map": None})

    monkeypatch.setattr(transformers.AutoModelForImageTextToText, "from_pretrained", classmethod(watched))
    return calls


def test_device_map_makes_cuda_local_rank_current(four_gpus, monkeypatch):
    monkeypatch.setenv("LOCAL_RANK", "3")
    assert device_map() == {"": 3}
    assert four_gpus == [("set_device", torch.device("cuda", 3))]


def test_inference_process_loads_onto_cuda_local_rank(four_gpus, tiny_model_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("LOCAL_RANK", "2")
    argv = ["--input_dir", str(DATA_DIR), "--output_dir", str(tmp_path), "--model_id", str(tiny_model_dir),
            "--num_workers", "0"]
    assert inference.main(argv) == 0
    # cuda:2 is current before anything queries CUDA, and the whole model is mapped there.
    assert four_gpus == [("set_device", torch.device("cuda", 2)), ("bf16?",), ("from_pretrained", {"": 2})]


def test_evaluation_process_loads_onto_cuda_local_rank(four_gpus, tiny_model_dir, tmp_path, monkeypatch):
    data_root = tmp_path / "data"
    generate_dataset(data_root, n_images=24, positive_rate=0.3, size_px=64, seed=2)
    monkeypatch.setenv("LOCAL_RANK", "1")
    argv = ["--eval_only", "--data_root", str(data_root), "--model_id", str(tiny_model_dir), "--quantization",
            "none", "--output_dir", str(tmp_path / "out"), "--num_workers", "0", "--bootstrap", "0"]
    assert train.main(argv) == 0
    assert four_gpus == [("set_device", torch.device("cuda", 1)), ("bf16?",), ("from_pretrained", {"": 1})]
