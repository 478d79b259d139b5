"""Recompute everything: blob digests, manifest ids, rows, parent edges and signatures.

A row changed behind the API's back, or a flipped byte in a blob, is reported by version.

>>> faults = verify_registry(Repository.find())     # doctest: +SKIP
>>> [f["version"] for f in faults]                    # doctest: +SKIP
"""

from __future__ import annotations

import json
from collections import defaultdict

from sqlalchemy import select

from .objects import canonical_json, referenced_blobs, sha256_hex
from .refs import SYMBOLIC, list_refs
from .repository import Repository, version_rows
from .schema import audits, bases, scores, signers, version_parents, versions
from .signing import check_signature

_VERSION_COLUMNS = (
    "base_id", "kind", "status", "created_at", "author", "message",
    "adapter_digest", "headline_metric", "headline_value",
)


def _norm_rows(rows: list[dict], keys: tuple[str, ...]) -> list[tuple]:
    return sorted(tuple(json.dumps(r.get(k), sort_keys=True) for k in keys) for r in rows)


def verify_registry(repo: Repository, *, check_blobs: bool = True) -> list[dict]:
    """Every fault found, as ``{"version": id or None, "object": what, "fault": why}``."""
    faults: list[dict] = []

    def fault(version, obj, why):
        faults.append({"version": version, "object": obj, "fault": why})

    with repo.connect() as conn:
        trusted = {r.id: r.public_key for r in conn.execute(select(signers))}
        base_ids = {r[0] for r in conn.execute(select(bases.c.id))}
        parents = defaultdict(list)
        for r in conn.execute(select(version_parents).order_by(version_parents.c.version_id, version_parents.c.position)):
            parents[r.version_id].append({"version_id": r.version_id, "position": r.position, "parent_id": r.parent_id})
        score_rows = defaultdict(list)
        for r in conn.execute(select(scores)).mappings():
            score_rows[r["version_id"]].append(dict(r))
        audit_rows = defaultdict(list)
        for r in conn.execute(select(audits)).mappings():
            audit_rows[r["version_id"]].append(dict(r))
        rows = list(conn.execute(select(versions)).mappings())
        ref_rows = list_refs(conn)

    ids = {r["id"] for r in rows}
    blob_ok: dict[str, bool] = {}
    for row in rows:
        vid = row["id"]
        text = row["manifest"]
        if sha256_hex(text.encode("utf-8")) != vid:
            fault(vid, "manifest", "the manifest does not hash to the version id: the row was changed")
            continue
        try:
            manifest = json.loads(text)
        except json.JSONDecodeError:
            fault(vid, "manifest", "the manifest is not JSON")
            continue
        if canonical_json(manifest).decode("utf-8") != text:
            fault(vid, "manifest", "the manifest is not in RFC 8785 canonical form")
        expected = version_rows(manifest, vid, row["signature"], row["signer"])
        for col in _VERSION_COLUMNS:
            if expected["version"][col] != row[col]:
                fault(vid, f"versions.{col}", f"column holds {row[col]!r} but the manifest says {expected['version'][col]!r}")
        if [p["parent_id"] for p in parents.get(vid, [])] != manifest.get("parents", []) or [
            p["position"] for p in parents.get(vid, [])
        ] != list(range(len(manifest.get("parents", [])))):
            fault(vid, "version_parents", "parent edges differ from the manifest's parents")
        for p in manifest.get("parents", []):
            if p not in ids:
                fault(vid, "version_parents", f"parent {p[:12]} is missing")
        if manifest.get("base") not in base_ids:
            fault(vid, "base", f"base {str(manifest.get('base'))[:12]} is not recorded")
        skeys = ("suite", "metric", "against", "value", "n")
        if _norm_rows(score_rows.get(vid, []), skeys) != _norm_rows(expected["scores"], skeys):
            fault(vid, "scores", "score rows differ from the manifest's scores")
        akeys = ("check_name", "value", "threshold", "passed", "detail")
        if _norm_rows(audit_rows.get(vid, []), akeys) != _norm_rows(expected["audits"], akeys):
            fault(vid, "audits", "audit rows differ from the manifest's audit")
        if not row["signature"] or not row["signer"]:
            fault(vid, "signature", "the version is not signed")
        elif row["signer"] not in trusted:
            fault(vid, "signature", f"signer {row['signer'][:12]} is not a trusted signer of this registry")
        elif not check_signature(trusted[row["signer"]], vid, row["signature"]):
            fault(vid, "signature", "the signature does not match the version id")
        if check_blobs:
            for digest in referenced_blobs(manifest):
                if digest not in blob_ok:
                    blob_ok[digest] = repo.store.has(digest) and repo.store.check(digest)
                if not blob_ok[digest]:
                    why = "is corrupt (its bytes no longer hash to its name)" if repo.store.has(digest) else "is missing"
                    fault(vid, "blob", f"blob {digest} {why}")
    for vid in set(parents) - ids:
        fault(vid, "version_parents", "edges recorded for a version that does not exist")
    for vid in (set(score_rows) | set(audit_rows)) - ids:
        fault(vid, "scores/audits", "rows recorded for a version that does not exist")
    for name, target in ref_rows:
        if name.startswith("refs/meta/"):
            if not repo.store.has(target):
                fault(None, f"ref {name}", f"points at {target}, which is not in the object store")
        elif not target.startswith(SYMBOLIC) and target not in ids:
            fault(None, f"ref {name}", f"points at {target[:12]}, which is not a version")
    if check_blobs:
        for digest in repo.store.iter_digests():
            if digest not in blob_ok and not repo.store.check(digest):
                fault(None, f"blob {digest}", "is corrupt (its bytes no longer hash to its name)")
    return faults
