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

from .errors import SealError, UserError
from .files import is_regular
from .objects import DIGEST_PREFIX, blob_digest, is_digest

_CHUNK = 1 << 20


class BlobMissing(SealError):
    """A digest that the store does not hold."""


class ObjectStore(Protocol):
    def put(self, data: bytes) -> str: ...
    def put_file(self, path: Path) -> str:
        """Store a file's bytes under the digest of exactly the bytes copied (one pass)."""
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
                self._place(tmp, self.path_of(digest))
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
            self._place(tmp, target)
        finally:
            _unlink_quietly(tmp)

    @staticmethod
    def _place(tmp: str, target: Path) -> None:
        """Make a complete temp file visible under its name, read-only (rename is atomic)."""
        target.parent.mkdir(parents=True, exist_ok=True)
        os.chmod(tmp, stat.S_IRUSR | stat.S_IRGRP | stat.S_IROTH)
        os.replace(tmp, target)
        _fsync_dir(target.parent)

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
            raise BlobMissing(f"blob {digest} is missing from {self.root}") from None

    def put(self, data: bytes) -> str:
        digest = blob_digest(data)
        if self.has(digest):
            self.freshen(digest)
        else:
            self._write(digest, lambda f: f.write(data))
        return digest

    def put_file(self, path: Path) -> str:
        digest = file_digest(path)
        if self.has(digest):
            self.freshen(digest)
        else:
            def copy(f):
                with open(path, "rb") as src:
                    for chunk in iter(lambda: src.read(_CHUNK), b""):
                        f.write(chunk)
            self._write(digest, copy)
            # The file may have changed between hashing and copying; never store a lie.
            if file_digest(self.path_of(digest)) != digest:
                self.path_of(digest).unlink()
                raise SealError(f"{path} changed while it was being stored; try again")
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
            os.chmod(tmp, stat.S_IRUSR | stat.S_IRGRP | stat.S_IROTH)
            os.replace(tmp, target)
        except BaseException:
            try:
                os.unlink(tmp)
            except FileNotFoundError:
                pass
            raise
        _fsync_dir(target.parent)

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


def open_object_store(url: str | None, seal_dir: Path | None) -> ObjectStore:
    """The object store that ``SEAL_OBJECTS_URL`` names; the local one under ``seal_dir`` by default.

    ``s3://bucket/prefix`` imports the S3 client only here, so commands that never touch S3
    do not pay for it; its read cache is ``seal_dir/cache/objects``.

    >>> open_object_store(None, Path(".seal"))                  # doctest: +ELLIPSIS
    <...LocalObjectStore object at ...>
    >>> open_object_store("s3://blobs/seal", Path(".seal"))    # doctest: +SKIP
    S3ObjectStore('s3://blobs/seal', endpoint='AWS S3')
    """
    scheme, _, rest = (url or "").partition("://")
    if seal_dir is None and (not url or scheme != "s3"):
        raise UserError("no object store: set SEAL_OBJECTS_URL, or open the registry from its folder")
    if not url or (scheme == "file" and not rest):
        return LocalObjectStore(Path(seal_dir) / "objects")
    if scheme == "file" and rest.startswith("/"):
        return LocalObjectStore(Path(rest))
    if scheme == "s3":
        try:
            from .s3_store import S3ObjectStore
        except ModuleNotFoundError as exc:
            if exc.name != "obstore":
                raise
            raise UserError(f"{url} needs the S3 client: pip install 'seal-registry[s3]'") from None
        cache = Path(seal_dir) / "cache" / "objects" if seal_dir is not None else Path(
            os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "seal" / "objects"
        return S3ObjectStore.from_url(url, cache=cache)
    raise UserError(f"cannot store blobs at {url!r}: use s3://BUCKET/PREFIX or file:///ABSOLUTE/PATH")
