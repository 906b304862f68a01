"""EWS notifications driven by the real exchangelib against ``FakeEws``: streaming
subscriptions (one chunked GetStreamingEvents response per connection, ConnectionStatus
Closed at the connection timeout), the pull fallback of a server without streaming,
Unsubscribe, a stream cut from another thread; and ``EwsPush`` (the daemon's keeper):
an edit asks the sync to read the link within the stream's latency, the stream is opened
again after the server closes or drops it, the subscription is made again after it
expired, unlink unsubscribes, ErrorServerBusy on the stream holds the mailbox's syncs, a
server without any subscriptions leaves the link to polling. No sleeps as
synchronisation: the tests wait for the fake's counters or for events, with timeouts.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any, cast

import pytest

from pbxcal.calendars.blocking import BlockingCalls
from pbxcal.calendars.ews import EwsCalendarSource, EwsSettings
from pbxcal.calendars.ews.connection import held_for
from pbxcal.calendars.ews.push import EwsNotifications, EwsSubscription, SubscriptionGone
from pbxcal.errors import CalendarRateLimited
from pbxcal.service.clock import SystemClock
from pbxcal.service.ews_push import EwsPush
from pbxcal.service.metrics import Metrics
from pbxcal.service.sync import CalendarSync
from pbxcal.testing.ews_fake import FakeEws

ALICE = "alice@example.org"
BOB = "bob@example.org"
SERVICE = "svc-pbxcal"
PASSWORD = "s3cret-Pa55"
VCAL = (
    "BEGIN:VCALENDAR\r\nVERSION:2.0\r\nPRODID:Microsoft Exchange Server 2010\r\n"
    "BEGIN:VEVENT\r\nUID:{uid}\r\nSUMMARY:{title}\r\nDTSTART:20261201T090000Z\r\n"
    "DTEND:20261201T100000Z\r\nDTSTAMP:20261101T100000Z\r\nEND:VEVENT\r\nEND:VCALENDAR\r\n"
)


def vcal(uid: str, title: str = "0612345678") -> str:
    return VCAL.format(uid=uid, title=title)


@pytest.fixture
def fake() -> Iterator[FakeEws]:
    with FakeEws(minute=30.0) as server:  # a ConnectionTimeout minute lasts 30 s here
        server.add_user(SERVICE, PASSWORD)
        for box in (ALICE, BOB):
            server.add_mailbox(box)
        server.allow_impersonation(SERVICE)
        yield server


def settings(fake: FakeEws, mailbox: str = ALICE) -> EwsSettings:
    return EwsSettings(
        service_endpoint=fake.url, mailbox=mailbox, username=SERVICE, auth="basic",
        access="impersonation",
    )  # fmt: skip


def notifications(fake: FakeEws, mailbox: str = ALICE) -> EwsNotifications:
    return EwsNotifications(settings(fake, mailbox), PASSWORD, timeout=5)


class Listener:
    """``listen`` in a thread, its calls of ``on_events`` recorded."""

    def __init__(self, source: EwsNotifications, sub: EwsSubscription) -> None:
        self.counts: list[int] = []
        self.got = threading.Condition()
        self.result: Any = None

        def on_events(count: int) -> None:
            with self.got:
                self.counts.append(count)
                self.got.notify_all()

        def run() -> None:
            try:
                self.result = source.listen(sub, on_events, minutes=1)
            except Exception as exc:  # noqa: BLE001 - the test looks at it
                self.result = exc

        self.thread = threading.Thread(target=run, daemon=True)
        self.thread.start()

    def wait_counts(self, n: int, timeout: float = 5.0) -> list[int]:
        with self.got:
            assert self.got.wait_for(lambda: len(self.counts) >= n, timeout), self.counts
            return list(self.counts)

    def wait_total(self, n: int, timeout: float = 5.0) -> list[int]:
        with self.got:
            assert self.got.wait_for(lambda: sum(self.counts) >= n, timeout), self.counts
            return list(self.counts)

    def join(self, timeout: float = 5.0) -> Any:
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "listen did not return"
        return self.result


def test_streaming_subscription_on_the_calendar_delivers_each_edit(fake: FakeEws) -> None:
    source = notifications(fake)
    sub = source.subscribe()
    assert sub.kind == "streaming"
    subscribe = next(r for r in fake.requests if r.operation == "Subscribe")
    assert "<m:StreamingSubscriptionRequest>" in subscribe.body
    assert '<t:DistinguishedFolderId Id="calendar">' in subscribe.body
    assert subscribe.impersonated == ALICE and subscribe.user == SERVICE
    listener = Listener(source, sub)
    fake.wait_for_stream(1, 5)
    put_at = time.monotonic()
    item_id = fake.put_item(ALICE, "m-1", vcal("m-1"))
    assert listener.wait_counts(1) == [1]
    latency = time.monotonic() - put_at
    fake.put_item(BOB, "other", vcal("other"))  # another mailbox: not this stream's
    fake.put_item(ALICE, "m-1", vcal("m-1", "0687654321"))  # ModifiedEvent
    fake.delete_item(ALICE, "m-1")  # DeletedEvent
    assert sum(listener.wait_total(3)) == 3 and item_id
    fake.close_streams()
    assert listener.join() == sub  # ConnectionStatus Closed ends the connection cleanly
    assert sum(listener.counts) == 3  # Bob's edit never reached Alice's stream
    assert latency < 1.0, f"{latency:.3f}s from the edit to the notification"


def test_the_stream_ends_with_closed_at_its_connection_timeout() -> None:
    with FakeEws(minute=0.3) as short:
        short.add_user(SERVICE, PASSWORD)
        short.add_mailbox(ALICE)
        short.allow_impersonation(SERVICE)
        source = notifications(short)
        sub = source.subscribe()
        started = time.monotonic()
        listener = Listener(source, sub)
        assert listener.join() == sub
        assert 0.25 <= time.monotonic() - started < 3.0
        body = next(r.body for r in short.requests if r.operation == "GetStreamingEvents")
        assert "<m:ConnectionTimeout>1</m:ConnectionTimeout>" in body


def test_interrupt_cuts_the_stream_at_once_and_unsubscribe_removes_it(fake: FakeEws) -> None:
    source = notifications(fake)
    sub = source.subscribe()
    listener = Listener(source, sub)
    fake.wait_for_stream(1, 5)
    started = time.monotonic()
    source.interrupt()
    listener.join(3.0)
    assert time.monotonic() - started < 2.0
    assert sub.id in fake.subscriptions()
    source.unsubscribe(sub)
    assert sub.id not in fake.subscriptions()
    source.unsubscribe(sub)  # gone already: no error


def test_an_expired_subscription_is_gone_on_the_open_stream(fake: FakeEws) -> None:
    source = notifications(fake)
    sub = source.subscribe()
    listener = Listener(source, sub)
    fake.wait_for_stream(1, 5)
    fake.expire_subscriptions()
    assert isinstance(listener.join(), SubscriptionGone)
    with pytest.raises(SubscriptionGone):
        source.listen(sub, lambda n: None, minutes=1)


def test_a_server_without_streaming_gets_a_pull_subscription(fake: FakeEws) -> None:
    fake.refuse_streaming()
    source = notifications(fake)
    sub = source.subscribe()
    assert sub.kind == "pull" and sub.watermark
    bodies = [r.body for r in fake.requests if r.operation == "Subscribe"]
    assert "<m:StreamingSubscriptionRequest>" in bodies[0]
    assert "<m:PullSubscriptionRequest>" in bodies[1] and "<t:Timeout>" in bodies[1]
    seen: list[int] = []
    assert source.listen(sub, seen.append, minutes=1) == sub  # nothing yet: a StatusEvent
    assert seen == []
    fake.put_item(ALICE, "m-1", vcal("m-1"))
    fake.put_item(ALICE, "m-2", vcal("m-2"))
    after = source.listen(sub, seen.append, minutes=1)
    assert seen == [2] and after.watermark != sub.watermark
    assert source.listen(after, seen.append, minutes=1).watermark == after.watermark
    assert seen == [2]  # acknowledged events are not sent again
    source.unsubscribe(after)
    assert fake.subscriptions() == {}


# --- EwsPush: the daemon's keeper ------------------------------------------------------


class StubSync:
    """What EwsPush uses of CalendarSync: built sources, sync_soon (and, for the keeper
    base, no store, no cluster member: one process)."""

    store = None
    member_id = None
    is_mine = None

    def __init__(self) -> None:
        self.sources: list[tuple[int, object]] = []
        self.asked: list[int] = []
        self.changed = asyncio.Event()

    def built_sources(self, provider: str | None = None) -> list[tuple[int, object]]:
        return list(self.sources)

    def sync_soon(self, link_id: int) -> bool:
        self.asked.append(link_id)
        self.changed.set()
        return True

    async def next_ask(self, timeout: float = 5.0) -> int:
        await asyncio.wait_for(self.changed.wait(), timeout)
        self.changed.clear()
        return self.asked[-1]


@pytest.fixture
async def calls() -> AsyncIterator[BlockingCalls]:
    pool = BlockingCalls(workers=2)
    yield pool
    pool.close()


async def start_push(
    sync: StubSync, metrics: Metrics, **kwargs: Any
) -> tuple[EwsPush, asyncio.Task[None]]:
    push = EwsPush(cast(CalendarSync, sync), metrics, SystemClock(), **kwargs)
    return push, asyncio.create_task(push.run())


async def until(condition: Any, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)  # polling a condition, not waiting for time to pass


async def stopped(push: EwsPush, task: asyncio.Task[None]) -> None:
    await push.close()
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


def notified(metrics: Metrics) -> float:
    return float(metrics.webhook_notifications.labels("ews")._value.get())


async def test_an_edit_asks_for_a_sync_of_its_link_and_is_counted(
    fake: FakeEws, calls: BlockingCalls
) -> None:
    sync, metrics = StubSync(), Metrics()
    sync.sources = [(7, EwsCalendarSource(calls, settings(fake), password=PASSWORD))]
    push, task = await start_push(sync, metrics)
    try:
        assert await sync.next_ask() == 7  # read once after subscribing
        await asyncio.to_thread(fake.wait_for_stream, 1, 5)
        fake.put_item(ALICE, "m-1", vcal("m-1"))
        put_at = time.monotonic()
        assert await sync.next_ask() == 7
        print(f"edit -> sync_soon {time.monotonic() - put_at:.3f}s")
        assert notified(metrics) == 1
        assert push.watching(7) is not None and push.watching(7).kind == "streaming"  # type: ignore[union-attr]
    finally:
        await stopped(push, task)


async def test_the_stream_is_opened_again_after_the_server_closes_or_drops_it(
    fake: FakeEws, calls: BlockingCalls
) -> None:
    sync, metrics = StubSync(), Metrics()
    sync.sources = [(3, EwsCalendarSource(calls, settings(fake), password=PASSWORD))]
    push, task = await start_push(sync, metrics)
    try:
        await sync.next_ask()
        await asyncio.to_thread(fake.wait_for_stream, 1, 5)
        first = push.watching(3)
        fake.close_streams()  # ConnectionStatus Closed, as at the connection timeout
        await asyncio.to_thread(fake.wait_for_stream, 2, 5)
        fake.drop_streams()  # the connection cut without a word
        await asyncio.to_thread(fake.wait_for_stream, 3, 10)
        assert push.watching(3) == first  # the same subscription, a new connection
        fake.put_item(ALICE, "m-1", vcal("m-1"))
        assert await sync.next_ask() == 3
        assert notified(metrics) == 1
    finally:
        await stopped(push, task)


async def test_an_expired_subscription_is_made_again_and_the_link_read(
    fake: FakeEws, calls: BlockingCalls
) -> None:
    sync, metrics = StubSync(), Metrics()
    sync.sources = [(3, EwsCalendarSource(calls, settings(fake), password=PASSWORD))]
    push, task = await start_push(sync, metrics)
    try:
        await sync.next_ask()
        await asyncio.to_thread(fake.wait_for_stream, 1, 5)
        first = push.watching(3)
        fake.expire_subscriptions()
        assert await sync.next_ask() == 3  # read again: edits may have gone unseen
        await until(lambda: push.watching(3) not in (None, first))
        await asyncio.to_thread(fake.wait_for_stream, 2, 5)
        fake.put_item(ALICE, "m-1", vcal("m-1"))
        assert await sync.next_ask() == 3
    finally:
        await stopped(push, task)


async def test_unlink_unsubscribes_and_close_stops_every_stream(
    fake: FakeEws, calls: BlockingCalls
) -> None:
    sync, metrics = StubSync(), Metrics()
    sync.sources = [
        (1, EwsCalendarSource(calls, settings(fake, ALICE), password=PASSWORD)),
        (2, EwsCalendarSource(calls, settings(fake, BOB), password=PASSWORD)),
    ]
    push, task = await start_push(sync, metrics)
    try:
        await asyncio.to_thread(fake.wait_for_stream, 2, 5)
        assert len(fake.subscriptions()) == 2
        # two streams open for one service account: the syncs still get their connections
        change = await asyncio.wait_for(sync.sources[0][1].changes(None), 10)  # type: ignore[attr-defined]
        assert change is not None
        sync.sources = sync.sources[1:]
        push.links_changed()
        await until(lambda: len(fake.subscriptions()) == 1)
        fake.put_item(ALICE, "m-1", vcal("m-1"))  # unlinked: nobody is told
        await push.close()
        await until(lambda: fake.subscriptions() == {})
        assert 1 not in sync.asked[2:]
    finally:
        await stopped(push, task)


async def test_server_busy_on_the_stream_holds_the_mailboxs_syncs_too(
    fake: FakeEws, calls: BlockingCalls
) -> None:
    sync, metrics = StubSync(), Metrics()
    source = EwsCalendarSource(calls, settings(fake), password=PASSWORD)
    sync.sources = [(5, source)]
    fake.fail_next(1, back_off_ms=1500)  # the stream's first request
    push, task = await start_push(sync, metrics)
    try:
        await until(lambda: held_for(source.settings, "sync") > 0)
        with pytest.raises(CalendarRateLimited) as caught:
            await source.changes(None)
        assert 0.5 < (caught.value.retry_after or 0) <= 1.5
        assert fake.operations() == ["GetFolder"]  # the sync did not even ask
        await asyncio.to_thread(fake.wait_for_stream, 1, 5)  # after the back-off
        assert await source.changes(None) is not None
    finally:
        await stopped(push, task)


async def test_a_server_without_subscriptions_leaves_the_link_to_polling(
    fake: FakeEws, calls: BlockingCalls
) -> None:
    fake.refuse_streaming()
    fake.refuse_pull()
    sync, metrics = StubSync(), Metrics()
    sync.sources = [(5, EwsCalendarSource(calls, settings(fake), password=PASSWORD))]
    push, task = await start_push(sync, metrics)
    try:
        await until(lambda: fake.operations().count("Subscribe") >= 2)
        assert push.watching(5) is None and sync.asked == []
        fake.refuse_streaming(False)  # the admin allowed it: picked up at the next try
        assert await sync.next_ask(10) == 5
        assert push.watching(5) is not None
    finally:
        await stopped(push, task)


async def test_pull_subscription_asks_for_a_sync_after_an_edit(
    fake: FakeEws, calls: BlockingCalls
) -> None:
    fake.refuse_streaming()
    sync, metrics = StubSync(), Metrics()
    sync.sources = [(9, EwsCalendarSource(calls, settings(fake), password=PASSWORD))]
    push, task = await start_push(sync, metrics, pull_interval=0.2)
    try:
        assert await sync.next_ask() == 9
        fake.put_item(ALICE, "m-1", vcal("m-1"))
        assert await sync.next_ask() == 9
        assert notified(metrics) == 1
        assert push.watching(9) is not None and push.watching(9).kind == "pull"  # type: ignore[union-attr]
    finally:
        await stopped(push, task)


async def test_server_busy_to_a_sync_holds_the_stream_of_that_mailbox(
    fake: FakeEws, calls: BlockingCalls
) -> None:
    sync, metrics = StubSync(), Metrics()
    source = EwsCalendarSource(calls, settings(fake), password=PASSWORD)
    sync.sources = [(5, source)]
    push, task = await start_push(sync, metrics)
    try:
        await asyncio.to_thread(fake.wait_for_stream, 1, 5)
        fake.fail_next(1, back_off_ms=2000)
        with pytest.raises(CalendarRateLimited):
            await source.changes(None)
        fake.close_streams()
        closed_at = time.monotonic()
        with pytest.raises(TimeoutError):  # not before the server's back-off is over
            await asyncio.to_thread(fake.wait_for_stream, 2, 1.2)
        await asyncio.to_thread(fake.wait_for_stream, 2, 5)
        assert time.monotonic() - closed_at >= 1.8
    finally:
        await stopped(push, task)
