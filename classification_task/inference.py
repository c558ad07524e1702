"""Score a folder of chest radiographs: p(nodule) per image, in the challenge format.

    python classification_task/inference.py --input_dir data/test_images --output_dir outputs/inference \\
        --adapter checkpoints/classification/best_adapter
    python -m classification_task.inference --input_dir classification_task/tests/data \\
        --output_dir outputs/inference_tiny --model_id checkpoints/tiny-medgemma   # offline, CPU
    python classification_task/inference.py --input_dir data/test_images --output_dir outputs/inference_encoder \\
        --model_id checkpoints/classification/best_model      # an encoder classifier train.py saved

The adapter folder's (or an encoder classifier's best_model folder's) operating_point.json (written by train.py) supplies every setting not
given as a flag: base model, quantization, pre-processing, and the max-F1 threshold tuned on
validation (docs/classification.md, the operating-point section); a flag that asks for another
set-up draws a one-line warning.

Writes, in --output_dir:
  classification_test_results.csv    file_name,label,confidence (confidence = p(nodule);
                                     label Nodule when confidence >= --threshold), written atomically
  run_config.classification.json     resolved config, the threshold and where it came from,
                                     package versions, git commit
  unreadable_files.csv               file_name,error for files that could not be decoded (if any)
  .classification_partial.<key>.csv  the resume cache: file_name,confidence, one file per
                                     model/adapter/pre-processing, appended after every batch
The localizer's inference may write into the same folder (README step 3): its
files have other names, and this command reads none of them.
Rerunning the same command scores only the images not yet in the cache (new or
interrupted ones; the cache's name, not a run record, says which scores fit);
the final CSV and the run record are rewritten every time, so rerunning a
finished run rewrites the same files.

Several processes (one GPU each, or CPU processes) share the images:

    accelerate launch --num_processes 4 classification_task/inference.py --input_dir ... --output_dir ...
    torchrun --nproc_per_node 4 classification_task/inference.py --input_dir ... --output_dir ...

Process r of N scores every N-th image still to score, from the r-th, into its own
cache file (.classification_partial.<key>.rank<r>.csv); process 0 waits for the
others, merges every cache and writes the CSV. A rerun, with any number of
processes, resumes from all the cache files.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
from torch.utils.data import Dataset

from classification_task.common import cli

from classification_task import classifiers

from classification_task.evaluation import operating_point
from classification_task.common.errors import IMAGE_SUFFIXES
from classification_task.dataset import INT_TO_LABEL, DataError, Preprocessing, load_image, safe_join
from classification_task.encoder.model import load_classifier
from classification_task.model import MEDGEMMA_ID, answer_token_ids, load_processor, load_with_adapter
from classification_task.common.processes import Processes
from classification_task.common.run_files import inference_run_config_json, write_csv_atomic, write_run_config

RESULTS_CSV = "classification_test_results.csv"
RUN_CONFIG_JSON = inference_run_config_json("classification")  # the localizer's inference keeps its own
UNREADABLE_CSV = "unreadable_files.csv"
PARTIAL_PREFIX = ".classification_partial"


@dataclass
class InferenceConfig:
    input_dir: str | None = cli.arg(None, "folder of .png/.jpg/.jpeg/.dcm radiographs to score (required)")
    output_dir: str = cli.arg("outputs/classification_inference", "where the results CSV, config and resume cache go")
    model_id: str = cli.arg(MEDGEMMA_ID, "hub id or local folder of the base model, or the best_model folder of "
                                         "an encoder classifier; not given: the adapter's operating point's "
                                         "base_model, else this default")
    adapter: str | None = cli.arg(None, "LoRA adapter folder from train.py (or a hub id); none = zero-shot base")
    threshold: float = cli.arg(0.5, "label Nodule when p(nodule) >= threshold; not given: the max_f1 threshold "
                                    "tuned on validation, from the adapter's operating_point.json, else this default")
    batch_size: int = cli.arg(8, "images per forward pass")
    recursive: bool = cli.arg(False, "also score images in sub-folders of --input_dir")
    merge_adapter: bool = cli.arg(False, "merge the adapter into unquantized base weights: faster, the scores "
                                         "of --quantization none")
    quantization: Literal["none", "nf4"] = cli.arg("none", "none = bf16 on GPU, fp32 on CPU; nf4 = 4-bit base; "
                                                   "not given: as recorded in the adapter's operating point")
    clip_low_pct: float = cli.arg(0.5, "lower percentile of the per-image contrast stretch (not given: as recorded)")
    clip_high_pct: float = cli.arg(99.5, "upper percentile of the per-image contrast stretch (not given: as recorded)")
    image_size_px: int | None = cli.arg(None, "resize before the processor (not given: as recorded; none = no resize)")
    num_workers: int = cli.arg(2, "image-loading worker processes")

    def __post_init__(self) -> None:
        if not self.input_dir:
            raise ValueError("--input_dir is required: pass the folder of radiographs to score.")
        if self.threshold is not None and not 0 <= self.threshold <= 1:
            raise ValueError("--threshold must lie in [0, 1].")
        if self.batch_size < 1:
            raise ValueError("--batch_size must be at least 1.")
        if self.num_workers < 0:
            raise ValueError("--num_workers must be 0 or more.")
        if self.merge_adapter and self.quantization == "nf4":
            raise ValueError("--merge_adapter needs --quantization none: merging into 4-bit weights rounds them.")
        self.preprocessing  # validates the percentiles and the size

    @property
    def preprocessing(self) -> Preprocessing:
        low, high = Preprocessing.clip_low_pct, Preprocessing.clip_high_pct  # until apply_operating_point
        return Preprocessing(low if self.clip_low_pct is None else self.clip_low_pct,
                             high if self.clip_high_pct is None else self.clip_high_pct, self.image_size_px)


# ----------------------------------------------------------------------------- inputs


def list_images(input_dir: Path, recursive: bool) -> list[str]:
    """Sorted posix paths of the image files under `input_dir`, relative to it.

    Files that are symlinks (data stores such as DVC or hub snapshots) count as
    images; linked folders are not descended into.
    """
    names = []
    for folder, subfolders, files in os.walk(input_dir):
        if not recursive:
            subfolders.clear()
        for file in files:
            path = Path(folder, file)
            if file.lower().endswith(IMAGE_SUFFIXES) and path.is_file():
                names.append(path.relative_to(input_dir).as_posix())
    return sorted(names)


def find_images(config: InferenceConfig) -> list[str]:
    input_dir = Path(config.input_dir)
    if not input_dir.is_dir():
        raise DataError(f"input folder {input_dir} not found; pass an existing folder of radiographs as --input_dir.")
    names = list_images(input_dir, config.recursive)
    if not names:
        hint = "" if config.recursive else ", or add --recursive for sub-folders"
        raise DataError(f"no .png/.jpg/.jpeg/.dcm images found in {input_dir}; check --input_dir{hint}.")
    return names


def looks_like_hub_id(name: str) -> bool:
    """`owner/name` with no local `owner/` folder; anything else is taken for a local path."""
    path = Path(name)
    return len(path.parts) == 2 and not path.is_absolute() and not name.startswith(".") and not path.parent.is_dir()


def check_local_folder(name_or_path: str | None, flag: str, marker: str, hint: str) -> None:
    """A missing local folder fails here, in one sentence, not deep inside from_pretrained."""
    if name_or_path and not looks_like_hub_id(name_or_path) and not (Path(name_or_path) / marker).is_file():
        raise DataError(f"{flag} folder {name_or_path} not found (no {marker} in it); pass {hint} or a hub id.")


# ----------------------------------------------------------------------------- resume cache


def source_signature(name_or_path: str | None):
    """A hub id as given; a local folder as its path plus each file's size and mtime,
    so that retraining into the same folder does not reuse stale scores."""
    if not name_or_path or not Path(name_or_path).is_dir():
        return name_or_path
    folder = Path(name_or_path)
    files = sorted((p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in folder.iterdir() if p.is_file())
    return [str(folder.resolve()), files]


def partial_path(config: InferenceConfig, rank: int | None = None) -> Path:
    """One cache file per set of things a confidence depends on (not threshold or batch size),
    and per process when several share the work (`rank`)."""
    settings = {
        "input_dir": str(Path(config.input_dir).resolve()),
        "model": source_signature(config.model_id),
        "adapter": source_signature(config.adapter),
        "quantization": config.quantization,
        "preprocessing": [config.clip_low_pct, config.clip_high_pct, config.image_size_px],
    }
    key = hashlib.sha1(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:12]
    return Path(config.output_dir) / f"{PARTIAL_PREFIX}.{key}{'' if rank is None else f'.rank{rank}'}.csv"


def cached_scores(config: InferenceConfig) -> dict[str, float]:
    """The scores in every cache file of this configuration: one process's or several's."""
    single = partial_path(config)
    scores = {}
    for path in [single, *sorted(single.parent.glob(f"{single.stem}.rank*.csv"))]:
        scores |= PartialScores(path).load()
    return scores


class PartialScores:
    """The resume cache: `file_name,confidence` rows, appended and flushed after every batch.

    A crash mid-append leaves a last row without its newline; such a row is
    ignored and cut off the file, so the next append starts on a fresh line.
    """

    HEADER = ["file_name", "confidence"]

    def __init__(self, path: Path):
        self.path = path

    def load(self) -> dict[str, float]:
        if not self.path.is_file():
            return {}
        data = self.path.read_bytes()
        complete = data[: data.rfind(b"\n") + 1]
        if len(complete) < len(data):
            with open(self.path, "r+b") as handle:
                handle.truncate(len(complete))
        scores = {}
        for row in csv.reader(io.StringIO(complete.decode("utf-8"))):
            try:
                name, confidence = row[0], float(row[1])
            except (IndexError, ValueError):
                continue  # the header, or a row damaged by hand
            if len(row) == 2 and 0 <= confidence <= 1:
                scores[name] = confidence
        return scores

    def append(self, names: list[str], confidences: np.ndarray) -> None:
        # With several processes, another may score its first batch before process 0 has made the folder.
        self.path.parent.mkdir(parents=True, exist_ok=True)
        new_file = not self.path.is_file() or self.path.stat().st_size == 0
        with open(self.path, "a", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle, lineterminator="\n")
            if new_file:
                writer.writerow(self.HEADER)
            writer.writerows((name, repr(float(p))) for name, p in zip(names, confidences))
            handle.flush()
            os.fsync(handle.fileno())


# ----------------------------------------------------------------------------- scoring


class FolderImages(Dataset):
    """Images of a folder by relative name; an unreadable file gives image None and the reason."""

    def __init__(self, input_dir: str | Path, names: list[str], prep: Preprocessing):
        self.input_dir = Path(input_dir)
        self.names = names
        self.prep = prep

    def __len__(self) -> int:
        return len(self.names)

    def __getitem__(self, index: int) -> dict:
        name = self.names[index]
        try:
            image = load_image(safe_join(self.input_dir, name), self.prep)
        except Exception as err:  # Pillow raises many types; one bad file must not end a long run
            return {"file_name": name, "image": None, "error": f"{type(err).__name__}: {err}"}
        return {"file_name": name, "image": image}


def load_model(config: InferenceConfig):
    """Model (adapter applied, merged if asked) and processor; load failures raise DataError.
    An encoder classifier's folder holds all its weights: model and no processor."""
    if classifiers.resolve_kind(config.model_id) == "encoder":
        if config.adapter:
            raise DataError(f"--adapter is for MedGemma; {config.model_id} is an encoder classifier whose folder "
                            "holds all its weights: drop --adapter.")
        return load_classifier(config.model_id), None
    processor = load_processor(config.model_id)
    answer_token_ids(processor.tokenizer)  # fails early on a non-Gemma tokenizer
    model = load_with_adapter(config.model_id, config.adapter, config.quantization, config.merge_adapter)
    return model, processor


def score_images(config: InferenceConfig, model, processor, names: list[str], cache: PartialScores,
                 desc: str = "scoring") -> list[tuple[str, str]]:
    """Score `names` batch by batch into `cache`; returns (file_name, error) of unreadable ones."""
    images = FolderImages(config.input_dir, names, config.preprocessing)
    unreadable = []
    batches = classifiers.score_batches(model, processor, images, config.batch_size, config.num_workers, desc)
    for file_names, p_nodule, skipped in batches:
        if file_names:
            cache.append(file_names, p_nodule)
        unreadable += skipped
    return unreadable


# ----------------------------------------------------------------------------- outputs


def results_frame(names: list[str], scores: dict[str, float], threshold: float) -> pd.DataFrame:
    """Challenge format, in the order of `names`; names without a score are left out."""
    scored = [name for name in names if name in scores]
    confidence = np.array([scores[name] for name in scored], dtype=np.float64)
    return pd.DataFrame({
        "file_name": scored,
        "label": [INT_TO_LABEL[int(p >= threshold)] for p in confidence],
        "confidence": confidence,
    })


def report_unreadable(output_dir: Path, unreadable: list[tuple[str, str]]) -> None:
    path = output_dir / UNREADABLE_CSV
    if not unreadable:
        path.unlink(missing_ok=True)  # a list from an earlier run would no longer be true
        return
    write_csv_atomic(pd.DataFrame(unreadable, columns=["file_name", "error"]), path)
    name, error = unreadable[0]
    print(f"skipped {len(unreadable)} unreadable file(s), listed in {path}; e.g. {name}: {error}")


def score_share(config: InferenceConfig, names: list[str], processes: Processes,
                provenance: dict | None = None) -> list[tuple[str, str]]:
    """This process's share of the images not yet scored, into its own cache; on process 0,
    once every process has finished, the unreadable files of all."""
    scored = cached_scores(config)
    pending = [name for name in names if name not in scored]
    if processes.rank == 0:
        print(f"{len(names)} image(s) in {config.input_dir}: {len(names) - len(pending)} already scored, "
              f"{len(pending)} to score" + (f" by {processes.count} processes" if processes.count > 1 else ""))
    processes.barrier()  # every process has read the caches before any appends to them
    mine = processes.share(pending)
    model, processor = load_model(config) if mine else (None, None)  # a failed load writes nothing
    if processes.rank == 0:
        write_run_config(Path(config.output_dir), config, provenance, RUN_CONFIG_JSON)
    rank = processes.rank if processes.count > 1 else None
    desc = "scoring" if rank is None else f"scoring, process {rank}"
    cache = PartialScores(partial_path(config, rank))
    unreadable = score_images(config, model, processor, mine, cache, desc) if mine else []
    order = {name: index for index, name in enumerate(names)}
    return sorted(processes.gather_to_first(unreadable), key=lambda pair: order[pair[0]])


def with_operating_point(config: InferenceConfig, given: set[str], processes: Processes):
    """The config with the adapter's operating point applied to the flags not `given`, and where the
    threshold came from; process 0 prints the note or warning."""
    config, provenance, lines = operating_point.resolve(config, given)
    for line in lines if processes.rank == 0 else []:
        print(line, file=sys.stderr)
    return config, provenance


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    config = cli.parse(InferenceConfig, __doc__, argv)
    if config is None:
        return 2
    output_dir = Path(config.output_dir)
    processes = Processes.join()
    try:
        names = find_images(config)
        check_local_folder(config.adapter, "--adapter", "adapter_config.json",
                           "the folder train.py saved (e.g. checkpoints/classification/best_adapter)")
        config, provenance = with_operating_point(config, cli.given_fields(InferenceConfig, argv), processes)
        check_local_folder(config.model_id, "--model_id", "config.json", "a folder written by save_pretrained")
        unreadable = score_share(config, names, processes, provenance)
        if processes.rank != 0:
            return 0
        results = results_frame(names, cached_scores(config), config.threshold)
        report_unreadable(output_dir, unreadable)
        if results.empty:  # no empty results file that could pass for a submission
            raise DataError(f"none of the {len(names)} image(s) in {config.input_dir} could be read; "
                            f"see {output_dir / UNREADABLE_CSV} and convert them to PNG or JPEG.")
        write_csv_atomic(results, output_dir / RESULTS_CSV)
    except (DataError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    finally:
        processes.leave()
    n_nodule = int((results["label"] == INT_TO_LABEL[1]).sum())
    source = provenance["threshold"]
    where = {"operating_point": f" ({source['name']}, tuned on validation)", "--threshold": " (--threshold)"}
    print(f"{len(results)} image(s) scored, {n_nodule} labelled {INT_TO_LABEL[1]} at threshold "
          f"{config.threshold}{where.get(source['source'], '')}: {output_dir / RESULTS_CSV}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
