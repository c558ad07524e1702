"""What both tasks' train.py do around the method: the run's start, the Trainer's arguments, the end.

A training run starts by checking its folders (`start_run`: a fresh run must
not mix with an earlier one; `--resume` finds its checkpoint), records itself
once its inputs hold (`record_run`), trains with the arguments and callbacks
both tasks share (`trainer_arguments`, `trainer_callbacks`), and ends with one
line: its results folder, or a user-caused error (`user_error`, exit status 2).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from .cli import available_loggers
from .errors import DataError
from .run_files import (
    check_fresh_run, remove_earlier_run, resume_checkpoint, run_config_callback, write_csv_atomic, write_run_config,
)
from .split_file import SPLIT_CSV

if TYPE_CHECKING:
    import pandas as pd
    from transformers import TrainingArguments

    from .unreadable import UnreadableImages

USER_ERRORS = (DataError, ValueError)  # problems the user can fix: one sentence, exit status 2


@dataclass
class RunStart:
    """Where a run starts: the checkpoint `--resume` continues from (None: fresh) and what `--overwrite` replaces."""
    resume_from: str | None = None
    earlier: list[Path] = field(default_factory=list)


def start_run(config, results: tuple[str, ...], look: bool = True, train: bool = True) -> RunStart:
    """Refuse a fresh run over an earlier one (when `look`) and find the checkpoint to resume from.

    `config` has output_dir, checkpoint_dir, resume and overwrite; `results` are
    the names a run leaves in its output folder. `train` False: an evaluation
    alone, which writes no checkpoints and resumes nothing. Nothing is written.
    """
    checkpoint_dir = config.checkpoint_dir if train else None
    earlier = check_fresh_run(config.output_dir, checkpoint_dir, config.resume, config.overwrite,
                              results) if look else []
    return RunStart(resume_checkpoint(config.resume, config.checkpoint_dir) if train else None, earlier)


def record_run(config, earlier: list[Path], split: pd.DataFrame | None) -> None:
    """The inputs hold: replace the earlier run (--overwrite), then write split.csv (unless None) and the config."""
    remove_earlier_run(earlier)
    if split is not None:
        write_csv_atomic(split, Path(config.output_dir) / SPLIT_CSV)
    write_run_config(config.output_dir, config)


def trainer_arguments(config, **task_arguments) -> TrainingArguments:
    """The Trainer's arguments both tasks share, from the config's flags; `task_arguments` add or replace.

    Evaluate and checkpoint every --eval_steps, keep the best checkpoint by
    --metric_for_best, linear warm-up (--warmup_ratio) then linear decay.
    """
    from transformers import TrainingArguments  # here: the rest of this module needs no transformers

    cuda = torch.cuda.is_available()
    arguments = dict(
        output_dir=config.checkpoint_dir,
        per_device_train_batch_size=config.batch_size,
        per_device_eval_batch_size=config.eval_batch_size,
        gradient_accumulation_steps=config.grad_accum,
        learning_rate=config.learning_rate,
        lr_scheduler_type="linear",
        warmup_steps=config.warmup_ratio,  # transformers 5: a float below 1 is a ratio of the total steps
        max_steps=config.max_steps,
        optim="adamw_torch_fused" if cuda else "adamw_torch",
        bf16=cuda and torch.cuda.is_bf16_supported(),
        # Without CUDA, say so: accelerate then joins the processes of a launch into one data-parallel
        # run (gloo); otherwise each process would train a replica of its own on all the data.
        use_cpu=not cuda,
        eval_strategy="steps",
        eval_steps=config.eval_steps,
        save_strategy="steps",
        save_steps=config.eval_steps,
        save_total_limit=config.save_total_limit,
        load_best_model_at_end=True,
        metric_for_best_model=config.metric_for_best,
        greater_is_better=config.metric_for_best != "loss",
        logging_steps=config.logging_steps,
        report_to=available_loggers(),
        dataloader_num_workers=config.num_workers,
        remove_unused_columns=False,
        dataloader_pin_memory=cuda,
        seed=config.seed,
    )
    return TrainingArguments(**(arguments | task_arguments))


def trainer_callbacks(config) -> list:
    """run_config.json beside every checkpoint (--resume accepts them), and early stopping when asked."""
    from transformers import EarlyStoppingCallback

    callbacks = [run_config_callback(config)]
    if config.early_stopping_patience:
        callbacks.append(EarlyStoppingCallback(early_stopping_patience=config.early_stopping_patience))
    return callbacks


def user_error(err: Exception) -> int:
    """Print a user-caused error as one `error: ...` line; the exit status 2."""
    # Raised in a DataLoader worker, the message carries the worker's traceback: keep its last line.
    print(f"error: {str(err).strip().splitlines()[-1].split('DataError: ')[-1]}", file=sys.stderr)
    return 2


def finish(unreadable: UnreadableImages, output_dir: str) -> int:
    """The run's last lines: the images it skipped, if any, and where its results are; exit status 0."""
    if unreadable.errors:
        print(unreadable.summary())
    print(f"results written to {output_dir}")
    return 0
