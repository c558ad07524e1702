"""train.py under torchrun with two CPU processes (gloo): one process writes the run's files, after
every process has checked for an earlier run, and unreadable images are counted over all processes."""

import math
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from classification_task.dataset import load_labels
from classification_task.split import load_or_make_split
from classification_task.demo.synthetic import generate_dataset

REPO = Path(__file__).resolve().parents[2]
N_BROKEN = 6

# Runs train.main in each process. Process 1 records every file it opens for writing in the output
# folder (an audit hook: it changes nothing), and starts only once process 0 has written the run's
# files or 10 s have passed, so that a process 0 writing before the others have checked shows.
LAUNCHER = """
import os, sys, time
from pathlib import Path

out, record, argv = Path(sys.argv[1]).resolve(), Path(sys.argv[2]), sys.argv[3:]
writes = []
WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND


def watch(event, args):
    if event == "open" and isinstance(args[0], (str, os.PathLike)) and args[2] & WRITE_FLAGS:
        path = os.path.realpath(args[0])
        if path.startswith(str(out) + os.sep):
            writes.append(path)


if os.environ["RANK"] == "1":
    sys.addaudithook(watch)
    deadline = time.monotonic() + 10
    while not (out / "run_config.json").exists() and time.monotonic() < deadline:
        time.sleep(0.1)
from classification_task import train

try:
    code = train.main(argv)
finally:
    if os.environ["RANK"] == "1":
        record.write_text("".join(path + "\\n" for path in writes))
sys.exit(code)
"""


@pytest.fixture(scope="module")
def broken_data(tmp_path_factory) -> tuple[Path, list[str], int]:
    """60 synthetic images, N_BROKEN training images of them cut short; also the number of training images."""
    root = tmp_path_factory.mktemp("data") / "nodulocc"
    generate_dataset(root, n_images=60, positive_rate=0.3, size_px=64, seed=2)
    frame = load_or_make_split(load_labels(root), None, seed=42)  # train.py's default seed
    train_rows = frame[frame["split"] == "train"]
    broken = sorted(train_rows["file_name"].iloc[::7][:N_BROKEN])
    for path in frame.set_index("file_name").loc[broken, "path"]:
        Path(path).write_bytes(Path(path).read_bytes()[:120])  # a PNG cut short
    return root, broken, len(train_rows)


def _two_processes(tmp_path, data_root, model_dir, *extra) -> subprocess.CompletedProcess:
    (tmp_path / "launch.py").write_text(LAUNCHER)
    out = tmp_path / "out"
    argv = ["--data_root", str(data_root), "--model_id", str(model_dir), "--quantization", "none",
            "--output_dir", str(out), "--checkpoint_dir", str(tmp_path / "ckpt"), "--sampler", "random",
            "--batch_size", "4", "--grad_accum", "1", "--eval_batch_size", "8", "--no-gradient_checkpointing",
            "--num_workers", "0", "--bootstrap", "0", "--no-zero_shot", *extra]
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               str(tmp_path / "launch.py"), str(out), str(tmp_path / "rank1_writes.txt"), *argv]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": "",
           "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run(command, capture_output=True, text=True, timeout=600, env=env, cwd=tmp_path)


def _listed_unreadable(out: Path) -> list[str]:
    return sorted(pd.read_csv(out / "unreadable_files.csv")["file_name"])


def test_two_processes_train_one_writes_the_run_files_and_lists_every_unreadable_image(
        broken_data, tiny_model_dir, tmp_path):
    data_root, broken, n_train = broken_data
    steps = math.ceil(n_train / 8)  # one epoch: 2 processes x 4 images a step
    result = _two_processes(tmp_path, data_root, tiny_model_dir, "--max_steps", str(steps),
                            "--eval_steps", str(steps), "--max_unreadable_frac", "0.5")
    assert result.returncode == 0, result.stderr[-3000:]
    assert (tmp_path / "rank1_writes.txt").read_text() == "", "process 1 wrote into the output folder"
    out = tmp_path / "out"
    assert (out / "metrics.json").is_file() and (out / "split.csv").is_file()
    assert (tmp_path / "ckpt" / f"checkpoint-{steps}" / "trainer_state.json").is_file()
    assert _listed_unreadable(out) == broken, "the images process 1 skipped must be listed too"


def test_unreadable_images_of_both_processes_count_once_against_the_limit(broken_data, tiny_model_dir, tmp_path):
    """Each process reads about half of the broken images: under the limit alone, over it together."""
    data_root, broken, n_train = broken_data
    limit_frac = (N_BROKEN - 0.5) / 60
    result = _two_processes(tmp_path, data_root, tiny_model_dir, "--max_steps", str(math.ceil(n_train / 8)),
                            "--eval_steps", "100", "--max_unreadable_frac", f"{limit_frac:.4f}")
    assert result.returncode != 0, "the run must stop: more images than the limit are unreadable"
    assert f"error: {N_BROKEN} of 60 images are unreadable" in result.stderr, result.stderr[-3000:]
    assert _listed_unreadable(tmp_path / "out") == broken
