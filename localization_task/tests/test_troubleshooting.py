"""Every message docs/troubleshooting.md lists for localization, one case each.

The command exits with status 2 and a last line `error: ...` holding the listed phrase, without a
traceback, and leaves no temporary file and no output beyond the complete files docs/troubleshooting.md names.
"""

from pathlib import Path

import pytest
import transformers

from localization_task import inference, metrics

REPO = Path(__file__).resolve().parents[2]
DATA = Path(__file__).parent / "data"
SHA = "0123456789abcdef0123456789abcdef01234567"  # well-formed, not a real commit
CASES = {}


def case(name: str, phrase: str, allowed: tuple[str, ...] = ()):
    """Register a setup `(tmp_path, monkeypatch) -> (main, argv)`; `allowed`: files it may leave."""
    def register(setup):
        CASES[name] = (setup, phrase, set(allowed))
        return setup
    return register


def _infer(tmp, *extra, input_dir=DATA):
    return inference.main, ["--input_dir", str(input_dir), "--output_dir", str(tmp / "out"), *extra]


def _chexagent2(tmp, *extra):
    return _infer(tmp, "--backend", "chexagent2", *extra)


def _pretend_chexagent_environment(monkeypatch):
    monkeypatch.setattr("transformers.__version__", "4.40.0")


if transformers.__version__ != "4.40.0":
    @case("the main environment", "needs transformers==4.40.0")
    def _(tmp, monkeypatch):
        return _chexagent2(tmp, "--revision", SHA)


@case("no revision", "needs a pinned model commit")
def _(tmp, monkeypatch):
    _pretend_chexagent_environment(monkeypatch)
    return _chexagent2(tmp)


@case("a branch for a revision", "is not a pin")
def _(tmp, monkeypatch):
    return _chexagent2(tmp, "--revision", "main")


@case("the model does not load", "could not load StanfordAIMI/CheXagent-2-3b")
def _(tmp, monkeypatch):
    _pretend_chexagent_environment(monkeypatch)

    def offline(*args, **kwargs):
        raise OSError("We couldn't connect to 'https://huggingface.co' to load the files.")

    monkeypatch.setattr("transformers.AutoTokenizer.from_pretrained", offline)
    return _chexagent2(tmp, "--revision", SHA)


@case("other settings", "holds predictions made with a different")
def _(tmp, monkeypatch):
    assert inference.main(_infer(tmp, "--backend", "scripted")[1]) == 0
    return _infer(tmp, "--backend", "scripted", "--finding", "mass")


@case("no input folder", "does not exist: pass an existing folder")
def _(tmp, monkeypatch):
    return _infer(tmp, "--backend", "scripted", input_dir=tmp / "nowhere")


@case("output is a file", "is a file")
def _(tmp, monkeypatch):
    (tmp / "out").write_text("x")
    return _infer(tmp, "--backend", "scripted")


@case("no readable image", "could be read: check the files", allowed=("out/run_config.localization.json",))
def _(tmp, monkeypatch):
    (tmp / "images").mkdir()
    (tmp / "images" / "broken.png").write_bytes(b"not a png")
    return _infer(tmp, "--backend", "scripted", input_dir=tmp / "images")


def _evaluate(tmp, predictions: Path):
    (tmp / "gt.csv").write_text("file_name,x,y\na.png,10,10\n")
    return metrics.main, ["--predictions", str(predictions), "--ground_truth", str(tmp / "gt.csv"),
                          "--output_dir", str(tmp / "eval")]


@case("no predictions file", "does not exist: check the path")
def _(tmp, monkeypatch):
    return _evaluate(tmp, tmp / "absent.csv")


@case("a NaN coordinate", "not finite")
def _(tmp, monkeypatch):
    (tmp / "pred.csv").write_text("file_name,x,y\na.png,nan,10\n")
    return _evaluate(tmp, tmp / "pred.csv")


def _files(folder: Path) -> set[str]:
    return {path.relative_to(folder).as_posix() for path in folder.rglob("*") if path.is_file()}


def troubleshooting_section() -> str:
    return (REPO / "docs" / "troubleshooting.md").read_text()


@pytest.mark.parametrize("name", list(CASES))
def test_each_listed_message_exits_2_and_leaves_nothing_half_written(name, tmp_path, monkeypatch, capsys,
                                                                    scripted_backend):
    setup, phrase, allowed = CASES[name]
    assert f"`{phrase}`" in troubleshooting_section(), "docs/troubleshooting.md lists the message"
    main, argv = setup(tmp_path, monkeypatch)
    before = _files(tmp_path)
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.count("error: ") == 1
    last = err.strip().splitlines()[-1]
    assert last.startswith("error: ") and phrase in last, err[-2000:]
    new = _files(tmp_path) - before
    assert new <= allowed, f"left behind: {sorted(new - allowed)}"  # temporary files included
