"""CheXagent-2 zero-shot behind the Localizer interface: its environment check, loading and answers.

CheXagent-2 (StanfordAIMI/CheXagent-2-3b) is asked, one image at a time, to
locate nodules; it answers with boxes (see parsing.py), whose centres become the
keypoints. It is handed each pre-processed radiograph as a temporary 8-bit RGB
PNG of the original size (`ModelInput`), because its remote code opens the
image file itself. A keypoint's confidence is the geometric mean probability of
the tokens the model generated for its box.

It runs only in its own environment (transformers 4.40.0, see requirements.txt)
and only with a pinned --revision, because its remote code is executed.
"""
from __future__ import annotations

import re
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from localization_task.chexagent2.parsing import DEFAULT_LABELS, Answer, prediction_from_response
from localization_task.localizers import BackendUnavailable, ImageInput, ImagePrediction

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


@dataclass(frozen=True)
class ModelInput:
    """What a grounding model is handed: one pre-processed image as a file."""

    file_name: str  # relative to --input_dir, posix
    path: Path  # pre-processed 8-bit RGB PNG, same size as the original
    width_px: int  # original image size: boxes and keypoints refer to it
    height_px: int


class GroundingBackend:
    """A model that answers in CheXagent-2's box format, one image at a time: `generate`
    gives the raw answer, the shared parser and coordinate code do the rest."""

    def __init__(
        self,
        prompt: str,
        labels: Sequence[str] | None = DEFAULT_LABELS,
        keep_unlabelled: bool = True,
    ):
        self.prompt = prompt
        self.labels = labels
        self.keep_unlabelled = keep_unlabelled

    def generate(self, item: ModelInput) -> Answer:
        raise NotImplementedError

    def answer(self, item: ModelInput) -> ImagePrediction:
        """The prediction for one image handed over as a file."""
        return prediction_from_response(
            self.generate(item), item.width_px, item.height_px, self.labels, self.keep_unlabelled
        )

    def predict(self, images: Sequence[ImageInput]) -> Iterator[ImagePrediction]:
        """Each image in turn as an 8-bit RGB PNG of its original size; each prediction as it is done."""
        with tempfile.TemporaryDirectory(prefix="nodulocc_") as tmp_dir:
            for index, image in enumerate(images):
                path = Path(tmp_dir) / f"{index:06d}.png"
                Image.fromarray(image.grey_uint8).convert("RGB").save(path, format="PNG", compress_level=1)
                prediction = self.answer(ModelInput(image.file_name, path, image.width_px, image.height_px))
                path.unlink()
                yield prediction


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
            "and rerun this command with .venv-chexagent2/bin/python (--backend heatmap, the "
            "trained localizer, runs here)."
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

    def generate(self, item: ModelInput) -> Answer:
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


# --- the registry's entry points (localizers.py) -------------------------------


def from_config(config) -> CheXagent2Backend:
    """The backend for inference.py's config: fails here, before any download, in the wrong environment."""
    return CheXagent2Backend(
        prompt=config.prompt_text,
        labels=config.label_filter,
        keep_unlabelled=config.unlabelled_boxes == "keep",
        model_id=config.model_id,
        revision=config.revision,
        device=config.device,
        max_new_tokens=config.max_new_tokens,
        dtype=config.dtype,
    )


def prediction_settings(config) -> dict:
    """What CheXagent-2's answers depend on: the model, the question, the filter, the stretch."""
    return {
        "model_id": config.model_id,
        "revision": config.revision,
        "prompt": config.prompt_text,
        "labels": list(config.labels),
        "unlabelled_boxes": config.unlabelled_boxes,
        "clip_pct": [config.clip_low_pct, config.clip_high_pct],
        "max_new_tokens": config.max_new_tokens,
        # Only when asked for, so caches written before --dtype existed still resume.
        **({"dtype": config.dtype} if config.dtype != "auto" else {}),
    }
