"""The classifier: MedGemma (or any Gemma 3 checkpoint) with QLoRA or plain LoRA adapters.

MedGemma is asked a fixed multiple-choice question about the radiograph and
would answer with one letter. Instead of generating, we read the logits of the
two answer letters at the answer position (the last prompt token, right after
`<start_of_turn>model\n`): p(nodule) = softmax over those two logits, computed in
float32 from the final hidden state and the two answer rows of `lm_head`.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Literal

import numpy as np
import torch
from peft import LoraConfig, PeftModel, get_peft_model
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm
from transformers import AutoModelForImageTextToText, AutoProcessor, BitsAndBytesConfig

from classification_task.common.hub import explained_load_errors, hub_token
from classification_task.common.processes import process_device

MEDGEMMA_ID = "google/medgemma-1.5-4b-it"
Quantization = Literal["nf4", "none"]
QUESTION = (
    "Look at this chest X-ray. Is there a lung nodule?\n"
    "A: no nodule\n"
    "B: lung nodule\n"
    "Answer with a single letter."
)
ANSWER_LETTERS = ("A", "B")  # index 0 = healthy, index 1 = nodule


# ----------------------------------------------------------------------------- loading


def compute_dtype() -> torch.dtype:
    """bf16 where the GPU supports it (fp16 gives NaNs in Gemma 3), else fp32."""
    if torch.cuda.is_available() and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float32


def use_process_device() -> torch.device:
    """`process_device()`, made the current CUDA device before anything touches CUDA.

    Whatever a library puts on plain "cuda" (the CUDA context, bitsandbytes'
    quantisation at load, pinned-memory threads) then lands on this process's
    GPU instead of piling up on GPU 0.
    """
    device = process_device()
    if device.type == "cuda":
        torch.cuda.set_device(device)
    return device


def device_map() -> dict | None:
    """One whole model per process, on `use_process_device()`: data-parallel copies each on their own GPU."""
    device = use_process_device()
    return None if device.type == "cpu" else {"": device.index}


def load_processor(model_id: str):
    with explained_load_errors(model_id, "--model_id"):
        return AutoProcessor.from_pretrained(model_id, token=hub_token())


def load_base_model(model_id: str, quantization: Quantization = "nf4", attn_implementation: str = "sdpa"):
    """The base model, 4-bit NF4 or in the compute dtype, with PyTorch's fused attention (sdpa) by default."""
    placement = device_map()  # first: even the bf16 check below starts a CUDA context on the current GPU
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
    with explained_load_errors(model_id, "--model_id"):
        model = AutoModelForImageTextToText.from_pretrained(
            model_id,
            dtype=dtype,
            quantization_config=quantization_config,
            device_map=placement,
            attn_implementation=attn_implementation,
            token=hub_token(),
        )
    keep_4bit_weights_as_loaded(model)
    return model


def keep_4bit_weights_as_loaded(model) -> None:
    """Switch off bitsandbytes' CPU repacking of 4-bit weights for inference.

    On a CPU with AVX512-BF16, a 4-bit layer run in eval mode without gradients
    repacks its weight and rounds the quantisation scales to bf16; the next
    training step or save quantises them again. Each evaluation would then
    nudge the frozen base, so a run resumed from a checkpoint (whose base is
    freshly loaded) would drift away from the uninterrupted run.
    """
    for module in model.modules():
        if hasattr(module, "support_avx512bf16_for_cpu"):
            module.support_avx512bf16_for_cpu = False


def lora_config(rank: int = 16, alpha: int = 16, dropout: float = 0.05) -> LoraConfig:
    # The reference recipe trains no full modules. Never add lm_head/embed_tokens:
    # they are tied, and training them would make ~1.3 B parameters trainable.
    return LoraConfig(
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


def load_with_adapter(model_id: str, adapter: str | None, quantization: Quantization = "none", merge: bool = False,
                      attn_implementation: str = "sdpa"):
    """Base model plus a trained adapter (or the zero-shot base when adapter is None)."""
    model = load_base_model(model_id, quantization, attn_implementation)
    if adapter:
        with explained_load_errors(model_id, "--model_id / --adapter", adapter):
            model = PeftModel.from_pretrained(model, adapter, token=hub_token())
        if merge:
            model = model.merge_and_unload()
    return model.eval()


# ----------------------------------------------------------------------------- prompt and answer


def answer_token_ids(tokenizer) -> list[int]:
    """Token ids of the two answer letters; each must be one token of its own."""
    ids = []
    for letter in ANSWER_LETTERS:
        pieces = tokenizer.encode(letter, add_special_tokens=False)
        if len(pieces) != 1:
            raise ValueError(
                f"answer letter {letter!r} is {len(pieces)} tokens in this tokenizer; "
                "the classifier needs single-token answers, so use a Gemma 3 tokenizer."
            )
        ids.append(pieces[0])
    return ids


def prompt_text(processor) -> str:
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": QUESTION}]}]
    return processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)


class PromptCollator:
    """Turns [{"image", "label"?}] into model inputs: one prompt per image, plus labels."""

    def __init__(self, processor, padding_side: str = "left"):
        self.processor = processor
        self.text = prompt_text(processor)
        self.padding_side = padding_side

    def __call__(self, examples: list[dict]) -> dict:
        self.processor.tokenizer.padding_side = self.padding_side
        batch = self.processor(
            text=[self.text] * len(examples),
            images=[[example["image"]] for example in examples],
            return_tensors="pt",
            padding=True,
            add_special_tokens=False,  # the chat template already starts with <bos>
        )
        if "label" in examples[0]:
            batch["labels"] = torch.tensor([example["label"] for example in examples], dtype=torch.long)
        return dict(batch)


def answer_positions(attention_mask: torch.Tensor) -> torch.Tensor:
    """Index of the last real token of each row, for left or right padding."""
    seq_len = attention_mask.shape[1]
    return seq_len - 1 - attention_mask.flip(dims=[1]).long().argmax(dim=1)


def model_dtype(model) -> torch.dtype:
    """The dtype images must have: that of the vision tower's patch embedding."""
    for name, param in model.named_parameters():
        if "patch_embedding" in name:
            return param.dtype
    return torch.float32


def answer_logits(model, inputs: dict, answer_ids: list[int]) -> torch.Tensor:
    """Logits of the two answer letters at the answer position, in float32: shape (batch, 2).

    `logits_to_keep` with one position per row keeps a single hidden state per
    image, and `answer_head` projects it onto the two answer rows only, never
    batch x sequence x vocabulary. The forward still runs through the model's
    own `forward` (and any DDP / peft wrapper), so training, evaluation and
    inference read the same float32 logits.
    """
    inputs = {k: v for k, v in inputs.items() if k != "labels"}
    if "pixel_values" in inputs:
        inputs["pixel_values"] = inputs["pixel_values"].to(model_dtype(model))
    positions = answer_positions(inputs["attention_mask"])
    with answer_head(model, answer_ids):
        outputs = model(**inputs, logits_to_keep=positions[:, None], use_cache=False)
    return outputs.logits[:, 0]


class AnswerRows(torch.nn.Module):
    """Stands in for `lm_head`: the final hidden state times the two answer rows, in float32.

    In bf16, logits near 20 are rounded to steps of 0.125, so p(nodule) would
    take only a few hundred distinct values over a test set. Autocast is off
    here, since it would run the product in bf16 again. Whatever the model's
    forward does after `lm_head` (Gemma 3's text-only model: tanh soft-capping
    when `final_logit_softcapping` is set) then acts on these float32 logits
    exactly as on its own.
    """

    def __init__(self, rows: torch.Tensor, bias: torch.Tensor | None):
        super().__init__()
        self.rows, self.bias = rows, bias  # plain tensors: nothing to train, save or count

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        with torch.autocast(hidden_states.device.type, enabled=False):
            logits = row_by_row_product(hidden_states.float(), self.rows.to(hidden_states.device))
        return logits if self.bias is None else logits + self.bias.to(logits.device)


def row_by_row_product(inputs: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """`inputs @ rows.T`, shape (..., N), with each output the sum of its own K products.

    A matrix product may sum a row's products in an order that depends on where
    the row sits in the batch: MKL's float32 GEMM on an AVX-512 CPU does so for
    two output columns and K up to 128. An image's score would then change in its
    last digits with its neighbours in the batch. A sum over the last dimension
    reduces every output alike, in an order set by K alone.
    """
    return (inputs.unsqueeze(-2) * rows).sum(-1)


def head_rows(lm_head: torch.nn.Module, answer_ids: list[int]) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The answer rows of the LM head (and of its bias), as float32.

    bitsandbytes normally leaves the head unquantized (it is tied to the input
    embedding); a 4-bit head is dequantized whole, as its own forward does.
    """
    if hasattr(lm_head, "base_layer"):
        raise ValueError("the LM head carries an adapter; the classifier reads the two answer rows of a plain head, "
                         "so train without lm_head among the LoRA target modules.")
    weight = lm_head.weight
    if getattr(weight, "quant_state", None) is not None:
        rows = dequantized_rows(weight.data, weight.quant_state, answer_ids)
    else:
        rows = weight[answer_ids].float()
    bias = getattr(lm_head, "bias", None)
    return rows, None if bias is None else bias[answer_ids].float()


def dequantized_rows(data: torch.Tensor, state, row_ids: list[int]) -> torch.Tensor:
    """Rows of a 4-bit weight in float32, from either of bitsandbytes' layouts on the CPU.

    After an eval forward without gradients on a CPU with AVX512-BF16, bitsandbytes
    keeps the weight packed for its CPU kernel (functional._convert_weight_packed_for_cpu),
    which `dequantize_4bit` cannot read: blocks of 32 output rows whose codes share
    bytes (rows 0-15 in the low nibble, 16-31 in the high one), scales transposed in bf16.
    """
    if not getattr(state, "packing_format_for_cpu", False):
        from bitsandbytes.functional import dequantize_4bit

        return dequantize_4bit(data, state)[row_ids].float()
    block = 32  # block_n of the packing
    n_rows, n_inputs = state.shape
    ids = torch.as_tensor(row_ids)
    blocks = data.view(torch.uint8).reshape(n_rows // block, n_inputs // 2, block)[ids // block]
    nibbles = torch.cat([blocks & 0xF, blocks >> 4], dim=-1).reshape(len(ids), n_inputs // 2, block, 2)
    codes = nibbles[torch.arange(len(ids)), :, ids % block].reshape(len(ids), n_inputs)
    scales = state.absmax.T[ids].float().repeat_interleave(state.blocksize, dim=1)
    return state.code.float()[codes.long()] * scales


@contextmanager
def answer_head(model, answer_ids: list[int]):
    """Within the block, the model's `lm_head` yields only the two answer logits, in float32."""
    owner = next((module for module in model.modules() if "lm_head" in module._modules), None)
    if owner is None:
        raise ValueError(f"{type(model).__name__} has no lm_head; the classifier needs a Gemma 3 checkpoint.")
    original = owner.lm_head
    owner.lm_head = AnswerRows(*head_rows(original, answer_ids))
    try:
        yield
    finally:
        owner.lm_head = original


def p_nodule_from_logits(logits: torch.Tensor | np.ndarray) -> np.ndarray:
    logits = torch.as_tensor(logits).float()
    return torch.softmax(logits, dim=-1)[:, 1].numpy()


# ----------------------------------------------------------------------------- scoring


def filled_up(images: list, batch_size: int | None) -> list:
    """`images` followed by copies of its last one up to `batch_size` (their scores are dropped).

    The kernels' results change in their last digits with the number of rows in
    a forward pass, so every pass has the same number, and an image's score does
    not depend on which batch it falls in (a resumed or shared run batches
    differently from an uninterrupted one). Its position in the batch does not
    matter either: see `row_by_row_product`.
    """
    return images + images[-1:] * (batch_size - len(images)) if images and batch_size else images


class ScoringCollator:
    """PromptCollator over the readable images of a batch; unreadable ones are passed on as skipped.

    Items are dicts with an `image` (PIL image, or None when it could not be read,
    then with an `error`) and optionally a `file_name`. A batch with fewer than
    `batch_size` readable images is filled up to that size (see `filled_up`).
    """

    def __init__(self, processor, batch_size: int | None = None):
        self.prompts = PromptCollator(processor)  # left padding
        self.batch_size = batch_size

    def __call__(self, items: list[dict]) -> dict:
        readable = [item for item in items if item["image"] is not None]
        images = filled_up([item["image"] for item in readable], self.batch_size)
        return {
            "inputs": self.prompts([{"image": image} for image in images]) if images else None,
            "file_names": [item.get("file_name") for item in readable],
            "skipped": [(item["file_name"], item["error"]) for item in items if item["image"] is None],
        }


@torch.no_grad()
def score_batches(
    model, processor, dataset: Dataset, batch_size: int = 4, num_workers: int = 0, desc: str = "scoring"
) -> Iterator[tuple[list, np.ndarray, list[tuple[str, str]]]]:
    """Per batch of `dataset`, in order: (file_names, p_nodule, skipped (file_name, error) pairs).

    Every forward pass holds `batch_size` images (see ScoringCollator), so a score
    depends on the image, the model and `batch_size`, not on the other images.
    """
    model.eval()
    answer_ids = answer_token_ids(processor.tokenizer)
    loader = DataLoader(dataset, batch_size=batch_size, collate_fn=ScoringCollator(processor, batch_size),
                        num_workers=num_workers)
    device = next(model.parameters()).device
    with tqdm(total=len(dataset), desc=desc, unit="img") as progress:
        for batch in loader:
            n_scored, p_nodule = len(batch["file_names"]), np.zeros(0)
            if batch["inputs"] is not None:
                inputs = {k: v.to(device) for k, v in batch["inputs"].items()}
                p_nodule = p_nodule_from_logits(answer_logits(model, inputs, answer_ids).cpu())[:n_scored]
            progress.update(n_scored + len(batch["skipped"]))
            yield batch["file_names"], p_nodule, batch["skipped"]
