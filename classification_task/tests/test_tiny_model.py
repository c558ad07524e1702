"""The tiny model factory: a MedGemma-architecture model that loads like the real one."""

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import AutoModelForImageTextToText, AutoProcessor, BitsAndBytesConfig

from classification_task.demo.tiny_model import GEMMA3_MM_TOKENS, TinyModelConfig, build_model, build_processor
from classification_task.tests.bnb_packing import PACKING_MODES, assert_packing, force_cpu_packing

PROMPT = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Nodule? A or B."}]}]


def _batch(processor, sizes):
    rng = np.random.default_rng(0)
    images = [[Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8))] for h, w in sizes]
    text = processor.apply_chat_template(PROMPT, add_generation_prompt=True, tokenize=False)
    return processor(text=[text] * len(images), images=images, return_tensors="pt", padding=True)


def test_processor_has_gemma3_tokens_and_template(tiny_model_dir):
    processor = AutoProcessor.from_pretrained(tiny_model_dir)
    tokenizer = processor.tokenizer
    for name, token in GEMMA3_MM_TOKENS.items():
        assert getattr(tokenizer, name) == token
        assert tokenizer.tokenize(token) == [token]
    text = processor.apply_chat_template(PROMPT, add_generation_prompt=True, tokenize=False)
    assert text.startswith("<bos><start_of_turn>user\n<start_of_image>")
    assert text.endswith("<end_of_turn>\n<start_of_turn>model\n")
    assert tokenizer.tokenize("<start_of_turn>") == ["<start_of_turn>"]
    assert len(tokenizer.tokenize("A")) == len(tokenizer.tokenize("B")) == 1


def test_round_trip_gives_identical_logits(tiny_model_dir, tmp_path):
    processor = AutoProcessor.from_pretrained(tiny_model_dir)
    model = AutoModelForImageTextToText.from_pretrained(tiny_model_dir).eval()
    batch = _batch(processor, [(128, 128)])
    with torch.no_grad():
        before = model(**batch).logits
    model.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    reloaded = AutoModelForImageTextToText.from_pretrained(tmp_path).eval()
    batch_again = _batch(AutoProcessor.from_pretrained(tmp_path), [(128, 128)])
    with torch.no_grad():
        after = reloaded(**batch_again).logits
    assert torch.equal(batch["input_ids"], batch_again["input_ids"])
    assert torch.equal(before, after)


def test_images_change_the_output(tiny_model_dir):
    """The zero-initialised projection was re-initialised, so pixels matter."""
    processor = AutoProcessor.from_pretrained(tiny_model_dir)
    model = AutoModelForImageTextToText.from_pretrained(tiny_model_dir).eval()
    batch = _batch(processor, [(128, 128)])
    with torch.no_grad():
        first = model(**batch).logits[0, -1]
        batch["pixel_values"] = torch.zeros_like(batch["pixel_values"])
        second = model(**batch).logits[0, -1]
    assert not torch.allclose(first, second)


def test_two_images_of_different_sizes_forward_and_backward(tiny_model_dir):
    processor = AutoProcessor.from_pretrained(tiny_model_dir)
    model = AutoModelForImageTextToText.from_pretrained(tiny_model_dir).train()
    batch = _batch(processor, [(300, 240), (96, 160)])
    assert batch["pixel_values"].shape[0] == 2
    loss = model(**batch).logits[:, -1].logsumexp(-1).mean()
    loss.backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
    vision_grad = model.model.vision_tower.embeddings.patch_embedding.weight.grad
    assert vision_grad is not None and vision_grad.abs().sum() > 0


def test_every_layer_that_can_go_4bit_fits_bitsandbytes_cpu_packing():
    """On a CPU with AVX512-BF16, bitsandbytes packs a 4-bit weight in blocks of 32 output rows and
    64 inputs; checked on the dimensions, so that a misfit fails on every CPU. The head counts too:
    untied, it is quantized like any other Linear."""
    config = TinyModelConfig()
    processor = build_processor(config)
    model = build_model(config, processor.tokenizer)
    linears = {name: m for name, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
    assert "lm_head" in linears and len(linears) > 20
    misfits = {name: (m.out_features, m.in_features) for name, m in linears.items()
               if m.out_features % 32 or m.in_features % 64}
    assert not misfits, f"(out_features, in_features) that bitsandbytes cannot pack: {misfits}"
    assert model.config.text_config.vocab_size >= len(processor.tokenizer)


def test_hidden_sizes_that_cannot_be_packed_are_refused():
    with pytest.raises(ValueError, match="text_hidden must be a multiple of 64"):
        TinyModelConfig(text_hidden=48)


@pytest.mark.parametrize("packing", PACKING_MODES)
def test_4bit_nf4_loading_on_cpu(tiny_model_dir, monkeypatch, packing):
    bnb = pytest.importorskip("bitsandbytes")
    force_cpu_packing(monkeypatch, packing)
    config = BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=torch.bfloat16,
        bnb_4bit_quant_storage=torch.bfloat16,
    )
    model = AutoModelForImageTextToText.from_pretrained(
        tiny_model_dir, quantization_config=config, dtype=torch.bfloat16
    )
    quantized = [m for m in model.modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert quantized and quantized[0].weight.quant_type == "nf4"
    batch = _batch(AutoProcessor.from_pretrained(tiny_model_dir), [(128, 128)])
    batch["pixel_values"] = batch["pixel_values"].to(torch.bfloat16)
    with torch.no_grad():
        logits = model(**batch).logits
    assert torch.isfinite(logits.float()).all()
    assert_packing(model, packing)
