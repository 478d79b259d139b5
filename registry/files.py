"""Reading the small files a registry keeps (config, policy, trust file, marker) without surprises.

A FIFO, a device such as /dev/zero, a directory or a huge file where seal expects a small text
file must be refused at once, not read forever: each reader checks what the path is first.

>>> read_small(Path("/dev/zero"), "the trust file")
Traceback (most recent call last):
seal.registry.errors.UserError: the trust file /dev/zero is not a regular file; replace it with the file seal expects
"""

from __future__ import annotations

import os
import stat
import tempfile
from pathlib import Path

from .errors import UserError

SMALL = 4 << 20


def is_regular(path: Path) -> bool:
    """Whether ``path`` is a regular file, without following a symlink to a device or a FIFO."""
    try:
        return stat.S_ISREG(os.stat(path).st_mode)
    except OSError:
        return False


def write_atomic(path: Path, data: bytes, mode: int = 0o644) -> Path:
    """Write ``data`` to ``path`` so that a reader sees the old file or the whole new one, never
    half of it: a temp file in the same folder, fsynced, then renamed over ``path``. A failure
    (a full disk) leaves no temp file behind."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def read_small(path: Path, what: str, limit: int = SMALL) -> bytes:
    """The bytes of a regular file of at most ``limit`` bytes; FileNotFoundError passes through."""
    st = os.stat(path)  # FileNotFoundError is the caller's to explain
    if not stat.S_ISREG(st.st_mode):
        raise UserError(f"{what} {path} is not a regular file; replace it with the file seal expects")
    if st.st_size > limit:
        raise UserError(f"{what} {path} is {st.st_size} bytes, more than {limit}; it is not a file seal wrote")
    with open(path, "rb") as f:
        return f.read(limit + 1)[:limit]
