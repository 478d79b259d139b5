"""`seal pull`: fetch a pushed lineage from the Hub, check everything, then import it in one transaction.

The order is what keeps a hostile repo harmless:

1. list the commit's files with their sizes (``model_info(files_metadata=True)``), pinned to one
   commit; refuse pickles, odd paths and files a push does not write;
2. download ``seal/lineage.json`` only if its listed size is within ``SEAL_PULL_MAX_LINEAGE_BYTES``,
   and check it: every manifest id, signature and schema (enums, RFC 3339 times not in the future,
   no control characters), the base, the parent links, and that the head is what was asked for
   (a full version id always means that version);
3. refuse signers outside the trust file unless ``--trust KEYID`` names them, and a tracking ref
   that would move backwards (a branch) or at all (a tag) unless ``--force``;
4. download only the blobs the lineage names that this registry lacks, each only if its listed
   size matches the lineage and is within ``SEAL_PULL_MAX_BYTES``, and stop any download that
   runs past that size; check each digest, and each adapter against the base;
5. store the blobs (never unlinking one: another pull may share it; `seal gc` cleans up), then in
   one write transaction insert signers and versions (a version already there is skipped, so two
   pulls of one lineage both succeed), record withheld data (see :mod:`.withheld`) and move
   the tracking ref by compare-and-swap; a lost race is retried from the fresh state.

>>> pull(Registry.open(), "me/my-adapter@v1", trust=["3f2a9c1b0d4e5f60"])     # doctest: +SKIP
{'repo_id': 'me/my-adapter', 'head': '…', 'imported': [...], 'ref': 'hub/me/my-adapter/tags/v1', ...}
"""

from __future__ import annotations

import re
import tempfile
from dataclasses import dataclass
from pathlib import Path

from ..adapters import ADAPTER_CONFIG_FILE, WEIGHTS_FILE
from ..errors import PullRefused, UntrustedSigner, UserError
from ..store.object_store import file_digest
from ..store.objects import DIGEST_PREFIX, sha256_hex
from .errors import bounded_bar, hub_errors, quiet_unless_terminal
from .layout import (LINEAGE_FILE, Revision, blob_file, check_remote_names, classify_revision, config_bytes,
                     git_blob_id, hub_revision, max_bytes, max_lineage_bytes, parse_repo_spec, short_id,
                     tracking_ref)
from .lineage import CheckedLineage, check_lineage, doc_ids, known_ids, parse_lineage

_HEX = re.compile(r"^[0-9a-f]{16,64}$")
_COMMIT = re.compile(r"^[0-9a-f]{40}$")


@dataclass(frozen=True)
class Listed:
    """A file as the Hub lists it: size, LFS sha256 (if LFS) and git blob id."""

    size: int | None
    lfs_sha256: str | None
    blob_id: str | None


@dataclass
class Remote:
    """One pinned Hub commit and what was asked for."""

    repo_id: str
    rev: Revision
    commit: str
    files: dict[str, Listed]

    @property
    def where(self) -> str:
        return f"{self.repo_id}@{self.rev.name} ({self.commit[:12]})"


def open_remote(api, repo_id: str, revision: str | None) -> Remote:
    """Classify the revision, pin it to a commit, and list that commit's files with sizes."""
    if revision is None:
        rev = classify_revision(None, set(), set())
    else:
        refs = api.list_repo_refs(repo_id)
        rev = classify_revision(revision, {b.name for b in refs.branches}, {t.name for t in refs.tags})
    info = api.model_info(repo_id, revision=hub_revision(rev), files_metadata=True)
    files = {}
    for s in info.siblings or []:
        lfs = getattr(s, "lfs", None)
        files[s.rfilename] = Listed(getattr(s, "size", None), getattr(lfs, "sha256", None) if lfs else None,
                                    getattr(s, "blob_id", None))
    if not isinstance(info.sha, str) or not _COMMIT.match(info.sha):
        raise PullRefused(f"{repo_id}@{rev.name}: the Hub answered with a malformed commit id; nothing was imported")
    remote = Remote(repo_id, rev, info.sha, files)
    check_remote_names(list(files), remote.where)
    return remote


def _download(api, remote: Remote, name: str, size: int, cache: Path) -> Path:
    """One file of the pinned commit, stopped as soon as it passes its listed size."""
    return Path(api.hf_hub_download(remote.repo_id, name, revision=remote.commit, cache_dir=cache,
                                    tqdm_class=bounded_bar(size, name, remote.where)))


def fetch_lineage(api, remote: Remote, cache: Path) -> dict:
    listed = remote.files[LINEAGE_FILE]
    limit = max_lineage_bytes()
    if listed.size is None or listed.size > limit:
        raise PullRefused(
            f"{remote.where}: {LINEAGE_FILE} is {'of unlisted size' if listed.size is None else f'{listed.size} bytes'}, "
            f"over the {limit}-byte limit (SEAL_PULL_MAX_LINEAGE_BYTES); nothing was downloaded or imported")
    path = _download(api, remote, LINEAGE_FILE, listed.size, cache)
    return parse_lineage(path.read_bytes(), remote.where)


def check_head_files(remote: Remote, checked: CheckedLineage) -> None:
    """The root adapter files PEFT loads must be the head version's, by the Hub's own listing."""
    adapter = checked.manifests[checked.head]["adapter"]
    weights = remote.files[WEIGHTS_FILE]
    if weights.lfs_sha256 is not None and DIGEST_PREFIX + weights.lfs_sha256 != adapter["weights"]:
        raise PullRefused(f"{remote.where}: {WEIGHTS_FILE} is not the head version's adapter (tampered, or pushed "
                          f"by hand); nothing was imported")
    data = config_bytes(adapter["config"])
    listed = remote.files[ADAPTER_CONFIG_FILE]
    same = (listed.lfs_sha256 == sha256_hex(data)) if listed.lfs_sha256 else \
        (listed.blob_id is None or listed.blob_id == git_blob_id(data))
    if not same:
        raise PullRefused(f"{remote.where}: {ADAPTER_CONFIG_FILE} differs from the head version's adapter config; "
                          f"nothing was imported")


def check_sizes(remote: Remote, checked: CheckedLineage, wanted: list[str]) -> dict[str, int]:
    """Digest → size for every blob to download, refused before any byte when a size is wrong or too big."""
    limit = max_bytes()
    out = {}
    for digest in wanted:
        name = blob_file(digest)
        listed = remote.files.get(name)
        if listed is None:
            raise PullRefused(f"{remote.where}: {name} is named by the lineage but not on the Hub; push it again "
                              f"with `seal push`; nothing was imported")
        if listed.size is None or listed.size > limit:
            raise PullRefused(
                f"{remote.where}: {name} is {listed.size} bytes, over the {limit}-byte limit per file "
                f"(raise {'SEAL_PULL_MAX_BYTES'} if you expect it); nothing was downloaded or imported")
        if listed.size != checked.sizes.get(digest):
            raise PullRefused(f"{remote.where}: {name} is {listed.size} bytes but the lineage says "
                              f"{checked.sizes.get(digest)}; refusing it before download, nothing was imported")
        if listed.lfs_sha256 is not None and DIGEST_PREFIX + listed.lfs_sha256 != digest:
            raise PullRefused(f"{remote.where}: the Hub lists {name} with another sha256 (tampered); nothing was "
                              f"imported")
        out[digest] = listed.size
    return out


def fetch_blobs(api, reg, remote: Remote, checked: CheckedLineage, cache: Path) -> dict[str, Path]:
    """Download the blobs this registry lacks; each checked against its digest."""
    wanted = [d for d in checked.needed_blobs() if not reg.store.has(d)]
    sizes = check_sizes(remote, checked, wanted)
    paths = {}
    for digest, size in sizes.items():
        path = _download(api, remote, blob_file(digest), size, cache)
        if file_digest(path) != digest:
            raise PullRefused(f"{remote.where}: {blob_file(digest)} does not match its digest (corrupt or tampered); "
                              f"nothing was imported")
        paths[digest] = path
    return paths


def check_adapters(reg, checked: CheckedLineage, paths: dict[str, Path]) -> None:
    """Every imported adapter is safetensors that fits this registry's base (as `seal verify` checks)."""
    from ..adapters import check_adapter_bytes

    shapes = (reg.base().get("info") or {}).get("shapes")
    for v in checked.to_import:
        adapter = checked.manifests[v].get("adapter")
        if not adapter:
            continue
        path = paths.get(adapter["weights"]) or reg.store.path_of(adapter["weights"])
        try:
            check_adapter_bytes(adapter["config"], path, base_shapes=shapes)
        except UserError as e:
            raise PullRefused(f"the adapter of version {short_id(v)} cannot load on this base ({e}); "
                              f"nothing was imported") from None


def signer_report(reg, checked: CheckedLineage, doc_signers: set[str], trust: list[str]) -> list[dict]:
    """Each signer of the versions to import, trusted or not; refuse untrusted ones (exit 1)."""
    wanted = []
    for t in trust:
        t = t.strip().lower()
        if not _HEX.match(t):
            raise UserError(f"--trust {t[:70]!r} is not a signer id: give the 64-hex fingerprint (or 16+ hex of it)")
        if not any(s.startswith(t) for s in doc_signers):
            raise UserError(f"--trust {t} matches no signer of this lineage (its signers: "
                            f"{', '.join(sorted(doc_signers)) or 'none'}); check the fingerprint")
        wanted.append(t)
    trusted = set(reg.trusted())
    report = []
    for sid in sorted({checked.signatures[v][1] for v in checked.to_import}):
        count = sum(1 for v in checked.to_import if checked.signatures[v][1] == sid)
        status = "trusted" if sid in trusted else "trusted now (--trust)" if any(sid.startswith(w) for w in wanted) \
            else "untrusted"
        report.append({"id": sid, "versions": count, "status": status})
    untrusted = [r for r in report if r["status"] == "untrusted"]
    if untrusted:
        keys = ", ".join(f"{r['id']} ({r['versions']} version(s))" for r in untrusted)
        raise UntrustedSigner(
            f"the lineage is signed by key(s) not in your trust file: {keys}; check the fingerprint with the "
            f"publisher, then pull again with --trust {untrusted[0]['id']} (nothing was imported)",
            [r["id"] for r in untrusted])
    return report


def pull(reg, spec: str, *, trust: list[str] | None = None, force: bool = False) -> dict:
    """Fetch ``REPO_ID[@REVISION]``, check everything, then import what this registry lacks and set the
    tracking ref. A failed check imports nothing."""
    from huggingface_hub import HfApi

    from .importing import import_checked, plan_ref

    repo_id, revision = parse_repo_spec(spec)
    local_base = reg.base()
    api = HfApi()
    with tempfile.TemporaryDirectory(prefix="pull-", dir=reg.tmp_dir) as tmpname, quiet_unless_terminal():
        cache = Path(tmpname) / "cache"
        with hub_errors(repo_id, revision):
            remote = open_remote(api, repo_id, revision)
            doc = fetch_lineage(api, remote, cache)
        with reg.read() as conn:
            known = known_ids(conn, doc_ids(doc))
        checked = check_lineage(doc, local_base=local_base, known=known, where=remote.where)
        if not remote.rev.expects_head(checked.head, remote.commit):
            raise PullRefused(f"{remote.where} holds version {short_id(checked.head)}, not {remote.rev.name}; "
                              f"a version id always means that version, nothing was imported")
        check_head_files(remote, checked)
        signers = signer_report(reg, checked, set(doc["signers"]), trust or [])
        ref = tracking_ref(repo_id, remote.rev)
        plan_ref(reg, ref, remote.rev, checked, force=force)
        with hub_errors(repo_id, revision):
            paths = fetch_blobs(api, reg, remote, checked, cache)
        check_adapters(reg, checked, paths)
        result = import_checked(reg, remote, checked, paths, signers, ref=ref, force=force)
    return result
