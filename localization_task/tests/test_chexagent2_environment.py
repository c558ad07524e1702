"""What the CheXagent-2 command needs, checked from the main environment.

The second environment (localization_task/chexagent2/requirements.txt, transformers 4.40.0)
has neither peft nor the `image_processing_pil_*` modules of transformers 5; here they are
made unimportable in a subprocess, so an import of them on the command's path fails here
as it fails there. test_chexagent2_second_env.py runs the command in the real second
environment where one exists (CI builds it).
"""

import json
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from localization_task.chexagent2 import backend as backends

from localization_task import inference

REPO = Path(__file__).resolve().parents[2]
DATA = Path(__file__).parent / "data"
REQUIREMENTS = REPO / "localization_task" / "chexagent2" / "requirements.txt"
SHA = "0123456789abcdef0123456789abcdef01234567"  # well-formed, not a real commit
IMPORT_NAMES = {"scikit-learn": "sklearn", "python-dotenv": "dotenv", "pillow": "PIL"}

# Runs a script with some packages unimportable: argv = blocked,names script args...
BLOCKING_RUNNER = r"""
import importlib.abc, re, runpy, sys
BLOCKED = set(sys.argv[1].split(","))
PIL_PROCESSORS = re.compile(r"transformers\.models\.\w+\.image_processing_pil_\w+")

class Unavailable(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED or PIL_PROCESSORS.fullmatch(name):
            raise ModuleNotFoundError(f"No module named {name!r} (absent in the CheXagent-2 environment)", name=name)
        return None

sys.meta_path.insert(0, Unavailable())
sys.argv = sys.argv[2:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def requirement_names(lines) -> set[str]:
    names = set()
    for line in lines:
        line = line.split("#")[0].strip()
        if line:
            names.add(re.split(r"[<>=!~;\[ ]", line, maxsplit=1)[0].lower())
    return names


def main_only_imports() -> set[str]:
    """Import names of main-environment dependencies that chexagent2/requirements.txt does not install."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    main_env = requirement_names(project["dependencies"])
    missing = main_env - requirement_names(REQUIREMENTS.read_text().splitlines())
    return {IMPORT_NAMES.get(name, name.replace("-", "_")) for name in missing}


def run_blocked(*args: str, cwd: Path = REPO,
                script: str = "localization_task/inference.py") -> subprocess.CompletedProcess:
    blocked = main_only_imports()
    assert {"peft", "bitsandbytes"} <= blocked  # what the heatmap localizer needs and the second env lacks
    command = [sys.executable, "-c", BLOCKING_RUNNER, ",".join(sorted(blocked)), script, *args]
    return subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=300)


def test_inference_starts_without_the_main_environment_only_packages(tmp_path):
    """--help and a whole scripted run, with peft, bitsandbytes, scipy, scikit-learn and the
    transformers 5 pil image processors unimportable, as in the CheXagent-2 environment."""
    shown = run_blocked("--help")
    assert shown.returncode == 0, shown.stderr[-3000:]
    assert "--backend" in shown.stdout
    ran = run_blocked("localization_task/inference.py", "--backend", "scripted", "--input_dir", str(DATA),
                      "--output_dir", str(tmp_path / "out"),
                      script="localization_task/tests/scripted_localizer.py")  # registers the double first
    assert ran.returncode == 0, ran.stderr[-3000:]
    assert (tmp_path / "out" / "localization_test_results.csv").is_file()


def test_heatmap_backend_without_the_main_environment_is_one_sentence(tmp_path):
    ran = run_blocked("--backend", "heatmap", "--checkpoint", str(tmp_path), "--input_dir", str(DATA),
                      "--output_dir", str(tmp_path / "out"))
    assert ran.returncode == 2 and "Traceback" not in ran.stderr, ran.stderr[-3000:]
    assert ran.stderr.strip().splitlines()[-1].startswith("error: --backend heatmap needs the main environment")


def test_requirements_name_every_package_the_remote_code_imports():
    names = requirement_names(REQUIREMENTS.read_text().splitlines())
    for module in backends.REMOTE_CODE_IMPORTS:
        assert backends.PIP_NAMES.get(module, module).lower() in names, module
    assert {"torch", "transformers", "accelerate"} <= names


def test_missing_package_of_the_remote_code_is_one_sentence(tmp_path, monkeypatch, capsys):
    """Remote code importing a package that is not installed: transformers' import check
    raises ImportError before running it; the command names the package and exits 2."""
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "tokenization_needs_more.py").write_text(
        "import nodulocc_absent_package\nfrom transformers import PreTrainedTokenizer\n\n\n"
        "class NeedsMoreTokenizer(PreTrainedTokenizer):\n    pass\n")
    (folder / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "NeedsMoreTokenizer",
        "auto_map": {"AutoTokenizer": ["tokenization_needs_more.NeedsMoreTokenizer", None]}}))
    (folder / "config.json").write_text(json.dumps({"model_type": "needs_more"}))
    monkeypatch.setattr("transformers.__version__", backends.REQUIRED_TRANSFORMERS)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    argv = ["--input_dir", str(DATA), "--output_dir", str(tmp_path / "out"), "--backend", "chexagent2",
            "--model_id", str(folder), "--revision", SHA]
    assert inference.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "Traceback" not in err[0], err
    assert err[0].startswith("error: ") and err[0].endswith(".")
    assert "imports nodulocc_absent_package, missing here: run `pip install nodulocc_absent_package`" in err[0]


@pytest.mark.parametrize(("error", "phrase"), [
    (ImportError("This modeling file requires the following packages that were not found in your environment: "
                 "torchvision, cv2. Run `pip install torchvision cv2`"),
     "`pip install torchvision opencv-python-headless`"),
    (ModuleNotFoundError("No module named 'pyarrow.lib'", name="pyarrow.lib"), "`pip install pyarrow`"),
    (ImportError("cannot import name 'Thing' from 'transformers'"), "failed to import (cannot import name 'Thing'"),
])
def test_import_errors_read_as_what_to_install(error, phrase):
    sentence = backends.missing_packages_sentence(error, "M")
    assert phrase in sentence and sentence.endswith(".") and "\n" not in sentence
