"""Nodule keypoints for a folder of radiographs with any Localizer: the trained heatmap localizer, or CheXagent-2.

    python localization_task/inference.py --input_dir data/test_images \
        --checkpoint checkpoints/localization/best_model [--gate_csv classification_test_results.csv]
    .venv-chexagent2/bin/python localization_task/inference.py --backend chexagent2 \
        --input_dir data/nodulocc/lidc_png_16_bit --revision <commit SHA of StanfordAIMI/CheXagent-2-3b>

One path for every backend (localizers.py): the pending images are read in
batches (data-loader workers: grey, per-image percentile stretch to 8 bits,
original size), the localizer predicts each batch, the classifier's gate
applies, and each image's record is appended to the cache as soon as it is
done.

`--backend heatmap` (the default) runs a model trained by
localization_task/train.py, in this environment, with the stretch it was
trained with; each keypoint's confidence is its heatmap peak, kept from the
threshold tuned on validation for count accuracy (the challenge's ranking;
`--operating_point f1` for the F1 one, or `--min_confidence`) up.
`--backend chexagent2` asks CheXagent-2, one image at a time, in its own
environment (transformers==4.40.0, see localization_task/chexagent2/requirements.txt);
each keypoint is a box centre, its confidence the geometric mean probability of
the tokens the model generated for the box.
`--gate_csv` (either backend) takes the classifier's
classification_test_results.csv: images it calls No Finding (or scores below
`--gate_threshold`) get no keypoints.

Writes, in --output_dir (default outputs/localization):
  predictions.jsonl               one record per image; also the resume cache
  localization_test_results.csv   file_name,x,y,confidence (rebuilt from the
                                  JSONL, written atomically)
  run_config.localization.json    resolved config, prediction settings,
                                  package versions, git commit
(several processes: each appends to predictions.rank<R>.jsonl, merged at the end).
The classifier's inference may write into the same folder (README step 3): its
files have other names and are not read, except the CSV given as --gate_csv.
Rerunning the same command skips images already in predictions.jsonl, if the
prediction settings are those in run_config.localization.json (the only record
it reads); rerunning a finished run rewrites the same files.
"""
from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from localization_task import localizers
from localization_task.chexagent2.backend import (
    CHEXAGENT2_MODEL_ID,
    CHEXAGENT2_REVISION,
    DEFAULT_FINDING,
    DEFAULT_PROMPT,
    MAX_NEW_TOKENS,
    SETUP_COMMANDS,
)
from localization_task.chexagent2.parsing import DEFAULT_LABELS
from localization_task.common import cli
from localization_task.common.processes import Processes
from localization_task.common.run_files import append_record, write_run_config
from localization_task.evaluation.predictions import (
    PREDICTIONS_JSONL,
    RESULTS_CSV,
    RUN_CONFIG_JSON,
    all_records,
    check_resumable,
    merge_caches,
    write_results_csv,
)
from localization_task.dataset import (
    DEFAULT_CLIP_HIGH_PCT,
    DEFAULT_CLIP_LOW_PCT,
    DataError,
    UnreadableImage,
    discover_images,
    read_stretched,
)
from localization_task.evaluation.inputs import read_gate_csv
from localization_task.localizers import BackendUnavailable, ImageInput, Localizer

ANY_LABEL = "*"


@dataclass
class InferenceConfig:
    input_dir: Path = cli.required("folder of PNG/JPEG/DICOM (.dcm) radiographs")
    output_dir: Path = cli.arg(Path("outputs/localization"), "where the CSV, JSONL and run config go")
    # The choices are the registered backends, read when the flags are parsed (annotations are
    # strings here): localizers.BACKENDS is the one list of names.
    backend: Literal[localizers.names()] = cli.arg(
        "heatmap", "who answers: the heatmap localizer trained by train.py (--checkpoint), or CheXagent-2 "
        "zero-shot (in its own environment)"
    )
    checkpoint: str | None = cli.arg(None, "heatmap: the best_model folder written by localization_task/train.py")
    min_confidence: float | None = cli.arg(
        None, "heatmap: keep peaks from this confidence up (default: the threshold tuned on validation)")
    operating_point: Literal["count", "f1"] = cli.arg(
        "count", "heatmap: use the threshold tuned for count accuracy (what the challenge ranks) or for F1")
    max_points: int = cli.arg(5, "heatmap: at most this many keypoints per image")
    batch_size: int = cli.arg(16, "images read and handed to the localizer at once (heatmap: one forward pass)")
    num_workers: int = cli.arg(2, "image-reading worker processes")
    gate_csv: str | None = cli.arg(
        None, "classification_test_results.csv: images the classifier calls No Finding get no keypoints")
    gate_threshold: float | None = cli.arg(
        None, "with --gate_csv: gate by confidence < this instead of by the label column")
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
    clip_low_pct: float | None = cli.arg(
        None, f"per-image lower clip percentile (default: heatmap, the model's own; else {DEFAULT_CLIP_LOW_PCT})")
    clip_high_pct: float | None = cli.arg(
        None, f"per-image upper clip percentile (default: heatmap, the model's own; else {DEFAULT_CLIP_HIGH_PCT})")
    device: Literal["auto", "cuda", "cpu"] = cli.arg(
        "auto", "where the model runs; auto: this process's GPU (cuda:LOCAL_RANK) when torch sees one")
    dtype: Literal["auto", "bfloat16", "float32"] = cli.arg(
        "auto", "chexagent2: weights and compute dtype; auto: bfloat16 on a GPU, float32 on the CPU")
    max_new_tokens: int = cli.arg(MAX_NEW_TOKENS, "generation length limit")

    def __post_init__(self):
        self.input_dir, self.output_dir = Path(self.input_dir), Path(self.output_dir)
        self.labels = tuple(self.labels)
        cli.check_choices(self)
        if self.backend != "heatmap":  # a heatmap model brings its own (resolve_clip_pct)
            self.clip_low_pct = DEFAULT_CLIP_LOW_PCT if self.clip_low_pct is None else self.clip_low_pct
            self.clip_high_pct = DEFAULT_CLIP_HIGH_PCT if self.clip_high_pct is None else self.clip_high_pct
        low = 0 if self.clip_low_pct is None else self.clip_low_pct
        if not 0 <= low < (100 if self.clip_high_pct is None else self.clip_high_pct) <= 100:
            raise ValueError("--clip_low_pct and --clip_high_pct need 0 <= low < high <= 100.")
        if self.max_new_tokens < 1 or self.max_points < 1 or self.batch_size < 1 or self.num_workers < 0:
            raise ValueError("--max_new_tokens, --max_points and --batch_size must be at least 1, "
                             "--num_workers at least 0.")
        if self.backend == "heatmap" and self.checkpoint is None:
            raise ValueError("--backend heatmap (the default) needs --checkpoint: pass the best_model folder that "
                             "localization_task/train.py wrote, or --backend chexagent2.")
        if self.backend != "heatmap" and self.checkpoint is not None:
            raise ValueError("--checkpoint goes with --backend heatmap only.")
        for name in ("min_confidence", "gate_threshold"):
            if getattr(self, name) is not None and not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"--{name} must lie in [0, 1].")
        if self.gate_threshold is not None and self.gate_csv is None:
            raise ValueError("--gate_threshold needs --gate_csv.")
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
        gate = {"gate_csv": self.gate_csv and str(Path(self.gate_csv).resolve()), "gate_threshold": self.gate_threshold}
        return {**gate, "backend": self.backend, **localizers.prediction_settings(self.backend, self)}


def _is_commit_sha(revision: str) -> bool:
    return len(revision) == 40 and all(c in "0123456789abcdef" for c in revision.lower())


DESCRIPTION = f"""\
Nodule keypoints on chest radiographs: the heatmap localizer trained with
localization_task/train.py (--checkpoint DIR, the default backend), or CheXagent-2
zero-shot (--backend chexagent2). Writes {RESULTS_CSV} and {PREDICTIONS_JSONL}
(also the resume cache: rerun the same command to continue an interrupted run)."""

HELP_EPILOG = f"""\
CheXagent-2 (--backend chexagent2) runs ONLY in its own environment with
transformers==4.40.0, which its remote code asserts:
  {SETUP_COMMANDS.replace(" && ", chr(10) + "  ")}
  .venv-chexagent2/bin/python localization_task/inference.py --backend chexagent2 \\
      --input_dir DIR --output_dir DIR --revision <full commit SHA of {CHEXAGENT2_MODEL_ID}>
A CheXagent-2 keypoint's confidence is the mean probability (geometric) of the
tokens it generated for its box.
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
            f"no .png/.jpg/.jpeg/.dcm images in {config.input_dir}: check --input_dir{hint}."
        )
    return images


def resolve_clip_pct(config: InferenceConfig, warn: bool = True) -> None:
    """--backend heatmap: the stretch the model was trained with, unless another is asked (one warning line).

    Reads the checkpoint's config.json (a model saved before it recorded its
    stretch was trained with the defaults); a missing one is reported later.
    """
    try:
        saved = json.loads((Path(config.checkpoint) / "config.json").read_text())
    except (OSError, ValueError):
        saved = {}
    saved = saved if isinstance(saved, dict) else {}
    differing = []
    for name, default in (("clip_low_pct", DEFAULT_CLIP_LOW_PCT), ("clip_high_pct", DEFAULT_CLIP_HIGH_PCT)):
        trained, asked = float(saved.get(name, default)), getattr(config, name)
        if asked is not None and asked != trained:
            differing.append(f"--{name} {asked:g} (trained with {trained:g})")
        setattr(config, name, trained if asked is None else asked)
    if warn and differing:
        print(f"warning: {' and '.join(differing)} differs from this model's own stretch; "
              "its confidences and tuned threshold may not hold.", file=sys.stderr)
    if not config.clip_low_pct < config.clip_high_pct:
        raise DataError("--clip_low_pct and --clip_high_pct need low < high with the model's own values; pass both.")


# --- gating by the classifier ---------------------------------------------------


def read_gate(path: str, threshold: float | None, names: list[str]) -> set[str]:
    """The images of `names` that the classifier's CSV calls No Finding (or scores below `threshold`)."""
    verdicts = read_gate_csv(path, threshold)
    missing = [name for name in names if name not in verdicts]
    if missing:
        raise DataError(f"--gate_csv {path} has no row for {len(missing)} of the images, e.g. {missing[0]!r}: "
                        "score the same --input_dir with classification_task/inference.py.")
    return {name for name in names if verdicts[name]}


def gated(record: dict, gate: set[str]) -> dict:
    """The record with its keypoints removed when the classifier gated its image."""
    if record["file_name"] not in gate:
        return record
    return {**record, "points": [], "gated": True, "ungated_points": record["points"]}


# --- the run ------------------------------------------------------------------


class PendingImages(Dataset):
    """The (path, name) images to predict, read and stretched in data-loader workers.

    An item is an `ImageInput`, or (path, name, reason) for a file that cannot be read."""

    def __init__(self, pending: list[tuple[Path, str]], clip_pct: tuple[float, float]):
        self.pending, self.clip_pct = pending, clip_pct

    def __len__(self) -> int:
        return len(self.pending)

    def __getitem__(self, index: int) -> ImageInput | tuple[Path, str, str]:
        path, name = self.pending[index]
        try:
            return ImageInput(name, read_stretched(str(path), *self.clip_pct))
        except UnreadableImage as error:
            return path, name, error.reason


def predict_pending(
    localizer: Localizer | None, config: InferenceConfig, pending: list[tuple[Path, str]], n_images: int,
    gate: set[str], cache: Path,
) -> tuple[int, list[str]]:
    """Predict the pending (path, name) images batch by batch, appending each image's record as it comes.

    Returns (number predicted, unreadable file names)."""
    predicted, unreadable = 0, []
    if not pending:
        return predicted, unreadable
    images = PendingImages(pending, (config.clip_low_pct, config.clip_high_pct))
    batches = DataLoader(images, batch_size=config.batch_size, num_workers=config.num_workers, collate_fn=list)
    with tqdm(total=n_images, initial=n_images - len(pending), desc="images", unit="img") as bar:
        for batch in batches:
            readable = [item for item in batch if isinstance(item, ImageInput)]
            for path, name, reason in (item for item in batch if not isinstance(item, ImageInput)):
                tqdm.write(f"skipped unreadable image {path}: {reason}", file=sys.stderr)
                unreadable.append(name)
                bar.update()
            for image, prediction in zip(readable, localizer.predict(readable), strict=True):
                record = prediction.to_record(image.file_name, image.width_px, image.height_px)
                append_record(cache, gated(record, gate))
                predicted += 1
                bar.update()
    return predicted, unreadable


def fail(message: str) -> int:
    print(f"error: {message}", file=sys.stderr)
    return 2


def main(argv: list[str] | None = None) -> int:
    config = cli.parse(InferenceConfig, DESCRIPTION, argv, HELP_EPILOG)
    if config is None:
        return 2
    processes = Processes.join()
    try:
        return run(config, processes)
    finally:
        processes.leave()


def run(config: InferenceConfig, processes: Processes) -> int:
    """Predict this process's share of the pending images; process 0 then writes the outputs."""
    try:
        if config.backend == "heatmap":
            resolve_clip_pct(config, warn=processes.rank == 0)  # one warning, not one per process
        images = find_input_images(config)
        if config.output_dir.exists() and not config.output_dir.is_dir():
            raise DataError(f"--output_dir {config.output_dir} is a file: pass a folder for the results.")
        records = all_records(config.output_dir)
        settings = config.prediction_settings()
        check_resumable(config.output_dir, records, settings)
        names = [path.relative_to(config.input_dir).as_posix() for path in images]
        gate = read_gate(config.gate_csv, config.gate_threshold, names) if config.gate_csv else set()
        todo = [(path, name) for path, name in zip(images, names) if name not in records]
        # Every process builds it while any image is left (all fail alike, none waits for another);
        # none when all are cached: no model to load, no threshold to announce.
        localizer = localizers.build_localizer(config.backend, config) if todo else None
    except (ValueError, BackendUnavailable) as error:  # ValueError includes DataError
        return fail(str(error))

    config.output_dir.mkdir(parents=True, exist_ok=True)
    if processes.rank == 0:
        write_run_config(config.output_dir, config, {"prediction_settings": settings}, RUN_CONFIG_JSON)
    pending = processes.share(todo)
    cache = processes.own_file(config.output_dir / PREDICTIONS_JSONL)
    try:
        predicted, unreadable = predict_pending(localizer, config, pending, len(images), gate, cache)
    except DataError as error:
        return fail(str(error))
    counts = processes.gather_to_first([(predicted, unreadable)])  # waits for every process
    if processes.rank != 0:
        return 0
    predicted, unreadable = sum(c[0] for c in counts), [name for c in counts for name in c[1]]
    if len(unreadable) == len(images):
        return fail(
            f"none of the {len(images)} images in {config.input_dir} could be read: "
            "check the files."
        )

    records = merge_caches(config.output_dir, names)
    n_points = write_results_csv(config.output_dir / RESULTS_CSV, records, names)
    print(
        f"{predicted} images predicted, {len(images) - predicted - len(unreadable)} reused, "
        f"{len(unreadable)} skipped as unreadable, {len(gate)} gated by the classifier; {n_points} keypoints -> "
        f"{config.output_dir / RESULTS_CSV}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
