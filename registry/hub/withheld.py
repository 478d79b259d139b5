"""Blobs a publisher withheld: data that versions name by digest but that never reached this registry.

``seal push --no-data`` keeps a lineage's data blobs (trigger passages, self-edits, eval sets) on
the publisher's machine; the Hub lineage names them by digest only. A pull of such a lineage
imports the versions without those blobs and records which digests were withheld, by whom and
why, in one small JSON blob that the meta ref ``refs/meta/withheld`` points at. The ref moves by
compare-and-swap with a reflog row signed by this registry's key, in the transaction that imports
the versions, so the record cannot be forged without that key, and `seal verify` accepts a
missing blob only when this record names it. A blob that is present is checked as always.

Only data may be withheld: adapter weights, policies and probe sets always travel.

>>> sorted(withheld_doc({"sha256:" + "a" * 64: {"role": "trigger", "source": "hub:org/x"}}))
['digests', 'format']
"""

from __future__ import annotations

import json

from ..store.objects import canonical_json, is_digest
from ..store.refs import read_ref
from ..store.sql import Conn

WITHHELD_REF = "refs/meta/withheld"
WITHHELD_FORMAT = "seal.withheld/1"
# Top-level manifest fields whose blobs are the user's data, and may be withheld.
DATA_FIELDS = ("trigger", "self_edit", "eval")


def withheld_doc(digests: dict[str, dict]) -> dict:
    return {"format": WITHHELD_FORMAT, "digests": {d: digests[d] for d in sorted(digests)}}


def parse_withheld(data: bytes) -> dict[str, dict]:
    """Digest → {role, source} from a record's bytes; {} for anything that is not a record."""
    try:
        doc = json.loads(data)
    except (ValueError, UnicodeDecodeError):
        return {}
    if not isinstance(doc, dict) or doc.get("format") != WITHHELD_FORMAT or not isinstance(doc.get("digests"), dict):
        return {}
    return {d: v for d, v in doc["digests"].items() if is_digest(d) and isinstance(v, dict)}


def read_withheld(conn: Conn, store) -> dict[str, dict]:
    """The digests this registry records as withheld by their publisher (empty when none)."""
    target = read_ref(conn, WITHHELD_REF)
    if target is None or not store.has(target):
        return {}
    return parse_withheld(store.get(target))


def withheld_digests(reg) -> set[str]:
    """For `seal verify`: the missing blobs that are missing on purpose."""
    with reg.read() as conn:
        return set(read_withheld(conn, reg.store))


def record_withheld(conn: Conn, reg, new: dict[str, dict], reason: str) -> dict | None:
    """Add ``new`` to the record inside the caller's write transaction; the reflog entry, or None
    when nothing was new. Raises RefConflict if another writer moved the record meanwhile."""
    from ..store import refs as R

    old_target = read_ref(conn, WITHHELD_REF)
    current = read_withheld(conn, reg.store)
    added = {d: v for d, v in new.items() if d not in current}
    if not added:
        return None
    digest = reg.store.put(canonical_json(withheld_doc({**current, **added})))
    reg._register_signer(conn)
    return R.move_ref(conn, WITHHELD_REF, expected=old_target, new=digest, reason=reason, signer=reg.signer)


def data_blobs(manifest: dict) -> dict[str, str]:
    """Digest → field for the blobs of a manifest that are the user's data.

    >>> data_blobs({"trigger": "sha256:" + "a" * 64, "self_edit": None, "policy": "sha256:" + "b" * 64})
    {'sha256:aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa': 'trigger'}
    """
    return {manifest[f]: f for f in DATA_FIELDS if is_digest(manifest.get(f))}
