"""A registry on disk: the `.seal/` folder, its database, object store and signing key.

>>> repo = Repository.find()                 # walks up from the current folder  # doctest: +SKIP
>>> with repo.connect() as conn:             # doctest: +SKIP
...     vid = resolve_revision(conn, "HEAD~1")

Plumbing only; one function per user command lives in :mod:`seal.registry.porcelain`.
"""

from __future__ import annotations

import os
import tomllib
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Iterator

from sqlalchemy import insert, select
from sqlalchemy.engine import Connection, Engine

from .db import open_database
from .errors import NotARegistry, UserError
from .object_store import LocalObjectStore
from .objects import manifest_bytes, parse_manifest, referenced_blobs, version_id
from .schema import audits, scores, signers, version_parents, versions

SEAL_DIRNAME = ".seal"
CONFIG_FILE = "config.toml"
DB_FILE = "lineage.db"
WORKTREE = "adapter"


def default_database_url(seal_dir: Path) -> str:
    return f"sqlite:///{(seal_dir / DB_FILE).resolve()}"


def find_seal_dir(start: Path | None = None) -> Path:
    """The `.seal/` folder for ``start`` (or ``SEAL_DIR``, or the current folder and its parents)."""
    explicit = start is not None or bool(os.environ.get("SEAL_DIR"))
    here = Path(start if start is not None else os.environ.get("SEAL_DIR") or Path.cwd()).expanduser()
    if explicit:
        for candidate in (here / SEAL_DIRNAME, here):
            if candidate.name == SEAL_DIRNAME and (candidate / CONFIG_FILE).is_file():
                return candidate.resolve()
        raise NotARegistry(f"{here} is not a seal registry (no .seal/ there); run `seal init {here}` first")
    here = here.resolve()
    for folder in (here, *here.parents):
        candidate = folder / SEAL_DIRNAME
        if (candidate / CONFIG_FILE).is_file():
            return candidate
    raise NotARegistry(
        f"not inside a seal registry ({here} or any parent); run `seal init`, or pass --repo PATH or set SEAL_DIR"
    )


@dataclass
class Repository:
    seal_dir: Path
    config: dict = field(default_factory=dict)

    @classmethod
    def find(cls, start: Path | str | None = None) -> "Repository":
        seal_dir = find_seal_dir(Path(start) if start is not None else None)
        try:
            config = tomllib.loads((seal_dir / CONFIG_FILE).read_text())
        except tomllib.TOMLDecodeError as e:
            raise UserError(f"{seal_dir / CONFIG_FILE} is not valid TOML ({e}); fix it by hand") from None
        return cls(seal_dir=seal_dir, config=config)

    @property
    def root(self) -> Path:
        return self.seal_dir.parent

    @property
    def database_url(self) -> str:
        return (
            os.environ.get("SEAL_DATABASE_URL")
            or self.config.get("database", {}).get("url")
            or default_database_url(self.seal_dir)
        )

    @cached_property
    def engine(self) -> Engine:
        return open_database(self.database_url)

    @cached_property
    def store(self) -> LocalObjectStore:
        return LocalObjectStore(self.seal_dir / "objects")

    @property
    def keys_dir(self) -> Path:
        return self.seal_dir / "keys"

    @property
    def cache_dir(self) -> Path:
        return self.seal_dir / "cache"

    @property
    def tmp_dir(self) -> Path:
        path = self.seal_dir / "tmp"
        path.mkdir(exist_ok=True)
        return path

    @property
    def worktree(self) -> Path:
        return self.root / WORKTREE

    @contextmanager
    def connect(self) -> Iterator[Connection]:
        """A read connection."""
        with self.engine.connect() as conn:
            yield conn

    @contextmanager
    def transaction(self) -> Iterator[Connection]:
        """A write transaction: everything in it lands, or nothing does."""
        with self.engine.begin() as conn:
            yield conn

    @cached_property
    def signing_key(self):
        from .signing import load_or_create_key

        return load_or_create_key(self.keys_dir)

    @cached_property
    def signer(self) -> str:
        from .signing import public_key_hex, signer_id

        return signer_id(public_key_hex(self.signing_key))

    def base_id(self, conn: Connection) -> str:
        from .schema import bases

        rows = conn.execute(select(bases.c.id)).all()
        if not rows:
            raise UserError("this registry has no base model recorded; re-run `seal init`")
        configured = self.config.get("base", {}).get("id")
        if configured:
            return configured
        return rows[0][0]


# --- versions -------------------------------------------------------------------------------

def headline_of(manifest: dict) -> tuple[str | None, float | None]:
    head = manifest.get("headline")
    if isinstance(head, dict):
        return head.get("metric"), head.get("value")
    return None, None


def version_rows(manifest: dict, vid: str, signature: str | None, signer: str | None) -> dict:
    """The rows that record one version; `verify` recomputes exactly these from the manifest."""
    metric, value = headline_of(manifest)
    adapter = manifest.get("adapter") or {}
    return {
        "version": {
            "id": vid,
            "manifest": manifest_bytes(manifest).decode("utf-8"),
            "base_id": manifest["base"],
            "kind": manifest["kind"],
            "status": manifest["status"],
            "created_at": manifest["created_at"],
            "author": manifest.get("author", ""),
            "message": manifest.get("message", ""),
            "adapter_digest": adapter.get("weights"),
            "headline_metric": metric,
            "headline_value": value,
            "signature": signature,
            "signer": signer,
        },
        "parents": [
            {"version_id": vid, "position": i, "parent_id": p} for i, p in enumerate(manifest["parents"])
        ],
        "scores": [
            {
                "version_id": vid,
                "suite": s["suite"],
                "metric": s["metric"],
                "against": s.get("against"),
                "value": float(s["value"]),
                "n": s.get("n"),
            }
            for s in manifest.get("scores", [])
        ],
        "audits": [
            {
                "version_id": vid,
                "check_name": a["check"],
                "value": None if a.get("value") is None else float(a["value"]),
                "threshold": None if a.get("threshold") is None else float(a["threshold"]),
                "passed": bool(a["passed"]),
                "detail": a.get("detail", ""),
            }
            for a in manifest.get("audit", [])
        ],
    }


def insert_versions(conn: Connection, records: list[tuple[dict, str | None, str | None]]) -> list[str]:
    """Insert many (manifest, signature, signer) records at once; returns their ids.

    Callers check parents and blobs first (see :func:`record_version`); this is the bulk path.
    """
    vrows, prows, srows, arows, ids = [], [], [], [], []
    for manifest, signature, signer in records:
        vid = version_id(manifest)
        rows = version_rows(manifest, vid, signature, signer)
        vrows.append(rows["version"])
        prows += rows["parents"]
        srows += rows["scores"]
        arows += rows["audits"]
        ids.append(vid)
    if vrows:
        conn.execute(insert(versions), vrows)
    if prows:
        conn.execute(insert(version_parents), prows)
    if srows:
        conn.execute(insert(scores), srows)
    if arows:
        conn.execute(insert(audits), arows)
    return ids


def version_exists(conn: Connection, vid: str) -> bool:
    return conn.execute(select(versions.c.id).where(versions.c.id == vid)).first() is not None


def record_version(repo: Repository, conn: Connection, manifest: dict) -> str:
    """Sign and insert one version inside ``conn``'s transaction; returns its id.

    Refuses a manifest whose parents or blobs are missing, so no version ever points at nothing.
    Recording the same manifest twice is a no-op (same bytes, same id).
    """
    vid = version_id(manifest)
    if version_exists(conn, vid):
        return vid
    for parent in manifest["parents"]:
        if not version_exists(conn, parent):
            raise UserError(f"parent {parent[:12]} is not in this registry")
    for digest in referenced_blobs(manifest):
        if not repo.store.has(digest):
            raise UserError(f"blob {digest} is not in the object store; nothing was recorded")
    from .signing import sign

    insert_versions(conn, [(manifest, sign(repo.signing_key, vid), repo.signer)])
    return vid


def register_signer(repo: Repository, conn: Connection, name: str) -> str:
    from .objects import now_utc
    from .signing import public_key_hex

    sid = repo.signer
    if conn.execute(select(signers.c.id).where(signers.c.id == sid)).first() is None:
        conn.execute(
            insert(signers).values(
                id=sid, public_key=public_key_hex(repo.signing_key), name=name, created_at=now_utc()
            )
        )
    return sid


def load_manifest(conn: Connection, vid: str) -> dict:
    text = conn.execute(select(versions.c.manifest).where(versions.c.id == vid)).scalar_one_or_none()
    if text is None:
        raise UserError(f"version {vid[:12]} is not in this registry")
    return parse_manifest(text)


def version_record(conn: Connection, vid: str) -> dict:
    """The manifest plus ``id``, signature and signer: what `seal show --json` prints."""
    row = conn.execute(select(versions).where(versions.c.id == vid)).mappings().first()
    if row is None:
        raise UserError(f"version {vid[:12]} is not in this registry")
    record = {"id": vid, **parse_manifest(row["manifest"])}
    record["signature"] = row["signature"]
    record["signer"] = row["signer"]
    return record


def ancestor_ids(conn: Connection, vid: str) -> set[str]:
    """``vid`` and every version reachable from it through parent edges (git's ``rev-list``).

    One recursive query (SQLite and PostgreSQL alike), so a long history costs one round trip.

    >>> ancestor_ids(conn, head) - ancestor_ids(conn, base)     # what head has that base lacks  # doctest: +SKIP
    """
    from sqlalchemy import String, literal

    start = select(literal(vid, String(64)).label("id")).cte("ancestry", recursive=True)
    walk = start.union(
        select(version_parents.c.parent_id).where(version_parents.c.version_id == start.c.id)
    )
    return {row[0] for row in conn.execute(select(walk.c.id))}
