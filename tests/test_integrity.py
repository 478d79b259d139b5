"""Tamper evidence, append-only tables, compare-and-swap under concurrency, schema checks."""

from __future__ import annotations

import multiprocessing as mp
import os
import sqlite3
import stat

import pytest

from seal.registry import refs as R
from seal.registry.errors import RefConflict
from seal.registry.repository import Repository


def _raw(seal, sql: str):
    """Run SQL straight against the database, behind seal's back (sqlite3 or psycopg)."""
    url = seal.env.get("SEAL_DATABASE_URL")
    if url is None:
        conn = sqlite3.connect(seal.cwd / ".seal" / "lineage.db")
        try:
            conn.executescript(sql)
            conn.commit()
        finally:
            conn.close()
    else:
        import psycopg

        with psycopg.connect(url.replace("postgresql+psycopg://", "postgresql://"), autocommit=True) as conn:
            conn.execute(sql)


def _drop_triggers(seal, table: str):
    if seal.env.get("SEAL_DATABASE_URL") is None:
        _raw(seal, f"DROP TRIGGER {table}_append_only_update; DROP TRIGGER {table}_append_only_delete;")
    else:
        _raw(seal, f"DROP TRIGGER {table}_append_only ON {table}")


@pytest.mark.parametrize("sql", [
    "UPDATE versions SET message = 'rewritten'",
    "DELETE FROM versions",
    "UPDATE reflog SET actor = 'someone else'",
    "DELETE FROM version_parents",
    "DELETE FROM signers",
])
def test_append_only_tables_refuse_raw_changes(registry, tiny_base, sql):
    registry("import", tiny_base["adapters"][0])
    with pytest.raises(Exception, match="append-only"):
        _raw(registry, sql)
    assert registry("verify").returncode == 0


def test_changed_row_is_caught_by_verify(registry, tiny_base):
    vid = registry.json("import", tiny_base["adapters"][0], "-m", "honest")["id"]
    _drop_triggers(registry, "versions")
    _raw(registry, f"UPDATE versions SET message = 'forged' WHERE id = '{vid}'")
    r = registry("verify", expect=1)
    assert vid[:12] in r.stdout and "message" in r.stdout


def test_rewritten_manifest_is_caught_by_verify(registry, tiny_base):
    vid = registry.json("import", tiny_base["adapters"][0], "-m", "honest")["id"]
    _drop_triggers(registry, "versions")
    _raw(registry, f"UPDATE versions SET manifest = replace(manifest, 'honest', 'forged') WHERE id = '{vid}'")
    r = registry("verify", "--json", expect=1)
    assert vid in r.stdout and "does not hash" in r.stdout


def test_flipped_blob_byte_is_caught_by_verify(registry, tiny_base):
    out = registry.json("import", tiny_base["adapters"][0])
    digest = registry.json("show", "HEAD")["adapter"]["weights"]
    path = registry.cwd / ".seal" / "objects" / "sha256" / digest[7:9] / digest[9:]
    assert not os.stat(path).st_mode & stat.S_IWUSR  # blobs are read-only
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    os.chmod(path, 0o644)
    path.write_bytes(bytes(data))
    r = registry("verify", expect=1)
    assert out["id"][:12] in r.stdout and "corrupt" in r.stdout


def test_forged_signature_is_caught_by_verify(registry, tiny_base):
    vid = registry.json("import", tiny_base["adapters"][0])["id"]
    _drop_triggers(registry, "versions")
    _raw(registry, f"UPDATE versions SET signature = '{'ab' * 64}' WHERE id = '{vid}'")
    r = registry("verify", expect=1)
    assert vid[:12] in r.stdout and "signature" in r.stdout


def _race(seal_dir: str, env: dict, old: str, new: str, barrier, results):
    os.environ.update(env)
    repo = Repository.find(seal_dir)
    try:
        with repo.transaction() as conn:
            barrier.wait(timeout=30)
            R.compare_and_swap(conn, R.HEADS + "main", old=old, new=new, reason=f"race to {new[:8]}")
        results.put(("won", new))
    except RefConflict as e:
        results.put(("lost", str(e)))


def test_two_processes_race_for_main(registry, tiny_base):
    seal = registry
    a = seal.json("import", tiny_base["adapters"][0])["id"]
    seal("checkout", "-b", "side", "HEAD")
    b = seal.json("import", tiny_base["adapters"][1])["id"]
    c = seal.json("import", tiny_base["adapters"][2])["id"]
    ctx = mp.get_context("spawn")
    barrier, results = ctx.Barrier(2), ctx.Queue()
    env = {k: v for k, v in seal.env.items() if k.startswith("SEAL_")}
    procs = [ctx.Process(target=_race, args=(str(seal.cwd), env, a, new, barrier, results)) for new in (b, c)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    outcomes = sorted(results.get(timeout=5) for _ in procs)
    assert [o[0] for o in outcomes] == ["lost", "won"], outcomes
    assert "nothing was changed" in outcomes[0][1] and "main moved from" in outcomes[0][1]
    moves = [e for e in seal.json("reflog", "main") if e["reason"].startswith("race")]
    assert len(moves) == 1 and moves[0]["old"] == a and moves[0]["new"] == outcomes[1][1]
    assert seal.json("show", "main")["id"] == outcomes[1][1]


def test_import_loses_cleanly_when_main_moves(registry, tiny_base):
    """The CAS inside import: a stale head means nothing is recorded."""
    from seal.registry.porcelain import import_adapter

    seal = registry
    env = {k: v for k, v in seal.env.items() if k.startswith("SEAL_")}
    os.environ.update(env)
    try:
        repo = Repository.find(seal.cwd)
        before = len(seal.json("log", "--all"))
        real_head_state = __import__("seal.registry.porcelain", fromlist=["_head_state"])._head_state
        moved = {}

        def stale_head(conn):
            ref, head = real_head_state(conn)
            if not moved:
                moved["x"] = seal.json("import", tiny_base["adapters"][1])["id"]
            return ref, head

        import seal.registry.porcelain as P

        P._head_state, saved = stale_head, P._head_state
        try:
            with pytest.raises(RefConflict, match="moved from"):
                import_adapter(repo, tiny_base["adapters"][0], message="late")
        finally:
            P._head_state = saved
        assert len(seal.json("log", "--all")) == before + 1  # only the winner's version
    finally:
        for k in env:
            os.environ.pop(k, None)
