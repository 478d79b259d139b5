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

from .errors import UserError
from .store.objects import canonical_json, now_utc, sha256_hex
from .store.sql import Conn

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


BASE_REF = "refs/meta/base/"
BASE_FIELDS = ("id", "name", "revision", "source", "location", "info")


def base_doc(row: dict) -> dict:
    """The fields of a base row that a signed record pins (``info`` as stored, parsed)."""
    info = row.get("info")
    if isinstance(info, str):
        info = json.loads(info)
    return {"format": "seal.base/1", **{k: (info if k == "info" else row.get(k)) for k in BASE_FIELDS}}


def record_base(reg, base_id: str) -> None:
    """Pin a base row by a blob moved to ``refs/meta/base/<id>`` with a signed reflog row, so a row
    changed by SQL (a name that loads another model, shapes that switch off a check) is caught."""
    ref = BASE_REF + base_id
    if reg.read_ref(ref) is not None:
        return
    with reg.read() as c:
        row = get_base(c, base_id)
    digest = reg.store.put(canonical_json(base_doc(row)))
    reg.move_ref(ref, new=digest, expected=None, reason="base: recorded")


def insert_base(conn: Conn, record: dict) -> str:
    conn.insert_new("bases", {
        "id": record["id"], "name": record["name"], "revision": record.get("revision"),
        "source": record["source"], "location": record.get("location"), "created_at": now_utc(),
        "info": json.dumps(record.get("info", {}), sort_keys=True),
    }, "id")
    return record["id"]


def get_base(conn: Conn, base_id: str) -> dict:
    rows = conn.dicts("SELECT * FROM bases WHERE id = ?", (base_id,))
    if not rows:
        raise UserError(f"base {base_id[:12]} is not recorded in this registry")
    out = rows[0]
    try:
        out["info"] = json.loads(out["info"])
    except (TypeError, ValueError):
        raise UserError(f"the record of base {base_id[:12]} is damaged; run `seal verify`") from None
    return out
