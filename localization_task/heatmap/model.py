"""Heatmap keypoint localizer: a pretrained ViT encoder, a light upsampling head, one heatmap.

    pixel_values (B, 3, S, S) -> encoder patch tokens (B, C, S/patch, S/patch)
        -> 1x1 conv -> bilinear upsampling to S/stride
        (+ an image stem: strided 3x3 convs on pixel_values down to S/stride, concatenated)
        -> 2 x (3x3 conv, GroupNorm, GELU) -> 1x1 conv -> logits (B, 1, S/stride, S/stride)

Encoders (loaded by `common/hub.py`, as the encoder classifier's are): a Dinov2
model (default `microsoft/rad-dino`, a ViT-B/14 trained on chest radiographs),
a SigLIP vision checkpoint (`google/medsiglip-448`: its vision half), or the
SigLIP vision tower of a Gemma 3 checkpoint such as `google/medgemma-1.5-4b-it`
(only `model.vision_tower` is kept; the language model and projector are
discarded after loading). The encoder is frozen,
adapted with LoRA on its attention projections, or fully trained.

`HeatmapLocalizer` is a transformers `PreTrainedModel`: `save_pretrained`
writes config.json and model.safetensors, and `from_pretrained` rebuilds the
same structure (LoRA included) from the config alone, so no checkpoint is
ever unpickled. Images are resized by `heatmap.letterbox_image`, never by an
image processor; only the processor's mean and std are kept.
"""
from __future__ import annotations

import math
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F
from transformers import Dinov2Config, PretrainedConfig, PreTrainedModel
from transformers.image_utils import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

from localization_task.common.encoder_model import ENCODER_MODES, LORA_TARGETS, EncoderWithHead
from localization_task.common.hub import load_image_processor, load_pretrained_encoder
from localization_task.dataset import DEFAULT_CLIP_HIGH_PCT, DEFAULT_CLIP_LOW_PCT

DEFAULT_ENCODER = "microsoft/rad-dino"
STRIDES = (4, 8)
# sigmoid(-2.19) = 0.1: CenterNet's prior, so the untrained heatmap starts nearly empty
# and the many negative cells do not swamp the first steps of the focal loss.
PRIOR_LOGIT = -2.19


class HeatmapLocalizerConfig(PretrainedConfig):
    """Everything needed to rebuild a `HeatmapLocalizer`; thresholds tuned after training ride along."""

    model_type = "heatmap_localizer"

    encoder_config: dict | None = None  # the encoder's own config as a dict; None: Dinov2 ViT-B/14
    input_size_px: int = 518
    stride: int = 4
    head_channels: int = 128
    stem_channels: int = 16  # image stem beside the patch features; 0 = patch features only
    encoder_mode: str = "frozen"
    lora_r: int = 16
    lora_alpha: int = 16
    lora_dropout: float = 0.05
    image_mean: list[float] | None = None  # None: ImageNet's
    image_std: list[float] | None = None
    # The per-image percentile stretch the model was trained with; inference uses it by default.
    # A config saved before these fields existed loads with the stretch it was trained with.
    clip_low_pct: float = DEFAULT_CLIP_LOW_PCT
    clip_high_pct: float = DEFAULT_CLIP_HIGH_PCT
    min_confidence_f1: float | None = None  # peak threshold that maximised F1 on validation
    min_confidence_count: float | None = None  # peak threshold that maximised count accuracy

    def __post_init__(self, **kwargs) -> None:
        if self.encoder_config is None:
            self.encoder_config = Dinov2Config().to_dict()
        elif isinstance(self.encoder_config, PretrainedConfig):
            self.encoder_config = self.encoder_config.to_dict()
        self.image_mean = list(self.image_mean or IMAGENET_DEFAULT_MEAN)
        self.image_std = list(self.image_std or IMAGENET_DEFAULT_STD)
        self._validate()
        super().__post_init__(**kwargs)

    def _validate(self) -> None:
        encoder_type = self.encoder_config.get("model_type")
        if encoder_type not in LORA_TARGETS:
            raise ValueError(f"encoder type {encoder_type!r} is not supported; use one of {sorted(LORA_TARGETS)}.")
        if self.encoder_mode not in ENCODER_MODES:
            raise ValueError(f"encoder_mode must be one of {ENCODER_MODES}, got {self.encoder_mode!r}.")
        if self.stride not in STRIDES:
            raise ValueError(f"stride must be one of {STRIDES}, got {self.stride}.")
        if self.input_size_px < self.patch_size_px or self.input_size_px % self.patch_size_px:
            raise ValueError(
                f"input_size_px {self.input_size_px} must be a positive multiple of the encoder's "
                f"patch size {self.patch_size_px}."
            )
        if self.head_channels < 1 or self.lora_r < 1 or self.stem_channels < 0:
            raise ValueError("head_channels and lora_r must be positive, stem_channels at least 0.")
        if len(self.image_mean) != 3 or len(self.image_std) != 3 or min(self.image_std) <= 0:
            raise ValueError("image_mean and image_std need three values each, std positive.")
        if not 0 <= self.clip_low_pct < self.clip_high_pct <= 100:
            raise ValueError("clip_low_pct and clip_high_pct need 0 <= low < high <= 100.")

    @property
    def patch_size_px(self) -> int:
        patch = self.encoder_config["patch_size"]
        return patch if isinstance(patch, int) else patch[0]

    @property
    def encoder_type(self) -> str:
        return self.encoder_config["model_type"]


class HeatmapHead(nn.Module):
    """Patch features (+ a small convolutional stem on the image) -> heatmap logits.

    ViT patches are 14 px (8-16 px in general), coarser than a small nodule; the
    stem (strided 3x3 convolutions on the input image, down to the heatmap's
    stride) gives the head pixel-level detail to place a peak within its patch.
    """

    def __init__(self, in_channels: int, head_channels: int, size_hm: int, stride: int = 4,
                 stem_channels: int = 16) -> None:
        super().__init__()
        self.size_hm = size_hm
        groups = math.gcd(head_channels, 8)
        self.project = nn.Conv2d(in_channels, head_channels, kernel_size=1)
        stem = []
        for i in range(int(math.log2(stride)) if stem_channels else 0):
            stem += [nn.Conv2d(3 if i == 0 else stem_channels, stem_channels, 3, stride=2, padding=1), nn.GELU()]
        self.stem = nn.Sequential(*stem)
        self.refine = nn.Sequential(
            nn.Conv2d(head_channels + stem_channels, head_channels, kernel_size=3, padding=1),
            nn.GroupNorm(groups, head_channels),
            nn.GELU(),
            nn.Conv2d(head_channels, head_channels, kernel_size=3, padding=1),
            nn.GroupNorm(groups, head_channels),
            nn.GELU(),
        )
        self.out = nn.Conv2d(head_channels, 1, kernel_size=1)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for module in self.modules():
            if module is not self and hasattr(module, "reset_parameters"):
                module.reset_parameters()
        nn.init.constant_(self.out.bias, PRIOR_LOGIT)

    def forward(self, features: torch.Tensor, pixel_values: torch.Tensor) -> torch.Tensor:
        size = (self.size_hm, self.size_hm)
        x = F.interpolate(self.project(features), size=size, mode="bilinear", align_corners=False)
        if len(self.stem):
            detail = self.stem(pixel_values)
            if detail.shape[-2:] != size:  # input sizes not divisible by the stride
                detail = F.interpolate(detail, size=size, mode="bilinear", align_corners=False)
            x = torch.cat([x, detail], dim=1)
        return self.out(self.refine(x))


class HeatmapLocalizer(EncoderWithHead):
    """Encoder + heatmap head; `forward(pixel_values) -> logits (B, 1, S/stride, S/stride)`."""

    config_class = HeatmapLocalizerConfig
    base_model_prefix = "localizer"

    def build_head(self, config: HeatmapLocalizerConfig) -> nn.Module:
        return HeatmapHead(in_channels=self.encoder.config.hidden_size, head_channels=config.head_channels,
                           size_hm=config.input_size_px // config.stride, stride=config.stride,
                           stem_channels=config.stem_channels)

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        # The encoder initialises itself; only the head is ours.
        if isinstance(module, HeatmapHead):
            module.reset_parameters()

    def patch_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """(B, 3, S, S) -> (B, C, S/patch, S/patch) from the encoder's last hidden state."""
        grid = pixel_values.shape[-1] // self.config.patch_size_px
        # SigLIP's position embeddings are for its trained size; Dinov2 interpolates by itself.
        extra = {"interpolate_pos_encoding": True} if self.config.encoder_type == "siglip_vision_model" else {}
        hidden = self.encoder(pixel_values=pixel_values, **extra).last_hidden_state
        # Dinov2 prepends a CLS token (SigLIP none): the patch tokens are the last grid^2.
        patches = hidden[:, -grid * grid :]
        return patches.transpose(1, 2).reshape(hidden.shape[0], hidden.shape[-1], grid, grid)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        size = self.config.input_size_px
        if pixel_values.ndim != 4 or tuple(pixel_values.shape[1:]) != (3, size, size):
            raise ValueError(f"expected pixel_values of shape (B, 3, {size}, {size}), got {tuple(pixel_values.shape)}.")
        # A frozen encoder needs no activations kept for backward: much less memory.
        train_encoder = torch.is_grad_enabled() and self.config.encoder_mode != "frozen"
        with torch.set_grad_enabled(train_encoder):
            features = self.patch_features(pixel_values)
        dtype = self.head.out.weight.dtype
        return self.head(features.to(dtype), pixel_values.to(dtype))

    @classmethod
    def from_encoder(
        cls,
        encoder_id_or_path: str | Path = DEFAULT_ENCODER,
        encoder_mode: str = "frozen",
        input_size_px: int | None = None,
        stride: int = 4,
        head_channels: int = 128,
        stem_channels: int = 16,
        lora_r: int = 16,
        lora_alpha: int = 16,
        lora_dropout: float = 0.05,
        clip_pct: tuple[float, float] = (DEFAULT_CLIP_LOW_PCT, DEFAULT_CLIP_HIGH_PCT),
    ) -> HeatmapLocalizer:
        """A new localizer on pretrained encoder weights; input size defaults to the encoder's own."""
        encoder = load_pretrained_encoder(encoder_id_or_path, "--encoder")
        image_mean, image_std = image_normalisation(encoder_id_or_path)
        config = HeatmapLocalizerConfig(
            encoder_config=encoder.config,
            input_size_px=input_size_px or _image_size_px(encoder.config),
            stride=stride,
            head_channels=head_channels,
            stem_channels=stem_channels,
            encoder_mode=encoder_mode,
            lora_r=lora_r,
            lora_alpha=lora_alpha,
            lora_dropout=lora_dropout,
            image_mean=image_mean,
            image_std=image_std,
            clip_low_pct=clip_pct[0],
            clip_high_pct=clip_pct[1],
        )
        return cls(config, encoder=encoder)


def enable_activation_checkpointing(encoder: PreTrainedModel) -> None:
    """Non-reentrant checkpointing of the encoder's layers: they keep only their inputs in the forward
    pass and recompute the rest in backward.

    Non-reentrant, because the reentrant kind gives no gradient to a segment
    none of whose inputs requires one: with LoRA the patch embeddings are
    frozen, so the LoRA weights inside the layers would silently stop learning.
    """
    kwargs = {"use_reentrant": False}
    if hasattr(encoder, "activation_checkpointing_enable"):  # newer name; the old one warns there
        encoder.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        encoder.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)


def _image_size_px(encoder_config) -> int:
    size = encoder_config.image_size
    return size if isinstance(size, int) else size[0]


def image_normalisation(encoder_id_or_path: str | Path) -> tuple[list, list]:
    """(image_mean, image_std) from the checkpoint's image processor config; ImageNet's if it has none."""
    processor = load_image_processor(encoder_id_or_path)
    if processor is None:
        return list(IMAGENET_DEFAULT_MEAN), list(IMAGENET_DEFAULT_STD)
    return [float(v) for v in processor.image_mean], [float(v) for v in processor.image_std]
