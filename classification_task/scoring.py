"""The question, the two answer letters and p(nodule) from one forward pass.

MedGemma is asked a fixed multiple-choice question about the radiograph and
would answer with one letter. Instead of generating, we read the logits of the
two answer letters at the answer position (the last prompt token, right after
`<start_of_turn>model\n`): p(nodule) = softmax over those two logits.
"""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

QUESTION = (
    "Look at this chest X-ray. Is there a lung nodule?\n"
    "A: no nodule\n"
    "B: lung nodule\n"
    "Answer with a single letter."
)
ANSWER_LETTERS = ("A", "B")  # index 0 = healthy, index 1 = nodule


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


def answer_logits(model, inputs: dict, answer_ids: list[int]) -> torch.Tensor:
    """Logits of the two answer letters at the answer position: shape (batch, 2).

    `logits_to_keep` with one position per row makes the LM head project a
    single hidden state per image, never batch x sequence x vocabulary.
    """
    inputs = {k: v for k, v in inputs.items() if k != "labels"}
    inputs["pixel_values"] = inputs["pixel_values"].to(model_dtype(model))
    positions = answer_positions(inputs["attention_mask"])
    outputs = model(**inputs, logits_to_keep=positions[:, None], use_cache=False)
    return outputs.logits[:, 0, answer_ids]


def p_nodule_from_logits(logits: torch.Tensor | np.ndarray) -> np.ndarray:
    logits = torch.as_tensor(logits).float()
    return torch.softmax(logits, dim=-1)[:, 1].numpy()


@torch.no_grad()
def score_dataset(
    model, processor, dataset: Dataset, batch_size: int = 4, num_workers: int = 0, desc: str = "scoring"
) -> np.ndarray:
    """p(nodule) for every item of `dataset`, in order."""
    model.eval()
    answer_ids = answer_token_ids(processor.tokenizer)
    loader = DataLoader(
        dataset, batch_size=batch_size, collate_fn=PromptCollator(processor), num_workers=num_workers
    )
    device = next(model.parameters()).device
    scores = []
    for batch in tqdm(loader, desc=desc, unit="batch"):
        batch = {k: v.to(device) for k, v in batch.items()}
        scores.append(p_nodule_from_logits(answer_logits(model, batch, answer_ids).cpu()))
    return np.concatenate(scores) if scores else np.zeros(0)


def model_dtype(model) -> torch.dtype:
    """The dtype images must have: that of the vision tower's patch embedding."""
    for name, param in model.named_parameters():
        if "patch_embedding" in name:
            return param.dtype
    return torch.float32
