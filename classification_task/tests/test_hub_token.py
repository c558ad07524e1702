"""The hub token never appears in what the commands print or write, even when loading fails."""

import os
import subprocess
import sys
from pathlib import Path

from classification_task.demo.synthetic import generate_dataset

REPO = Path(__file__).resolve().parents[2]
DATA_DIR = Path(__file__).parent / "data"
FAKE_TOKEN = "hf_FAKEtokenThatMustNotLeak0123456789"


def test_a_failed_model_load_prints_and_writes_no_token(tmp_path):
    data_root = tmp_path / "data"
    generate_dataset(data_root, n_images=60, positive_rate=0.3, size_px=64, seed=0)
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_TOKEN": FAKE_TOKEN, "HF_HUB_OFFLINE": "1",
           "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    model_id = "no-such-owner/no-such-model"  # a hub id: offline, the load fails at once
    scripts = REPO / "classification_task"
    commands = {
        "train": [str(scripts / "train.py"), "--data_root", str(data_root), "--model_id", model_id,
                  "--output_dir", str(tmp_path / "train_out"), "--checkpoint_dir", str(tmp_path / "train_ckpt")],
        "inference": [str(scripts / "inference.py"), "--input_dir", str(DATA_DIR), "--model_id", model_id,
                      "--output_dir", str(tmp_path / "inference_out")],
    }
    runs = {name: subprocess.Popen([sys.executable, *argv], cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                                   stderr=subprocess.PIPE, text=True) for name, argv in commands.items()}
    for name, run in runs.items():
        out, err = run.communicate(timeout=300)
        assert run.returncode == 2, (name, err[-3000:])
        assert err.strip().splitlines()[-1].startswith(f"error: could not load {model_id!r}"), (name, err[-3000:])
        assert "HF_TOKEN" in err.splitlines()[-1]  # the message says where the token goes ...
        assert FAKE_TOKEN not in out + err, name  # ... but never shows it
    written = [path for path in tmp_path.rglob("*") if path.is_file() and not path.is_relative_to(data_root)]
    assert written == []  # nothing at all: the run stopped before writing
    for path in data_root.rglob("*"):
        assert not path.is_file() or FAKE_TOKEN.encode() not in path.read_bytes(), path
