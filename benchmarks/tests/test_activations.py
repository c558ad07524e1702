"""The activation meter the benchmarks use: what it counts, on real and on fake tensors, and what
checkpointing saves by its count (the localizer pairs of localization_task/tests/test_checkpointing.py)."""

import copy

import pytest
import torch

from benchmarks.activations import ActivationMeter, training_step_bytes
from localization_task.tests.test_checkpointing import build_pair, encoder_folder  # noqa: F401  (a fixture)


@pytest.mark.parametrize("mode", ["lora", "full"])
def test_checkpointing_keeps_fewer_activations(encoder_folder, mode):  # noqa: F811
    plain, checkpointed = build_pair(encoder_folder, mode)
    pixels = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    saved = {label: training_step_bytes(model, pixels, autocast_bf16=False, fake=False)["after_forward_bytes"]
             for label, model in (("plain", plain), ("checkpointed", checkpointed))}
    assert saved["checkpointed"] < 0.8 * saved["plain"]


def test_the_fake_tensor_count_equals_the_count_of_a_real_step(encoder_folder):  # noqa: F811
    _, checkpointed = build_pair(encoder_folder, "lora")
    pixels = torch.randn(2, 3, 64, 64)
    for autocast in (False, True):
        real = training_step_bytes(checkpointed, pixels, autocast_bf16=autocast, fake=False)
        fake = training_step_bytes(copy.deepcopy(checkpointed), pixels, autocast_bf16=autocast, fake=True)
        for key in ("after_forward_bytes", "peak_bytes"):
            assert fake[key] == pytest.approx(real[key], rel=0.02), key


def test_the_meter_counts_live_tensors_made_inside_it_once():
    before = torch.ones(1000)  # made outside: not counted
    with ActivationMeter() as meter:
        kept = before * 2  # 4,000 bytes, kept
        view = kept[:10]  # a view: no new storage
        temporary = kept + 1
        del temporary
        assert view.untyped_storage().nbytes() == 4000
        assert meter.live_bytes() == 4000
    assert meter.peak_bytes == 8000


def test_a_localizer_built_for_real_steps_keeps_its_position_ids():
    """to_empty() after a meta build leaves buffers as garbage: the SigLIP tower's position ids then
    index out of range (a device-side assert on a GPU). Real steps must build on the device."""
    from transformers import SiglipVisionConfig

    from benchmarks.bench_activations import build_localizer

    tower = SiglipVisionConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                               image_size=32, patch_size=8)
    model = build_localizer(tower, checkpointing=False, device="cpu", initialised=True)
    ids = dict(model.named_buffers())
    position_ids = next(value for name, value in ids.items() if name.endswith("position_ids"))
    assert torch.equal(position_ids.flatten(), torch.arange(position_ids.numel()))
    assert torch.isfinite(model(torch.randn(1, 3, 32, 32))).all()
