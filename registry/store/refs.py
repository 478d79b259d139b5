"""Names that move: branches, tags, aliases, remote-tracking refs, HEAD, and their reflog.

Ref names are stored in full, as in git: ``HEAD``, ``refs/heads/main``, ``refs/tags/v1``,
``refs/aliases/production``, ``refs/remotes/hub/org/name``, ``refs/meta/policy``. HEAD is
symbolic (``ref: refs/heads/main``) or holds a version id (detached).

HEAD belongs to a working folder, not to the registry: the folder that `seal init` made keeps
the row ``HEAD``, and each folder attached by `seal clone` keeps ``refs/worktrees/NAME/HEAD``
(the connection's ``head``), so one machine's checkout never moves another's HEAD. Every
function here reads and writes the name ``HEAD`` through that mapping.

Every move is a compare-and-swap inside the caller's write transaction and appends a signed
reflog row in that same transaction, so "move main from X to Y" fails with
:class:`RefConflict` when main is no longer X, and a ref never exists without the reflog row
that put it there.

>>> entry = reflog_entry("refs/heads/main", None, "a" * 64, actor="me", reason="init", time="t", signer="s")
>>> sorted(entry)
['actor', 'format', 'new', 'old', 'reason', 'ref', 'signer', 'time']
"""

from __future__ import annotations

import os
import re
from typing import Protocol

from ..errors import RefConflict, UserError
from .objects import canonical_json, now_utc
from .sql import Conn

HEAD = "HEAD"
HEADS = "refs/heads/"
TAGS = "refs/tags/"
ALIASES = "refs/aliases/"
REMOTES = "refs/remotes/"
META = "refs/meta/"
WORKTREES = "refs/worktrees/"
SYMBOLIC = "ref: "
REFLOG_FORMAT = "seal.reflog/1"

_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._/-]*$")
_HEXLIKE = re.compile(r"^[0-9a-fA-F]{4,}$")


class EntrySigner(Protocol):
    id: str

    def sign(self, data: bytes) -> str: ...


def actor() -> str:
    """Who is moving refs: ``SEAL_ACTOR``, else user@host."""
    env = os.environ.get("SEAL_ACTOR")
    if env:
        from .objects import UNSAFE_CHARS

        if UNSAFE_CHARS.search(env) or "\n" in env or len(env) > 200:
            raise UserError("SEAL_ACTOR must be one line of plain text under 200 characters")
        return env
    import getpass
    import socket

    try:
        user = getpass.getuser()
    except Exception:
        user = "unknown"
    return f"{user}@{socket.gethostname()}"


def check_ref_name(name: str, what: str = "branch") -> str:
    """Refuse names git would refuse, names that look like revision syntax, and hex-like names.

    A name of 4 or more hex digits could shadow a version id prefix, so it is refused.

    >>> check_ref_name("feature/x")
    'feature/x'
    >>> check_ref_name("cafe")
    Traceback (most recent call last):
    seal.registry.errors.UserError: 'cafe' looks like a version id; a branch name needs a letter beyond a-f or a separator
    """
    if not isinstance(name, str) or not name:
        raise UserError(f"a {what} name cannot be empty")
    if name.startswith("refs/"):
        raise UserError(f"{name!r}: give the short {what} name, without refs/")
    if (
        len(name) > 200
        or not _NAME.match(name)
        or ".." in name
        or name.endswith((".", "/", ".lock"))
        or "//" in name
        or "/." in name
        or name in (HEAD, "@")
        or re.search(r"[~^:?*\[\\ @{]", name)
    ):
        raise UserError(f"{name!r} is not a valid {what} name; start with a letter or digit and use "
                        f"letters, digits, '.', '_', '-' and '/'")
    if any(_HEXLIKE.match(part) for part in [name, name.split("/")[-1]]):
        raise UserError(
            f"{name!r} looks like a version id; a {what} name needs a letter beyond a-f or a separator"
        )
    return name


def worktree_head(name: str) -> str:
    """The row that holds HEAD for the attached working folder ``name``.

    >>> worktree_head("gpu-7")
    'refs/worktrees/gpu-7/HEAD'
    """
    return f"{WORKTREES}{check_ref_name(name, 'worktree')}/HEAD"


def stored_name(conn: Conn, name: str) -> str:
    """The row a ref name is kept in: ``HEAD`` is this folder's own HEAD row."""
    return getattr(conn, "head", HEAD) if name == HEAD else name


def read_ref(conn: Conn, name: str) -> str | None:
    """The raw target of a ref (a version id, a blob digest or ``ref: NAME``), or None."""
    return conn.scalar("SELECT target FROM refs WHERE name = ?", (stored_name(conn, name),))


def peel(conn: Conn, name: str, depth: int = 0) -> str | None:
    """Follow symbolic refs down to a version id; None for an unborn branch."""
    if depth > 5:
        raise UserError(f"ref {name} is a loop of symbolic refs; fix it with `seal checkout BRANCH`")
    target = read_ref(conn, name)
    if target is None:
        return None
    if target.startswith(SYMBOLIC):
        return peel(conn, target[len(SYMBOLIC):], depth + 1)
    return target


def head_branch(conn: Conn) -> str | None:
    """The full name of the branch HEAD points at, or None when HEAD is detached."""
    target = read_ref(conn, HEAD)
    if target and target.startswith(SYMBOLIC):
        return target[len(SYMBOLIC):]
    return None


def head_state(conn: Conn) -> tuple[str, str | None]:
    """(the ref a new version moves, the version it points at now)."""
    branch = head_branch(conn)
    if branch is not None:
        return branch, peel(conn, branch)
    return HEAD, read_ref(conn, HEAD)


def reflog_entry(ref: str, old: str | None, new: str | None, *, actor: str, reason: str, time: str,
                 signer: str | None) -> dict:
    """The signed content of one reflog row (its signature covers these canonical bytes)."""
    return {"format": REFLOG_FORMAT, "ref": ref, "old": old, "new": new, "actor": actor,
            "reason": reason, "time": time, "signer": signer}


def move_ref(
    conn: Conn,
    name: str,
    *,
    expected: str | None,
    new: str | None,
    reason: str,
    signer: EntrySigner | None,
    who: str | None = None,
) -> dict:
    """Move ``name`` from ``expected`` to ``new`` by compare-and-swap and log it; return the entry.

    ``expected=None`` creates the ref, ``new=None`` deletes it. Raises RefConflict when the ref
    is not at ``expected``. The caller's transaction holds the move and its reflog row together.

    >>> with db.write() as c:                               # doctest: +SKIP
    ...     move_ref(c, "refs/heads/main", expected=a, new=b, reason="edit", signer=key)
    """
    name = stored_name(conn, name)
    now = now_utc()
    if expected is None:
        if new is None:
            raise ValueError("move_ref needs an expected or a new value")
        done = conn.insert_new("refs", {"name": name, "target": new, "updated_at": now}, "name")
    elif new is None:
        done = conn.execute("DELETE FROM refs WHERE name = ? AND target = ?", (name, expected)).rowcount == 1
    else:
        done = conn.execute(
            "UPDATE refs SET target = ?, updated_at = ? WHERE name = ? AND target = ?",
            (new, now, name, expected),
        ).rowcount == 1
    if not done:
        actual = read_ref(conn, name)
        raise RefConflict(name, expected=expected, actual=actual, message=conflict_message(name, expected, actual))
    entry = reflog_entry(name, expected, new, actor=who or actor(), reason=reason, time=now,
                         signer=signer.id if signer else None)
    signature = signer.sign(canonical_json(entry)) if signer else None
    conn.insert("reflog", [{"ref": name, "old": expected, "new": new, "actor": entry["actor"],
                            "reason": reason, "time": now, "signature": signature, "signer": entry["signer"]}])
    entry["signature"] = signature
    return entry


def list_refs(conn: Conn, prefix: str = "") -> list[tuple[str, str]]:
    rows = conn.all(
        "SELECT name, target FROM refs WHERE substr(name, 1, ?) = ? ORDER BY name", (len(prefix), prefix)
    )
    return [(r[0], r[1]) for r in rows]


def refs_by_target(conn: Conn) -> dict[str, list[str]]:
    """Version id → short names of the refs that point at it (HEAD included when detached or via its branch)."""
    out: dict[str, list[str]] = {}
    own_head = stored_name(conn, HEAD)
    # Another folder's HEAD is not a name here; this folder's own is shown as HEAD.
    rows = [(HEAD if name == own_head else name, target) for name, target in list_refs(conn)
            if name == own_head or not (name == HEAD or name.startswith(WORKTREES))]
    table = dict(rows)
    for name, target in rows:
        if target.startswith(SYMBOLIC) or name.startswith(META):
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
    if name.startswith(ALIASES):
        return "@" + name[len(ALIASES):]
    return name


def conflict_message(ref: str, expected: str | None, actual: str | None) -> str:
    """What a lost compare-and-swap tells the user (see :class:`~seal.registry.errors.RefConflict`)."""
    if expected is None:
        return f"{short_name(ref)} already exists (at {short_target(actual)}); someone else created it first"
    return (
        f"{short_name(ref)} moved from {short_target(expected)} to {short_target(actual)} while this "
        f"command ran; nothing was changed"
    )


def short_target(target: str | None) -> str:
    if target is None:
        return "nothing"
    if target.startswith(SYMBOLIC):
        return short_name(target[len(SYMBOLIC):])
    return target[:12]
