"""The frozen base model a registry adapts, as a record in ``bases``.

Weight fingerprints as loaded come from :mod:`seal.editor.base` (it needs torch); this module
only shapes and stores the record, and can describe a base by its files when no model is loaded.

>>> record = base_record(name="HuggingFaceTB/SmolLM2-135M-Instruct", revision=None,
...                      source="name", location=None, weights_sha256=None)
>>> len(record["id"])
64
"""

from __future__ import annotations

import json
from pathlib import Path

from sqlalchemy import insert, select
from sqlalchemy.engine import Connection

from .errors import UserError
from .object_store import file_digest
from .objects import canonical_json, now_utc, sha256_hex
from .schema import bases

WEIGHT_SUFFIXES = (".safetensors", ".gguf")


def base_record(
    *,
    name: str,
    revision: str | None,
    source: str,
    location: str | None,
    weights_sha256: str | None,
    info: dict | None = None,
) -> dict:
    """A ``bases`` row; its id covers the weights as loaded plus the name and revision."""
    fingerprint = sha256_hex(canonical_json({"name": name, "revision": revision, "weights": weights_sha256}))
    return {
        "id": fingerprint,
        "name": name,
        "revision": revision,
        "source": source,
        "location": location,
        "info": {"weights_sha256": weights_sha256, **(info or {})},
    }


def describe_files(spec: str, name: str | None = None) -> dict:
    """A base record from its files alone (no model load): for a folder or a .gguf file."""
    path = Path(spec).expanduser()
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix in WEIGHT_SUFFIXES)
        if not files:
            raise UserError(f"{path} holds no .safetensors weights; give a model folder saved with safetensors")
        digests = {p.name: file_digest(p) for p in files}
        weights = sha256_hex(canonical_json(digests))
        return base_record(name=name or path.name, revision=None, source="folder", location=str(path.resolve()),
                           weights_sha256=weights, info={"files": digests})
    if path.suffix == ".gguf":
        if not path.is_file():
            raise UserError(f"{path} does not exist; give an existing .gguf file")
        digest = file_digest(path)
        return base_record(name=name or path.stem, revision=None, source="gguf", location=str(path.resolve()),
                           weights_sha256=digest, info={"files": {path.name: digest}})
    if spec.startswith((".", "/", "~")) or (len(spec.split("/")) > 2):
        raise UserError(f"{spec} is neither a model folder, a .gguf file nor a Hub id (org/name)")
    return base_record(name=spec, revision=None, source="hub", location=None, weights_sha256=None)


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
