"""Opening the lineage database and keeping its schema current.

Policy (documented in the README): opening a database whose schema is older than this seal is
refused with "run `seal db upgrade`", so that a read-only command never rewrites a shared
database behind a team's back; a database from a newer seal is refused too. The check reads
``alembic_version`` directly, so opening a registry costs no Alembic import.

>>> engine = open_database("sqlite:///.seal/lineage.db")    # doctest: +SKIP
"""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import create_engine, event, inspect, text
from sqlalchemy.engine import Engine
from sqlalchemy.exc import OperationalError, ProgrammingError

from .errors import SchemaError, UserError

# The revisions in migrations/versions, oldest first. A test checks this against Alembic's own
# view of the scripts, so the two cannot drift apart.
REVISIONS = ("0001_initial",)
HEAD_REVISION = REVISIONS[-1]


def migrations_dir() -> Path:
    import seal.migrations

    return Path(seal.migrations.__file__).parent


def _sqlite_pragmas(dbapi_conn, _record) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute("PRAGMA busy_timeout=30000")
    cur.close()


def make_engine(url: str) -> Engine:
    """An engine for ``url`` with the settings seal relies on (foreign keys, lock waits)."""
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url[len("postgresql://"):]
    try:
        if url.startswith("sqlite"):
            engine = create_engine(url, connect_args={"timeout": 30})
            event.listen(engine, "connect", _sqlite_pragmas)
        else:
            engine = create_engine(url, pool_pre_ping=True)
    except ModuleNotFoundError as e:
        raise UserError(f"no driver for {url.split(':')[0]} ({e.name}); install seal-registry[postgres]") from None
    except Exception as e:  # a malformed URL is the user's to fix
        raise UserError(f"cannot use database URL {url!r}: {e}") from None
    return engine


def current_revision(engine: Engine) -> str | None:
    """The schema revision stored in the database, or None for an empty database."""
    try:
        with engine.connect() as conn:
            row = conn.execute(text("SELECT version_num FROM alembic_version")).first()
    except (OperationalError, ProgrammingError) as e:
        if "alembic_version" in str(e) or "no such table" in str(e) or "does not exist" in str(e):
            return None
        raise UserError(f"cannot open the lineage database: {str(e).splitlines()[0]}") from None
    return row[0] if row else None


def check_schema(engine: Engine) -> None:
    """Refuse a database this seal cannot use as it is."""
    rev = current_revision(engine)
    if rev == HEAD_REVISION:
        return
    if rev is None:
        raise SchemaError("the lineage database has no seal schema; run `seal init` or `seal db upgrade`")
    if rev in REVISIONS:
        raise SchemaError(
            f"the lineage database is at schema {rev}, older than {HEAD_REVISION}; run `seal db upgrade`"
        )
    raise SchemaError(
        f"the lineage database is at schema {rev}, which this seal does not know (newest known: "
        f"{HEAD_REVISION}); it was written by a newer seal: upgrade seal-registry"
    )


def open_database(url: str) -> Engine:
    engine = make_engine(url)
    check_schema(engine)
    return engine


def alembic_config(engine: Engine):
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(migrations_dir()))
    return cfg


def upgrade(engine: Engine, revision: str = "head") -> str:
    """Bring the schema to ``revision`` (default: newest). Returns the revision reached."""
    rev = current_revision(engine)
    if rev is not None and rev not in REVISIONS:
        raise SchemaError(f"the lineage database is at schema {rev}, newer than this seal; upgrade seal-registry")
    from alembic import command

    cfg = alembic_config(engine)
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, revision)
    return current_revision(engine) or ""


def downgrade(engine: Engine, revision: str) -> str:
    from alembic import command

    cfg = alembic_config(engine)
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.downgrade(cfg, revision)
    return current_revision(engine) or ""


def table_names(engine: Engine) -> list[str]:
    return sorted(inspect(engine).get_table_names())
