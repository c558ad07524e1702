"""The localizer grown from a classifier: train.py --encoder <classifier run>/best_model/encoder.

The classifier is trained by classification_task/train.py, run as a command: the
two task folders never import each other.
"""

import os
import subprocess
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file

from localization_task import train

REPO = Path(__file__).resolve().parents[2]


def test_the_localizer_starts_from_the_classifiers_trained_encoder(labelled_root, tiny_encoder, tmp_path):
    classifier = tmp_path / "classifier"
    command = [sys.executable, str(REPO / "classification_task" / "train.py"), "--data_root", str(labelled_root),
               "--model_id", str(tiny_encoder), "--encoder_mode", "full", "--max_steps", "3", "--eval_steps", "3",
               "--batch_size", "4", "--grad_accum", "1", "--learning_rate", "1e-2", "--num_workers", "0",
               "--bootstrap", "0", "--output_dir", str(classifier / "out"), "--checkpoint_dir", str(classifier)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""})
    assert done.returncode == 0, done.stderr[-3000:]
    # The classifier's own record of its trained encoder: its last (and only) Trainer checkpoint.
    trained = {name.removeprefix("encoder."): value
               for name, value in load_file(classifier / "checkpoint-3" / "model.safetensors").items()
               if name.startswith("encoder.")}
    initial = load_file(tiny_encoder / "model.safetensors")
    assert any(not torch.equal(value, initial[name]) for name, value in trained.items() if name in initial), \
        "training must have changed the encoder, or the check below proves nothing"

    run = tmp_path / "localizer"
    argv = ["--data_root", str(labelled_root), "--encoder", str(classifier / "best_model" / "encoder"),
            "--encoder_mode", "frozen", "--input_size_px", "64", "--head_channels", "16", "--max_steps", "1",
            "--eval_steps", "1", "--batch_size", "8", "--grad_accum", "1", "--num_workers", "0",
            "--output_dir", str(run / "out"), "--checkpoint_dir", str(run / "ckpt")]
    config = train.cli.parse(train.TrainConfig, "", argv)
    model = train.build_model(config)
    started = model.encoder.state_dict()
    assert started.keys() == trained.keys()
    assert all(torch.equal(started[name], trained[name]) for name in trained)
    assert model.config.image_mean == [0.53, 0.53, 0.53]  # the encoder's image processor travelled with it
    # The whole command runs from it; a frozen encoder ends as it started.
    assert train.main(argv) == 0
    saved = load_file(run / "ckpt" / "best_model" / "model.safetensors")
    assert all(torch.equal(saved[f"encoder.{name}"], trained[name]) for name in trained)
