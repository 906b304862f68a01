"""Google push channels: events.watch / channels.stop through the real client against
FakeGoogle, which POSTs Google's notification headers to an aiohttp webhook on loopback
that checks them with ``ChannelBook`` (as the daemon's webhook will).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from aiohttp import ClientSession, web

from pbxcal.calendars.blocking import BlockingCalls
from pbxcal.calendars.google import GoogleCalendarSource, user_credentials
from pbxcal.calendars.google.push import (
    Accepted,
    ChannelBook,
    GoogleChannel,
    Refused,
    StoredChannel,
    open_channel,
    replace_channel,
    token_digest,
)
from pbxcal.store import Store
from pbxcal.store.push_channels import PushChannelRecord
from pbxcal.testing.google_fake import FakeGoogle


@dataclass
class Webhook:
    url: str
    book: ChannelBook[str]
    wanted: asyncio.Queue[str] = field(default_factory=asyncio.Queue)
    statuses: list[int] = field(default_factory=list)


def event(event_id: str, title: str) -> dict[str, Any]:
    return {"id": event_id, "summary": title, "start": {"date": "2026-03-30"},
            "end": {"date": "2026-03-31"}}


@pytest.fixture
def fake() -> Iterator[FakeGoogle]:
    with FakeGoogle() as server:
        server.add_calendar("primary")
        yield server


@pytest.fixture
async def webhook() -> AsyncIterator[Webhook]:
    book: ChannelBook[str] = ChannelBook()
    hook = Webhook("", book)

    async def receive(request: web.Request) -> web.Response:
        verdict = book.check(request.headers)
        if not isinstance(verdict, Accepted):
            return web.Response(status=403)
        if verdict.wants_sync:
            hook.wanted.put_nowait(verdict.link)  # the sync runs outside the request
        return web.Response(status=200)

    app = web.Application()
    app.router.add_post("/hooks/google", receive)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    hook.url = f"http://127.0.0.1:{port}/hooks/google"
    yield hook
    await runner.cleanup()


@pytest.fixture
async def source(fake: FakeGoogle) -> AsyncIterator[GoogleCalendarSource]:
    calls = BlockingCalls(2)
    info = fake.add_user("client", "secret", "refresh")
    yield GoogleCalendarSource(user_credentials(info), calls=calls, api_endpoint=fake.api_endpoint)
    calls.close()


async def deliveries(fake: FakeGoogle, count: int) -> list[Any]:
    return await asyncio.to_thread(fake.wait_for_deliveries, count)


async def test_a_change_is_pushed_and_synced(
    fake: FakeGoogle, webhook: Webhook, source: GoogleCalendarSource
) -> None:
    full = await source.changes(None)
    assert full is not None
    channel = await open_channel(source, webhook.book, "link-1", webhook.url, ttl=3600)
    assert channel.calendar_id == "primary" and channel.resource_id.startswith("res-")
    assert timedelta(minutes=59) < channel.expires_at - datetime.now(UTC) <= timedelta(hours=1)
    assert channel.token not in repr(channel)
    [sync] = await deliveries(fake, 1)
    assert sync.state == "sync" and sync.status == 200  # accepted, but no sync wanted
    assert webhook.wanted.empty()

    fake.put_event("primary", event("a", "333"))
    assert await asyncio.wait_for(webhook.wanted.get(), 10) == "link-1"
    changed = await source.changes(full.cursor)
    assert changed is not None and [r.uid for r in changed.upserted] == ["a"]
    assert webhook.book.refused == {}


async def test_spoofed_and_replayed_notifications_are_refused_and_counted(
    fake: FakeGoogle, webhook: Webhook, source: GoogleCalendarSource
) -> None:
    await open_channel(source, webhook.book, "link-1", webhook.url)
    fake.put_event("primary", event("a", "333"))
    _sync, change = await deliveries(fake, 2)
    assert change.status == 200

    async def post(headers: dict[str, str]) -> int:
        async with ClientSession() as session, session.post(webhook.url, headers=headers) as r:
            return r.status

    assert await post(change.headers) == 403  # replayed as is
    assert await post({**change.headers, "X-Goog-Message-Number": "99",
                       "X-Goog-Channel-Token": "guess"}) == 403
    assert await post({**change.headers, "X-Goog-Message-Number": "99",
                       "X-Goog-Resource-ID": "res-other"}) == 403
    assert await post({**change.headers, "X-Goog-Channel-ID": "made-up"}) == 403
    assert await post({"X-Goog-Channel-ID": "x"}) == 403
    assert webhook.book.refused == {
        "replayed": 1, "bad-token": 1, "wrong-resource": 1, "unknown-channel": 1,
        "malformed": 1,
    }
    assert webhook.wanted.qsize() == 1  # only the genuine change asked for a sync


async def test_replace_opens_the_new_channel_before_stopping_the_old(
    fake: FakeGoogle, webhook: Webhook, source: GoogleCalendarSource
) -> None:
    old = await open_channel(source, webhook.book, "link-1", webhook.url)
    await deliveries(fake, 1)
    assert old.needs_renewal(old.expires_at - timedelta(hours=1))
    assert not old.needs_renewal(datetime.now(UTC))
    new = await replace_channel(source, webhook.book, old, "link-1", webhook.url)
    assert fake.channels() == [new.id]
    assert [c.id for c, _ in webhook.book.channels()] == [new.id]
    await deliveries(fake, 2)  # the new channel's sync message
    fake.put_event("primary", event("a", "333"))
    delivered = await deliveries(fake, 3)
    assert delivered[-1].channel_id == new.id and delivered[-1].status == 200
    assert await asyncio.wait_for(webhook.wanted.get(), 10) == "link-1"
    # A notification on the old channel (late, or forged) is refused.
    old_headers = {**delivered[-1].headers, "X-Goog-Channel-ID": old.id,
                   "X-Goog-Channel-Token": old.token, "X-Goog-Message-Number": "50"}
    async with ClientSession() as session, session.post(webhook.url, headers=old_headers) as r:
        assert r.status == 403
    assert webhook.book.refused == {"unknown-channel": 1}


async def test_stop_on_unlink_and_stopping_twice_is_fine(
    fake: FakeGoogle, webhook: Webhook, source: GoogleCalendarSource
) -> None:
    channel = await open_channel(source, webhook.book, "link-1", webhook.url)
    await deliveries(fake, 1)
    await source.stop_channel(channel)
    webhook.book.remove(channel.id)
    assert fake.channels() == []
    await source.stop_channel(channel)  # already gone: 404 counts as stopped
    fake.put_event("primary", event("a", "333"))
    # Deliveries go out in order: had the edit been sent, it would come before this.
    other = await open_channel(source, webhook.book, "link-2", webhook.url)
    _first, second = await deliveries(fake, 2)
    assert (second.channel_id, second.state) == (other.id, "sync")
    assert fake.requests["channels.stop"] == 2


def test_book_checks_in_isolation() -> None:
    book: ChannelBook[int] = ChannelBook()
    channel = GoogleChannel("c1", "r1", "tok", datetime(2026, 12, 1, tzinfo=UTC), "primary")
    book.add(channel, 7)
    headers = {"x-goog-channel-id": "c1", "x-goog-resource-id": "r1",
               "x-goog-channel-token": "tok", "x-goog-resource-state": "exists",
               "x-goog-message-number": "3"}
    verdict = book.check(headers)
    assert isinstance(verdict, Accepted) and verdict.link == 7 and verdict.wants_sync
    # out of order: an older message after a newer one is refused, and harmless
    assert not isinstance(book.check({**headers, "x-goog-message-number": "2"}), Accepted)
    assert isinstance(book.check({**headers, "x-goog-message-number": "4"}), Accepted)
    assert not isinstance(book.check({**headers, "x-goog-resource-state": "bogus",
                                      "x-goog-message-number": "5"}), Accepted)
    # a channel announced with expect() is accepted before its resource id is known
    channel_id, token = book.expect(8)
    pending = book.check({"X-Goog-Channel-ID": channel_id, "X-Goog-Resource-ID": "any",
                          "X-Goog-Channel-Token": token, "X-Goog-Resource-State": "sync",
                          "X-Goog-Message-Number": "1"})
    assert isinstance(pending, Accepted) and pending.link == 8 and not pending.wants_sync


def test_a_channel_learned_from_the_store_is_checked_by_its_digest_and_ages_out() -> None:
    book: ChannelBook[int] = ChannelBook()
    stored = StoredChannel("c9", "r9", token_digest("the-token"))
    book.learn(stored, 9, at=100.0)
    headers = {"x-goog-channel-id": "c9", "x-goog-resource-id": "r9",
               "x-goog-channel-token": "the-token", "x-goog-resource-state": "exists",
               "x-goog-message-number": "1"}  # fmt: skip
    verdict = book.check(headers)
    assert isinstance(verdict, Accepted) and verdict.link == 9
    assert book.check({**headers, "x-goog-channel-token": "the-tokeN",
                       "x-goog-message-number": "2"}) == Refused("bad-token")  # fmt: skip
    assert book.check({**headers, "x-goog-resource-id": "r8",
                       "x-goog-message-number": "2"}) == Refused("wrong-resource")  # fmt: skip
    assert book.fresh("c9", 129.0, 30.0) and not book.fresh("c9", 130.0, 30.0)
    assert book.channels() == []  # learned, not opened here
    # an own channel never ages out, and learning the same id does not demote it
    own = GoogleChannel("c1", "r1", "tok", datetime(2026, 12, 1, tzinfo=UTC), "primary")
    book.add(own, 1)
    book.learn(StoredChannel("c1", "r1", token_digest("other")), 1, at=0.0)
    assert book.fresh("c1", 1e9, 30.0)
    assert isinstance(book.check({**headers, "x-goog-channel-id": "c1", "x-goog-resource-id": "r1",
                                  "x-goog-channel-token": "tok"}), Accepted)  # fmt: skip


def test_stored_channels_message_numbers_are_taken_once(tmp_path: Path) -> None:
    with Store.open(f"sqlite:///{tmp_path / 's.db'}") as store:
        link = store.add_link("100", "main", "google", "primary", {})
        record = PushChannelRecord("google", "c1", link.id, token_digest("t"), "", None, "m1")
        store.save_push_channel(record)
        assert store.push_channel("google", "c1") == record
        assert store.take_push_message("google", "c1", 1) is True
        assert store.take_push_message("google", "c1", 1) is False  # a replay
        assert store.take_push_message("google", "c1", 3) is True
        assert store.take_push_message("google", "c1", 2) is False  # out of order
        assert store.take_push_message("google", "nobody", 1) is None
        later = datetime(2026, 12, 1, tzinfo=UTC)
        store.save_push_channel(PushChannelRecord(
            "google", "c1", link.id, token_digest("t"), "res", later, "m2"))  # fmt: skip
        assert store.take_push_message("google", "c1", 3) is False  # numbers survive a save
        assert store.push_channels("google")[0].owner == "m2"
        assert store.push_channels("graph") == []
        store.expire_push_channel("google", "c1")
        expired = store.push_channel("google", "c1")
        assert expired is not None and expired.expires_at is not None
        assert expired.expires_at < later
        store.remove_link(link.id)  # a link's channels go with it
        assert store.push_channels("google") == []
