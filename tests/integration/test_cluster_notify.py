"""LISTEN/NOTIFY between processes (``pbxcal.cluster.notify``) on a real PostgreSQL,
including a restart of the server under a running listener."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import sqlalchemy as sa

sys.path.insert(0, str(Path(__file__).resolve().parent))

from cluster_postgres import *  # noqa: F403 - fixtures
from cluster_postgres import wait_for
from postgres import start_postgres, stop_postgres

from pbxcal.cluster.notify import NOTIFY_SQL, LinkListener, LinkNotifier
from pbxcal.store.engine import Database

pytestmark = pytest.mark.integration


class Received:
    def __init__(self) -> None:
        self.links: asyncio.Queue[int] = asyncio.Queue()
        self.resyncs = 0

    def on_link(self, link_id: int) -> None:
        self.links.put_nowait(link_id)

    def on_resync(self) -> None:
        self.resyncs += 1


@pytest.fixture
async def listener(conninfo: str) -> AsyncIterator[tuple[LinkListener, Received]]:
    received = Received()
    listening = LinkListener(conninfo, received.on_link, received.on_resync, backoff_max=0.5)
    task = asyncio.create_task(listening.run())
    await asyncio.wait_for(listening.listening.wait(), 10)
    yield listening, received
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_a_change_reaches_the_other_member(
    conninfo: str, listener: tuple[LinkListener, Received]
) -> None:
    _, received = listener
    notifier = LinkNotifier(conninfo)
    try:
        await notifier.link_changed(42)
        await notifier.link_changed(7)
        assert await asyncio.wait_for(received.links.get(), 5) == 42
        assert await asyncio.wait_for(received.links.get(), 5) == 7
    finally:
        await notifier.close()


async def test_a_notification_sent_in_a_store_transaction_arrives_only_after_commit(
    cluster_url: str, conninfo: str, listener: tuple[LinkListener, Received]
) -> None:
    _, received = listener
    database = Database.open(cluster_url)
    notifier = LinkNotifier(conninfo)
    try:
        with database.transaction(write=True) as conn:
            conn.execute(sa.text(NOTIFY_SQL), {"link": 5})
            # a marker sent and delivered while the transaction is still open
            await notifier.link_changed(1)
            assert await asyncio.wait_for(received.links.get(), 5) == 1
            assert received.links.empty()  # 5 is not delivered before the commit
        assert await asyncio.wait_for(received.links.get(), 5) == 5
        with pytest.raises(RuntimeError), database.transaction(write=True) as conn:
            conn.execute(sa.text(NOTIFY_SQL), {"link": 6})
            raise RuntimeError("roll back")
        await notifier.link_changed(2)
        assert await asyncio.wait_for(received.links.get(), 5) == 2  # 6 never came
    finally:
        await notifier.close()
        database.close()


async def test_listening_resumes_after_a_postgres_restart_and_asks_for_a_resync(
    cluster_server: str, conninfo: str, listener: tuple[LinkListener, Received]
) -> None:
    listening, received = listener
    notifier = LinkNotifier(conninfo)
    try:
        await notifier.link_changed(8)  # the notifier's connection is open from here on
        assert await asyncio.wait_for(received.links.get(), 5) == 8
        stop_postgres(cluster_server)
        try:
            await wait_for(lambda: not listening.listening.is_set(), 10, "the listener to notice")
        finally:
            start_postgres(cluster_server)
        await asyncio.wait_for(listening.listening.wait(), 10)
        assert listening.connections == 2
        assert received.resyncs == 1  # what was sent meanwhile is lost: re-read the store
        await notifier.link_changed(9)  # the notifier's own connection died too: it reconnects
        assert await asyncio.wait_for(received.links.get(), 5) == 9
    finally:
        await notifier.close()
