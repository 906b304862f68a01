"""Alembic environment for the store: runs migrations on a connection it is given.

``pbxcal.store.migrate`` passes an open connection (inside its own transaction) as
``config.attributes["connection"]``; this file then only configures the migration
context. For a developer running ``alembic`` by hand (e.g. ``alembic revision``) it falls
back to ``sqlalchemy.url`` from the config. It must not configure logging: the daemon
owns that.
"""

from __future__ import annotations

from alembic import context
from sqlalchemy import Connection, create_engine

from pbxcal.store.schema import metadata


def _run(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=metadata,
        render_as_batch=connection.dialect.name == "sqlite",  # SQLite cannot ALTER much
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def _main() -> None:
    given = context.config.attributes.get("connection")
    if isinstance(given, Connection):
        _run(given)
        return
    url = context.config.get_main_option("sqlalchemy.url")
    if not url:
        raise RuntimeError("set sqlalchemy.url (alembic -x or alembic.ini) to run by hand")
    engine = create_engine(url)
    try:
        with engine.connect() as connection:
            _run(connection)
            connection.commit()
    finally:
        engine.dispose()


_main()
