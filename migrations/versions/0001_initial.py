"""The lineage graph: bases, versions, parents, scores, audits, refs, reflog, signers.

Revision ID: 0001_initial
Revises:
Create Date: 2026-11-26
"""

from alembic import op
import sqlalchemy as sa

from seal.migrations.append_only import guard, unguard

revision = "0001_initial"
down_revision = None
branch_labels = None
depends_on = None

ID = sa.String(64)
APPEND_ONLY = ("versions", "version_parents", "scores", "audits", "reflog", "signers")


def upgrade() -> None:
    op.create_table(
        "bases",
        sa.Column("id", ID, primary_key=True, comment="fingerprint: sha256 of the weights, name and revision"),
        sa.Column("name", sa.Text, nullable=False),
        sa.Column("revision", sa.Text, nullable=True),
        sa.Column("source", sa.String(16), nullable=False, comment="default | gguf | folder | hub | name"),
        sa.Column("location", sa.Text, nullable=True),
        sa.Column("created_at", sa.String(32), nullable=False),
        sa.Column("info", sa.Text, nullable=False, comment="JSON: weight files and their digests, config"),
    )
    op.create_table(
        "signers",
        sa.Column("id", ID, primary_key=True, comment="sha256 of the raw Ed25519 public key"),
        sa.Column("public_key", sa.Text, nullable=False, comment="raw Ed25519 public key, hex"),
        sa.Column("name", sa.Text, nullable=False),
        sa.Column("created_at", sa.String(32), nullable=False),
    )
    op.create_table(
        "versions",
        sa.Column("id", ID, primary_key=True, comment="sha256 of the canonical manifest"),
        sa.Column("manifest", sa.Text, nullable=False, comment="RFC 8785 canonical JSON"),
        sa.Column("base_id", ID, sa.ForeignKey("bases.id"), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("created_at", sa.String(32), nullable=False),
        sa.Column("author", sa.Text, nullable=False),
        sa.Column("message", sa.Text, nullable=False),
        sa.Column("adapter_digest", sa.String(71), nullable=True),
        sa.Column("headline_metric", sa.Text, nullable=True),
        sa.Column("headline_value", sa.Float, nullable=True),
        sa.Column("signature", sa.Text, nullable=True, comment="Ed25519 over the version id, hex"),
        sa.Column("signer", ID, sa.ForeignKey("signers.id"), nullable=True),
    )
    op.create_index("ix_versions_created_at", "versions", ["created_at"])
    op.create_table(
        "version_parents",
        sa.Column("version_id", ID, sa.ForeignKey("versions.id"), nullable=False),
        sa.Column("position", sa.Integer, nullable=False),
        sa.Column("parent_id", ID, sa.ForeignKey("versions.id"), nullable=False),
        sa.PrimaryKeyConstraint("version_id", "position", name="pk_version_parents"),
    )
    op.create_index("ix_version_parents_parent", "version_parents", ["parent_id"])
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
    )
    op.create_index("ix_audits_version", "audits", ["version_id"])
    op.create_table(
        "refs",
        sa.Column("name", sa.String(255), primary_key=True, comment="HEAD, refs/heads/*, refs/tags/*, refs/remotes/*"),
        sa.Column("target", sa.Text, nullable=False, comment="a version id, or 'ref: NAME' when symbolic"),
        sa.Column("updated_at", sa.String(32), nullable=False),
    )
    op.create_table(
        "reflog",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("ref", sa.String(255), nullable=False),
        sa.Column("old", sa.Text, nullable=True),
        sa.Column("new", sa.Text, nullable=True),
        sa.Column("actor", sa.Text, nullable=False),
        sa.Column("reason", sa.Text, nullable=False),
        sa.Column("time", sa.String(32), nullable=False),
    )
    op.create_index("ix_reflog_ref", "reflog", ["ref"])
    for table in APPEND_ONLY:
        guard(table)


def downgrade() -> None:
    for table in APPEND_ONLY:
        unguard(table)
    for table in ("reflog", "refs", "audits", "scores", "version_parents", "versions", "signers", "bases"):
        op.drop_table(table)
