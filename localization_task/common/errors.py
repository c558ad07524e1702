"""The user's data: the one error type for it, image file names that stay in their folder, image suffixes.

A DataError is a problem the user can fix (a bad path, CSV or image); the
entry points print its one sentence and exit with status 2, no traceback.
"""

from __future__ import annotations

from pathlib import Path, PurePosixPath, PureWindowsPath

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".dcm")  # lower case; dicom.py reads the .dcm files


class DataError(ValueError):
    """A problem with the user's data, explained in one sentence."""


def safe_join(folder: Path, file_name: str) -> Path:
    """`folder / file_name`, refusing names that could leave `folder`.

    A file name from a CSV is trusted only as a plain relative path: no leading
    '/', drive or '..'. The check is on the name itself, so images that are
    symlinks into a data store are still accepted.
    """
    posix, windows = PurePosixPath(file_name), PureWindowsPath(file_name)
    if not file_name.strip() or posix.is_absolute() or windows.is_absolute() or windows.drive \
            or ".." in posix.parts or ".." in windows.parts:
        raise DataError(f"file name {file_name!r} would escape its image folder {folder}: use a plain path "
                        "relative to that folder, without '..', a drive or a leading '/' (nothing outside "
                        "the folder is read).")
    return Path(folder) / posix
