"""Runs killed with SIGKILL and started again end where the uninterrupted runs end.

Training continues with --resume; folder inference continues by running the same command again.
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from classification_task.common.run_files import last_complete_checkpoint
from classification_task.demo.synthetic import generate_dataset

from classification_task import inference

REPO = Path(__file__).resolve().parents[2]
DATA_DIR = Path(__file__).parent / "data"
FAKE_TOKEN = "hf_FAKEtokenForTests0123456789abcdef"
ENV = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": "",
       "HF_TOKEN": FAKE_TOKEN}


def _kill_when(process: subprocess.Popen, ready, log: Path) -> None:
    """SIGKILL `process` as soon as `ready()` holds (it must still be running by then)."""
    deadline = time.monotonic() + 300
    while not ready():
        assert process.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
        time.sleep(0.01)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()


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
    log = open(run_dir / f"log{len(list(run_dir.glob('log*')))}.txt", "w")
    return subprocess.Popen(command, env=ENV, stdout=log, stderr=subprocess.STDOUT, cwd=run_dir)


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
    _kill_when(killed, lambda: list((killed_dir / "ckpt").glob("checkpoint-*/trainer_state.json")),
               killed_dir / "log0.txt")
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
    assert last_complete_checkpoint(tmp_path) == str(tmp_path / "checkpoint-6")
    assert last_complete_checkpoint(tmp_path / "absent") is None


def test_folder_inference_killed_mid_run_and_rerun_writes_the_same_csv(tiny_model_dir, tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    for i in range(40):  # enough batches for the kill to land in the middle
        shutil.copy(DATA_DIR / "00000001_000.png", images / f"{i:05d}_000.png")
    (images / "broken.png").write_bytes(b"not a png")

    def start(out: Path) -> subprocess.Popen:
        command = [sys.executable, str(REPO / "classification_task" / "inference.py"), "--input_dir", str(images),
                   "--output_dir", str(out), "--model_id", str(tiny_model_dir), "--batch_size", "1",
                   "--num_workers", "0", "--image_size_px", "64"]
        out.mkdir(exist_ok=True)
        log = open(out.parent / f"{out.name}.log", "a")
        return subprocess.Popen(command, env=ENV, stdout=log, stderr=subprocess.STDOUT)

    uninterrupted = start(tmp_path / "uninterrupted")
    out = tmp_path / "killed"
    killed = start(out)

    def five_scored() -> bool:
        caches = list(out.glob(f"{inference.PARTIAL_PREFIX}.*.csv"))
        return bool(caches) and caches[0].read_text().count("\n") > 5

    _kill_when(killed, five_scored, tmp_path / "killed.log")
    assert not (out / inference.RESULTS_CSV).exists(), "the kill came too late to test anything"
    assert start(out).wait(timeout=300) == 0, (tmp_path / "killed.log").read_text()[-3000:]
    assert uninterrupted.wait(timeout=300) == 0, (tmp_path / "uninterrupted.log").read_text()[-3000:]
    assert "already scored" in (tmp_path / "killed.log").read_text()
    for name in (inference.RESULTS_CSV, inference.UNREADABLE_CSV):
        assert (out / name).read_bytes() == (tmp_path / "uninterrupted" / name).read_bytes(), name
    assert len((out / inference.RESULTS_CSV).read_text().splitlines()) == 41
    for path in [*out.iterdir(), *(tmp_path / "uninterrupted").iterdir(), *tmp_path.glob("*.log")]:
        assert FAKE_TOKEN.encode() not in path.read_bytes(), path  # the hub token from the environment
