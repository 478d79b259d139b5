"""Where blobs live: a content-addressed store with a small interface.

>>> store = LocalObjectStore(Path(".seal/objects"))      # doctest: +SKIP
>>> digest = store.put(b"hello")                          # doctest: +SKIP
>>> store.get(digest)                                     # doctest: +SKIP
b'hello'

Any store that implements :class:`ObjectStore` can stand behind a registry, an S3-compatible
one included. Nothing but ``seal gc`` calls ``delete``: a blob another command has just
committed must never vanish under it, so writers that lose a race leave their blobs for gc.
"""

from __future__ import annotations

import hashlib
import os
import stat
import tempfile
from pathlib import Path
from typing import Iterator, Protocol

from ..errors import BlobMissing
from ..files import is_regular
from .objects import DIGEST_PREFIX, blob_digest, is_digest

_CHUNK = 1 << 20


class ObjectStore(Protocol):
    """What a registry asks of a blob store (:class:`LocalObjectStore`, or
    :class:`~seal.registry.store.s3_store.S3ObjectStore`). ``path_of`` is a readable local file of the
    blob (for S3, its verified cached copy)."""

    def put(self, data: bytes) -> str: ...
    def put_file(self, path: Path) -> str: ...
    def get(self, digest: str) -> bytes: ...
    def has(self, digest: str) -> bool: ...
    def path_of(self, digest: str) -> Path: ...
    def iter_digests(self) -> Iterator[str]: ...
    def stat(self, digest: str) -> tuple[int, float]: ...
    def freshen(self, digest: str) -> None: ...
    def delete(self, digest: str) -> None: ...
    def check(self, digest: str) -> bool: ...


def file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            h.update(chunk)
    return DIGEST_PREFIX + h.hexdigest()


def _unlink_quietly(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def _place(tmp: str, target: Path) -> None:
    """Make a complete temp file visible under its name, read-only (rename is atomic)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    os.chmod(tmp, stat.S_IRUSR | stat.S_IRGRP | stat.S_IROTH)
    os.replace(tmp, target)
    _fsync_dir(target.parent)


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


class LocalObjectStore:
    """Blobs as read-only files under ``root/sha256/ab/cdef…``.

    A write goes to a temp file in the same folder, is fsynced, then renamed into place, so a
    crash leaves either the whole blob or none of it. Identical content is stored once.
    """

    def __init__(self, root: Path):
        self.root = Path(root)

    def path_of(self, digest: str) -> Path:
        if not is_digest(digest):
            raise ValueError(f"not a blob digest: {digest!r}")
        hexd = digest[len(DIGEST_PREFIX):]
        return self.root / "sha256" / hexd[:2] / hexd[2:]

    def has(self, digest: str) -> bool:
        return is_regular(self.path_of(digest))

    def get(self, digest: str) -> bytes:
        path = self.path_of(digest)
        try:
            return path.read_bytes()
        except FileNotFoundError:
            raise BlobMissing(digest, str(self.root)) from None

    def put(self, data: bytes) -> str:
        digest = blob_digest(data)
        if self.has(digest):
            self.freshen(digest)
        else:
            self._write(digest, lambda f: f.write(data))
        return digest

    def put_file(self, path: Path) -> str:
        """Store a file's bytes under the digest of exactly the bytes copied (one pass, so a file
        that changes meanwhile is never stored under another content's name)."""
        (self.root / "sha256").mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=self.root / "sha256")
        try:
            h = hashlib.sha256()
            with os.fdopen(fd, "wb") as f, open(path, "rb") as src:
                for chunk in iter(lambda: src.read(_CHUNK), b""):
                    h.update(chunk)
                    f.write(chunk)
                f.flush()
                os.fsync(f.fileno())
            digest = DIGEST_PREFIX + h.hexdigest()
            if self.has(digest):
                self.freshen(digest)
            else:
                _place(tmp, self.path_of(digest))
        finally:
            _unlink_quietly(tmp)
        return digest

    def _write(self, digest: str, write) -> None:
        target = self.path_of(digest)
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=target.parent)
        try:
            with os.fdopen(fd, "wb") as f:
                write(f)
                f.flush()
                os.fsync(f.fileno())
            _place(tmp, target)
        finally:
            _unlink_quietly(tmp)

    def iter_digests(self) -> Iterator[str]:
        base = self.root / "sha256"
        if not base.is_dir():
            return
        for sub in sorted(base.iterdir()):
            if not sub.is_dir() or len(sub.name) != 2:
                continue
            for f in sorted(sub.iterdir()):
                if is_digest(DIGEST_PREFIX + sub.name + f.name):  # a stray file is no blob (see iter_strays)
                    yield DIGEST_PREFIX + sub.name + f.name

    def iter_strays(self) -> Iterator[Path]:
        """Files under ``sha256/`` that seal did not write: neither a blob's name nor a temp file.

        `verify` names them; nothing ever deletes them."""
        base = self.root / "sha256"
        if not base.is_dir():
            return
        for sub in sorted(base.iterdir()):
            if sub.name.startswith(".tmp-"):
                continue
            if not sub.is_dir() or len(sub.name) != 2 or not is_digest(DIGEST_PREFIX + sub.name + "0" * 62):
                yield sub
                continue
            for f in sorted(sub.iterdir()):
                if not f.name.startswith(".tmp-") and not is_digest(DIGEST_PREFIX + sub.name + f.name):
                    yield f

    def check(self, digest: str) -> bool:
        """Whether the stored bytes still hash to their name (a FIFO or device is never read)."""
        path = self.path_of(digest)
        if not is_regular(path):
            return False
        try:
            return file_digest(path) == digest
        except OSError:
            return False

    def stat(self, digest: str) -> tuple[int, float]:
        st = self.path_of(digest).stat()
        return st.st_size, st.st_mtime

    def freshen(self, digest: str) -> None:
        """Touch a blob a writer is about to reference again, so gc's grace period protects it."""
        try:
            os.utime(self.path_of(digest))
        except OSError:
            pass

    def delete(self, digest: str) -> None:
        """Remove one blob. Only `seal gc` calls this, after checking no version references it."""
        try:
            self.path_of(digest).unlink()
        except FileNotFoundError:
            pass

    def iter_litter(self) -> Iterator[tuple[Path, int, float]]:
        """Half-written temp files a killed writer left behind: (path, size, mtime)."""
        base = self.root / "sha256"
        if not base.is_dir():
            return
        for f in [*base.glob(".tmp-*"), *base.glob("*/.tmp-*")]:
            try:
                st = f.stat()
            except FileNotFoundError:
                continue
            yield f, st.st_size, st.st_mtime
