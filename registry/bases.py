"""The frozen base model a registry adapts, as a record in ``bases``.

Weight fingerprints as loaded come from :mod:`seal.editor.base` (it needs torch); this module
only shapes and stores the record.

>>> record = base_record(name="HuggingFaceTB/SmolLM2-135M-Instruct", revision=None,
...                      source="hub", location=None)
>>> len(record["id"])
64
"""

from __future__ import annotations

import json

from sqlalchemy import insert, select
from sqlalchemy.engine import Connection

from .errors import UserError
from .objects import canonical_json, now_utc, sha256_hex
from .schema import bases

def base_record(
    *,
    fingerprint: str | None = None,
    name: str,
    revision: str | None,
    source: str,
    location: str | None,
    info: dict | None = None,
) -> dict:
    """A ``bases`` row. Its id is the fingerprint of the weights as loaded (see
    :func:`seal.editor.base.fingerprint_base`, which covers name and revision too); without one,
    a digest of name and revision stands in (for a base known only by name)."""
    if fingerprint is None:
        fingerprint = sha256_hex(canonical_json({"name": name, "revision": revision}))
    return {
        "id": fingerprint,
        "name": name,
        "revision": revision,
        "source": source,
        "location": location,
        "info": dict(info or {}),
    }


def base_spec(record: dict) -> str | None:
    """What :func:`seal.editor.base.load_base` takes to load this base again."""
    if record["source"] == "embedded":
        return None
    if record["source"] == "hub":
        return record["name"] + (f"@{record['revision']}" if record.get("revision") else "")
    return record["location"]


def insert_base(conn: Connection, record: dict) -> str:
    existing = conn.execute(select(bases.c.id).where(bases.c.id == record["id"])).first()
    if existing is None:
        conn.execute(
            insert(bases).values(
                id=record["id"],
                name=record["name"],
                revision=record.get("revision"),
                source=record["source"],
                location=record.get("location"),
                created_at=now_utc(),
                info=json.dumps(record.get("info", {}), sort_keys=True),
            )
        )
    return record["id"]


def get_base(conn: Connection, base_id: str) -> dict:
    row = conn.execute(select(bases).where(bases.c.id == base_id)).mappings().first()
    if row is None:
        raise UserError(f"base {base_id[:12]} is not recorded in this registry")
    out = dict(row)
    out["info"] = json.loads(out["info"])
    return out
