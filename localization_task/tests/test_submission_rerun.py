"""README step 3, interrupted and rerun as written, gives the files of an uninterrupted run, byte for byte.

Step 3 sends both tasks' inference into one folder: the classifier's command
(run as a command here, since the task folders never import each other, on the
tiny MedGemma and random LoRA adapter of benchmarks/models.py) and then the
localizer's, gated by the classifier's CSV in that folder (the tiny heatmap
model of test_stretch.py). An interruption is a SIGKILL the command sends
itself when it reaches its second batch, so it leaves what a kill right after
the first batch leaves: the run's record, one batch in the cache, no results.
"""

import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
from functools import partial
from pathlib import Path

import pytest

from localization_task.common.errors import DataError
from localization_task.common.run_files import write_run_config
from localization_task.evaluation.predictions import RUN_CONFIG_JSON, check_resumable
from localization_task.heatmap.model import HeatmapLocalizer
from localization_task.tests.test_stretch import _model_with_stretch

REPO = Path(__file__).resolve().parents[2]
CLASSIFY, LOCALIZE = "classification_task/inference.py", "localization_task/inference.py"  # step 3, in order
ENV = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
N_IMAGES = 20  # two batches or more at either command's default --batch_size
GATE_THRESHOLD = 0.45  # the classifier's tuned threshold: it calls some of these images Nodule, the others not
RESULT_FILES = ("classification_test_results.csv", "run_config.classification.json",
                "localization_test_results.csv", "predictions.jsonl", "run_config.localization.json")

BUILD_CLASSIFIER = (  # the tiny base and its adapter, with the operating point train.py would write
    "import shutil, sys\n"
    "from pathlib import Path\n"
    "from benchmarks.models import tiny_model_folders\n"
    "from classification_task.evaluation.operating_point import write_operating_point\n"
    "base, adapter = tiny_model_folders(Path(sys.argv[1]))\n"
    "shutil.move(base, 'checkpoints/tiny-medgemma')\n"
    "shutil.move(adapter, 'checkpoints/classification/best_adapter')\n"
    "write_operating_point('checkpoints/classification/best_adapter', {\n"
    "    'model_kind': 'medgemma_lora', 'base_model': 'checkpoints/tiny-medgemma', 'quantization': 'none',\n"
    "    'preprocessing': {'clip_low_pct': 0.5, 'clip_high_pct': 99.5, 'image_size_px': None},\n"
    "    'thresholds': {'max_f1': float(sys.argv[2])}, 'default_threshold': 'max_f1'})\n"
)

# A command's main() with its once-per-batch call wrapped: the second call (the second batch) kills the process.
KILLED_AT_SECOND_BATCH = (
    "import importlib, os, signal, sys\n"
    "module, owner, method, entry, *argv = sys.argv[1:]\n"
    "cls = getattr(importlib.import_module(module), owner)\n"
    "real, calls = getattr(cls, method), []\n"
    "def second_call_kills(*args, **kwargs):\n"
    "    calls.append(None)\n"
    "    if len(calls) == 2:\n"
    "        os.kill(os.getpid(), signal.SIGKILL)\n"
    "    return real(*args, **kwargs)\n"
    "setattr(cls, method, second_call_kills)\n"
    "sys.exit(importlib.import_module(entry).main(argv))\n"
)
ONCE_PER_BATCH = {  # the classifier appends each batch to its cache; the localizer predicts each batch
    CLASSIFY: ("classification_task.inference", "PartialScores", "append"),
    LOCALIZE: ("localization_task.heatmap.predictor", "HeatmapPredictor", "predict"),
}


def step_3_commands() -> dict[str, list[str]]:
    """The two commands of README step 3 as written there, by script."""
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    block = readme.split("**3. ", 1)[1].split("```bash\n", 1)[1].split("```", 1)[0]
    commands = [shlex.split(line) for line in block.replace("\\\n", " ").splitlines() if line.strip()]
    assert [command[:2] for command in commands] == [["python", CLASSIFY], ["python", LOCALIZE]]
    return {command[1]: command[2:] for command in commands}


def run_as_written(repo: Path, script: str, argv: list[str], killed_at_second_batch: bool = False) -> str:
    """Run one command in `repo` (data/, checkpoints/, outputs/ as in the project); its output.

    Output goes to a file, not a pipe: the data-loader workers of a killed command outlive it a moment."""
    command = [sys.executable, str(REPO / script), *argv]
    if killed_at_second_batch:
        entry = script.removesuffix(".py").replace("/", ".")
        command = [sys.executable, "-c", KILLED_AT_SECOND_BATCH, *ONCE_PER_BATCH[script], entry, *argv]
    log = repo / "command.log"
    with log.open("w") as out:
        code = subprocess.run(command, cwd=repo, env=ENV, stdout=out, stderr=subprocess.STDOUT, timeout=600).returncode
    text = log.read_text()
    assert code == (-signal.SIGKILL if killed_at_second_batch else 0), text[-3000:]
    return text


def test_step_3_interrupted_and_rerun_as_written_gives_the_files_of_an_uninterrupted_run(
        labelled_root, tiny_encoder, tmp_path):
    repo, commands = tmp_path / "repo", step_3_commands()
    classify, localize = (partial(run_as_written, repo, script, commands[script]) for script in (CLASSIFY, LOCALIZE))
    out = repo / "outputs" / "submission"
    _project_folders(repo, labelled_root, tiny_encoder)

    classify(), localize()
    uninterrupted = _result_files(out)
    gated = [json.loads(line).get("gated", False) for line in uninterrupted["predictions.jsonl"].splitlines()]
    assert len(gated) == N_IMAGES and 0 < sum(gated) < N_IMAGES  # the gate keeps some images, not all
    assert b"\n" in uninterrupted["localization_test_results.csv"].strip()  # keypoints to compare
    shutil.rmtree(out)

    # Interrupted in the classifier's command, then step 3 rerun as written, interrupted in the localizer's.
    classify(killed_at_second_batch=True)
    (cache,) = out.glob(".classification_partial.*.csv")
    assert 1 < len(cache.read_text().splitlines()) < N_IMAGES and not (out / RESULT_FILES[0]).exists()
    classify()
    localize(killed_at_second_batch=True)
    assert 0 < len((out / "predictions.jsonl").read_text().splitlines()) < N_IMAGES
    assert not (out / "localization_test_results.csv").exists()
    # Step 3 rerun as written: the classifier has nothing left to score, the localizer finishes.
    assert f"{N_IMAGES} already scored, 0 to score" in classify()
    localize()
    # And once more, after both finished: nothing to do, the same files rewritten.
    assert f"{N_IMAGES} already scored, 0 to score" in classify()
    assert f"0 images predicted, {N_IMAGES} reused" in localize()

    rerun = _result_files(out)
    for name in RESULT_FILES:  # the run records hold no time, so they compare whole
        assert rerun[name] == uninterrupted[name], name


def _result_files(out: Path) -> dict[str, bytes]:
    """The files of both commands by name; the folder holds nothing else but the classifier's cache."""
    names = [path.name for path in out.iterdir() if not path.name.startswith(".classification_partial.")]
    assert sorted(names) == sorted(RESULT_FILES)
    return {name: (out / name).read_bytes() for name in RESULT_FILES}


def _project_folders(repo: Path, labelled_root: Path, tiny_encoder: Path) -> None:
    """data/test_images (8-bit and 16-bit radiographs), the classifier's adapter with its operating
    point, and the localizer's best_model with a tuned threshold, where step 3 expects them."""
    images = repo / "data" / "test_images"
    images.mkdir(parents=True)
    sources = sorted((labelled_root / "nih_filtered_images").iterdir())[: N_IMAGES - 2]
    for path in sources + sorted((labelled_root / "lidc_png_16_bit").iterdir())[:2]:
        shutil.copy(path, images)
    (repo / "checkpoints" / "classification").mkdir(parents=True)
    building = repo / "building"  # tiny_model_folders writes base/ and adapter/ here; both move out
    done = subprocess.run([sys.executable, "-c", BUILD_CLASSIFIER, str(building), str(GATE_THRESHOLD)],
                          cwd=repo, env=ENV, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    building.rmdir()
    best_model = _model_with_stretch(tiny_encoder, repo / "checkpoints" / "localization" / "best_model")
    model = HeatmapLocalizer.from_pretrained(best_model)
    model.config.min_confidence_count = 0.15  # as if tuned on validation: a random model's peaks lie near it
    model.save_pretrained(best_model)


def test_the_localizers_resume_check_reads_only_its_own_record(tmp_path):
    """A classifier's or a training run's record in the same folder is not the localizer's."""
    (tmp_path / "run_config.classification.json").write_text(json.dumps({"task": "classification_task",
                                                                         "config": {}}))
    (tmp_path / "run_config.json").write_text("not a record of an inference run")
    records = {"a.png": {"file_name": "a.png", "points": []}}
    check_resumable(tmp_path, records, {"min_confidence": 0.5})  # no record of its own: nothing to check
    write_run_config(tmp_path, {}, {"prediction_settings": {"min_confidence": 0.5}}, RUN_CONFIG_JSON)
    assert RUN_CONFIG_JSON == "run_config.localization.json"
    check_resumable(tmp_path, records, {"min_confidence": 0.5})
    with pytest.raises(DataError, match="different min_confidence"):  # its own record still guards the cache
        check_resumable(tmp_path, records, {"min_confidence": 0.9})
