"""The two answer logits in float32, from the final hidden state and the two lm_head rows.

In bf16 a logit near 20 is rounded to a step of 0.125, so p(nodule) read from
bf16 logits takes a handful of distinct values; read in float32 it is continuous
and equals the model's own logits for those two tokens computed in float32.
"""

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import (
    AutoModelForImageTextToText,
    AutoProcessor,
    BitsAndBytesConfig,
    Gemma3ForCausalLM,
    Gemma3TextConfig,
)

from classification_task.model import (
    PromptCollator,
    answer_logits,
    answer_positions,
    answer_token_ids,
    dequantized_rows,
    head_rows,
    p_nodule_from_logits,
)
from classification_task.demo.tiny_model import TinyModelConfig, build_model, build_processor
from classification_task.tests.bnb_packing import PACKING_MODES, assert_packing, force_cpu_packing


def _batch(processor, n: int, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    images = [Image.fromarray(rng.integers(0, 255, (112, 112, 3), dtype=np.uint8)) for _ in range(n)]
    return PromptCollator(processor)([{"image": image} for image in images])


def _answer_hidden(model, batch: dict) -> torch.Tensor:
    """The final (normalised) hidden state at each row's answer position, in the model's dtype."""
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    inputs["pixel_values"] = inputs["pixel_values"].to(model.dtype)
    with torch.no_grad():
        hidden = model.model(**inputs, use_cache=False).last_hidden_state
    positions = answer_positions(batch["attention_mask"])
    return hidden[torch.arange(len(positions)), positions]


@pytest.fixture(scope="module")
def bf16_model_near_20(tiny_model_dir):
    """The tiny model in bf16, its two answer rows shifted so that both logits sit near 20 (as the real
    model's do), where bf16 steps are 0.125 wide; the head is untied so the prompt's embeddings stay."""
    processor = AutoProcessor.from_pretrained(tiny_model_dir)
    model = AutoModelForImageTextToText.from_pretrained(tiny_model_dir, dtype=torch.bfloat16).eval()
    ids = answer_token_ids(processor.tokenizer)
    mean_hidden = _answer_hidden(model, _batch(processor, 8, seed=1)).float().mean(0)
    weight = model.lm_head.weight.detach().clone()
    weight[ids] += (20 * mean_hidden / mean_hidden.square().sum()).to(weight.dtype)
    model.lm_head.weight = torch.nn.Parameter(weight, requires_grad=False)
    return model, processor, ids


def test_bf16_p_nodule_equals_the_float32_reference_and_stays_continuous(bf16_model_near_20):
    model, processor, ids = bf16_model_near_20
    batch = _batch(processor, 32)
    with torch.no_grad():
        logits = answer_logits(model, batch, ids)
        with torch.autocast("cpu", dtype=torch.bfloat16):  # as the Trainer runs the loss with --bf16
            logits_autocast = answer_logits(model, batch, ids)
    # The model's own logits for the two tokens, in float32: its lm_head applied to its final hidden state.
    reference = _answer_hidden(model, batch).float() @ model.lm_head.weight[ids].float().T
    assert 16 < reference.min() and reference.max() < 32, "the test needs logits where bf16 steps are 0.125"
    p_nodule, p_reference = p_nodule_from_logits(logits), p_nodule_from_logits(reference)
    assert len(np.unique(p_reference)) == 32, "the float32 reference itself must be continuous"
    assert len(np.unique(p_nodule)) == 32, f"{len(np.unique(p_nodule))} distinct p(nodule) for 32 images"
    np.testing.assert_allclose(p_nodule, p_reference, atol=1e-6)
    np.testing.assert_allclose(p_nodule_from_logits(logits_autocast), p_reference, atol=1e-6)
    assert logits.dtype == torch.float32 and logits_autocast.dtype == torch.float32


def test_softcapping_is_applied_as_the_model_applies_it_in_float32():
    """Gemma 3's text-only model caps its logits (tanh) when final_logit_softcapping is set: the two
    float32 answer logits then equal its full float32 logits for those tokens, cap included."""
    config = Gemma3TextConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                              num_attention_heads=2, num_key_value_heads=1, head_dim=16, final_logit_softcapping=0.05)
    torch.manual_seed(0)
    model = Gemma3ForCausalLM(config).eval()
    inputs = {"input_ids": torch.randint(0, 64, (3, 7)), "attention_mask": torch.ones(3, 7, dtype=torch.long)}
    ids = [5, 9]
    with torch.no_grad():
        full = model(**inputs).logits[:, -1, ids]
        two = answer_logits(model, inputs, ids)
    assert full.abs().max() < 0.05  # capped: the cap does act here
    torch.testing.assert_close(two, full, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("packing", PACKING_MODES)
def test_a_4bit_lm_head_is_dequantized_for_the_two_rows(tmp_path, monkeypatch, packing):
    """bitsandbytes leaves a tied head unquantized (the QLoRA recipe); an untied head may be 4-bit.
    Its two rows are read right in both of bitsandbytes' CPU layouts (bnb_packing forces each)."""
    force_cpu_packing(monkeypatch, packing)
    config = TinyModelConfig()
    processor = build_processor(config)
    model = build_model(config, processor.tokenizer)
    model.config.tie_word_embeddings = model.config.text_config.tie_word_embeddings = False
    model.lm_head.weight = torch.nn.Parameter(model.lm_head.weight.detach().clone() * 3)
    model.save_pretrained(tmp_path)
    quantization = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                                      bnb_4bit_compute_dtype=torch.float32,
                                      llm_int8_skip_modules=["vision_tower", "multi_modal_projector"])
    quantized = AutoModelForImageTextToText.from_pretrained(tmp_path, quantization_config=quantization).eval()
    assert getattr(quantized.lm_head.weight, "quant_state", None) is not None, "the head must be 4-bit here"
    ids = answer_token_ids(processor.tokenizer)
    rows_as_loaded, _ = head_rows(quantized.lm_head, ids)
    batch = _batch(processor, 3)
    with torch.no_grad():
        own = quantized(**{k: v for k, v in batch.items() if k != "labels"}).logits[:, -1, ids]
        two = answer_logits(quantized, batch, ids)
    assert_packing(quantized, packing)
    # Packing rounds the scales to bf16, and the packed kernel multiplies in bf16.
    torch.testing.assert_close(head_rows(quantized.lm_head, ids)[0], rows_as_loaded, rtol=2**-8, atol=0)
    if packing == "unpacked":
        torch.testing.assert_close(two, own.float(), atol=1e-5, rtol=1e-4)
    else:
        torch.testing.assert_close(two, own.float(), atol=1e-2, rtol=1e-2)
    assert np.isfinite(p_nodule_from_logits(two)).all()


@pytest.mark.parametrize("nested", [False, True], ids=["scales", "double-quantized scales"])
def test_rows_read_from_the_packed_cpu_layout_equal_the_plain_ones(nested):
    """bitsandbytes' packing is plain tensor code, so this runs on any CPU, several row blocks deep."""
    from bitsandbytes.functional import _convert_weight_packed_for_cpu, quantize_4bit

    weight = torch.randn(96, 256, generator=torch.Generator().manual_seed(0))
    data, state = quantize_4bit(weight, blocksize=64, compress_statistics=nested, quant_type="nf4")
    row_ids = [0, 1, 15, 16, 31, 32, 50, 95]
    plain = dequantized_rows(data, state, row_ids)
    packed_data, packed_state = _convert_weight_packed_for_cpu(data, state)
    assert packed_state.packing_format_for_cpu
    torch.testing.assert_close(dequantized_rows(packed_data, packed_state, row_ids), plain, rtol=2**-8, atol=0)
    torch.testing.assert_close(plain, weight[row_ids], atol=0.15 * weight.abs().max().item(), rtol=0)
