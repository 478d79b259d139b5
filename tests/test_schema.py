"""The schema: Alembic revisions, the models, and how old, new, damaged or locked databases are treated."""

from __future__ import annotations

import sqlite3

import pytest

from seal.registry import db as D
from seal.registry.errors import DatabaseDamaged, DatabaseLocked, DatabaseUnavailable, SchemaError
from seal.registry.graph import graph_lines
from seal.registry.schema import metadata
from seal.registry.sql import Database


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
    from seal.registry import sql

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
