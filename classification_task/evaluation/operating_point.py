"""The operating point that travels with a trained adapter: the set-up its scores come from, and the
thresholds tuned on them.

After training, `operating_point.json` goes into the adapter folder (`write_operating_point`):
the base model, its quantization, the pre-processing, and the thresholds tuned on the validation
scores of exactly that set-up. The thresholds hold only for those scores: the same adapter on an
unquantized base, or on images stretched otherwise, scores differently. So inference takes every
setting not given on its command line from the file, labels at the tuned max-F1 threshold, and warns
in one line when a flag asks for another set-up. Schema and defaults: docs/classification.md
(the operating-point section).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from classification_task.dataset import Preprocessing
from classification_task.common.run_files import write_json_atomic

OPERATING_POINT_JSON = "operating_point.json"
# What every operating point holds (docs/classification.md, the operating point); more keys may follow.
OPERATING_POINT_KEYS = ("model_kind", "base_model", "quantization", "preprocessing", "thresholds",
                        "default_threshold")
MODEL_KIND = "medgemma_lora"  # a Gemma 3 base read through its two answer letters, with a LoRA adapter
ENCODER_KIND = "encoder"  # an encoder classifier's best_model folder: the model itself, never quantized
DEFAULT_THRESHOLD = "max_f1"
FALLBACK_THRESHOLD = 0.5  # what labels an adapter saved without an operating point
PREPROCESSING_FIELDS = ("clip_low_pct", "clip_high_pct", "image_size_px")


def write_operating_point(folder: str | Path, record: dict) -> Path:
    """`operating_point.json` in a saved model's folder, atomically: the set-up its scores come from
    (base model, quantization, pre-processing) and the thresholds tuned on them."""
    missing = [key for key in OPERATING_POINT_KEYS if key not in record]
    if missing:
        raise ValueError(f"an operating point needs {', '.join(missing)} as well.")
    return write_json_atomic(Path(folder) / OPERATING_POINT_JSON, record)


def read_operating_point(folder: str | Path | None) -> dict | None:
    """The record `write_operating_point` left in `folder`; None when there is none (or no local folder).

    A file that is not such a record raises ValueError naming it and the fix.
    """
    path = Path(folder) / OPERATING_POINT_JSON if folder else None
    if path is None or not path.is_file():
        return None
    fix = "delete it to use the defaults, or replace it with the one train.py --eval_only writes to its output folder"
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as err:
        raise ValueError(f"{path} could not be read as JSON ({err.__class__.__name__}); {fix}.") from None
    if not isinstance(record, dict) or not isinstance(record.get("thresholds"), dict):
        raise ValueError(f"{path} is not an operating point (no thresholds object in it); {fix}.")
    return record


def training_record(model_id: str, quantization: str, prep: Preprocessing, thresholds: dict[str, float],
                    n_val: int) -> dict:
    """The operating point of an adapter whose validation scores, made this way, tuned `thresholds`."""
    return {
        "model_kind": MODEL_KIND,
        "base_model": model_id,
        "quantization": quantization,
        "preprocessing": dict(zip(PREPROCESSING_FIELDS, (prep.clip_low_pct, prep.clip_high_pct, prep.size_px))),
        "thresholds": dict(thresholds),
        "default_threshold": DEFAULT_THRESHOLD,
        "tuned_on": {"split": "val", "n_images": n_val},
    }


def recorded_settings(record: dict) -> dict:
    """The inference settings the record fixes, by config field: base model, quantization, pre-processing."""
    settings = {"model_id": record.get("base_model"), "quantization": record.get("quantization")}
    if record.get("model_kind") == ENCODER_KIND:  # --model_id is the saved folder, which holds the encoder
        settings = {}
    settings = {key: value for key, value in settings.items() if value is not None}
    prep = record.get("preprocessing") or {}
    return settings | {key: prep[key] for key in PREPROCESSING_FIELDS if key in prep}


def same_setting(key: str, asked, recorded) -> bool:
    """Equal values; for the base model also two spellings of one local folder."""
    if asked == recorded:
        return True
    if key != "model_id":
        return False
    asked_path, recorded_path = Path(str(asked)), Path(str(recorded))
    return asked_path.exists() and recorded_path.exists() and asked_path.resolve() == recorded_path.resolve()


def tuned_threshold(record: dict) -> tuple[str, float | None]:
    """The record's default threshold: its name, and its value (None when validation could not tune it)."""
    name = record.get("default_threshold") or DEFAULT_THRESHOLD
    value = record["thresholds"].get(name)
    usable = isinstance(value, (int, float)) and not isinstance(value, bool) and 0 <= value <= 1
    return name, float(value) if usable else None


def mismatch_warning(config, recorded: dict, path: Path) -> tuple[list[str], str | None]:
    """The settings in `config` that differ from the record, and the one-line warning about them."""
    differs = [key for key, value in recorded.items() if not same_setting(key, getattr(config, key), value)]
    if not differs:
        return [], None
    asked = ", ".join(f"--{key} {getattr(config, key)}" for key in differs)
    why = " (--merge_adapter loads the base unquantized)" if "quantization" in differs and config.merge_adapter else ""
    was = ", ".join(str(recorded[key]) for key in differs)
    return differs, (f"warning: {asked}{why} differ from {path} ({was}), the set-up whose validation scores "
                     "tuned its thresholds; scores and labels may shift.")


def apply_record(config, record: dict, given: set[str], path: Path) -> tuple[object, dict, list[str]]:
    """`config` with the record's setting for every field not in `given`; provenance; lines to print."""
    expected = ENCODER_KIND if config.adapter is None else MODEL_KIND
    if record.get("model_kind") != expected:
        raise ValueError(f"{path} describes a {record.get('model_kind')!r} model, not a {expected} one; pass a "
                         "LoRA adapter saved by classification_task/train.py as --adapter, or an encoder "
                         "classifier's best_model folder as --model_id.")
    recorded = recorded_settings(record)
    updates = {key: value for key, value in recorded.items() if key not in given}
    if config.merge_adapter and updates.get("quantization") == "nf4":
        updates["quantization"] = "none"  # merging into 4-bit weights would round them
    threshold, lines = {"value": config.threshold, "source": "--threshold", "name": None, "file": str(path)}, []
    if "threshold" not in given:
        name, value = tuned_threshold(record)
        if value is None:
            threshold |= {"value": FALLBACK_THRESHOLD, "source": "default"}
            lines.append(f"note: {path} holds no usable {name} threshold (validation could not tune one): "
                         f"labelling at {FALLBACK_THRESHOLD}; pass --threshold to choose another.")
        else:
            updates["threshold"] = value
            threshold |= {"value": value, "source": "operating_point", "name": name}
    config = dataclasses.replace(config, **updates)
    differs, warning = mismatch_warning(config, recorded, path)
    lines += [warning] if warning else []
    provenance = {"threshold": threshold, "operating_point": {"file": str(path), "applied": sorted(updates),
                                                               "differs": differs}}
    return config, provenance, lines


def resolve(config, given: set[str]) -> tuple[object, dict, list[str]]:
    """The inference config with its adapter's operating point applied, where the threshold and the
    settings came from (for the inference record, run_config.classification.json), and the note or
    warning lines to print.

    `given`: the config fields set on the command line; they win over the record. An adapter
    folder without `operating_point.json` (and the zero-shot base) keeps the previous defaults; for
    an adapter folder labelled at the default threshold, a one-line note says so.
    """
    folder = config.adapter or config.model_id  # the adapter, or an encoder classifier's own folder
    record = read_operating_point(folder)
    if record is not None:
        return apply_record(config, record, given, Path(folder) / OPERATING_POINT_JSON)
    source = "--threshold" if "threshold" in given else "default"
    provenance = {"threshold": {"value": config.threshold, "source": source, "name": None, "file": None},
                  "operating_point": None}
    lines = []
    if config.adapter and Path(config.adapter).is_dir() and "threshold" not in given:
        lines.append(f"note: {config.adapter} has no {OPERATING_POINT_JSON} (saved by an older train.py): using "
                     f"--quantization {config.quantization} and --threshold {config.threshold}; pass the "
                     "threshold tuned on validation (in its run's metrics.json) with --threshold.")
    return config, provenance, lines
