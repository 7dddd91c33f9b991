"""The control plane's files hold its secrets (the CA keys, the token hashes, every
config): its directories are 0700 and its files 0600, whatever the umask.

A umask only removes bits, and the usual 022 leaves files readable by everyone, so the
modes are set explicitly (``chmod``) after creation rather than left to ``open``/``mkdir``.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

__all__ = ["PRIVATE_DIR", "PRIVATE_FILE", "private_dir", "private_file"]

PRIVATE_DIR = 0o700
PRIVATE_FILE = 0o600


def private_dir(path: Path) -> Path:
    """``path`` as a directory of mode 0700: created with any missing parents (0700
    too), or made 0700 when it exists (a data directory from an older version).

    :raises OSError: when it cannot be created or its mode cannot be set.
    """
    missing: list[Path] = []
    current = Path(path)
    while not current.is_dir():
        missing.append(current)
        current = current.parent
    for directory in reversed(missing):
        try:
            directory.mkdir(mode=PRIVATE_DIR)
        except FileExistsError:
            # Created meanwhile by another process starting on the same directory.
            if not directory.is_dir():
                raise
    os.chmod(path, PRIVATE_DIR)
    for directory in missing[1:]:
        os.chmod(directory, PRIVATE_DIR)
    return Path(path)


def private_file(path: Path, create: bool = True) -> None:
    """Make ``path`` mode 0600; a missing one is created empty, or left missing when not
    ``create``. Never truncates."""
    if create:
        # Created as 0600 (less under a strict umask), never readable by others.
        with contextlib.suppress(FileExistsError):
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, PRIVATE_FILE))
    try:
        os.chmod(path, PRIVATE_FILE)
    except FileNotFoundError:
        if create:
            raise
