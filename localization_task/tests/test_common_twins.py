"""The shared plumbing is one copy per task folder, kept byte-identical (docs/architecture.md).

Every file under classification_task/common/ equals the same-named file under
localization_task/common/, and both folders hold the same files; so do the
other twins below, where both copies exist. This file is the same in both
task folders. A task folder copied out alone has no sibling to compare with:
the tests are then skipped.
"""

from pathlib import Path

import pytest

TASKS = ("classification_task", "localization_task")
TASK_DIR = Path(__file__).resolve().parents[1]
ROOT = TASK_DIR.parent
OTHER_TWINS = ("demo/synthetic.py", "tests/dicom_files.py", "tests/test_common_twins.py")
FIX = "apply the change to both copies"


def _task_dirs() -> tuple[Path, Path]:
    sibling = ROOT / next(task for task in TASKS if task != TASK_DIR.name)
    if not sibling.is_dir():
        pytest.skip(f"{sibling} is absent (a task folder copied out alone): no twin to compare with")
    return ROOT / TASKS[0], ROOT / TASKS[1]


def _files(folder: Path) -> set[str]:
    """The files under `folder`, relative to it; Python's byte-code caches left out."""
    return {path.relative_to(folder).as_posix() for path in folder.rglob("*")
            if path.is_file() and "__pycache__" not in path.parts and path.suffix != ".pyc"}


def test_both_common_folders_hold_the_same_files():
    classification, localization = _task_dirs()
    ours, theirs = _files(classification / "common"), _files(localization / "common")
    alone = [f"{task}/common/{name}" for task, names in zip(TASKS, (ours - theirs, theirs - ours))
             for name in sorted(names)]
    assert not alone, f"no twin in the other task folder for {', '.join(alone)}: {FIX}."


def test_every_common_file_is_byte_identical_in_both_task_folders():
    classification, localization = _task_dirs()
    shared = sorted(_files(classification / "common") & _files(localization / "common"))
    differing = [f"common/{name}" for name in shared
                 if (classification / "common" / name).read_bytes() != (localization / "common" / name).read_bytes()]
    assert not differing, f"{TASKS[0]}/ and {TASKS[1]}/ hold different copies of {', '.join(differing)}: {FIX}."


@pytest.mark.parametrize("name", OTHER_TWINS)
def test_other_twins_are_byte_identical_where_both_exist(name):
    copies = [folder / name for folder in _task_dirs()]
    missing = [str(path) for path in copies if not path.is_file()]
    if missing:
        pytest.skip(f"{', '.join(missing)} does not exist: no twin to compare {name} with")
    assert copies[0].read_bytes() == copies[1].read_bytes(), \
        f"{TASKS[0]}/ and {TASKS[1]}/ hold different copies of {name}: {FIX}."
