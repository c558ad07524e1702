"""`split.csv`: which images train, tune and test a run, in the one schema both tasks write and read.

A run writes it into its output folder; `--split_file` of either task's
train.py reads one written by either task, so the classifier and the localizer
can share a test split. The columns, in this order:

    file_name   the image as the label CSVs name it
    split       train | val | test
    label       Nodule | No Finding, as the writing task labelled the image
    patient_id  nih:PPPPPPPP, lidc:<LIDC_ID> or file:<file_name>; no patient is in two splits

Readers need only file_name and split and ignore the rest, so a two-column
file (an older run's, or one made by hand) is read as well. `patient_id` is
the one rule both tasks group images by.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd

from .errors import DataError

SPLITS = ("train", "val", "test")
SPLIT_CSV = "split.csv"
SPLIT_COLUMNS = ("file_name", "split", "label", "patient_id")
LABEL_NAMES = ("No Finding", "Nodule")  # label 0, label 1, as in the labels CSV
NIH_NAME = re.compile(r"^(\d{8})_\d{3}\.png$", re.IGNORECASE)  # PPPPPPPP_FFF.png: patient, follow-up


def patient_id(file_name: str, lidc_id: str = "") -> str:
    """NIH `PPPPPPPP_FFF.png` -> `nih:PPPPPPPP`; an LIDC image -> `lidc:<LIDC_ID>`; else `file:<file_name>`."""
    match = NIH_NAME.match(file_name.rpartition("/")[2])
    if match:
        return f"nih:{match.group(1)}"
    if lidc_id:
        return f"lidc:{lidc_id}"
    return f"file:{file_name}"


def split_table(frame: pd.DataFrame) -> pd.DataFrame:
    """The rows of split.csv, in the frame's order, from its file_name, split, label (0/1) and patient_id."""
    labels = np.asarray(LABEL_NAMES, dtype=object)[frame["label"].to_numpy(dtype=np.int64)]
    return pd.DataFrame({"file_name": frame["file_name"].to_numpy(), "split": frame["split"].to_numpy(),
                         "label": labels, "patient_id": frame["patient_id"].to_numpy()}, columns=list(SPLIT_COLUMNS))


def read_split_csv(path: str | Path) -> pd.DataFrame:
    """A saved split as file_name,split text columns, each file once with a known split; DataError otherwise."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"split file {path} not found; pass a split.csv written by an earlier run.")
    try:
        saved = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (UnicodeDecodeError, pd.errors.ParserError, pd.errors.EmptyDataError) as err:
        raise DataError(f"split file {path} could not be read as CSV ({type(err).__name__}); pass a split.csv "
                        "written by an earlier run.") from None
    if not {"file_name", "split"} <= set(saved.columns):
        raise DataError(f"{path} needs the columns file_name,split.")
    unknown = sorted(set(saved["split"]) - set(SPLITS))
    if unknown or saved["file_name"].duplicated().any():
        raise DataError(f"{path} must list each file once with a split in {SPLITS}; "
                        f"found {unknown[:3] or 'duplicates'}.")
    return saved[["file_name", "split"]]
