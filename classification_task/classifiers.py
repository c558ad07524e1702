"""The two kinds of classifier behind one interface: which one a --model_id is, and the calls that differ.

`medgemma` (model.py): a Gemma 3 checkpoint asked a question; the two answer
letters' logits. `encoder` (encoder_model.py): a vision encoder, pooled features
and a small head. Both give (No Finding, Nodule) logits, so the loss, samplers,
Trainer, evaluation and inference are one code path; only loading, batching and
the forward pass differ, and they are chosen here.

The kind follows the checkpoint's config: `dinov2`, `siglip`, `siglip_vision_model`
and a saved encoder classifier are encoders; `gemma3` is MedGemma, unless
`--model_kind encoder` asks for its SigLIP tower instead.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Literal

from classification_task.common.hub import checkpoint_model_type
from classification_task.encoder import model as encoder_model
from classification_task import model as medgemma
from classification_task.encoder.model import CLASSIFIER_TYPE, ENCODER_TYPES, EncoderClassifier
from classification_task.evaluation.operating_point import write_operating_point

ModelKind = Literal["auto", "medgemma", "encoder"]
BEST_MODEL = "best_model"  # the encoder classifier's saved folder in --checkpoint_dir


def resolve_kind(model_id: str, requested: ModelKind = "auto") -> str:
    """"medgemma" or "encoder" for this checkpoint; a request the checkpoint cannot meet raises ValueError."""
    model_type = checkpoint_model_type(model_id, "--model_id")
    is_encoder = model_type == CLASSIFIER_TYPE or model_type in ENCODER_TYPES
    if requested == "medgemma" and model_type != "gemma3":
        raise ValueError(f"--model_kind medgemma needs a Gemma 3 checkpoint, but --model_id {model_id} is a "
                         f"{model_type!r} model; drop --model_kind or pass a MedGemma checkpoint.")
    if requested == "encoder":
        if not is_encoder:
            raise ValueError(f"--model_id {model_id} is a {model_type!r} model, not a Dinov2, SigLIP or Gemma 3 "
                             "checkpoint; pass one of those (e.g. microsoft/rad-dino) for --model_kind encoder.")
        return "encoder"
    return "encoder" if is_encoder and model_type != "gemma3" else "medgemma"


def batch_collator(model, processor):
    """Examples [{"image", "label"}] -> model inputs: the question prompt (MedGemma) or pixel values."""
    if isinstance(model, EncoderClassifier):
        return encoder_model.EncoderCollator(model.config)
    return medgemma.PromptCollator(processor)


def logits_function(model, processor):
    """(model, inputs) -> (No Finding, Nodule) logits (B, 2), for the Trainer's loss and evaluation."""
    if isinstance(model, EncoderClassifier):
        return encoder_model.encoder_logits
    return partial(medgemma.answer_logits, answer_ids=medgemma.answer_token_ids(processor.tokenizer))


def score_batches(model, processor, dataset, batch_size: int = 4, num_workers: int = 0, desc: str = "scoring"):
    """Per batch of `dataset`: (file_names, p_nodule, skipped (file_name, error) pairs), for either kind."""
    if isinstance(model, EncoderClassifier):
        return encoder_model.score_batches(model, dataset, batch_size, num_workers, desc)
    return medgemma.score_batches(model, processor, dataset, batch_size, num_workers, desc)


# ----------------------------------------------------------------------------- training and saving


def load_encoder_classifier(config) -> EncoderClassifier:
    """train.py's encoder classifier: a saved best_model folder (--eval_only), else a fresh head on the encoder."""
    if config.eval_only:
        return encoder_model.load_classifier(config.model_id)
    return encoder_model.new_classifier(config.model_id, config.encoder_mode, config.image_size_px,
                                        config.lora_r, config.lora_alpha, config.lora_dropout)


def save_best(trainer, checkpoint_dir: str | Path) -> tuple[Path, str]:
    """The trained model the Trainer holds (the best checkpoint's): MedGemma's LoRA adapter as
    `best_adapter/`, the encoder classifier as `best_model/`; returns (folder, what it holds)."""
    if not isinstance(trainer.model, EncoderClassifier):
        folder = Path(checkpoint_dir) / "best_adapter"
        trainer.save_model(str(folder))
        return folder, "adapter"
    folder = Path(checkpoint_dir) / BEST_MODEL
    if trainer.is_world_process_zero():
        encoder_model.save_classifier(trainer.model, folder)
    return folder, "classifier (head + merged encoder)"


def save_operating_point(model, config, thresholds: dict[str, float]) -> None:
    """The encoder classifier's pre-processing and validation-tuned thresholds, into its best_model folder."""
    if not isinstance(model, EncoderClassifier):
        return
    record = {
        "model_kind": "encoder", "base_model": config.model_id, "quantization": "none",
        "preprocessing": {"clip_low_pct": config.clip_low_pct, "clip_high_pct": config.clip_high_pct,
                          "image_size_px": model.config.input_size_px},
        "thresholds": thresholds, "default_threshold": "max_f1",
    }
    write_operating_point(Path(config.checkpoint_dir) / BEST_MODEL, record)
