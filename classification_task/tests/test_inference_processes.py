"""Folder inference shared by several processes (torchrun, gloo on the CPU): the same CSV as one
process, byte for byte, and resuming from every process's cache."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from classification_task import inference

DATA_DIR = Path(__file__).parent / "data"
REPO_ROOT = Path(__file__).resolve().parents[2]


def _image_dir(tmp_path: Path) -> Path:
    """The real radiographs, eight small synthetic ones and a file that is no image."""
    folder = tmp_path / "images"
    folder.mkdir()
    for png in DATA_DIR.glob("*.png"):
        (folder / png.name).write_bytes(png.read_bytes())
    rng = np.random.default_rng(0)
    for i in range(8):
        Image.fromarray(rng.integers(0, 255, (96, 80), dtype=np.uint8)).save(folder / f"synthetic_{i}.png")
    (folder / "broken.png").write_bytes(b"not a png")
    return folder


def _one_process(argv: list[str]) -> None:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as each torchrun worker runs (OMP_NUM_THREADS=1)
    try:
        assert inference.main(argv) == 0
    finally:
        torch.set_num_threads(threads)


def _two_processes(argv: list[str]) -> str:
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               str(REPO_ROOT / "classification_task" / "inference.py"), *argv]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": "",
           "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), os.environ.get("PYTHONPATH", "")])}
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


def test_two_processes_write_the_csv_of_one_and_resume(tiny_model_dir, tmp_path, capsys):
    images = _image_dir(tmp_path)
    common = ["--input_dir", str(images), "--model_id", str(tiny_model_dir), "--num_workers", "0",
              "--batch_size", "2"]
    one, two = tmp_path / "one", tmp_path / "two"
    _one_process([*common, "--output_dir", str(one)])
    expected = (one / inference.RESULTS_CSV).read_bytes()

    stdout = _two_processes([*common, "--output_dir", str(two)])
    assert "12 to score by 2 processes" in stdout
    assert (two / inference.RESULTS_CSV).read_bytes() == expected
    assert (two / inference.UNREADABLE_CSV).read_bytes() == (one / inference.UNREADABLE_CSV).read_bytes()
    caches = sorted(two.glob(".classification_partial.*.rank*.csv"))
    assert [path.name[-9:] for path in caches] == ["rank0.csv", "rank1.csv"]

    # An interruption: process 1's cache lost, process 0's cut after two rows, mid-row.
    caches[1].unlink()
    rows = caches[0].read_text().splitlines(keepends=True)
    caches[0].write_text("".join(rows[:3]) + rows[3][:5])
    (two / inference.RESULTS_CSV).unlink()
    stdout = _two_processes([*common, "--output_dir", str(two)])
    assert "2 already scored, 10 to score by 2 processes" in stdout
    assert (two / inference.RESULTS_CSV).read_bytes() == expected

    # One process resumes from the caches the two left.
    capsys.readouterr()
    _one_process([*common, "--output_dir", str(two)])
    assert "11 already scored, 1 to score" in capsys.readouterr().out  # the broken file is retried
    assert (two / inference.RESULTS_CSV).read_bytes() == expected


def test_a_process_may_write_its_cache_before_the_output_folder_exists(tmp_path):
    cache = inference.PartialScores(tmp_path / "not_yet" / ".classification_partial.abc.rank1.csv")
    cache.append(["a.png"], np.array([0.25]))
    assert cache.load() == {"a.png": 0.25}
