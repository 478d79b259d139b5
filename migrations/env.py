"""Alembic environment for the lineage database.

seal runs Alembic programmatically (see :mod:`seal.registry.store.db`): the connection arrives in
``config.attributes["connection"]``. ``alembic -c migrations/alembic.ini`` also works with
``SEAL_DATABASE_URL`` set, for people who want the Alembic CLI itself.
"""

from __future__ import annotations

import os

from alembic import context
from sqlalchemy import create_engine

from seal.registry.store.schema import metadata

config = context.config


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        context.configure(connection=connection, target_metadata=metadata, render_as_batch=True)
        with context.begin_transaction():
            context.run_migrations()
        return
    url = config.get_main_option("sqlalchemy.url") or os.environ.get("SEAL_DATABASE_URL")
    if not url:
        raise SystemExit("set SEAL_DATABASE_URL to the lineage database URL")
    engine = create_engine(url)
    with engine.connect() as conn:
        context.configure(connection=conn, target_metadata=metadata, render_as_batch=True)
        with context.begin_transaction():
            context.run_migrations()


if context.is_offline_mode():
    context.configure(url=config.get_main_option("sqlalchemy.url"), target_metadata=metadata, literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()
else:
    run_migrations_online()
