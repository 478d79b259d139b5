"""The schema: Alembic revisions, the models, and how old, new, damaged or locked databases are treated."""

from __future__ import annotations

import sqlite3

import pytest

from seal.registry.errors import DatabaseDamaged, DatabaseLocked, DatabaseUnavailable, SchemaError
from seal.registry.store import db as D
from seal.registry.store.graph import graph_lines
from seal.registry.store.schema import AUDITS_VIEW, SCORES_VIEW, metadata
from seal.registry.store.sql import Database


def _url(db_url, tmp_path):
    return db_url or f"sqlite:///{tmp_path / 'x.db'}"


def _set_revision(url: str, rev: str) -> None:
    db = Database.open(url)
    with db.write() as c:
        c.execute("UPDATE alembic_version SET version_num = ?", (rev,))
    db.close()


def test_revisions_constant_matches_alembic_scripts():
    from alembic.config import Config
    from alembic.script import ScriptDirectory

    cfg = Config()
    cfg.set_main_option("script_location", str(D.migrations_dir()))
    script = ScriptDirectory.from_config(cfg)
    chain = [s.revision for s in reversed(list(script.walk_revisions()))]
    assert tuple(chain) == D.REVISIONS and script.get_current_head() == D.HEAD_REVISION


def test_models_match_migrations(db_url, tmp_path):
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    url = _url(db_url, tmp_path)
    D.upgrade(url)
    engine = D._engine(url)
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), metadata)
    engine.dispose()
    assert diff == [], diff


def test_old_and_new_schemas_are_refused(db_url, tmp_path):
    url = _url(db_url, tmp_path)
    if not db_url:  # a missing SQLite file is never created by a reader
        with pytest.raises(DatabaseUnavailable, match="missing"):
            D.check_schema(Database.open(url))
        assert not (tmp_path / "x.db").exists()
    with pytest.raises(SchemaError, match="seal init"):
        D.check_schema(Database.open(url, create=True))
    D.upgrade(url)
    D.check_schema(Database.open(url))
    _set_revision(url, "9999_future")
    with pytest.raises(SchemaError, match="newer seal"):
        D.check_schema(Database.open(url))
    with pytest.raises(SchemaError, match="newer"):
        D.upgrade(url)
    _set_revision(url, D.HEAD_REVISION)
    D.downgrade(url, "base")
    assert D.current_revision(Database.open(url)) is None
    assert D.upgrade(url) == D.HEAD_REVISION


def test_upgrade_from_the_first_schema_keeps_rows_and_triggers(db_url, tmp_path):
    url = _url(db_url, tmp_path)
    D._alembic(url, "upgrade", "0001_initial")
    db = Database.open(url)
    with db.write() as c:
        c.execute("INSERT INTO reflog (ref, old, new, actor, reason, time) VALUES ('HEAD', NULL, 'x', 'a', 'r', 't')")
    assert D.upgrade(url) == D.HEAD_REVISION
    with db.read() as c:
        assert c.all("SELECT ref, signature FROM reflog") == [("HEAD", None)]
    with pytest.raises(Exception, match="append-only"):
        with db.write() as c:
            c.execute("DELETE FROM reflog")
    db.close()


def test_older_schema_asks_for_db_upgrade(monkeypatch, registry, reg):
    """A database at an older revision than this seal knows is refused until `seal db upgrade`."""
    monkeypatch.setattr(D, "REVISIONS", ("0000_older",) + D.REVISIONS)
    _set_revision(reg.database_url, "0000_older")
    with pytest.raises(SchemaError, match="run `seal db upgrade`"):
        D.check_schema(Database.open(reg.database_url))
    assert "run `seal db upgrade`" in registry.run("log").stderr
    _set_revision(reg.database_url, D.HEAD_REVISION)
    assert registry.json("db", "current")["up_to_date"] is True


def test_cli_refuses_a_future_database(registry, reg):
    _set_revision(reg.database_url, "ffff_future")
    proc = registry("log", expect=2)
    assert "newer seal" in proc.stderr and "Traceback" not in proc.stderr


def test_damaged_and_locked_sqlite_get_their_own_messages(tmp_path, tiny_base_record):
    from conftest import Seal, make_registry

    reg = make_registry(tmp_path, tiny_base_record)
    registry = Seal(tmp_path)
    path = registry.cwd / ".seal" / "lineage.db"
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    from seal.registry.store import sql

    old = sql.LOCK_TIMEOUT_S
    sql.LOCK_TIMEOUT_S = 0.3
    try:
        reg2 = type(reg).open(registry.cwd)
        with pytest.raises(DatabaseLocked, match="locked by another seal process"):
            reg2.move_ref("refs/heads/x", new=reg2.resolve("HEAD"), expected=None, reason="t")
    finally:
        sql.LOCK_TIMEOUT_S = old
        holder.execute("ROLLBACK")
        holder.close()
    data = path.read_bytes()
    path.write_bytes(data[:100] + b"\x00garbage" * 64)
    for suffix in ("-wal", "-shm"):
        (path.parent / f"lineage.db{suffix}").unlink(missing_ok=True)
    proc = registry.run("log")
    assert proc.returncode == 2 and "damaged" in proc.stderr and "Traceback" not in proc.stderr
    with pytest.raises(DatabaseDamaged):
        D.check_schema(Database.open(f"sqlite:///{path}"))


def test_upgrade_refuses_tables_without_a_revision(tmp_path):
    url = f"sqlite:///{tmp_path / 'x.db'}"
    D.upgrade(url)
    db = Database.open(url)
    with db.write() as c:
        c.execute("DROP TABLE alembic_version")
    db.close()
    with pytest.raises(DatabaseDamaged, match="alembic_version is missing"):
        D.upgrade(url)


def _v(vid, *parents):
    return {"id": vid, "parents": list(parents)}


def test_graph_draws_branches_and_merges():
    items = [_v("m", "a", "s"), _v("s", "b"), _v("a", "b"), _v("b", "r"), _v("r")]
    lines = [prefix for prefix, _ in graph_lines(items)]
    assert lines == ["*", "|\\", "| *", "* |", "|/", "*", "*"]


def _scored(reg, parent: str, i: int) -> dict:
    from seal.registry.store.objects import build_manifest

    return build_manifest(
        base=reg.base_id(), parents=[parent], kind="edit", status="accepted" if i % 2 else "rejected",
        message=f"scored {i}",
        scores=[{"suite": "efficacy", "metric": "f1", "against": None, "value": 0.25 * i, "n": 7},
                {"suite": "drift", "metric": "kl", "against": "parent", "value": 1e-3 + i, "n": None}],
        audit=[{"check": "kl_vs_base", "value": 0.5, "threshold": 0.2, "passed": False, "detail": "",
                "ci_low": 0.4, "ci_high": 0.6, "n": 40, "rule": "upper <= threshold"},
               {"check": "secrets", "value": None, "threshold": None, "passed": True, "detail": "none found"}],
    )


SCORE_ROWS = "SELECT version_id, suite, metric, against, value, n FROM scores ORDER BY version_id, suite"
AUDIT_ROWS = ("SELECT version_id, check_name, value, threshold, passed, detail, ci_low, ci_high, n, rule "
              "FROM audits ORDER BY version_id, check_name")


def _manifest_rows(reg, ids) -> tuple[list, list]:
    scores, audits = [], []
    for vid in ids:
        m = reg.manifest(vid)
        scores += [(vid, s["suite"], s["metric"], s["against"], s["value"], s["n"]) for s in m["scores"]]
        audits += [(vid, a["check"], a["value"], a["threshold"], a["passed"], a["detail"], a.get("ci_low"),
                    a.get("ci_high"), a.get("n"), a.get("rule")) for a in m["audit"]]
    return sorted(scores, key=lambda r: r[:3]), sorted(audits, key=lambda r: r[:2])


def _normal(rows) -> list[tuple]:
    return [tuple(bool(v) if i == 4 and len(r) == 10 else v for i, v in enumerate(r)) for r in rows]


def test_scores_and_audits_views_are_the_manifests(reg):
    """The views hold exactly the manifests' scores and gates, and recording adds no copies of them."""
    head = reg.resolve("HEAD")
    ids = [reg.record(_scored(reg, head, i)) for i in range(3)]
    scores, audits = _manifest_rows(reg, ids)
    with reg.read() as c:
        assert _normal(c.all(SCORE_ROWS)) == scores
        assert _normal(c.all(AUDIT_ROWS)) == audits
        assert c.all("SELECT position FROM audits WHERE version_id = ? ORDER BY position", (ids[0],)) == [(0,), (1,)]
        for view, columns in (("scores", SCORES_VIEW), ("audits", AUDITS_VIEW)):
            assert tuple(d[0] for d in c.execute(f"SELECT * FROM {view} LIMIT 0").description) == columns
    with pytest.raises(Exception):
        with reg.write() as c:
            c.execute("INSERT INTO scores (version_id, suite, metric, value) VALUES (?, 'x', 'y', 1)", (ids[0],))


def test_upgrade_from_stored_scores_keeps_every_value_and_verifies_clean(reg):
    """A database at 0002 (scores and audits as tables) upgrades to views with the same rows and verifies clean."""
    head = reg.resolve("HEAD")
    ids = [reg.record(_scored(reg, head, i)) for i in range(3)]
    url = reg.database_url
    reg.close()
    assert D.downgrade(url, "0002_signed_reflog") == "0002_signed_reflog"
    db = Database.open(url)
    with db.read() as c:
        stored = _normal(c.all(SCORE_ROWS)), _normal(c.all(AUDIT_ROWS))
        assert stored == _manifest_rows(reg, ids) and len(stored[0]) == 6
    with pytest.raises(SchemaError, match="seal db upgrade"):
        D.check_schema(db)
    db.close()
    assert D.upgrade(url) == D.HEAD_REVISION
    reg2 = type(reg).open(reg.root)
    with reg2.read() as c:
        assert (_normal(c.all(SCORE_ROWS)), _normal(c.all(AUDIT_ROWS))) == stored
    assert reg2.verify() == [] and reg2.resolve("HEAD") == head
    reg2.close()


@pytest.mark.parametrize("db_url", [pytest.param("postgresql", marks=pytest.mark.postgres)], indirect=True)
def test_postgres_keeps_a_large_manifest_compressed_in_its_row(reg):
    """A 6 KB manifest is compressed in the versions row: nothing goes out to TOAST (where each small
    column used to take a chunk and an index entry of its own)."""
    from seal.registry.store.objects import build_manifest, manifest_bytes

    gates = [{"check": f"gate_{i}", "value": 0.01 * i, "threshold": 0.2, "passed": True, "detail": f"gate {i}: fine",
              "ci_low": 0.0, "ci_high": 0.05, "n": 40, "rule": "upper bound of the 95% interval <= threshold"}
             for i in range(30)]
    manifest = build_manifest(base=reg.base_id(), parents=[reg.resolve("HEAD")], kind="edit", status="rejected",
                              audit=gates, message="large")
    assert len(manifest_bytes(manifest)) > 4000
    vid = reg.record(manifest)
    with reg.read() as c:
        toast = c.scalar("SELECT reltoastrelid::regclass::text FROM pg_class WHERE relname = 'versions'")
        assert c.scalar(f"SELECT count(*) FROM {toast}") == 0
        stored, text = c.one("SELECT pg_column_size(manifest), octet_length(manifest) FROM versions WHERE id = ?", (vid,))
    assert stored < text / 2
    assert reg.show(vid)["audit"] == gates
