"""Unreadable images in training and evaluation: skipped, counted, listed, and a stop when too many.

One truncated PNG must not end a long run. The dataset gives no pixels for a
file it cannot decode; its collator leaves such items out of the batch and
passes their (file_name, error) pairs on; the main process records them in
`UnreadableImages` as batches arrive. A count kept in the DataLoader worker
processes would be lost with them, and a header check up front misses files
cut short further in. With several training processes each reads its own part
of every batch: the trainer gathers every process's pairs at each step
(`record_from_all_processes`), so each process counts every unreadable image
once against the one limit, all stop at the same step, and process 0 writes
`unreadable_files.csv` (file_name,error).
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable
from pathlib import Path

import pandas as pd

from .errors import DataError
from .processes import Processes
from .run_files import write_csv_atomic

UNREADABLE_CSV = "unreadable_files.csv"


class UnreadableImages:
    """The unreadable files of a run: named in the log and in `unreadable_files.csv` as they turn up.

    More than `max_frac` of the run's `n_images` unreadable stops the run
    (DataError): then the data, not a stray file, is at fault. `write`: this
    process prints and writes the list (process 0 of several).
    """

    def __init__(self, output_dir: str | Path, n_images: int, max_frac: float, write: bool = True):
        self.csv_path = Path(output_dir) / UNREADABLE_CSV
        self.n_images, self.max_frac, self.write = n_images, max_frac, write
        self.errors: dict[str, str] = {}

    def carry_over(self, paths: dict[str, str], read: Callable[[str], object]) -> None:
        """A resumed run keeps the earlier list (a training image may not come round again), less the
        files that `read` now decodes or that are no longer in the labels (`paths`: file_name -> path)."""
        if not self.csv_path.is_file():
            return
        listed = pd.read_csv(self.csv_path, dtype=str, keep_default_na=False)
        if not {"file_name", "error"} <= set(listed.columns):
            return  # not a list this module wrote: this run makes its own
        for name, error in zip(listed["file_name"], listed["error"]):
            try:
                if name in paths:
                    read(paths[name])
            except Exception:  # as in the datasets: whatever stops the decoding
                self.errors[name] = error

    def record_from_all_processes(self, skipped: Iterable[tuple[str, str]]) -> None:
        """`record` what every process skipped; each process calls this at the same step (see the docstring).

        Alone, or in a process group nobody joined, that is just this process's list."""
        self.record(Processes.current().gather_to_all(list(skipped)))

    def record(self, skipped: Iterable[tuple[str, str]]) -> None:
        """Add (file_name, error) pairs; DataError once more than the limit are unreadable."""
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
                "rows from the labels, then rerun with --resume.")

    def save(self) -> None:
        if not self.write:
            return
        if not self.errors:
            self.csv_path.unlink(missing_ok=True)  # a list from an earlier run would no longer be true
            return
        write_csv_atomic(pd.DataFrame(sorted(self.errors.items()), columns=["file_name", "error"]), self.csv_path)

    def summary(self) -> str | None:
        if not self.errors:
            return None
        return f"skipped {len(self.errors)} unreadable image(s), listed in {self.csv_path}"
