"""Unreadable images in training and evaluation: skipped, counted, listed, and a stop when too many.

One truncated PNG must not end a long run. The dataset returns image None for
a file it cannot decode; `ReadableBatchCollator` leaves such items out of the
batch and passes their names on under `unreadable`; the main process records
them in `UnreadableImages` as batches arrive. A count kept in the DataLoader
worker processes would be lost with them, and a header check up front misses
files cut short further in. With several training processes the trainer
gathers every process's list at each step, so each counts every unreadable
image once against the one limit, and process 0 writes the list.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable
from pathlib import Path

import pandas as pd
import torch

from classification_task.dataset import DataError, load_image
from classification_task.model import PromptCollator
from classification_task.common.run_files import write_csv_atomic

UNREADABLE_CSV = "unreadable_files.csv"


class ReadableBatchCollator:
    """PromptCollator over the readable items; the others go on as `unreadable` (file_name, error) pairs.

    A batch whose images are all unreadable holds only `labels` (empty) and `unreadable`.
    """

    def __init__(self, processor, collate=None):
        # `collate`: another batcher of readable items (the encoder classifier's EncoderCollator).
        self.prompts = collate or PromptCollator(processor)

    def __call__(self, items: list[dict]) -> dict:
        readable = [item for item in items if item["image"] is not None]
        batch = self.prompts(readable) if readable else {"labels": torch.zeros(0, dtype=torch.long)}
        batch["unreadable"] = [(item["file_name"], item["error"]) for item in items if item["image"] is None]
        return batch


class UnreadableImages:
    """The unreadable files of a run: named in the log and in `unreadable_files.csv` as they turn up.

    More than `max_frac` of the run's `n_images` unreadable stops the run
    (DataError): then the data, not a stray file, is at fault.
    """

    def __init__(self, output_dir: str | Path, n_images: int, max_frac: float, write: bool = True):
        self.csv_path = Path(output_dir) / UNREADABLE_CSV
        self.n_images, self.max_frac, self.write = n_images, max_frac, write
        self.errors: dict[str, str] = {}

    def carry_over(self, paths: dict[str, str]) -> None:
        """A resumed run keeps the earlier list (a training image may not come round again), less the
        files that have been replaced or removed from the labels (`paths`: file_name -> path) since."""
        if not self.csv_path.is_file():
            return
        listed = pd.read_csv(self.csv_path, dtype=str, keep_default_na=False)
        for name, error in zip(listed["file_name"], listed["error"]):
            try:
                if name in paths:
                    load_image(paths[name])
            except Exception:  # as in the dataset: whatever stops the decoding
                self.errors[name] = error

    def record(self, skipped: Iterable[tuple[str, str]]) -> None:
        new = {name: error for name, error in skipped if name not in self.errors}
        if not new:
            return
        if self.write:  # with several processes, the one that writes the list names them all
            for name, error in new.items():
                print(f"skipped unreadable image {name}: {error}", file=sys.stderr)
        self.errors.update(new)
        self.save()
        if len(self.errors) > self.max_frac * self.n_images:
            raise DataError(
                f"{len(self.errors)} of {self.n_images} images are unreadable, more than --max_unreadable_frac "
                f"{self.max_frac:g} allows; they are listed in {self.csv_path}: replace them or remove their "
                "rows from the labels CSV, then rerun with --resume.")

    def save(self) -> None:
        if not self.write:
            return
        if not self.errors:
            self.csv_path.unlink(missing_ok=True)  # a list from an earlier run would no longer be true
            return
        frame = pd.DataFrame(sorted(self.errors.items()), columns=["file_name", "error"])
        write_csv_atomic(frame, self.csv_path)

    def summary(self) -> str | None:
        if not self.errors:
            return None
        return f"skipped {len(self.errors)} unreadable image(s), listed in {self.csv_path}"
