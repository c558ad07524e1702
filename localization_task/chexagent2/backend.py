"""Localizer backends: the interface, CheXagent-2, and a scripted test double.

A localizer gets one pre-processed radiograph (`ImageInput`: an 8-bit RGB PNG
file of the original size, plus the original width and height) and returns an
`ImagePrediction`: its raw answer, the boxes it drew and the keypoints (x, y,
confidence) in original pixels. Any model that fits `Localizer.predict` plugs
into `inference.py`.

A CheXagent-2 keypoint's confidence is the geometric mean probability of the
tokens the model generated for its box; an answer without token probabilities
gives every keypoint 1.0 (`NO_CONFIDENCE`).
"""
from __future__ import annotations

import hashlib
import os
import re
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Protocol

from PIL import Image

from localization_task.chexagent2.parsing import (
    DEFAULT_LABELS,
    box_centre_px,
    box_to_px,
    label_accepted,
    parse_boxes_with_spans,
    span_confidence,
)

CHEXAGENT2_MODEL_ID = "StanfordAIMI/CheXagent-2-3b"
# No commit of StanfordAIMI/CheXagent-2-3b has been verified for this project,
# so there is deliberately no default pin (a branch such as "main" is not a
# pin): the real backend refuses to run remote code until --revision names a
# full commit SHA. Print the current one with PRINT_REVISION_COMMAND.
CHEXAGENT2_REVISION: str | None = None
PRINT_REVISION_COMMAND = (
    "python -c \"from huggingface_hub import HfApi; "
    "print(HfApi().model_info('StanfordAIMI/CheXagent-2-3b').sha)\""
)
# The model's remote code asserts this exact version.
REQUIRED_TRANSFORMERS = "4.40.0"
SETUP_COMMANDS = (
    "python -m venv .venv-chexagent2 && "
    ".venv-chexagent2/bin/pip install -r localization_task/chexagent2/requirements.txt && "
    ".venv-chexagent2/bin/pip install --no-deps -e ."
)
SYSTEM_PROMPT = "You are a helpful assistant."
# One of the grounding templates CheXagent-2 was trained with.
DEFAULT_PROMPT = (
    "Locate areas in the chest X-ray where {finding} is present, using bounding box coordinates"
)
DEFAULT_FINDING = "nodule/mass"
MAX_NEW_TOKENS = 512
SCRIPTED_DELAY_ENV = "NODULOCC_SCRIPTED_DELAY_S"  # test double only: seconds of sleep per image
NO_CONFIDENCE = 1.0  # for answers that come without token probabilities


class BackendUnavailable(RuntimeError):
    """The backend cannot run here; the message says what to do, in one sentence."""


@dataclass(frozen=True)
class ImageInput:
    file_name: str  # relative to --input_dir, posix
    path: Path  # pre-processed 8-bit RGB PNG, same size as the original
    width_px: int  # original image size: boxes and keypoints refer to it
    height_px: int


@dataclass(frozen=True)
class Answer:
    """A generated answer: its text as decoded tokens and each token's probability.

    `"".join(pieces)` is the text; `probs` is None when the model gave none.
    """

    pieces: list[str]
    probs: list[float] | None = None

    @property
    def text(self) -> str:
        return "".join(self.pieces)


@dataclass(frozen=True)
class DetectedBox:
    label: str
    xyxy_pct: tuple[float, float, float, float]  # model units: % of width / height
    xyxy_px: tuple[float, float, float, float]  # original pixels
    kept: bool  # passed the label filter, so its centre is a keypoint
    confidence: float  # geometric mean probability of the box's tokens (1.0 without them)


@dataclass(frozen=True)
class Keypoint:
    x: float  # original pixels
    y: float
    confidence: float


@dataclass
class ImagePrediction:
    response: str  # raw model answer ("" for models that do not answer in text)
    boxes: list[DetectedBox] = field(default_factory=list)
    points: list[Keypoint] = field(default_factory=list)

    def to_record(self, file_name: str, width_px: int, height_px: int) -> dict:
        """One line of predictions.jsonl."""
        return {
            "file_name": file_name,
            "width": width_px,
            "height": height_px,
            "response": self.response,
            "boxes": [asdict(box) for box in self.boxes],
            "points": [asdict(point) for point in self.points],
        }


class Localizer(Protocol):
    """Anything that finds nodules on one pre-processed radiograph."""

    def predict(self, item: ImageInput) -> ImagePrediction: ...


def prediction_from_response(
    response: str | Answer,
    width_px: int,
    height_px: int,
    labels: Sequence[str] | None = DEFAULT_LABELS,
    keep_unlabelled: bool = True,
) -> ImagePrediction:
    """Raw grounding answer -> boxes and keypoints (box centres) in pixels.

    Each box's confidence comes from the probabilities of its generated
    tokens when the answer carries them. A box repeated with identical
    coordinates yields one keypoint (the same box cannot be two nodules), with
    the highest confidence among the repeats.
    """
    answer = response if isinstance(response, Answer) else Answer([response])
    prediction = ImagePrediction(answer.text)
    kept_points: dict[tuple[float, float, float, float], int] = {}
    for label, xyxy_pct, span in parse_boxes_with_spans(answer.text):
        kept = label_accepted(label, labels, keep_unlabelled)
        confidence = NO_CONFIDENCE if answer.probs is None else span_confidence(answer.pieces, answer.probs, span)
        xyxy_px = box_to_px(xyxy_pct, width_px, height_px)
        prediction.boxes.append(DetectedBox(label, xyxy_pct, xyxy_px, kept, confidence))
        if not kept:
            continue
        if xyxy_pct in kept_points:
            index = kept_points[xyxy_pct]
            best = max(prediction.points[index].confidence, confidence)
            prediction.points[index] = Keypoint(prediction.points[index].x, prediction.points[index].y, best)
            continue
        kept_points[xyxy_pct] = len(prediction.points)
        x, y = box_centre_px(xyxy_pct, width_px, height_px)
        prediction.points.append(Keypoint(x, y, confidence))
    return prediction


class GroundingBackend:
    """A model that answers in CheXagent-2's box format: `generate` gives the
    raw text, the shared parser and coordinate code do the rest."""

    def __init__(
        self,
        prompt: str,
        labels: Sequence[str] | None = DEFAULT_LABELS,
        keep_unlabelled: bool = True,
    ):
        self.prompt = prompt
        self.labels = labels
        self.keep_unlabelled = keep_unlabelled

    def generate(self, item: ImageInput) -> Answer:
        raise NotImplementedError

    def predict(self, item: ImageInput) -> ImagePrediction:
        answer = self.generate(item)
        return prediction_from_response(
            answer, item.width_px, item.height_px, self.labels, self.keep_unlabelled
        )


# --- CheXagent-2 --------------------------------------------------------------


def check_chexagent2_environment(revision: str | None) -> None:
    """Fail before any download when the real model cannot run here."""
    try:
        import transformers

        version = transformers.__version__
    except ImportError:
        version = "no transformers"
    if version != REQUIRED_TRANSFORMERS:
        raise BackendUnavailable(
            f"CheXagent-2's remote code needs transformers=={REQUIRED_TRANSFORMERS} but this "
            f"environment has {version}: create its own environment with `{SETUP_COMMANDS}` "
            "and rerun this command with .venv-chexagent2/bin/python (or add --backend scripted "
            "to test the pipeline here)."
        )
    if revision is None:
        raise BackendUnavailable(
            "CheXagent-2 runs remote code, so it needs a pinned model commit: pass --revision "
            f"with the full 40-character commit SHA of {CHEXAGENT2_MODEL_ID} "
            f"(print it with `{PRINT_REVISION_COMMAND}`)."
        )


def resolve_device(device: str) -> str:
    """--device for this process: "cpu" or its own GPU, cuda:LOCAL_RANK."""
    from localization_task.common.processes import process_device

    try:
        return str(process_device(device))
    except ValueError as error:
        raise BackendUnavailable(str(error)) from None


def resolve_dtype(dtype: str, device: str):
    """--dtype: "auto" is bf16 on a GPU (as the model's own scripts run it), float32 on the CPU."""
    import torch

    auto = "bfloat16" if device.startswith("cuda") else "float32"
    return getattr(torch, auto if dtype == "auto" else dtype)


# Third-party packages CheXagent-2's remote code imports beyond torch and transformers
# (as reported for its modeling files); chexagent2/requirements.txt installs each.
REMOTE_CODE_IMPORTS = ("torchvision", "pyarrow", "einops", "albumentations", "cv2")
PIP_NAMES = {"cv2": "opencv-python-headless", "PIL": "pillow", "google": "protobuf"}  # import name -> pip name
_MISSING = re.compile(r"requires the following packages that were not found in your environment: ([^.]+)\.")


def missing_packages_sentence(error: ImportError, model_id: str) -> str:
    """transformers' import check of remote code (or an import failing in it) as one sentence."""
    found = _MISSING.search(str(error))
    module = error.name if isinstance(error, ModuleNotFoundError) else None
    names = found.group(1).split(", ") if found else [module] if module else []
    if not names:
        reason = (str(error).strip().splitlines() or [type(error).__name__])[0]
        return (f"{model_id}'s remote code failed to import ({reason}): rebuild this environment from "
                "localization_task/chexagent2/requirements.txt.")
    packages = " ".join(dict.fromkeys(PIP_NAMES.get(n.split(".")[0], n.split(".")[0]) for n in names))
    return (f"{model_id}'s remote code imports {packages}, missing here: run `pip install {packages}` with this "
            "environment's pip (localization_task/chexagent2/requirements.txt names every package it needs).")


def load_chexagent2(model_id: str, revision: str, device: str, dtype):
    """Tokenizer and model, loaded then cast: the remote code builds some parameters with
    `.float()` (its resampler's pos_embed), which `torch_dtype` alone leaves in float32."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(model_id, revision=revision, trust_remote_code=True)
        model = AutoModelForCausalLM.from_pretrained(model_id, revision=revision, trust_remote_code=True,
                                                     torch_dtype=dtype)
    except OSError as error:  # hub errors: unknown repo or commit, offline, no access
        reason = (str(error).strip().splitlines() or [type(error).__name__])[0]
        raise BackendUnavailable(
            f"could not load {model_id} at revision {revision} ({reason}): check --model_id, "
            "--revision, network access and HF_TOKEN."
        ) from None
    except ImportError as error:  # transformers checks the remote code's imports before running it
        raise BackendUnavailable(missing_packages_sentence(error, model_id)) from None
    return tokenizer, model.to(device=device, dtype=dtype).eval()


class CheXagent2Backend(GroundingBackend):
    """StanfordAIMI/CheXagent-2-3b, zero-shot, following its reference usage.

    Runs only where transformers == 4.40.0 (see chexagent2/requirements.txt)
    and only with a pinned --revision, because `trust_remote_code=True`
    executes the model repository's Python code. HF_TOKEN, if needed, is read
    from the environment or a .env file and never printed. Several processes
    (torchrun) each take their own GPU, cuda:LOCAL_RANK.
    """

    def __init__(
        self,
        prompt: str,
        labels: Sequence[str] | None = DEFAULT_LABELS,
        keep_unlabelled: bool = True,
        model_id: str = CHEXAGENT2_MODEL_ID,
        revision: str | None = CHEXAGENT2_REVISION,
        device: str = "auto",
        max_new_tokens: int = MAX_NEW_TOKENS,
        dtype: str = "auto",
    ):
        check_chexagent2_environment(revision)
        super().__init__(prompt, labels, keep_unlabelled)
        from dotenv import load_dotenv

        load_dotenv()  # puts HF_TOKEN from .env into the environment for huggingface_hub
        self.device = resolve_device(device)
        self.max_new_tokens = max_new_tokens
        self.tokenizer, self.model = load_chexagent2(model_id, revision, self.device, resolve_dtype(dtype, self.device))

    def generate(self, item: ImageInput) -> Answer:
        import torch

        # The model opens the image itself, so it gets a file path.
        query = self.tokenizer.from_list_format([{"image": str(item.path)}, {"text": self.prompt}])
        conversation = [
            {"from": "system", "value": SYSTEM_PROMPT},
            {"from": "human", "value": query},
        ]
        input_ids = self.tokenizer.apply_chat_template(
            conversation, add_generation_prompt=True, return_tensors="pt"
        ).to(self.device)
        with torch.inference_mode():
            output = self.model.generate(
                input_ids,
                do_sample=False,
                num_beams=1,
                temperature=1.0,
                top_p=1.0,
                use_cache=True,
                max_new_tokens=self.max_new_tokens,
                output_scores=True,
                return_dict_in_generate=True,
            )
            # Log-probability of each chosen token under the softmax of its step's logits.
            log_probs = self.model.compute_transition_scores(
                output.sequences, output.scores, normalize_logits=True
            )[0]
        new_ids = output.sequences[0, input_ids.shape[1] :]
        # Token by token, so each box's characters map back to its tokens; special
        # tokens are kept because the <|ref|>/<|box|> tags are special tokens.
        pieces = [self.tokenizer.decode(token[None], skip_special_tokens=False) for token in new_ids]
        return Answer(pieces, log_probs.float().exp().tolist())


# --- scripted test double -------------------------------------------------------


def check_model_input(item: ImageInput) -> None:
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
    """Test double standing in for CheXagent-2 (`--backend scripted`).

    The real model cannot be downloaded or run in CI (no hub access, and its
    remote code needs transformers 4.40.0), so this double answers instead:
    it first checks that it was handed what the real model is handed (an
    existing 8-bit RGB PNG of the original size), then returns a canned answer
    in the trained format, deterministic per file name (negative answers, one
    box, several boxes, other findings, unlabelled and swapped boxes, trailing
    special tokens), cut into token-like pieces with made-up token
    probabilities. That answer goes through the same parser, confidence and
    coordinate code as a real one, so the whole command runs end to end. Its
    boxes and probabilities are arbitrary: they say nothing about the images.

    For tests only: the environment variable NODULOCC_SCRIPTED_DELAY_S makes
    it sleep that many seconds per image, so that a test can kill a run in
    the middle. No other backend reads it.
    """

    def generate(self, item: ImageInput) -> Answer:
        check_model_input(item)
        time.sleep(float(os.environ.get(SCRIPTED_DELAY_ENV, "0")))
        return scripted_answer(item.file_name)
