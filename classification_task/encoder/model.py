"""The encoder classifier: a radiograph vision encoder, pooled features, a small head, two logits.

    pixel_values (B, 3, S, S) -> encoder tokens (B, T, C) -> pooled (B, C or 2C)
        -> LayerNorm -> Linear -> logits (B, 2) in the order (No Finding, Nodule)

The logits come in the order of MedGemma's answer letters, so the same loss,
samplers, Trainer, metrics, thresholds and scoring serve both classifiers.
Encoders, told apart by their config's `model_type`: Dinov2 (`microsoft/rad-dino`,
a ViT-B/14 trained on radiographs; pooled as CLS + mean of the patch tokens),
SigLIP vision checkpoints (`google/medsiglip-448`; mean of the tokens) and the
SigLIP tower of a Gemma 3 checkpoint (MedGemma's own). The encoder is frozen,
adapted with LoRA on its attention projections, or trained in full.

During training, `EncoderClassifier` is a transformers `PreTrainedModel`, so
Trainer checkpoints are config.json + model.safetensors and resume as usual.
The finished model is saved by `save_classifier` as a folder:

    config.json            this classifier (model_type nodule_encoder_classifier)
    head.safetensors       the head's weights
    encoder/               the encoder with LoRA merged: a standard transformers
                           checkpoint (+ its image processor config), which
                           `localization_task/train.py --encoder` can start from
    operating_point.json   pre-processing and thresholds (run_files.write_operating_point)

`load_classifier` reads it back without unpickling anything.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from peft.tuners.lora import LoraLayer
from PIL import Image
from safetensors.torch import load_file, save_file
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm
from transformers import AutoModel, PretrainedConfig, PreTrainedModel
from transformers.image_utils import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

from classification_task.common.encoder_model import ENCODER_MODES, LORA_TARGETS, EncoderWithHead, build_encoder
from classification_task.common.hub import explained_load_errors, load_image_processor, load_pretrained_encoder
from classification_task.model import compute_dtype, filled_up, p_nodule_from_logits, row_by_row_product

CLASSIFIER_TYPE = "nodule_encoder_classifier"
# Config model_type of a checkpoint -> the encoder type kept (a Gemma 3 checkpoint gives its SigLIP tower).
ENCODER_TYPES = {"dinov2": "dinov2", "siglip": "siglip_vision_model", "siglip_vision_model": "siglip_vision_model",
                 "gemma3": "siglip_vision_model"}
HEAD_FILE = "head.safetensors"
ENCODER_FOLDER = "encoder"


class EncoderClassifierConfig(PretrainedConfig):
    """Everything needed to rebuild an `EncoderClassifier` (the encoder's own config included)."""

    model_type = CLASSIFIER_TYPE

    encoder_config: dict | None = None
    input_size_px: int = 518
    encoder_mode: str = "lora"
    lora_r: int = 16
    lora_alpha: int = 16
    lora_dropout: float = 0.05
    image_mean: list[float] | None = None  # None: ImageNet's
    image_std: list[float] | None = None

    def __post_init__(self, **kwargs) -> None:
        if isinstance(self.encoder_config, PretrainedConfig):
            self.encoder_config = self.encoder_config.to_dict()
        self.image_mean = list(self.image_mean or IMAGENET_DEFAULT_MEAN)
        self.image_std = list(self.image_std or IMAGENET_DEFAULT_STD)
        self._validate()
        super().__post_init__(**kwargs)

    def _validate(self) -> None:
        if not self.encoder_config or self.encoder_type not in LORA_TARGETS:
            raise ValueError(f"encoder type {self.encoder_type!r} is not supported; use one of {sorted(LORA_TARGETS)}.")
        if self.encoder_mode not in ENCODER_MODES:
            raise ValueError(f"--encoder_mode must be one of {', '.join(ENCODER_MODES)}, got {self.encoder_mode!r}.")
        patch = self.patch_size_px
        if self.input_size_px < patch or self.input_size_px % patch:
            raise ValueError(f"--image_size_px {self.input_size_px} must be a positive multiple of the encoder's "
                             f"patch size {patch}.")
        if self.lora_r < 1 or len(self.image_mean) != 3 or len(self.image_std) != 3 or min(self.image_std) <= 0:
            raise ValueError("lora_r must be positive; image_mean and image_std need three values, std positive.")

    @property
    def encoder_type(self) -> str | None:
        return (self.encoder_config or {}).get("model_type")

    @property
    def patch_size_px(self) -> int:
        patch = self.encoder_config["patch_size"]
        return patch if isinstance(patch, int) else patch[0]


class RowByRowLinear(nn.Linear):
    """nn.Linear (same parameters, same saved names) whose outputs are each summed on their own, so a
    row's logits do not depend on its position in the batch (see `model.row_by_row_product`)."""

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        return row_by_row_product(inputs, self.weight) + self.bias


class EncoderClassifier(EncoderWithHead):
    """Encoder + head; `forward(pixel_values) -> logits (B, 2)`, float32, (No Finding, Nodule)."""

    config_class = EncoderClassifierConfig
    base_model_prefix = "classifier"
    supports_gradient_checkpointing = True

    def build_head(self, config: EncoderClassifierConfig) -> nn.Module:
        width = self.encoder.config.hidden_size * (2 if config.encoder_type == "dinov2" else 1)
        return nn.Sequential(nn.LayerNorm(width), RowByRowLinear(width, 2))

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        # The encoder initialises itself (or comes pretrained); only the head is ours.
        if module is self.head:
            for layer in module:
                layer.reset_parameters()

    def pooled_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Dinov2: its CLS token next to the mean patch token (as Dinov2ForImageClassification);
        SigLIP (no CLS token): the mean token."""
        if self.config.encoder_type == "dinov2":
            hidden = self.encoder(pixel_values=pixel_values).last_hidden_state
            return torch.cat([hidden[:, 0], hidden[:, 1:].mean(dim=1)], dim=-1)
        # SigLIP's position embeddings are for its own size; another --image_size_px interpolates them.
        hidden = self.encoder(pixel_values=pixel_values, interpolate_pos_encoding=True).last_hidden_state
        return hidden.mean(dim=1)

    def forward(self, pixel_values: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        size = self.config.input_size_px
        if pixel_values.ndim != 4 or tuple(pixel_values.shape[1:]) != (3, size, size):
            raise ValueError(f"expected pixel_values of shape (B, 3, {size}, {size}), got {tuple(pixel_values.shape)}.")
        dtype = next(self.encoder.parameters()).dtype
        # A frozen encoder keeps no activations for backward: much less memory.
        with torch.set_grad_enabled(torch.is_grad_enabled() and self.config.encoder_mode != "frozen"):
            features = self.pooled_features(pixel_values.to(dtype))
        # The head in float32: bf16 logits would round p(nodule) (a step of 0.125 near 20).
        with torch.autocast(device_type=features.device.type, enabled=False):
            return self.head(features.float())


# ----------------------------------------------------------------------------- loading a pretrained encoder


def encoder_input_size_px(encoder: PreTrainedModel) -> int:
    size = encoder.config.image_size
    return size if isinstance(size, int) else size[0]


def new_classifier(model_id: str, encoder_mode: str = "lora", input_size_px: int | None = None,
                   lora_r: int = 16, lora_alpha: int = 16, lora_dropout: float = 0.05) -> EncoderClassifier:
    """A classifier on pretrained encoder weights with a fresh head; input size defaults to the encoder's own."""
    encoder = load_pretrained_encoder(model_id, "--model_id")
    processor = load_image_processor(model_id)
    config = EncoderClassifierConfig(
        encoder_config=encoder.config, input_size_px=input_size_px or encoder_input_size_px(encoder),
        encoder_mode=encoder_mode, lora_r=lora_r, lora_alpha=lora_alpha, lora_dropout=lora_dropout,
        image_mean=getattr(processor, "image_mean", None), image_std=getattr(processor, "image_std", None))
    model = EncoderClassifier(config, encoder=encoder)
    model.source_processor = processor  # saved beside the encoder, so that its mean and std travel with it
    return model


# ----------------------------------------------------------------------------- the saved folder


def merged_encoder(model: EncoderClassifier) -> PreTrainedModel:
    """A copy of the encoder with its LoRA update merged into the base weights (the model itself is left as is)."""
    encoder = copy.deepcopy(model.encoder).float()
    lora_layers = [module for module in encoder.modules() if isinstance(module, LoraLayer)]
    if not lora_layers:
        return encoder
    for module in lora_layers:
        module.merge()
    state = {name.replace(".base_layer.", "."): value for name, value in encoder.state_dict().items()
             if "lora_" not in name}
    plain = build_encoder(model.config.encoder_config)
    plain.load_state_dict(state, strict=True)
    return plain


def save_classifier(model: EncoderClassifier, folder: str | Path) -> Path:
    """The finished classifier as a folder (see the module docstring), safetensors only; written into a
    temporary sibling and swapped in, so that a crash never leaves half a model folder."""
    folder = Path(folder)
    tmp, old = (folder.with_name(f".{folder.name}.{part}-{os.getpid()}") for part in ("tmp", "old"))
    shutil.rmtree(tmp, ignore_errors=True)
    encoder = merged_encoder(model)
    encoder.save_pretrained(tmp / ENCODER_FOLDER)
    processor = getattr(model, "source_processor", None)
    if processor is not None:
        processor.save_pretrained(tmp / ENCODER_FOLDER)
    save_file({k: v.detach().float().cpu().contiguous() for k, v in model.head.state_dict().items()},
              tmp / HEAD_FILE)
    config = model.config.to_dict() | {"encoder_config": encoder.config.to_dict()}
    (tmp / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    if folder.exists():
        folder.replace(old)
    tmp.replace(folder)
    shutil.rmtree(old, ignore_errors=True)
    return folder


def is_saved_classifier(folder: str | Path) -> bool:
    return (Path(folder) / HEAD_FILE).is_file() and (Path(folder) / ENCODER_FOLDER / "config.json").is_file()


def load_classifier(folder: str | Path, dtype: torch.dtype | None = None) -> EncoderClassifier:
    """A folder written by `save_classifier`, for scoring: bf16 encoder on a GPU, float32 head."""
    folder = Path(folder)
    if not is_saved_classifier(folder):
        raise ValueError(f"{folder} holds no trained encoder classifier (no {HEAD_FILE} and {ENCODER_FOLDER}/); "
                         "pass the best_model folder that train.py saved.")
    settings = json.loads((folder / "config.json").read_text())
    settings = {k: v for k, v in settings.items() if k in EncoderClassifierConfig.__annotations__}
    config = EncoderClassifierConfig(**(settings | {"encoder_mode": "frozen"}))  # LoRA is merged already
    with explained_load_errors(folder / ENCODER_FOLDER, "--model_id"):
        encoder = AutoModel.from_pretrained(folder / ENCODER_FOLDER, dtype=dtype or compute_dtype())
    model = EncoderClassifier(config, encoder=encoder)
    model.head.load_state_dict(load_file(folder / HEAD_FILE))
    device = "cuda" if torch.cuda.is_available() else "cpu"
    return model.to(device).eval()


# ----------------------------------------------------------------------------- inputs and scoring


class EncoderCollator:
    """[{"image" (PIL RGB), "label"?}] -> {"pixel_values" (B, 3, S, S), "labels"?}: resized (bilinear,
    when the dataset has not done so already) and normalised with the encoder's mean and std."""

    def __init__(self, config: EncoderClassifierConfig):
        self.size_px = config.input_size_px
        self.mean = np.asarray(config.image_mean, dtype=np.float32).reshape(3, 1, 1)
        self.std = np.asarray(config.image_std, dtype=np.float32).reshape(3, 1, 1)

    def pixels(self, image: Image.Image) -> np.ndarray:
        if image.size != (self.size_px, self.size_px):
            image = image.resize((self.size_px, self.size_px), Image.Resampling.BILINEAR)
        array = np.asarray(image.convert("RGB"), dtype=np.float32).transpose(2, 0, 1) / 255.0
        return (array - self.mean) / self.std

    def __call__(self, examples: list[dict]) -> dict:
        batch = {"pixel_values": torch.from_numpy(np.stack([self.pixels(item["image"]) for item in examples]))}
        if "label" in examples[0]:
            batch["labels"] = torch.tensor([item["label"] for item in examples], dtype=torch.long)
        return batch


def encoder_logits(model, inputs: dict, answer_ids=None) -> torch.Tensor:
    """(No Finding, Nodule) logits, float32, (B, 2): the encoder's counterpart of `model.answer_logits`."""
    return model(pixel_values=inputs["pixel_values"])


class EncoderScoringCollator:
    """EncoderCollator over the readable images of a batch; unreadable ones are passed on as skipped.

    A batch with fewer than `batch_size` readable images is filled up to that size, as MedGemma's
    (see `model.filled_up`), so that a score does not depend on the batch the image falls in.
    """

    def __init__(self, config: EncoderClassifierConfig, batch_size: int | None = None):
        self.inputs = EncoderCollator(config)
        self.batch_size = batch_size

    def __call__(self, items: list[dict]) -> dict:
        readable = [item for item in items if item["image"] is not None]
        images = filled_up([item["image"] for item in readable], self.batch_size)
        return {
            "inputs": self.inputs([{"image": image} for image in images]) if images else None,
            "file_names": [item.get("file_name") for item in readable],
            "skipped": [(item["file_name"], item["error"]) for item in items if item["image"] is None],
        }


@torch.no_grad()
def score_batches(model: EncoderClassifier, dataset: Dataset, batch_size: int = 8, num_workers: int = 0,
                  desc: str = "scoring") -> Iterator[tuple[list, np.ndarray, list[tuple[str, str]]]]:
    """Per batch of `dataset`, in order: (file_names, p_nodule, skipped (file_name, error) pairs).

    Every forward pass holds `batch_size` images (see EncoderScoringCollator), so a score depends
    on the image, the model and `batch_size`, not on the other images.
    """
    model.eval()
    loader = DataLoader(dataset, batch_size=batch_size,
                        collate_fn=EncoderScoringCollator(model.config, batch_size), num_workers=num_workers)
    device = next(model.parameters()).device
    with tqdm(total=len(dataset), desc=desc, unit="img") as progress:
        for batch in loader:
            n_scored, p_nodule = len(batch["file_names"]), np.zeros(0)
            if batch["inputs"] is not None:
                logits = encoder_logits(model, {k: v.to(device) for k, v in batch["inputs"].items()})
                p_nodule = p_nodule_from_logits(logits.cpu())[:n_scored]
            progress.update(n_scored + len(batch["skipped"]))
            yield batch["file_names"], p_nodule, batch["skipped"]
