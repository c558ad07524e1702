"""Every message docs/troubleshooting.md lists for classification, one case each.

The command exits with status 2 and a last line `error: ...` holding the listed phrase, without a
traceback, and leaves no temporary file and no output beyond the complete files docs/troubleshooting.md names.
"""

import shutil
from pathlib import Path

import pytest
from PIL import Image

from classification_task import inference, metrics, train
from classification_task.dataset import load_labels
from classification_task.split import split_by_patient
from classification_task.demo.synthetic import generate_dataset

REPO = Path(__file__).resolve().parents[2]
DATA_DIR = Path(__file__).parent / "data"
CASES = {}


def case(name: str, phrase: str, allowed: tuple[str, ...] = (), readme: str | None = None):
    """Register a setup `(tmp_path, data_root, model_dir) -> (main, argv)` for a message.

    `phrase` must be in the error line and, in backticks (or `readme` if given), in docs/troubleshooting.md;
    `allowed` lists the files (relative to tmp_path) the failed command may leave.
    """
    def register(setup):
        CASES[name] = (setup, phrase, set(allowed), readme or phrase)
        return setup
    return register


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("data") / "nodulocc"
    generate_dataset(root, n_images=60, positive_rate=0.3, size_px=64, seed=2)
    return root


def _train(data_root, model_dir, tmp, *extra):
    return train.main, ["--data_root", str(data_root), "--model_id", str(model_dir), "--output_dir", str(tmp / "out"),
                        "--checkpoint_dir", str(tmp / "ckpt"), "--quantization", "none", "--num_workers", "0",
                        "--no-gradient_checkpointing", "--max_steps", "8", "--eval_steps", "100", "--batch_size", "8",
                        "--bootstrap", "0", "--no-zero_shot", *extra]


def _labels(tmp, text: str | bytes, images=()) -> Path:
    root = tmp / "labelled"
    (root / "nih_filtered_images").mkdir(parents=True)
    for name in images:
        Image.new("L", (32, 32), 100).save(root / "nih_filtered_images" / name)
    path = root / "classification_labels.csv"
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    return root


# ----------------------------------------------------------------------------- train.py


@case("no labels CSV", "classification_labels.csv not found")
def _(tmp, data_root, model_dir):
    return _train(tmp / "nowhere", model_dir, tmp)


@case("a column missing", "lacks the column(s)")
def _(tmp, data_root, model_dir):
    return _train(_labels(tmp, "file_name,LIDC_ID\na.png,\n"), model_dir, tmp)


@case("unknown labels", "unknown label values")
def _(tmp, data_root, model_dir):
    return _train(_labels(tmp, "file_name,label\na.png,nodule\n"), model_dir, tmp)


@case("not a CSV", "could not be read as CSV")
def _(tmp, data_root, model_dir):
    return _train(_labels(tmp, b"\xff\xfe\x00\x81 binary"), model_dir, tmp)


@case("images missing", "are missing from")
def _(tmp, data_root, model_dir):
    return _train(_labels(tmp, "file_name,label\n00000001_000.png,Nodule\n"), model_dir, tmp)


@case("too few patients", "cannot be split by patient")
def _(tmp, data_root, model_dir):
    names = [f"0000000{i}_000.png" for i in range(4)]
    text = "file_name,label\n" + "".join(f"{n},{'Nodule' if i % 2 else 'No Finding'}\n" for i, n in enumerate(names))
    return _train(_labels(tmp, text, names), model_dir, tmp)


@case("no split file", "split file")
def _(tmp, data_root, model_dir):
    return _train(data_root, model_dir, tmp, "--split_file", str(tmp / "split.csv"))


@case("model does not load", "could not load")
def _(tmp, data_root, model_dir):
    (tmp / "not_a_model").mkdir()
    return _train(data_root, tmp / "not_a_model", tmp)


@case("an earlier run", "holds an earlier run")
def _(tmp, data_root, model_dir):
    (tmp / "out").mkdir()
    (tmp / "out" / "metrics.json").write_text("{}")
    (tmp / "ckpt" / "checkpoint-400").mkdir(parents=True)
    return _train(data_root, model_dir, tmp)


@case("resume and overwrite", "pass only one")
def _(tmp, data_root, model_dir):
    return _train(data_root, model_dir, tmp, "--resume", "--overwrite")


@case("checkpoint cut short", "is not a complete checkpoint")
def _(tmp, data_root, model_dir):
    (tmp / "ckpt" / "checkpoint-400").mkdir(parents=True)
    (tmp / "ckpt" / "checkpoint-400" / "adapter_model.safetensors").write_bytes(b"")
    return _train(data_root, model_dir, tmp, "--resume", str(tmp / "ckpt" / "checkpoint-400"))


@case("too many unreadable images", "images are unreadable, more than --max_unreadable_frac",
      allowed=("out/split.csv", "out/run_config.json", "out/unreadable_files.csv"))
def _(tmp, data_root, model_dir):
    root = tmp / "damaged"
    shutil.copytree(data_root, root)
    frame = load_labels(root)
    split = split_by_patient(frame, seed=42)  # train.py's split: a positive is read in every epoch
    path = Path(frame[(split == "train") & (frame["label"] == 1)]["path"].iloc[0])
    path.write_bytes(path.read_bytes()[:200])
    return _train(root, model_dir, tmp)


@case("a flag out of range", "must lie in")
def _(tmp, data_root, model_dir):
    return _train(data_root, model_dir, tmp, "--max_unreadable_frac", "1.5")


# ----------------------------------------------------------------------------- inference.py


def _inference(input_dir, model_dir, tmp, *extra):
    return inference.main, ["--input_dir", str(input_dir), "--output_dir", str(tmp / "out"),
                            "--model_id", str(model_dir), "--num_workers", "0", *extra]


@case("no input folder", "input folder", readme="input folder")
def _(tmp, data_root, model_dir):
    return _inference(tmp / "nowhere", model_dir, tmp)


@case("no images", "no .png/.jpg/.jpeg/.dcm images found")
def _(tmp, data_root, model_dir):
    (tmp / "empty").mkdir()
    return _inference(tmp / "empty", model_dir, tmp)


@case("no model folder", "--model_id folder")
def _(tmp, data_root, model_dir):
    return _inference(DATA_DIR, tmp / "checkpoints" / "model", tmp)


@case("no adapter folder", "--adapter folder")
def _(tmp, data_root, model_dir):
    return _inference(DATA_DIR, model_dir, tmp, "--adapter", str(tmp / "checkpoints" / "best_adapter"))


@case("inference model does not load", "could not load")
def _(tmp, data_root, model_dir):
    (tmp / "not_a_model").mkdir()
    (tmp / "not_a_model" / "config.json").write_text("{}")
    return _inference(DATA_DIR, tmp / "not_a_model", tmp)


@case("no readable image", "could be read", allowed=("out/run_config.classification.json", "out/unreadable_files.csv"))
def _(tmp, data_root, model_dir):
    (tmp / "images").mkdir()
    (tmp / "images" / "broken.png").write_bytes(b"not a png")
    return _inference(tmp / "images", model_dir, tmp)


# ----------------------------------------------------------------------------- metrics.py


def _metrics(tmp, predictions: str):
    (tmp / "labels.csv").write_text("file_name,label\na.png,Nodule\nb.png,No Finding\nc.png,No Finding\nd.png,Nodule\n")
    (tmp / "predictions.csv").write_text(predictions)
    return metrics.main, ["--labels", str(tmp / "labels.csv"), "--predictions", str(tmp / "predictions.csv"),
                          "--json", str(tmp / "out" / "metrics.json")]


@case("confidence of the predicted label", "seems to hold the confidence of the predicted label")
def _(tmp, data_root, model_dir):
    return _metrics(tmp, "file_name,label,confidence\na.png,Nodule,0.8\nb.png,No Finding,0.9\nc.png,Nodule,0.6\n")


@case("labels against confidence", "follow from its confidence by no threshold")
def _(tmp, data_root, model_dir):
    return _metrics(tmp, "file_name,label,confidence\na.png,Nodule,0.8\nb.png,No Finding,0.9\nc.png,Nodule,0.2\n"
                         "d.png,No Finding,0.1\n")


@case("confidence not a probability", "has a confidence outside [0, 1]")
def _(tmp, data_root, model_dir):
    return _metrics(tmp, "file_name,label,confidence\na.png,Nodule,80\n")


@case("other images", "none of the file names")
def _(tmp, data_root, model_dir):
    return _metrics(tmp, "file_name,label,confidence\nz.png,Nodule,0.8\n")


# ----------------------------------------------------------------------------- the test


def _files(folder: Path) -> set[str]:
    return {path.relative_to(folder).as_posix() for path in folder.rglob("*") if path.is_file()}


def troubleshooting_section() -> str:
    return (REPO / "docs" / "troubleshooting.md").read_text()


@pytest.mark.parametrize("name", list(CASES))
def test_each_listed_message_exits_2_and_leaves_nothing_half_written(name, tmp_path, data_root, tiny_model_dir,
                                                                     capsys):
    setup, phrase, allowed, readme = CASES[name]
    assert f"`{readme}`" in troubleshooting_section(), "docs/troubleshooting.md lists the message"
    main, argv = setup(tmp_path, data_root, tiny_model_dir)
    before = _files(tmp_path)
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.count("error: ") == 1
    last = err.strip().splitlines()[-1]
    assert last.startswith("error: ") and phrase in last, err[-2000:]
    new = _files(tmp_path) - before
    assert new <= allowed, f"left behind: {sorted(new - allowed)}"  # temporary files included
