"""Tiny random-init MedGemma (Gemma 3) model and processor for offline tests and the demo.

The real model, google/medgemma-1.5-4b-it, cannot be downloaded everywhere (it is
gated and large). This module builds a model of the same architecture
(Gemma3ForConditionalGeneration with a SigLIP vision tower) and a matching
processor (Gemma tokenizer with the Gemma 3 special tokens and chat template,
Gemma 3 image processor) from small configs, and saves both with
`save_pretrained`, so that every `from_pretrained` call in the project runs
exactly as it would on the hub id.

    python -m classification_task.demo.tiny_model --out checkpoints/tiny-medgemma
"""

from __future__ import annotations

import string
import sys
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import (
    Gemma3Config,
    Gemma3ForConditionalGeneration,
    Gemma3Processor,
    Gemma3TextConfig,
    GemmaTokenizer,
    SiglipVisionConfig,
)
from transformers.models.gemma3.image_processing_pil_gemma3 import Gemma3ImageProcessorPil

from classification_task.common import cli

# The Gemma 3 chat template, as shipped with google/medgemma-1.5-4b-it.
GEMMA3_CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{%- if messages[0]['role'] == 'system' -%}"
    "{%- if messages[0]['content'] is string -%}"
    "{%- set first_user_prefix = messages[0]['content'] + '\n\n' -%}"
    "{%- else -%}"
    "{%- set first_user_prefix = messages[0]['content'][0]['text'] + '\n\n' -%}"
    "{%- endif -%}"
    "{%- set loop_messages = messages[1:] -%}"
    "{%- else -%}"
    "{%- set first_user_prefix = \"\" -%}"
    "{%- set loop_messages = messages -%}"
    "{%- endif -%}"
    "{%- for message in loop_messages -%}"
    "{%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) -%}"
    "{{ raise_exception(\"Conversation roles must alternate user/assistant/user/assistant/...\") }}"
    "{%- endif -%}"
    "{%- if (message['role'] == 'assistant') -%}{%- set role = \"model\" -%}"
    "{%- else -%}{%- set role = message['role'] -%}{%- endif -%}"
    "{{ '<start_of_turn>' + role + '\n' + (first_user_prefix if loop.first else \"\") }}"
    "{%- if message['content'] is string -%}"
    "{{ message['content'] | trim }}"
    "{%- elif message['content'] is iterable -%}"
    "{%- for item in message['content'] -%}"
    "{%- if item['type'] == 'image' -%}{{ '<start_of_image>' }}"
    "{%- elif item['type'] == 'text' -%}{{ item['text'] | trim }}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- else -%}{{ raise_exception(\"Invalid content type\") }}"
    "{%- endif -%}"
    "{{ '<end_of_turn>\n' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{'<start_of_turn>model\n'}}{%- endif -%}"
)

SPECIAL_TOKENS = ["<pad>", "<eos>", "<bos>", "<unk>", "<mask>"]
GEMMA3_MM_TOKENS = {
    "boi_token": "<start_of_image>",
    "eoi_token": "<end_of_image>",
    "image_token": "<image_soft_token>",
}
TURN_TOKENS = ["<start_of_turn>", "<end_of_turn>"]

# On a CPU with AVX512-BF16, bitsandbytes repacks a 4-bit weight for its CPU kernel when the layer
# runs in eval mode without gradients (bitsandbytes/functional.py, _convert_weight_packed_for_cpu):
# output rows go in blocks of 32, and each row's scales are regrouped per quantisation block of 64
# inputs. A layer that may go 4-bit therefore needs out_features % 32 == 0 and in_features % 64 == 0,
# as the real text model's layers have (vocabulary 262,208, hidden 2,560, intermediate 10,240).
PACKED_ROWS = 32
QUANT_BLOCK_INPUTS = 64


@dataclass
class TinyModelConfig:
    image_size_px: int = 112
    patch_size_px: int = 14
    image_tokens: int = 16
    vision_hidden: int = 64
    vision_layers: int = 2
    text_hidden: int = 64
    text_layers: int = 2
    seed: int = 0

    def __post_init__(self) -> None:
        for name, hidden in (("text_hidden", self.text_hidden), ("vision_hidden", self.vision_hidden)):
            # hidden is the input of most layers; hidden / 2 (head_dim) the output of the key/value ones.
            if hidden % QUANT_BLOCK_INPUTS or (hidden // 2) % PACKED_ROWS:
                raise ValueError(f"{name} must be a multiple of 64, so that bitsandbytes can pack every "
                                 "4-bit layer for its CPU kernel.")
        if self.image_size_px % self.patch_size_px:
            raise ValueError("image_size_px must be a multiple of patch_size_px.")
        patches_per_side = self.image_size_px // self.patch_size_px
        tokens_per_side = round(self.image_tokens**0.5)
        if tokens_per_side**2 != self.image_tokens or patches_per_side % tokens_per_side:
            raise ValueError(
                "image_tokens must be a square number whose side divides image_size_px / patch_size_px."
            )


def build_tokenizer() -> GemmaTokenizer:
    """A character-level Gemma tokenizer (byte fallback) with the Gemma 3 special tokens.

    Every printable ASCII character is one token, so single answer letters such
    as "A" and "B" are single tokens, as they are in the real vocabulary.
    """
    byte_tokens = [f"<0x{b:02X}>" for b in range(256)]
    chars = ["▁" if c == " " else c for c in string.printable if c not in "\t\r\x0b\x0c"]
    pieces = SPECIAL_TOKENS + TURN_TOKENS + list(GEMMA3_MM_TOKENS.values()) + byte_tokens + chars
    vocab = {piece: i for i, piece in enumerate(dict.fromkeys(pieces))}
    tokenizer = GemmaTokenizer(
        vocab=vocab,
        merges=[],
        extra_special_tokens=dict(GEMMA3_MM_TOKENS),
        chat_template=GEMMA3_CHAT_TEMPLATE,
        add_bos_token=True,  # as the real Gemma 3 tokenizer does
    )
    # The turn markers are single special tokens in the real vocabulary too.
    tokenizer.add_tokens(TURN_TOKENS, special_tokens=True)
    return tokenizer


def build_processor(config: TinyModelConfig) -> Gemma3Processor:
    image_processor = Gemma3ImageProcessorPil(
        size={"height": config.image_size_px, "width": config.image_size_px},
        image_mean=[0.5, 0.5, 0.5],
        image_std=[0.5, 0.5, 0.5],
    )
    return Gemma3Processor(
        image_processor=image_processor,
        tokenizer=build_tokenizer(),
        chat_template=GEMMA3_CHAT_TEMPLATE,
        image_seq_length=config.image_tokens,
    )


def padded_vocab_size(tokenizer: GemmaTokenizer) -> int:
    """The tokenizer's length rounded up to a whole number of packed row blocks, so that an untied
    4-bit head can be packed too; the extra rows are ids the tokenizer never produces."""
    return -(-len(tokenizer) // PACKED_ROWS) * PACKED_ROWS


def build_model(config: TinyModelConfig, tokenizer: GemmaTokenizer) -> Gemma3ForConditionalGeneration:
    text_config = Gemma3TextConfig(
        vocab_size=len(tokenizer),
        hidden_size=config.text_hidden,
        intermediate_size=config.text_hidden * 2,
        num_hidden_layers=config.text_layers,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=config.text_hidden // 2,
        query_pre_attn_scalar=config.text_hidden // 2,
        # Like the real model: local (sliding) layers and a global one, so the
        # answer token can always attend to the image tokens at the start.
        sliding_window=512,
        layer_types=["sliding_attention"] * (config.text_layers - 1) + ["full_attention"],
        max_position_embeddings=2048,
    )
    vision_config = SiglipVisionConfig(
        hidden_size=config.vision_hidden,
        intermediate_size=config.vision_hidden * 2,
        num_hidden_layers=config.vision_layers,
        num_attention_heads=2,
        image_size=config.image_size_px,
        patch_size=config.patch_size_px,
        vision_use_head=False,
    )
    model_config = Gemma3Config(
        text_config=text_config,
        vision_config=vision_config,
        mm_tokens_per_image=config.image_tokens,
        boi_token_index=tokenizer.convert_tokens_to_ids(GEMMA3_MM_TOKENS["boi_token"]),
        eoi_token_index=tokenizer.convert_tokens_to_ids(GEMMA3_MM_TOKENS["eoi_token"]),
        image_token_index=tokenizer.convert_tokens_to_ids(GEMMA3_MM_TOKENS["image_token"]),
    )
    torch.manual_seed(config.seed)
    model = Gemma3ForConditionalGeneration(model_config)
    # Gemma 3 zero-initialises the image projection; left at zero, images would
    # have no effect on the output and nothing visual could be learned.
    projection = model.model.multi_modal_projector.mm_input_projection_weight
    torch.nn.init.normal_(projection, std=config.vision_hidden**-0.5)
    # Padded after the seeded build, so that every other weight is the unpadded model's.
    model.resize_token_embeddings(padded_vocab_size(tokenizer), mean_resizing=False)
    return model.eval()


def save_tiny_medgemma(out_dir: str | Path, config: TinyModelConfig | None = None) -> Path:
    """Build the tiny model and processor and `save_pretrained` both into `out_dir`."""
    config = config or TinyModelConfig()
    out_dir = Path(out_dir)
    processor = build_processor(config)
    model = build_model(config, processor.tokenizer)
    model.save_pretrained(out_dir)
    processor.save_pretrained(out_dir)
    return out_dir


def save_tiny_dinov2(out_dir: str | Path, image_size_px: int = 56, patch_size_px: int = 8, hidden: int = 32,
                     seed: int = 0) -> Path:
    """A tiny random-init Dinov2 (2 layers, 2 heads) and its image processor config, saved with save_pretrained,
    so that the encoder classifier loads it exactly as it loads microsoft/rad-dino. The mean and std differ
    from ImageNet's so that reading them can be checked."""
    from transformers import Dinov2Config, Dinov2Model
    from transformers.models.bit.image_processing_pil_bit import BitImageProcessorPil

    out_dir = Path(out_dir)
    config = Dinov2Config(hidden_size=hidden, num_hidden_layers=2, num_attention_heads=2, mlp_ratio=2,
                          image_size=image_size_px, patch_size=patch_size_px)
    torch.manual_seed(seed)
    Dinov2Model(config).save_pretrained(out_dir)
    BitImageProcessorPil(size={"height": image_size_px, "width": image_size_px}, do_center_crop=False,
                         image_mean=[0.53, 0.53, 0.53], image_std=[0.26, 0.26, 0.26]).save_pretrained(out_dir)
    return out_dir


@dataclass
class SaveConfig:
    """The command line: where to save, and the model settings worth changing there."""

    out_dir: str = cli.arg("checkpoints/tiny-medgemma", "folder to write model + processor", flag="out")
    image_size_px: int = cli.arg(TinyModelConfig.image_size_px, "side of the square images the model takes")
    seed: int = cli.arg(TinyModelConfig.seed, "seed of the random weights")

    def __post_init__(self) -> None:
        self.model_config  # validates the image size

    @property
    def model_config(self) -> TinyModelConfig:
        return TinyModelConfig(image_size_px=self.image_size_px, seed=self.seed)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    config = cli.parse(SaveConfig, __doc__, argv)
    if config is None:
        return 2
    path = save_tiny_medgemma(config.out_dir, config.model_config)
    print(f"tiny MedGemma-architecture model and processor saved to {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
