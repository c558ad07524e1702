"""`inference.py --backend chexagent2` end to end in the CheXagent-2 environment itself.

That environment (localization_task/chexagent2/requirements.txt: transformers 4.40.0,
numpy < 2, albumentations 1.4, ...) is another virtual environment; its Python is named
by NODULOCC_CHEXAGENT2_PYTHON. CI builds it (.ci/run) on the CPU torch wheel, so there
these tests must run: with CI=true a missing environment fails them; elsewhere they are
skipped. The model is `chexagent2_double`, a test double of the hub's remote code (the
real repository cannot be downloaded here) written in CheXagent-2's interface and loaded
through the same `trust_remote_code` path.
"""

import csv
import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from localization_task.tests import chexagent2_double

REPO = Path(__file__).resolve().parents[2]
PYTHON_ENV = "NODULOCC_CHEXAGENT2_PYTHON"
SHA = "0123456789abcdef0123456789abcdef01234567"  # well-formed, not a real commit
BLOB_XY_PX = (84, 30)  # the nodule-like spot in the 120 x 100 test image


@pytest.fixture(scope="module")
def python() -> str:
    path = os.environ.get(PYTHON_ENV)
    if path and Path(path).is_file():
        return path
    message = f"no CheXagent-2 environment: set {PYTHON_ENV} to its python (see docs/chexagent2.md)"
    if os.environ.get("CI") == "true":
        pytest.fail(message + "; CI builds it in .ci/run")
    pytest.skip(message)


def run(python: str, args: list[str], tmp: Path, timeout_s: int = 300) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("LOCAL_RANK", "RANK", "WORLD_SIZE")}
    env.update(PYTHONPATH=str(REPO), HF_HUB_OFFLINE="1", HF_MODULES_CACHE=str(tmp / "hf_modules"),
               NO_ALBUMENTATIONS_UPDATE="1", CUDA_VISIBLE_DEVICES="", OMP_NUM_THREADS="1")
    return subprocess.run([python, *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout_s)


@pytest.fixture(scope="module")
def model_dir(python, tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("chexagent2_double")
    folder = chexagent2_double.write_remote_code(tmp / "model")
    built = run(python, ["-c", chexagent2_double.BUILD, str(folder)], tmp)
    assert built.returncode == 0, built.stderr[-3000:]
    return folder


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    """A 16-bit image with one bright spot and an 8-bit smooth gradient without any."""
    folder = tmp_path_factory.mktemp("images")
    yy, xx = np.mgrid[0:100, 0:120]
    noise = np.random.default_rng(0).normal(0, 0.01, xx.shape)
    spot = 0.3 + noise + 0.5 * np.exp(-((xx - BLOB_XY_PX[0]) ** 2 + (yy - BLOB_XY_PX[1]) ** 2) / (2 * 3.0**2))
    Image.fromarray((20000 + spot * 3000).astype(np.uint16)).save(folder / "spot.png")
    Image.fromarray((xx[:80, :90] * 2).astype(np.uint8)).save(folder / "gradient.png")
    return folder


def inference_args(model_dir: Path, images: Path, out: Path, *extra: str) -> list[str]:
    return ["localization_task/inference.py", "--backend", "chexagent2", "--model_id", str(model_dir),
            "--revision", SHA, "--input_dir", str(images), "--output_dir", str(out), "--device", "cpu", *extra]


def test_help_runs_in_the_second_environment(python, tmp_path):
    shown = run(python, ["localization_task/inference.py", "--help"], tmp_path)
    assert shown.returncode == 0, shown.stderr[-3000:]
    assert "--backend" in shown.stdout and "--dtype" in shown.stdout


def test_chexagent2_end_to_end_in_bfloat16(python, model_dir, images, tmp_path):
    """bf16 on the CPU: the double keeps its float32 pos_embed after `torch_dtype=bfloat16`,
    so this passes only when the backend casts the loaded model."""
    out = tmp_path / "out"
    ran = run(python, inference_args(model_dir, images, out, "--dtype", "bfloat16"), tmp_path)
    assert ran.returncode == 0, ran.stderr[-3000:]
    with (out / "localization_test_results.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert [row["file_name"] for row in rows] == ["spot.png"]  # no keypoint on the gradient
    x, y, confidence = (float(rows[0][k]) for k in ("x", "y", "confidence"))
    assert abs(x - BLOB_XY_PX[0]) <= 2 and abs(y - BLOB_XY_PX[1]) <= 2
    assert 0.5 < confidence < 1  # the geometric mean of the box tokens' probabilities
    records = {r["file_name"]: r for r in map(json.loads, (out / "predictions.jsonl").read_text().splitlines())}
    assert records["spot.png"]["response"].startswith("<|ref|>Nodule/Mass<|/ref|><|box|>(")
    assert records["gradient.png"]["response"].startswith("No nodule/mass detected.")
    run_config = json.loads((out / "run_config.localization.json").read_text())
    assert run_config["versions"]["transformers"] == "4.40.0"
    assert run_config["prediction_settings"]["dtype"] == "bfloat16"


def test_missing_remote_code_package_exits_2_with_one_sentence(python, model_dir, images, tmp_path):
    """transformers 4.40's own import check of the remote code, turned into one sentence."""
    broken = chexagent2_double.write_remote_code(tmp_path / "model", extra_import="nodulocc_absent_package")
    for weights in model_dir.glob("*.safetensors"):
        (broken / weights.name).write_bytes(weights.read_bytes())
    ran = run(python, inference_args(broken, images, tmp_path / "out"), tmp_path)
    assert ran.returncode == 2, ran.stderr[-3000:]
    lines = ran.stderr.strip().splitlines()
    assert "Traceback" not in ran.stderr and lines[-1].startswith("error: "), ran.stderr[-3000:]
    assert "`pip install nodulocc_absent_package`" in lines[-1]
