"""train.py under torchrun with two CPU processes (gloo): unreadable training images are counted over all
processes against one limit, so both processes stop at the same step with the same sentence."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd

from localization_task import train
from localization_task.heatmap.trainer import MixedEpochSampler
from localization_task.tests.test_train import _argv

REPO = Path(__file__).resolve().parents[2]
N_BROKEN = 4
BATCH_SIZE = 8  # _argv's --batch_size

# Runs train.main in one process and leaves its exit status in <folder>/rank<R>.code: a process that
# was killed (e.g. by the launcher, once another had failed) leaves none.
LAUNCHER = """
import os, sys
from pathlib import Path
from localization_task import train

code = train.main(sys.argv[2:])
Path(sys.argv[1], f"rank{os.environ['RANK']}.code").write_text(str(code))
sys.exit(code)
"""


def _break_images_of_the_first_step(labelled_root: Path, root: Path) -> list[str]:
    """Cut short two images of each process's first batch; their file names.

    The launcher's processes take the sampler's batches in turn (accelerate: batch i to process i % 2),
    so the first 8 images of epoch 0 go to process 0 and the next 8 to process 1.
    """
    shutil.copytree(labelled_root, root)
    frames = train.load_splits(train.TrainConfig(data_root=str(root)))  # train.py's default seed
    order = list(MixedEpochSampler(frames["train"]["kind"], 0.5, 0.5, seed=42))  # as _argv asks
    rows = frames["train"].iloc[order[:2] + order[BATCH_SIZE: BATCH_SIZE + 2]]
    for path in rows["path"]:
        Path(path).write_bytes(Path(path).read_bytes()[:120])  # a PNG cut short
    return sorted(rows["file_name"])


def test_unreadable_images_of_both_processes_count_once_and_both_stop_together(labelled_root, tiny_encoder,
                                                                                tmp_path):
    """Each process reads two of the four broken images in its first batch: under the limit alone, over it
    together. Counted per process, neither would stop; one stopping alone would leave the other waiting."""
    broken = _break_images_of_the_first_step(labelled_root, tmp_path / "root")
    n_images = len(pd.read_csv(labelled_root / "classification_labels.csv"))
    limit_frac = (N_BROKEN - 0.5) / n_images
    (tmp_path / "launch.py").write_text(LAUNCHER)
    argv = _argv(tmp_path / "root", tiny_encoder, tmp_path, "--max_steps", "1", "--eval_steps", "100",
                 "--max_unreadable_frac", f"{limit_frac:.4f}")
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               str(tmp_path / "launch.py"), str(tmp_path), *argv]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": "",
           "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path)
    assert result.returncode != 0, "the run must stop: more images than the limit are unreadable"
    codes = {rank: (tmp_path / f"rank{rank}.code").read_text() if (tmp_path / f"rank{rank}.code").exists()
             else None for rank in (0, 1)}
    assert codes == {0: "2", 1: "2"}, ("each process must stop by itself with exit status 2", result.stderr[-3000:])
    lines = result.stderr.replace("\r", "\n").splitlines()
    errors = [line[line.index("error:"):] for line in lines if "error:" in line]
    assert len(errors) == 2 and len(set(errors)) == 1, errors  # one sentence, the same in both processes
    assert errors[0].startswith(f"error: {N_BROKEN} of {n_images} images are unreadable"), errors[0]
    listed = pd.read_csv(tmp_path / "out" / "unreadable_files.csv")
    assert sorted(listed["file_name"]) == broken, "the images process 1 skipped must be listed too"
