"""Fine-tune MedGemma 1.5 4B with QLoRA as a nodule / no-nodule classifier.

    python classification_task/train.py                     # reference recipe on data/nodulocc (24 GB GPU)
    python classification_task/train.py --demo              # synthetic data + tiny model, CPU, minutes
    accelerate launch --num_processes 2 classification_task/train.py   # data-parallel, one GPU each
    python classification_task/train.py --eval_only --adapter checkpoints/classification/best_adapter
    python classification_task/train.py --model_id microsoft/rad-dino --encoder_mode full --learning_rate 2e-5
    python classification_task/train.py --demo --model_kind encoder    # tiny Dinov2 classifier, CPU, minutes

The model reads a multiple-choice question about the radiograph; p(nodule) is
the softmax over the two answer-letter logits. Loss: class-weighted CE on those
logits. Each epoch (--sampler balanced, the default): all positives + the next
chunk of negatives; --sampler weighted and random are the alternatives (see --help).
A --model_id that is a vision encoder (Dinov2, SigLIP; a Gemma 3 checkpoint with
--model_kind encoder) trains the encoder classifier instead (encoder/model.py):
pooled features -> a small head -> the same two logits, the same loss, Trainer and
evaluation; the result is saved as <checkpoint_dir>/best_model.

best_adapter/ also gets operating_point.json: base model, quantization, pre-processing and
the thresholds tuned on validation, which inference.py then defaults to.
"""

from __future__ import annotations

import classification_task  # noqa: F401  first: its __init__ quiets a bitsandbytes import warning

import sys
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Literal

import pandas as pd
import torch
from transformers import TrainingArguments, set_seed

from classification_task.common import cli, training
from classification_task.common.training import USER_ERRORS, RunStart

from classification_task import classifiers

from classification_task.evaluation import operating_point
from classification_task.evaluation.operating_point import OPERATING_POINT_JSON, write_operating_point
from classification_task.dataset import DataError, Preprocessing, RadiographDataset, load_image, load_labels
from classification_task.split import SPLIT_CSV, SPLITS, keep_run_split, load_or_make_split, split_table
from classification_task.demo.preset import demo_defaults, prepare_demo
from classification_task.evaluate import EvaluationSettings, evaluate_run
from classification_task.model import (
    MEDGEMMA_ID,
    add_lora,
    answer_token_ids,
    load_base_model,
    load_processor,
    load_with_adapter,
    lora_config,
)
from classification_task.common.processes import Processes
from classification_task.common.run_files import (
    RUN_CONFIG_JSON, check_run_flags, max_unreadable_frac_flag, overwrite_flag, resume_flag,
)
from classification_task.trainer import NoduleTrainer, ReadableBatchCollator, best_checkpoint, compute_metrics
from classification_task.common.unreadable import UnreadableImages

# What a run leaves in its output folder (its checkpoint folder: run_files.CHECKPOINT_FOLDERS).
RESULT_FILES = (RUN_CONFIG_JSON, OPERATING_POINT_JSON, "metrics.json", "test_predictions.csv", "val_predictions.csv",
                "test_labels.csv", "unreadable_files.csv", "roc.png", "pr.png", "reliability.png",
                "training_curves.png")
METRICS_FOR_BEST = ("pr_auc", "roc_auc", "f1", "f_beta", "balanced_accuracy", "mcc", "loss")


@dataclass
class TrainConfig:
    data_root: str = cli.arg("data/nodulocc", "folder with classification_labels.csv and the image folders")
    model_id: str = cli.arg(MEDGEMMA_ID, "hub id or local folder: a Gemma 3 / MedGemma checkpoint, or a vision "
                                         "encoder (Dinov2 such as microsoft/rad-dino, SigLIP) for the encoder "
                                         "classifier; with --eval_only also a best_model folder")
    model_kind: classifiers.ModelKind = cli.arg(
        "auto", "auto: from the checkpoint's config (dinov2/siglip -> encoder, gemma3 -> medgemma); encoder on "
        "a Gemma 3 checkpoint trains a head on its SigLIP tower")
    encoder_mode: Literal["frozen", "lora", "full"] = cli.arg(
        "lora", "encoder classifier: frozen encoder (head only), LoRA on its attention projections (--lora_r), or "
        "full fine-tuning (use a lower --learning_rate, e.g. 2e-5)")
    output_dir: str = cli.arg("outputs/classification", "metrics, predictions, split, config and plots")
    checkpoint_dir: str = cli.arg("checkpoints/classification", "trainer checkpoints and best_adapter/ "
                                                                "(best_model/ for the encoder classifier)")
    split_file: str | None = cli.arg(None, "reuse a split.csv (file_name,split) instead of making one; "
                                           "--resume always keeps the run's own split.csv")
    seed: int = cli.arg(42, "seed for the split, the sampler and training")
    quantization: Literal["nf4", "none"] = cli.arg("nf4", "nf4 = QLoRA (4-bit base); none = plain LoRA")
    lora_r: int = cli.arg(16, "LoRA rank")
    lora_alpha: int = cli.arg(16, "LoRA alpha")
    lora_dropout: float = cli.arg(0.05, "LoRA dropout")
    pos_weight: float = cli.arg(20.0, "class weight of Nodule in the loss (No Finding = 1); with --sampler "
                                      "balanced or weighted the batches are balanced already and a weight > 1 "
                                      "over-corrects: set 1 (the reference recipe uses 20 with balanced)")
    focal_gamma: float = cli.arg(0.0, "focal loss gamma; 0 = plain weighted cross-entropy")
    sampler: Literal["balanced", "weighted", "random"] = cli.arg(
        "balanced", "balanced: each epoch every positive plus the next slice of negatives (all negatives "
        "seen over the epochs; prefer it with rare positives); weighted: torch WeightedRandomSampler by "
        "inverse class frequency, ~50/50 batches drawn with replacement, epochs as long as the data; "
        "random: plain shuffling at the natural prevalence, pair it with --pos_weight. A balancing "
        "sampler (balanced, weighted) with --pos_weight > 1 over-corrects: set --pos_weight 1. Seeded "
        "from --seed and the epoch")
    batch_size: int = cli.arg(4, "images per device per step")
    grad_accum: int = cli.arg(4, "gradient accumulation steps (effective batch = batch_size x grad_accum x GPUs)")
    eval_batch_size: int = cli.arg(8, "images per device when scoring")
    learning_rate: float = cli.arg(2e-4, "peak learning rate (AdamW)")
    warmup_ratio: float = cli.arg(0.03, "fraction of steps of linear warm-up, then linear decay")
    max_grad_norm: float = cli.arg(0.3, "gradient clipping norm")
    max_steps: int = cli.arg(4400, "optimizer steps")
    eval_steps: int = cli.arg(400, "evaluate on validation (and checkpoint) every N steps")
    logging_steps: int = cli.arg(10, "log the training loss every N steps")
    save_total_limit: int = cli.arg(3, "checkpoints kept (the best one is always kept)")
    metric_for_best: str = cli.arg("pr_auc", "validation metric that picks the best checkpoint: "
                                             f"{', '.join(METRICS_FOR_BEST)}")
    f_beta: float = cli.arg(1.0, "beta of an F-beta score added to the tables, metrics.json and the "
                                 "--metric_for_best choices (2 favours recall, 0.5 precision); 1 = F1 alone")
    early_stopping_patience: int | None = cli.arg(None, "stop after N evaluations without improvement")
    gradient_checkpointing: bool = cli.arg(True, "trade compute for memory (non-reentrant; the encoder "
                                                 "classifier only on a GPU)")
    clip_low_pct: float = cli.arg(0.5, "lower percentile of the per-image contrast stretch")
    clip_high_pct: float = cli.arg(99.5, "upper percentile of the per-image contrast stretch")
    image_size_px: int | None = cli.arg(None, "resize before the processor (default: the processor's own "
                                              "size); the encoder classifier's input size (default: the "
                                              "encoder's own, 518 for RAD-DINO)")
    cache_dir: str | None = cli.arg(None, "cache pre-processed images here (speeds up later epochs)")
    num_workers: int = cli.arg(2, "data-loading worker processes")
    max_unreadable_frac: float = max_unreadable_frac_flag()
    bootstrap: int = cli.arg(1000, "bootstrap resamples for test confidence intervals (0 = none)")
    resume: str | None = resume_flag()
    overwrite: bool = overwrite_flag()
    eval_only: bool = cli.arg(False, "skip training: evaluate --adapter (or the zero-shot base) on val/test")
    adapter: str | None = cli.arg(None, "adapter folder for --eval_only")
    zero_shot: bool = cli.arg(True, "also score the base model without adapter, side by side")
    demo: bool = cli.arg(False, "make synthetic data and a tiny model if missing, and train on the CPU")

    def __post_init__(self) -> None:
        if self.metric_for_best not in METRICS_FOR_BEST:
            raise ValueError(f"--metric_for_best must be one of {', '.join(METRICS_FOR_BEST)}.")
        if not 0 < self.f_beta < float("inf"):
            raise ValueError(f"--f_beta must be a positive number, got {self.f_beta}.")
        for name in ("batch_size", "grad_accum", "eval_batch_size", "max_steps", "eval_steps", "lora_r"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name} must be at least 1.")
        if not 0 < self.learning_rate < 1:
            raise ValueError("--learning_rate must lie in (0, 1).")
        if self.pos_weight <= 0 or self.focal_gamma < 0:
            raise ValueError("--pos_weight must be positive and --focal_gamma non-negative.")
        check_run_flags(self)
        Preprocessing(self.clip_low_pct, self.clip_high_pct)  # validates the percentiles

    @property
    def beta(self) -> float | None:
        """The F-beta's beta, or None when F1 says it all and no checkpoint is picked by f_beta."""
        return None if self.f_beta == 1 and self.metric_for_best != "f_beta" else self.f_beta

    @property
    def preprocessing(self) -> Preprocessing:
        return Preprocessing(self.clip_low_pct, self.clip_high_pct, self.image_size_px)


def load_data(config: TrainConfig, resume_from: str | None) -> pd.DataFrame:
    """The labelled images with a `split` column (train/val/test); nothing is written yet.

    --resume keeps the split in the run's split.csv (see split.keep_run_split);
    otherwise --split_file or a fresh seeded split.
    """
    labels, run_split = load_labels(config.data_root), Path(config.output_dir) / SPLIT_CSV
    if config.resume and run_split.is_file():
        frame = keep_run_split(labels, run_split, config.split_file)
    elif resume_from is not None and config.split_file is None:
        raise DataError(f"{run_split} not found: a resumed run reuses the split it started with; pass the "
                        "--output_dir of the run being resumed, or its split.csv as --split_file.")
    else:
        frame = load_or_make_split(labels, config.split_file, config.seed)
    counts = ", ".join(f"{name} {len(part)} ({int(part['label'].sum())} nodule)"
                       for name, part in split_frames(frame).items())
    print(f"split by patient: {counts}")
    return frame


def split_frames(frame: pd.DataFrame) -> dict[str, pd.DataFrame]:
    return {name: frame[frame["split"] == name].reset_index(drop=True) for name in SPLITS}


def load_model(config: TrainConfig):
    """The processor (MedGemma's; None for the encoder classifier) and the model to train (base + fresh
    LoRA) or, with --eval_only, to score (base + --adapter); for the encoder classifier, encoder + fresh
    head, or a saved best_model folder."""
    config.model_kind = classifiers.resolve_kind(config.model_id, config.model_kind)
    processor = load_processor(config.model_id) if config.model_kind == "medgemma" else None
    if processor is not None:
        answer_token_ids(processor.tokenizer)  # fail early if the answer letters are not single tokens
    if config.model_kind == "encoder":
        set_seed(config.seed)  # the head and the LoRA A matrices are drawn here
        model = classifiers.load_encoder_classifier(config)
        config.image_size_px = model.config.input_size_px  # resolved: the images are resized to it
        return processor, model
    if config.eval_only:
        return processor, load_with_adapter(config.model_id, config.adapter, config.quantization)
    set_seed(config.seed)  # the LoRA A matrices are drawn here, before the Trainer seeds anything
    model = load_base_model(config.model_id, config.quantization)
    return processor, add_lora(model, lora_config(config.lora_r, config.lora_alpha, config.lora_dropout))


def launch(config: TrainConfig) -> tuple[TrainingArguments | None, Processes]:
    """The Trainer's arguments (None with --eval_only) and the launcher's processes, which they join."""
    if config.eval_only:  # no Trainer: a gloo group of the launcher's processes is all they share
        return None, Processes.join()
    args = training_arguments(config)  # joins the launcher's process group, if any
    return args, Processes.current()


def training_arguments(config: TrainConfig) -> TrainingArguments:
    return training.trainer_arguments(
        config,
        max_grad_norm=config.max_grad_norm,
        activation_checkpointing=config.gradient_checkpointing,  # the model kind may narrow it: build_trainer
        activation_checkpointing_kwargs={"use_reentrant": False},
        ddp_find_unused_parameters=False,
    )


def build_trainer(config: TrainConfig, args: TrainingArguments, model, processor, frames: dict,
                  unreadable: UnreadableImages) -> NoduleTrainer:
    prep = config.preprocessing
    # Decided here, once the model kind is known: the encoder classifier fits a GPU's memory easily at
    # 518 px, and on a CPU memory is no concern.
    args.activation_checkpointing = config.gradient_checkpointing and (
        config.model_kind != "encoder" or torch.cuda.is_available())
    return NoduleTrainer(
        model=model,
        args=args,
        train_dataset=RadiographDataset(frames["train"], prep, config.cache_dir),
        eval_dataset=RadiographDataset(frames["val"], prep, config.cache_dir),
        data_collator=ReadableBatchCollator(processor, classifiers.batch_collator(model, processor)),
        compute_metrics=partial(compute_metrics, beta=config.beta),
        callbacks=training.trainer_callbacks(config),
        answer_ids=answer_token_ids(processor.tokenizer) if processor is not None else None,
        logits_fn=classifiers.logits_function(model, processor),
        pos_weight=config.pos_weight,
        focal_gamma=config.focal_gamma,
        sampler=config.sampler,
        sampler_seed=config.seed,
        unreadable=unreadable,
    )


def train(config: TrainConfig, args: TrainingArguments, model, processor, frames: dict, resume_from: str | None,
          unreadable: UnreadableImages):
    trainer = build_trainer(config, args, model, processor, frames, unreadable)
    try:
        trainer.train(resume_from_checkpoint=resume_from)
    except USER_ERRORS:
        close_progress_bars(trainer)
        raise
    # The best checkpoint (load_best_model_at_end): MedGemma's adapter, or the whole encoder classifier.
    best_adapter, what = classifiers.save_best(trainer, config.checkpoint_dir)
    best = best_checkpoint(trainer.state, config.metric_for_best)
    if best["step"] is None:  # e.g. an AUC that stayed undefined on a one-class validation split
        print(f"no best checkpoint (validation {best['metric']} never defined): the last {what} is "
              f"saved to {best_adapter}")
    else:
        print(f"best checkpoint: step {best['step']}, validation {best['metric']} {best['value']:.4f}; "
              f"its {what} is saved to {best_adapter}")
    return trainer


def close_progress_bars(trainer) -> None:
    """Before an error is printed: a bar closed later would print itself after the error line."""
    for callback in trainer.callback_handler.callbacks:
        for bar in (getattr(callback, "training_bar", None), getattr(callback, "prediction_bar", None)):
            if bar is not None:
                bar.close()


def prepare_run(config: TrainConfig, processes: Processes) -> RunStart:
    """Check the folders in every process, find the resume point, and make the demo's data and model.

    Every process looks for an earlier run before any writes (the barrier in
    `first_does`, `record_run` later): a process that wrote first would make the
    others find its files and refuse their own run.
    """
    start = training.start_run(config, RESULT_FILES, train=not config.eval_only)
    if config.demo:
        processes.first_does(lambda: prepare_demo(config))
    return start


def unreadable_images(config: TrainConfig, frame: pd.DataFrame, first: bool) -> UnreadableImages:
    """The run's unreadable images, counted against --max_unreadable_frac of the images it reads;
    a resumed run starts from the list it had, less the files that read now."""
    frames = split_frames(frame)
    n_read = len(frame) if not config.eval_only else len(frames["val"]) + len(frames["test"])
    unreadable = UnreadableImages(config.output_dir, n_read, config.max_unreadable_frac, write=first)
    if config.resume:
        unreadable.carry_over(dict(zip(frame["file_name"], frame["path"])), load_image)
    return unreadable


def record_operating_point(config: TrainConfig, model, report: dict) -> None:
    """The set-up and the thresholds just tuned on validation, beside the adapter they belong to
    (after training) or, with --eval_only --adapter, in the output folder: inference.py defaults to them.
    An encoder classifier's go into its best_model folder."""
    if config.model_kind == "encoder":
        if not config.eval_only:
            classifiers.save_operating_point(model, config, report["thresholds"])
        return
    if config.eval_only and config.adapter is None:
        return  # the zero-shot base: no adapter to carry them
    folder = Path(config.output_dir) if config.eval_only else Path(config.checkpoint_dir) / "best_adapter"
    record = operating_point.training_record(config.model_id, config.quantization, config.preprocessing,
                                             report["thresholds"], report["n_val"])
    write_operating_point(folder, record)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    config = cli.parse(TrainConfig, __doc__, argv, demo_defaults=demo_defaults(argv))
    if config is None:
        return 2
    try:
        args, processes = launch(config)
        start = prepare_run(config, processes)
        frame = load_data(config, start.resume_from)
        processor, model = load_model(config)
        # The inputs hold: process 0 alone replaces an earlier run (--overwrite) and records this one.
        processes.first_does(lambda: training.record_run(config, start.earlier, split_table(frame)))
        if config.eval_only and not processes.is_first:
            return 0  # the evaluation runs in one process
        frames, trainer = split_frames(frame), None
        unreadable = unreadable_images(config, frame, processes.is_first)
        if not config.eval_only:
            trainer = train(config, args, model, processor, frames, start.resume_from, unreadable)
            if not trainer.is_world_process_zero():
                return 0
            model = trainer.model
        report = evaluate_run(model, processor, frames, EvaluationSettings.for_run(config, trainer), unreadable)
        record_operating_point(config, model, report)
        unreadable.save()
    except USER_ERRORS as err:
        return training.user_error(err)
    return training.finish(unreadable, config.output_dir)


if __name__ == "__main__":
    sys.exit(main())
