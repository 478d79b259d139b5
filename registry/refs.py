"""Names that move: branches, tags, remote-tracking refs and HEAD.

Ref names are stored in full, as in git: ``HEAD``, ``refs/heads/main``, ``refs/tags/v1``,
``refs/remotes/hub/org/name``. HEAD is symbolic (``ref: refs/heads/main``) or holds a version id
(detached).

Every move is a compare-and-swap inside the caller's transaction and appends a reflog row, so
"move main from X to Y" fails with :class:`RefConflict` when main is no longer X, and the reflog
tells who moved what, when and why.
"""

from __future__ import annotations

import getpass
import os
import re
import socket

from sqlalchemy import delete, insert, select, update
from sqlalchemy.engine import Connection
from sqlalchemy.exc import IntegrityError

from .errors import RefConflict, UserError
from .objects import now_utc
from .schema import reflog, refs

HEAD = "HEAD"
HEADS = "refs/heads/"
TAGS = "refs/tags/"
REMOTES = "refs/remotes/"
SYMBOLIC = "ref: "

_NAME = re.compile(r"^[A-Za-z0-9._][A-Za-z0-9._/-]*$")


def actor() -> str:
    """Who is moving refs: ``SEAL_ACTOR``, else user@host."""
    env = os.environ.get("SEAL_ACTOR")
    if env:
        return env
    try:
        user = getpass.getuser()
    except Exception:
        user = "unknown"
    return f"{user}@{socket.gethostname()}"


def check_ref_name(name: str, what: str = "branch") -> str:
    """Refuse names git would refuse, and names that look like revision syntax."""
    if (
        not _NAME.match(name)
        or ".." in name
        or name.endswith((".", "/", ".lock"))
        or "//" in name
        or name == HEAD
        or re.search(r"[~^:?*\[\\ ]", name)
    ):
        raise UserError(f"{name!r} is not a valid {what} name; use letters, digits, '.', '_', '-' and '/'")
    return name


def read_ref(conn: Connection, name: str) -> str | None:
    """The raw target of a ref (a version id or ``ref: NAME``), or None."""
    return conn.execute(select(refs.c.target).where(refs.c.name == name)).scalar_one_or_none()


def peel(conn: Connection, name: str, depth: int = 0) -> str | None:
    """Follow symbolic refs down to a version id; None for an unborn branch."""
    if depth > 5:
        raise UserError(f"ref {name} is a loop of symbolic refs; fix it with `seal checkout BRANCH`")
    target = read_ref(conn, name)
    if target is None:
        return None
    if target.startswith(SYMBOLIC):
        return peel(conn, target[len(SYMBOLIC):], depth + 1)
    return target


def head_branch(conn: Connection) -> str | None:
    """The full name of the branch HEAD points at, or None when HEAD is detached."""
    target = read_ref(conn, HEAD)
    if target and target.startswith(SYMBOLIC):
        return target[len(SYMBOLIC):]
    return None


def _log(conn: Connection, name: str, old: str | None, new: str | None, reason: str, who: str | None) -> None:
    conn.execute(
        insert(reflog).values(ref=name, old=old, new=new, actor=who or actor(), reason=reason, time=now_utc())
    )


def compare_and_swap(
    conn: Connection,
    name: str,
    *,
    old: str | None,
    new: str,
    reason: str,
    who: str | None = None,
) -> None:
    """Move ``name`` from ``old`` to ``new`` (``old=None``: create it), or raise RefConflict.

    >>> with engine.begin() as conn:                     # doctest: +SKIP
    ...     compare_and_swap(conn, "refs/heads/main", old=a, new=b, reason="edit")
    """
    now = now_utc()
    if old is None:
        try:
            with conn.begin_nested():
                conn.execute(insert(refs).values(name=name, target=new, updated_at=now))
        except IntegrityError:
            current = read_ref(conn, name)
            raise RefConflict(
                f"{short_name(name)} already exists (at {short_target(current)}); someone else created it first"
            ) from None
    else:
        result = conn.execute(
            update(refs).where(refs.c.name == name, refs.c.target == old).values(target=new, updated_at=now)
        )
        if result.rowcount != 1:
            current = read_ref(conn, name)
            raise RefConflict(
                f"{short_name(name)} moved from {short_target(old)} to {short_target(current)} while this "
                f"command ran; nothing was changed"
            )
    _log(conn, name, old, new, reason, who)


def delete_ref(conn: Connection, name: str, *, old: str, reason: str, who: str | None = None) -> None:
    result = conn.execute(delete(refs).where(refs.c.name == name, refs.c.target == old))
    if result.rowcount != 1:
        raise RefConflict(f"{short_name(name)} moved while this command ran; nothing was deleted")
    _log(conn, name, old, None, reason, who)


def set_ref(conn: Connection, name: str, new: str, *, reason: str, who: str | None = None) -> None:
    """Point ``name`` at ``new`` from whatever it holds now, still as a compare-and-swap."""
    compare_and_swap(conn, name, old=read_ref(conn, name), new=new, reason=reason, who=who)


def list_refs(conn: Connection, prefix: str = "") -> list[tuple[str, str]]:
    rows = conn.execute(select(refs.c.name, refs.c.target).where(refs.c.name.startswith(prefix)).order_by(refs.c.name))
    return [(r[0], r[1]) for r in rows]


def refs_by_target(conn: Connection) -> dict[str, list[str]]:
    """Version id → short names of the refs that point at it (HEAD included when detached or via its branch)."""
    out: dict[str, list[str]] = {}
    rows = list_refs(conn)
    table = dict(rows)
    for name, target in rows:
        if target.startswith(SYMBOLIC):
            continue
        out.setdefault(target, []).append(short_name(name))
    head = table.get(HEAD)
    if head is not None:
        if head.startswith(SYMBOLIC):
            branch_target = table.get(head[len(SYMBOLIC):])
            if branch_target:
                names = out.setdefault(branch_target, [])
                short = short_name(head[len(SYMBOLIC):])
                if short in names:
                    names[names.index(short)] = f"HEAD -> {short}"
        else:
            out[head] = ["HEAD"] + [n for n in out.get(head, []) if n != "HEAD"]
    return out


def short_name(name: str) -> str:
    for prefix in (HEADS, TAGS, REMOTES):
        if name.startswith(prefix):
            return name[len(prefix):]
    return name


def short_target(target: str | None) -> str:
    if target is None:
        return "nothing"
    if target.startswith(SYMBOLIC):
        return short_name(target[len(SYMBOLIC):])
    return target[:12]
