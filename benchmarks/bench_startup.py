"""Start-up at full scale: reading the 63,179-row label file and the patient-grouped split, old vs new.

    python -m benchmarks.bench_startup --nih_metadata /tmp/x/torchxrayvision/data/Data_Entry_2017_v2020.csv.gz
    python -m benchmarks.bench_startup        # no metadata: a synthetic file with the same patient sizes

The label file has NoduLoCC's structure: the NIH ChestX-ray14 images labelled
exactly "No Finding" or exactly "Nodule" (63,066 rows, 25,531 patients with 1 to
65 images each) plus 113 LIDC nodule rows. `Data_Entry_2017_v2020.csv.gz` ships
inside the torchxrayvision wheel (`pip download --no-deps torchxrayvision`, then
unzip). Every image is an empty file: loading only checks that it exists.
"old" is the code as it was (a `stat` per folder and row; StratifiedGroupKFold),
kept here to compare; "new" is `classification_task.dataset` now.
"""

from __future__ import annotations

import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.model_selection import StratifiedGroupKFold

from benchmarks.common import format_table, machine_line, timed, write_record
from classification_task.common import cli
from classification_task.dataset import (
    IMAGE_FOLDERS, LABELS_CSV, load_labels, patient_id, read_labels_csv, resolve_image_path,
)
from classification_task.split import split_by_patient

N_LIDC_ROWS = 113
N_NIH_NODULE = 2705
# Patients of the NIH part with 1, 2, ..., 65 images (No Finding / Nodule images only).
NIH_PATIENTS_BY_SIZE = (
    15624, 3700, 1775, 1141, 766, 580, 447, 296, 244, 172, 135, 106, 82, 78, 40, 48, 38, 42, 32, 23, 18, 14, 21,
    17, 13, 4, 4, 11, 5, 7, 3, 6, 6, 4, 1, 3, 2, 5, 1, 1, 1, 2, 3, 0, 1, 0, 1, 0, 0, 0, 1, 1, 0, 2, 1, 0, 0, 0,
    2, 0, 0, 0, 0, 0, 1,
)


@dataclass
class StartupConfig:
    nih_metadata: str | None = cli.arg(None, "Data_Entry_2017_v2020.csv(.gz); none = synthetic rows, same sizes")
    out: str = cli.arg("outputs/benchmarks/startup.json", "JSON record of the run")
    seed: int = cli.arg(42, "split seed (train.py's default)")
    old: bool = cli.arg(True, "also time the old code (its split takes about 40 s)")


# ----------------------------------------------------------------------------- the label file


def nih_rows(metadata: str | None, seed: int) -> tuple[pd.DataFrame, str]:
    """file_name,label of the NIH part, and where it came from."""
    if metadata:
        entries = pd.read_csv(metadata, usecols=["Image Index", "Finding Labels"])
        entries = entries[entries["Finding Labels"].isin(["No Finding", "Nodule"])]
        return (entries.rename(columns={"Image Index": "file_name", "Finding Labels": "label"}),
                f"NIH metadata {metadata}")
    sizes = np.repeat(np.arange(1, len(NIH_PATIENTS_BY_SIZE) + 1), NIH_PATIENTS_BY_SIZE)
    names = [f"{patient:08d}_{follow_up:03d}.png" for patient, size in enumerate(sizes, 1)
             for follow_up in range(size)]
    labels = np.full(len(names), "No Finding", dtype=object)
    labels[np.random.default_rng(seed).choice(len(names), N_NIH_NODULE, replace=False)] = "Nodule"
    return pd.DataFrame({"file_name": names, "label": labels}), "synthetic rows with the NIH patient sizes"


def write_data_root(root: Path, nih: pd.DataFrame) -> None:
    """classification_labels.csv and an empty file per image, in the NoduLoCC layout."""
    lidc_ids = [f"LIDC-IDRI-{i:04d}" for i in range(1, N_LIDC_ROWS + 1)]  # one image per LIDC patient
    lidc = pd.DataFrame({"file_name": [f"{i}_slice.png" for i in lidc_ids], "label": "Nodule", "LIDC_ID": lidc_ids})
    frame = pd.concat([nih.assign(LIDC_ID=""), lidc], ignore_index=True)
    frame.to_csv(root / LABELS_CSV, index=False)
    for folder, names in zip(IMAGE_FOLDERS, (nih["file_name"], lidc["file_name"])):
        (root / folder).mkdir(parents=True)
        for name in names:
            (root / folder / name).touch()


# ----------------------------------------------------------------------------- the code as it was


def old_load_labels(data_root: Path) -> pd.DataFrame:
    frame = read_labels_csv(data_root / LABELS_CSV, "run the benchmark again")
    paths = [resolve_image_path(data_root, name) for name in frame["file_name"]]
    assert all(path is not None for path in paths)
    return frame.assign(path=[str(p) for p in paths],
                        patient_id=[patient_id(n, l) for n, l in zip(frame["file_name"], frame["lidc_id"])])


def old_split_by_patient(frame: pd.DataFrame, seed: int) -> pd.Series:
    folds = StratifiedGroupKFold(n_splits=20, shuffle=True, random_state=seed)
    split = np.full(len(frame), "train", dtype=object)
    for fold, (_, rows) in enumerate(folds.split(frame, frame["label"], groups=frame["patient_id"])):
        split[rows] = "test" if fold < 3 else "val" if fold < 4 else "train"
    return pd.Series(split, index=frame.index, name="split")


# ----------------------------------------------------------------------------- checks and main


def split_summary(frame: pd.DataFrame, split: pd.Series) -> list[dict]:
    """Per split: images, share of all images, nodule share; asserts no patient crosses splits."""
    assert (split.groupby(frame["patient_id"]).nunique() == 1).all(), "a patient crosses splits"
    rows = []
    for name in ("train", "val", "test"):
        part = frame["label"][split == name]
        rows.append({"split": name, "images": len(part), "share": len(part) / len(frame),
                     "nodule_share": part.mean(), "patients": frame["patient_id"][split == name].nunique()})
    return rows


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    config = cli.parse(StartupConfig, __doc__, argv)
    if config is None:
        return 2
    print(machine_line())
    with tempfile.TemporaryDirectory() as tmp:
        nih, source = nih_rows(config.nih_metadata, config.seed)
        write_data_root(Path(tmp), nih)
        load_s, frame = timed(load_labels, Path(tmp))
        split_s, split = timed(split_by_patient, frame, seed=config.seed)
        rows = [{"step": "load labels", "new_s": load_s}, {"step": "split by patient", "new_s": split_s}]
        if config.old:
            rows[0]["old_s"], old_frame = timed(old_load_labels, Path(tmp))
            pd.testing.assert_frame_equal(frame, old_frame)
            rows[1]["old_s"], _ = timed(old_split_by_patient, frame, config.seed)
    summary = split_summary(frame, split)
    n_patients, n_nodule = frame["patient_id"].nunique(), int(frame["label"].sum())
    print(f"label file: {source}; {len(frame):,} rows, {n_patients:,} patients, {n_nodule:,} Nodule")
    for row in rows:
        row["speed-up"] = row["old_s"] / row["new_s"] if "old_s" in row else None
    print(format_table(rows, ["step", "old_s", "new_s", "speed-up"]))
    print("new split (seed %d), no patient in two splits:" % config.seed)
    print(format_table(summary, ["split", "images", "patients", "share", "nodule_share"]))
    new_s = load_s + split_s
    headline = f"start-up (load + split, {len(frame):,} rows): new {new_s:.2f} s"
    if config.old:
        old_s = rows[0]["old_s"] + rows[1]["old_s"]
        headline += f", old {old_s:.2f} s: {old_s / new_s:.1f}x faster"
    path = write_record(config.out, config, {"startup": rows, "split": summary, "source": source}, headline)
    print(f"record: {path}")
    print(headline)
    return 0


if __name__ == "__main__":
    sys.exit(main())
