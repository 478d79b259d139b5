"""Tamper evidence: append-only tables, forged rows, moved refs, erased history, and CAS races."""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import sqlite3
import stat

import pytest

from seal.registry.errors import RefConflict
from seal.registry.repo import Registry
from seal.registry.store import refs as R
from seal.registry.store.objects import build_manifest, canonical_json, version_id


def _raw(seal, sql: str, params: tuple = ()):
    """Run SQL straight against the database, behind seal's back (sqlite3 or psycopg)."""
    url = seal.env.get("SEAL_DATABASE_URL")
    if url is None:
        conn = sqlite3.connect(seal.cwd / ".seal" / "lineage.db")
        try:
            conn.execute(sql, params) if params else conn.executescript(sql)
            conn.commit()
        finally:
            conn.close()
    else:
        import psycopg

        with psycopg.connect(url.replace("postgresql+psycopg://", "postgresql://"), autocommit=True) as conn:
            conn.execute(sql.replace("?", "%s"), params or None)


def _drop_triggers(seal, table: str):
    if seal.env.get("SEAL_DATABASE_URL") is None:
        _raw(seal, f"DROP TRIGGER {table}_append_only_update; DROP TRIGGER {table}_append_only_delete;")
    else:
        _raw(seal, f"DROP TRIGGER {table}_append_only ON {table}")


def _faults(seal) -> list[dict]:
    proc = seal.run("verify", "--json")
    doc = json.loads(proc.stdout)
    assert proc.returncode == (1 if doc["faults"] else 0)
    return doc["faults"]


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


def test_insert_only_forged_signer_and_version_are_named(registry, reg, tiny_base):
    """An attacker with INSERT rights alone: a signer of their own and an 'accepted' version it signed."""
    from seal.registry.store.signing import create_key, public_key_hex, signer_id
    from seal.registry.store.versions import version_rows

    registry("import", tiny_base["adapters"][0])
    head = reg.resolve("HEAD")
    key = create_key(registry.cwd / "attacker.key")
    public = public_key_hex(key)
    sid = signer_id(public)
    manifest = build_manifest(base=reg.base_id(), parents=[head], kind="edit", status="accepted",
                              author="mallory", message="approved by the board")
    vid = version_id(manifest)
    _raw(registry, "INSERT INTO signers (id, public_key, name, created_at) VALUES (?, ?, ?, ?)",
         (sid, public, "mallory", "2026-01-01T00:00:00.000000Z"))
    row = version_rows(manifest, vid, key.sign(vid.encode()).hex(), sid)["version"]
    _raw(registry, f"INSERT INTO versions ({', '.join(row)}) VALUES ({', '.join('?' for _ in row)})", tuple(row.values()))
    _raw(registry, "INSERT INTO version_parents (version_id, position, parent_id) VALUES (?, 0, ?)", (vid, head))
    faults = _faults(registry)
    assert any(f["version"] == vid and "not in the trust file" in f["fault"] for f in faults), faults
    assert any(sid[:12] in f["object"] for f in faults), faults


def test_ref_moved_by_sql_is_named(registry, tiny_base):
    first = registry.json("import", tiny_base["adapters"][0])["id"]
    registry("import", tiny_base["adapters"][1])
    registry("tag", "v1")
    _raw(registry, f"UPDATE refs SET target = '{first}' WHERE name = 'refs/tags/v1'")
    _raw(registry, "INSERT INTO refs (name, target, updated_at) VALUES ('refs/heads/sneaky', ?, 't')", (first,))
    objects = {f["object"] for f in _faults(registry)}
    assert {"ref refs/tags/v1", "ref refs/heads/sneaky"} <= objects


def test_erased_reflog_and_rolled_back_version_are_caught(registry, reg, tiny_base):
    first = registry.json("import", tiny_base["adapters"][0])["id"]
    newest = registry.json("import", tiny_base["adapters"][1])["id"]
    for table in ("reflog", "versions", "version_parents"):
        _drop_triggers(registry, table)
    # Roll back the newest version: its rows, its reflog row, and main pointed back.
    _raw(registry, f"DELETE FROM version_parents WHERE version_id = '{newest}'")
    _raw(registry, f"DELETE FROM versions WHERE id = '{newest}'")
    _raw(registry, f"DELETE FROM reflog WHERE new = '{newest}'")
    _raw(registry, f"UPDATE refs SET target = '{first}' WHERE name = 'refs/heads/main'")
    faults = _faults(registry)
    assert any(f["version"] == newest and "rolled back" in f["fault"] for f in faults), faults
    assert any("erased" in f["fault"] for f in faults), faults


def test_unsigned_reflog_row_is_named(registry, tiny_base):
    vid = registry.json("import", tiny_base["adapters"][0])["id"]
    _raw(registry, "INSERT INTO reflog (ref, old, new, actor, reason, time) VALUES ('refs/tags/x', NULL, ?, 'm', 'r', 't')", (vid,))
    _raw(registry, "INSERT INTO refs (name, target, updated_at) VALUES ('refs/tags/x', ?, 't')", (vid,))
    assert any("not signed" in f["fault"] for f in _faults(registry))


def _race(seal_dir: str, env: dict, old: str, new: str, barrier, results):
    os.environ.update(env)
    reg = Registry.open(seal_dir)
    barrier.wait(timeout=30)
    try:
        reg.move_ref(R.HEADS + "main", new=new, expected=old, reason=f"race to {new[:8]}")
        results.put(("won", new))
    except RefConflict as e:
        results.put(("lost", (e.ref, e.expected, e.actual)))


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
    assert outcomes[0][1] == (R.HEADS + "main", a, outcomes[1][1])  # the loser saw main at the winner's version
    moves = [e for e in seal.json("reflog", "main") if e["reason"].startswith("race")]
    assert len(moves) == 1 and moves[0]["old"] == a and moves[0]["new"] == outcomes[1][1]
    assert seal.json("show", "main")["id"] == outcomes[1][1]
    assert _faults(seal) == []


def test_record_with_a_stale_head_records_nothing(registry, reg, tiny_base):
    """A version and its ref move are one transaction: a lost compare-and-swap records neither."""
    first = registry.json("import", tiny_base["adapters"][0])["id"]
    registry("import", tiny_base["adapters"][1])
    before = len(registry.json("log", "--all"))
    manifest = build_manifest(base=reg.base_id(), parents=[first], kind="revert", status="accepted", message="late")
    with pytest.raises(RefConflict) as caught:
        reg.record(manifest, ref=R.HEADS + "main", expected=first, reason="late")
    assert (caught.value.ref, caught.value.expected, caught.value.actual) == (R.HEADS + "main", first, reg.resolve("main"))
    assert len(registry.json("log", "--all")) == before
    assert _faults(registry) == []


def test_journal_copies_versions_and_moves(registry, reg, tiny_base):
    vid = registry.json("import", tiny_base["adapters"][0])["id"]
    assert reg.store.has("sha256:" + vid)
    entry = reg.reflog("main", 1)[0]
    doc = R.reflog_entry(entry["ref"], entry["old"], entry["new"], actor=entry["actor"], reason=entry["reason"],
                         time=entry["time"], signer=entry["signer"])
    signature = next(r["signature"] for r in _reflog_rows(registry) if r["time"] == entry["time"] and r["ref"] == entry["ref"])
    assert reg.store.has(__import__("seal.registry.store.objects", fromlist=["blob_digest"]).blob_digest(
        canonical_json({**doc, "signature": signature})))


def _reflog_rows(seal) -> list[dict]:
    reg = Registry.open(seal.cwd)
    with reg.read() as c:
        return c.dicts("SELECT * FROM reflog")


@pytest.mark.parametrize("score,gate", [
    ({"n": "many"}, {}), ({"against": ["x"]}, {}), ({}, {"value": "high"}), ({}, {"rule": {"x": 1}}),
    ({}, {"n": 2.5}), ({"value": True}, {}),
])
def test_record_refuses_odd_score_and_gate_fields(reg, score, gate):
    from seal.registry.errors import UserError

    manifest = build_manifest(
        base=reg.base_id(), parents=[reg.resolve("HEAD")], kind="revert", status="accepted",
        scores=[{"suite": "efficacy", "metric": "f1", "against": None, "value": 0.5, "n": 3, **score}],
        audit=[{"check": "retention_vs_parent", "passed": True, "value": 0.1, "threshold": 0.2, **gate}],
    )
    with pytest.raises(UserError, match="cannot record"):
        reg.record(manifest)


def test_replayed_signed_reflog_row_is_named(registry, tiny_base):
    """Only INSERT into reflog and UPDATE of refs, both allowed by the triggers: an old, validly signed
    move of an alias replayed to bring a bad version back."""
    registry("import", tiny_base["adapters"][0])
    registry("tag", "v1")
    registry("import", tiny_base["adapters"][1])
    registry("alias", "prod", "main", "-m", "promote v2")
    registry("alias", "prod", "v1", "-m", "v2 is bad: roll prod back")
    _raw(registry, "INSERT INTO reflog (ref, old, new, actor, reason, time, signature, signer) "
                   "SELECT ref, old, new, actor, reason, time, signature, signer FROM reflog WHERE reason = 'alias: promote v2'")
    _raw(registry, "UPDATE refs SET target = (SELECT new FROM reflog WHERE reason = 'alias: promote v2' LIMIT 1) "
                   "WHERE name = 'refs/aliases/prod'")
    faults = _faults(registry)
    assert any("refs/aliases/prod" in f["object"] and "replayed" in f["fault"] for f in faults), faults


def test_changed_base_row_is_named(registry, tiny_base):
    registry("import", tiny_base["adapters"][0])
    _drop_triggers(registry, "bases")
    _raw(registry, "UPDATE bases SET source = 'hub', name = 'evil-org/backdoored-llama'")
    assert any(f["object"].startswith("base ") and "signed record" in f["fault"] for f in _faults(registry))


def test_bases_are_append_only(registry):
    with pytest.raises(Exception, match="append-only"):
        _raw(registry, "UPDATE bases SET name = 'other'")
