"""The secrets contract tests (``tests/unit/test_secrets.py``) again, on a real PostgreSQL.

Same arrangement as ``test_store_postgres.py``: one server for the module (Debian's
``postgresql`` binaries via ``postgres.running_postgres``), a fresh database per test
through the overridden ``store_url`` fixture, so the imported tests run unchanged
(``bytea`` instead of SQLite's BLOB, row locks in ``rotate_secrets``). A missing server
package fails with ``apt-get install postgresql`` in the message, it is never skipped.
"""

from __future__ import annotations

import sys
import threading
import time
from pathlib import Path

import pytest
import sqlalchemy as sa

for _directory in (Path(__file__).resolve().parent, Path(__file__).resolve().parents[1] / "unit"):
    if str(_directory) not in sys.path:
        sys.path.insert(0, str(_directory))

from postgres import database_fixture, server_fixture  # noqa: E402
from test_secrets import *  # noqa: E402, F403 - the shared tests and fixtures

from pbxcal.store import KeyRing, Store, StoreError  # noqa: E402
from pbxcal.store.secrets import new_key  # noqa: E402

pytestmark = pytest.mark.integration

postgres_server = server_fixture()
store_url = database_fixture("secrets_test")  # overrides the SQLite one


def test_secrets_are_bytea_on_postgres(store_url: str) -> None:
    with Store.open(store_url, keys=KeyRing([new_key()])) as store:
        link = store.add_link("100", "main", "caldav", "https://dav.example/anna/")
        store.save_secret(link.id, "caldav-password", "on postgres")
        assert store.load_secret(link.id, "caldav-password") == b"on postgres"
        with store._db.engine.connect() as conn:
            assert conn.dialect.name == "postgresql"
            kind = conn.execute(
                sa.text(
                    "SELECT data_type FROM information_schema.columns "
                    "WHERE table_name = 'secrets' AND column_name = 'ciphertext'"
                )
            ).scalar()
    assert kind == "bytea"


def test_rotation_waits_for_a_concurrent_save_and_keeps_it(store_url: str) -> None:
    """A secret saved with the new key while rotation runs is not overwritten with its
    old value: rotation locks the rows it rewrites (``SELECT ... FOR UPDATE``) and skips
    one that already uses the current key when the lock is granted."""
    old, new = new_key(), new_key()
    with Store.open(store_url, keys=KeyRing([old])) as first:
        link = first.add_link("100", "main", "caldav", "https://dav.example/a/").id
        first.save_secret(link, "caldav-password", "old value")
    both = KeyRing([new, old])
    writer = sa.create_engine(store_url)
    try:
        with Store.open(store_url, keys=both) as store, writer.connect() as conn:
            # another process saves a newer value, not committed yet: it holds the row lock
            transaction = conn.begin()
            used, sealed = both.seal(link, "caldav-password", b"newer value")
            conn.execute(
                sa.text(
                    "UPDATE secrets SET key_id = :key_id, ciphertext = :sealed "
                    "WHERE link_id = :link AND kind = 'caldav-password'"
                ),
                {"key_id": used, "sealed": sealed, "link": link},
            )
            results: list[int | StoreError] = []

            def rotate() -> None:
                try:
                    results.append(store.rotate_secrets())
                except StoreError as exc:  # reported below
                    results.append(exc)

            rotating = threading.Thread(target=rotate)
            rotating.start()
            # rotation is now waiting for that row lock (seen by the server, no sleep)
            with writer.connect() as watcher:
                deadline = time.monotonic() + 30
                while not watcher.execute(
                    sa.text(
                        "SELECT count(*) FROM pg_stat_activity "
                        "WHERE wait_event_type = 'Lock' AND datname = current_database()"
                    )
                ).scalar():
                    assert time.monotonic() < deadline, "rotation never waited for the lock"
                    assert rotating.is_alive(), f"rotation did not wait: {results}"
            transaction.commit()
            rotating.join(timeout=30)
            assert results == [0]
            assert store.load_secret(link, "caldav-password") == b"newer value"
    finally:
        writer.dispose()
