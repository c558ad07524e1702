"""What the `confidence` column of a prediction file holds, checked against its `label` column.

The challenge asks for confidence = p(nodule), but some teams write the
confidence of the predicted label (0.9 for a confident No Finding). Scored as
p(nodule), such a file ranks its surest negatives among the likely nodules and
its ROC-AUC falls towards chance, without any warning.

When confidence is p(nodule), the label follows from it by one threshold:
no No Finding row scores above a Nodule row. When it is the confidence of the
predicted label, p(nodule) = confidence for Nodule rows and 1 - confidence for
No Finding rows, and that p(nodule) follows the labels instead. A file is
scored only when its labels agree with what it is taken to hold, or when the
user says what it holds (`--confidence_of nodule|predicted`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd

from classification_task.dataset import LABEL_TO_INT, DataError

ConfidenceOf = Literal["nodule", "predicted"]
FIX = ("score it with --confidence_of predicted (p(nodule) = confidence for Nodule rows and 1 - confidence for "
       "No Finding rows), or with --confidence_of nodule if the confidence is p(nodule) after all")


def threshold_misfits(is_nodule: np.ndarray, score: np.ndarray) -> int:
    """Rows whose label disagrees with `score >= t` at the best single threshold t.

    A row whose score equals t may take either label, so labels written from
    rounded or tied scores are no misfit.
    """
    is_nodule, score = np.asarray(is_nodule, bool), np.asarray(score, float)
    nodule, no_finding = np.sort(score[is_nodule]), np.sort(score[~is_nodule])
    cuts = np.unique(score)
    nodule_below = np.searchsorted(nodule, cuts, side="left")
    no_finding_above = no_finding.size - np.searchsorted(no_finding, cuts, side="right")
    return int(min((nodule_below + no_finding_above).min(initial=score.size), nodule.size, no_finding.size))


def as_p_nodule(confidence: pd.Series, labels: pd.Series | None, path: Path,
                confidence_of: ConfidenceOf | None = None) -> pd.Series:
    """p(nodule) per file from the confidence column; `labels` is the label column (None if absent).

    `confidence_of` None: the confidence is taken for p(nodule) once the labels
    agree with it; when they contradict it, DataError says what the file seems to hold.
    """
    known = labels is not None and labels.str.strip().isin(list(LABEL_TO_INT)).all()
    if confidence_of == "predicted" and not known:
        raise DataError(f"{path} needs a label column of Nodule / No Finding for --confidence_of predicted: "
                        "p(nodule) is then the confidence of Nodule rows and 1 - confidence of the others.")
    if not known or confidence_of == "nodule":
        return confidence
    is_nodule = (labels.str.strip() == "Nodule").to_numpy()
    flipped = pd.Series(np.where(is_nodule, confidence, 1 - confidence), index=confidence.index)
    if confidence_of == "predicted":
        return flipped
    misfits = threshold_misfits(is_nodule, confidence.to_numpy())
    if misfits == 0:
        return confidence
    if threshold_misfits(is_nodule, flipped.to_numpy()) == 0:
        n_high = int((confidence[~is_nodule] > 0.5).sum())
        raise DataError(f"{path} seems to hold the confidence of the predicted label, not p(nodule): "
                        f"{n_high} of its {int((~is_nodule).sum())} No Finding rows have a confidence above 0.5; "
                        f"{FIX}.")
    raise DataError(f"{path} has labels that follow from its confidence by no threshold ({misfits} rows disagree "
                    f"even at the best one), so it is unclear what the confidence holds; check the file, or "
                    f"{FIX}.")
