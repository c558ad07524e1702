"""train.py, recording in each process the epoch its training dataset draws augmentations for.

    python -m torch.distributed.run --nproc_per_node 2 epoch_probe.py OUT_DIR [train.py flags]

Each process appends one line per training item to OUT_DIR/rank<RANK>.txt.
"""

import os
import sys
from pathlib import Path

from localization_task import train
from localization_task.heatmap.data import HeatmapDataset


def main() -> int:
    out, argv = Path(sys.argv[1]), sys.argv[2:]
    original = HeatmapDataset.__getitem__

    def recording(self, index):
        if self.augmentation is not None:  # the training dataset, not the evaluation one
            with open(out / f"rank{os.environ.get('RANK', '0')}.txt", "a") as log:
                log.write(f"{self.epoch}\n")
        return original(self, index)

    HeatmapDataset.__getitem__ = recording
    return train.main(argv)


if __name__ == "__main__":
    sys.exit(main())
