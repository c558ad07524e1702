"""Train the heatmap nodule localizer: a radiograph encoder, a Gaussian-heatmap head, image labels too.

    python localization_task/train.py                        # microsoft/rad-dino on data/nodulocc (GPU)
    python localization_task/train.py --demo                 # synthetic data + tiny encoder, CPU, minutes
    python localization_task/train.py --encoder google/medgemma-1.5-4b-it --encoder_mode lora
    accelerate launch --num_processes 2 localization_task/train.py   # data-parallel, one GPU each

Keypointed images learn a Gaussian per nodule centre (penalty-reduced focal
loss); `No Finding` images learn an empty heatmap; nodule images without
keypoints learn, through the maximum of their heatmap, that a nodule is
somewhere (multiple-instance loss, `--weak_weight`). Each epoch: every
keypointed image plus rotating slices of weak positives and negatives. The
best checkpoint by validation F1 is kept; the peak confidence thresholds are
tuned on every validation image and applied unchanged to the test split, whose
predictions are written at the count-accuracy threshold (`--operating_point`).
A run's split is decided once (`--resume` reuses its split.csv); `--split_file`
trains on another run's split, e.g. the classifier's, and `--gate_csv` then
reports the localization gated by that classifier on the shared test images.
Its FROC curve (froc.png) and overlays of a few test images (overlays/,
`--n_overlays`) are written beside its metrics.
"""

from __future__ import annotations

import localization_task  # noqa: F401  first: its __init__ quiets a bitsandbytes import warning

import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import pandas as pd
import torch
from transformers import TrainingArguments, set_seed

from localization_task.common import cli, training
from localization_task.common.training import USER_ERRORS
from localization_task.demo.preset import DEMO_DEFAULTS, prepare_demo
from localization_task.heatmap.augment import train_augmentation
from localization_task.dataset import (
    DEFAULT_CLIP_HIGH_PCT, DEFAULT_CLIP_LOW_PCT, LOCALIZATION_CSV, check_keypoints_inside,
    load_localization_data, read_grey,
)
from localization_task.evaluation.inputs import read_gate_csv
from localization_task.common.processes import process_device
from localization_task.heatmap.targets import sigma_hm_from_frac
from localization_task.heatmap.model import DEFAULT_ENCODER, HeatmapLocalizer, enable_activation_checkpointing
from localization_task.heatmap.evaluate import predict_split, report_test
from localization_task.common.run_files import (
    RUN_CONFIG_JSON, check_run_flags, max_unreadable_frac_flag, overwrite_flag, resume_flag, write_csv_atomic,
)
from localization_task.evaluation.plots import FROC_PNG, OVERLAY_DIR
from localization_task.evaluation.predictions import PREDICTIONS_JSONL, RESULTS_CSV
from localization_task.split import (
    KIND_NAMES, image_kinds, read_split_file, split_by_patient, widen_validation,
)
from localization_task.heatmap.trainer import HeatmapTrainer, metrics_function
from localization_task.common.split_file import SPLIT_CSV, SPLITS, split_table
from localization_task.common.unreadable import UnreadableImages
from localization_task.heatmap.data import HeatmapDataset, ItemSettings, collate, evaluation_rows

METRICS_FOR_BEST = ("f1_tolerant", "f1_tight", "count_accuracy", "loss")
# What a training run leaves in its output folder (its checkpoint folder: run_files.CHECKPOINT_FOLDERS).
RESULT_FILES = (RUN_CONFIG_JSON, "eval_summary.json", "per_image_metrics.csv", RESULTS_CSV, PREDICTIONS_JSONL,
                "unreadable_files.csv", FROC_PNG, OVERLAY_DIR)


@dataclass
class TrainConfig:
    data_root: str = cli.arg("data/nodulocc", "folder with both label CSVs and the image folders")
    encoder: str = cli.arg(DEFAULT_ENCODER, "hub id or folder: a Dinov2 or a Gemma 3 (MedGemma) checkpoint")
    encoder_mode: Literal["frozen", "lora", "full"] = cli.arg("lora", "how the encoder trains")
    input_size_px: int | None = cli.arg(None, "square model input (default: the encoder's own size)")
    stride: Literal[4, 8] = cli.arg(4, "heatmap stride in input pixels", type=int)
    head_channels: int = cli.arg(128, "width of the upsampling head")
    stem_channels: int = cli.arg(16, "width of the head's convolutional stem on the image (0 = none)")
    lora_r: int = cli.arg(16, "LoRA rank (--encoder_mode lora)")
    lora_alpha: int = cli.arg(16, "LoRA alpha")
    lora_dropout: float = cli.arg(0.05, "LoRA dropout")
    sigma_frac: float = cli.arg(0.01, "Gaussian sigma of a keypoint target, as a fraction of the input side")
    weak_weight: float = cli.arg(0.5, "weight of the image-label loss on heatmap maxima (0 = off)")
    weak_per_keypointed: float = cli.arg(1.0, "weak positives per keypointed image in each epoch")
    negatives_per_keypointed: float = cli.arg(1.0, "No Finding images per keypointed image in each epoch")
    flip: bool = cli.arg(False, "also flip images left-right in training (radiographs are not symmetric)")
    clip_low_pct: float = cli.arg(DEFAULT_CLIP_LOW_PCT, "per-image lower clip percentile (saved with the model)")
    clip_high_pct: float = cli.arg(DEFAULT_CLIP_HIGH_PCT, "per-image upper clip percentile (saved with the model)")
    gradient_checkpointing: bool | None = cli.arg(
        None, "recompute the encoder's activations in backward to save memory "
        "(default: on with a GPU for --encoder_mode lora/full, off on the CPU)")
    output_dir: str = cli.arg("outputs/localization_training", "test metrics, predictions, split, run config")
    checkpoint_dir: str = cli.arg("checkpoints/localization", "trainer checkpoints and best_model/")
    split_file: str | None = cli.arg(
        None, "train on a saved split.csv (file_name,split), e.g. the classifier's, instead of making one")
    val_keypointed_frac: float = cli.arg(
        0.15, "with --split_file: training patients move to val until it holds this share of keypointed images")
    gate_csv: str | None = cli.arg(
        None, "the classifier's test_predictions.csv: also report the localization gated by it")
    gate_threshold: float | None = cli.arg(
        None, "with --gate_csv: gate by confidence < this instead of by the label column")
    operating_point: Literal["count", "f1"] = cli.arg(
        "count", "threshold of the written test predictions: tuned for count accuracy (ranked) or F1")
    seed: int = cli.arg(42, "seed for the split, the sampler, augmentations and training")
    batch_size: int = cli.arg(8, "images per device per step")
    grad_accum: int = cli.arg(2, "gradient accumulation steps")
    eval_batch_size: int = cli.arg(16, "images per device when scoring")
    learning_rate: float = cli.arg(3e-4, "peak learning rate (AdamW), then linear decay")
    warmup_ratio: float = cli.arg(0.05, "fraction of steps of linear warm-up")
    weight_decay: float = cli.arg(1e-4, "AdamW weight decay")
    max_steps: int = cli.arg(3000, "optimizer steps")
    eval_steps: int = cli.arg(200, "evaluate on validation (and checkpoint) every N steps")
    logging_steps: int = cli.arg(10, "log the training loss every N steps")
    save_total_limit: int = cli.arg(2, "checkpoints kept (the best one is always kept)")
    metric_for_best: str = cli.arg("f1_tolerant", f"validation metric that picks the best checkpoint: {METRICS_FOR_BEST}")
    early_stopping_patience: int | None = cli.arg(None, "stop after N evaluations without improvement")
    max_points: int = cli.arg(5, "at most this many keypoints per image")
    eval_negatives: int | None = cli.arg(
        500, "No Finding validation images sampled at each evaluation in training, weighted to the split's "
        "share (the final tuning and test score all)")
    tight_frac: float = cli.arg(0.02, "tight distance threshold, fraction of the image diagonal")
    tolerant_frac: float = cli.arg(0.05, "tolerant distance threshold, fraction of the image diagonal")
    n_overlays: int = cli.arg(4, "test images drawn with their ground truth and predictions in "
                              "output_dir/overlays/, beside froc.png (0: none)")
    num_workers: int = cli.arg(4, "data-loading worker processes")
    max_unreadable_frac: float = max_unreadable_frac_flag()
    resume: str | None = resume_flag()
    overwrite: bool = overwrite_flag()
    demo: bool = cli.arg(False, "make synthetic data and a tiny encoder if missing, and train on the CPU")

    def __post_init__(self) -> None:
        cli.check_choices(self)
        if self.metric_for_best not in METRICS_FOR_BEST:
            raise ValueError(f"--metric_for_best must be one of {', '.join(METRICS_FOR_BEST)}.")
        for name in ("batch_size", "grad_accum", "eval_batch_size", "max_steps", "eval_steps", "max_points"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name} must be at least 1.")
        if self.n_overlays < 0:
            raise ValueError("--n_overlays must be at least 0.")
        if self.weak_weight < 0 or self.weak_per_keypointed < 0 or self.negatives_per_keypointed < 0:
            raise ValueError("--weak_weight, --weak_per_keypointed and --negatives_per_keypointed must be >= 0.")
        if not 0 < self.sigma_frac < 0.2:
            raise ValueError("--sigma_frac must lie in (0, 0.2).")
        check_run_flags(self)
        if not 0 < self.tight_frac <= self.tolerant_frac <= 1:
            raise ValueError("--tight_frac and --tolerant_frac need 0 < tight <= tolerant <= 1.")
        if not 0 <= self.val_keypointed_frac < 1:
            raise ValueError("--val_keypointed_frac must lie in [0, 1).")
        if self.gate_threshold is not None and (self.gate_csv is None or not 0 <= self.gate_threshold <= 1):
            raise ValueError("--gate_threshold needs --gate_csv and must lie in [0, 1].")
        if not 0 <= self.clip_low_pct < self.clip_high_pct <= 100:
            raise ValueError("--clip_low_pct and --clip_high_pct need 0 <= low < high <= 100.")
        if self.gradient_checkpointing and self.encoder_mode == "frozen":
            raise ValueError("--gradient_checkpointing needs --encoder_mode lora or full: a frozen encoder "
                             "keeps no activations for backward.")
        if self.gradient_checkpointing is None:  # resolved here, so run_config.json records the choice
            self.gradient_checkpointing = torch.cuda.is_available() and self.encoder_mode != "frozen"


def load_splits(config: TrainConfig) -> dict[str, pd.DataFrame]:
    """All labelled images with a patient-grouped split (or the saved one), by split."""
    frame = load_localization_data(config.data_root)
    check_keypoints_inside(frame, Path(config.data_root) / LOCALIZATION_CSV)
    kinds = image_kinds(frame["label"], [len(p) for p in frame["points_px"]])
    frame = frame.assign(kind=kinds, split=_split(frame, kinds, config))
    frames = {name: frame[frame["split"] == name].reset_index(drop=True) for name in SPLITS}
    for name, part in frames.items():
        counts = ", ".join(f"{(part['kind'] == k).sum()} {label}" for k, label in KIND_NAMES.items())
        print(f"{name}: {len(part)} images ({counts})")
    return frames


def _split(frame: pd.DataFrame, kinds, config: TrainConfig):
    """The run's split is decided once: --resume reads the split.csv the run wrote at its start."""
    saved = Path(config.output_dir) / SPLIT_CSV
    if config.resume and saved.is_file():
        print(f"resuming with the run's own split {saved}")
        return read_split_file(saved, frame["file_name"].tolist())
    if config.split_file is None:
        return split_by_patient(frame["patient_id"], kinds, seed=config.seed)
    split = read_split_file(config.split_file, frame["file_name"].tolist())
    return widen_validation(split, frame["patient_id"], kinds, config.val_keypointed_frac, seed=config.seed)


def build_model(config: TrainConfig) -> HeatmapLocalizer:
    set_seed(config.seed)  # the head is drawn here, before the Trainer seeds anything
    model = HeatmapLocalizer.from_encoder(
        config.encoder, encoder_mode=config.encoder_mode, input_size_px=config.input_size_px,
        stride=config.stride, head_channels=config.head_channels, stem_channels=config.stem_channels,
        lora_r=config.lora_r, lora_alpha=config.lora_alpha, lora_dropout=config.lora_dropout,
        clip_pct=(config.clip_low_pct, config.clip_high_pct),
    )
    if config.gradient_checkpointing:
        enable_activation_checkpointing(model.encoder)
    return model


def item_settings(config: TrainConfig, model: HeatmapLocalizer) -> ItemSettings:
    c = model.config
    sigma_hm = sigma_hm_from_frac(config.sigma_frac, c.input_size_px, c.stride)
    return ItemSettings(c.input_size_px, c.stride, sigma_hm, tuple(c.image_mean), tuple(c.image_std),
                        c.clip_low_pct, c.clip_high_pct)


def training_arguments(config: TrainConfig) -> TrainingArguments:
    return training.trainer_arguments(
        config,
        weight_decay=config.weight_decay,
        # A fully trained encoder holds weights its forward never uses (Dinov2's mask token, a SigLIP
        # pooling head): data-parallel training must be told to look for them, or it stops at step 2.
        ddp_find_unused_parameters=config.encoder_mode == "full",
    )


def build_trainer(config: TrainConfig, model: HeatmapLocalizer, frames: dict,
                  unreadable: UnreadableImages) -> HeatmapTrainer:
    settings = item_settings(config, model)
    val_rows = evaluation_rows(frames["val"], config.eval_negatives, seed=config.seed)
    return HeatmapTrainer(
        model=model,
        args=training_arguments(config),
        train_dataset=HeatmapDataset(frames["train"], settings, train_augmentation(config.flip, config.seed),
                                     seed=config.seed, skip_unreadable=True),
        eval_dataset=HeatmapDataset(val_rows, settings, skip_unreadable=True),
        data_collator=collate,
        compute_metrics=metrics_function(val_rows, config.tolerant_frac, config.tight_frac),
        callbacks=training.trainer_callbacks(config),
        weak_weight=config.weak_weight,
        weak_per_keypointed=config.weak_per_keypointed,
        negatives_per_keypointed=config.negatives_per_keypointed,
        max_points=config.max_points,
        sampler_seed=config.seed,
        unreadable=unreadable,
    )


def save_model_atomic(model: HeatmapLocalizer, folder: Path) -> None:
    """save_pretrained into a temporary sibling, then swap it in: never half a model folder."""
    tmp = folder.with_name(f".{folder.name}.tmp-{os.getpid()}")
    old = folder.with_name(f".{folder.name}.old-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    if folder.exists():
        folder.replace(old)
    tmp.replace(folder)
    shutil.rmtree(old, ignore_errors=True)


def final_evaluation(config: TrainConfig, model: HeatmapLocalizer, frames: dict,
                     unreadable: UnreadableImages) -> None:
    """The best checkpoint on validation (thresholds) and test (metrics); saved with its thresholds.

    Images that cannot be read go to `unreadable` (too many stop the run before anything is reported)."""
    model = model.to(process_device())  # where the Trainer left it: cuda:LOCAL_RANK, never plain "cuda"
    settings = item_settings(config, model)
    splits = {}
    for name in ("val", "test"):
        # Every negative of both splits: thresholds are tuned on the mix they are applied to.
        rows = evaluation_rows(frames[name], None, seed=config.seed)
        paths = dict(zip(rows["file_name"], rows["path"]))  # the test split's, once the loop ends
        dataset = HeatmapDataset(rows, settings, skip_unreadable=True)
        splits[name], skipped = predict_split(model, rows, dataset, config.eval_batch_size, config.max_points,
                                              config.num_workers, desc=name)
        unreadable.record(skipped)
    best_dir = Path(config.checkpoint_dir) / "best_model"
    gate = read_gate_csv(config.gate_csv, config.gate_threshold) if config.gate_csv else None
    report_test(model, splits["val"], splits["test"],
                {"tight": config.tight_frac, "tolerant": config.tolerant_frac},
                Path(config.output_dir), extra={"checkpoint": str(best_dir)},
                operating_point=config.operating_point, gate=gate, paths=paths, n_overlays=config.n_overlays)
    save_model_atomic(model, best_dir)
    print(f"best model ({config.metric_for_best}) with its tuned thresholds saved to {best_dir}")


def split_to_write(config: TrainConfig, frames: dict) -> pd.DataFrame | None:
    """split.csv (common/split_file.py: the classifier's schema), once: a resumed run keeps the first one."""
    if config.resume and (Path(config.output_dir) / SPLIT_CSV).is_file():
        return None
    return split_table(pd.concat([frames[name] for name in SPLITS]))


def write_split(config: TrainConfig, frames: dict) -> None:
    """split.csv alone, as `record_run` writes it: the split a run of this config decides."""
    split = split_to_write(config, frames)
    if split is not None:
        write_csv_atomic(split, Path(config.output_dir) / SPLIT_CSV)


def prepare_run(config: TrainConfig, first: bool) -> training.RunStart:
    """Find the resume point and make the demo's data and encoder; only process 0 (`first`) checks
    the folders for an earlier run: the other processes may start while it writes the new run's files."""
    start = training.start_run(config, RESULT_FILES, look=first)
    if config.demo:
        prepare_demo(config.data_root, config.encoder)
    return start


def unreadable_images(config: TrainConfig, frames: dict, first: bool) -> UnreadableImages:
    """The run's list of unreadable images, counted against --max_unreadable_frac of all its images;
    a resumed run starts from the list it had, less the files that read now."""
    paths = {name: path for part in frames.values() for name, path in zip(part["file_name"], part["path"])}
    unreadable = UnreadableImages(config.output_dir, len(paths), config.max_unreadable_frac, write=first)
    if config.resume:
        unreadable.carry_over(paths, read_grey)
    return unreadable


def main(argv: list[str] | None = None) -> int:
    config = cli.parse(TrainConfig, __doc__, argv, demo_defaults=DEMO_DEFAULTS)
    if config is None:
        return 2
    try:
        first = int(os.environ.get("RANK", "0")) == 0
        start = prepare_run(config, first)
        frames = load_splits(config)
        model = build_model(config)
        if config.gate_csv:
            read_gate_csv(config.gate_csv, config.gate_threshold)  # a bad file stops the run before training
        if first:  # the inputs hold: replace the earlier run (--overwrite), record the new one
            training.record_run(config, start.earlier, split_to_write(config, frames))
        unreadable = unreadable_images(config, frames, first)
        trainer = build_trainer(config, model, frames, unreadable)
        trainer.train(resume_from_checkpoint=start.resume_from)
        if not (first and trainer.is_world_process_zero()):
            return 0
        final_evaluation(config, trainer.model, frames, unreadable)
        unreadable.save()
    except USER_ERRORS as err:
        return training.user_error(err)
    return training.finish(unreadable, config.output_dir)


if __name__ == "__main__":
    sys.exit(main())
