"""Files only this user may read: embedded mode's data directory, its database and the key
files. New ones are created so (not left to the umask); existing ones, made by an older
version or another tool, lose what group and others could do."""

from __future__ import annotations

import logging
import os
import stat
from pathlib import Path

log = logging.getLogger(__name__)

PRIVATE_DIRECTORY_MODE = 0o700
PRIVATE_FILE_MODE = 0o600


def private_directory(path: Path) -> None:
    """Create `path` (and missing parents) as 0700, or take group and other access away from
    it if it exists."""
    path.mkdir(mode=PRIVATE_DIRECTORY_MODE, parents=True, exist_ok=True)
    _restrict(path)


def private_file(path: Path) -> None:
    """Create `path` empty as 0600 if it is missing, else take group and other access away."""
    try:
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, PRIVATE_FILE_MODE))
    except FileExistsError:
        _restrict(path)


def restrict_if_present(path: Path) -> None:
    if path.exists():
        _restrict(path)


def _restrict(path: Path) -> None:
    mode = stat.S_IMODE(path.stat().st_mode)
    if not mode & 0o077:
        return
    try:
        path.chmod(mode & ~0o077)
    except PermissionError:
        log.warning(
            "%s is open to group or others (mode %04o) and is not ours to change: chmod go-rwx it",
            path,
            mode,
        )
        return
    log.info("%s was open to group or others: mode %04o is now %04o", path, mode, mode & ~0o077)
