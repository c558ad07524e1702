"""Zero-shot nodule keypoints with CheXagent-2 (or any `Localizer` backend).

    python localization_task/inference.py --input_dir data/nodulocc/lidc_png_16_bit \
        --output_dir outputs/localization --revision <commit SHA of StanfordAIMI/CheXagent-2-3b>

The real model needs its own environment (transformers==4.40.0, see
localization_task/requirements-chexagent2.txt); `--backend scripted` swaps in a
scripted test double and runs the same pipeline anywhere.

Per image: read the size from the header, pre-process (grey, percentile clip,
8-bit RGB) into a temporary PNG, ask the model, parse its boxes, keep the box
centres in original pixels; each keypoint's confidence is the geometric mean
probability of the tokens the model generated for its box.
Writes, in --output_dir (default outputs/localization):
  predictions.jsonl               one record per image; also the resume cache
  localization_test_results.csv   file_name,x,y,confidence (rebuilt from the
                                  JSONL, written atomically)
  run_config.json                 resolved config, package versions, git commit
Rerunning the same command skips images already in predictions.jsonl.
"""
from __future__ import annotations

import csv
import io
import sys
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

from PIL import Image
from tqdm import tqdm

from localization_task import cli
from localization_task.backends import (
    CHEXAGENT2_MODEL_ID,
    CHEXAGENT2_REVISION,
    DEFAULT_FINDING,
    DEFAULT_PROMPT,
    MAX_NEW_TOKENS,
    SETUP_COMMANDS,
    BackendUnavailable,
    CheXagent2Backend,
    ImageInput,
    Localizer,
    ScriptedBackend,
)
from localization_task.dataset import (
    DEFAULT_CLIP_HIGH_PCT,
    DEFAULT_CLIP_LOW_PCT,
    DataError,
    discover_images,
    load_preprocessed,
)
from localization_task.parsing import DEFAULT_LABELS
from localization_task.run_files import (
    PREDICTIONS_JSONL,
    RUN_CONFIG_JSON,
    append_record,
    check_resumable,
    load_records,
    write_run_config,
    write_text_atomic,
)

RESULTS_CSV = "localization_test_results.csv"
ANY_LABEL = "*"


@dataclass
class InferenceConfig:
    input_dir: Path = cli.required("folder of PNG/JPEG radiographs")
    output_dir: Path = cli.arg(Path("outputs/localization"), "where the CSV, JSONL and run config go")
    backend: Literal["chexagent2", "scripted"] = cli.arg(
        "chexagent2", "who answers: the real model, or a scripted test double that needs no model"
    )
    model_id: str = cli.arg(CHEXAGENT2_MODEL_ID, "hub id of the real model")
    revision: str | None = cli.arg(
        CHEXAGENT2_REVISION, "full commit SHA of --model_id; the real backend requires it (remote code)"
    )
    prompt: str = cli.arg(DEFAULT_PROMPT, "question template, {finding} is filled in")
    finding: str = cli.arg(DEFAULT_FINDING, "what the model is asked to locate")
    labels: tuple[str, ...] = cli.arg(
        DEFAULT_LABELS, f"box labels that count as a nodule, case-insensitive; '{ANY_LABEL}' accepts any"
    )
    unlabelled_boxes: Literal["keep", "drop"] = cli.arg(
        "keep", "boxes without a <|ref|> label; the prompt asks for one finding, so they are kept"
    )
    recursive: bool = cli.arg(False, "also look in sub-folders of --input_dir")
    clip_low_pct: float = cli.arg(DEFAULT_CLIP_LOW_PCT, "per-image lower clip percentile")
    clip_high_pct: float = cli.arg(DEFAULT_CLIP_HIGH_PCT, "per-image upper clip percentile")
    device: Literal["auto", "cuda", "cpu"] = cli.arg("auto", "where the real model runs")
    max_new_tokens: int = cli.arg(MAX_NEW_TOKENS, "generation length limit")

    def __post_init__(self):
        self.input_dir, self.output_dir = Path(self.input_dir), Path(self.output_dir)
        self.labels = tuple(self.labels)
        cli.check_choices(self)
        if not 0 <= self.clip_low_pct < self.clip_high_pct <= 100:
            raise ValueError("--clip_low_pct and --clip_high_pct need 0 <= low < high <= 100.")
        if self.max_new_tokens < 1:
            raise ValueError("--max_new_tokens must be at least 1.")
        if not self.finding.strip() or not self.labels or not all(s.strip() for s in self.labels):
            raise ValueError("--finding and --labels must not be empty.")
        if self.revision is not None and not _is_commit_sha(self.revision):
            raise ValueError(
                f"--revision {self.revision!r} is not a pin: give the full 40-character commit "
                "SHA of the model repository, not a branch or tag such as 'main'."
            )
        try:
            self.prompt_text
        except (KeyError, IndexError, ValueError):
            raise ValueError("--prompt may contain no placeholder other than {finding}.") from None

    @property
    def prompt_text(self) -> str:
        return self.prompt.format(finding=self.finding)

    @property
    def label_filter(self) -> tuple[str, ...] | None:
        return None if ANY_LABEL in self.labels else self.labels

    def prediction_settings(self) -> dict:
        """What the cached predictions depend on: a resumed run must match it."""
        return {
            "backend": self.backend,
            "model_id": self.model_id,
            "revision": self.revision,
            "prompt": self.prompt_text,
            "labels": list(self.labels),
            "unlabelled_boxes": self.unlabelled_boxes,
            "clip_pct": [self.clip_low_pct, self.clip_high_pct],
            "max_new_tokens": self.max_new_tokens,
        }


def _is_commit_sha(revision: str) -> bool:
    return len(revision) == 40 and all(c in "0123456789abcdef" for c in revision.lower())


DESCRIPTION = f"""\
Nodule keypoints on chest radiographs with CheXagent-2, zero-shot.
Writes {RESULTS_CSV} and {PREDICTIONS_JSONL} (also the resume cache:
rerun the same command to continue an interrupted run)."""

HELP_EPILOG = f"""\
The real model (--backend chexagent2, the default) runs ONLY in its own
environment with transformers==4.40.0, which its remote code asserts:
  {SETUP_COMMANDS.replace(" && ", chr(10) + "  ")}
  .venv-chexagent2/bin/python localization_task/inference.py --input_dir DIR \\
      --output_dir DIR --revision <full commit SHA of {CHEXAGENT2_MODEL_ID}>
--backend scripted needs no model and works in any environment: a scripted test
double answers in CheXagent-2's format (arbitrary boxes) so the pipeline can be
checked. A keypoint's confidence is the mean probability (geometric) of the
tokens CheXagent-2 generated for its box.
"""


def find_input_images(config: InferenceConfig) -> list[Path]:
    if not config.input_dir.is_dir():
        raise DataError(
            f"input folder {config.input_dir} does not exist: "
            "pass an existing folder as --input_dir."
        )
    images = discover_images(config.input_dir, config.recursive)
    if not images:
        hint = "" if config.recursive else ", or add --recursive for sub-folders"
        raise DataError(
            f"no .png/.jpg/.jpeg images in {config.input_dir}: check --input_dir{hint}."
        )
    return images


def build_localizer(config: InferenceConfig) -> Localizer:
    common = dict(
        prompt=config.prompt_text,
        labels=config.label_filter,
        keep_unlabelled=config.unlabelled_boxes == "keep",
    )
    if config.backend == "scripted":
        return ScriptedBackend(**common)
    return CheXagent2Backend(
        **common,
        model_id=config.model_id,
        revision=config.revision,
        device=config.device,
        max_new_tokens=config.max_new_tokens,
    )


# --- the results CSV ----------------------------------------------------------


def write_results_csv(path: Path, records: dict[str, dict], names: list[str]) -> int:
    """Submission CSV (one row per keypoint, images in input order), rebuilt
    from the records. Returns the number of keypoints."""
    rows = [
        (name, round(p["x"], 3), round(p["y"], 3), p["confidence"])
        for name in names
        if name in records
        for p in records[name]["points"]
    ]
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(["file_name", "x", "y", "confidence"])
    writer.writerows(rows)
    write_text_atomic(path, text.getvalue())
    return len(rows)


# --- the run ------------------------------------------------------------------


def predict_pending(
    localizer: Localizer, config: InferenceConfig, images: list[Path], done: set[str]
) -> tuple[int, list[str]]:
    """Predict images not yet in the JSONL, appending one record each.

    Returns (number predicted, unreadable file names)."""
    names = [path.relative_to(config.input_dir).as_posix() for path in images]
    pending = [(path, name) for path, name in zip(images, names) if name not in done]
    predicted, unreadable = 0, []
    bar = tqdm(
        pending, total=len(images), initial=len(images) - len(pending), desc="images", unit="img"
    )
    with tempfile.TemporaryDirectory(prefix="nodulocc_") as tmp_dir:
        for index, (path, name) in enumerate(bar):
            model_input = Path(tmp_dir) / f"{index:06d}.png"
            try:
                image = load_preprocessed(path, config.clip_low_pct, config.clip_high_pct)
            except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as error:
                tqdm.write(f"skipped unreadable image {path}: {error}", file=sys.stderr)
                unreadable.append(name)
                continue
            width_px, height_px = image.size  # pre-processing keeps the original size
            image.save(model_input, format="PNG", compress_level=1)
            prediction = localizer.predict(ImageInput(name, model_input, width_px, height_px))
            model_input.unlink()
            record = prediction.to_record(name, width_px, height_px)
            append_record(config.output_dir / PREDICTIONS_JSONL, record)
            predicted += 1
    return predicted, unreadable


def fail(message: str) -> int:
    print(f"error: {message}", file=sys.stderr)
    return 2


def main(argv: list[str] | None = None) -> int:
    config = cli.parse(InferenceConfig, DESCRIPTION, argv, HELP_EPILOG)
    if config is None:
        return 2
    try:
        images = find_input_images(config)
        if config.output_dir.exists() and not config.output_dir.is_dir():
            raise DataError(f"--output_dir {config.output_dir} is a file: pass a folder for the results.")
        records = load_records(config.output_dir / PREDICTIONS_JSONL)
        check_resumable(config.output_dir, records, config.prediction_settings())
    except ValueError as error:  # includes DataError
        return fail(str(error))
    try:
        localizer = build_localizer(config)
    except BackendUnavailable as error:
        return fail(str(error))

    config.output_dir.mkdir(parents=True, exist_ok=True)
    settings = config.prediction_settings()
    write_run_config(config.output_dir / RUN_CONFIG_JSON, asdict(config), settings)
    predicted, unreadable = predict_pending(localizer, config, images, set(records))
    if len(unreadable) == len(images):
        return fail(
            f"none of the {len(images)} images in {config.input_dir} could be read: "
            "check the files."
        )

    records = load_records(config.output_dir / PREDICTIONS_JSONL)
    names = [path.relative_to(config.input_dir).as_posix() for path in images]
    n_points = write_results_csv(config.output_dir / RESULTS_CSV, records, names)
    print(
        f"{predicted} images predicted, {len(images) - predicted - len(unreadable)} reused, "
        f"{len(unreadable)} skipped as unreadable; {n_points} keypoints -> "
        f"{config.output_dir / RESULTS_CSV}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
