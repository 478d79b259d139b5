"""The real huggingface_hub client against tests/hubserver.py (LocalHub): push, pull, refs, races, tampering."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import threading
from pathlib import Path

import httpx2
import huggingface_hub
import pytest
from huggingface_hub import (
    CommitOperationAdd,
    CommitOperationDelete,
    HfApi,
    HfFileSystem,
    get_hf_file_metadata,
    hf_hub_download,
    hf_hub_url,
    snapshot_download,
)
from huggingface_hub.errors import (
    EntryNotFoundError,
    HfHubHTTPError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)

try:
    from .hubfixtures import TOKEN, hf_api, local_hub  # noqa: F401
except ImportError:  # tests/ is not a package
    from hubfixtures import TOKEN, hf_api, local_hub  # noqa: F401

# huggingface_hub's own LFS PUT passes a file object as `data=`, which httpx2 deprecates: not ours to fix.
pytestmark = pytest.mark.filterwarnings("ignore:Use 'content=<...>' to upload raw bytes:DeprecationWarning")

REPO = "seal-test/adapter"
WEIGHTS = bytes(range(256)) * 16 + b"\x00tail"  # binary => LFS
NOTES = b"plain text notes\n"
CONFIG = b'{"r": 8, "alpha": 16}\n'


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def git_blob_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def snapshot_bytes(folder: str | Path) -> dict[str, bytes]:
    root = Path(folder)
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture
def pushed(local_hub, hf_api: HfApi, tmp_path: Path):
    """REPO with one upload_folder commit: weights.bin (LFS), notes.txt and sub/config.json (regular)."""
    folder = tmp_path / "adapter"
    (folder / "sub").mkdir(parents=True)
    (folder / "weights.bin").write_bytes(WEIGHTS)
    (folder / "notes.txt").write_bytes(NOTES)
    (folder / "sub" / "config.json").write_bytes(CONFIG)
    hf_api.create_repo(REPO)
    info = hf_api.upload_folder(repo_id=REPO, folder_path=folder, commit_message="add adapter")
    return info


def test_create_repo_twice_and_exist_ok(local_hub, hf_api):
    url = hf_api.create_repo(REPO)
    assert url.repo_id == REPO and url.endpoint == local_hub.endpoint
    with pytest.raises(HfHubHTTPError) as err:
        hf_api.create_repo(REPO)
    assert err.value.response.status_code == 409
    assert hf_api.create_repo(REPO, exist_ok=True).repo_id == REPO
    info = hf_api.repo_info(REPO)
    assert info.sha == local_hub.head(REPO)
    assert [s.rfilename for s in info.siblings] == [".gitattributes"]  # like the Hub's initial commit
    with pytest.raises(RepositoryNotFoundError):
        hf_api.repo_info("seal-test/missing")


def test_upload_folder_uses_lfs_for_binary_and_regular_for_text(local_hub, hf_api, pushed):
    assert pushed.oid == local_hub.head(REPO)
    paths = [(m, p) for m, p, _, _ in local_hub.requests]
    assert any(m == "POST" and p.endswith(".git/info/lfs/objects/batch") for m, p in paths)
    puts = [p for m, p in paths if m == "PUT"]
    assert puts == [f"/_lfs/models/{REPO}/{sha256(WEIGHTS)}"]  # only the binary went through LFS
    assert any(m == "POST" and p.endswith(f"{sha256(WEIGHTS)}/verify") for m, p in paths)

    infos = {i.path: i for i in hf_api.get_paths_info(REPO, ["weights.bin", "notes.txt", "sub", "nope"])}
    assert set(infos) == {"weights.bin", "notes.txt", "sub"}
    assert infos["weights.bin"].lfs.sha256 == sha256(WEIGHTS) and infos["weights.bin"].size == len(WEIGHTS)
    assert infos["notes.txt"].lfs is None and infos["notes.txt"].blob_id == git_blob_sha1(NOTES)

    assert sorted(hf_api.list_repo_files(REPO)) == [".gitattributes", "notes.txt", "sub/config.json", "weights.bin"]
    top = {e.path: type(e).__name__ for e in hf_api.list_repo_tree(REPO)}
    assert top == {".gitattributes": "RepoFile", "notes.txt": "RepoFile", "sub": "RepoFolder",
                   "weights.bin": "RepoFile"}
    assert [e.path for e in hf_api.list_repo_tree(REPO, path_in_repo="sub")] == ["sub/config.json"]
    expanded = list(hf_api.list_repo_tree(REPO, path_in_repo="sub", expand=True))
    assert expanded[0].last_commit.oid == pushed.oid

    info = hf_api.model_info(REPO, revision=pushed.oid, files_metadata=True)
    assert info.sha == pushed.oid
    sizes = {s.rfilename: (s.size, s.lfs.sha256 if s.lfs else None) for s in info.siblings}
    assert sizes["weights.bin"] == (len(WEIGHTS), sha256(WEIGHTS)) and sizes["notes.txt"] == (len(NOTES), None)

    # Re-uploading identical content: the client skips unchanged files (preupload oid) and makes no commit.
    again = hf_api.upload_file(path_or_fileobj=WEIGHTS, path_in_repo="weights.bin", repo_id=REPO)
    assert again.oid == pushed.oid


def test_parent_commit_compare_and_swap(local_hub, hf_api, pushed):
    head = pushed.oid
    readme = CommitOperationAdd("README.md", b"---\nlicense: mit\n---\n# adapter\n")  # POST /api/validate-yaml
    ok = hf_api.create_commit(REPO, [readme], commit_message="a", parent_commit=head)
    assert ok.oid != head and local_hub.head(REPO) == ok.oid
    with pytest.raises(HfHubHTTPError) as err:
        hf_api.create_commit(REPO, [CommitOperationAdd("b.txt", b"b")], commit_message="b", parent_commit=head)
    assert err.value.response.status_code == 412
    assert "A commit has happened since" in str(err.value)
    assert local_hub.head(REPO) == ok.oid
    # short sha prefixes are accepted as parent, like the Hub
    short = hf_api.create_commit(REPO, [CommitOperationAdd("c.txt", b"c")], commit_message="c",
                                 parent_commit=ok.oid[:7])
    assert local_hub.head(REPO) == short.oid
    history = hf_api.list_repo_commits(REPO)
    assert [c.commit_id for c in history][:3] == [short.oid, ok.oid, head] and history[1].title == "a"
    assert hf_api.file_exists(REPO, "README.md") and not hf_api.file_exists(REPO, "README.md", revision=head)


def test_concurrent_commits_with_same_parent_exactly_one_wins(local_hub, hf_api, pushed):
    n = 4
    barrier = threading.Barrier(n)
    results: list = [None] * n

    def worker(i: int) -> None:
        api = HfApi(endpoint=local_hub.endpoint, token=TOKEN)
        ops = [CommitOperationAdd(f"race{i}.bin", os.urandom(64) + b"\0"), CommitOperationAdd("shared.txt", b"%d" % i)]
        barrier.wait()
        try:
            results[i] = api.create_commit(REPO, ops, commit_message=f"w{i}", parent_commit=pushed.oid)
        except HfHubHTTPError as e:
            results[i] = e.response.status_code

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    winners = [r for r in results if not isinstance(r, int)]
    assert len(winners) == 1 and sorted(r for r in results if isinstance(r, int)) == [412] * (n - 1)
    assert local_hub.head(REPO) == winners[0].oid
    files = hf_api.list_repo_files(REPO)
    assert sum(f.startswith("race") for f in files) == 1


def test_tags_branches_and_refs(local_hub, hf_api, pushed):
    hf_api.create_tag(REPO, tag="v1", tag_message="first")
    with pytest.raises(HfHubHTTPError) as err:
        hf_api.create_tag(REPO, tag="v1")
    assert err.value.response.status_code == 409
    hf_api.create_tag(REPO, tag="v1", exist_ok=True)
    hf_api.create_branch(REPO, branch="dev")
    second = hf_api.create_commit(REPO, [CommitOperationAdd("x.txt", b"x")], commit_message="x", revision="dev")
    pr = hf_api.create_commit(REPO, [CommitOperationAdd("y.txt", b"y")], commit_message="y", create_pr=True)
    assert pr.pr_url and pr.pr_revision == "refs/pr/1"

    refs = hf_api.list_repo_refs(REPO, include_pull_requests=True)
    assert {(t.name, t.ref, t.target_commit) for t in refs.tags} == {("v1", "refs/tags/v1", pushed.oid)}
    assert {b.name: b.target_commit for b in refs.branches} == {"main": pushed.oid, "dev": second.oid}
    assert [p.target_commit for p in refs.pull_requests] == [pr.oid]
    assert hf_api.repo_info(REPO, revision="v1").sha == pushed.oid
    assert hf_api.repo_info(REPO, revision="refs/pr/1").sha == pr.oid
    assert "x.txt" not in hf_api.list_repo_files(REPO) and "x.txt" in hf_api.list_repo_files(REPO, revision="dev")
    with pytest.raises(RevisionNotFoundError):
        hf_api.repo_info(REPO, revision="nope")
    hf_api.delete_tag(REPO, tag="v1")
    assert hf_api.list_repo_refs(REPO).tags == []


def test_snapshot_download_at_tag_and_commit_reproduces_bytes(local_hub, hf_api, pushed, tmp_path):
    hf_api.create_tag(REPO, tag="v1")
    new_weights = WEIGHTS[::-1]
    second = hf_api.create_commit(
        REPO,
        [CommitOperationAdd("weights.bin", new_weights), CommitOperationDelete("sub/")],
        commit_message="retrain",
    )
    original = {".gitattributes": local_hub.read(REPO, ".gitattributes"), "notes.txt": NOTES,
                "sub/config.json": CONFIG, "weights.bin": WEIGHTS}
    # module-level functions with no endpoint/token/cache_dir: the fixture's patching routes them here
    at_tag = huggingface_hub.snapshot_download(REPO, revision="v1")
    assert snapshot_bytes(at_tag) == original
    assert Path(at_tag).parent.name == "snapshots" and Path(at_tag).name == pushed.oid
    at_sha = snapshot_download(REPO, revision=second.oid, cache_dir=tmp_path / "c2")
    assert snapshot_bytes(at_sha) == {**{k: v for k, v in original.items() if not k.startswith("sub/")},
                                      "weights.bin": new_weights}
    at_old_sha = snapshot_download(REPO, revision=pushed.oid, cache_dir=tmp_path / "c3", local_dir=tmp_path / "ld")
    assert {k: v for k, v in snapshot_bytes(at_old_sha).items() if not k.startswith(".cache")} == original


def test_hf_hub_download_metadata_and_byte_ranges(local_hub, pushed, tmp_path):
    path = hf_hub_download(REPO, "weights.bin", cache_dir=tmp_path / "c")
    assert Path(path).read_bytes() == WEIGHTS
    meta = get_hf_file_metadata(hf_hub_url(REPO, "weights.bin"))
    assert (meta.etag, meta.size, meta.commit_hash) == (sha256(WEIGHTS), len(WEIGHTS), pushed.oid)
    meta = get_hf_file_metadata(hf_hub_url(REPO, "sub/config.json", revision=pushed.oid))
    assert (meta.etag, meta.size) == (git_blob_sha1(CONFIG), len(CONFIG))
    with pytest.raises(EntryNotFoundError):
        hf_hub_download(REPO, "missing.bin", cache_dir=tmp_path / "c")

    # hf_hub_download never sends Range in this client version; HfFileSystem reads do.
    fs = HfFileSystem(endpoint=local_hub.endpoint, token=TOKEN)
    with fs.open(f"{REPO}/weights.bin", "rb", block_size=1000) as f:
        f.seek(1500)
        assert f.read(700) == WEIGHTS[1500:2200]
    ranges = [(s, r) for m, p, s, r in local_hub.requests if m == "GET" and r]
    assert ranges and all(s == 206 for s, _ in ranges)

    url = hf_hub_url(REPO, "weights.bin")
    with httpx2.Client() as client:
        r = client.get(url, headers={"Range": "bytes=-5"})
        assert r.status_code == 206 and r.content == WEIGHTS[-5:]
        assert r.headers["Content-Range"] == f"bytes {len(WEIGHTS) - 5}-{len(WEIGHTS) - 1}/{len(WEIGHTS)}"
        assert client.get(url, headers={"Range": f"bytes={len(WEIGHTS)}-"}).status_code == 416
        bad = client.put(f"{local_hub.endpoint}/_lfs/models/{REPO}/{'0' * 64}", content=b"not matching")
        assert bad.status_code == 400
        chunked = client.put(f"{local_hub.endpoint}/_lfs/models/{REPO}/{sha256(b'xy' * 5000)}",
                             content=iter([b"xy" * 2000, b"xy" * 3000]))  # Transfer-Encoding: chunked
        assert chunked.status_code == 200 and chunked.request.headers.get("Transfer-Encoding") == "chunked"


def test_tamper_changes_downloaded_bytes_but_not_the_etag(local_hub, pushed, tmp_path):
    evil = bytes([WEIGHTS[0] ^ 0xFF]) + WEIGHTS[1:]  # same size: the client cannot notice from headers
    local_hub.tamper(REPO, "weights.bin", evil)
    local_hub.tamper(REPO, "notes.txt", b"PLAIN TEXT NOTES\n")
    path = hf_hub_download(REPO, "weights.bin", revision=pushed.oid, cache_dir=tmp_path / "c")
    data = Path(path).read_bytes()
    assert data == evil and sha256(data) != sha256(WEIGHTS)
    assert Path(path).resolve().name == sha256(WEIGHTS)  # cached under the advertised (original) etag
    assert Path(hf_hub_download(REPO, "notes.txt", cache_dir=tmp_path / "c")).read_bytes() != NOTES
    assert get_hf_file_metadata(hf_hub_url(REPO, "weights.bin")).etag == sha256(WEIGHTS)


def test_subprocess_client_uses_env_only(local_hub, pushed, tmp_path):
    """A fresh interpreter configured only by local_hub.client_env (HF_ENDPOINT etc. read at import)."""
    code = f"import huggingface_hub as h, sys; sys.stdout.write(open(h.hf_hub_download({REPO!r}, 'notes.txt')).read())"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_ENDPOINT": "https://huggingface.co", **local_hub.client_env}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout == NOTES.decode()


def test_private_repos_hide_from_strangers_and_settings_change_visibility(local_hub, hf_api, tmp_path):
    hf_api.create_repo("me/secret", private=True)
    hf_api.upload_file(path_or_fileobj=NOTES, path_in_repo="notes.txt", repo_id="me/secret")
    stranger = HfApi(endpoint=local_hub.endpoint, token=False)
    assert hf_api.model_info("me/secret").private
    with pytest.raises(RepositoryNotFoundError):
        stranger.model_info("me/secret")
    with pytest.raises(RepositoryNotFoundError):
        hf_hub_download("me/secret", "notes.txt", cache_dir=tmp_path / "c", token=False)
    hf_api.update_repo_settings("me/secret", private=False)
    assert not stranger.model_info("me/secret").private
    assert Path(hf_hub_download("me/secret", "notes.txt", cache_dir=tmp_path / "d", token=False)).read_bytes() == NOTES


def test_planted_files_are_listed_with_their_size_and_served_on_demand(local_hub, hf_api, pushed, tmp_path):
    size = 300 * 2**20
    commit = local_hub.plant(REPO, "big.bin", size)
    info = hf_api.model_info(REPO, revision=commit, files_metadata=True)
    assert {s.rfilename: s.size for s in info.siblings}["big.bin"] == size
    assert local_hub.requested("big.bin") == []
    got = HfFileSystem(endpoint=local_hub.endpoint, token=TOKEN).read_block(f"{REPO}/big.bin", size - 10, 10)
    assert got == bytes(10) and local_hub.requested("big.bin", ("GET",))
