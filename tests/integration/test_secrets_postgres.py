"""The secrets contract tests (``tests/unit/test_secrets.py``) again, on a real PostgreSQL.

Same arrangement as ``test_store_postgres.py``: one server for the module (Debian's
``postgresql`` binaries via ``postgres.running_postgres``), a fresh database per test
through the overridden ``store_url`` fixture, so the imported tests run unchanged
(``bytea`` instead of SQLite's BLOB, row locks in ``rotate_secrets``). A missing server
package fails with ``apt-get install postgresql`` in the message, it is never skipped.
"""

from __future__ import annotations

import itertools
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

for _directory in (Path(__file__).resolve().parent, Path(__file__).resolve().parents[1] / "unit"):
    if str(_directory) not in sys.path:
        sys.path.insert(0, str(_directory))

from postgres import PostgresUnavailable, create_database, running_postgres  # noqa: E402
from test_secrets import *  # noqa: E402, F403 - the shared tests and fixtures

from pbxcal.store import KeyRing, Store  # noqa: E402
from pbxcal.store.secrets import new_key  # noqa: E402

pytestmark = pytest.mark.integration

_database_numbers = itertools.count(1)


@pytest.fixture(scope="module")
def postgres_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    try:
        with running_postgres(tmp_path_factory.mktemp("postgres")) as url:
            yield url
    except PostgresUnavailable as exc:
        pytest.fail(str(exc), pytrace=False)


@pytest.fixture
def store_url(postgres_server: str) -> str:  # type: ignore[no-redef]
    """A fresh, empty database for each test (overrides the SQLite one)."""
    return create_database(postgres_server, f"secrets_test_{next(_database_numbers)}")


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
