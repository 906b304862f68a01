"""GoogleCalendarSource driven by the real google-api-python-client and google-auth
against ``FakeGoogle``, a protocol-level fake of Calendar v3 and the OAuth token endpoint
on loopback: paging, sync tokens, 410 resync, error mapping, service-account delegation.
"""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

from pbxcal.calendars.blocking import BlockingCalls
from pbxcal.calendars.changes import ChangeSet
from pbxcal.calendars.google import (
    GoogleCalendarSource,
    delegated_credentials,
    user_credentials,
)
from pbxcal.errors import (
    CalendarAuthFailed,
    CalendarError,
    CalendarNeedsRelink,
    CalendarRateLimited,
    CalendarUnavailable,
)
from pbxcal.testing.google_fake import FakeGoogle

SECRET = "client-secret-do-not-print"
REFRESH = "refresh-token-do-not-print"


def timed(event_id: str, title: str, day: int, hour: int = 9) -> dict[str, Any]:
    return {
        "id": event_id,
        "summary": title,
        "start": {"dateTime": f"2026-03-{day:02d}T{hour:02d}:00:00+01:00",
                  "timeZone": "Europe/Amsterdam"},
        "end": {"dateTime": f"2026-03-{day:02d}T{hour + 1:02d}:00:00+01:00",
                "timeZone": "Europe/Amsterdam"},
    }


@pytest.fixture
def fake() -> Iterator[FakeGoogle]:
    with FakeGoogle() as server:
        server.add_calendar("primary")
        yield server


@pytest.fixture
async def calls() -> AsyncIterator[BlockingCalls]:
    pool = BlockingCalls(4)
    yield pool
    pool.close()


def source_for(fake: FakeGoogle, calls: BlockingCalls, **options: Any) -> GoogleCalendarSource:
    info = fake.add_user("client-1", SECRET, REFRESH)
    return GoogleCalendarSource(
        user_credentials(info), calls=calls, api_endpoint=fake.api_endpoint, **options
    )


def by_key(change_set: ChangeSet) -> dict[tuple[str, str | None], str]:
    return {(row.uid, row.recurrence_id): row.ical for row in change_set.upserted}


async def test_full_sync_pages_then_nothing_changed(
    fake: FakeGoogle, calls: BlockingCalls
) -> None:
    for n in range(5):
        fake.put_event("primary", timed(f"e{n}", f"33{n}", 10 + n))
    source = source_for(fake, calls, page_size=2)
    first = await source.changes(None)
    assert first is not None and first.full
    assert sorted(by_key(first)) == [(f"e{n}", None) for n in range(5)]
    assert first.calendar_tz == "Europe/Amsterdam"
    assert fake.requests["events.list"] == 3  # 2 + 2 + 1
    assert fake.requests["token"] == 1
    assert await source.changes(first.cursor) is None
    assert fake.requests["events.list"] == 4  # one request when nothing changed
    assert fake.requests["token"] == 1  # the access token is reused
    # An idle link holds no socket: thousands of links must not hold thousands of fds.
    assert fake.wait_until_no_connections()


async def test_incremental_edit_delete_exception_and_cancelled_instance(
    fake: FakeGoogle, calls: BlockingCalls
) -> None:
    series = {**timed("s", "333", 16), "recurrence": ["RRULE:FREQ=WEEKLY;BYDAY=MO"]}
    fake.put_event("primary", series)
    fake.put_event("primary", timed("one", "444", 17))
    fake.put_event("primary", timed("gone", "555", 18))
    source = source_for(fake, calls)
    full = await source.changes(None)
    assert full is not None and len(full.upserted) == 3

    fake.put_event("primary", timed("one", "666", 17, hour=11))  # edited
    fake.delete_event("primary", "gone")
    fake.put_event("primary", {  # a moved instance of the series
        **timed("s_20260323T080000Z", "777", 23, hour=14),
        "recurringEventId": "s",
        "originalStartTime": {"dateTime": "2026-03-23T09:00:00+01:00",
                              "timeZone": "Europe/Amsterdam"},
    })
    fake.cancel_instance("primary", "s", {"dateTime": "2026-03-30T09:00:00+02:00",
                                          "timeZone": "Europe/Amsterdam"})
    changed = await source.changes(full.cursor)
    assert changed is not None and not changed.full
    rows = by_key(changed)
    assert set(rows) == {("one", None), ("s", "20260323T080000Z"), ("s", "20260330T070000Z")}
    assert "SUMMARY:666" in rows[("one", None)]
    assert "DTSTART;TZID=Europe/Amsterdam:20260317T110000" in rows[("one", None)]
    assert "SUMMARY:777" in rows[("s", "20260323T080000Z")]
    assert "STATUS:CANCELLED" in rows[("s", "20260330T070000Z")]
    assert changed.removed == ("gone",)
    assert changed.cursor != full.cursor
    assert await source.changes(changed.cursor) is None


async def test_deleted_series_takes_its_overrides_along(
    fake: FakeGoogle, calls: BlockingCalls
) -> None:
    fake.put_event("primary", {**timed("s", "333", 16), "recurrence": ["RRULE:FREQ=DAILY"]})
    source = source_for(fake, calls)
    full = await source.changes(None)
    assert full is not None
    fake.cancel_instance("primary", "s", {"dateTime": "2026-03-17T09:00:00+01:00"})
    fake.delete_event("primary", "s")
    changed = await source.changes(full.cursor)
    assert changed is not None
    assert changed.removed == ("s",) and changed.upserted == ()


async def test_sync_token_gone_means_full_resync(fake: FakeGoogle, calls: BlockingCalls) -> None:
    fake.put_event("primary", timed("a", "333", 16))
    source = source_for(fake, calls)
    full = await source.changes(None)
    assert full is not None
    fake.put_event("primary", timed("b", "444", 17))
    fake.delete_event("primary", "a")
    fake.expire_sync_tokens()
    resync = await source.changes(full.cursor)
    assert resync is not None and resync.full
    assert sorted(by_key(resync)) == [("b", None)]  # the deleted one is simply absent
    assert resync.removed == ()
    assert await source.changes(resync.cursor) is None


async def test_workspace_delegation_sends_the_agent_as_subject(
    fake: FakeGoogle, calls: BlockingCalls
) -> None:
    fake.put_event("primary", timed("a", "333", 16))
    key = fake.add_service_account("pbxcal@project.iam.gserviceaccount.com")
    credentials = delegated_credentials(key, "agent@example.com")
    source = GoogleCalendarSource(credentials, calls=calls, api_endpoint=fake.api_endpoint)
    change_set = await source.changes(None)
    assert change_set is not None and [r.uid for r in change_set.upserted] == ["a"]
    [claims] = fake.assertions  # verified against the key's public half by the fake
    assert claims["sub"] == "agent@example.com"
    assert claims["iss"] == "pbxcal@project.iam.gserviceaccount.com"
    assert "calendar" in claims["scope"]


async def test_a_foreign_service_account_key_is_refused(
    fake: FakeGoogle, calls: BlockingCalls
) -> None:
    key = fake.add_service_account("pbxcal@project.iam.gserviceaccount.com")
    with FakeGoogle() as elsewhere:
        other = elsewhere.add_service_account("pbxcal@project.iam.gserviceaccount.com")
    forged = {**key, "private_key": other["private_key"]}  # same name, wrong key
    source = GoogleCalendarSource(
        delegated_credentials(forged, "agent@example.com"), calls=calls,
        api_endpoint=fake.api_endpoint,
    )
    with pytest.raises(CalendarNeedsRelink):
        await source.changes(None)
    assert fake.assertions == []


async def test_revoked_refresh_token_needs_relink(fake: FakeGoogle, calls: BlockingCalls) -> None:
    fake.revoke_refresh_tokens()
    source = source_for(fake, calls)
    with pytest.raises(CalendarNeedsRelink) as caught:
        await source.changes(None)
    assert SECRET not in str(caught.value) and REFRESH not in str(caught.value)


async def test_expired_access_token_is_refreshed_transparently(
    fake: FakeGoogle, calls: BlockingCalls
) -> None:
    fake.put_event("primary", timed("a", "333", 16))
    source = source_for(fake, calls)
    full = await source.changes(None)
    assert full is not None
    fake.expire_access_tokens()
    fake.put_event("primary", timed("b", "444", 17))
    changed = await source.changes(full.cursor)
    assert changed is not None and [r.uid for r in changed.upserted] == ["b"]
    assert fake.requests["token"] == 2


async def test_access_refused_after_refresh_is_auth_failed(
    fake: FakeGoogle, calls: BlockingCalls
) -> None:
    source = source_for(fake, calls)
    fake.fail_next(401, "authError", times=5)
    with pytest.raises(CalendarAuthFailed, match="401"):
        await source.changes(None)
    fake.fail_next(403, "forbidden")
    with pytest.raises(CalendarAuthFailed, match="403 forbidden"):
        await source.changes(None)


@pytest.mark.parametrize(
    ("status", "reason", "retry_after"),
    [
        (403, "rateLimitExceeded", None),
        (403, "userRateLimitExceeded", 7),
        (429, "rateLimitExceeded", 30),
    ],
)
async def test_rate_limits(
    fake: FakeGoogle, calls: BlockingCalls, status: int, reason: str, retry_after: int | None
) -> None:
    source = source_for(fake, calls)
    fake.fail_next(status, reason, retry_after=retry_after)
    with pytest.raises(CalendarRateLimited) as caught:
        await source.changes(None)
    assert caught.value.retry_after == retry_after
    assert await source.changes(None) is not None  # the next try works


async def test_rate_limit_on_a_later_page_keeps_nothing_half_read(
    fake: FakeGoogle, calls: BlockingCalls
) -> None:
    for n in range(3):
        fake.put_event("primary", timed(f"e{n}", "333", 10 + n))
    source = source_for(fake, calls, page_size=2)
    first = await source.changes(None)
    assert first is not None
    fake.put_event("primary", timed("new", "333", 20))
    fake.fail_next(429, "rateLimitExceeded")
    with pytest.raises(CalendarRateLimited):
        await source.changes(first.cursor)
    again = await source.changes(first.cursor)  # the same cursor still works
    assert again is not None and [r.uid for r in again.upserted] == ["new"]


@pytest.mark.parametrize("status", [500, 502, 503])
async def test_server_errors_are_unavailable(
    fake: FakeGoogle, calls: BlockingCalls, status: int
) -> None:
    source = source_for(fake, calls)
    fake.fail_next(status)
    with pytest.raises(CalendarUnavailable) as caught:
        await source.changes(None)
    assert not isinstance(caught.value, CalendarRateLimited)
    assert str(status) in str(caught.value)


async def test_unknown_calendar_is_a_calendar_error(
    fake: FakeGoogle, calls: BlockingCalls
) -> None:
    info = fake.add_user("client-1", SECRET, REFRESH)
    source = GoogleCalendarSource(
        user_credentials(info), "nobody@example.com", calls=calls,
        api_endpoint=fake.api_endpoint,
    )
    with pytest.raises(CalendarError, match="no such calendar") as caught:
        await source.changes(None)
    assert type(caught.value) is CalendarError


async def test_server_gone_is_unavailable(fake: FakeGoogle, calls: BlockingCalls) -> None:
    source = source_for(fake, calls)
    assert await source.changes(None) is not None
    fake.stop()
    with pytest.raises(CalendarUnavailable):
        await source.changes(None)


async def test_a_hanging_server_is_unavailable_within_the_timeout(
    calls: BlockingCalls,
) -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)  # accepts connections, never answers
        port = listener.getsockname()[1]
        info = {"client_id": "c", "client_secret": SECRET, "refresh_token": REFRESH,
                "token_uri": f"http://127.0.0.1:{port}/token"}
        source = GoogleCalendarSource(
            user_credentials(info), calls=calls,
            api_endpoint=f"http://127.0.0.1:{port}/calendar/v3/", timeout=1.0,
        )
        with pytest.raises(CalendarUnavailable) as caught:
            await source.changes(None)
        assert SECRET not in str(caught.value) and REFRESH not in str(caught.value)


def test_credentials_in_the_wrong_shape_are_refused_without_values() -> None:
    with pytest.raises(CalendarAuthFailed, match="missing refresh_token"):
        user_credentials({"client_id": "c", "client_secret": SECRET})
    with pytest.raises(CalendarAuthFailed, match="missing private_key"):
        delegated_credentials({"client_email": "a@b", "token_uri": "x"}, "agent@example.com")
    with FakeGoogle() as fake:
        key = fake.add_service_account("sa@p.iam.gserviceaccount.com")
    with pytest.raises(CalendarAuthFailed, match="e-mail"):
        delegated_credentials(key, "not an address")


async def test_a_refused_oauth_client_is_auth_failed(
    fake: FakeGoogle, calls: BlockingCalls
) -> None:
    info = {**fake.add_user("client-1", SECRET, REFRESH), "client_secret": "wrong"}
    source = GoogleCalendarSource(
        user_credentials(info), calls=calls, api_endpoint=fake.api_endpoint
    )
    with pytest.raises(CalendarAuthFailed, match="invalid_client") as caught:
        await source.changes(None)
    assert not isinstance(caught.value, CalendarNeedsRelink)
    assert REFRESH not in str(caught.value)


async def test_after_a_hang_the_next_sync_works_on_a_fresh_connection(
    fake: FakeGoogle, calls: BlockingCalls
) -> None:
    fake.put_event("primary", timed("a", "333", 16))
    source = source_for(fake, calls, timeout=1.5)
    release = fake.hold_next()
    try:
        with pytest.raises(CalendarUnavailable):
            await source.changes(None)
    finally:
        release.set()  # the hung thread gets its answer and finishes on its own
    change_set = await source.changes(None)
    assert change_set is not None and [r.uid for r in change_set.upserted] == ["a"]
