"""The writing half of `seal pull`: store checked blobs, then one transaction for rows and refs.

Blobs go in first and are never unlinked here, even when the pull fails or loses a race: another
pull may have just committed the same blob, and `seal gc` removes what no version references.
The transaction inserts signers and versions (an id already there is skipped, so concurrent
pulls of one lineage all succeed), records withheld data, and moves the tracking ref by
compare-and-swap. A lost swap (a concurrent pull moved the ref first) is retried from the fresh
state, where the ref usually already is where this pull wanted it.

Tracking refs: a branch's moves only forward (the new head descends from the old), a tag's never
moves, an alias's moves as the publisher moved it; ``force`` allows any move.

>>> import_checked(reg, remote, checked, paths, signers, ref="refs/remotes/hub/me/a", force=False)  # doctest: +SKIP
"""

from __future__ import annotations

from pathlib import Path

from ..errors import PullRefused, RefConflict, UserError
from ..store import refs as R
from ..store.graph import ancestors
from ..store.sql import Conn
from .layout import Revision, short_id
from .lineage import CheckedLineage
from .withheld import record_withheld

RETRIES = 8


def descends(conn: Conn, checked: CheckedLineage, old: str) -> bool:
    """Whether the pulled head descends from ``old``, a version already here."""
    if checked.head not in checked.path:  # the head itself is here already
        return old in ancestors(conn, checked.head)
    frontier = {p for v in checked.path for p in checked.manifests[v]["parents"] if p not in checked.path}
    return any(old in ancestors(conn, f) for f in sorted(frontier))


def ref_verdict(conn: Conn, ref: str, rev: Revision, checked: CheckedLineage, *, force: bool) -> tuple[str | None, bool]:
    """(where ``ref`` is now, whether to move it to the head); refuses a move the rules forbid."""
    old = R.read_ref(conn, ref)
    if old == checked.head:
        return old, False
    if old is None or force or rev.kind == "alias":
        return old, True
    if rev.kind == "branch" and descends(conn, checked, old):
        return old, True
    why = (f"{short_id(checked.head)} does not descend from it, so the tracking ref would move backwards or sideways"
           if rev.kind == "branch" else f"the Hub's tag {rev.name} now names {short_id(checked.head)}, and tags do not move")
    raise UserError(f"{R.short_name(ref)} is at {short_id(old)}; {why}; nothing was imported; pass --force to move it")


def plan_ref(reg, ref: str | None, rev: Revision, checked: CheckedLineage, *, force: bool) -> None:
    """Refuse early (before any download) a tracking-ref move the rules forbid."""
    if ref is not None:
        with reg.read() as conn:
            ref_verdict(conn, ref, rev, checked, force=force)


def _store(reg, paths: dict[str, Path]) -> int:
    added = 0
    for digest, path in paths.items():
        if reg.store.has(digest):
            reg.store.freshen(digest)
            continue
        if reg.store.put_file(path) != digest:
            raise PullRefused(f"{path.name} changed while it was stored; nothing was imported")
        added += 1
    return added


def _transaction(conn: Conn, reg, remote, checked: CheckedLineage, ref: str | None, force: bool):
    from ..store.objects import now_utc

    source = f"hub:{remote.repo_id}@{remote.commit}"
    for sid in sorted({checked.signatures[v][1] for v in checked.to_import}):
        conn.insert_new("signers", {"id": sid, "public_key": checked.signer_keys[sid],
                                    "name": f"pulled from {source}"[:255], "created_at": now_utc()}, "id")
    fresh = reg.insert_signed(((checked.manifests[v], *checked.signatures[v]) for v in checked.to_import), conn)
    entries = []
    missing = {d: {"role": role, "source": source} for d, role in checked.withheld.items() if not reg.store.has(d)}
    if missing:
        entry = record_withheld(conn, reg, missing, reason=f"pull: {source}: {len(missing)} data blob(s) withheld "
                                                            f"by the publisher")
        if entry is not None:
            entries.append(entry)
    moved = False
    if ref is not None:
        old, moved = ref_verdict(conn, ref, remote.rev, checked, force=force)
        if moved:
            reg._register_signer(conn)
            entries.append(R.move_ref(conn, ref, expected=old, new=checked.head, reason=f"pull: {source}",
                                      signer=reg.signer))
    return fresh, entries, moved


def _write(reg, remote, checked: CheckedLineage, ref: str | None, force: bool):
    for attempt in range(RETRIES):
        try:
            with reg.write() as conn:
                return _transaction(conn, reg, remote, checked, ref, force)
        except RefConflict:
            if attempt == RETRIES - 1:
                raise
    raise AssertionError("unreachable")


def import_checked(reg, remote, checked: CheckedLineage, paths: dict[str, Path], signers: list[dict], *,
                   ref: str | None, force: bool) -> dict:
    """Trust what ``--trust`` named, store the blobs, write the rows and the ref; the pull's result."""
    from ..store.signing import add_trusted

    for r in signers:
        if r["status"] != "trusted":
            add_trusted(reg.trust_path, checked.signer_keys[r["id"]], f"pulled from hub:{remote.repo_id}")
    added = _store(reg, paths)
    fresh, entries, moved = _write(reg, remote, checked, ref, force)
    reg.journal([checked.manifests[v] for v in fresh], entries)
    return {
        "repo_id": remote.repo_id, "revision": remote.rev.name, "revision_kind": remote.rev.kind,
        "commit": remote.commit, "head": checked.head, "imported": fresh,
        "attempts": [v for v in fresh if v in checked.attempts],
        "ref": R.short_name(ref) if ref else None, "moved": moved, "up_to_date": not fresh and not moved,
        "blobs": added, "bytes": sum(p.stat().st_size for p in paths.values()),
        "withheld": [{"digest": d, "role": r} for d, r in sorted(checked.withheld.items())],
        "signers": signers,
    }

