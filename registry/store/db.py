"""Opening the lineage database and keeping its schema current.

Policy (documented in the README): opening a database whose schema is older than this seal is
refused with "run `seal db upgrade`", so that a read-only command never rewrites a shared
database behind a team's back; a database from a newer seal is refused too. The check reads
``alembic_version`` through the plain driver, so opening a registry imports neither Alembic nor
SQLAlchemy; only ``upgrade``/``downgrade`` do.

>>> db = open_database("sqlite:///.seal/lineage.db")    # doctest: +SKIP
"""

from __future__ import annotations

from pathlib import Path

from ..errors import DatabaseDamaged, SchemaError, UserError
from .sql import Database

# The revisions in migrations/versions, oldest first. A test checks this against Alembic's own
# view of the scripts, so the two cannot drift apart.
REVISIONS = ("0001_initial", "0002_signed_reflog", "0003_derived_scores")
HEAD_REVISION = REVISIONS[-1]


def migrations_dir() -> Path:
    import seal.migrations

    return Path(seal.migrations.__file__).parent


def current_revision(db: Database) -> str | None:
    """The schema revision stored in the database, or None for an empty database."""
    with db.read() as c:
        if not _has_table(c, "alembic_version"):
            return None
        rows = c.all("SELECT version_num FROM alembic_version")
    if len(rows) > 1:
        raise DatabaseDamaged("the lineage database names several schema revisions; restore it from a backup")
    return rows[0][0] if rows else None


def _has_table(c, name: str) -> bool:
    if c.dialect == "sqlite":
        return c.one("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (name,)) is not None
    return c.one("SELECT 1 FROM information_schema.tables WHERE table_name = ? AND table_schema = current_schema()",
                 (name,)) is not None


def check_schema(db: Database) -> None:
    """Refuse a database this seal cannot use as it is."""
    rev = current_revision(db)
    if rev == HEAD_REVISION:
        return
    if rev is None:
        raise SchemaError("the lineage database has no seal schema; run `seal init` or `seal db upgrade`")
    if rev in REVISIONS:
        raise SchemaError(f"the lineage database is at schema {rev}, older than {HEAD_REVISION}; run `seal db upgrade`")
    raise SchemaError(
        f"the lineage database is at schema {rev}, which this seal does not know (newest known: "
        f"{HEAD_REVISION}); it was written by a newer seal: upgrade seal-registry"
    )


def open_database(url: str, *, read_only: bool = False) -> Database:
    db = Database.open(url, read_only=read_only)
    check_schema(db)
    return db


def _engine(url: str):
    from sqlalchemy import create_engine

    if url.startswith(("postgresql://", "postgres://")):
        url = "postgresql+psycopg://" + url.split("://", 1)[1]
    try:
        return create_engine(url)
    except ModuleNotFoundError as e:
        raise UserError(f"no driver for {url.split(':')[0]} ({e.name}); install seal-registry[postgres]") from None


def _alembic(url: str, action: str, revision: str) -> None:
    from alembic import command
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(migrations_dir()))
    engine = _engine(url)
    try:
        with engine.begin() as conn:
            cfg.attributes["connection"] = conn
            getattr(command, action)(cfg, revision)
    finally:
        engine.dispose()


def upgrade(url: str, revision: str = "head") -> str:
    """Bring the schema to ``revision`` (default: newest). Returns the revision reached."""
    db = Database.open(url, create=True)
    try:
        rev = current_revision(db)
        if rev is not None and rev not in REVISIONS:
            raise SchemaError(f"the lineage database is at schema {rev}, newer than this seal; upgrade seal-registry")
        if rev is None:
            _refuse_foreign_tables(db)
        db.use_wal()
    finally:
        db.close()
    _alembic(url, "upgrade", revision)
    db = Database.open(url)
    try:
        return current_revision(db) or ""
    finally:
        db.close()


def _refuse_foreign_tables(db: Database) -> None:
    """An unversioned database that already holds seal-named tables is damaged, not empty."""
    with db.read() as c:
        present = [t for t in ("versions", "refs", "reflog", "bases") if _has_table(c, t)]
    if present:
        raise DatabaseDamaged(
            f"the lineage database has seal tables ({', '.join(present)}) but no schema revision "
            f"(alembic_version is missing); restore it from a backup rather than upgrading it"
        )


def downgrade(url: str, revision: str) -> str:
    _alembic(url, "downgrade", revision)
    db = Database.open(url)
    try:
        return current_revision(db) or ""
    finally:
        db.close()
