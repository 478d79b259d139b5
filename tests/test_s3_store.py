"""The S3 object store against a real SeaweedFS server (fixture ``s3_url``): no mocks."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest

from seal.registry.errors import SealError, UserError
from seal.registry.errors import BlobMissing
from seal.registry.store.object_store import LocalObjectStore
from seal.registry.store_url import open_object_store
from seal.registry.store.objects import blob_digest

s3_store = pytest.importorskip("seal.registry.store.s3_store")
S3ObjectStore, parse_s3_url = s3_store.S3ObjectStore, s3_store.parse_s3_url


@pytest.fixture
def url(s3_url) -> str:
    """A prefix of its own for each test, so tests never see each other's blobs."""
    return f"{s3_url}/{uuid.uuid4().hex[:8]}"


@pytest.fixture
def store(url, tmp_path) -> S3ObjectStore:
    return S3ObjectStore.from_url(url, cache=tmp_path / "cache")


def raw(url: str):
    """The bucket under ``url`` through obstore directly, behind the store's back."""
    from obstore.store import S3Store

    loc = parse_s3_url(url)
    return S3Store(loc.bucket, prefix=loc.prefix, endpoint=loc.endpoint, region=loc.region,
                   client_options={"allow_http": True})


def keys(url: str) -> list[str]:
    return sorted(meta["path"] for page in raw(url).list() for meta in page)


def dead_endpoint() -> str:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}"  # nothing listens once closed


def test_round_trip(store, url, tmp_path):
    before = time.time()
    a, b = store.put(b"alpha"), store.put(b"beta" * 1000)
    f = tmp_path / "adapter.safetensors"
    f.write_bytes(os.urandom(3000))
    c = store.put_file(f)

    assert a == blob_digest(b"alpha") and c == blob_digest(f.read_bytes())
    assert store.get(a) == b"alpha" and store.get(b) == b"beta" * 1000
    assert store.has(a) and store.has(c) and not store.has(blob_digest(b"gamma"))
    assert list(store.iter_digests()) == sorted([a, b, c])
    size, mtime = store.stat(b)
    assert size == 4000 and before - 2 <= mtime <= time.time() + 2
    path = store.path_of(c)
    assert path.read_bytes() == f.read_bytes()
    assert stat.S_IMODE(path.stat().st_mode) & 0o222 == 0
    assert path.is_relative_to(tmp_path / "cache" / "sha256")
    assert store.check(a) and store.check(c)
    assert keys(url) == sorted(f"sha256/{d[7:9]}/{d[9:]}" for d in (a, b, c))


def test_identical_content_is_stored_once(store, url, tmp_path):
    f = tmp_path / "same"
    f.write_bytes(b"same bytes")
    digests = {store.put(b"same bytes"), store.put(b"same bytes"), store.put_file(f)}
    blobs = [k for k in keys(url) if "/fresh/" not in f"/{k}"]
    assert len(digests) == 1 and len(blobs) == 1
    assert any("/fresh/" in f"/{k}" for k in keys(url))  # a second put freshened it for gc's grace period


def test_eight_threads_racing_to_put_one_blob(store, url):
    data = os.urandom(1 << 20)
    barrier, results, errors = threading.Barrier(8), [], []

    def put() -> None:
        barrier.wait()
        try:
            results.append(store.put(data))
        except Exception as exc:  # collected, so the test shows every failure
            errors.append(exc)

    threads = [threading.Thread(target=put) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == [] and results == [blob_digest(data)] * 8
    blobs = [k for k in keys(url) if "/fresh/" not in f"/{k}"]
    assert len(blobs) == 1 and store.get(results[0]) == data


def test_object_altered_on_the_server_is_caught(store, url):
    digest = store.put(b"the adapter")
    raw(url).put(f"sha256/{digest[7:9]}/{digest[9:]}", b"the adaptor")  # same size, other bytes

    assert store.check(digest) is False
    with pytest.raises(SealError, match="corrupt") as caught:
        store.get(digest)
    assert not isinstance(caught.value, (BlobMissing, UserError))
    assert not store.cache.path_of(digest).exists()  # bad bytes never reach the cache
    with pytest.raises(SealError, match="corrupt"):
        store.path_of(digest)


def test_put_over_an_altered_object_of_another_size_is_refused(store, url):
    digest = blob_digest(b"original")
    raw(url).put(f"sha256/{digest[7:9]}/{digest[9:]}", b"forged, and longer")
    with pytest.raises(SealError, match="altered"):
        store.put(b"original")


def test_read_cache_serves_without_the_network(store, url, tmp_path):
    digest = store.put(b"cached once")
    assert store.get(digest) == b"cached once"
    offline = S3ObjectStore.from_url(f"{url}?endpoint={dead_endpoint()}", cache=tmp_path / "cache")
    assert offline.get(digest) == b"cached once"
    assert offline.path_of(digest).read_bytes() == b"cached once"
    with pytest.raises(UserError):  # the same store does reach for the network on a miss
        offline.get(blob_digest(b"never stored"))


def test_corrupt_cache_file_is_detected_and_fetched_again(store, url, tmp_path):
    digest = store.put(b"good bytes")
    path = store.path_of(digest)
    os.chmod(path, 0o644)
    path.write_bytes(b"bad bytes!")

    offline = S3ObjectStore.from_url(f"{url}?endpoint={dead_endpoint()}", cache=tmp_path / "cache")
    with pytest.raises(UserError, match="cannot reach"):  # it will not serve the bad copy
        offline.get(digest)
    assert not path.exists()  # and it dropped it

    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"bad bytes!")
    assert store.get(digest) == b"good bytes"
    assert path.read_bytes() == b"good bytes" and stat.S_IMODE(path.stat().st_mode) & 0o222 == 0
    path.chmod(0o644)
    path.write_bytes(b"bad again!")
    assert store.path_of(digest).read_bytes() == b"good bytes"


def test_missing_blob(store):
    digest = blob_digest(b"nobody stored this")
    assert store.has(digest) is False
    for read in (store.get, store.path_of, store.stat, store.check, store.freshen):
        with pytest.raises(BlobMissing) as caught:
            read(digest)
        assert isinstance(caught.value, FileNotFoundError) and caught.value.digest == digest
    assert list(store.iter_digests()) == []


def test_delete(store, url):
    keep, drop = store.put(b"keep"), store.put(b"drop")
    store.get(drop)
    store.freshen(drop)
    store.delete(drop)
    assert not store.has(drop) and store.has(keep)
    with pytest.raises(BlobMissing) as caught:
        store.get(drop)  # the cached copy went too
    assert caught.value.digest == drop
    assert list(store.iter_digests()) == [keep]
    assert keys(url) == [f"sha256/{keep[7:9]}/{keep[9:]}"]  # and so did the freshness marker
    store.delete(drop)  # deleting twice is not an error


def test_freshen_moves_the_time_gc_sees(store):
    digest = store.put(b"old blob")
    size, first = store.stat(digest)
    time.sleep(1.1)  # S3 times have one-second resolution
    store.freshen(digest)
    assert store.stat(digest)[0] == size and store.stat(digest)[1] >= first + 1


def test_multipart_upload_of_a_large_file(store, url, tmp_path):
    store.multipart_threshold, store.multipart_chunk = 1 << 20, 5 << 20  # S3's smallest part is 5 MiB
    f = tmp_path / "big"
    f.write_bytes(os.urandom(11 << 20))
    digest = store.put_file(f)
    etag = raw(url).head(f"sha256/{digest[7:9]}/{digest[9:]}")["e_tag"]
    assert etag.strip('"').endswith("-3")  # three parts, visible only once complete
    assert store.get(digest) == f.read_bytes() and store.put_file(f) == digest


def test_bad_credentials_are_a_user_error(url, tmp_path, monkeypatch):
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret")
    store = S3ObjectStore.from_url(url, cache=tmp_path / "cache")
    for call in (lambda: store.put(b"x"), lambda: store.has(blob_digest(b"x")), lambda: list(store.iter_digests())):
        with pytest.raises(UserError, match="refused the credentials.*AWS_SECRET_ACCESS_KEY"):
            call()
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "nobody")
    with pytest.raises(UserError, match="AWS_ACCESS_KEY_ID"):
        S3ObjectStore.from_url(url, cache=tmp_path / "cache").get(blob_digest(b"x"))


def test_missing_bucket_is_a_user_error(url, tmp_path):  # url: the SeaweedFS endpoint, never real AWS
    store = S3ObjectStore.from_url("s3://no-such-bucket/seal", cache=tmp_path / "cache")
    calls = (lambda: store.put(b"x"), lambda: store.has(blob_digest(b"x")), lambda: store.get(blob_digest(b"x")),
             lambda: store.stat(blob_digest(b"x")), lambda: list(store.iter_digests()))
    for call in calls:
        with pytest.raises(UserError, match="bucket 'no-such-bucket' does not exist.*create it"):
            call()


def test_unreachable_endpoint_is_a_quick_user_error(url, tmp_path):
    store = S3ObjectStore.from_url(f"{url}?endpoint={dead_endpoint()}", cache=tmp_path / "cache")
    started = time.monotonic()
    with pytest.raises(UserError, match="cannot reach the S3 endpoint http://127.0.0.1:.*AWS_ENDPOINT_URL"):
        store.put(b"x")
    assert time.monotonic() - started < 10


def test_url_forms(monkeypatch):
    env = {"AWS_ENDPOINT_URL": "http://env:1", "AWS_REGION": "eu-west-1"}
    assert parse_s3_url("s3://b/a/b/", env) == s3_store.S3Location("b", "a/b", "http://env:1", "eu-west-1")
    assert parse_s3_url("s3://b?endpoint=http://q:2/&region=r", env).endpoint == "http://q:2"
    assert parse_s3_url("s3://b", {**env, "AWS_ENDPOINT_URL_S3": "http://s3:3"}).endpoint == "http://s3:3"
    assert parse_s3_url("s3://b", {}) == s3_store.S3Location("b", "", None, None)
    for bad in ("s3:///prefix", "gs://b/p", "s3://b/p?endpoint=x&secret=y"):
        with pytest.raises(UserError):
            parse_s3_url(bad, {})


def test_open_object_store(tmp_path, s3_url):
    assert open_object_store(None, tmp_path).root == tmp_path / "objects"
    assert open_object_store("file://", tmp_path).root == tmp_path / "objects"
    assert open_object_store(f"file://{tmp_path}/blobs", tmp_path).root == tmp_path / "blobs"
    assert isinstance(open_object_store(None, tmp_path), LocalObjectStore)
    s3 = open_object_store(s3_url, tmp_path)
    assert isinstance(s3, S3ObjectStore) and s3.cache.root == tmp_path / "cache" / "objects"
    assert s3.get(s3.put(b"via the factory")) == b"via the factory"
    with pytest.raises(UserError, match="s3://BUCKET"):
        open_object_store("ftp://host/x", tmp_path)


def test_object_store_module_does_not_import_the_s3_client():
    probe = "import sys, seal.registry.store.object_store; print('obstore' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout.strip() == "False"
