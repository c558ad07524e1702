"""Loading MedGemma (or any Gemma 3 checkpoint) with QLoRA or plain LoRA adapters."""

from __future__ import annotations

import os
from contextlib import contextmanager
from typing import Literal

import torch
from dotenv import load_dotenv
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import AutoModelForImageTextToText, AutoProcessor, BitsAndBytesConfig

from classification_task.dataset import DataError

MEDGEMMA_ID = "google/medgemma-1.5-4b-it"
Quantization = Literal["nf4", "none"]


def hub_token() -> str | None:
    """HF_TOKEN from the environment or a `.env` file; never printed or stored."""
    load_dotenv()
    return os.environ.get("HF_TOKEN") or None


def compute_dtype() -> torch.dtype:
    """bf16 where the GPU supports it (fp16 gives NaNs in Gemma 3), else fp32."""
    if torch.cuda.is_available() and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float32


def device_map() -> dict | None:
    """One whole model per process: data-parallel runs put each copy on its own GPU."""
    if not torch.cuda.is_available():
        return None
    return {"": int(os.environ.get("LOCAL_RANK", 0))}


@contextmanager
def explained_load_errors(model_id: str, adapter: str | None = None):
    """from_pretrained failures (unknown id or folder, no access, no network) as one sentence."""
    try:
        yield
    except OSError as err:
        reason = str(err).strip().splitlines()[0] if str(err).strip() else err.__class__.__name__
        what = repr(model_id) + (f" with adapter {adapter!r}" if adapter else "")
        raise DataError(f"could not load {what} ({reason}); check --model_id / --adapter, and for the hub "
                        "model set HF_TOKEN in .env after accepting its licence.") from None


def load_processor(model_id: str):
    with explained_load_errors(model_id):
        return AutoProcessor.from_pretrained(model_id, token=hub_token())


def load_base_model(model_id: str, quantization: Quantization = "nf4"):
    dtype = compute_dtype()
    quantization_config = None
    if quantization == "nf4":
        quantization_config = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=dtype,
            bnb_4bit_quant_storage=dtype,
        )
    with explained_load_errors(model_id):
        return AutoModelForImageTextToText.from_pretrained(
            model_id,
            dtype=dtype,
            quantization_config=quantization_config,
            device_map=device_map(),
            token=hub_token(),
        )


def lora_config(rank: int = 16, alpha: int = 16, dropout: float = 0.05,
                modules_to_save: list[str] | None = None) -> LoraConfig:
    # The reference recipe trains no full modules. Never add lm_head/embed_tokens:
    # they are tied, and training them would make ~1.3 B parameters trainable.
    return LoraConfig(
        modules_to_save=modules_to_save or None,
        r=rank,
        lora_alpha=alpha,
        lora_dropout=dropout,
        target_modules="all-linear",
        bias="none",
        task_type="CAUSAL_LM",
    )


def add_lora(model, config: LoraConfig):
    model = get_peft_model(model, config)
    model.print_trainable_parameters()
    return model


def load_with_adapter(model_id: str, adapter: str | None, quantization: Quantization = "none", merge: bool = False):
    """Base model plus a trained adapter (or the zero-shot base when adapter is None)."""
    model = load_base_model(model_id, quantization)
    if adapter:
        with explained_load_errors(model_id, adapter):
            model = PeftModel.from_pretrained(model, adapter, token=hub_token())
        if merge:
            model = model.merge_and_unload()
    return model.eval()
