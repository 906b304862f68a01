"""The store's contract tests (``tests/unit/test_store.py``) again, on a real PostgreSQL.

One server (Debian's ``postgresql`` binaries, started by ``postgres.running_postgres``)
serves the whole session; every test gets a fresh, empty database in it through the
overridden ``store_url`` fixture, so the imported tests run unchanged. A missing server
package fails with ``apt-get install postgresql`` in the message, it is never skipped.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import sqlalchemy as sa

# Both helper modules sit next to their test files; make them importable whatever
# pytest's import mode is (the default "prepend" adds only this file's directory).
for _directory in (Path(__file__).resolve().parent, Path(__file__).resolve().parents[1] / "unit"):
    if str(_directory) not in sys.path:
        sys.path.insert(0, str(_directory))

from postgres import database_fixture, server_fixture  # noqa: E402
from test_store import *  # noqa: E402, F403 - the shared tests and fixtures

from pbxcal.store import SchemaTooNew, Store  # noqa: E402

pytestmark = pytest.mark.integration

postgres_server = server_fixture()
store_url = database_fixture("store_test")  # overrides the SQLite one


def test_postgres_store_uses_postgres(store: Store) -> None:
    with store._db.engine.connect() as conn:
        assert conn.dialect.name == "postgresql"
        assert conn.execute(sa.text("SHOW application_name")).scalar() == "pbxcal"
        types = dict(
            conn.execute(
                sa.text(
                    "SELECT table_name || '.' || column_name, data_type"
                    " FROM information_schema.columns WHERE column_name IN"
                    " ('at', 'fetched_at', 'created_at')"
                )
            ).all()
        )
    assert {"sync_log.at", "sync_state.fetched_at", "links.created_at"} <= set(types)
    assert set(types.values()) == {"timestamp with time zone"}, types


def test_plain_postgresql_url_uses_psycopg(store_url: str) -> None:
    plain = store_url.replace("postgresql+psycopg://", "postgresql://")
    with Store.open(plain) as store:
        assert revision(store) == migrate.head_revision()  # noqa: F405 - from test_store


def test_concurrent_opens_migrate_once(store_url: str) -> None:
    """Two processes starting at once: the advisory lock serialises the migration."""
    import threading

    errors: list[BaseException] = []
    stores: list[Store] = []

    def open_store() -> None:
        try:
            stores.append(Store.open(store_url))
        except BaseException as exc:  # noqa: BLE001 - reported by the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=open_store) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for store in stores:
        store.close()
    assert errors == []
    assert len(stores) == 4


def test_schema_too_new_is_a_store_error_subclass() -> None:
    from pbxcal.errors import StoreError

    assert issubclass(SchemaTooNew, StoreError)
