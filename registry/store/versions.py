"""Versions as rows: what recording one writes, and reading manifests back.

Plumbing under :class:`seal.registry.Registry`; `seal verify` recomputes exactly the rows
:func:`version_rows` derives from a manifest.

>>> rows = version_rows({"base": "b" * 64, "kind": "root", "status": "accepted", "parents": [],
...                      "created_at": "t"}, "a" * 64, None, None)
>>> sorted(rows)
['parents', 'version']
"""

from __future__ import annotations

from ..errors import UserError
from .objects import manifest_bytes, parse_manifest
from .sql import Conn


def headline_of(manifest: dict) -> tuple[str | None, float | None]:
    head = manifest.get("headline")
    if isinstance(head, dict):
        return head.get("metric"), head.get("value")
    return None, None


def version_rows(manifest: dict, vid: str, signature: str | None, signer: str | None, text: str | None = None) -> dict:
    """The rows that record one version; `verify` recomputes exactly these from the manifest.

    ``text`` is the manifest's canonical JSON when the caller has it already. Scores and gates
    are not copied into rows: the ``scores`` and ``audits`` views read them from the manifest."""
    metric, value = headline_of(manifest)
    adapter = manifest.get("adapter") or {}
    return {
        "version": {
            "id": vid, "manifest": text if text is not None else manifest_bytes(manifest).decode("utf-8"), "base_id": manifest["base"],
            "kind": manifest["kind"], "status": manifest["status"], "created_at": manifest["created_at"],
            "author": manifest.get("author", ""), "message": manifest.get("message", ""),
            "adapter_digest": adapter.get("weights"), "headline_metric": metric, "headline_value": value,
            "signature": signature, "signer": signer,
        },
        "parents": [{"version_id": vid, "position": i, "parent_id": p} for i, p in enumerate(manifest["parents"])],
    }


def insert_version(conn: Conn, manifest: dict, vid: str, signature: str | None, signer: str | None,
                   text: str | None = None) -> bool:
    """Insert one version's rows unless it is already there; True when this call inserted it.

    Two writers recording the same manifest (a pull racing a pull) both succeed: the second
    finds the id taken and adds nothing.
    """
    rows = version_rows(manifest, vid, signature, signer, text)
    if not conn.insert_new("versions", rows["version"], "id"):
        return False
    conn.insert("version_parents", rows["parents"])
    return True


def version_exists(conn: Conn, vid: str) -> bool:
    return conn.one("SELECT 1 FROM versions WHERE id = ?", (vid,)) is not None


def stored_manifest(text: str, vid: str) -> dict:
    """A stored manifest, or a one-line error pointing at `seal verify` when its row was damaged."""
    from ..errors import DatabaseDamaged

    try:
        manifest = parse_manifest(text)
    except (ValueError, TypeError):
        manifest = None
    if not isinstance(manifest, dict) or not isinstance(manifest.get("parents"), list) \
            or not isinstance(manifest.get("created_at"), str):
        raise DatabaseDamaged(f"the stored manifest of version {vid[:12]} is damaged; run `seal verify`")
    return manifest


def load_manifest(conn: Conn, vid: str) -> dict:
    text = conn.scalar("SELECT manifest FROM versions WHERE id = ?", (vid,))
    if text is None:
        raise UserError(f"version {vid[:12]} is not in this registry")
    return stored_manifest(text, vid)


def version_record(conn: Conn, vid: str) -> dict:
    """The manifest plus ``id``, signature and signer: what `seal show --json` prints."""
    row = conn.one("SELECT manifest, signature, signer FROM versions WHERE id = ?", (vid,))
    if row is None:
        raise UserError(f"version {vid[:12]} is not in this registry")
    return {"id": vid, **stored_manifest(row[0], vid), "signature": row[1], "signer": row[2]}
