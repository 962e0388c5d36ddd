"""Files and directories only the service's own user can read: 0600 and 0700.

The data directory holds the job store (every key's webhook secret, sealed), the
signing and secrets keys, and users' outputs; none of it is for other local users.
Modes are given at creation, never by changing the process umask, which other
threads share.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from pathlib import Path

__all__ = ["private_dir", "private_file", "write_once"]


def private_dir(path: Path) -> Path:
    """Create ``path`` and any missing parents with mode 0700; existing ones are kept."""
    missing = []
    for directory in (path, *path.parents):
        if directory.exists():
            break
        missing.append(directory)
    for directory in reversed(missing):
        with contextlib.suppress(FileExistsError):  # made by another process meanwhile
            directory.mkdir(mode=0o700)
    return path


def private_file(path: Path) -> Path:
    """Create ``path`` empty with mode 0600 if it does not exist (its directory 0700)."""
    private_dir(path.parent)
    with contextlib.suppress(FileExistsError):
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    return path


def write_once(path: Path, content: bytes) -> bytes:
    """``path``'s content, written as ``content`` (mode 0600) if the file is missing.

    Written to a private temporary name, then linked into place: of several processes
    starting at once, the first link wins and everyone reads its content.
    """
    if not path.exists():
        private_dir(path.parent)
        temporary = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as out:
            out.write(content)
        try:
            os.link(temporary, path)
        except FileExistsError:
            pass
        finally:
            temporary.unlink()
    return path.read_bytes().strip()
