"""The admin API's batched audit writer (``pbxcal.web.audit``) on a real SQLite store:
every line of a burst of API calls reaches the store (the periodic batch while running,
the last batch on shutdown), a store that refuses keeps the lines and counts the
failure, and the lines kept in memory are bounded (oldest dropped, counted)."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from pbxcal.admin.tokens import create_admin_token
from pbxcal.config import Config, PbxConfig
from pbxcal.errors import StoreError
from pbxcal.service.clock import SystemClock
from pbxcal.service.metrics import Metrics
from pbxcal.store import Store
from pbxcal.store.portal import AuditLine
from pbxcal.web import WebContext
from pbxcal.web.api import add_routes
from pbxcal.web.audit import AuditWriter

BURST = 60
WAIT = 10.0


@pytest.fixture
def store(tmp_path: Path) -> Store:
    return Store.open(f"sqlite:///{tmp_path}/s.db")


async def api_client(store: Store) -> TestClient[web.Request, web.Application]:
    from pbxcal.web.i18n import Templates

    ctx = WebContext(
        config=Config(pbxes={"main": PbxConfig("main")}), store=store, keys=None, sync=None,
        clock=SystemClock(), metrics=Metrics(), templates=Templates(("en",)),
    )  # fmt: skip
    app = web.Application()
    add_routes(app, ctx)
    client = TestClient(TestServer(app))
    await client.start_server()
    return client


async def until(condition: object, what: str) -> None:
    """Await ``condition()`` becoming true (checked as the loop runs), at most WAIT s."""

    async def check() -> None:
        while not condition():  # type: ignore[operator]
            await asyncio.sleep(0.01)

    try:
        await asyncio.wait_for(check(), WAIT)
    except TimeoutError:
        raise AssertionError(f"timed out waiting for {what}") from None


async def burst(client: TestClient[web.Request, web.Application], token: str) -> None:
    async def one(n: int) -> None:
        headers = {"Authorization": f"Bearer {token}"} if n % 3 else {}
        answer = await client.get(f"/api/v1/links/{n + 1}", headers=headers)
        assert answer.status == (404 if n % 3 else 401)

    await asyncio.gather(*(one(n) for n in range(BURST)))


def targets(store: Store) -> list[str]:
    return [e.target for e in store.audit_entries(10 * BURST)]


async def test_a_burst_of_calls_is_all_in_the_store_after_the_flush(store: Store) -> None:
    _, token = create_admin_token(store, "ops", None, ["main"])
    client = await api_client(store)
    try:
        await burst(client, token)
        await until(lambda: len(targets(store)) == BURST, "the burst's audit lines")
        entries = store.audit_entries(10 * BURST)
        ops = sorted(int(e.target.removeprefix("link:")) for e in entries if e.actor == "ops")
        assert ops == [n + 1 for n in range(BURST) if n % 3]
        refused = [e for e in entries if e.action == "auth.refused"]
        assert len(refused) == BURST // 3 and {e.actor for e in refused} == {"-"}
        assert all(e.detail["status"] == 404 for e in entries if e.actor == "ops")
        assert token not in repr(entries)
        # a second burst answered just before shutdown: the cleanup commits it
        await burst(client, token)
    finally:
        await client.close()
    assert len(targets(store)) == 2 * BURST
    store.close()


class FlakyStore:
    """A store whose audit writes fail until ``healthy``; keeps what it took."""

    def __init__(self) -> None:
        self.healthy = False
        self.written: list[AuditLine] = []
        self.tries = 0

    def record_audit_lines(self, lines: Sequence[AuditLine]) -> None:
        self.tries += 1
        if not self.healthy:
            raise StoreError("cannot write store /x: disk I/O error")
        self.written.extend(lines)


def line(writer: AuditWriter, n: int) -> None:
    writer.record("ops", "link.show", f"link:{n}", {"status": 200}, "127.0.0.1",
                  datetime(2026, 3, 30, 9, tzinfo=UTC))  # fmt: skip


async def test_a_refused_write_is_counted_and_the_lines_kept_bounded() -> None:
    flaky = FlakyStore()
    writer = AuditWriter(flaky, interval=0.001, max_pending=5)  # type: ignore[arg-type]
    await writer.start()
    try:
        for n in range(8):
            line(writer, n)
        await until(lambda: flaky.tries >= 1, "a first try")
        assert writer.failures._value.get() >= 1
        assert writer.pending == 5 and writer.dropped._value.get() == 3  # the oldest three
        flaky.healthy = True
        await until(lambda: writer.pending == 0, "the retry")
        assert [x.target for x in flaky.written] == [f"link:{n}" for n in range(3, 8)]
    finally:
        await writer.close()


async def test_close_commits_what_is_queued_even_if_never_started() -> None:
    flaky = FlakyStore()
    flaky.healthy = True
    writer = AuditWriter(flaky)  # type: ignore[arg-type]
    for n in range(4):
        line(writer, n)
    await writer.close()
    assert [x.target for x in flaky.written] == [f"link:{n}" for n in range(4)]
    assert writer.pending == 0
