"""The storage layer (``seal.registry.store``): what a registry keeps and how it reads it back.

Everything else in ``seal.registry`` (the :class:`~seal.registry.repo.Registry` API, the porcelain,
the Hub bridge, the audit) writes and reads the lineage through these modules:

- :mod:`.objects`: blob digests, canonical manifests (RFC 8785) and version ids;
- :mod:`.object_store`: the content-addressed blob store interface and the local store;
- :mod:`.s3_store`: blobs in an S3-compatible bucket, with a verified local read cache (obstore);
- :mod:`.sql`: the lineage database at run time, over plain DB-API connections;
- :mod:`.schema`: the lineage tables (SQLAlchemy Core), as the newest Alembic revision leaves them;
- :mod:`.db`: opening the database, checking its schema revision, ``seal db upgrade``;
- :mod:`.refs`: branches, tags, aliases, HEAD, moved by compare-and-swap, and the signed reflog;
- :mod:`.revisions`: parsing revisions (ids, prefixes, ref names, ``~N``, ``^N``);
- :mod:`.graph`: the version graph: parents, ancestry, first-parent lines, log walks;
- :mod:`.versions`: versions as rows: what recording one writes, reading manifests back;
- :mod:`.signing`: Ed25519 keys and signatures, and the trust file.

This module imports nothing and re-exports nothing: import each module by its full name
(``from seal.registry.store import refs as R``, ``from seal.registry.store.objects import
build_manifest``), so that a command loads only the modules it uses. Only :mod:`.schema`
(SQLAlchemy) and :mod:`.s3_store` (obstore) import a heavy library at module level; ``seal log``
loads neither.
"""
