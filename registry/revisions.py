"""Parsing revisions: ids, prefixes, ref names, HEAD, and the ``~N`` / ``^N`` suffixes.

>>> resolve_revision(conn, "main~2")        # doctest: +SKIP
'9f2c…'
"""

from __future__ import annotations

import re

from sqlalchemy import select
from sqlalchemy.engine import Connection

from .errors import RevisionError
from .refs import HEAD, HEADS, REMOTES, TAGS, peel
from .schema import version_parents, versions

_SUFFIX = re.compile(r"(~|\^)(\d*)")
_HEX = re.compile(r"^[0-9a-f]+$")
MIN_PREFIX = 4


def split_revision(rev: str) -> tuple[str, list[tuple[str, int]]]:
    """``"main~2^2"`` → ``("main", [("~", 2), ("^", 2)])``."""
    m = re.search(r"[~^]", rev)
    if not m:
        return rev, []
    name, rest = rev[: m.start()], rev[m.start():]
    steps: list[tuple[str, int]] = []
    pos = 0
    while pos < len(rest):
        sm = _SUFFIX.match(rest, pos)
        if not sm:
            raise RevisionError(f"cannot parse revision {rev!r}: expected ~N or ^N after {rest[:pos] or name!r}")
        op, num = sm.group(1), sm.group(2)
        steps.append((op, int(num) if num else 1))
        pos = sm.end()
    return name, steps


def parents_of(conn: Connection, vid: str) -> list[str]:
    rows = conn.execute(
        select(version_parents.c.parent_id)
        .where(version_parents.c.version_id == vid)
        .order_by(version_parents.c.position)
    )
    return [r[0] for r in rows]


def _exists(conn: Connection, vid: str) -> bool:
    return conn.execute(select(versions.c.id).where(versions.c.id == vid)).first() is not None


def resolve_name(conn: Connection, name: str) -> str:
    """A revision without suffixes → a version id."""
    if name in ("", HEAD, "@"):
        vid = peel(conn, HEAD)
        if vid is None:
            raise RevisionError("HEAD points at a branch with no versions yet; run `seal import` or `seal edit` first")
        return vid
    candidates = [name] if name.startswith("refs/") else [HEADS + name, TAGS + name, REMOTES + name]
    for full in candidates:
        vid = peel(conn, full)
        if vid is not None:
            return vid
    lowered = name.lower()
    if _HEX.match(lowered):
        if len(lowered) == 64:
            if _exists(conn, lowered):
                return lowered
            raise RevisionError(f"unknown revision {name}: no version has that id; see `seal log --all`")
        if len(lowered) < MIN_PREFIX:
            raise RevisionError(f"revision prefix {name!r} is too short; give at least {MIN_PREFIX} hex digits")
        rows = conn.execute(
            select(versions.c.id, versions.c.kind, versions.c.message)
            .where(versions.c.id.startswith(lowered))
            .order_by(versions.c.id)
            .limit(11)
        ).all()
        if len(rows) == 1:
            return rows[0][0]
        if len(rows) > 1:
            shown = ", ".join(f"{r[0][:12]} ({r[1]}: {r[2][:30]!r})" for r in rows[:10])
            more = " and more" if len(rows) > 10 else ""
            raise RevisionError(
                f"ambiguous revision {name!r}: it matches {shown}{more}; give more hex digits"
            )
    raise RevisionError(f"unknown revision {name!r}: not a branch, tag or version id; see `seal log --all` and `seal branch`")


def resolve_revision(conn: Connection, rev: str) -> str:
    """Resolve a revision string to a full version id, or raise RevisionError naming what failed."""
    rev = rev.strip()
    name, steps = split_revision(rev)
    vid = resolve_name(conn, name)
    walked = name or "HEAD"
    for op, n in steps:
        if op == "~":
            for i in range(n):
                ps = parents_of(conn, vid)
                if not ps:
                    raise RevisionError(
                        f"revision {rev!r} goes past the root: {walked}~{i} ({vid[:12]}) has no parent"
                    )
                vid = ps[0]
            walked += f"~{n}"
        else:
            if n == 0:
                continue
            ps = parents_of(conn, vid)
            if len(ps) < n:
                raise RevisionError(
                    f"revision {rev!r}: {walked} ({vid[:12]}) has {len(ps)} parent(s), so ^{n} does not exist"
                )
            vid = ps[n - 1]
            walked += f"^{n}"
    return vid
