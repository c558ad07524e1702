"""The inference command end to end, with the scripted test double.

CheXagent-2 itself cannot be downloaded or run here (no hub access; its remote
code needs transformers 4.40.0), so these tests register `--backend scripted`
(`ScriptedBackend`, tests/scripted_localizer.py), which answers in the trained
format and goes through the same reading, parser, coordinate, cache and CSV
code. The real backend is checked for its environment guard and, with fakes
for the tokenizer and model, for the exact calls it makes.
"""
import csv
import json
import math
import os
import re
import shutil
import subprocess
import sys
import types
from pathlib import Path

import pytest
import torch
import transformers
from PIL import Image

from localization_task.chexagent2 import backend as backends
from localization_task.chexagent2.backend import CheXagent2Backend, ModelInput
from localization_task.inference import PREDICTIONS_JSONL, RESULTS_CSV, RUN_CONFIG_JSON, InferenceConfig, main
from localization_task.tests.scripted_localizer import ScriptedBackend, check_model_input, scripted_response

pytestmark = pytest.mark.usefixtures("scripted_backend")

REPO_ROOT = Path(__file__).resolve().parents[2]
DATA = Path(__file__).parent / "data"
SHA = "0123456789abcdef0123456789abcdef01234567"  # well-formed, not a real commit


def _read_csv(path):
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def _read_jsonl(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def _scripted(input_dir, output_dir, *extra):
    return main(["--input_dir", str(input_dir), "--output_dir", str(output_dir), "--backend", "scripted", *extra])


@pytest.fixture
def many_images(tmp_path):
    """Eight real radiographs under distinct names, two in a sub-folder."""
    folder = tmp_path / "images"
    (folder / "sub").mkdir(parents=True)
    sources = sorted(DATA.glob("*.png"))
    for i in range(8):
        name = f"sub/img_{i}.png" if i >= 6 else f"img_{i}.png"
        shutil.copy(sources[i % len(sources)], folder / name)
    return folder


def test_jpeg_and_odd_names_go_through(tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    Image.open(DATA / "00000001_000.png").save(folder / "a, b.jpg", quality=90)  # comma in name
    Image.open(DATA / "00000001_000.png").crop((0, 0, 512, 300)).save(folder / "wide.JPEG")
    assert _scripted(folder, tmp_path / "out", "--labels", "*") == 0
    records = _read_jsonl(tmp_path / "out" / PREDICTIONS_JSONL)
    assert [(r["file_name"], r["width"], r["height"]) for r in records] == [
        ("a, b.jpg", 512, 512),
        ("wide.JPEG", 512, 300),
    ]
    rows = _read_csv(tmp_path / "out" / RESULTS_CSV)
    assert {row["file_name"] for row in rows} <= {"a, b.jpg", "wide.JPEG"}


def test_scripted_backend_over_the_real_fixtures(tmp_path, capsys, monkeypatch):
    model_inputs = []
    real_generate = ScriptedBackend.generate

    def spy(self, item):
        model_inputs.append(item.path)
        return real_generate(self, item)  # checks: existing 8-bit RGB PNG, original size

    monkeypatch.setattr(ScriptedBackend, "generate", spy)
    out = tmp_path / "out"
    assert _scripted(DATA, out) == 0
    assert len(model_inputs) == 3 and not any(path.exists() for path in model_inputs)
    sizes = {"00000001_000.png": (512, 512), "00027426_000.png": (512, 512), "node21_3_16bit.png": (1024, 1024)}

    records = _read_jsonl(out / PREDICTIONS_JSONL)
    assert [r["file_name"] for r in records] == sorted(sizes)
    for r in records:
        assert {"file_name", "width", "height", "response", "boxes", "points"} <= r.keys()
        assert (r["width"], r["height"]) == sizes[r["file_name"]]
        assert r["response"] == scripted_response(r["file_name"])
        for box in r["boxes"]:
            assert box["xyxy_px"][0] == pytest.approx(box["xyxy_pct"][0] / 100 * r["width"])
            assert box["xyxy_px"][3] == pytest.approx(box["xyxy_pct"][3] / 100 * r["height"])
        assert len(r["points"]) == len({tuple(b["xyxy_pct"]) for b in r["boxes"] if b["kept"]})

    with (out / RESULTS_CSV).open(newline="") as f:
        assert next(csv.reader(f)) == ["file_name", "x", "y", "confidence"]
    rows = _read_csv(out / RESULTS_CSV)
    assert rows, "the scripted answers for the fixtures include boxes"
    assert len(rows) == sum(len(r["points"]) for r in records)
    for row in rows:
        width, height = sizes[row["file_name"]]
        assert 0 <= float(row["x"]) <= width and 0 <= float(row["y"]) <= height
        assert 0 < float(row["confidence"]) <= 1  # from the double's token probabilities
    assert sorted(float(row["confidence"]) for row in rows) == pytest.approx(
        sorted(p["confidence"] for r in records for p in r["points"]))

    run = json.loads((out / RUN_CONFIG_JSON).read_text())
    assert run["config"]["backend"] == "scripted" and "numpy" in run["versions"]
    assert "3 images predicted" in capsys.readouterr().out


def test_recursive_names_are_posix_paths_relative_to_input_dir(many_images, tmp_path):
    assert _scripted(many_images, tmp_path / "flat") == 0
    assert len(_read_jsonl(tmp_path / "flat" / PREDICTIONS_JSONL)) == 6
    assert _scripted(many_images, tmp_path / "deep", "--recursive") == 0
    names = [r["file_name"] for r in _read_jsonl(tmp_path / "deep" / PREDICTIONS_JSONL)]
    assert names[-2:] == ["sub/img_6.png", "sub/img_7.png"]


def test_resume_after_a_crash_gives_the_same_csv(many_images, tmp_path, monkeypatch):
    assert _scripted(many_images, tmp_path / "reference", "--recursive") == 0
    expected = (tmp_path / "reference" / RESULTS_CSV).read_text()

    calls = []
    real_generate = ScriptedBackend.generate

    def crash_after_three(self, item):
        if len(calls) == 3:
            raise RuntimeError("simulated crash (e.g. CUDA out of memory)")
        calls.append(item.file_name)
        return real_generate(self, item)

    monkeypatch.setattr(ScriptedBackend, "generate", crash_after_three)
    out = tmp_path / "resumed"
    with pytest.raises(RuntimeError, match="simulated crash"):
        _scripted(many_images, out, "--recursive")
    assert len(_read_jsonl(out / PREDICTIONS_JSONL)) == 3
    assert not (out / RESULTS_CSV).exists()

    monkeypatch.setattr(ScriptedBackend, "generate", real_generate)
    seen = []
    monkeypatch.setattr(
        ScriptedBackend, "generate", lambda self, item: seen.append(item.file_name) or real_generate(self, item)
    )
    assert _scripted(many_images, out, "--recursive") == 0
    assert set(seen).isdisjoint(calls) and len(seen) == 5  # only the missing images
    assert (out / RESULTS_CSV).read_text() == expected
    assert len(_read_jsonl(out / PREDICTIONS_JSONL)) == 8


def test_truncated_last_record_is_ignored_and_redone(many_images, tmp_path, capsys):
    out = tmp_path / "out"
    assert _scripted(many_images, out) == 0
    expected = (out / RESULTS_CSV).read_text()
    jsonl = out / PREDICTIONS_JSONL
    text = jsonl.read_text()
    jsonl.write_text(text[: text.rstrip("\n").rfind("\n") + 1] + text.splitlines()[-1][:25])
    (out / RESULTS_CSV).unlink()

    assert _scripted(many_images, out) == 0
    captured = capsys.readouterr()
    assert "incomplete last record" in captured.err
    assert "1 images predicted, 5 reused" in captured.out
    assert (out / RESULTS_CSV).read_text() == expected
    assert [r["file_name"] for r in _read_jsonl(jsonl)] == [f"img_{i}.png" for i in range(6)]


def test_resume_refuses_other_settings(many_images, tmp_path, capsys):
    out = tmp_path / "out"
    assert _scripted(many_images, out) == 0
    assert _scripted(many_images, out, "--finding", "mass") == 2
    assert "different prompt" in capsys.readouterr().err


def test_unreadable_images_are_skipped_and_counted(many_images, tmp_path, capsys):
    (many_images / "broken.png").write_bytes(b"not a png at all")
    out = tmp_path / "out"
    assert _scripted(many_images, out) == 0
    captured = capsys.readouterr()
    assert "skipped unreadable image" in captured.err and "broken.png" in captured.err
    assert "1 skipped as unreadable" in captured.out
    assert "broken.png" not in (out / PREDICTIONS_JSONL).read_text()


def _single_sentence_error(err):
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err
    return lines[0]


@pytest.mark.parametrize(
    "setup, expected",
    [
        (lambda d: None, "does not exist"),
        (lambda d: d.mkdir(), "no .png/.jpg/.jpeg/.dcm images"),
    ],
)
def test_bad_input_exits_2_with_one_sentence(tmp_path, capsys, setup, expected):
    input_dir = tmp_path / "missing_or_empty"
    setup(input_dir)
    assert _scripted(input_dir, tmp_path / "out") == 2
    line = _single_sentence_error(capsys.readouterr().err)
    assert expected in line and str(input_dir) in line


def test_output_dir_defaults_to_outputs_localization(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["--input_dir", str(DATA), "--backend", "scripted"]) == 0
    assert (tmp_path / "outputs" / "localization" / RESULTS_CSV).is_file()


def test_input_dir_is_required_and_choices_come_from_the_config(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--backend", "scripted"])
    assert exit_info.value.code == 2 and "--input_dir" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--input_dir", str(DATA), "--backend", "dry"])
    assert "chexagent2" in capsys.readouterr().err
    with pytest.raises(ValueError, match="--device must be one of auto, cuda, cpu"):
        InferenceConfig(input_dir=DATA, device="tpu")


def test_output_dir_that_is_a_file_exits_2(tmp_path, capsys):
    (tmp_path / "out").write_text("x")
    assert _scripted(DATA, tmp_path / "out") == 2
    assert "is a file" in _single_sentence_error(capsys.readouterr().err)


def test_foreign_run_config_exits_2(tmp_path, capsys):
    out = tmp_path / "out"
    assert _scripted(DATA, out) == 0
    (out / RUN_CONFIG_JSON).write_text("not json")
    capsys.readouterr()
    assert _scripted(DATA, out) == 2
    assert "not a run config" in _single_sentence_error(capsys.readouterr().err)


def test_no_readable_image_exits_2(tmp_path, capsys):
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "bad.png").write_bytes(b"x")
    assert _scripted(tmp_path / "images", tmp_path / "out") == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and "skipped unreadable image" in err
    assert err.splitlines()[-1] == (
        f"error: none of the 1 images in {tmp_path / 'images'} could be read: check the files."
    )


@pytest.mark.parametrize(
    "extra, expected",
    [
        (["--revision", "main"], "not a pin"),
        (["--clip_low_pct", "99", "--clip_high_pct", "1"], "low < high"),
        (["--prompt", "Find {finding} near {place}"], "placeholder"),
    ],
)
def test_bad_settings_exit_2_with_one_sentence(tmp_path, capsys, extra, expected):
    assert _scripted(DATA, tmp_path / "out", *extra) == 2
    assert expected in _single_sentence_error(capsys.readouterr().err)


def test_help_names_the_second_environment_and_its_backend(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    for phrase in ("transformers==4.40.0", "chexagent2/requirements.txt", "--backend chexagent2", "probability"):
        assert phrase in text


@pytest.mark.parametrize("how", [["localization_task/inference.py"], ["-m", "localization_task.inference"]])
def test_runs_as_a_script_and_as_a_module(tmp_path, how):
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    command = [sys.executable, "-m", "localization_task.tests.scripted_localizer", *how,  # registers the double
               "--input_dir", str(DATA), "--output_dir", str(tmp_path), "--backend", "scripted"]
    result = subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert len(_read_csv(tmp_path / RESULTS_CSV)) >= 1


# --- the real CheXagent-2 backend ------------------------------------------------


@pytest.mark.skipif(transformers.__version__ == "4.40.0", reason="checks the main environment")
def test_real_backend_in_the_main_environment_exits_2(tmp_path, capsys):
    code = main(["--input_dir", str(DATA), "--output_dir", str(tmp_path / "out"), "--backend", "chexagent2",
                 "--revision", SHA])
    assert code == 2
    line = _single_sentence_error(capsys.readouterr().err)
    assert "transformers==4.40.0" in line and transformers.__version__ in line
    assert "localization_task/chexagent2/requirements.txt" in line and "--backend heatmap" in line
    assert not (tmp_path / "out").exists()


class _FakeTokenizer:
    """Stands in for CheXagent-2's remote tokenizer, recording the calls."""

    calls: dict = {}

    @classmethod
    def from_pretrained(cls, model_id, **kwargs):
        cls.calls["tokenizer"] = (model_id, kwargs)
        return cls()

    def from_list_format(self, items):
        self.calls["list_format"] = items
        assert Path(items[0]["image"]).is_file()  # the model opens this path itself
        check_model_input(ModelInput("x", Path(items[0]["image"]), 300, 200))
        return "QUERY"

    def apply_chat_template(self, conversation, **kwargs):
        self.calls["chat"] = (conversation, kwargs)
        return torch.tensor([[1, 2, 3]])

    # Token ids 7, 8, 9 of the fake vocabulary decode to these pieces.
    PIECES = {7: "<|ref|>Nodule/Mass<|/ref|>", 8: "<|box|>(10,20),(30,40)<|/box|>", 9: "<|endoftext|>"}

    def decode(self, ids, **kwargs):
        self.calls.setdefault("decode", []).append((ids.tolist(), kwargs))
        return "".join(self.PIECES[i] for i in ids.tolist())


class _FakeModel:
    """Stands in for the remote-code model: generate() returns the reference's output structure."""

    @classmethod
    def from_pretrained(cls, model_id, **kwargs):
        _FakeTokenizer.calls["model"] = (model_id, kwargs)
        return cls()

    def to(self, device=None, dtype=None):
        _FakeTokenizer.calls["to"] = (device, dtype)
        return self

    def eval(self):
        return self

    def generate(self, input_ids, **kwargs):
        _FakeTokenizer.calls["generate"] = (input_ids.tolist(), kwargs)
        # One step of logits per new token; the chosen token (7, 8, 9) has logit log(p) + c.
        chosen_probs = [0.9, 0.4, 0.99]
        scores = []
        for token, prob in zip((7, 8, 9), chosen_probs):
            logits = torch.full((1, 10), -1e9)
            logits[0, token] = math.log(prob)
            logits[0, 0] = math.log(1 - prob)  # the rest of the probability mass
            scores.append(logits)
        return types.SimpleNamespace(sequences=torch.tensor([[1, 2, 3, 7, 8, 9]]), scores=tuple(scores))

    def compute_transition_scores(self, sequences, scores, normalize_logits=False):
        # As in transformers: log-softmax of each step's scores, taken at the chosen token.
        steps = torch.stack(scores, dim=1).log_softmax(-1) if normalize_logits else torch.stack(scores, dim=1)
        chosen = sequences[:, -len(scores):]
        return steps.gather(-1, chosen[..., None])[..., 0]


@pytest.fixture
def fake_chexagent_env(monkeypatch):
    _FakeTokenizer.calls = {}
    # By dotted path: the first import of some transformers submodules replaces the
    # `transformers` entry in sys.modules, and the backend imports whatever is there now.
    monkeypatch.setattr("transformers.__version__", "4.40.0")
    monkeypatch.setattr("transformers.AutoTokenizer", _FakeTokenizer)
    monkeypatch.setattr("transformers.AutoModelForCausalLM", _FakeModel)
    return _FakeTokenizer.calls


def test_real_backend_needs_a_pinned_revision_before_loading(fake_chexagent_env, tmp_path, capsys):
    assert main(["--input_dir", str(DATA), "--output_dir", str(tmp_path), "--backend", "chexagent2"]) == 2
    assert "--revision" in _single_sentence_error(capsys.readouterr().err)
    assert fake_chexagent_env == {}  # nothing was loaded


def test_real_backend_load_failure_exits_2(fake_chexagent_env, monkeypatch, tmp_path, capsys):
    def offline(model_id, **kwargs):
        raise OSError("We couldn't connect to 'https://huggingface.co'.\nCheck your connection.")

    monkeypatch.setattr(_FakeTokenizer, "from_pretrained", offline)
    assert main(["--input_dir", str(DATA), "--output_dir", str(tmp_path), "--backend", "chexagent2",
                 "--revision", SHA]) == 2
    line = _single_sentence_error(capsys.readouterr().err)
    assert "could not load StanfordAIMI/CheXagent-2-3b" in line and "couldn't connect" in line


def test_real_backend_makes_the_reference_calls(fake_chexagent_env, tmp_path):
    image = tmp_path / "input.png"
    Image.new("RGB", (300, 200)).save(image)
    backend = CheXagent2Backend(prompt="PROMPT", revision=SHA, device="cpu")
    prediction = backend.answer(ModelInput("a.png", image, 300, 200))
    calls = fake_chexagent_env

    model_id, kwargs = calls["tokenizer"]
    assert model_id == "StanfordAIMI/CheXagent-2-3b"
    assert kwargs == {"revision": SHA, "trust_remote_code": True}
    model_id, kwargs = calls["model"]
    assert kwargs["revision"] == SHA and kwargs["trust_remote_code"] is True
    assert kwargs["torch_dtype"] == torch.float32  # bfloat16 on a GPU
    assert calls["to"] == ("cpu", torch.float32)  # loaded, then cast
    assert calls["list_format"] == [{"image": str(image)}, {"text": "PROMPT"}]
    conversation, kwargs = calls["chat"]
    assert conversation == [
        {"from": "system", "value": backends.SYSTEM_PROMPT},
        {"from": "human", "value": "QUERY"},
    ]
    assert kwargs == {"add_generation_prompt": True, "return_tensors": "pt"}
    _, kwargs = calls["generate"]
    assert kwargs["do_sample"] is False and kwargs["num_beams"] == 1 and kwargs["max_new_tokens"] == 512
    assert kwargs["output_scores"] is True and kwargs["return_dict_in_generate"] is True
    # New tokens only, one at a time, special tokens kept.
    assert calls["decode"] == [([t], {"skip_special_tokens": False}) for t in (7, 8, 9)]
    # The box's confidence is the probability of its one token.
    assert [(p.x_px, p.y_px) for p in prediction.points] == [(60.0, 60.0)]
    assert prediction.points[0].confidence == pytest.approx(0.4)


def test_real_backend_on_process_gpu_is_cast_to_bf16_after_loading(fake_chexagent_env, monkeypatch):
    """Process 1 of a torchrun on a 2-GPU machine (no GPU here: torch.cuda is mocked).

    The remote code builds its resampler's pos_embed with `.float()`, which
    `torch_dtype=bfloat16` leaves in float32: the model must be cast after loading.
    """
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    backend = CheXagent2Backend(prompt="PROMPT", revision=SHA)
    assert backend.device == "cuda:1"
    assert fake_chexagent_env["model"][1]["torch_dtype"] == torch.bfloat16
    assert fake_chexagent_env["to"] == ("cuda:1", torch.bfloat16)


@pytest.mark.gpu
@pytest.mark.skipif(
    not (torch.cuda.is_available() and transformers.__version__ == "4.40.0" and os.environ.get("CHEXAGENT2_REVISION")),
    reason="needs a GPU, the CheXagent-2 environment and CHEXAGENT2_REVISION (a commit SHA)",
)
def test_real_model_on_the_fixtures(tmp_path):
    revision = os.environ["CHEXAGENT2_REVISION"]
    assert main(["--input_dir", str(DATA), "--output_dir", str(tmp_path), "--backend", "chexagent2",
                 "--revision", revision]) == 0
    for record in _read_jsonl(tmp_path / PREDICTIONS_JSONL):
        assert re.search(r"<\|box\|>|[Nn]o ", record["response"]), record["response"]
