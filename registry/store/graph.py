"""The lineage as a graph: parents, ancestry in one query, first-parent lines, and log walks.

Ancestry is one recursive query (SQLite and PostgreSQL alike), so a long history costs one
round trip; ``log`` walks newest-first with a heap as git does, so ``-n 20`` costs about 20
lookups however long the history is.

>>> graph_lines([{"id": "b", "parents": ["a"]}, {"id": "a", "parents": []}])[0][0]
'*'
"""

from __future__ import annotations

import heapq
import json
from dataclasses import asdict, dataclass, field
from typing import Iterable, Iterator

from ..errors import UserError
from .sql import Conn

_ANCESTRY_CTE = """
WITH RECURSIVE ancestry(id) AS (
    SELECT CAST(? AS VARCHAR(64)) UNION SELECT p.parent_id FROM version_parents p JOIN ancestry a ON p.version_id = a.id
)
"""
_ANCESTRY = _ANCESTRY_CTE + "SELECT id FROM ancestry"
_ANCESTRY_OLDEST_FIRST = _ANCESTRY_CTE + "SELECT v.id FROM versions v JOIN ancestry a ON v.id = a.id ORDER BY v.created_at, v.id"
_FIRST_PARENTS = """
WITH RECURSIVE line(id, depth) AS (
    SELECT CAST(? AS VARCHAR(64)), 0
    UNION ALL
    SELECT p.parent_id, l.depth + 1 FROM version_parents p JOIN line l
      ON p.version_id = l.id AND p.position = 0 WHERE l.depth < ?
)
SELECT id FROM line ORDER BY depth
"""
LOG_COLUMNS = ("id", "kind", "status", "created_at", "message", "author", "headline_metric", "headline_value")


@dataclass(frozen=True)
class LogEntry:
    """One line of `seal log` (and one row of `seal ui`'s lineage page); ``to_json()`` is the
    documented `log --json` item."""

    id: str
    parents: list[str]
    kind: str
    status: str
    created_at: str
    message: str
    author: str
    refs: list[str] = field(default_factory=list)
    headline: dict | None = None
    writer: dict | None = None  # who wrote an edit's self-edit, when not the model at its parent

    def to_json(self) -> dict:
        return asdict(self)


def log_entry(row: dict, parents: list[str], names: dict[str, list[str]], writer: dict | None = None) -> LogEntry:
    """The entry of a :data:`LOG_COLUMNS` row, with its parents and the refs (``names``) at it."""
    headline = None if row["headline_metric"] is None else {"metric": row["headline_metric"], "value": row["headline_value"]}
    return LogEntry(id=row["id"], parents=parents, kind=row["kind"], status=row["status"],
                    created_at=row["created_at"], message=row["message"], author=row["author"],
                    refs=names.get(row["id"], []), headline=headline, writer=writer)


def parents_of(conn: Conn, vid: str) -> list[str]:
    rows = conn.all("SELECT parent_id FROM version_parents WHERE version_id = ? ORDER BY position", (vid,))
    return [r[0] for r in rows]


def parents_of_many(conn: Conn, ids: list[str]) -> dict[str, list[str]]:
    """Each of ``ids``'s parents in order, in one chunked query."""
    parents: dict[str, list[str]] = {vid: [] for vid in ids}
    for vid, pid in conn.all_in("SELECT version_id, parent_id FROM version_parents WHERE version_id IN ({marks}) "
                                "ORDER BY version_id, position", list(parents)):
        parents[vid].append(pid)
    return parents


def children_of(conn: Conn, vid: str) -> list[str]:
    return [r[0] for r in conn.all("SELECT version_id FROM version_parents WHERE parent_id = ? ORDER BY version_id", (vid,))]


def ancestors(conn: Conn, vid: str) -> set[str]:
    """``vid`` and every version reachable from it through parent edges (git's ``rev-list``).

    >>> ancestors(conn, head) - ancestors(conn, base)     # what head has that base lacks  # doctest: +SKIP
    """
    return {row[0] for row in conn.all(_ANCESTRY, (vid,))}


def ancestors_oldest_first(conn: Conn, vid: str) -> list[str]:
    """:func:`ancestors`, oldest first (by ``created_at``, then id), in one query."""
    return [row[0] for row in conn.all(_ANCESTRY_OLDEST_FIRST, (vid,))]


def first_parent_line(conn: Conn, vid: str, limit: int = 1_000_000) -> list[str]:
    """``vid``, its first parent, that one's first parent… (at most ``limit`` steps back)."""
    return [row[0] for row in conn.all(_FIRST_PARENTS, (vid, limit))]


def attempts_on_path(conn: Conn, path: Iterable[str]) -> set[str]:
    """The rejected versions whose parent is on ``path``: the attempts made from it (some may be on
    ``path`` themselves when a rejected version was later built on)."""
    return {r[0] for r in conn.all_in("SELECT DISTINCT v.id FROM versions v JOIN version_parents p "
                                      "ON p.version_id = v.id WHERE v.status = 'rejected' AND p.parent_id IN ({marks})",
                                      sorted(path))}


def edits_on_or_off(conn: Conn, tip: str) -> list[dict]:
    """The manifests of the edits on ``tip``'s lineage and of those whose first parent is on it
    (the attempts made from it); ids are read first, manifests only for those edits."""
    line = ancestors(conn, tip)
    rows = conn.all("SELECT v.id, p.parent_id FROM versions v LEFT JOIN version_parents p "
                    "ON p.version_id = v.id AND p.position = 0 WHERE v.kind = 'edit'")
    wanted = [vid for vid, parent in rows if vid in line or parent in line]
    return [json.loads(text) for (text,) in conn.all_in("SELECT manifest FROM versions WHERE id IN ({marks})", wanted)]


def edits_between(conn: Conn, since: str | None = None, until: str | None = None) -> list[dict]:
    """Every edit version's manifest with its ``id``, oldest first, created within the bounds
    (seal's timestamp text; None: open)."""
    sql, params = "SELECT id, manifest FROM versions WHERE kind = 'edit'", []
    if since:
        sql += " AND created_at >= ?"
        params.append(since)
    if until:
        sql += " AND created_at <= ?"
        params.append(until)
    return [{"id": vid, **json.loads(text)} for vid, text in conn.all(sql + " ORDER BY created_at, id", params)]


def root_of(conn: Conn, base_id: str) -> str | None:
    """The first root version (the bare base) recorded for ``base_id``."""
    row = conn.one("SELECT id FROM versions WHERE kind = 'root' AND base_id = ? ORDER BY created_at, id", (base_id,))
    return None if row is None else row[0]


def log_row(conn: Conn, vid: str) -> dict:
    rows = conn.dicts(f"SELECT {', '.join(LOG_COLUMNS)} FROM versions WHERE id = ?", (vid,))
    if not rows:
        raise UserError(f"version {vid[:12]} is referenced but missing; run `seal verify`")
    return rows[0]


def walk(conn: Conn, start: str) -> Iterator[tuple[dict, list[str]]]:
    """(row, parents) for ``start`` and its ancestors, newest first (ties by id)."""
    seen = {start}
    first = log_row(conn, start)
    heap = [(_newest_first(first), start, first)]
    while heap:
        _, vid, row = heapq.heappop(heap)
        ps = parents_of(conn, vid)
        yield row, ps
        for p in ps:
            if p not in seen:
                seen.add(p)
                prow = log_row(conn, p)
                heapq.heappush(heap, (_newest_first(prow), p, prow))


def all_versions(conn: Conn, n: int | None) -> list[tuple[dict, list[str]]]:
    """Every version, newest first, with its parents (the `log --all` listing)."""
    sql = f"SELECT {', '.join(LOG_COLUMNS)} FROM versions ORDER BY created_at DESC, id DESC"
    rows = conn.dicts(sql + (" LIMIT ?" if n is not None else ""), (n,) if n is not None else ())
    parents = parents_of_many(conn, [r["id"] for r in rows])
    return [(r, parents[r["id"]]) for r in rows]


def _newest_first(row: dict) -> tuple:
    # heapq is a min-heap; newest first means inverting the timestamp's order.
    return tuple(-ord(c) for c in str(row["created_at"]))


def graph_lines(items: list[dict]) -> list[tuple[str, dict | None]]:
    """Lanes like `git log --graph`: (prefix, item) for version lines, (prefix, None) for joins.

    Lane k is drawn at character 2k; a branch-out (``\\``) or join (``/``) sits between lanes.
    """
    columns: list[str] = []
    out: list[tuple[str, dict | None]] = []
    for item in items:
        vid = item["id"]
        if vid not in columns:
            columns.append(vid)
        col = columns.index(vid)
        out.append((_row({2 * i: ("*" if i == col else "|") for i in range(len(columns))}, len(columns)), item))
        nxt, extra = _next_lanes(columns, col, item["parents"])
        if extra:
            out.append((_fork_row(col, len(extra), len(nxt)), None))
        columns = _join_lanes(nxt, out)
    return out


def _row(cells: dict[int, str], width: int) -> str:
    chars = [" "] * (2 * width)
    for pos, ch in cells.items():
        chars[pos] = ch
    return "".join(chars).rstrip()


def _next_lanes(columns: list[str], col: int, parents: list[str]) -> tuple[list[str], list[str]]:
    nxt = list(columns)
    if parents:
        nxt[col] = parents[0]
    else:
        nxt.pop(col)
    extra = [p for p in parents[1:] if p not in nxt]
    for k, p in enumerate(extra):
        nxt.insert(col + 1 + k, p)
    return nxt, extra


def _fork_row(col: int, n_extra: int, width: int) -> str:
    cells = {2 * i: "|" for i in range(col + 1)}
    for k in range(n_extra):
        cells[2 * (col + k) + 1] = "\\"
    for i in range(col + 1 + n_extra, width):
        cells[2 * i - 1] = "\\"
    return _row(cells, width + 1)


def _join_lanes(nxt: list[str], out: list[tuple[str, dict | None]]) -> list[str]:
    """Lanes waiting for the same version join here."""
    while True:
        dup = next(((i, j) for i in range(len(nxt)) for j in range(i + 1, len(nxt)) if nxt[i] == nxt[j]), None)
        if dup is None:
            return nxt
        _, j = dup
        cells = {2 * i: "|" for i in range(j)}
        for k in range(j, len(nxt)):
            cells[2 * k - 1] = "/"
        out.append((_row(cells, len(nxt)), None))
        nxt.pop(j)
