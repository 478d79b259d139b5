"""Blobs in an S3-compatible bucket, with a verified local read cache.

>>> store = S3ObjectStore.from_url("s3://my-bucket/seal?endpoint=http://127.0.0.1:8333",
...                                cache=Path(".seal/cache/objects"))   # doctest: +SKIP
>>> digest = store.put(b"hello")                                        # doctest: +SKIP
>>> store.get(digest)                                                   # doctest: +SKIP
b'hello'

Keys mirror the local store: ``<prefix>/sha256/ab/cdef…``. A blob is written once, with a
conditional PUT (``If-None-Match: *``); losing that race to a writer of the same digest is
success. A single PUT becomes visible whole. Files above :attr:`S3ObjectStore.multipart_threshold`
go up in parts, and S3 shows the object only when the upload completes; the parts are hashed as
they are read, and a file that changed under us aborts the upload before it completes. Every read
is verified: the cache (``.seal/cache/objects/sha256/ab/…``, a :class:`LocalObjectStore`, so
temp file, fsync, rename, read-only) is re-hashed on each use, and a corrupt copy is dropped and
fetched again. The endpoint and credentials come from the usual environment (``AWS_ENDPOINT_URL``
or ``AWS_ENDPOINT_URL_S3``, ``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_REGION``);
``?endpoint=URL`` and ``?region=NAME`` on the URL take precedence.

Client: obstore (Rust's object_store behind a small Python API). All three candidates can send
``If-None-Match: *`` (boto3 since botocore 1.35, s3fs through ``mode="create"``, obstore through
``mode="create"``, which maps the 412 to ``AlreadyExistsError``). On import time, measured with
``python -X importtime`` on this machine (best of five), obstore takes 15 ms against 176 ms for
boto3 (plus about 110 ms to build its first client, from botocore's JSON service models) and
336 ms for s3fs (aiobotocore, aiohttp, fsspec); seal's registry commands start in well under a
second, so only obstore fits. Its weight is one compiled wheel with one dependency
(typing-extensions); boto3 brings botocore (32 MB), s3transfer, jmespath and dateutil, and s3fs
brings 20-odd packages on top of that. An obstore store is safe to share between threads and drops
the GIL during I/O; a boto3 client is thread-safe but its session is not, and s3fs runs its own
event loop on a side thread. What obstore lacks is bucket administration (no CreateBucket), which
a blob store does not need.
"""

from __future__ import annotations

import hashlib
import os
import re
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Iterable, Iterator, Mapping
from urllib.parse import parse_qs, urlsplit

from obstore.exceptions import (
    AlreadyExistsError,
    BaseError as ObstoreError,
    PermissionDeniedError,
    PreconditionError,
    UnauthenticatedError,
)
from obstore.store import S3Store

from ..errors import BlobMissing, SealError, UserError
from .object_store import LocalObjectStore, file_digest
from .objects import DIGEST_PREFIX, blob_digest, is_digest

_CHUNK = 1 << 20
_BLOBS = "sha256/"
# Freshness markers live beside the blobs, never under sha256/, so listing blobs never sees them.
_FRESH = "fresh/sha256/"
_QUERY_KEYS = ("endpoint", "region")

# A CLI should fail within seconds when the endpoint is down, not after object_store's default
# ten retries over up to three minutes.
_RETRY = {
    "max_retries": 3,
    "retry_timeout": timedelta(seconds=15),
    "backoff": {"init_backoff": timedelta(milliseconds=100), "max_backoff": timedelta(seconds=2), "base": 2},
}
_CLIENT_TIMEOUTS = {"connect_timeout": timedelta(seconds=5), "timeout": timedelta(seconds=120)}


@dataclass(frozen=True)
class S3Location:
    """Where blobs live: a bucket, a key prefix inside it, and the server that holds them."""

    bucket: str
    prefix: str
    endpoint: str | None
    region: str | None

    @property
    def url(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}".rstrip("/")

    @property
    def server(self) -> str:
        return self.endpoint or "AWS S3"


def parse_s3_url(url: str, env: Mapping[str, str] = os.environ) -> S3Location:
    """Read ``s3://bucket/prefix[?endpoint=URL&region=NAME]``, filling gaps from ``env``.

    >>> parse_s3_url("s3://blobs/team/seal?endpoint=http://127.0.0.1:8333", env={})
    S3Location(bucket='blobs', prefix='team/seal', endpoint='http://127.0.0.1:8333', region='us-east-1')
    """
    parts = urlsplit(url)
    if parts.scheme != "s3" or not parts.netloc:
        raise UserError(f"not an S3 URL: {url!r}; write it as s3://BUCKET/PREFIX")
    query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
    unknown = sorted(set(query) - set(_QUERY_KEYS))
    if unknown:
        raise UserError(f"unknown option {unknown[0]!r} in {url!r}; the S3 URL takes only ?endpoint= and ?region=")
    endpoint = query.get("endpoint") or env.get("AWS_ENDPOINT_URL_S3") or env.get("AWS_ENDPOINT_URL") or None
    region = query.get("region") or env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION")
    if endpoint and not region:
        region = "us-east-1"  # S3-compatible servers ignore it, but a signature needs one
    return S3Location(parts.netloc, parts.path.strip("/"), endpoint.rstrip("/") if endpoint else None, region)


def _blob_key(digest: str) -> str:
    if not is_digest(digest):
        raise ValueError(f"not a blob digest: {digest!r}")
    hexd = digest[len(DIGEST_PREFIX):]
    return f"{_BLOBS}{hexd[:2]}/{hexd[2:]}"


def _marker_key(digest: str) -> str:
    return _FRESH + _blob_key(digest)[len(_BLOBS):]


def _digest_of_key(key: str) -> str | None:
    name = key[len(_BLOBS):].replace("/", "", 1) if key.startswith(_BLOBS) else ""
    digest = DIGEST_PREFIX + name
    return digest if is_digest(digest) and key == _blob_key(digest) else None


def _server_code(exc: BaseException) -> str | None:
    """The S3 error code (``NoSuchBucket``, ``InvalidAccessKeyId``…) that obstore quotes, if any."""
    found = re.search(r"<Code>([A-Za-z]+)</Code>", str(exc))
    return found.group(1) if found else None


class S3ObjectStore:
    """Content-addressed blobs under ``s3://bucket/prefix/sha256/ab/cdef…``.

    ``cache`` is the folder of verified copies (``.seal/cache/objects``). One instance can be
    shared by threads.
    """

    #: Files larger than this go up as a multipart upload (one PUT holds the whole file in memory).
    multipart_threshold = 64 << 20
    multipart_chunk = 8 << 20

    def __init__(self, location: S3Location, cache: Path):
        self.location = location
        self.cache = LocalObjectStore(Path(cache))
        self._bucket_seen = False
        self._store = S3Store(
            location.bucket,
            prefix=location.prefix or None,
            config=_client_config(location),
            client_options={"allow_http": (location.endpoint or "").startswith("http://"), **_CLIENT_TIMEOUTS},
            retry_config=_RETRY,
        )

    @classmethod
    def from_url(cls, url: str, *, cache: Path, env: Mapping[str, str] = os.environ) -> "S3ObjectStore":
        """The store that ``SEAL_OBJECTS_URL=s3://bucket/prefix`` names."""
        return cls(parse_s3_url(url, env), cache)

    def __repr__(self) -> str:
        return f"S3ObjectStore({self.location.url!r}, endpoint={self.location.server!r})"

    # -- writing ---------------------------------------------------------------------------

    def put(self, data: bytes) -> str:
        """Store ``data`` once; returns its digest. An existing object of that name is kept."""
        digest = blob_digest(data)
        with self._errors():
            try:
                self._store.put(_blob_key(digest), data, mode="create")
            except (AlreadyExistsError, PreconditionError):
                self._accept_existing(digest, len(data))
                self.freshen(digest)  # about to be referenced again: gc's grace period must cover it
        self._bucket_seen = True
        return digest

    def put_file(self, path: Path) -> str:
        """Store the file at ``path``; large files go up in parts and appear only when complete."""
        path = Path(path)
        if path.stat().st_size <= self.multipart_threshold:
            return self.put(path.read_bytes())
        digest = file_digest(path)
        if self.has(digest):
            self.freshen(digest)
        else:
            with self._errors():
                # No conditional multipart in object_store: a racing writer of the same digest
                # rewrites the same bytes, which the hashing reader below guarantees.
                self._store.put(
                    _blob_key(digest), _read_checked(path, digest),
                    use_multipart=True, chunk_size=self.multipart_chunk, max_concurrency=4,
                )
        return digest

    def _accept_existing(self, digest: str, size: int) -> None:
        # Lost the race, or stored before. The name is the content's hash, so the object is ours
        # unless someone wrote other bytes under it; a size check is cheap, `check` is thorough.
        found = self._head(digest)["size"]
        if found != size:
            raise SealError(
                f"blob {digest} on {self.location.url} holds {found} bytes, not {size}: "
                "it was altered behind seal's back; run `seal verify`"
            )

    # -- reading ---------------------------------------------------------------------------

    def has(self, digest: str) -> bool:
        key = _blob_key(digest)
        with self._errors():
            try:
                self._store.head(key)
            except FileNotFoundError:
                self._require_bucket(key)
                return False
        self._bucket_seen = True
        return True

    def get(self, digest: str) -> bytes:
        """The blob's bytes, from the cache when it holds a good copy, else from the server."""
        cached = self._read_cache(digest)
        if cached is not None:
            return cached
        self._fetch(digest)
        return self.cache.get(digest)

    def path_of(self, digest: str) -> Path:
        """A verified, read-only local file with the blob's bytes (in the cache)."""
        path = self.cache.path_of(digest)
        if path.is_file() and self.cache.check(digest):
            return path
        self._evict(digest)
        self._fetch(digest)
        return path

    def iter_digests(self) -> Iterator[str]:
        """Every blob digest in the store, in sorted order."""
        with self._errors():
            for page in self._store.list(_BLOBS):
                for meta in page:
                    digest = _digest_of_key(meta["path"])
                    if digest:
                        yield digest

    def stat(self, digest: str) -> tuple[int, float]:
        """(size, last-modified epoch seconds); freshening counts as a modification."""
        meta = self._head(digest)
        fresh = self._marker_time(digest)
        return meta["size"], max(meta["last_modified"].timestamp(), fresh)

    def check(self, digest: str) -> bool:
        """Whether the bytes on the server (not the cache) still hash to their name."""
        h = hashlib.sha256()
        for chunk in self._stream(digest):
            h.update(chunk)
        return DIGEST_PREFIX + h.hexdigest() == digest

    # -- gc ----------------------------------------------------------------------------------

    def freshen(self, digest: str) -> None:
        """Mark the blob as just used, so that gc's grace period protects it.

        S3 cannot touch an object's Last-Modified, and a copy onto itself is refused unless
        metadata changes (which obstore does not expose), so this writes an empty marker
        ``fresh/sha256/ab/…`` beside it; :meth:`stat` reports the later of the two times.
        """
        self._head(digest)
        with self._errors():
            self._store.put(_marker_key(digest), b"")

    def delete(self, digest: str) -> None:
        """Remove the blob, its freshness marker and its cached copy (for gc only)."""
        key = _blob_key(digest)
        with self._errors():
            self._store.delete([key, _marker_key(digest)])
        self._evict(digest)

    # -- helpers -----------------------------------------------------------------------------

    def _head(self, digest: str) -> dict:
        key = _blob_key(digest)
        with self._errors():
            try:
                return self._store.head(key)
            except FileNotFoundError:
                self._require_bucket(key)
                raise self._missing(digest) from None

    def _marker_time(self, digest: str) -> float:
        with self._errors():
            try:
                return self._store.head(_marker_key(digest))["last_modified"].timestamp()
            except FileNotFoundError:
                return 0.0

    def _stream(self, digest: str) -> Iterator[bytes]:
        with self._errors():
            try:
                result = self._store.get(_blob_key(digest))
            except FileNotFoundError as exc:
                raise self._no_bucket() if _server_code(exc) == "NoSuchBucket" else self._missing(digest) from None
            for chunk in result.stream(min_chunk_size=_CHUNK):
                yield bytes(chunk)

    def _fetch(self, digest: str) -> None:
        """Download into the cache (temp, fsync, rename), refusing bytes that do not match."""

        def write(f) -> None:
            h = hashlib.sha256()
            for chunk in self._stream(digest):
                h.update(chunk)
                f.write(chunk)
            got = DIGEST_PREFIX + h.hexdigest()
            if got != digest:
                raise SealError(
                    f"blob {digest} on {self.location.url} is corrupt (its bytes hash to {got}); "
                    "restore it from a good copy, or run `seal verify` to see what refers to it"
                )

        self.cache._write(digest, write)

    def _read_cache(self, digest: str) -> bytes | None:
        try:
            data = self.cache.get(digest)
        except BlobMissing:
            return None
        if blob_digest(data) == digest:
            return data
        self._evict(digest)
        return None

    def _evict(self, digest: str) -> None:
        try:
            self.cache.path_of(digest).unlink()
        except FileNotFoundError:
            pass

    def _missing(self, digest: str) -> BlobMissing:
        return BlobMissing(digest, self.location.url)

    def _require_bucket(self, key: str) -> None:
        """After a 404 on HEAD (which has no body), find out whether the bucket itself is missing."""
        if self._bucket_seen:
            return
        try:
            self._store.get(key)
        except FileNotFoundError as exc:
            if _server_code(exc) == "NoSuchBucket":
                raise self._no_bucket() from None
        self._bucket_seen = True

    def _no_bucket(self) -> UserError:
        return UserError(
            f"bucket {self.location.bucket!r} does not exist on {self.location.server}: "
            f"create it (for example `aws s3 mb s3://{self.location.bucket}`) or fix SEAL_OBJECTS_URL"
        )

    @contextmanager
    def _errors(self) -> Iterator[None]:
        """Turn what the server or the network says into one line: a :class:`UserError` when the
        user can fix it (bucket, credentials, endpoint), a :class:`SealError` otherwise."""
        try:
            yield
        except (ObstoreError, FileNotFoundError) as exc:
            translated = self._user_error(exc)
            if translated is None:
                raise
            raise translated from None

    def _user_error(self, exc: BaseException) -> SealError | None:
        code, text, where = _server_code(exc), str(exc), self.location
        if code == "NoSuchBucket":
            return self._no_bucket()
        if isinstance(exc, (PermissionDeniedError, UnauthenticatedError)) or "403 Forbidden" in text:
            return UserError(
                f"{where.server} refused the credentials for {where.url} ({code or 'HTTP 403'}): "
                "check AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, and that the key may use this bucket"
            )
        if "error sending request" in text or "timed out" in text:
            return UserError(
                f"cannot reach the S3 endpoint {where.server} for {where.url}: check that the server is up "
                "and that AWS_ENDPOINT_URL (or ?endpoint= on the URL) names it"
            )
        if isinstance(exc, (FileNotFoundError, AlreadyExistsError, PreconditionError)):
            return None  # the caller knows what a miss or a lost race means
        first = text.splitlines()[0] if text else type(exc).__name__
        return SealError(f"the S3 server {where.server} failed on {where.url}: {first}; try again, or see its logs")


def _client_config(location: S3Location) -> dict:
    config: dict = {}
    if location.endpoint:
        # AWS_ENDPOINT_URL_S3 in the environment would otherwise win over ?endpoint=.
        config["endpoint"] = config["aws_endpoint_url_s3"] = location.endpoint
    if location.region:
        config["region"] = location.region
    return config


def _read_checked(path: Path, digest: str) -> Iterable[bytes]:
    """The file's chunks; raises at the end, before the upload completes, if they hash otherwise."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            h.update(chunk)
            yield chunk
    if DIGEST_PREFIX + h.hexdigest() != digest:
        raise SealError(f"{path} changed while it was being stored; try again")
