"""Heatmap localizer on tiny random-init encoders saved to disk (offline, seconds)."""
from __future__ import annotations

import pytest
import torch
from transformers import (
    BertConfig,
    Gemma3Config,
    Gemma3ForConditionalGeneration,
    Gemma3TextConfig,
    SiglipConfig,
    SiglipModel,
    SiglipVisionConfig,
    SiglipVisionModel,
)
from transformers.models.gemma3.image_processing_pil_gemma3 import Gemma3ImageProcessorPil

from localization_task.demo.tiny_encoder import build_tiny_dinov2
from localization_task.heatmap.model import ENCODER_MODES, PRIOR_LOGIT, HeatmapLocalizer, HeatmapLocalizerConfig
from localization_task.heatmap.data import pixel_values_from_grey

TINY_INPUT_PX, TINY_PATCH_PX = 56, 8


@pytest.fixture(scope="module")
def tiny_dinov2(tmp_path_factory):
    return build_tiny_dinov2(
        tmp_path_factory.mktemp("tiny-dinov2"), input_size_px=TINY_INPUT_PX, patch_size=TINY_PATCH_PX
    )


def save_tiny_gemma3(folder, image_size_px: int = 64, patch_size: int = 8):
    """A tiny Gemma 3 image-text model (SigLIP tower + 2-layer text model) and its image processor."""
    vision = SiglipVisionConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
        image_size=image_size_px, patch_size=patch_size, vision_use_head=False,
    )
    text = Gemma3TextConfig(
        vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=2, num_key_value_heads=1, head_dim=16, max_position_embeddings=256,
    )
    config = Gemma3Config(
        text_config=text, vision_config=vision, mm_tokens_per_image=16,
        boi_token_index=100, eoi_token_index=101, image_token_index=102,
    )
    torch.manual_seed(0)
    Gemma3ForConditionalGeneration(config).save_pretrained(folder)
    Gemma3ImageProcessorPil(image_mean=[0.4] * 3, image_std=[0.3] * 3).save_pretrained(folder)
    return folder


def trainable_names(model) -> set[str]:
    return {name for name, param in model.named_parameters() if param.requires_grad}


def random_pixels(model, batch: int = 2) -> torch.Tensor:
    size = model.config.input_size_px
    return torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("stride", [4, 8])
def test_output_shape_for_each_stride(tiny_dinov2, stride):
    model = HeatmapLocalizer.from_encoder(tiny_dinov2, stride=stride).eval()
    assert model.config.input_size_px == TINY_INPUT_PX  # the encoder's own size by default
    logits = model(random_pixels(model))
    assert logits.shape == (2, 1, TINY_INPUT_PX // stride, TINY_INPUT_PX // stride)
    # The prior bias makes the untrained heatmap start near probability 0.1.
    assert torch.sigmoid(logits).mean().item() == pytest.approx(torch.sigmoid(torch.tensor(PRIOR_LOGIT)).item(), abs=0.1)


def test_non_default_input_size(tiny_dinov2):
    model = HeatmapLocalizer.from_encoder(tiny_dinov2, input_size_px=72, stride=4).eval()
    assert model(random_pixels(model, batch=1)).shape == (1, 1, 18, 18)
    with pytest.raises(ValueError, match="pixel_values"):
        model(torch.zeros(1, 3, 56, 56))
    with pytest.raises(ValueError, match="multiple of the encoder's"):
        HeatmapLocalizer.from_encoder(tiny_dinov2, input_size_px=60)


def test_image_normalisation_comes_from_the_processor_config(tiny_dinov2):
    model = HeatmapLocalizer.from_encoder(tiny_dinov2)
    assert model.config.image_mean == pytest.approx([0.53] * 3)
    assert model.config.image_std == pytest.approx([0.26] * 3)
    grey = torch.full((2, 8, 8), 255, dtype=torch.uint8).numpy()
    pixels = pixel_values_from_grey(grey, model.config.image_mean, model.config.image_std)
    assert pixels.shape == (2, 3, 8, 8)
    assert pixels[0, 0, 0, 0].item() == pytest.approx((1.0 - 0.53) / 0.26)


def test_trainable_parameters_per_mode(tiny_dinov2):
    frozen, lora, full = (HeatmapLocalizer.from_encoder(tiny_dinov2, encoder_mode=m) for m in ENCODER_MODES)
    head = {name for name, _ in frozen.named_parameters() if name.startswith("head.")}
    assert trainable_names(frozen) == head
    lora_names = trainable_names(lora) - head
    assert lora_names and all("lora_" in name for name in lora_names)
    assert {name for name, _ in lora.named_parameters() if "lora_" in name} == lora_names
    assert any("o_proj.lora_A" in name for name in lora_names)  # output projection adapted too
    assert trainable_names(full) == {name for name, _ in full.named_parameters()}


@pytest.mark.parametrize("mode", ENCODER_MODES)
def test_gradients_reach_exactly_the_trainable_parameters(tiny_dinov2, mode):
    model = HeatmapLocalizer.from_encoder(tiny_dinov2, encoder_mode=mode, stride=8)
    with torch.no_grad():  # LoRA B starts at zero, which would stop the gradient of A
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(std=0.1)
    model(random_pixels(model)).sum().backward()
    with_grad = {name for name, param in model.named_parameters()
                 if param.grad is not None and param.grad.abs().sum() > 0}
    unused = {"encoder.embeddings.mask_token"}  # only used for masked-image pretraining
    assert with_grad <= trainable_names(model)
    assert trainable_names(model) - with_grad <= unused


def test_lora_starts_as_a_no_op_on_pretrained_weights(tiny_dinov2):
    frozen = HeatmapLocalizer.from_encoder(tiny_dinov2, encoder_mode="frozen").eval()
    lora = HeatmapLocalizer.from_encoder(tiny_dinov2, encoder_mode="lora").eval()
    pixels = random_pixels(frozen)
    torch.testing.assert_close(lora.patch_features(pixels), frozen.patch_features(pixels))


@pytest.mark.parametrize("mode", ENCODER_MODES)
def test_save_and_load_give_identical_logits(tiny_dinov2, tmp_path, mode):
    model = HeatmapLocalizer.from_encoder(tiny_dinov2, encoder_mode=mode, stride=8).eval()
    with torch.no_grad():  # move every trainable weight so that all of them must be saved
        for param in model.parameters():
            if param.requires_grad:
                param.add_(0.05 * torch.randn_like(param))
    model.config.min_confidence_f1 = 0.42
    model.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").is_file() and (tmp_path / "config.json").is_file()
    loaded = HeatmapLocalizer.from_pretrained(tmp_path).eval()
    assert loaded.config.encoder_mode == mode and loaded.config.min_confidence_f1 == 0.42
    assert trainable_names(loaded) == trainable_names(model)
    pixels = random_pixels(model)
    with torch.no_grad():
        torch.testing.assert_close(loaded(pixels), model(pixels), rtol=0, atol=0)


def test_gemma3_encoder_uses_only_the_vision_tower(tmp_path):
    folder = save_tiny_gemma3(tmp_path / "tiny-gemma3")
    model = HeatmapLocalizer.from_encoder(folder, encoder_mode="lora", stride=4).eval()
    assert isinstance(model.encoder, SiglipVisionModel)
    assert model.config.input_size_px == 64 and model.config.image_mean == pytest.approx([0.4] * 3)
    assert not any("language_model" in name or "embed_tokens" in name for name in model.state_dict())
    tower = Gemma3ForConditionalGeneration.from_pretrained(folder).model.vision_tower
    # LoRA wraps each adapted projection: its pretrained weight sits under `base_layer`.
    ours = {name.replace(".base_layer", ""): weight for name, weight in model.encoder.state_dict().items()
            if "lora_" not in name}
    assert ours.keys() == tower.state_dict().keys()
    for name, weight in tower.state_dict().items():
        torch.testing.assert_close(ours[name], weight, rtol=0, atol=0)
    assert model(random_pixels(model)).shape == (2, 1, 16, 16)


def test_gemma3_tower_runs_at_a_size_it_was_not_trained_for(tmp_path):
    folder = save_tiny_gemma3(tmp_path / "tiny-gemma3")
    model = HeatmapLocalizer.from_encoder(folder, input_size_px=96, stride=8).eval()
    assert model(random_pixels(model, batch=1)).shape == (1, 1, 12, 12)


def test_a_siglip_checkpoint_gives_its_vision_half_as_the_encoder(tmp_path):
    """As the encoder classifier takes google/medsiglip-448: the text tower is dropped."""
    vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                  image_size=56, patch_size=14)
    text = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, vocab_size=99)
    torch.manual_seed(0)
    SiglipModel(SiglipConfig(vision_config=vision, text_config=text)).save_pretrained(tmp_path / "siglip")
    model = HeatmapLocalizer.from_encoder(tmp_path / "siglip", stride=4).eval()
    assert model.config.encoder_type == "siglip_vision_model" and model.config.input_size_px == 56
    assert model(random_pixels(model)).shape == (2, 1, 14, 14)
    # The vision half saved alone, as the encoder classifier's encoder/ folder holds it, loads too.
    model.encoder.save_pretrained(tmp_path / "vision")
    again = HeatmapLocalizer.from_encoder(tmp_path / "vision", stride=4)
    assert again.encoder.state_dict().keys() == model.encoder.state_dict().keys()


def test_unknown_or_missing_encoder_is_one_sentence(tmp_path):
    BertConfig(hidden_size=8, num_hidden_layers=1, num_attention_heads=1, intermediate_size=8).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="--encoder") as unknown:
        HeatmapLocalizer.from_encoder(tmp_path)
    assert "'bert'" in str(unknown.value) and "\n" not in str(unknown.value)
    with pytest.raises(ValueError, match="--encoder") as missing:
        HeatmapLocalizer.from_encoder(tmp_path / "missing")
    assert "HF_TOKEN" in str(missing.value) and "\n" not in str(missing.value)


def test_config_validation():
    with pytest.raises(ValueError, match="stride"):
        HeatmapLocalizerConfig(stride=16, input_size_px=518)
    with pytest.raises(ValueError, match="encoder_mode"):
        HeatmapLocalizerConfig(encoder_mode="qlora")
    default = HeatmapLocalizerConfig()
    assert default.encoder_type == "dinov2" and default.patch_size_px == 14
    assert default.min_confidence_f1 is None and default.min_confidence_count is None


@pytest.mark.parametrize("mode", ["frozen", "lora", "full"])
def test_saved_weights_load_back_with_plain_load_state_dict(tmp_path, mode):
    """The Trainer resumes and restores the best checkpoint with load_state_dict: names must match."""
    from safetensors.torch import load_file

    encoder = build_tiny_dinov2(tmp_path / "encoder")
    model = HeatmapLocalizer.from_encoder(encoder, encoder_mode=mode)
    model.save_pretrained(tmp_path / "saved")
    state = load_file(tmp_path / "saved" / "model.safetensors")
    result = model.load_state_dict(state, strict=False)
    assert result.missing_keys == [] and result.unexpected_keys == []
