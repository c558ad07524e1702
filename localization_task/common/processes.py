"""Several inference processes (torchrun / accelerate launch) sharing one folder of images.

Each process predicts every N-th pending image into its own resume cache
(`predictions.rank<R>.jsonl`); process 0 waits for all, merges every cache
into `predictions.jsonl` and writes the CSV. One process alone (the default)
uses `predictions.jsonl` directly. gloo only synchronises here, so no GPU is
needed for the group itself. Each process runs its model on its own GPU,
`cuda:LOCAL_RANK` (`process_device`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist

from localization_task.common.run_files import PREDICTIONS_JSONL, load_records, write_records_jsonl


@dataclass(frozen=True)
class Processes:
    """This process's place among those the launcher started (one alone by default)."""

    rank: int = 0
    count: int = 1

    @classmethod
    def join(cls) -> Processes:
        count = int(os.environ.get("WORLD_SIZE", "1"))
        if count == 1:
            return cls()
        if not dist.is_initialized():
            # Long timeout: process 0 may wait hours for a slower one to finish its share.
            dist.init_process_group("gloo", timeout=timedelta(hours=24))
        return cls(dist.get_rank(), count)

    def share(self, items: list) -> list:
        return items[self.rank :: self.count]

    def gather_to_first(self, items: list) -> list:
        """Every process's `items` on process 0, once all have sent (a barrier too); [] elsewhere."""
        if self.count == 1:
            return items
        gathered = [None] * self.count if self.rank == 0 else None
        dist.gather_object(items, gathered, dst=0)
        return [item for part in gathered for item in part] if self.rank == 0 else []

    def cache(self, output_dir: Path) -> Path:
        """This process's resume cache."""
        return output_dir / (PREDICTIONS_JSONL if self.count == 1 else f"predictions.rank{self.rank}.jsonl")

    def leave(self) -> None:
        if self.count > 1 and dist.is_initialized():
            dist.destroy_process_group()


def process_device(asked: str) -> str:
    """Where this process runs its model: "cpu", or its own GPU `cuda:LOCAL_RANK`.

    `asked` is --device: "auto" (a GPU when torch sees one), "cuda" or "cpu".
    Without LOCAL_RANK (one process) that GPU is cuda:0; launched several per
    machine, process r takes cuda:r instead of all of them crowding GPU 0.
    Raises ValueError with a plain sentence when that GPU does not exist.
    """
    if asked == "cpu" or (asked == "auto" and not torch.cuda.is_available()):
        return "cpu"
    if not torch.cuda.is_available():
        raise ValueError("--device cuda was asked for but torch sees no CUDA GPU: use --device cpu or auto.")
    local_rank, n_gpus = int(os.environ.get("LOCAL_RANK", "0")), torch.cuda.device_count()
    if local_rank >= n_gpus:
        raise ValueError(f"this is process LOCAL_RANK={local_rank} but torch sees {n_gpus} GPU(s): start at most "
                         "one process per GPU (torchrun --nproc_per_node), or use --device cpu.")
    return f"cuda:{local_rank}"


def all_records(output_dir: Path) -> dict[str, dict]:
    """The records of predictions.jsonl and of every process's cache (an interrupted shared run)."""
    records = load_records(output_dir / PREDICTIONS_JSONL)
    for path in sorted(output_dir.glob("predictions.rank*.jsonl")):
        records |= load_records(path)
    return records


def merge_caches(output_dir: Path, names: list[str]) -> dict[str, dict]:
    """Fold the processes' caches into predictions.jsonl (written in one step), then remove them."""
    ranks = sorted(output_dir.glob("predictions.rank*.jsonl"))
    records = all_records(output_dir)
    if ranks:
        write_records_jsonl(output_dir / PREDICTIONS_JSONL, records, names)
        for path in ranks:
            path.unlink()
    return records
