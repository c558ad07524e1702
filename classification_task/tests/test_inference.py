"""Folder inference: batching, the answer position, adapters, resume, real radiographs, bad input."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from peft import get_peft_model
from PIL import Image
from transformers import AutoModelForImageTextToText, AutoProcessor

from classification_task import inference
from classification_task import model as classifier
from classification_task.model import QUESTION, answer_logits, answer_token_ids, lora_config, p_nodule_from_logits
from classification_task.evaluation.operating_point import write_operating_point

DATA_DIR = Path(__file__).parent / "data"
REPO_ROOT = Path(__file__).resolve().parents[2]
COLUMNS = ["file_name", "label", "confidence"]


def run(input_dir, output_dir, model_dir, *extra) -> pd.DataFrame:
    argv = ["--input_dir", str(input_dir), "--output_dir", str(output_dir), "--model_id", str(model_dir),
            "--num_workers", "0", *map(str, extra)]
    assert inference.main(argv) == 0
    return pd.read_csv(Path(output_dir) / inference.RESULTS_CSV)


@pytest.fixture
def image_dir(tmp_path) -> Path:
    """The three real radiographs plus two small synthetic ones (one JPEG, one in a sub-folder)."""
    folder = tmp_path / "images"
    folder.mkdir()
    for png in DATA_DIR.glob("*.png"):
        shutil.copy(png, folder)
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (96, 80), dtype=np.uint8)).save(folder / "synthetic.jpg")
    (folder / "sub").mkdir()
    Image.fromarray(rng.integers(0, 4000, (64, 64), dtype=np.uint16)).save(folder / "sub" / "deep.png")
    return folder


@pytest.fixture(scope="module")
def adapter_dir(tiny_model_dir, tmp_path_factory) -> Path:
    """A LoRA adapter whose B matrices are random (seeded), so that it changes the scores.

    Its A matrices are drawn from a seeded global generator: otherwise they, and every score the
    tests see, would depend on how many random draws the tests before it took."""
    model = AutoModelForImageTextToText.from_pretrained(tiny_model_dir)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = get_peft_model(model, lora_config(rank=4, alpha=8))
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.2)
    out = tmp_path_factory.mktemp("adapter")
    model.save_pretrained(out)
    return out


def test_batches_give_the_scores_of_batch_size_one(tiny_model_dir, image_dir, tmp_path):
    one = run(image_dir, tmp_path / "b1", tiny_model_dir, "--batch_size", 1, "--recursive")
    four = run(image_dir, tmp_path / "b4", tiny_model_dir, "--batch_size", 4, "--recursive")
    assert one["file_name"].tolist() == ["00000001_000.png", "00027426_000.png", "node21_3_16bit.png",
                                         "sub/deep.png", "synthetic.jpg"]
    np.testing.assert_allclose(four["confidence"], one["confidence"], atol=1e-4)
    flat = run(image_dir, tmp_path / "flat", tiny_model_dir)
    assert "sub/deep.png" not in set(flat["file_name"]) and len(flat) == 4


@pytest.mark.parametrize("padding_side", ["right", "left"])
def test_answer_position_with_padded_prompts_of_different_lengths(tiny_model_dir, padding_side):
    """Each row is read at its own last real token, whatever the padding."""
    processor = AutoProcessor.from_pretrained(tiny_model_dir)
    model = AutoModelForImageTextToText.from_pretrained(tiny_model_dir).eval()
    answer_ids = answer_token_ids(processor.tokenizer)
    questions = [QUESTION, QUESTION + " Take your time and look at both lung fields carefully."]
    texts = [processor.apply_chat_template(
        [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": q}]}],
        add_generation_prompt=True, tokenize=False) for q in questions]
    images = [inference.load_image(path) for path in sorted(DATA_DIR.glob("*.png"))[:2]]

    def p_nodule(rows):
        processor.tokenizer.padding_side = padding_side
        batch = processor(text=[texts[i] for i in rows], images=[[images[i]] for i in rows],
                          return_tensors="pt", padding=True)
        with torch.no_grad():
            return p_nodule_from_logits(answer_logits(model, dict(batch), answer_ids)), batch["attention_mask"]

    together, mask = p_nodule([0, 1])
    assert not mask.all()  # the shorter prompt really is padded
    alone = np.concatenate([p_nodule([0])[0], p_nodule([1])[0]])
    np.testing.assert_allclose(together, alone, atol=1e-4)


def test_merged_adapter_matches_and_adapter_changes_scores(tiny_model_dir, adapter_dir, tmp_path):
    base = run(DATA_DIR, tmp_path / "base", tiny_model_dir)
    tuned = run(DATA_DIR, tmp_path / "tuned", tiny_model_dir, "--adapter", adapter_dir)
    merged = run(DATA_DIR, tmp_path / "merged", tiny_model_dir, "--adapter", adapter_dir, "--merge_adapter")
    np.testing.assert_allclose(merged["confidence"], tuned["confidence"], atol=1e-4)
    assert np.abs(tuned["confidence"] - base["confidence"]).max() > 1e-3


def test_resume_after_a_crash_scores_only_the_rest(tiny_model_dir, image_dir, tmp_path, monkeypatch):
    reference = tmp_path / "uninterrupted"
    run(image_dir, reference, tiny_model_dir, "--batch_size", 1)  # 4 images
    scored_rows, crash_after_batches = [], [2]

    def counting_scorer(model, inputs, answer_ids):
        if len(scored_rows) == crash_after_batches[0]:
            raise RuntimeError("simulated crash")
        scored_rows.append(inputs["attention_mask"].shape[0])
        return answer_logits(model, inputs, answer_ids)

    monkeypatch.setattr(classifier, "answer_logits", counting_scorer)  # inside the scoring loop
    out = tmp_path / "resumed"
    with pytest.raises(RuntimeError, match="simulated crash"):
        run(image_dir, out, tiny_model_dir, "--batch_size", 1)
    assert not (out / inference.RESULTS_CSV).exists()  # never half-written
    (partial,) = out.glob(f"{inference.PARTIAL_PREFIX}.*.csv")
    with open(partial, "a") as handle:
        handle.write("node21_3_16bit.png,0.12")  # a crash in the middle of an append

    scored_rows.clear()
    crash_after_batches[0] = None
    run(image_dir, out, tiny_model_dir, "--batch_size", 1)
    assert sum(scored_rows) == 2  # node21 (its row was cut short) and synthetic.jpg
    assert (out / inference.RESULTS_CSV).read_bytes() == (reference / inference.RESULTS_CSV).read_bytes()

    scored_rows.clear()  # a third run with another threshold only relabels
    relabelled = run(image_dir, out, tiny_model_dir, "--batch_size", 1, "--threshold", 1.0)
    assert scored_rows == [] and set(relabelled["label"]) == {"No Finding"}


def test_list_images_finds_image_files_and_links_to_them(tmp_path):
    folder, outside = tmp_path / "in", tmp_path / "secret.png"
    (folder / "sub" / "dir.png").mkdir(parents=True)  # a folder, not an image
    outside.write_bytes(b"x")
    for name in ("b.PNG", "a.jpeg", "notes.txt", "sub/c.jpg"):
        (folder / name).write_bytes(b"x")
    (folder / "link.png").symlink_to(outside)
    assert inference.list_images(folder, recursive=False) == ["a.jpeg", "b.PNG", "link.png"]
    assert inference.list_images(folder, recursive=True) == ["a.jpeg", "b.PNG", "link.png", "sub/c.jpg"]


def test_partial_scores_drop_a_truncated_last_row(tmp_path):
    path = tmp_path / "partial.csv"
    path.write_text("file_name,confidence\na.png,0.25\nb,c.png,0.5\nb.png,0.7")
    cache = inference.PartialScores(path)
    assert cache.load() == {"a.png": 0.25}
    cache.append(["b.png", "c,d.png"], np.array([0.75, 0.5]))
    assert cache.load() == {"a.png": 0.25, "b.png": 0.75, "c,d.png": 0.5}


def test_cli_on_real_radiographs(tiny_model_dir, tmp_path):
    """8-bit 512 px NIH and 16-bit 1024 px images, run as a script, with worker processes."""
    out = tmp_path / "out"
    result = subprocess.run(
        [sys.executable, "classification_task/inference.py", "--input_dir", str(DATA_DIR), "--output_dir", str(out),
         "--model_id", str(tiny_model_dir), "--batch_size", "2", "--threshold", "0.5"],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr
    frame = pd.read_csv(out / inference.RESULTS_CSV)
    assert list(frame.columns) == COLUMNS
    assert frame["file_name"].tolist() == sorted(p.name for p in DATA_DIR.glob("*.png"))
    assert frame["confidence"].between(0, 1).all()
    assert (frame["label"] == np.where(frame["confidence"] >= 0.5, "Nodule", "No Finding")).all()
    assert (out / "run_config.classification.json").is_file()


def test_corrupt_file_is_skipped_and_counted(tiny_model_dir, tmp_path, capsys):
    folder = tmp_path / "images"
    shutil.copytree(DATA_DIR, folder, ignore=shutil.ignore_patterns("*.md"))
    (folder / "x.png").write_bytes(b"not a png")
    frame = run(folder, tmp_path / "out", tiny_model_dir, "--batch_size", 2, "--num_workers", 1)
    assert len(frame) == 3 and "x.png" not in set(frame["file_name"])
    assert "skipped 1 unreadable file(s)" in capsys.readouterr().out
    assert pd.read_csv(tmp_path / "out" / inference.UNREADABLE_CSV)["file_name"].tolist() == ["x.png"]


def test_missing_input_dir_is_one_line_exit_2(tmp_path):
    missing = tmp_path / "nowhere"
    result = subprocess.run(
        [sys.executable, "-m", "classification_task.inference", "--input_dir", str(missing),
         "--output_dir", str(tmp_path / "out")],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and str(missing) in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("case", ["no_images", "no_adapter", "bad_threshold", "bad_batch_size"])
def test_bad_input_is_one_line_exit_2(case, tiny_model_dir, tmp_path, capsys):
    argv = ["--input_dir", str(DATA_DIR), "--output_dir", str(tmp_path / "out"), "--model_id", str(tiny_model_dir)]
    argv += {
        "no_images": ["--input_dir", str(tmp_path)],
        "no_adapter": ["--adapter", str(tmp_path / "checkpoints" / "best_adapter")],
        "bad_threshold": ["--threshold", "1.5"],
        "bad_batch_size": ["--batch_size", "0"],
    }[case]
    assert inference.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err


# ----------------------------------------------------------------------------- operating point


def _with_operating_point(adapter_dir, tmp_path, model_dir, **changes) -> Path:
    """A copy of the adapter folder with an operating point recorded for `model_dir` (nf4 by default)."""
    folder = tmp_path / "adapter_with_point"
    shutil.copytree(adapter_dir, folder)
    record = {"model_kind": "medgemma_lora", "base_model": str(model_dir), "quantization": "nf4",
              "preprocessing": {"clip_low_pct": 1.0, "clip_high_pct": 99.0, "image_size_px": None},
              "thresholds": {"max_f1": 0.5, "spec_0.99": 0.99}, "default_threshold": "max_f1"} | changes
    write_operating_point(folder, record)
    return folder


def _run_config(output_dir) -> dict:
    return json.loads((Path(output_dir) / inference.RUN_CONFIG_JSON).read_text())


def test_an_adapter_without_operating_point_keeps_the_old_defaults_with_a_note(tiny_model_dir, adapter_dir,
                                                                                tmp_path, capsys):
    results = run(DATA_DIR, tmp_path / "out", tiny_model_dir, "--adapter", adapter_dir)
    notes = [line for line in capsys.readouterr().err.splitlines() if "operating_point.json" in line]
    assert len(notes) == 1 and notes[0].startswith("note:") and "--threshold 0.5" in notes[0]
    recorded = _run_config(tmp_path / "out")
    assert recorded["config"]["quantization"] == "none"
    assert recorded["threshold"] == {"value": 0.5, "source": "default", "name": None, "file": None}
    assert (results["label"] == np.where(results["confidence"] >= 0.5, "Nodule", "No Finding")).all()


def test_the_operating_point_sets_quantization_preprocessing_and_the_tuned_threshold(tiny_model_dir, adapter_dir,
                                                                                   tmp_path, capsys):
    # Scores of the operating point's own set-up (nf4, its clipping): a threshold tuned on them labels all
    # but the lowest-scored image Nodule, whatever the adapter's random weights.
    untuned = _with_operating_point(adapter_dir, tmp_path / "untuned", tiny_model_dir)
    scores = run(DATA_DIR, tmp_path / "plain", tiny_model_dir, "--adapter", untuned)["confidence"]
    tuned = float(np.sort(scores)[1])
    adapter = _with_operating_point(adapter_dir, tmp_path, tiny_model_dir, thresholds={"max_f1": tuned})
    capsys.readouterr()
    argv = ["--input_dir", str(DATA_DIR), "--output_dir", str(tmp_path / "out"), "--adapter", str(adapter),
            "--num_workers", "0"]  # no --model_id: the recorded base
    assert inference.main(argv) == 0
    assert "warning" not in capsys.readouterr().err
    recorded = _run_config(tmp_path / "out")
    assert {key: recorded["config"][key] for key in ("model_id", "quantization", "clip_low_pct", "clip_high_pct",
                                                     "threshold")} == {
        "model_id": str(tiny_model_dir), "quantization": "nf4", "clip_low_pct": 1.0, "clip_high_pct": 99.0,
        "threshold": tuned}
    assert recorded["threshold"] == {"value": tuned, "source": "operating_point", "name": "max_f1",
                                     "file": str(adapter / "operating_point.json")}
    # The label column (which the localizer's gate reads) follows the tuned threshold.
    results = pd.read_csv(tmp_path / "out" / inference.RESULTS_CSV)
    assert (results["label"] == np.where(results["confidence"] >= tuned, "Nodule", "No Finding")).all()
    assert 0 < (results["label"] == "No Finding").sum() < len(results)

    overridden = run(DATA_DIR, tmp_path / "override", tiny_model_dir, "--adapter", adapter, "--threshold", 0.0)
    assert set(overridden["label"]) == {"Nodule"}
    assert _run_config(tmp_path / "override")["threshold"]["source"] == "--threshold"


@pytest.mark.parametrize("flags, asked", [
    (["--quantization", "none"], "--quantization none"),
    (["--merge_adapter"], "--quantization none (--merge_adapter"),
    (["--clip_low_pct", "0.5"], "--clip_low_pct 0.5"),
])
def test_asking_for_another_set_up_warns_in_one_line(tiny_model_dir, adapter_dir, tmp_path, capsys, flags, asked):
    adapter = _with_operating_point(adapter_dir, tmp_path, tiny_model_dir)
    run(DATA_DIR, tmp_path / "out", tiny_model_dir, "--adapter", adapter, *flags)
    warnings = [line for line in capsys.readouterr().err.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and asked in warnings[0] and "operating_point.json" in warnings[0]
    assert _run_config(tmp_path / "out")["threshold"]["source"] == "operating_point"


def test_another_base_model_warns(tiny_model_dir, adapter_dir, tmp_path, capsys):
    adapter = _with_operating_point(adapter_dir, tmp_path, "google/medgemma-1.5-4b-it", quantization="none")
    run(DATA_DIR, tmp_path / "out", tiny_model_dir, "--adapter", adapter)
    (warning,) = [line for line in capsys.readouterr().err.splitlines() if line.startswith("warning:")]
    assert f"--model_id {tiny_model_dir}" in warning and "google/medgemma-1.5-4b-it" in warning


def test_an_operating_point_of_another_model_kind_is_one_line_exit_2(tiny_model_dir, adapter_dir, tmp_path, capsys):
    adapter = _with_operating_point(adapter_dir, tmp_path, tiny_model_dir, model_kind="encoder")
    argv = ["--input_dir", str(DATA_DIR), "--output_dir", str(tmp_path / "out"), "--adapter", str(adapter)]
    assert inference.main(argv) == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error.startswith("error:") and "'encoder'" in error and "Traceback" not in error
    assert not (tmp_path / "out").exists()
