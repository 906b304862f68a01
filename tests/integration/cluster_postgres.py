"""Fixtures and waits shared by the cluster tests on a real PostgreSQL.

``cluster_server`` starts one server per test module (``postgres.running_postgres``);
``cluster_url`` gives each test a fresh database migrated to head (so the ``members``,
``leases`` and ``pbx_epochs`` tables exist) and ``conninfo`` its libpq form.
``wait_for(condition, timeout)`` polls a condition until it holds: the tests never use
a sleep as synchronisation, they wait for what they need to see, with a time limit.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator

import psycopg
import pytest
from postgres import PostgresUnavailable, create_database, running_postgres

from pbxcal.cluster.connection import cluster_conninfo
from pbxcal.store import Store

_numbers = itertools.count(1)

Conn = psycopg.AsyncConnection[tuple[object, ...]]
#: the ``connections`` fixture: opens one more connection to the test's database
Connect = Callable[[], Awaitable[Conn]]


@pytest.fixture(scope="module")
def cluster_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    try:
        with running_postgres(tmp_path_factory.mktemp("postgres")) as url:
            yield url
    except PostgresUnavailable as exc:
        pytest.fail(str(exc), pytrace=False)


@pytest.fixture
def cluster_url(cluster_server: str) -> str:
    url = create_database(cluster_server, f"cluster_{next(_numbers)}")
    Store.open(url).close()  # migrate to head
    return url


@pytest.fixture
def conninfo(cluster_url: str) -> str:
    return cluster_conninfo(cluster_url)


@pytest.fixture
async def connections(conninfo: str) -> AsyncIterator[Connect]:
    """A factory of autocommit connections to the test's database, closed afterwards."""
    opened: list[Conn] = []

    async def open_one() -> Conn:
        conn = await psycopg.AsyncConnection.connect(conninfo, autocommit=True)
        opened.append(conn)
        return conn

    yield open_one
    for conn in opened:
        await conn.close()


async def wait_for(
    condition: Callable[[], Awaitable[bool]] | Callable[[], bool],
    timeout: float,
    what: str,
    poll: float = 0.01,
) -> float:
    """Poll ``condition`` until true; return the monotonic time it first held."""
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if not isinstance(result, bool):
            result = await result
        if result:
            return time.monotonic()
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(poll)
