"""The patient split of the classification data: train / val / test, stratified by class.

A patient (NIH: the PPPPPPPP prefix of its file names; LIDC: its LIDC_ID) never
spans two splits. `load_or_make_split` reads a saved `split.csv` or draws a
fresh seeded split; `keep_run_split` holds a resumed run to the split it started
with. A run saves its split as `split.csv` in the schema of common/split_file.py
(file_name, split, label, patient_id), which the localizer writes and reads too.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

# SPLIT_CSV and split_table too: a run writes its split.csv with them (train.py takes them from here).
from classification_task.common.split_file import SPLIT_CSV, SPLITS, read_split_csv, split_table  # noqa: F401
from classification_task.dataset import INT_TO_LABEL, DataError


def split_by_patient(
    frame: pd.DataFrame, fractions: tuple[float, float, float] = (0.80, 0.05, 0.15), seed: int = 0
) -> pd.Series:
    """Assign train/val/test per row, stratified by class, grouped by `patient_id`.

    A patient's stratum is its highest label (any Nodule image makes it a
    nodule patient) and its weight its number of images of that class. Within
    each stratum the patients, shuffled with the seed, are dealt one by one to
    the split furthest below its share of the weight dealt so far. No patient
    is split; the nodule images, and the images of patients without nodules,
    fall into the splits in the given fractions up to about one patient, and
    every split gets patients once a stratum has about twenty. A patient's size
    does not sway where it goes. 63k rows take a fraction of a second; the
    result does not depend on the row order.
    """
    patients, codes = np.unique(frame["patient_id"].to_numpy(dtype=str), return_inverse=True)
    labels = frame["label"].to_numpy(dtype=np.int64)
    stratum = np.zeros(len(patients), dtype=np.int64)
    np.maximum.at(stratum, codes, labels)
    weight = np.bincount(codes, weights=labels == stratum[codes], minlength=len(patients))
    patient_split = np.empty(len(patients), dtype=np.int64)
    rng = np.random.default_rng(seed)
    for value in np.unique(stratum):
        members = rng.permutation(np.flatnonzero(stratum == value))
        patient_split[members] = _deal(weight[members].tolist(), fractions)
    split = np.array(SPLITS, dtype=object)[patient_split[codes]]
    for name in SPLITS:  # thresholds are tuned on val and scored on test: each needs both classes
        for value, label in INT_TO_LABEL.items():
            if not np.any((split == name) & (labels == value)):
                raise ValueError(f"the {name} split would get no {label} image")
    return pd.Series(split, index=frame.index, name="split")


def _deal(weights: list[float], fractions: tuple[float, ...]) -> list[int]:
    """Index of the split each weight goes to, in order: the one furthest below its share so far."""
    dealt, total, splits = [0.0] * len(fractions), 0.0, []
    for w in weights:
        # The choice ignores w itself: a large patient is as likely as a small one to go anywhere.
        split = max(range(len(fractions)), key=lambda k: fractions[k] * total - dealt[k])
        dealt[split] += w
        total += w
        splits.append(split)
    return splits


def load_or_make_split(frame: pd.DataFrame, split_file: str | Path | None, seed: int) -> pd.DataFrame:
    """Attach a `split` column, from `split_file` (file_name,split) if given, else a fresh seeded split."""
    if split_file is None:
        try:
            return frame.assign(split=split_by_patient(frame, seed=seed))
        except ValueError as err:  # e.g. fewer patients than the split has folds
            reason = str(err).rstrip(".")
            raise DataError(f"{len(frame)} labelled image(s) of {frame['patient_id'].nunique()} patient(s) cannot "
                            f"be split by patient ({reason}); label more images, or pass --split_file.") from None
    merged = frame.merge(read_split_csv(split_file), on="file_name", how="left")
    if merged["split"].isna().any():
        raise DataError(f"{split_file} has no split for {merged['split'].isna().sum()} labelled image(s); regenerate it.")
    return merged


def keep_run_split(frame: pd.DataFrame, run_split: str | Path, split_file: str | Path | None = None) -> pd.DataFrame:
    """A resumed run's split: the one in its `split.csv`, never drawn again.

    A fresh draw over changed labels would move images between splits (one row
    less of 63k moves about 29 % of them), putting training images into test.
    Rows no longer in `frame` (the labels) are left out; labelled images the
    saved split lacks are refused, since no split could take them without
    weakening the guarantee (a new image of a known patient must follow that
    patient, a new patient would shift the fractions). `split_file`, when given
    as well, must agree with the saved split on every image both list.
    """
    saved = read_split_csv(run_split)
    new = frame["file_name"][~frame["file_name"].isin(saved["file_name"])]
    if len(new):
        raise DataError(f"{len(new)} labelled image(s) are not in {run_split}, e.g. {new.iloc[0]!r}; a resumed run "
                        "keeps the split it started with: remove those rows from the labels CSV, or start a new run "
                        "(--overwrite or another --output_dir).")
    if split_file is not None:
        other = saved.merge(read_split_csv(split_file), on="file_name", suffixes=("", "_given"))
        moved = other["file_name"][other["split"] != other["split_given"]]
        if len(moved):
            raise DataError(f"{split_file} puts {len(moved)} image(s) in another split than {run_split} of the run "
                            f"being resumed, e.g. {moved.iloc[0]!r}; drop --split_file to keep the run's split.")
    dropped = len(saved) - len(frame)
    if dropped:
        print(f"{dropped} image(s) of {run_split} are no longer in the labels: left out; no other image moves")
    return frame.merge(saved, on="file_name", how="left", validate="one_to_one")
