"""How many images change split when one labelled row is dropped and the run resumes: drawn again
(what --resume did) vs kept (`classification_task.split.keep_run_split`, what it does now).

    python -m benchmarks.bench_split_resume [--nih_metadata Data_Entry_2017_v2020.csv.gz]

The label set is bench_startup's: NoduLoCC's NIH part (63,066 rows, 25,531
patients; synthetic rows with the same patient sizes when no metadata is given)
plus 113 LIDC rows. One row is dropped in two ways: the only image of its patient
(the patient leaves the shuffle, so every later patient is dealt anew) and one of
several images of a patient.
"""

from __future__ import annotations

import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from benchmarks.bench_startup import N_LIDC_ROWS, nih_rows
from benchmarks.common import format_table, machine_line, timed, write_record
from classification_task.common import cli
from classification_task.dataset import LABEL_TO_INT, patient_id
from classification_task.split import keep_run_split, split_by_patient, split_table


@dataclass
class SplitResumeConfig:
    nih_metadata: str | None = cli.arg(None, "Data_Entry_2017_v2020.csv(.gz); none = synthetic rows, same sizes")
    out: str = cli.arg("outputs/benchmarks/split_resume.json", "JSON record of the run")
    seed: int = cli.arg(42, "split seed (train.py's default)")


def label_frame(metadata: str | None, seed: int) -> pd.DataFrame:
    nih, _ = nih_rows(metadata, seed)
    lidc = pd.DataFrame({"file_name": [f"LIDC-IDRI-{i:04d}_slice.png" for i in range(1, N_LIDC_ROWS + 1)],
                         "label": "Nodule"})
    frame = pd.concat([nih, lidc], ignore_index=True)
    lidc_ids = [""] * len(nih) + [name.split("_")[0] for name in lidc["file_name"]]
    return pd.DataFrame({"file_name": frame["file_name"], "label": frame["label"].map(LABEL_TO_INT),
                         "patient_id": [patient_id(n, i) for n, i in zip(frame["file_name"], lidc_ids)]})


def moved_share(frame: pd.DataFrame, run_split: Path, row: int, seed: int) -> dict:
    saved = pd.read_csv(run_split, dtype=str)["split"].to_numpy()
    kept_rows = frame.index != row
    smaller = frame[kept_rows].reset_index(drop=True)
    redraw_s, redrawn = timed(split_by_patient, smaller, seed=seed)
    keep_s, kept = timed(keep_run_split, smaller, run_split)
    return {"drawn_again_moved": float((redrawn.to_numpy() != saved[kept_rows]).mean()), "drawn_again_s": redraw_s,
            "kept_moved": float((kept["split"].to_numpy() != saved[kept_rows]).mean()), "kept_s": keep_s}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    config = cli.parse(SplitResumeConfig, __doc__, argv)
    if config is None:
        return 2
    print(machine_line())
    frame = label_frame(config.nih_metadata, config.seed)
    sizes = frame["patient_id"].map(frame["patient_id"].value_counts())
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        run_split = Path(tmp) / "split.csv"
        split_table(frame.assign(split=split_by_patient(frame, seed=config.seed))).to_csv(run_split, index=False)
        for dropped, candidates in (("only image of its patient", sizes == 1),
                                    ("one of several of a patient", sizes > 1)):
            row = int(frame.index[candidates][candidates.sum() // 2])
            rows.append({"dropped row": dropped, **moved_share(frame, run_split, row, config.seed)})
    print(f"{len(frame):,} labelled rows, {frame['patient_id'].nunique():,} patients; one row dropped, then:")
    print(format_table(rows, ["dropped row", "drawn_again_moved", "kept_moved", "drawn_again_s", "kept_s"]))
    worst = max(row["drawn_again_moved"] for row in rows)
    headline = f"one row dropped of {len(frame):,}: drawn again up to {worst:.1%} of images move, kept 0"
    write_record(config.out, config, {"split_resume": rows}, headline)
    return 0


if __name__ == "__main__":
    sys.exit(main())
