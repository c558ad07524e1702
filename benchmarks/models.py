"""Models the benchmarks run: the tiny test model on the CPU, the full-size MedGemma architecture
with random weights on a GPU (no download), each saved with a random LoRA adapter so that the
project's own loading code (`classification_task.model`) is what gets measured."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from peft import get_peft_model
from PIL import Image
from transformers import Gemma3Config, Gemma3ForConditionalGeneration, Gemma3TextConfig, SiglipVisionConfig

from classification_task.model import lora_config
from classification_task.demo.tiny_model import GEMMA3_MM_TOKENS, TinyModelConfig, build_model, build_processor

# google/medgemma-1.5-4b-it, from its published configuration.
FULL_TEXT = dict(hidden_size=2560, num_hidden_layers=34, num_attention_heads=8, num_key_value_heads=4, head_dim=256,
                 intermediate_size=10240, vocab_size=262208, sliding_window=1024, query_pre_attn_scalar=256)
FULL_VISION = dict(hidden_size=1152, num_hidden_layers=27, num_attention_heads=16, intermediate_size=4304,
                   image_size=896, patch_size=14, vision_use_head=False)
FULL_IMAGE_TOKENS = 256


def full_size_config(tokenizer) -> Gemma3Config:
    """MedGemma 1.5 4B's architecture: 5 sliding-window layers to 1 global one, 256 tokens per image."""
    layers = FULL_TEXT["num_hidden_layers"]
    layer_types = ["full_attention" if (i + 1) % 6 == 0 else "sliding_attention" for i in range(layers)]
    return Gemma3Config(
        text_config=Gemma3TextConfig(**FULL_TEXT, layer_types=layer_types),
        vision_config=SiglipVisionConfig(**FULL_VISION),
        mm_tokens_per_image=FULL_IMAGE_TOKENS,
        boi_token_index=tokenizer.convert_tokens_to_ids(GEMMA3_MM_TOKENS["boi_token"]),
        eoi_token_index=tokenizer.convert_tokens_to_ids(GEMMA3_MM_TOKENS["eoi_token"]),
        image_token_index=tokenizer.convert_tokens_to_ids(GEMMA3_MM_TOKENS["image_token"]),
    )


def count_full_size_parameters() -> int:
    """Parameters of the full-size architecture, counted on the meta device (no memory used)."""
    processor = build_processor(TinyModelConfig(image_size_px=896, image_tokens=FULL_IMAGE_TOKENS))
    with torch.device("meta"):
        model = Gemma3ForConditionalGeneration(full_size_config(processor.tokenizer))
    return sum(p.numel() for p in model.parameters())


def randomise_lora(model, seed: int = 0, std: float = 0.02):
    """LoRA B matrices start at zero (the adapter would do nothing): give them seeded random values."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=generator).to(param) * std)
    return model


def save_model_and_adapter(model, processor, folder: Path) -> tuple[Path, Path]:
    """`folder/base` (model + processor) and `folder/adapter` (LoRA r=16 on all linear layers)."""
    base, adapter = folder / "base", folder / "adapter"
    model.save_pretrained(base)
    processor.save_pretrained(base)
    randomise_lora(get_peft_model(model, lora_config())).save_pretrained(adapter)
    return base, adapter


def tiny_model_folders(folder: Path) -> tuple[Path, Path]:
    config = TinyModelConfig()
    processor = build_processor(config)
    return save_model_and_adapter(build_model(config, processor.tokenizer), processor, folder)


def full_size_model_folders(folder: Path) -> tuple[Path, Path]:
    """Random-init full-size model in bf16, built on the GPU, saved (~8.6 GB) with a random adapter.

    The processor is the tiny one at 896 px and 256 image tokens: its tokenizer
    spells the question one character per token (~150 tokens where the real one
    uses ~40), so prompts are somewhat longer than the real model's.
    """
    processor = build_processor(TinyModelConfig(image_size_px=896, image_tokens=FULL_IMAGE_TOKENS))
    torch.manual_seed(0)
    default_dtype = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)
    try:
        with torch.device("cuda"):
            model = Gemma3ForConditionalGeneration(full_size_config(processor.tokenizer))
    finally:
        torch.set_default_dtype(default_dtype)
    torch.nn.init.normal_(model.model.multi_modal_projector.mm_input_projection_weight, std=1152**-0.5)
    folders = save_model_and_adapter(model.eval(), processor, folder)
    del model
    torch.cuda.empty_cache()
    return folders


def synthetic_images(n: int, size_px: int, seed: int = 0) -> list[dict]:
    """Pre-processed radiograph stand-ins (8-bit RGB at the model's size), as scoring datasets hold them."""
    rng = np.random.default_rng(seed)
    return [{"file_name": f"{i:05d}.png",
             "image": Image.fromarray(rng.integers(0, 256, (size_px, size_px), dtype=np.uint8)).convert("RGB")}
            for i in range(n)]
