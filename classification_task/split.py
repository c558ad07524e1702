"""The patient split of the classification data: train / val / test, stratified by class.

A patient (NIH: the PPPPPPPP prefix of its file names; LIDC: its LIDC_ID) never
spans two splits. `load_or_make_split` reads a saved `split.csv` or draws a
fresh seeded split; `keep_run_split` holds a resumed run to the split it started
with. `split_table` is what a run saves as `split.csv`: file_name, split, label
(Nodule / No Finding), patient_id, in that order; readers need only the first two.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from classification_task.dataset import INT_TO_LABEL, DataError

SPLITS = ("train", "val", "test")
SPLIT_CSV = "split.csv"
SPLIT_COLUMNS = ("file_name", "split", "label", "patient_id")


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


def split_table(frame: pd.DataFrame) -> pd.DataFrame:
    """The rows of `split.csv`: SPLIT_COLUMNS, label as in the labels CSV, in the frame's order."""
    return pd.DataFrame({"file_name": frame["file_name"].to_numpy(), "split": frame["split"].to_numpy(),
                         "label": frame["label"].map(INT_TO_LABEL).to_numpy(),
                         "patient_id": frame["patient_id"].to_numpy()}, columns=list(SPLIT_COLUMNS))


def read_split_csv(split_file: str | Path) -> pd.DataFrame:
    """A saved split as file_name,split text columns, each file once with a known split."""
    split_file = Path(split_file)
    if not split_file.is_file():
        raise DataError(f"split file {split_file} not found; pass a split.csv written by an earlier run.")
    saved = pd.read_csv(split_file, dtype=str, keep_default_na=False)
    if not {"file_name", "split"} <= set(saved.columns):
        raise DataError(f"{split_file} needs the columns file_name,split.")
    unknown = sorted(set(saved["split"]) - set(SPLITS))
    if unknown or saved["file_name"].duplicated().any():
        raise DataError(f"{split_file} must list each file once with a split in {SPLITS}; found {unknown[:3] or 'duplicates'}.")
    return saved[["file_name", "split"]]


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
