"""The localization demo: its settings, and its data and encoder, made on first use.

    python localization_task/train.py --demo    # synthetic data + tiny encoder, CPU, minutes

Synthetic radiographs with small, faint nodules and look-alike streaks (the
generator's hard mode), and a tiny random-init Dinov2 trained in full on the
CPU. The data come from this folder's own copy of the generator (synthetic.py,
byte-identical with classification_task's), so the demo needs nothing outside
localization_task/.
"""
from __future__ import annotations

from pathlib import Path

from localization_task.dataset import LOCALIZATION_CSV, DataError
from localization_task.demo.synthetic import generate_dataset
from localization_task.demo.tiny_encoder import build_tiny_dinov2

DEMO_ENCODER_INPUT_PX = 128
# Flags that --demo changes; any flag given explicitly still wins.
DEMO_DEFAULTS = dict(
    data_root="data/demo_localization", encoder="checkpoints/tiny-dinov2", encoder_mode="full",
    output_dir="outputs/demo_localization", checkpoint_dir="checkpoints/demo_localization",
    input_size_px=DEMO_ENCODER_INPUT_PX, head_channels=32, sigma_frac=0.02, batch_size=16, grad_accum=1,
    eval_batch_size=32, learning_rate=2e-3, weight_decay=0.0, max_steps=600, eval_steps=150,
    logging_steps=25, num_workers=0, eval_negatives=None, negatives_per_keypointed=0.5,
    weak_per_keypointed=0.5,
)


def prepare_demo(data_root: str | Path, encoder: str | Path) -> None:
    """Write the synthetic data into `data_root` and the tiny encoder into `encoder`, each if missing."""
    if not (Path(data_root) / LOCALIZATION_CSV).is_file():
        try:
            generate_dataset(data_root, n_images=800, positive_rate=0.4, size_px=256, difficulty="hard",
                             keypoint_fraction=0.6, seed=1)
        except FileExistsError:
            raise DataError(f"{data_root} exists but holds no demo data: remove it or pass another "
                            "--data_root.") from None
        except OSError as err:
            raise DataError(f"could not write the demo data to {data_root} ({err.strerror or err}): "
                            "check that the folder is writable.") from None
    if not (Path(encoder) / "config.json").is_file():
        build_tiny_dinov2(encoder, input_size_px=DEMO_ENCODER_INPUT_PX, patch_size=8, hidden_size=64)
