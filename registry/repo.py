"""The public registry API: :class:`Registry`, one object per registry, with typed methods.

Every writer (import, edit, merge, consolidate, revert, pull, learn, the tests) records
versions and moves refs through it, and the CLI is a thin skin over it.

    >>> from seal.registry import Registry                            # doctest: +SKIP
    >>> reg = Registry.open(".")                                      # walks up to .seal/  # doctest: +SKIP
    >>> head = reg.resolve("HEAD")  # doctest: +SKIP
    >>> [e.id[:12] for e in reg.log(n=3)]  # doctest: +SKIP
    >>> vid = reg.record(manifest, ref="refs/heads/main", expected=head, reason="import: x")  # doctest: +SKIP
    >>> reg.move_ref("refs/heads/main", new=head, expected=vid, reason="undo")  # doctest: +SKIP
    >>> reg.verify()                                                  # [] when everything checks out  # doctest: +SKIP

A registry is a folder (`.seal/`: config, keys, trust file, default SQLite database and object
store), or, read-only, a database URL (``Registry.open("postgresql://…")``) for auditors who
have no folder of their own.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any, Iterable

from .config import CONFIG_FILE, DB_FILE, SEAL_DIRNAME, Config, find_seal_dir, read_config
from .errors import ManifestInvalid, RevisionError, UserError
from .store import graph, refs as R
from .store.graph import LogEntry
from .store.objects import (canonical_json, check_manifest, manifest_bytes, referenced_blobs, sha256_hex,
                            version_id)
from .store.revisions import resolve_revision
from .store.sql import Conn, Database
from .store.versions import insert_version, load_manifest, version_exists, version_record

WORKTREE = "adapter"


@dataclass(frozen=True)
class RefMove:
    """A ref moved by compare-and-swap in the same transaction as a recorded version."""

    ref: str
    expected: str | None
    reason: str


class Registry:
    """One registry: its database, object store, signing key and trust file."""

    def __init__(self, seal_dir: Path | None, config: Config, *, db_url: str | None = None,
                 objects_url: str | None = None, read_only: bool = False):
        self.seal_dir = Path(seal_dir) if seal_dir is not None else None
        self.read_only = read_only
        self.config = config
        self._db_url = db_url
        self._objects_url = objects_url
        self._signer_registered = False

    # --- opening ---------------------------------------------------------------------------

    @classmethod
    def open(cls, where: str | Path | None = None, *, read_only: bool = False) -> "Registry":
        """A registry from a folder (walking up to `.seal/`), ``SEAL_DIR``, or a database URL.

        With ``read_only`` the database connection itself refuses writes (SQLite ``mode=ro``,
        PostgreSQL ``default_transaction_read_only``), as `seal ui` needs."""
        text = str(where) if where is not None else ""
        if "://" in text:
            return cls(None, Config(), db_url=text, read_only=read_only)
        seal_dir = find_seal_dir(Path(where) if where is not None else None)
        return cls(seal_dir, read_config(seal_dir), read_only=read_only)

    def reopened(self) -> "Registry":
        """Another handle on the same registry, with a connection of its own (for another thread)."""
        return Registry(self.seal_dir, self.config, db_url=self._db_url, objects_url=self._objects_url,
                        read_only=self.read_only)

    @property
    def root(self) -> Path:
        return self._folder().parent

    def _folder(self) -> Path:
        if self.seal_dir is None:
            raise UserError("this registry was opened from a database URL, read-only; attach a folder with `seal clone`")
        return self.seal_dir

    @property
    def database_url(self) -> str:
        return (self._db_url or os.environ.get("SEAL_DATABASE_URL") or self.config.database_url
                or f"sqlite:///{(self._folder() / DB_FILE).resolve()}")

    @property
    def objects_url(self) -> str | None:
        return self._objects_url or os.environ.get("SEAL_OBJECTS_URL") or self.config.objects_url

    @property
    def head_ref(self) -> str:
        """The row that holds this folder's HEAD: ``HEAD``, or ``refs/worktrees/NAME/HEAD`` in a clone."""
        return R.worktree_head(self.config.worktree) if self.config.worktree else R.HEAD

    @cached_property
    def db(self) -> Database:
        from .store.db import open_database

        db = open_database(self.database_url, read_only=self.read_only)
        db.head = self.head_ref
        return db

    @cached_property
    def store(self):
        from .store_url import open_object_store

        return open_object_store(self.objects_url, self.seal_dir)

    @cached_property
    def signer(self):
        from .store.signing import Signer

        return Signer(self._folder() / "keys")

    @property
    def trust_path(self) -> Path:
        configured = os.environ.get("SEAL_ALLOWED_SIGNERS") or self.config.allowed_signers
        if configured:
            path = Path(configured).expanduser()
            return path if path.is_absolute() else self._folder().parent / path
        from .store.signing import TRUST_FILE

        return self._folder() / TRUST_FILE

    def trusted(self) -> dict:
        from .store.signing import read_trust_file

        return read_trust_file(self.trust_path) if self.seal_dir is not None or self.config.allowed_signers else {}

    @property
    def tmp_dir(self) -> Path:
        path = self._folder() / "tmp"
        path.mkdir(exist_ok=True)
        return path

    @property
    def cache_dir(self) -> Path:
        return self._folder() / "cache"

    @property
    def worktree(self) -> Path:
        return self.root / WORKTREE

    def close(self) -> None:
        if "db" in self.__dict__:
            self.db.close()

    # --- reading ---------------------------------------------------------------------------

    def read(self):
        """A read transaction on the database (a consistent snapshot)."""
        return self.db.read()

    def write(self):
        """A write transaction (taken up front on SQLite)."""
        return self.db.write()

    def resolve(self, rev: str = "HEAD") -> str:
        with self.read() as c:
            return resolve_revision(c, rev)

    def manifest(self, vid: str) -> dict:
        with self.read() as c:
            return load_manifest(c, vid)

    def show(self, rev: str = "HEAD") -> dict:
        """The manifest plus ``id``, ``signature``, ``signer``, ``refs`` and ``children``."""
        with self.read() as c:
            vid = resolve_revision(c, rev)
            record = version_record(c, vid)
            record["refs"] = R.refs_by_target(c).get(vid, [])
            record["children"] = graph.children_of(c, vid)
        return record

    def log(self, rev: str | None = None, *, n: int | None = None, all: bool = False) -> list[LogEntry]:
        """Versions newest first: the ancestors of ``rev`` (default HEAD), or every version with ``all``."""
        if n is not None and n < 0:
            raise UserError("-n must be 0 or more")
        with self.read() as c:
            names = R.refs_by_target(c)
            if all and rev is None:
                pairs = graph.all_versions(c, n)
            else:
                pairs = []
                for row, ps in graph.walk(c, resolve_revision(c, rev or "HEAD")):
                    if n is not None and len(pairs) >= n:
                        break
                    pairs.append((row, ps))
            writers = _writers(c, [row["id"] for row, _ in pairs])
        return [graph.log_entry(row, ps, names, writers.get(row["id"])) for row, ps in pairs]

    def ancestors(self, rev: str) -> set[str]:
        with self.read() as c:
            return graph.ancestors(c, resolve_revision(c, rev))

    def head(self) -> tuple[str, str | None]:
        """(the ref a new version moves, the version it points at now)."""
        with self.read() as c:
            return R.head_state(c)

    def peel(self, ref: str) -> str | None:
        """The version ``ref`` points at, through symbolic refs; None for an unborn branch."""
        with self.read() as c:
            return R.peel(c, ref)

    def first_parent_line(self, vid: str, limit: int = 1_000_000) -> list[str]:
        """``vid``, its first parent, that one's first parent… (at most ``limit`` steps back)."""
        with self.read() as c:
            return graph.first_parent_line(c, vid, limit)

    def edits_on_or_off(self, tip: str) -> list[dict]:
        """The manifests of the edits on ``tip``'s lineage and of the attempts made from it."""
        with self.read() as c:
            return graph.edits_on_or_off(c, tip)

    def edits_between(self, since: str | None = None, until: str | None = None) -> list[dict]:
        """Every edit version's manifest with its ``id``, oldest first, created within the bounds."""
        with self.read() as c:
            return graph.edits_between(c, since, until)

    def root_version(self) -> str:
        """The registry's root version: the bare base every lineage starts from."""
        base_id = self.base_id()
        with self.read() as c:
            vid = graph.root_of(c, base_id)
        if vid is None:
            raise UserError("this registry has no root version; run `seal verify`")
        return vid

    def attempts_on_path(self, path: Iterable[str]) -> set[str]:
        """The rejected versions whose parent is on ``path`` (the attempts made from it)."""
        with self.read() as c:
            return graph.attempts_on_path(c, path)

    def read_ref(self, name: str) -> str | None:
        with self.read() as c:
            return R.read_ref(c, name)

    def refs(self, prefix: str = "") -> list[tuple[str, str]]:
        with self.read() as c:
            return R.list_refs(c, prefix)

    def reflog(self, ref: str | None = None, n: int | None = None) -> list[dict]:
        with self.read() as c:
            sql = "SELECT id, ref, old, new, actor, reason, time, signer FROM reflog"
            params: list[Any] = []
            if ref:
                sql += " WHERE ref = ?"
                params.append(_full_ref_name(c, ref))
            sql += " ORDER BY id DESC" + (" LIMIT ?" if n else "")
            if n:
                params.append(n)
            return c.dicts(sql, params)

    def base_id(self) -> str:
        if self.config.base_id:
            return self.config.base_id
        with self.read() as c:
            rows = c.all("SELECT id FROM bases ORDER BY created_at")
        if not rows:
            raise UserError("this registry has no base model recorded; re-run `seal init`")
        return rows[0][0]

    def base(self) -> dict:
        from .bases import get_base

        with self.read() as c:
            return get_base(c, self.base_id())

    def verify(self, *, check_blobs: bool = True) -> list[dict]:
        """Every fault found (empty when the registry checks out); see :mod:`seal.registry.verify`."""
        from .verify import verify_registry

        return verify_registry(self, check_blobs=check_blobs)

    def status(self) -> dict:
        """HEAD against the ``./adapter`` folder: clean, modified, stale, incomplete or missing."""
        from .worktree import status

        return status(self)

    # --- writing ---------------------------------------------------------------------------

    def checkout(self, rev: str, *, branch: str | None = None, to: Path | None = None, force: bool = False) -> dict:
        """Write ``rev``'s adapter folder, then move HEAD (or only write the folder with ``to``)."""
        from .worktree import checkout

        return checkout(self, rev, branch=branch, to=to, force=force)

    def gc(self, *, dry_run: bool = False, grace_s: float | None = None):
        """Remove litter and unreferenced blobs older than the grace period; the only deleter of blobs."""
        from .gc import DEFAULT_GRACE_S, gc

        return gc(self, dry_run=dry_run, grace_s=DEFAULT_GRACE_S if grace_s is None else grace_s)

    def record(self, manifest: dict, *, ref: str | None = None, expected: str | None = None,
               reason: str | None = None) -> str:
        """Sign and record one version; with ``ref``, move it from ``expected`` (None: create the ref)
        in the same transaction.

        Refuses a manifest that breaks the schema or whose parents or blobs are missing, so no
        version ever points at nothing. Recording the same manifest twice is a no-op.
        """
        move = RefMove(ref, expected, reason or f"{manifest['kind']}: {manifest.get('message', '')}") \
            if ref is not None else None
        return self.record_many([manifest], move=move)[0]

    def record_many(self, manifests: list[dict], *, move: RefMove | None = None) -> list[str]:
        """Record several versions in one transaction; ``move`` points its ref at the last one."""
        texts = [self._prepare(m) for m in manifests]  # canonical bytes, computed once per manifest
        ids = [sha256_hex(t) for t in texts]
        signatures = [self.signer.sign_id(vid) for vid in ids]
        entries: list[dict] = []
        with self.write() as c:
            self._register_signer(c)
            for manifest, text, vid, sig in zip(manifests, texts, ids, signatures):
                _check_parents(c, manifest, ids)
                insert_version(c, manifest, vid, sig, self.signer.id, text=text.decode("utf-8"))
            if move is not None:
                entries.append(R.move_ref(c, move.ref, expected=move.expected, new=ids[-1],
                                          reason=move.reason, signer=self.signer))
        self._journal_bytes(texts, entries)
        return ids

    def _prepare(self, manifest: dict) -> bytes:
        try:
            check_manifest(manifest)
        except ManifestInvalid as e:
            raise UserError(f"cannot record this version: {e}") from None
        for digest in referenced_blobs(manifest):
            if not self.store.has(digest):
                raise UserError(f"blob {digest} is not in the object store; nothing was recorded")
        return manifest_bytes(manifest)

    def move_ref(self, name: str, *, new: str | None, expected: str | None, reason: str) -> dict:
        """Move ``name`` from ``expected`` to ``new`` (None: create / delete) with its reflog row."""
        with self.write() as c:
            self._register_signer(c)
            entry = R.move_ref(c, name, expected=expected, new=new, reason=reason, signer=self.signer)
        self._journal([], [entry])
        return entry

    def insert_signed(self, records: Iterable[tuple[dict, str, str]], c: Conn) -> list[str]:
        """Insert versions signed elsewhere (a pull), inside the caller's transaction ``c``."""
        inserted = []
        for manifest, signature, signer in records:
            vid = version_id(manifest)
            if insert_version(c, manifest, vid, signature, signer):
                inserted.append(vid)
        return inserted

    def journal(self, manifests: list[dict], entries: list[dict]) -> None:
        self._journal(manifests, entries)

    def _journal(self, manifests: list[dict], entries: list[dict]) -> None:
        self._journal_bytes([manifest_bytes(m) for m in manifests], entries)

    def _journal_bytes(self, texts: list[bytes], entries: list[dict]) -> None:
        """Copy what was just committed into the object store, so `verify` can find rows erased later."""
        for text in texts:
            self.store.put(text)
        for entry in entries:
            self.store.put(canonical_json(entry))

    def _register_signer(self, c: Conn) -> None:
        if self._signer_registered or self.seal_dir is None:
            return
        from .store.objects import now_utc

        c.insert_new("signers", {"id": self.signer.id, "public_key": self.signer.public_key,
                                 "name": R.actor(), "created_at": now_utc()}, "id")
        self._signer_registered = True


def _check_parents(c: Conn, manifest: dict, batch: list[str]) -> None:
    for parent in manifest["parents"]:
        if parent not in batch and not version_exists(c, parent):
            raise UserError(f"parent {parent[:12]} is not in this registry; nothing was recorded")


def _writers(c: Conn, ids: list[str]) -> dict[str, dict]:
    """The ``writer`` field of the edits among ``ids`` that have one (the text filter skips the rest
    unparsed; canonical JSON writes the key as ``"writer":`` exactly, and a parse confirms it)."""
    import json

    found: dict[str, dict] = {}
    for vid, text in c.all_in("SELECT id, manifest FROM versions WHERE id IN ({marks}) AND kind = 'edit' "
                              "AND manifest LIKE '%\"writer\":%'", ids):
        writer = json.loads(text).get("writer")
        if isinstance(writer, dict):
            found[vid] = writer
    return found


def _full_ref_name(c: Conn, ref: str) -> str:
    if ref == R.HEAD:
        return R.stored_name(c, ref)
    if ref.startswith("refs/"):
        return ref
    for prefix in (R.HEADS, R.TAGS, R.ALIASES, R.REMOTES):
        name = prefix + ref.lstrip("@") if prefix == R.ALIASES else prefix + ref
        if R.read_ref(c, name) is not None or c.one("SELECT 1 FROM reflog WHERE ref = ?", (name,)):
            return name
    raise RevisionError(f"no ref named {ref!r}; see `seal branch`, `seal tag` and `seal alias`")


__all__ = ["Registry", "LogEntry", "RefMove", "SEAL_DIRNAME", "CONFIG_FILE", "WORKTREE"]
