"""What an object is: blob digests, canonical manifests and version ids.

A version's manifest is canonical JSON (RFC 8785, JCS) and its id is the sha256 of those bytes.
Because a manifest names its parents by id, each id covers the whole history behind it.

>>> m = build_manifest(base="b" * 64, parents=[], kind="root", status="accepted", created_at="2026-01-01T00:00:00.000000Z")
>>> len(version_id(m))
64
"""

from __future__ import annotations

import json
import math
import re
from datetime import datetime, timedelta, timezone
from typing import Any

from ..errors import ManifestInvalid

KINDS = ("root", "edit", "merge", "import", "consolidate", "revert", "writer")
STATUSES = ("accepted", "rejected")
DIGEST_PREFIX = "sha256:"
MANIFEST_FORMAT = "seal.version/1"


def sha256_hex(data: bytes) -> str:
    import hashlib  # loading OpenSSL costs reads that never hash anything

    return hashlib.sha256(data).hexdigest()


def blob_digest(data: bytes) -> str:
    """The digest that names a blob: ``sha256:<64 hex>``."""
    return DIGEST_PREFIX + sha256_hex(data)


def is_digest(value: Any) -> bool:
    return (
        isinstance(value, str)
        and value.startswith(DIGEST_PREFIX)
        and is_hex64(value[len(DIGEST_PREFIX):])
    )


def canonical_json(obj: Any) -> bytes:
    """RFC 8785 bytes of ``obj``. Floats must be finite; JCS has no NaN."""
    import rfc8785  # only writers and verify canonicalise; reads never do

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


def parse_manifest(text: str | bytes) -> dict:
    return json.loads(text)


# --- the manifest schema ------------------------------------------------------------------------

_TIME = re.compile(r"^(\d{4})-(\d{2})-(\d{2})T(\d{2}):(\d{2}):(\d{2})(\.\d{1,6})?Z$")
_HEX64 = re.compile(r"[0-9a-f]{64}")


def is_hex64(value: Any) -> bool:
    """A version id, a base id or a public key: 64 lowercase hex digits.

        >>> is_hex64("ab" * 32), is_hex64("AB" * 32), is_hex64("ab" * 32 + "\\n"), is_hex64(None)
        (True, False, False, False)
    """
    return isinstance(value, str) and _HEX64.fullmatch(value) is not None


# C0 controls except tab and newline, DEL, C1 controls, and the bidirectional overrides that
# make text display in another order than it reads ("Trojan source").
UNSAFE_CHARS = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")
MAX_SAFE_INT = 2 ** 53
FUTURE_SLACK = timedelta(days=1)


def check_time(value: Any, field: str = "created_at") -> str:
    """An RFC 3339 UTC time as seal writes it, no later than a day from now.

    >>> check_time("2026-11-27T10:00:00.000000Z")
    '2026-11-27T10:00:00.000000Z'
    """
    m = _TIME.match(value) if isinstance(value, str) else None
    if not m:
        raise ManifestInvalid(f"{field} must be an RFC 3339 UTC time like 2026-11-27T10:00:00.000000Z, not {str(value)[:40]!r}")
    try:
        when = datetime(*(int(m.group(i)) for i in range(1, 7)), tzinfo=timezone.utc)
    except ValueError:
        raise ManifestInvalid(f"{field} {value!r} is not a real date and time") from None
    if when > datetime.now(timezone.utc) + FUTURE_SLACK:
        raise ManifestInvalid(f"{field} {value!r} lies in the future")
    return value


def _check_values(node: Any, path: str) -> None:
    """Finite numbers, safe integers, strings without control or bidi characters, string keys."""
    if isinstance(node, dict):
        for key, value in node.items():
            if not isinstance(key, str):
                raise ManifestInvalid(f"{path} has a non-string key")
            _check_values(key, f"{path} key")
            _check_values(value, f"{path}.{key}")
    elif isinstance(node, list):
        for i, item in enumerate(node):
            _check_values(item, f"{path}[{i}]")
    elif isinstance(node, bool) or node is None:
        return
    elif isinstance(node, int):
        if abs(node) > MAX_SAFE_INT:
            raise ManifestInvalid(f"{path} holds an integer beyond 2**53")
    elif isinstance(node, float):
        if not math.isfinite(node):
            raise ManifestInvalid(f"{path} is not a finite number")
    elif isinstance(node, str):
        if UNSAFE_CHARS.search(node):
            raise ManifestInvalid(f"{path} holds control or bidirectional-override characters")
    else:
        raise ManifestInvalid(f"{path} has a value of type {type(node).__name__}")


def check_manifest(manifest: Any) -> dict:
    """Refuse a manifest that breaks seal's schema; return it unchanged when it holds.

    Every writer calls this before recording, and `seal pull` calls it on every pulled manifest.

    >>> check_manifest(build_manifest(base="b" * 64, parents=[], kind="root", status="accepted",
    ...                               created_at="2026-01-01T00:00:00.000000Z"))["kind"]
    'root'
    """
    if not isinstance(manifest, dict):
        raise ManifestInvalid("a manifest must be a JSON object")
    _check_values(manifest, "manifest")
    if manifest.get("format") != MANIFEST_FORMAT:
        raise ManifestInvalid(f"format must be {MANIFEST_FORMAT!r}")
    if manifest.get("kind") not in KINDS:
        raise ManifestInvalid(f"kind must be one of {', '.join(KINDS)}, not {str(manifest.get('kind'))[:30]!r}")
    if manifest.get("status") not in STATUSES:
        raise ManifestInvalid(f"status must be one of {', '.join(STATUSES)}, not {str(manifest.get('status'))[:30]!r}")
    if not isinstance(manifest.get("base"), str) or not is_hex64(manifest["base"]):
        raise ManifestInvalid("base must be a 64-hex base fingerprint")
    parents = manifest.get("parents")
    if not isinstance(parents, list) or not all(is_hex64(p) for p in parents) \
            or len(set(parents)) != len(parents):
        raise ManifestInvalid("parents must be a list of distinct 64-hex version ids")
    check_time(manifest.get("created_at"))
    for field in ("author", "message"):
        if not isinstance(manifest.get(field, ""), str):
            raise ManifestInvalid(f"{field} must be a string")
    _check_parts(manifest)
    return manifest


def _number(value, *, optional: bool = True) -> bool:
    if value is None:
        return optional
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _check_score(i: int, row) -> None:
    if not isinstance(row, dict) or not isinstance(row.get("suite"), str) or not isinstance(row.get("metric"), str) \
            or not _number(row.get("value"), optional=False):
        raise ManifestInvalid(f"scores[{i}] must have a suite, a metric and a numeric value")
    if not (row.get("against") is None or isinstance(row["against"], str)):
        raise ManifestInvalid(f"scores[{i}].against must be null or a string")
    n = row.get("n")
    if not (n is None or (isinstance(n, int) and not isinstance(n, bool) and n >= 0)):
        raise ManifestInvalid(f"scores[{i}].n must be null or a count")


def _check_gate(i: int, row) -> None:
    if not isinstance(row, dict) or not isinstance(row.get("check"), str) or not isinstance(row.get("passed"), bool):
        raise ManifestInvalid(f"audit[{i}] must have a check name and a boolean passed")
    for key in ("value", "threshold", "ci_low", "ci_high", "mde"):
        if not _number(row.get(key)):
            raise ManifestInvalid(f"audit[{i}].{key} must be null or a number")
    for key in ("detail", "rule"):
        if not (row.get(key) is None or isinstance(row[key], str)):
            raise ManifestInvalid(f"audit[{i}].{key} must be null or a string")
    n = row.get("n")
    if not (n is None or (isinstance(n, int) and not isinstance(n, bool) and n >= 0)):
        raise ManifestInvalid(f"audit[{i}].n must be null or a count")


def _check_parts(manifest: dict) -> None:
    adapter = manifest.get("adapter")
    if adapter is not None and (not isinstance(adapter, dict) or not is_digest(adapter.get("weights"))
                                or not isinstance(adapter.get("config"), dict)):
        raise ManifestInvalid("adapter must be null or {weights: sha256 digest, config: object}")
    for field in ("trigger", "self_edit", "policy"):
        value = manifest.get(field)
        if value is not None and not is_digest(value):
            raise ManifestInvalid(f"{field} must be null or a sha256 digest")
    for field in ("scores", "audit"):
        if not isinstance(manifest.get(field, []), list):
            raise ManifestInvalid(f"{field} must be a list")
    for i, row in enumerate(manifest.get("scores", [])):
        _check_score(i, row)
    for i, row in enumerate(manifest.get("audit", [])):
        _check_gate(i, row)
    if not isinstance(manifest.get("train", {}), dict):
        raise ManifestInvalid("train must be an object")
