"""Parsing revisions: ids, prefixes, ref names, HEAD, aliases and the ``~N`` / ``^N`` suffixes.

A full 64-hex id always means that version, whatever refs exist. A name is looked up as a
branch, a tag, an alias (``@production`` or ``production``) and a remote-tracking ref, in that
order, before being read as an id prefix of 4 or more hex digits.

>>> split_revision("main~2^2")
('main', [('~', 2), ('^', 2)])
"""

from __future__ import annotations

import re

from ..errors import RevisionError
from .graph import parents_of
from .refs import ALIASES, HEAD, HEADS, REMOTES, TAGS, peel
from .sql import Conn

_SUFFIX = re.compile(r"(~|\^)(\d*)")
_HEX = re.compile(r"^[0-9a-f]+$")
MIN_PREFIX = 4
MAX_STEPS = 1_000_000


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
        count = int(num) if num else 1
        if count > MAX_STEPS:
            raise RevisionError(f"revision {rev!r} asks for {count} steps; history is never that long")
        steps.append((op, count))
        pos = sm.end()
    return name, steps


def _exists(conn: Conn, vid: str) -> bool:
    return conn.one("SELECT 1 FROM versions WHERE id = ?", (vid,)) is not None


def _by_ref(conn: Conn, name: str) -> str | None:
    if name.startswith("refs/"):
        return peel(conn, name)
    alias = name[1:] if name.startswith("@") else name
    branch, tag = peel(conn, HEADS + name), peel(conn, TAGS + name)
    if branch is not None and tag is not None and branch != tag:
        raise RevisionError(f"{name!r} is both a branch and a tag; say refs/heads/{name} or refs/tags/{name}")
    for full in (HEADS + name, TAGS + name, ALIASES + alias, REMOTES + name):
        vid = peel(conn, full)
        if vid is not None:
            return vid
    return None


def _by_prefix(conn: Conn, name: str, lowered: str) -> str:
    if len(lowered) < MIN_PREFIX:
        raise RevisionError(f"revision prefix {name!r} is too short; give at least {MIN_PREFIX} hex digits")
    upper = lowered + "g"  # every id with this prefix sorts in [lowered, lowered + "g")
    rows = conn.all(
        "SELECT id, kind, message FROM versions WHERE id >= ? AND id < ? ORDER BY id LIMIT 11",
        (lowered, upper),
    )
    if len(rows) == 1:
        return rows[0][0]
    if len(rows) > 1:
        shown = ", ".join(f"{r[0][:12]} ({r[1]}: {r[2][:30]!r})" for r in rows[:10])
        more = " and more" if len(rows) > 10 else ""
        raise RevisionError(f"ambiguous revision {name!r}: it matches {shown}{more}; give more hex digits")
    raise RevisionError(f"unknown revision {name!r}: not a branch, tag or version id; see `seal log --all` and `seal branch`")


def resolve_name(conn: Conn, name: str) -> str:
    """A revision without suffixes → a version id."""
    if name in ("", HEAD, "@"):
        vid = peel(conn, HEAD)
        if vid is None:
            raise RevisionError("HEAD points at a branch with no versions yet; run `seal import` or `seal edit` first")
        return vid
    lowered = name.lower()
    if len(lowered) == 64 and _HEX.match(lowered):
        if _exists(conn, lowered):
            return lowered
        raise RevisionError(f"unknown revision {name}: no version has that id; see `seal log --all`")
    vid = _by_ref(conn, name)
    if vid is not None:
        return vid
    if _HEX.match(lowered):
        return _by_prefix(conn, name, lowered)
    raise RevisionError(f"unknown revision {name!r}: not a branch, tag or version id; see `seal log --all` and `seal branch`")


def resolve_revision(conn: Conn, rev: str) -> str:
    """Resolve a revision string to a full version id, or raise RevisionError naming what failed."""
    if not isinstance(rev, str) or not rev.strip() or len(rev) > 1000 or any(ord(ch) < 32 for ch in rev):
        raise RevisionError(f"{str(rev)[:40]!r} is not a revision; give an id, a branch, a tag or HEAD~N")
    rev = rev.strip()
    name, steps = split_revision(rev)
    if not name:
        raise RevisionError(f"{rev!r} names no starting point; write HEAD{rev} or BRANCH{rev}")
    vid = resolve_name(conn, name)
    walked = name or "HEAD"
    for op, n in steps:
        if op == "~":
            for i in range(n):
                ps = parents_of(conn, vid)
                if not ps:
                    raise RevisionError(f"revision {rev!r} goes past the root: {walked}~{i} ({vid[:12]}) has no parent")
                vid = ps[0]
            walked += f"~{n}"
        elif n:
            ps = parents_of(conn, vid)
            if len(ps) < n:
                raise RevisionError(f"revision {rev!r}: {walked} ({vid[:12]}) has {len(ps)} parent(s), so ^{n} does not exist")
            vid = ps[n - 1]
            walked += f"^{n}"
    return vid
