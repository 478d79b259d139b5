"""The lineage tables (SQLAlchemy 2 Core).

``bases``, ``versions``, ``version_parents``, ``reflog`` and ``signers`` are append-only:
triggers created by the migrations refuse UPDATE and DELETE on them. Only ``refs`` changes, and
only by compare-and-swap (see :mod:`seal.registry.store.refs`).

``scores`` and ``audits`` are views (revision 0003): one row per element of each manifest's
``scores`` and ``audit``, with the columns the tables had (``version_id``, ``position``, then
``suite, metric, against, value, n`` and ``check_name, value, threshold, passed, detail, ci_low,
ci_high, n, rule``), computed from ``versions.manifest`` so they take no space and cannot
disagree with it.

The schema changes only through Alembic revisions in ``migrations/``; this module must describe
the schema at the newest revision (a test compares the two).
"""

from __future__ import annotations

from sqlalchemy import (
    Column,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    PrimaryKeyConstraint,
    String,
    Table,
    Text,
)

metadata = MetaData()

ID = String(64)

bases = Table(
    "bases",
    metadata,
    Column("id", ID, primary_key=True, comment="fingerprint: sha256 of the weights, name and revision"),
    Column("name", Text, nullable=False),
    Column("revision", Text, nullable=True),
    Column("source", String(16), nullable=False, comment="default | gguf | folder | hub | name"),
    Column("location", Text, nullable=True),
    Column("created_at", String(32), nullable=False),
    Column("info", Text, nullable=False, comment="JSON: weight files and their digests, config"),
)

versions = Table(
    "versions",
    metadata,
    Column("id", ID, primary_key=True, comment="sha256 of the canonical manifest"),
    Column("manifest", Text, nullable=False, comment="RFC 8785 canonical JSON"),
    Column("base_id", ID, ForeignKey("bases.id"), nullable=False),
    Column("kind", String(16), nullable=False),
    Column("status", String(16), nullable=False),
    Column("created_at", String(32), nullable=False),
    Column("author", Text, nullable=False),
    Column("message", Text, nullable=False),
    Column("adapter_digest", String(71), nullable=True),
    Column("headline_metric", Text, nullable=True),
    Column("headline_value", Float, nullable=True),
    Column("signature", Text, nullable=True, comment="Ed25519 over the version id, hex"),
    Column("signer", ID, ForeignKey("signers.id"), nullable=True),
    Index("ix_versions_created_id", "created_at", "id"),
)

version_parents = Table(
    "version_parents",
    metadata,
    Column("version_id", ID, ForeignKey("versions.id"), nullable=False),
    Column("position", Integer, nullable=False),
    Column("parent_id", ID, ForeignKey("versions.id"), nullable=False),
    PrimaryKeyConstraint("version_id", "position", name="pk_version_parents"),
    Index("ix_version_parents_parent", "parent_id"),
)

refs = Table(
    "refs",
    metadata,
    Column("name", String(255), primary_key=True, comment="HEAD, refs/heads/*, refs/tags/*, refs/remotes/*"),
    Column("target", Text, nullable=False, comment="a version id, or 'ref: NAME' when symbolic"),
    Column("updated_at", String(32), nullable=False),
)

reflog = Table(
    "reflog",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("ref", String(255), nullable=False),
    Column("old", Text, nullable=True),
    Column("new", Text, nullable=True),
    Column("actor", Text, nullable=False),
    Column("reason", Text, nullable=False),
    Column("time", String(32), nullable=False),
    Column("signature", Text, nullable=True, comment="Ed25519 over the row's canonical JSON, hex"),
    Column("signer", String(64), nullable=True),
    Index("ix_reflog_ref_id", "ref", "id"),
)

signers = Table(
    "signers",
    metadata,
    Column("id", ID, primary_key=True, comment="sha256 of the raw Ed25519 public key"),
    Column("public_key", Text, nullable=False, comment="raw Ed25519 public key, hex"),
    Column("name", Text, nullable=False),
    Column("created_at", String(32), nullable=False),
)

APPEND_ONLY = ("bases", "versions", "version_parents", "reflog", "signers")
# The columns of the views (migrations/versions/0003_derived_scores.py creates them; a test reads them back).
SCORES_VIEW = ("version_id", "position", "suite", "metric", "against", "value", "n")
AUDITS_VIEW = ("version_id", "position", "check_name", "value", "threshold", "passed", "detail", "ci_low", "ci_high",
               "n", "rule")
