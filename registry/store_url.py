"""Which object store a URL names: the local folder by default, or an S3-compatible bucket.

Kept apart from both stores, so that neither imports the other to be chosen.
"""

from __future__ import annotations

import os
from pathlib import Path

from .errors import UserError
from .store.object_store import LocalObjectStore, ObjectStore


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
            from .store.s3_store import S3ObjectStore
        except ModuleNotFoundError as exc:
            if exc.name != "obstore":
                raise
            raise UserError(f"{url} needs the S3 client: pip install 'seal-registry[s3]'") from None
        cache = Path(seal_dir) / "cache" / "objects" if seal_dir is not None else Path(
            os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "seal" / "objects"
        return S3ObjectStore.from_url(url, cache=cache)
    raise UserError(f"cannot store blobs at {url!r}: use s3://BUCKET/PREFIX or file:///ABSOLUTE/PATH")
