"""GraphCalendarSource driven by the real MSAL and pbxcal's httpx client against
``FakeGraph``, a protocol-level fake of Graph's calendarView/delta, mailboxSettings and
the Microsoft identity platform's token endpoint on loopback (TLS): paging, delta links,
410 resync, the window's renewal, error mapping, app-only and delegated tokens.
"""

from __future__ import annotations

import asyncio
import functools
import json
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import msal  # type: ignore[import-untyped]
import pytest
import requests

from pbxcal.calendars.blocking import BlockingCalls
from pbxcal.calendars.changes import ChangeSet
from pbxcal.calendars.graph import (
    AppOnlyTokens,
    DelegatedTokens,
    GraphCalendarSource,
    GraphNotFound,
    MailboxSettings,
    WorkingHours,
)
from pbxcal.errors import (
    CalendarAuthFailed,
    CalendarError,
    CalendarNeedsRelink,
    CalendarRateLimited,
    CalendarUnavailable,
)
from pbxcal.testing.graph_fake import TENANT, FakeGraph

SECRET = "client-secret-do-not-print"
MAILBOX = "agent@contoso.com"
NOW = datetime(2026, 3, 10, 12, 0, tzinfo=UTC)


class Clock:
    def __init__(self) -> None:
        self.now = NOW

    def __call__(self) -> datetime:
        return self.now


def timed(event_id: str, title: str, day: int, hour: int = 9, **more: Any) -> dict[str, Any]:
    return {
        "id": event_id,
        "subject": title,
        "start": {"dateTime": f"2026-03-{day:02d}T{hour:02d}:00:00", "timeZone": "UTC"},
        "end": {"dateTime": f"2026-03-{day:02d}T{hour + 1:02d}:00:00", "timeZone": "UTC"},
        "showAs": "busy",
        "responseStatus": {"response": "organizer", "time": "0001-01-01T00:00:00Z"},
        **more,
    }


@pytest.fixture
def fake() -> Iterator[FakeGraph]:
    with FakeGraph() as server:
        server.add_app("app-1", SECRET)
        server.add_mailbox(MAILBOX)
        yield server


@pytest.fixture
async def calls() -> AsyncIterator[BlockingCalls]:
    pool = BlockingCalls(4)
    yield pool
    pool.close()


def app_source(
    fake: FakeGraph, calls: BlockingCalls, secret: str = SECRET, **options: Any
) -> GraphCalendarSource:
    tokens = AppOnlyTokens(
        TENANT, "app-1", secret, authority_host=fake.authority_host, ca_file=fake.ca_file
    )
    options.setdefault("clock", Clock())
    return GraphCalendarSource(
        tokens, MAILBOX, calls=calls, graph_url=fake.graph_url, ca_file=fake.ca_file, **options
    )


def delegated_cache(fake: FakeGraph, user: str) -> str:
    """A user's grant as the authorize flow leaves it: MSAL's serialized token cache."""
    refresh_token = fake.add_user("app-1", user)
    session = requests.Session()
    session.request = functools.partial(  # type: ignore[method-assign]
        session.request, verify=fake.ca_file, timeout=10
    )
    cache = msal.SerializableTokenCache()
    app = msal.ConfidentialClientApplication(
        "app-1", client_credential=SECRET, authority=f"{fake.authority_host}/{TENANT}",
        instance_discovery=False, validate_authority=False, token_cache=cache,
        http_client=session,
    )
    result = app.acquire_token_by_refresh_token(
        refresh_token, scopes=["https://graph.microsoft.com/Calendars.Read"]
    )
    assert "access_token" in result, result.get("error")
    text: str = cache.serialize()
    return text


def delegated_tokens(fake: FakeGraph, cache: str) -> DelegatedTokens:
    return DelegatedTokens(
        "app-1", cache, tenant=TENANT, client_secret=SECRET,
        authority_host=fake.authority_host, ca_file=fake.ca_file,
    )


def by_uid(change_set: ChangeSet) -> dict[str, str]:
    return {row.uid: row.ical for row in change_set.upserted}


async def test_full_delta_pages_then_nothing_changed(
    fake: FakeGraph, calls: BlockingCalls
) -> None:
    for n in range(5):
        fake.put_event(MAILBOX, timed(f"e{n}", f"33{n}", 11 + n))
    fake.put_event(MAILBOX, timed("past", "999", 1))  # before the window: not listed
    source = app_source(fake, calls, page_size=2)
    first = await source.changes(None)
    assert first is not None and first.full
    assert sorted(by_uid(first)) == [f"e{n}" for n in range(5)]
    assert "DTSTART:20260311T090000Z" in by_uid(first)["e0"]
    assert fake.requests["delta"] == 3  # 2 + 2 + 1
    assert fake.requests["token"] == 1
    assert fake.prefer is not None and 'outlook.timezone="UTC"' in fake.prefer
    cursor = json.loads(first.cursor)
    assert cursor["start"] == "2026-03-09T12:00:00Z" and cursor["end"] == "2026-05-09T12:00:00Z"
    assert await source.changes(first.cursor) is None
    assert fake.requests["delta"] == 4  # one request when nothing changed
    assert fake.requests["token"] == 1  # the app token is reused


async def test_incremental_edit_delete_cancel_decline(
    fake: FakeGraph, calls: BlockingCalls
) -> None:
    for event_id, title, day in [("edit", "333", 11), ("gone", "444", 12),
                                 ("cancel", "555", 13), ("decline", "666", 14),
                                 ("same", "777", 15)]:
        fake.put_event(MAILBOX, timed(event_id, title, day))
    source = app_source(fake, calls)
    full = await source.changes(None)
    assert full is not None and len(full.upserted) == 5

    fake.edit_event(MAILBOX, "edit", subject="888", showAs="free")
    fake.delete_event(MAILBOX, "gone")
    fake.cancel_event(MAILBOX, "cancel")
    fake.decline_event(MAILBOX, "decline")
    fake.put_event(MAILBOX, timed("new", "999", 16, hour=14))
    changed = await source.changes(full.cursor)
    assert changed is not None and not changed.full
    rows = by_uid(changed)
    assert set(rows) == {"edit", "decline", "new"}
    assert "SUMMARY:888" in rows["edit"] and "TRANSP:TRANSPARENT" in rows["edit"]
    assert "STATUS:CANCELLED" in rows["decline"]
    assert "PARTSTAT=DECLINED" in rows["decline"]
    assert "DTSTART:20260316T140000Z" in rows["new"]
    assert sorted(changed.removed) == ["cancel", "gone"]
    assert changed.cursor != full.cursor
    assert await source.changes(changed.cursor) is None


async def test_expired_delta_link_means_full_resync(
    fake: FakeGraph, calls: BlockingCalls
) -> None:
    fake.put_event(MAILBOX, timed("a", "333", 11))
    source = app_source(fake, calls)
    full = await source.changes(None)
    assert full is not None
    fake.put_event(MAILBOX, timed("b", "444", 12))
    fake.delete_event(MAILBOX, "a")
    fake.expire_delta_tokens()
    resync = await source.changes(full.cursor)
    assert resync is not None and resync.full
    assert sorted(by_uid(resync)) == ["b"]
    assert resync.removed == ()
    assert await source.changes(resync.cursor) is None


async def test_window_is_renewed_by_a_new_full_round(
    fake: FakeGraph, calls: BlockingCalls
) -> None:
    clock = Clock()
    fake.put_event(MAILBOX, timed("a", "333", 11))
    source = app_source(fake, calls, clock=clock)
    full = await source.changes(None)
    assert full is not None
    clock.now = NOW + timedelta(days=29)  # the window still ends 31 days ahead
    assert await source.changes(full.cursor) is None
    clock.now = NOW + timedelta(days=31)  # it would end in 29 days: a new round
    renewed = await source.changes(full.cursor)
    assert renewed is not None and renewed.full
    assert by_uid(renewed) == {}  # "a" (March 11th) is before the new window
    assert json.loads(renewed.cursor)["end"] == "2026-06-09T12:00:00Z"


async def test_throttling_and_outages(fake: FakeGraph, calls: BlockingCalls) -> None:
    fake.put_event(MAILBOX, timed("a", "333", 11))
    source = app_source(fake, calls)
    full = await source.changes(None)
    assert full is not None
    fake.fail_next(429, "TooManyRequests", retry_after=7)
    with pytest.raises(CalendarRateLimited) as limited:
        await source.changes(full.cursor)
    assert limited.value.retry_after == 7
    fake.fail_next(503, "ServiceUnavailable", retry_after=3)
    with pytest.raises(CalendarRateLimited) as busy:
        await source.changes(full.cursor)
    assert busy.value.retry_after == 3
    fake.fail_next(503, "ServiceUnavailable")
    with pytest.raises(CalendarUnavailable) as down:
        await source.changes(full.cursor)
    assert not isinstance(down.value, CalendarRateLimited)
    fake.fail_next(500, "generalException")
    with pytest.raises(CalendarUnavailable):
        await source.changes(full.cursor)
    # The cursor is still good afterwards.
    fake.put_event(MAILBOX, timed("b", "444", 12))
    changed = await source.changes(full.cursor)
    assert changed is not None and sorted(by_uid(changed)) == ["b"]


async def test_wrong_client_secret_is_auth_failed(fake: FakeGraph, calls: BlockingCalls) -> None:
    wrong = "wrong-secret-do-not-print"
    source = app_source(fake, calls, secret=wrong)
    with pytest.raises(CalendarAuthFailed) as caught:
        await source.changes(None)
    assert wrong not in str(caught.value) and "invalid_client" in str(caught.value)
    assert fake.requests["delta"] == 0


async def test_unknown_mailbox_is_a_calendar_error(fake: FakeGraph, calls: BlockingCalls) -> None:
    tokens = AppOnlyTokens(
        TENANT, "app-1", SECRET, authority_host=fake.authority_host, ca_file=fake.ca_file
    )
    source = GraphCalendarSource(
        tokens, "nobody@contoso.com", calls=calls, graph_url=fake.graph_url,
        ca_file=fake.ca_file,
    )
    with pytest.raises(CalendarError) as caught:
        await source.changes(None)
    assert isinstance(caught.value, GraphNotFound) and "404" in str(caught.value)
    assert not isinstance(caught.value, CalendarUnavailable)


async def test_unreachable_graph_is_unavailable(calls: BlockingCalls, tmp_path: Path) -> None:
    ca_file = tmp_path / "ca.pem"
    with FakeGraph() as gone:
        ca_file.write_bytes(Path(gone.ca_file).read_bytes())
        tokens = AppOnlyTokens(
            TENANT, "app-1", SECRET, authority_host=gone.authority_host, ca_file=str(ca_file)
        )
        source = GraphCalendarSource(
            tokens, MAILBOX, calls=calls, graph_url=gone.graph_url, ca_file=str(ca_file)
        )
    with pytest.raises(CalendarUnavailable):  # the fake is stopped now
        await source.changes(None)


async def test_a_refused_access_token_is_replaced_once(
    fake: FakeGraph, calls: BlockingCalls
) -> None:
    fake.put_event(MAILBOX, timed("a", "333", 11))
    source = app_source(fake, calls)
    full = await source.changes(None)
    assert full is not None and fake.requests["token"] == 1
    fake.expire_access_tokens()
    fake.put_event(MAILBOX, timed("b", "444", 12))
    changed = await source.changes(full.cursor)
    assert changed is not None and sorted(by_uid(changed)) == ["b"]
    assert fake.requests["token"] == 2


async def test_delegated_grant_reads_me_and_refreshes(
    fake: FakeGraph, calls: BlockingCalls
) -> None:
    fake.put_event(MAILBOX, timed("a", "333", 11))
    tokens = delegated_tokens(fake, delegated_cache(fake, MAILBOX))
    source = GraphCalendarSource(
        tokens, None, calls=calls, graph_url=fake.graph_url, ca_file=fake.ca_file,
        clock=Clock(),
    )
    full = await source.changes(None)
    assert full is not None and sorted(by_uid(full)) == ["a"]
    assert "/v1.0/me/calendarView/delta" in json.loads(full.cursor)["delta"]
    before = fake.requests["token"]
    fake.expire_access_tokens()  # Graph refuses the cached token: MSAL uses the refresh token
    fake.put_event(MAILBOX, timed("b", "444", 12))
    changed = await source.changes(full.cursor)
    assert changed is not None and sorted(by_uid(changed)) == ["b"]
    assert fake.requests["token"] == before + 1
    assert tokens.changed()  # the refresh token rotated: the link must store the cache again
    stored = tokens.serialize()
    assert not tokens.changed()
    again = GraphCalendarSource(
        delegated_tokens(fake, stored), None, calls=calls, graph_url=fake.graph_url,
        ca_file=fake.ca_file, clock=Clock(),
    )
    fake.expire_access_tokens()
    assert await again.changes(changed.cursor) is None  # the rotated refresh token works


@pytest.mark.parametrize("how", ["revoked", "expired"])
async def test_dead_refresh_token_needs_relink(
    fake: FakeGraph, calls: BlockingCalls, how: str
) -> None:
    cache = delegated_cache(fake, MAILBOX)
    fake.expire_access_tokens()
    if how == "revoked":
        fake.revoke_refresh_tokens()
    else:
        fake.expire_refresh_tokens()
    source = GraphCalendarSource(
        delegated_tokens(fake, cache), None, calls=calls, graph_url=fake.graph_url,
        ca_file=fake.ca_file, clock=Clock(),
    )
    with pytest.raises(CalendarNeedsRelink) as caught:
        await source.changes(None)
    refresh = json.loads(cache)["RefreshToken"]
    for entry in refresh.values():
        assert entry["secret"] not in str(caught.value)
    assert SECRET not in str(caught.value)


async def test_an_empty_token_cache_needs_relink(fake: FakeGraph, calls: BlockingCalls) -> None:
    source = GraphCalendarSource(
        delegated_tokens(fake, "{}"), None, calls=calls, graph_url=fake.graph_url,
        ca_file=fake.ca_file,
    )
    with pytest.raises(CalendarNeedsRelink):
        await source.changes(None)


async def test_mailbox_settings(fake: FakeGraph, calls: BlockingCalls) -> None:
    fake.set_mailbox_settings(MAILBOX, {
        "timeZone": "W. Europe Standard Time",
        "workingHours": {
            "daysOfWeek": ["monday", "tuesday", "wednesday", "thursday", "friday"],
            "startTime": "08:00:00.0000000",
            "endTime": "17:00:00.0000000",
            "timeZone": {"name": "W. Europe Standard Time"},
        },
    })
    source = app_source(fake, calls)
    settings = await source.mailbox_settings()
    assert settings == MailboxSettings(
        time_zone="W. Europe Standard Time",
        working_hours=WorkingHours(
            days=("monday", "tuesday", "wednesday", "thursday", "friday"),
            start="08:00:00.0000000", end="17:00:00.0000000",
            time_zone="W. Europe Standard Time",
        ),
    )
    assert fake.requests["mailboxSettings"] == 1
    fake.fail_next(429, retry_after=2)
    with pytest.raises(CalendarRateLimited):
        await source.mailbox_settings()


async def test_a_failing_token_endpoint_is_unavailable(
    fake: FakeGraph, calls: BlockingCalls
) -> None:
    fake.put_event(MAILBOX, timed("a", "333", 11))
    fake.fail_token_next(503)
    source = app_source(fake, calls)
    with pytest.raises(CalendarUnavailable) as caught:
        await source.changes(None)
    assert SECRET not in str(caught.value)
    assert fake.requests["delta"] == 0


async def test_a_hanging_graph_gives_up_and_the_next_sync_works(
    fake: FakeGraph, calls: BlockingCalls
) -> None:
    fake.put_event(MAILBOX, timed("a", "333", 11))
    full = await app_source(fake, calls).changes(None)
    assert full is not None
    tokens = AppOnlyTokens(
        TENANT, "app-1", SECRET, authority_host=fake.authority_host, ca_file=fake.ca_file
    )
    await asyncio.to_thread(tokens.access_token)  # only the Graph request is timed below
    source = GraphCalendarSource(
        tokens, MAILBOX, calls=calls, graph_url=fake.graph_url, ca_file=fake.ca_file,
        timeout=1.0, clock=Clock(),
    )
    release = fake.hold_next()
    try:
        with pytest.raises(CalendarUnavailable):
            await source.changes(full.cursor)
    finally:
        release.set()
    fake.put_event(MAILBOX, timed("b", "444", 12))
    changed = await source.changes(full.cursor)
    assert changed is not None and sorted(by_uid(changed)) == ["b"]


async def test_an_unknown_tenant_is_auth_failed(fake: FakeGraph, calls: BlockingCalls) -> None:
    tokens = AppOnlyTokens(
        "no-such-tenant", "app-1", SECRET, authority_host=fake.authority_host,
        ca_file=fake.ca_file,
    )
    source = GraphCalendarSource(
        tokens, MAILBOX, calls=calls, graph_url=fake.graph_url, ca_file=fake.ca_file
    )
    with pytest.raises(CalendarAuthFailed) as caught:
        await source.changes(None)
    assert "tenant" in str(caught.value) and SECRET not in str(caught.value)
    assert fake.requests["token"] == 0


async def test_a_cursor_of_another_endpoint_or_garbage_starts_a_new_round(
    fake: FakeGraph, calls: BlockingCalls
) -> None:
    fake.put_event(MAILBOX, timed("a", "333", 11))
    source = app_source(fake, calls)
    full = await source.changes(None)
    assert full is not None
    foreign = json.loads(full.cursor)
    foreign["delta"] = "https://elsewhere.example/v1.0/users/x/calendarView/delta?$deltatoken=1"
    for cursor in (json.dumps(foreign), "not json", '{"v": 2}'):
        again = await source.changes(cursor)
        assert again is not None and again.full and sorted(by_uid(again)) == ["a"]


async def test_a_410_in_a_new_round_is_unavailable_not_a_loop(
    fake: FakeGraph, calls: BlockingCalls
) -> None:
    fake.put_event(MAILBOX, timed("a", "333", 11))
    source = app_source(fake, calls)
    fake.fail_next(410, "syncStateNotFound")
    with pytest.raises(CalendarUnavailable):
        await source.changes(None)
    full = await source.changes(None)
    assert full is not None and sorted(by_uid(full)) == ["a"]


async def test_a_full_read_carries_the_mailbox_zone_and_working_hours_into_the_store(
    fake: FakeGraph, calls: BlockingCalls, tmp_path: Path
) -> None:
    from datetime import UTC, datetime

    from pbxcal.store import Store

    fake.put_event(MAILBOX, timed("e1", "333", 11))
    source = app_source(fake, calls)
    bare = await source.changes(None)  # no mailboxSettings in the fake yet: sync still works
    assert bare is not None and bare.working_hours is None and bare.calendar_tz is None
    fake.set_mailbox_settings(MAILBOX, {
        "timeZone": "W. Europe Standard Time",
        "workingHours": {
            "daysOfWeek": ["Monday", "Tuesday", "Thursday"],
            "startTime": "08:30:00.0000000", "endTime": "16:00:00.0000000",
            "timeZone": {"name": "Pacific Standard Time"},
        },
    })
    full = await source.changes(None)
    assert full is not None and full.full
    assert full.calendar_tz == "Europe/Berlin"
    assert full.working_hours == {
        "time_zone": "America/Los_Angeles", "days": ["monday", "tuesday", "thursday"],
        "start": "08:30", "end": "16:00",
    }
    fake.put_event(MAILBOX, timed("e2", "334", 12))
    increment = await source.changes(full.cursor)
    assert increment is not None and not increment.full and increment.working_hours is None

    with Store.open(f"sqlite:///{tmp_path / 'store.sqlite3'}") as store:
        link = store.add_link("100", "main", "graph", MAILBOX, {})
        now = datetime(2026, 3, 10, tzinfo=UTC)
        store.apply_changes(link.id, full, now)
        store.apply_changes(link.id, increment, now)  # an increment keeps what it does not say
        _, state = store.load_events(link.id)
    assert state is not None and state.calendar_tz == "Europe/Berlin"
    assert state.working_hours == full.working_hours


def test_outlook_zone_names_become_iana_zones() -> None:
    from pbxcal.calendars.graph.source import iana_zone

    assert iana_zone("W. Europe Standard Time") == "Europe/Berlin"
    assert iana_zone("Europe/Amsterdam") == "Europe/Amsterdam"
    assert iana_zone("Mars Standard Time") is None
    assert iana_zone("../../etc/passwd") is None
    assert iana_zone(None) is None
