"""The schema: Alembic revisions, the models, and how old or new databases are treated."""

from __future__ import annotations

import pytest
from sqlalchemy import text

from seal.registry import db as D
from seal.registry.porcelain import graph_lines
from seal.registry.schema import metadata


def _engine(db_url, tmp_path):
    return D.make_engine(db_url or f"sqlite:///{tmp_path / 'x.db'}")


def test_revisions_constant_matches_alembic_scripts():
    from alembic.script import ScriptDirectory

    cfg = D.alembic_config(None)
    script = ScriptDirectory.from_config(cfg)
    chain = [s.revision for s in reversed(list(script.walk_revisions()))]
    assert tuple(chain) == D.REVISIONS and script.get_current_head() == D.HEAD_REVISION


def test_models_match_migrations(db_url, tmp_path):
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    engine = _engine(db_url, tmp_path)
    D.upgrade(engine)
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), metadata)
    assert diff == [], diff


def test_old_and_new_schemas_are_refused(db_url, tmp_path):
    engine = _engine(db_url, tmp_path)
    with pytest.raises(D.SchemaError, match="seal init"):
        D.check_schema(engine)
    D.upgrade(engine)
    D.check_schema(engine)
    with engine.begin() as conn:
        conn.execute(text("UPDATE alembic_version SET version_num = '9999_future'"))
    with pytest.raises(D.SchemaError, match="newer seal"):
        D.check_schema(engine)
    with pytest.raises(D.SchemaError, match="newer"):
        D.upgrade(engine)
    with engine.begin() as conn:
        conn.execute(text(f"UPDATE alembic_version SET version_num = '{D.HEAD_REVISION}'"))
    D.downgrade(engine, "base")
    assert D.current_revision(engine) is None
    assert D.upgrade(engine) == D.HEAD_REVISION


def test_older_schema_asks_for_db_upgrade(monkeypatch, registry):
    """A database at an older revision than this seal knows is refused until `seal db upgrade`."""
    monkeypatch.setattr(D, "REVISIONS", ("0000_older",) + D.REVISIONS)
    url = registry.env.get("SEAL_DATABASE_URL") or f"sqlite:///{registry.cwd / '.seal' / 'lineage.db'}"
    engine = D.make_engine(url)
    with engine.begin() as conn:
        conn.execute(text("UPDATE alembic_version SET version_num = '0000_older'"))
    with pytest.raises(D.SchemaError, match="run `seal db upgrade`"):
        D.check_schema(engine)
    with engine.begin() as conn:
        conn.execute(text(f"UPDATE alembic_version SET version_num = '{D.HEAD_REVISION}'"))
    proc = registry("db", "current", "--json")
    assert '"up_to_date": true' in proc.stdout


def test_cli_refuses_a_future_database(registry):
    url = registry.env.get("SEAL_DATABASE_URL") or f"sqlite:///{registry.cwd / '.seal' / 'lineage.db'}"
    engine = D.make_engine(url)
    with engine.begin() as conn:
        conn.execute(text("UPDATE alembic_version SET version_num = 'ffff_future'"))
    proc = registry("log", expect=2)
    assert "newer seal" in proc.stderr and "Traceback" not in proc.stderr


def _v(vid, *parents):
    return {"id": vid, "parents": list(parents)}


def test_graph_draws_branches_and_merges():
    items = [_v("m", "a", "s"), _v("s", "b"), _v("a", "b"), _v("b", "r"), _v("r")]
    lines = [prefix for prefix, _ in graph_lines(items)]
    assert lines == ["*", "|\\", "| *", "* |", "|/", "*", "*"]
