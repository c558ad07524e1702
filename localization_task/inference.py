"""Nodule keypoints for a folder of radiographs: a trained heatmap localizer, or CheXagent-2 zero-shot.

    python localization_task/inference.py --input_dir data/test_images --backend heatmap \
        --checkpoint checkpoints/localization/best_model [--gate_csv classification_test_results.csv]
    python localization_task/inference.py --input_dir data/nodulocc/lidc_png_16_bit \
        --output_dir outputs/localization --revision <commit SHA of StanfordAIMI/CheXagent-2-3b>

`--backend heatmap` runs a model trained by localization_task/train.py, in
batches, in this environment; each keypoint's confidence is its heatmap peak,
kept from the threshold tuned on validation for count accuracy (the
challenge's ranking; `--operating_point f1` for the F1 one, or `--min_confidence`) up.
`--gate_csv` (either backend) takes the classifier's
classification_test_results.csv: images it calls No Finding (or scores below
`--gate_threshold`) get no keypoints.

The real model needs its own environment (transformers==4.40.0, see
localization_task/chexagent2/requirements.txt); `--backend scripted` swaps in a
scripted test double and runs the same pipeline anywhere.

CheXagent-2, per image: read the size from the header, pre-process (grey, percentile clip,
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

import json
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from PIL import Image
from tqdm import tqdm

from localization_task.common import cli
from localization_task.chexagent2.backend import (
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
from localization_task.evaluation.inputs import read_gate_csv
from localization_task.chexagent2.parsing import DEFAULT_LABELS
from localization_task.common.processes import Processes
from localization_task.common.run_files import RUN_CONFIG_JSON, append_record, write_run_config
from localization_task.evaluation.predictions import (
    PREDICTIONS_JSONL,
    RESULTS_CSV,
    all_records,
    check_resumable,
    merge_caches,
    write_results_csv,
)

ANY_LABEL = "*"


@dataclass
class InferenceConfig:
    input_dir: Path = cli.required("folder of PNG/JPEG/DICOM (.dcm) radiographs")
    output_dir: Path = cli.arg(Path("outputs/localization"), "where the CSV, JSONL and run config go")
    backend: Literal["chexagent2", "heatmap", "scripted"] = cli.arg(
        "chexagent2", "who answers: CheXagent-2, a trained heatmap localizer (--checkpoint), "
        "or a scripted test double that needs no model"
    )
    checkpoint: str | None = cli.arg(None, "heatmap: the best_model folder written by localization_task/train.py")
    min_confidence: float | None = cli.arg(
        None, "heatmap: keep peaks from this confidence up (default: the threshold tuned on validation)")
    operating_point: Literal["count", "f1"] = cli.arg(
        "count", "heatmap: use the threshold tuned for count accuracy (what the challenge ranks) or for F1")
    max_points: int = cli.arg(5, "heatmap: at most this many keypoints per image")
    batch_size: int = cli.arg(16, "heatmap: images per forward pass")
    num_workers: int = cli.arg(2, "heatmap: image-loading worker processes")
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
        if (self.backend == "heatmap") != (self.checkpoint is not None):
            raise ValueError("--checkpoint goes with --backend heatmap, and --backend heatmap needs a --checkpoint.")
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
        if self.backend == "heatmap":
            return {"backend": self.backend, "checkpoint": heatmap_path().checkpoint_signature(self.checkpoint),
                    "min_confidence": self.min_confidence, "operating_point": self.operating_point,
                    "max_points": self.max_points,
                    "clip_pct": [self.clip_low_pct, self.clip_high_pct], **gate}
        return {
            **gate,
            "backend": self.backend,
            "model_id": self.model_id,
            "revision": self.revision,
            "prompt": self.prompt_text,
            "labels": list(self.labels),
            "unlabelled_boxes": self.unlabelled_boxes,
            "clip_pct": [self.clip_low_pct, self.clip_high_pct],
            "max_new_tokens": self.max_new_tokens,
            # Only when asked for, so caches written before --dtype existed still resume.
            **({"dtype": self.dtype} if self.dtype != "auto" else {}),
        }


def heatmap_path():
    """localization_task.heatmap.predictor, imported on use: it needs the main environment (peft,
    transformers 5), which the CheXagent-2 environment is not."""
    try:
        from localization_task.heatmap import predictor as heatmap_backend
    except ImportError as error:
        raise BackendUnavailable(
            f"--backend heatmap needs the main environment ({error}): run it with the main environment's "
            "python, not .venv-chexagent2's."
        ) from None
    return heatmap_backend


def _is_commit_sha(revision: str) -> bool:
    return len(revision) == 40 and all(c in "0123456789abcdef" for c in revision.lower())


DESCRIPTION = f"""\
Nodule keypoints on chest radiographs: a heatmap localizer trained with
localization_task/train.py (--backend heatmap --checkpoint DIR), or CheXagent-2 zero-shot.
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
        dtype=config.dtype,
    )


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


def predict_pending(
    localizer: Localizer, config: InferenceConfig, pending: list[tuple[Path, str]], n_images: int,
    gate: set[str], cache: Path,
) -> tuple[int, list[str]]:
    """Predict the pending (path, name) images one by one, appending one record each.

    Returns (number predicted, unreadable file names)."""
    predicted, unreadable = 0, []
    bar = tqdm(pending, total=n_images, initial=n_images - len(pending), desc="images", unit="img")
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
            record = gated(prediction.to_record(name, width_px, height_px), gate)
            append_record(cache, record)
            predicted += 1
    return predicted, unreadable


def predict_pending_heatmap(config: InferenceConfig, pending: list[tuple[Path, str]],
                            gate: set[str], cache: Path) -> tuple[int, list[str]]:
    """Predict the pending images in batches with the trained localizer, appending one record each."""
    if not pending:  # all cached: no model to load, no threshold to announce
        return 0, []
    heatmap = heatmap_path()
    model = heatmap.load_localizer(config.checkpoint, config.device)
    unreadable = []

    def skip(name: str, reason: str) -> None:
        tqdm.write(f"skipped unreadable image {name}: {reason}", file=sys.stderr)
        unreadable.append(name)

    predicted = 0
    records = heatmap.predict_records(
        model, [path for path, _ in pending], [name for _, name in pending],
        heatmap.min_confidence_of(model, config.min_confidence, config.operating_point), config.max_points,
        config.batch_size,
        config.num_workers, (config.clip_low_pct, config.clip_high_pct), skip,
    )
    for record in records:
        append_record(cache, gated(record, gate))
        predicted += 1
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
        check_resumable(config.output_dir, records, config.prediction_settings())
        names = [path.relative_to(config.input_dir).as_posix() for path in images]
        gate = read_gate(config.gate_csv, config.gate_threshold, names) if config.gate_csv else set()
        localizer = None if config.backend == "heatmap" else build_localizer(config)
    except (ValueError, BackendUnavailable) as error:  # ValueError includes DataError
        return fail(str(error))

    config.output_dir.mkdir(parents=True, exist_ok=True)
    if processes.rank == 0:
        write_run_config(config.output_dir, config, {"prediction_settings": config.prediction_settings()})
    pending = processes.share([(path, name) for path, name in zip(images, names) if name not in records])
    cache = processes.own_file(config.output_dir / PREDICTIONS_JSONL)
    try:
        if localizer is None:
            predicted, unreadable = predict_pending_heatmap(config, pending, gate, cache)
        else:
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
