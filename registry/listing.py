"""Pages of the lineage for a browser: filtered, newest first, one keyset page at a time.

`seal ui` opens a registry of 100k versions at once because a page never counts or skips rows:
it asks for the ``limit`` versions strictly older than the last one shown, ``(created_at, id) <
cursor``, which the index ``ix_versions_created_id`` answers directly. A branch filter keeps the
branch's history (its head's ancestors) and the rejected attempts made on top of it, as the audit
report does, walking from the head as `seal log` does rather than computing the whole ancestry.

>>> Cursor.parse(Cursor("2026-12-07T10:00:00Z", "ab" * 32).text()) == Cursor("2026-12-07T10:00:00Z", "ab" * 32)
True
>>> Cursor.parse("no-bar") is None
True
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from .errors import UserError
from .store import refs as R
from .store.objects import is_hex64
from .store.graph import LOG_COLUMNS, LogEntry, first_parent_line, log_entry, parents_of_many, walk
from .store.revisions import resolve_revision
from .store.sql import Conn
from .store.versions import load_manifest

KINDS = ("root", "edit", "merge", "import", "consolidate", "revert", "writer")
STATUSES = ("accepted", "rejected")
MAX_LIMIT = 500
_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}([T ]\d{2}:\d{2}(:\d{2}(\.\d+)?)?Z?)?$")
_DIGEST_PREFIX = re.compile(r"^(sha256:)?[0-9a-f]{4,64}$")


@dataclass(frozen=True)
class Cursor:
    """Where a page ends: the (created_at, id) of its last version."""

    created_at: str
    id: str

    def text(self) -> str:
        return f"{self.created_at}|{self.id}"

    @classmethod
    def parse(cls, text: str | None) -> "Cursor | None":
        if not text or "|" not in text:
            return None
        created_at, vid = text.rsplit("|", 1)
        if not is_hex64(vid) or not _DATE.match(created_at):
            return None
        return cls(created_at, vid)


@dataclass(frozen=True)
class VersionFilter:
    """What a lineage page shows; every field is optional and they combine with AND."""

    branch: str | None = None   # a revision: its ancestors and the rejected attempts made on them
    kind: str | None = None
    status: str | None = None
    since: str | None = None    # created_at >= since (a date or an ISO time)
    until: str | None = None    # created_at < until
    trigger: str | None = None  # a prefix of the trigger's digest

    def check(self) -> "VersionFilter":
        """Refuse a filter value no version could match, with what to give instead."""
        if self.kind is not None and self.kind not in KINDS:
            raise UserError(f"unknown kind {self.kind!r}; use one of {', '.join(KINDS)}")
        if self.status is not None and self.status not in STATUSES:
            raise UserError(f"unknown status {self.status!r}; use accepted or rejected")
        for name, value in (("since", self.since), ("until", self.until)):
            if value is not None and not _DATE.match(value):
                raise UserError(f"{name} must be a date like 2026-12-07 or 2026-12-07T10:00:00Z")
        if self.trigger is not None and not _DIGEST_PREFIX.match(self.trigger):
            raise UserError("trigger must be a digest prefix: 4 to 64 hex digits, optionally after sha256:")
        return self


@dataclass(frozen=True)
class Page:
    rows: list[LogEntry]
    next: Cursor | None  # None on the last page


def version_page(reg, flt: VersionFilter, *, after: Cursor | None = None, limit: int = 50) -> Page:
    """One page of versions matching ``flt``, newest first, strictly after ``after``.

        >>> page = version_page(Registry.open(), VersionFilter(branch="main", status="rejected"))  # doctest: +SKIP
        >>> version_page(reg, VersionFilter(branch="main"), after=page.next)                     # doctest: +SKIP
    """
    flt.check()
    limit = max(1, min(int(limit), MAX_LIMIT))
    with reg.read() as c:
        if flt.branch is None:
            rows = _select(c, flt, after, limit + 1)
        else:
            rows = _walk_branch(c, flt, after, limit + 1)
        parents = parents_of_many(c, [r["id"] for r in rows[:limit]])
        names = R.refs_by_target(c)
    more = len(rows) > limit
    rows = rows[:limit]
    out = [log_entry(r, parents[r["id"]], names) for r in rows]
    return Page(out, Cursor(rows[-1]["created_at"], rows[-1]["id"]) if more and rows else None)


def _select(c: Conn, flt: VersionFilter, after: Cursor | None, limit: int) -> list[dict]:
    where, params = _conditions(flt)
    if after is not None:
        where.append("(v.created_at < ? OR (v.created_at = ? AND v.id < ?))")
        params += [after.created_at, after.created_at, after.id]
    columns = ", ".join(f"v.{col}" for col in LOG_COLUMNS)
    sql = (f"SELECT {columns} FROM versions v" + (" WHERE " + " AND ".join(where) if where else "")
           + " ORDER BY v.created_at DESC, v.id DESC LIMIT ?")
    return c.dicts(sql, [*params, limit])


def _conditions(flt: VersionFilter) -> tuple[list[str], list]:
    where, params = [], []
    for column, value in (("kind", flt.kind), ("status", flt.status)):
        if value is not None:
            where.append(f"v.{column} = ?")
            params.append(value)
    if flt.since is not None:
        where.append("v.created_at >= ?")
        params.append(flt.since.replace(" ", "T"))
    if flt.until is not None:
        where.append("v.created_at < ?")
        params.append(flt.until.replace(" ", "T"))
    if flt.trigger is not None:
        # Canonical JSON writes the key exactly so; the digest's hex sits after "sha256:".
        where.append("v.manifest LIKE ?")
        params.append('%"trigger":"sha256:' + flt.trigger.removeprefix("sha256:") + '%')
    return where, params


def _walk_branch(c: Conn, flt: VersionFilter, after: Cursor | None, limit: int) -> list[dict]:
    """The branch's history newest first (git's heap walk), each version preceded by the rejected
    attempts made on it; the other filters are applied to what the walk yields.

    A page costs about as many lookups as the versions it passes, so the first page of a 100k
    history is as cheap as that of a short one; a later page walks again from the head to its
    cursor (the walk's order, not the table's, decides what comes next).
    """
    head = resolve_revision(c, flt.branch)
    where, params = _conditions(flt)
    columns = ", ".join(f"v.{col}" for col in LOG_COLUMNS)
    match_sql = "SELECT 1 FROM versions v WHERE v.id = ?" + "".join(f" AND {w}" for w in where)
    skipping = after is not None
    out: list[dict] = []
    for row, _ in walk(c, head):
        batch = c.dicts(f"SELECT {columns} FROM version_parents p JOIN versions v ON v.id = p.version_id "
                        f"WHERE p.parent_id = ? AND v.status = 'rejected' ORDER BY v.created_at DESC, v.id DESC",
                        (row["id"],)) + [row]
        for item in batch:
            if skipping:
                skipping = item["id"] != after.id
                continue
            if item is row and flt.since is not None and item["created_at"] < flt.since.replace(" ", "T"):
                return out  # the history only gets older from here (attempts made later on it are left out)
            if not where or c.one(match_sql, [item["id"], *params]) is not None:
                out.append(item)
                if len(out) >= limit:
                    return out
    return out


def moves_to(reg, vid: str) -> list[dict]:
    """The reflog rows that moved a ref to ``vid`` or away from it: who moved what, when, and why."""
    with reg.read() as c:
        return c.dicts("SELECT id, ref, old, new, actor, reason, time, signer FROM reflog WHERE new = ? OR old = ? "
                       "ORDER BY id", (vid, vid))


def first_parent_ids(reg, rev: str, limit: int) -> list[str]:
    """``rev``, its first parent, that one's… at most ``limit + 1`` ids (newest first): a cheap
    lower bound of how far a history goes back."""
    with reg.read() as c:
        return first_parent_line(c, resolve_revision(c, rev), limit)


def first_parent_manifests(reg, rev: str, limit: int = 500) -> tuple[str, list[tuple[str, dict]], bool]:
    """The newest ``limit`` versions of ``rev``'s first-parent line with their manifests, oldest
    first, and whether the line goes on further back (a drift plot's window).

        >>> tip, line, more = first_parent_manifests(Registry.open(), "main", limit=200)   # doctest: +SKIP
    """
    with reg.read() as c:
        tip = resolve_revision(c, rev)
        ids = first_parent_line(c, tip, limit)  # limit steps back: limit + 1 versions at most
        more = len(ids) > limit
        ids = ids[:limit]
        return tip, [(vid, load_manifest(c, vid)) for vid in reversed(ids)], more
