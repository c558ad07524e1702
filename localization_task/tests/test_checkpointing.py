"""Activation checkpointing checked on the CPU: on by default only where it pays, and every gradient kept with LoRA.

benchmarks/tests/test_activations.py measures that it keeps fewer activations.
"""

import pytest
import torch

from localization_task import train
from localization_task.demo.tiny_encoder import build_tiny_dinov2
from localization_task.tests.test_model import save_tiny_gemma3


@pytest.fixture
def four_gpus(monkeypatch):
    """CUDA as a machine with four GPUs reports it (only the two queries the device choice makes)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)


def test_checkpointing_is_on_by_default_with_a_gpu_for_a_trained_encoder_only(four_gpus):
    assert train.TrainConfig(encoder_mode="lora").gradient_checkpointing is True
    assert train.TrainConfig(encoder_mode="full").gradient_checkpointing is True
    assert train.TrainConfig(encoder_mode="frozen").gradient_checkpointing is False
    assert train.TrainConfig(encoder_mode="lora", gradient_checkpointing=False).gradient_checkpointing is False
    with pytest.raises(ValueError, match="needs --encoder_mode lora or full"):
        train.TrainConfig(encoder_mode="frozen", gradient_checkpointing=True)


def test_checkpointing_is_off_by_default_on_the_cpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert train.TrainConfig(encoder_mode="lora").gradient_checkpointing is False


@pytest.fixture(scope="module", params=["dinov2", "gemma3"])
def encoder_folder(request, tmp_path_factory):
    """A tiny Dinov2 (RAD-DINO's architecture) or a tiny Gemma 3 whose SigLIP tower is the encoder."""
    folder = tmp_path_factory.mktemp(request.param) / "encoder"
    if request.param == "dinov2":
        return build_tiny_dinov2(folder, input_size_px=64, patch_size=8)
    return save_tiny_gemma3(folder, image_size_px=64, patch_size=8)


def build_pair(encoder_folder, mode):
    """The same localizer built by train.py without and with --gradient_checkpointing."""
    def build(checkpointing):
        config = train.TrainConfig(encoder=str(encoder_folder), encoder_mode=mode, input_size_px=64,
                                   head_channels=16, stem_channels=8, lora_dropout=0.0,
                                   gradient_checkpointing=checkpointing)
        torch.manual_seed(0)  # the same head initialisation
        return train.build_model(config)

    plain, checkpointed = build(False), build(True)
    with torch.no_grad():  # LoRA B starts at zero, which would stop the gradient of A
        for model in (plain, checkpointed):
            for name, param in model.named_parameters():
                if "lora_B" in name:
                    param.copy_(torch.full_like(param, 0.05))
    checkpointed.load_state_dict(plain.state_dict())
    return plain, checkpointed


def _gradients(model, pixels) -> dict[str, torch.Tensor]:
    model.train()
    model.zero_grad(set_to_none=True)
    model(pixels).sigmoid().mean().backward()
    return {name: param.grad for name, param in model.named_parameters() if param.requires_grad}


@pytest.mark.parametrize("mode", ["lora", "full"])
def test_checkpointing_keeps_every_gradient(encoder_folder, mode):
    plain, checkpointed = build_pair(encoder_folder, mode)
    pixels = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    expected, got = _gradients(plain, pixels), _gradients(checkpointed, pixels)
    lora = [name for name in got if "lora_" in name]
    assert (len(lora) > 0) == (mode == "lora") and any(name.startswith("head.") for name in got)
    for name, grad in got.items():
        if expected[name] is None:  # e.g. Dinov2's mask_token, used only in pretraining
            assert grad is None, name
            continue
        torch.testing.assert_close(grad, expected[name], rtol=1e-4, atol=1e-6, msg=name)
    for name in lora + [n for n in got if n.startswith("head.")]:
        assert got[name] is not None and got[name].abs().sum() > 0, name
