"""The processes a launcher (torchrun, accelerate launch) started, and how they agree.

Folder inference joins a gloo group of its own (`Processes.join`); training uses
the group its `TrainingArguments` set up (`Processes.current`: nccl on GPUs,
gloo on CPUs). Alone, every method is a no-op.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta

import torch.distributed as dist

from classification_task.dataset import DataError


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

    def share(self, names: list[str]) -> list[str]:
        return names[self.rank :: self.count]

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
