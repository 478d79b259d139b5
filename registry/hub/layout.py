"""What a seal push looks like on the Hugging Face Hub: file names, repo ids, revisions, limits, refs.

A pushed version is one Hub commit holding::

    adapter_config.json          the version's adapter config (PEFT loads the repo as it is)
    adapter_model.safetensors    the adapter weights, byte for byte as in the object store
    seal/lineage.json            the manifests of the version, its ancestors and the rejected
                                 attempts made on that path, with signatures and signer keys
    seal/blobs/<sha256 hex>      every blob those manifests name (adapters, policy, probes, data),
                                 except data the publisher withheld with ``seal push --no-data``
    README.md                    the model card

Hub tags name versions: ``<12-hex short id>`` for every pushed version, the seal tag's own name for
each seal tag on the pushed path, and ``alias-<name>`` for each alias (aliases move, so their Hub
tags are moved too). A pull sets a remote-tracking ref named after what it pulled:

>>> tracking_ref("org/x", Revision("branch", "main"))
'refs/remotes/hub/org/x'
>>> tracking_ref("org/x", Revision("tag", "v1"))
'refs/remotes/hub/org/x/tags/v1'
>>> tracking_ref("org/x", Revision("alias", "alias-production"))
'refs/remotes/hub/org/x/aliases/production'
>>> parse_repo_spec("org/x@v1")
('org/x', 'v1')
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass

from ..adapters import ADAPTER_CONFIG_FILE, PICKLE_SUFFIXES, WEIGHTS_FILE
from ..errors import PullRefused, UserError
from ..store import refs as R
from ..store.objects import DIGEST_PREFIX, is_hex64

LINEAGE_FILE = "seal/lineage.json"
README_FILE = "README.md"
GITATTRIBUTES = ".gitattributes"
BLOB_DIR = "seal/blobs/"
ALLOWED_FILES = frozenset({ADAPTER_CONFIG_FILE, WEIGHTS_FILE, LINEAGE_FILE, README_FILE, GITATTRIBUTES})
REQUIRED_FILES = (ADAPTER_CONFIG_FILE, WEIGHTS_FILE, LINEAGE_FILE)
REMOTE_PREFIX = R.REMOTES + "hub/"
ALIAS_TAG = "alias-"
DEFAULT_BRANCH = "main"
SHORT = 12
# Limits on what a pull downloads, checked against the Hub's listing before any byte is fetched.
MAX_BYTES_ENV = "SEAL_PULL_MAX_BYTES"
MAX_LINEAGE_BYTES_ENV = "SEAL_PULL_MAX_LINEAGE_BYTES"
DEFAULT_MAX_BYTES = 2 << 30
DEFAULT_MAX_LINEAGE_BYTES = 64 << 20

_BLOB_NAME = re.compile(r"^seal/blobs/[0-9a-f]{64}$")
_REPO_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)?$")
_SHORT_ID = re.compile(r"^[0-9a-f]{12}$")
_REF_PART = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._-]*(/[A-Za-z0-9_][A-Za-z0-9._-]*)*$")


def short_id(vid: str) -> str:
    return vid[:SHORT]


def is_short_id_tag(name: str) -> bool:
    return bool(_SHORT_ID.match(name))


def blob_file(digest: str) -> str:
    """Where a blob lives in a pushed commit: ``seal/blobs/<hex>``."""
    return BLOB_DIR + digest[len(DIGEST_PREFIX):]


def config_bytes(adapter_config: dict) -> bytes:
    """adapter_config.json exactly as a push writes it (the stored config, which names the base portably)."""
    return (json.dumps(adapter_config, indent=2, sort_keys=True) + "\n").encode("utf-8")


def git_blob_id(data: bytes) -> str:
    """The git object id the Hub lists for a small file stored in git (not LFS)."""
    import hashlib

    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def alias_tag(alias: str) -> str:
    """The Hub tag that carries seal alias ``alias`` (Hub tags are the only movable names we can set)."""
    return ALIAS_TAG + alias


def check_repo_id(repo_id: str) -> str:
    if (
        not repo_id
        or not _REPO_ID.match(repo_id)
        or ".." in repo_id
        or "--" in repo_id
        or repo_id.endswith((".", ".git"))
        or len(repo_id) > 96
    ):
        raise UserError(
            f"{repo_id!r} is not a valid Hub repo id; give ORG/NAME (letters, digits, '-', '_', '.')"
        )
    return repo_id


def parse_repo_spec(spec: str) -> tuple[str, str | None]:
    """``"org/name@rev"`` → ``("org/name", "rev")``; ``"org/name"`` → ``("org/name", None)``."""
    repo_id, sep, revision = spec.partition("@")
    check_repo_id(repo_id)
    if sep and not revision.strip():
        raise UserError(f"{spec!r} has an empty revision after '@'; give REPO_ID or REPO_ID@REVISION")
    revision = revision.strip()
    if sep and (len(revision) > 200 or any(ord(ch) < 32 for ch in revision) or ".." in revision):
        raise UserError(f"{revision[:40]!r} is not a Hub revision; give a branch, a tag, a commit or a version id")
    return repo_id, (revision or None) if sep else None


@dataclass(frozen=True)
class Revision:
    """What a pull asked for: a ``branch``, a ``tag``, an ``alias`` tag, a seal ``version`` (full or
    short id) or a Hub ``commit``. ``name`` is as the Hub knows it."""

    kind: str
    name: str

    def expects_head(self, head: str, commit: str) -> bool:
        """Whether a lineage whose head is ``head`` (found at Hub commit ``commit``) is what was asked for.

        A full version id always means that version; a short id means a version with that prefix
        (unless it is a prefix of the commit itself).

        >>> Revision("version", "ab" * 32).expects_head("ab" * 32, "c" * 40)
        True
        >>> Revision("version", "abababababab").expects_head("cd" * 32, "c" * 40)
        False
        """
        if self.kind != "version":
            return True
        if is_hex64(self.name):
            return head == self.name
        return head.startswith(self.name) or commit.startswith(self.name)


def classify_revision(revision: str | None, branches: set[str], tags: set[str]) -> Revision:
    """Name what ``revision`` is on a Hub repo with these branches and tags."""
    if revision is None or revision in (DEFAULT_BRANCH, "refs/heads/" + DEFAULT_BRANCH):
        return Revision("branch", DEFAULT_BRANCH)
    name = revision.lower()
    if is_hex64(name):
        return Revision("version", name)  # checked before any name: a full id is never shadowed
    bare = revision.removeprefix("refs/heads/").removeprefix("refs/tags/")
    if revision.startswith("refs/tags/") or (bare in tags and not revision.startswith("refs/heads/")):
        if is_short_id_tag(bare):
            return Revision("version", bare)
        return Revision("alias" if bare.startswith(ALIAS_TAG) else "tag", bare)
    if bare in branches:
        return Revision("branch", bare)
    if is_short_id_tag(name):
        return Revision("version", name)
    return Revision("commit", revision)


def hub_revision(rev: Revision) -> str:
    """What to ask the Hub for: a full version id is looked up by its short-id tag."""
    if rev.kind == "version" and is_hex64(rev.name):
        return R.TAGS + short_id(rev.name)
    if rev.kind in ("tag", "alias") or (rev.kind == "version" and is_short_id_tag(rev.name)):
        return R.TAGS + rev.name
    return rev.name


def tracking_ref(repo_id: str, rev: Revision) -> str | None:
    """The ref a pull of ``rev`` sets, or None for a version or a commit (its id names it already)."""
    base = REMOTE_PREFIX + check_repo_id(repo_id)
    if rev.kind in ("branch", "tag", "alias") and not _REF_PART.match(rev.name):
        raise UserError(f"the Hub revision {rev.name[:60]!r} cannot name a tracking ref; pull it by commit or version id")
    if rev.kind == "branch":
        return base if rev.name == DEFAULT_BRANCH else f"{base}/heads/{rev.name}"
    if rev.kind == "tag":
        return f"{base}/tags/{rev.name}"
    if rev.kind == "alias":
        return f"{base}/aliases/{rev.name[len(ALIAS_TAG):]}"
    return None


def remote_ref(repo_id: str) -> str:
    """The remote-tracking ref a pull of the default branch sets: ``refs/remotes/hub/<repo_id>``."""
    return REMOTE_PREFIX + repo_id


def max_bytes() -> int:
    """The most bytes a pull downloads for one file (``SEAL_PULL_MAX_BYTES``, default 2 GiB)."""
    return _limit(MAX_BYTES_ENV, DEFAULT_MAX_BYTES)


def max_lineage_bytes() -> int:
    """The most bytes of ``seal/lineage.json`` a pull reads (``SEAL_PULL_MAX_LINEAGE_BYTES``, default 64 MiB)."""
    return min(_limit(MAX_LINEAGE_BYTES_ENV, DEFAULT_MAX_LINEAGE_BYTES), max_bytes())


def _limit(name: str, default: int) -> int:
    text = os.environ.get(name, "").strip()
    if not text:
        return default
    try:
        value = int(text)
    except ValueError:
        raise UserError(f"{name}={text!r} is not a number of bytes; give e.g. {default}") from None
    if value <= 0:
        raise UserError(f"{name} must be a positive number of bytes, not {value}")
    return value


def check_remote_names(names: list[str], where: str) -> None:
    """Refuse pickle files, odd paths, and anything a seal push does not write."""
    bad_paths = [n for n in names if n.startswith("/") or ".." in n.split("/") or "\\" in n]
    if bad_paths:
        raise PullRefused(f"{where} holds files with unsafe paths ({', '.join(bad_paths[:5])}); refusing to pull it")
    pickles = [n for n in names if n.lower().endswith(PICKLE_SUFFIXES)]
    if pickles:
        raise PullRefused(
            f"{where} holds pickle files ({', '.join(pickles[:5])}), which can run code when loaded; "
            f"seal pulls safetensors only, so nothing was imported"
        )
    unexpected = [n for n in names if n not in ALLOWED_FILES and not _BLOB_NAME.match(n)]
    if unexpected:
        raise PullRefused(
            f"{where} holds files a seal push does not write ({', '.join(unexpected[:5])}); "
            f"refusing to pull it, nothing was imported"
        )
    missing = [n for n in REQUIRED_FILES if n not in names]
    if missing:
        raise PullRefused(f"{where} is not a seal push (no {', '.join(missing)}); push it with `seal push`")


def human_bytes(n: int) -> str:
    """A size as people read it.

    >>> human_bytes(1536)
    '1.5 kB'
    """
    size = float(n)
    for unit in ("B", "kB", "MB", "GB"):
        if size < 1000 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    return f"{n} B"
