"""Private files of the local stack (secrets, the issuer registry, the state file).

Every one of them is written the same way: owner-only (mode 0600 from the first byte, whatever
the umask) and atomically, so a reader or a crash at any moment sees either the old content or
the new one, never a torn or empty file.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

PRIVATE_FILE_MODE = 0o600


def write_private_file(path: Path, text: str) -> Path:
    """Replace ``path`` with ``text`` atomically, mode 0600; return ``path``.

    A temporary file in the same directory (so the rename cannot cross file systems) is
    written and fsynced, renamed over ``path``, and the directory is fsynced so the rename
    itself survives a power loss. ``mkstemp`` creates the temporary file exclusively with mode
    0600: concurrent writers never share one, and no symlink planted there is followed.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            os.fchmod(out.fileno(), PRIVATE_FILE_MODE)
            out.write(text)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise
    _fsync_directory(path.parent)
    return path


def _fsync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
