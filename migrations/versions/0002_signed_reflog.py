"""Signed reflog rows, statistical gate fields, and indexes for flat reads at a million versions.

Revision ID: 0002_signed_reflog
Revises: 0001_initial
Create Date: 2026-11-27

- ``reflog.signature`` / ``reflog.signer``: each ref move is signed, so a row inserted by SQL
  alone, or a ref re-pointed behind seal's back, is caught by `seal verify`.
- ``audits.ci_low`` / ``ci_high`` / ``n`` / ``rule``: a gate is a statistical decision with an
  interval, a sample size and a rule.
- ``bases`` becomes append-only too (each base's record is also signed, as ``refs/meta/base/<id>``).
- ``ix_versions_created_id`` serves `log --all -n N` newest first without a sort;
  ``ix_reflog_ref_id`` serves "the last move of each ref".
Columns are added in place (no table rebuild), so the append-only triggers stay.
"""

from alembic import op
import sqlalchemy as sa

from seal.migrations.append_only import guard, unguard

revision = "0002_signed_reflog"
down_revision = "0001_initial"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("reflog", sa.Column("signature", sa.Text, nullable=True, comment="Ed25519 over the row's canonical JSON, hex"))
    op.add_column("reflog", sa.Column("signer", sa.String(64), nullable=True))
    op.add_column("audits", sa.Column("ci_low", sa.Float, nullable=True))
    op.add_column("audits", sa.Column("ci_high", sa.Float, nullable=True))
    op.add_column("audits", sa.Column("n", sa.Integer, nullable=True))
    op.add_column("audits", sa.Column("rule", sa.Text, nullable=True))
    op.drop_index("ix_versions_created_at", table_name="versions")
    op.create_index("ix_versions_created_id", "versions", ["created_at", "id"])
    op.drop_index("ix_reflog_ref", table_name="reflog")
    op.create_index("ix_reflog_ref_id", "reflog", ["ref", "id"])
    guard("bases")


def downgrade() -> None:
    unguard("bases")
    op.drop_index("ix_reflog_ref_id", table_name="reflog")
    op.create_index("ix_reflog_ref", "reflog", ["ref"])
    op.drop_index("ix_versions_created_id", table_name="versions")
    op.create_index("ix_versions_created_at", "versions", ["created_at"])
    with op.batch_alter_table("audits") as batch:
        for column in ("rule", "n", "ci_high", "ci_low"):
            batch.drop_column(column)
    with op.batch_alter_table("reflog") as batch:
        batch.drop_column("signer")
        batch.drop_column("signature")
