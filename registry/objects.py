"""What an object is: blob digests, canonical manifests and version ids.

A version's manifest is canonical JSON (RFC 8785, JCS) and its id is the sha256 of those bytes.
Because a manifest names its parents by id, each id covers the whole history behind it.

>>> m = build_manifest(base="b" * 64, parents=[], kind="root", status="accepted", created_at="2026-01-01T00:00:00.000000Z")
>>> len(version_id(m))
64
"""

from __future__ import annotations

import hashlib
import json
from datetime import datetime, timezone
from typing import Any

import rfc8785

KINDS = ("root", "edit", "merge", "import", "consolidate", "revert")
STATUSES = ("accepted", "rejected")
DIGEST_PREFIX = "sha256:"
MANIFEST_FORMAT = "seal.version/1"


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def blob_digest(data: bytes) -> str:
    """The digest that names a blob: ``sha256:<64 hex>``."""
    return DIGEST_PREFIX + sha256_hex(data)


def is_digest(value: Any) -> bool:
    return (
        isinstance(value, str)
        and value.startswith(DIGEST_PREFIX)
        and len(value) == len(DIGEST_PREFIX) + 64
        and all(c in "0123456789abcdef" for c in value[len(DIGEST_PREFIX):])
    )


def canonical_json(obj: Any) -> bytes:
    """RFC 8785 bytes of ``obj``. Floats must be finite; JCS has no NaN."""
    return rfc8785.dumps(obj)


def now_utc() -> str:
    """A timestamp that sorts as text: ``2026-11-26T11:30:00.123456Z``."""
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def build_manifest(
    *,
    base: str,
    parents: list[str],
    kind: str,
    status: str,
    created_at: str | None = None,
    adapter: dict | None = None,
    trigger: str | None = None,
    self_edit: str | None = None,
    train: dict | None = None,
    scores: list[dict] | None = None,
    audit: list[dict] | None = None,
    policy: str | None = None,
    author: str = "",
    message: str = "",
    extra: dict | None = None,
) -> dict:
    """A manifest with every field DESIGN.md names, in one place so ids are reproducible."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, not {kind!r}")
    if status not in STATUSES:
        raise ValueError(f"status must be one of {STATUSES}, not {status!r}")
    manifest = {
        "format": MANIFEST_FORMAT,
        "base": base,
        "parents": list(parents),
        "kind": kind,
        "status": status,
        "adapter": adapter,
        "trigger": trigger,
        "self_edit": self_edit,
        "train": train or {},
        "scores": scores or [],
        "audit": audit or [],
        "policy": policy,
        "author": author,
        "created_at": created_at or now_utc(),
        "message": message,
    }
    if extra:
        clash = set(extra) & set(manifest)
        if clash:
            raise ValueError(f"extra fields clash with manifest fields: {sorted(clash)}")
        manifest.update(extra)
    return manifest


def manifest_bytes(manifest: dict) -> bytes:
    return canonical_json(manifest)


def version_id(manifest: dict) -> str:
    """The id of a version: sha256 of its canonical manifest."""
    return sha256_hex(manifest_bytes(manifest))


def referenced_blobs(manifest: dict) -> list[str]:
    """Every blob digest a manifest points at, in a stable order."""
    found: list[str] = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            for key in sorted(node):
                walk(node[key])
        elif isinstance(node, list):
            for item in node:
                walk(item)
        elif is_digest(node):
            found.append(node)

    walk(manifest)
    seen: set[str] = set()
    return [d for d in found if not (d in seen or seen.add(d))]


def score_value(manifest: dict, suite: str, metric: str, against: str | None = None) -> float | None:
    """The value of one score row of a manifest, or None when it has none."""
    for s in manifest.get("scores", []):
        if s["suite"] == suite and s["metric"] == metric and s.get("against") == against:
            return s["value"]
    return None


def parse_manifest(text: str | bytes) -> dict:
    return json.loads(text)
