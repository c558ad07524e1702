"""The processes a launcher (torchrun, accelerate launch) started, how they agree, and each one's device.

Folder inference joins a gloo group of its own (`Processes.join`); training uses
the group its `TrainingArguments` set up (`Processes.current`: nccl on GPUs,
gloo on CPUs). Alone, every method is a no-op. Each process writes its own
files (`Processes.own_file`), which process 0 merges, and runs its model on its
own GPU, `cuda:LOCAL_RANK` (`process_device`).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist

from .errors import DataError

DEVICES = ("auto", "cuda", "cpu")  # what --device accepts


@dataclass(frozen=True)
class Processes:
    """This process's place among those the launcher started (one alone by default)."""

    rank: int = 0
    count: int = 1

    @classmethod
    def join(cls) -> Processes:
        """Join the launcher's process group. gloo: the group only synchronises, so it needs no GPU,
        and a long timeout, since process 0 may wait hours for a slower one to finish its share."""
        count = int(os.environ.get("WORLD_SIZE", "1"))
        if count == 1:
            return cls()
        if not dist.is_initialized():
            dist.init_process_group("gloo", timeout=timedelta(hours=24))
        return cls(dist.get_rank(), count)

    @classmethod
    def current(cls) -> Processes:
        """The group something else joined already (the Trainer's arguments), or one process."""
        if dist.is_available() and dist.is_initialized():
            return cls(dist.get_rank(), dist.get_world_size())
        return cls()

    @property
    def is_first(self) -> bool:
        return self.rank == 0

    def share(self, items: list) -> list:
        return items[self.rank :: self.count]

    def own_file(self, path: Path) -> Path:
        """The file this process writes in place of `path`: `path` itself alone, else
        `<stem>.rank<R><suffix>` beside it (process 0 merges them: `rank_files`)."""
        return path if self.count == 1 else path.with_name(f"{path.stem}.rank{self.rank}{path.suffix}")

    def barrier(self) -> None:
        if self.count > 1:
            dist.barrier()

    def gather_to_first(self, items: list) -> list:
        """Every process's `items`, concatenated, on process 0 (once all have sent); [] elsewhere."""
        if self.count == 1:
            return items
        gathered = [None] * self.count if self.rank == 0 else None
        dist.gather_object(items, gathered, dst=0)
        return [item for part in gathered for item in part] if self.rank == 0 else []

    def gather_to_all(self, items: list) -> list:
        """Every process's `items`, concatenated in rank order, on every process."""
        if self.count == 1:
            return items
        gathered = [None] * self.count
        dist.all_gather_object(gathered, items)
        return [item for part in gathered for item in part]

    def first_does(self, action: Callable[[], None]) -> None:
        """Once every process is here, process 0 alone runs `action`; all go on once it is done.

        The barrier first: what `action` writes cannot reach another process's
        earlier checks. A DataError / ValueError it raises is raised in every
        process, so none is left waiting for the others.
        """
        self.barrier()
        error = None
        if self.is_first:
            try:
                action()
            except (DataError, ValueError) as err:
                error = str(err)
        if self.count > 1:
            message = [error]
            dist.broadcast_object_list(message, src=0)
            error = message[0]
        if error is not None:
            raise DataError(error)

    def leave(self) -> None:
        if self.count > 1 and dist.is_initialized():
            dist.destroy_process_group()


def rank_files(path: Path) -> list[Path]:
    """The files `Processes.own_file(path)` gave the processes of a shared run, in name order."""
    return sorted(path.parent.glob(f"{path.stem}.rank*{path.suffix}"))


def process_device(asked: str = "auto") -> torch.device:
    """Where this process runs its model: the CPU, or its own GPU.

    `asked` is --device: "auto" (a GPU when torch sees one), "cuda" or "cpu".
    Under a launcher, process r takes cuda:LOCAL_RANK, where the Trainer
    (through accelerate) also puts its model, instead of every process crowding
    GPU 0; one process alone takes cuda:0. A launcher that shows each process
    only its own GPU leaves one visible: that one is this process's, whatever
    LOCAL_RANK says. Raises ValueError with one sentence when there is no such GPU.
    """
    if asked not in DEVICES:
        raise ValueError(f"--device must be one of {', '.join(DEVICES)}, not {asked!r}.")
    n_gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if asked == "cpu" or (asked == "auto" and n_gpus == 0):
        return torch.device("cpu")
    if n_gpus == 0:
        raise ValueError("--device cuda was asked for but torch sees no CUDA GPU: use --device cpu or auto.")
    text = os.environ.get("LOCAL_RANK") or "0"
    if not text.isdigit():
        raise ValueError(f"LOCAL_RANK={text!r} is not a process index; unset it, or start the processes with "
                         "torchrun / accelerate launch.")
    local_rank = int(text)
    if n_gpus == 1:
        return torch.device("cuda", 0)
    if local_rank >= n_gpus:
        raise ValueError(f"LOCAL_RANK={local_rank} but only {n_gpus} GPU(s) are visible: start at most one "
                         f"process per GPU (torchrun --nproc_per_node {n_gpus}).")
    return torch.device("cuda", local_rank)
