"""A pretrained radiograph encoder with a task's head on top: what both tasks' encoder models share.

The encoder classifier (a pooled-feature head) and the heatmap localizer (an
upsampling head) differ only in their head and forward pass. Building the
encoder from its saved config, LoRA on its attention projections, which
parameters train in each `--encoder_mode`, and saving under this model's own
parameter names are the same for both, and live here.
"""

from __future__ import annotations

from peft import LoraConfig, inject_adapter_in_model
from torch import nn
from transformers import AutoConfig, AutoModel, PreTrainedModel

ENCODER_MODES = ("frozen", "lora", "full")
# The attention projections LoRA adapts, by encoder type (transformers 5 module names).
LORA_TARGETS = {
    "dinov2": ["attention.q_proj", "attention.k_proj", "attention.v_proj", "attention.o_proj"],
    "siglip_vision_model": ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.out_proj"],
}


def build_encoder(encoder_config: dict) -> PreTrainedModel:
    """A random-init encoder from its config dict (its weights are loaded afterwards)."""
    settings = {k: v for k, v in encoder_config.items() if k not in ("model_type", "dtype")}
    return AutoModel.from_config(AutoConfig.for_model(encoder_config["model_type"], **settings))


class EncoderWithHead(PreTrainedModel):
    """`self.encoder` (a pretrained ViT) and `self.head` (built by the subclass's `build_head`).

    The config carries `encoder_config` (a dict), `encoder_mode` and the LoRA settings.
    """

    main_input_name = "pixel_values"

    def __init__(self, config, encoder: PreTrainedModel | None = None) -> None:
        super().__init__(config)
        self.encoder = encoder if encoder is not None else build_encoder(config.encoder_config)
        self.head = self.build_head(config)
        self.post_init()
        # LoRA after post_init, which would otherwise overwrite the zero-initialised B matrices
        # (and the adapter would not start as a no-op).
        if config.encoder_mode == "lora":
            lora = LoraConfig(r=config.lora_r, lora_alpha=config.lora_alpha, lora_dropout=config.lora_dropout,
                              target_modules=LORA_TARGETS[config.encoder_config["model_type"]])
            inject_adapter_in_model(lora, self.encoder)
        self._set_trainable()

    def build_head(self, config) -> nn.Module:
        raise NotImplementedError

    @classmethod
    def from_pretrained(cls, *args, **kwargs):
        model = super().from_pretrained(*args, **kwargs)
        model._set_trainable()  # loading materialises fresh parameters, all trainable
        return model

    def save_pretrained(self, *args, **kwargs) -> None:
        # Keep this model's own parameter names. transformers would otherwise write the encoder's
        # weights under their older hub names, which the Trainer cannot load back into this model
        # when it resumes or restores the best checkpoint.
        kwargs.setdefault("save_original_format", False)
        super().save_pretrained(*args, **kwargs)

    def _set_trainable(self) -> None:
        mode = self.config.encoder_mode
        for name, param in self.encoder.named_parameters():
            param.requires_grad = mode == "full" or (mode == "lora" and "lora_" in name)
        for param in self.head.parameters():
            param.requires_grad = True
