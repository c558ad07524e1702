"""`--backend scripted`: a test double standing in for CheXagent-2, and a launcher that registers it.

The real model cannot be downloaded or run in the tests (no hub access, and
its remote code needs transformers 4.40.0), so `ScriptedBackend` answers
instead: it first checks that it was handed what the real model is handed (an
existing 8-bit RGB PNG of the original size), then returns a canned answer in
the trained format, deterministic per file name (negative answers, one box,
several boxes, other findings, unlabelled and swapped boxes, trailing special
tokens), cut into token-like pieces with made-up token probabilities. That
answer goes through the same parser, confidence and coordinate code as a real
one, so the whole command runs end to end. Its boxes and probabilities are
arbitrary: they say nothing about the images.

The product does not know this double. A test registers it in
`localizers.BACKENDS` (the `scripted_backend` fixture of conftest.py), or runs
a command through this module, which registers it first:

    python -m localization_task.tests.scripted_localizer localization_task/inference.py --backend scripted ...
    python -m localization_task.tests.scripted_localizer -m localization_task.inference --backend scripted ...

`NODULOCC_SCRIPTED_DELAY_S` makes the double sleep that many seconds per
image, so that a test can kill a run in the middle.
"""
from __future__ import annotations

import hashlib
import os
import re
import runpy
import sys
import time

from PIL import Image

from localization_task import localizers
from localization_task.chexagent2 import backend as chexagent2
from localization_task.chexagent2.backend import GroundingBackend, ModelInput
from localization_task.chexagent2.parsing import Answer

NAME = "scripted"
DELAY_ENV = "NODULOCC_SCRIPTED_DELAY_S"  # seconds of sleep per image
REGISTERED = localizers.Backend("localization_task.tests.scripted_localizer", "any environment", "any python")


def check_model_input(item: ModelInput) -> None:
    """The real model is handed an existing 8-bit RGB PNG of the original size."""
    if not item.path.is_file():
        raise RuntimeError(f"model input {item.path} does not exist")
    with Image.open(item.path) as image:
        found = (image.format, image.mode, image.size)
    expected = ("PNG", "RGB", (item.width_px, item.height_px))
    if found != expected:
        raise RuntimeError(f"model input {item.path} is {found}, expected {expected}")


def _box_tag(digest: bytes, k: int, swap: bool = False) -> str:
    cx, cy, size = 15 + digest[3 * k] % 71, 15 + digest[3 * k + 1] % 71, 3 + digest[3 * k + 2] % 10
    x1, y1, x2, y2 = cx - size // 2, cy - size // 2, cx + (size + 1) // 2, cy + (size + 1) // 2
    if swap:
        x1, y1, x2, y2 = x2, y2, x1, y1
    return f"<|box|>({x1},{y1}),({x2},{y2})<|/box|>"


def scripted_response(file_name: str) -> str:
    """A canned CheXagent-2 answer in the trained format, fixed per file name."""
    digest = hashlib.sha256(file_name.encode()).digest()
    b = [_box_tag(digest, k) for k in (1, 2, 3)]
    ref = "<|ref|>Nodule/Mass<|/ref|>"
    scripts = [
        "No nodule/mass detected.<|endoftext|>",
        f"{ref}{b[0]}<|endoftext|>",
        f"{ref}{b[0]}{b[1]}<|endoftext|>",  # several boxes under one ref
        f"{ref}{b[0]}{ref}{b[1]}{ref}{b[2]}",
        f"<|ref|>Cardiomegaly<|/ref|>{b[0]}{ref}{b[1]}<|endoftext|>",  # first box dropped
        f"{b[0]}<|endoftext|>",  # no ref label
        f"{ref}{_box_tag(digest, 1, swap=True)}</s>",  # corners swapped
        "No nodule/mass detected.",
    ]
    return scripts[digest[0] % len(scripts)]


# Special tags, numbers, or single other characters: roughly how a tokenizer cuts an answer.
_PIECE = re.compile(r"<\|/?\w+\|>|</s>|\d+|\w+|.", re.DOTALL)


def scripted_answer(file_name: str) -> Answer:
    """`scripted_response` as token pieces, each with a probability fixed per file and position."""
    pieces = _PIECE.findall(scripted_response(file_name))
    seed = hashlib.sha256(f"probs:{file_name}".encode()).digest()
    probs = [0.35 + 0.65 * seed[i % len(seed)] / 255 for i in range(len(pieces))]
    return Answer(pieces, probs)


class ScriptedBackend(GroundingBackend):
    """Stands in for CheXagent-2: checks its input as the real model would see it, answers from a script."""

    def generate(self, item: ModelInput) -> Answer:
        check_model_input(item)
        time.sleep(float(os.environ.get(DELAY_ENV, "0")))
        return scripted_answer(item.file_name)


# --- the registry's entry points (localizers.py) -------------------------------


def from_config(config) -> ScriptedBackend:
    return ScriptedBackend(config.prompt_text, config.label_filter, config.unlabelled_boxes == "keep")


def prediction_settings(config) -> dict:
    return chexagent2.prediction_settings(config)  # the same question, filter and stretch as the real model


def register() -> None:
    """Make `--backend scripted` a choice of this process's inference.py."""
    localizers.BACKENDS[NAME] = REGISTERED


def launch(argv: list[str]) -> None:
    """Register the double, then run `SCRIPT ARGS...` or `-m MODULE ARGS...` as the main program."""
    register()
    if argv[0] == "-m":
        sys.argv = argv[1:]
        runpy.run_module(argv[1], run_name="__main__", alter_sys=True)
    else:
        sys.argv = argv
        runpy.run_path(argv[0], run_name="__main__")


if __name__ == "__main__":
    launch(sys.argv[1:])
