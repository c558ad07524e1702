"""A training run killed with SIGKILL and continued with --resume ends where the uninterrupted run ends."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from classification_task import train
from classification_task.synthetic import generate_dataset

REPO = Path(__file__).resolve().parents[2]
FAKE_TOKEN = "hf_FAKEtokenForTests0123456789abcdef"


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("data") / "nodulocc"
    generate_dataset(root, n_images=60, positive_rate=0.3, size_px=64, seed=2)
    return root


def _start(data_root, model_dir, run_dir, *extra) -> subprocess.Popen:
    """train.py as its own process: QLoRA (the default), LoRA dropout, a data-loading worker."""
    command = [
        sys.executable, str(REPO / "classification_task" / "train.py"),
        "--data_root", str(data_root), "--model_id", str(model_dir),
        "--output_dir", str(run_dir / "out"), "--checkpoint_dir", str(run_dir / "ckpt"),
        "--batch_size", "4", "--grad_accum", "2", "--eval_batch_size", "8", "--max_steps", "12",
        "--eval_steps", "3", "--logging_steps", "3", "--num_workers", "1", "--bootstrap", "0",
        "--no-zero_shot", "--no-gradient_checkpointing", *extra,
    ]
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": "",
           "HF_TOKEN": FAKE_TOKEN}
    log = open(run_dir / f"log{len(list(run_dir.glob('log*')))}.txt", "w")
    return subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=run_dir)


def _losses(run_dir: Path) -> list:
    state = json.loads((run_dir / "ckpt" / "checkpoint-12" / "trainer_state.json").read_text())
    return [(entry["step"], entry.get("loss", entry.get("eval_loss"))) for entry in state["log_history"]]


def _logs(run_dir: Path) -> str:
    return "\n".join(path.read_text() for path in sorted(run_dir.glob("log*.txt")))


def test_a_run_killed_after_its_first_checkpoint_resumes_into_the_same_run(data_root, tiny_model_dir, tmp_path):
    full_dir, killed_dir = tmp_path / "uninterrupted", tmp_path / "killed"
    full_dir.mkdir(), killed_dir.mkdir()
    uninterrupted = _start(data_root, tiny_model_dir, full_dir)  # runs beside the other one
    killed = _start(data_root, tiny_model_dir, killed_dir)
    deadline = time.monotonic() + 300
    while not list((killed_dir / "ckpt").glob("checkpoint-*/trainer_state.json")):
        assert killed.poll() is None and time.monotonic() < deadline, _logs(killed_dir)[-3000:]
        time.sleep(0.02)
    os.kill(killed.pid, signal.SIGKILL)
    killed.wait()
    assert not (killed_dir / "ckpt" / "checkpoint-12").exists(), "the kill came too late to test anything"

    resumed = _start(data_root, tiny_model_dir, killed_dir, "--resume")
    assert resumed.wait(timeout=600) == 0, _logs(killed_dir)[-3000:]
    assert uninterrupted.wait(timeout=600) == 0, _logs(full_dir)[-3000:]
    assert "resuming from" in _logs(killed_dir)
    assert _losses(killed_dir) == _losses(full_dir)
    for name in ("test_predictions.csv", "val_predictions.csv"):
        assert (killed_dir / "out" / name).read_bytes() == (full_dir / "out" / name).read_bytes(), name

    # The hub token from the environment is in no output, log or checkpoint file.
    for path in tmp_path.rglob("*"):
        assert not path.is_file() or FAKE_TOKEN.encode() not in path.read_bytes(), path


def test_resume_skips_a_checkpoint_cut_short_by_a_kill(tmp_path):
    for step, state in ((3, "{}"), (6, "{}"), (9, '{"global_st'), (12, None)):
        folder = tmp_path / f"checkpoint-{step}"
        folder.mkdir()
        (folder / "adapter_model.safetensors").write_bytes(b"")
        if state is not None:
            (folder / "trainer_state.json").write_text(state)
    (tmp_path / "checkpoint-7-old").mkdir()
    assert train.last_complete_checkpoint(tmp_path) == str(tmp_path / "checkpoint-6")
    assert train.last_complete_checkpoint(tmp_path / "absent") is None
