"""The encoder classifier: Dinov2 / SigLIP / Gemma 3 towers, modes, the saved folder, kind detection."""

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file
from transformers import AutoModel, SiglipConfig, SiglipModel

from classification_task.encoder import model as encoder_model
from classification_task.classifiers import resolve_kind
from classification_task.encoder.model import (
    EncoderCollator,
    load_classifier,
    new_classifier,
    save_classifier,
    score_batches,
)


@pytest.fixture(scope="module")
def siglip_dir(tmp_path_factory) -> Path:
    """A tiny full SigLIP checkpoint (vision and text towers), as google/medsiglip-448 is."""
    vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                  image_size=56, patch_size=14)
    text = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, vocab_size=99)
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("tiny-siglip")
    SiglipModel(SiglipConfig(vision_config=vision, text_config=text)).save_pretrained(folder)
    return folder


def _images(n: int, size_px: int = 64, seed: int = 0) -> list[dict]:
    rng = np.random.default_rng(seed)
    return [{"image": Image.fromarray(rng.integers(0, 255, (size_px, size_px), dtype=np.uint8)).convert("RGB"),
             "label": i % 2, "file_name": f"{i}.png"} for i in range(n)]


def _trainable(model) -> set[str]:
    return {name.split(".")[0] for name, p in model.named_parameters() if p.requires_grad} | \
        ({"lora"} if any("lora_" in n and p.requires_grad for n, p in model.named_parameters()) else set())


@pytest.mark.parametrize("mode, trainable", [("frozen", {"head"}), ("lora", {"head", "encoder", "lora"}),
                                             ("full", {"head", "encoder"})])
def test_modes_train_what_they_say(tiny_dinov2_dir, mode, trainable):
    model = new_classifier(str(tiny_dinov2_dir), encoder_mode=mode)
    assert _trainable(model) == trainable
    if mode == "lora":
        assert all("lora_" in n for n, p in model.encoder.named_parameters() if p.requires_grad)


def test_the_three_encoder_sources_give_two_logits_at_their_own_size(tiny_dinov2_dir, siglip_dir, tiny_model_dir):
    for folder, size_px, mean in ((tiny_dinov2_dir, 56, 0.53), (siglip_dir, 56, None), (tiny_model_dir, 112, 0.5)):
        model = new_classifier(str(folder), encoder_mode="lora")
        assert model.config.input_size_px == size_px
        if mean is not None:
            assert model.config.image_mean == pytest.approx([mean] * 3)
        batch = EncoderCollator(model.config)(_images(3))
        logits = model(**batch)
        assert logits.shape == (3, 2) and logits.dtype == torch.float32
    assert model.config.encoder_type == "siglip_vision_model"  # MedGemma's own tower, the language model dropped
    assert sum(p.numel() for p in model.parameters()) < 2e5


def test_kind_follows_the_checkpoint(tiny_dinov2_dir, siglip_dir, tiny_model_dir, tmp_path):
    assert resolve_kind(str(tiny_dinov2_dir)) == resolve_kind(str(siglip_dir)) == "encoder"
    assert resolve_kind(str(tiny_model_dir)) == "medgemma"
    assert resolve_kind(str(tiny_model_dir), "encoder") == "encoder"  # MedGemma's SigLIP tower
    saved = save_classifier(new_classifier(str(tiny_dinov2_dir)), tmp_path / "best_model")
    assert resolve_kind(str(saved)) == "encoder"
    with pytest.raises(ValueError, match="Gemma 3"):
        resolve_kind(str(tiny_dinov2_dir), "medgemma")


def test_saved_folder_scores_as_the_trained_model_with_lora_merged(tiny_dinov2_dir, tmp_path):
    model = new_classifier(str(tiny_dinov2_dir), encoder_mode="lora")
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():  # LoRA B starts at zero: make the adapter change the encoder
        for name, param in model.named_parameters():
            if "lora_B" in name or name.startswith("head"):
                param.copy_(torch.randn(param.shape, generator=generator) * 0.5)
    model.eval()
    images = _images(5)
    expected = np.concatenate([p for _, p, _ in score_batches(model, images, batch_size=2)])
    folder = save_classifier(model, tmp_path / "best_model")
    files = {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()}
    assert {"config.json", "head.safetensors", "encoder/config.json", "encoder/model.safetensors",
            "encoder/preprocessor_config.json"} <= files
    assert not [name for name in files if name.endswith((".bin", ".pt", ".pth", ".pkl"))]
    encoder_keys = load_file(folder / "encoder" / "model.safetensors").keys()
    assert not [key for key in encoder_keys if "lora" in key], "LoRA must be merged into the saved encoder"
    loaded = load_classifier(folder)
    got = np.concatenate([p for _, p, _ in score_batches(loaded, images, batch_size=3)])
    np.testing.assert_allclose(got, expected, atol=1e-5)
    # encoder/ is a plain transformers checkpoint: any Dinov2 user can load it.
    plain = AutoModel.from_pretrained(folder / "encoder")
    assert type(plain).__name__ == "Dinov2Model"


def test_unreadable_images_are_skipped_and_named(tiny_dinov2_dir):
    model = new_classifier(str(tiny_dinov2_dir)).eval()
    items = _images(3)
    items[1] = {"file_name": "bad.png", "image": None, "error": "OSError: truncated"}
    (names, p, skipped), = list(score_batches(model, items, batch_size=3))
    assert names == ["0.png", "2.png"] and p.shape == (2,) and skipped == [("bad.png", "OSError: truncated")]


def test_an_untrained_encoder_is_not_taken_for_a_classifier(tiny_dinov2_dir):
    with pytest.raises(ValueError, match="best_model"):
        load_classifier(tiny_dinov2_dir)


def test_image_size_must_fit_the_patches(tiny_dinov2_dir):
    with pytest.raises(ValueError, match="multiple of the encoder's patch size 8"):
        new_classifier(str(tiny_dinov2_dir), input_size_px=60)
    assert encoder_model.new_classifier(str(tiny_dinov2_dir), input_size_px=64).config.input_size_px == 64


def test_a_training_batch_of_unreadable_images_only_costs_nothing(tiny_dinov2_dir):
    """The Trainer's collator and loss treat the encoder's batches as MedGemma's: unreadable items left out,
    a batch of none readable gives a zero loss that still reaches every trainable weight."""
    from classification_task.classifiers import batch_collator, logits_function
    from classification_task.trainer import NoduleTrainer
    from classification_task.trainer import ReadableBatchCollator

    model = new_classifier(str(tiny_dinov2_dir), encoder_mode="frozen")
    collate = ReadableBatchCollator(None, batch_collator(model, None))
    bad = {"file_name": "bad.png", "image": None, "error": "OSError: truncated", "label": 1}
    batch = collate([_images(1)[0], bad])
    assert batch["pixel_values"].shape == (1, 3, 56, 56) and batch["unreadable"] == [("bad.png", bad["error"])]
    trainer = NoduleTrainer.__new__(NoduleTrainer)  # only the loss is exercised: no Trainer set-up needed
    trainer.unreadable, trainer.pos_weight, trainer.focal_gamma = None, 1.0, 0.0
    trainer.args = SimpleNamespace(world_size=1)  # one process: nothing to gather
    trainer.logits_fn = logits_function(model, None)
    loss = trainer.compute_loss(model, batch)
    assert loss.item() > 0
    empty = trainer.compute_loss(model, collate([bad]))
    assert empty.item() == 0 and empty.requires_grad


def test_a_score_does_not_depend_on_the_batch_it_is_in(tiny_dinov2_dir):
    """As MedGemma's: a resumed or shared run batches the images differently, and must give the same bytes.
    The head's float32 product changed a row's last digits with its position in the batch on an AVX-512 CPU."""
    model = new_classifier(str(tiny_dinov2_dir)).eval()
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 255, (96, 80), dtype=np.uint8)).convert("RGB") for _ in range(8)]
    items = [{"file_name": f"{i}.png", "image": image} for i, image in enumerate(images)]
    bad = {"file_name": "bad.png", "image": None, "error": "OSError: x"}

    def scores(order: list[dict]) -> dict[str, float]:
        batches = score_batches(model, order, batch_size=3)
        return {name: float(p) for names, p_nodule, _ in batches for name, p in zip(names, p_nodule)}

    full_batches = scores(items + [items[0]])  # batches of 3
    assert scores(items) == full_batches  # 3, 3, 2
    assert scores([x for item in reversed(items) for x in (item, bad)]) == full_batches  # 2, 1, 2, ...
    assert scores([bad, bad, *items]) == full_batches  # 1, 3, 3, 1
