"""The localization demo makes its data and encoder itself, without the classification folder."""

import os
import subprocess
import sys
from pathlib import Path

import pandas as pd

REPO = Path(__file__).resolve().parents[2]


def test_the_demo_generator_is_a_byte_identical_copy_of_the_classification_one():
    ours = REPO / "localization_task" / "demo" / "synthetic.py"
    theirs = REPO / "classification_task" / "demo" / "synthetic.py"
    assert ours.read_bytes() == theirs.read_bytes(), "change both copies of demo/synthetic.py together"


def test_the_demo_trains_with_the_classification_folder_unimportable(tmp_path):
    # A classification_task that cannot be imported, first on the path of this process and its children.
    shadow = tmp_path / "shadow" / "classification_task"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text("raise ImportError('the demo must not need classification_task')\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(shadow.parent), str(REPO)]),
           "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    command = [sys.executable, str(REPO / "localization_task" / "train.py"), "--demo",
               "--data_root", str(tmp_path / "data"), "--encoder", str(tmp_path / "encoder"),
               "--output_dir", str(tmp_path / "out"), "--checkpoint_dir", str(tmp_path / "ckpt"),
               "--max_steps", "2", "--eval_steps", "2", "--logging_steps", "1"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600, env=env, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    labels = pd.read_csv(tmp_path / "data" / "classification_labels.csv")
    assert len(labels) == 800 and (labels["label"] == "Nodule").sum() == 320  # the demo's own settings
    assert (tmp_path / "encoder" / "config.json").is_file()
    assert (tmp_path / "out" / "eval_summary.json").is_file()
