"""Inference killed with SIGKILL mid-run, then run again with the same command, writes the same CSV."""

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from localization_task.inference import PREDICTIONS_JSONL, RESULTS_CSV, main
from localization_task.tests.scripted_localizer import DELAY_ENV

REPO_ROOT = Path(__file__).resolve().parents[2]
DATA = Path(__file__).parent / "data"


def test_inference_killed_mid_run_and_rerun_writes_the_same_csv(tmp_path, capsys, scripted_backend):
    images = tmp_path / "images"
    images.mkdir()
    for i in range(12):
        shutil.copy(DATA / "00000001_000.png", images / f"img_{i:02d}.png")
    (images / "broken.png").write_bytes(b"not a png")
    argv = ["--input_dir", str(images), "--backend", "scripted"]
    assert main(argv + ["--output_dir", str(tmp_path / "uninterrupted")]) == 0

    out = tmp_path / "killed"
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), DELAY_ENV: "0.2"}
    command = [sys.executable, "-m", "localization_task.tests.scripted_localizer",  # registers the double
               str(REPO_ROOT / "localization_task" / "inference.py"), *argv, "--output_dir", str(out)]
    killed = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    jsonl, deadline = out / PREDICTIONS_JSONL, time.monotonic() + 120
    while not (jsonl.is_file() and jsonl.read_text().count("\n") >= 3):
        assert killed.poll() is None and time.monotonic() < deadline, killed.stderr.read()
        time.sleep(0.01)
    os.kill(killed.pid, signal.SIGKILL)
    killed.wait()
    assert not (out / RESULTS_CSV).exists(), "the kill came too late to test anything"

    capsys.readouterr()
    assert main(argv + ["--output_dir", str(out)]) == 0
    predicted, reused = capsys.readouterr().out.split(" images predicted, ")
    assert 3 <= int(reused.split()[0]) < 12 and int(predicted) == 12 - int(reused.split()[0])
    assert (out / RESULTS_CSV).read_bytes() == (tmp_path / "uninterrupted" / RESULTS_CSV).read_bytes()
    assert len(jsonl.read_text().splitlines()) == 12
