"""Scores and audits become views over the manifests; PostgreSQL keeps each compressed manifest in its row.

Revision ID: 0003_derived_scores
Revises: 0002_signed_reflog
Create Date: 2026-12-07

A version's scores and gates were stored twice: in its manifest (hashed into its id) and as rows
of ``scores`` and ``audits``, one row each, keyed by the 64-character id. Nothing but `verify`
read those rows, and they were 55% of a version's bytes on PostgreSQL (about 5.9 of 10.6 KB for
an edit with 17 scores and 10 gates). They are now views with the same columns, computed from
``versions.manifest``: the same queries work, the rows can no longer disagree with the manifest,
and they take no space. Upgrading drops the copies; every value stays in the manifests it was
derived from (``verify`` checked the two were equal). Downgrading rebuilds the tables from them.

On PostgreSQL the text columns of ``versions`` get storage MAIN. With the default (EXTENDED), a
row over 2 KB first had its small columns (id, signature, digests) moved out to TOAST one by one,
about six chunks of 70 bytes with their index entries per version, 0.8 KB, before the manifest
was compressed. With MAIN the manifest is compressed (pglz) first and the row stays whole; TOAST
is still used for a row that does not fit a page even compressed.
"""

from alembic import op
import sqlalchemy as sa

from seal.migrations.append_only import guard, unguard

revision = "0003_derived_scores"
down_revision = "0002_signed_reflog"
branch_labels = None
depends_on = None

ID = sa.String(64)
TEXT_COLUMNS = ("id", "manifest", "base_id", "kind", "status", "created_at", "author", "message", "adapter_digest",
                "headline_metric", "signature", "signer")
SCORE_FIELDS = (("suite", "text"), ("metric", "text"), ("against", "text"), ("value", "float"), ("n", "int"))
AUDIT_FIELDS = (("check", "text", "check_name"), ("value", "float", None), ("threshold", "float", None),
                ("passed", "bool", None), ("detail", "text", None), ("ci_low", "float", None),
                ("ci_high", "float", None), ("n", "int", None), ("rule", "text", None))


def _pg_field(key: str, kind: str) -> str:
    text = f"e.value ->> '{key}'"
    return {"text": text, "float": f"CAST({text} AS DOUBLE PRECISION)", "int": f"CAST({text} AS INTEGER)",
            "bool": f"CAST({text} AS BOOLEAN)"}[kind]


def _sqlite_field(key: str, kind: str) -> str:
    text = f"json_extract(e.value, '$.{key}')"
    return {"text": text, "float": f"CAST({text} AS REAL)", "int": text, "bool": text}[kind]


def select_sql(dialect: str, array: str, fields: list[tuple[str, str, str]]) -> str:
    """One row per element of each manifest's ``array``, keyed by version and position."""
    field = _pg_field if dialect == "postgresql" else _sqlite_field
    cols = ", ".join(f"{field(key, kind)} AS {column}" for key, kind, column in fields)
    if dialect == "postgresql":
        source = (f"versions v CROSS JOIN LATERAL json_array_elements(CASE WHEN json_typeof(CAST(v.manifest AS JSON) "
                  f"-> '{array}') = 'array' THEN CAST(v.manifest AS JSON) -> '{array}' ELSE '[]' END) "
                  f"WITH ORDINALITY AS e(value, ord)")
        position = "CAST(e.ord - 1 AS INTEGER)"
    else:
        source = f"versions v, json_each(v.manifest, '$.{array}') AS e"
        position = "e.key"
    return f"SELECT v.id AS version_id, {position} AS position, {cols} FROM {source}"


def _fields(spec) -> list[tuple[str, str, str]]:
    return [(key, kind, key) for key, kind in SCORE_FIELDS] if spec == "scores" else \
        [(key, kind, column or key) for key, kind, column in AUDIT_FIELDS]


def upgrade() -> None:
    dialect = op.get_bind().dialect.name
    for table in ("scores", "audits"):
        unguard(table)
        op.drop_table(table)
    op.execute("CREATE VIEW scores AS " + select_sql(dialect, "scores", _fields("scores")))
    op.execute("CREATE VIEW audits AS " + select_sql(dialect, "audit", _fields("audits")))
    if dialect == "postgresql":
        op.execute(f"ALTER TABLE versions {', '.join(f'ALTER COLUMN {c} SET STORAGE MAIN' for c in TEXT_COLUMNS)}")


def downgrade() -> None:
    dialect = op.get_bind().dialect.name
    if dialect == "postgresql":
        op.execute(f"ALTER TABLE versions {', '.join(f'ALTER COLUMN {c} SET STORAGE EXTENDED' for c in TEXT_COLUMNS)}")
    op.execute("DROP VIEW scores")
    op.execute("DROP VIEW audits")
    op.create_table(
        "scores",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("version_id", ID, sa.ForeignKey("versions.id"), nullable=False),
        sa.Column("suite", sa.Text, nullable=False),
        sa.Column("metric", sa.Text, nullable=False),
        sa.Column("against", sa.Text, nullable=True, comment="parent | base | null for an absolute score"),
        sa.Column("value", sa.Float, nullable=False),
        sa.Column("n", sa.Integer, nullable=True),
    )
    op.create_index("ix_scores_version", "scores", ["version_id"])
    op.create_table(
        "audits",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("version_id", ID, sa.ForeignKey("versions.id"), nullable=False),
        sa.Column("check_name", sa.Text, nullable=False),
        sa.Column("value", sa.Float, nullable=True),
        sa.Column("threshold", sa.Float, nullable=True),
        sa.Column("passed", sa.Boolean, nullable=False),
        sa.Column("detail", sa.Text, nullable=False),
        sa.Column("ci_low", sa.Float, nullable=True),
        sa.Column("ci_high", sa.Float, nullable=True),
        sa.Column("n", sa.Integer, nullable=True),
        sa.Column("rule", sa.Text, nullable=True),
    )
    op.create_index("ix_audits_version", "audits", ["version_id"])
    scores, audits = select_sql(dialect, "scores", _fields("scores")), select_sql(dialect, "audit", _fields("audits"))
    op.execute("INSERT INTO scores (version_id, suite, metric, against, value, n) "
               f"SELECT version_id, suite, metric, against, value, n FROM ({scores}) AS d ORDER BY version_id, position")
    op.execute("INSERT INTO audits (version_id, check_name, value, threshold, passed, detail, ci_low, ci_high, n, rule) "
               "SELECT version_id, check_name, value, threshold, passed, COALESCE(detail, ''), ci_low, ci_high, n, rule "
               f"FROM ({audits}) AS d ORDER BY version_id, position")
    guard("scores")
    guard("audits")
