"""``EwsCalendarSource`` driven by the real exchangelib against ``FakeEws`` (SOAP on
loopback): full and incremental sync through SyncFolderItems sync states, GetItem
MimeContent, a recurring series with a modified and a deleted occurrence, refused sync
states, basic auth, impersonation, ErrorServerBusy back-off, and the rows expanded by the
core (``join_calendar`` + ``expand_calendar``).
"""

from __future__ import annotations

import base64
import json
import logging
import socket
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo

import pytest
import requests.adapters
from exchangelib.protocol import BaseProtocol

from pbxcal.calendars.blocking import BlockingCalls
from pbxcal.calendars.changes import ChangeSet, EventRow
from pbxcal.calendars.ews import EwsCalendarSource, EwsSettings, connection, source
from pbxcal.calendars.snapshot import join_calendar
from pbxcal.core.ical import expand_calendar
from pbxcal.errors import (
    CalendarAuthFailed,
    CalendarError,
    CalendarRateLimited,
    CalendarUnavailable,
)
from pbxcal.store.records import StoredEvent
from pbxcal.testing.ews_fake import FakeEws

ALICE = "alice@example.org"
SERVICE = "svc-pbxcal"
PASSWORD = "s3cret-Pa55"
AMS = ZoneInfo("Europe/Amsterdam")

VTIMEZONE = (
    "BEGIN:VTIMEZONE\r\nTZID:W. Europe Standard Time\r\n"
    "BEGIN:STANDARD\r\nDTSTART:16010101T030000\r\nTZOFFSETFROM:+0200\r\nTZOFFSETTO:+0100\r\n"
    "RRULE:FREQ=YEARLY;INTERVAL=1;BYDAY=-1SU;BYMONTH=10\r\nEND:STANDARD\r\n"
    "BEGIN:DAYLIGHT\r\nDTSTART:16010101T020000\r\nTZOFFSETFROM:+0100\r\nTZOFFSETTO:+0200\r\n"
    "RRULE:FREQ=YEARLY;INTERVAL=1;BYDAY=-1SU;BYMONTH=3\r\nEND:DAYLIGHT\r\nEND:VTIMEZONE\r\n"
)
TZ = "TZID=W. Europe Standard Time"


def vcal(*events: str, zone: bool = False) -> str:
    head = "BEGIN:VCALENDAR\r\nMETHOD:PUBLISH\r\n"
    head += "PRODID:Microsoft Exchange Server 2010\r\nVERSION:2.0\r\n"
    return head + (VTIMEZONE if zone else "") + "".join(events) + "END:VCALENDAR\r\n"


def vevent(uid: str, title: str, start: str, end: str, *more: str) -> str:
    lines = [f"UID:{uid}", f"SUMMARY;LANGUAGE=en-US:{title}", f"DTSTART{start}", f"DTEND{end}"]
    lines += [*more, "TRANSP:OPAQUE", "DTSTAMP:20261101T100000Z"]
    return "BEGIN:VEVENT\r\n" + "".join(line + "\r\n" for line in lines) + "END:VEVENT\r\n"


def single(uid: str, title: str, day: int, hour: int = 9) -> str:
    start = f":202612{day:02d}T{hour:02d}0000Z"
    end = f":202612{day:02d}T{hour + 1:02d}0000Z"
    return vcal(vevent(uid, title, start, end))


# A weekly series on Mondays 09:00–10:00 Amsterdam time from 2026-12-07, four times; the
# 14th moved to 11:00 (modified occurrence), the 21st deleted (EXDATE), as Exchange
# exports a recurring master's MimeContent.
MASTER = vevent(
    "series-1",
    "+31201234567",
    f";{TZ}:20261207T090000",
    f";{TZ}:20261207T100000",
    "RRULE:FREQ=WEEKLY;COUNT=4;BYDAY=MO;WKST=MO",
    f"EXDATE;{TZ}:20261221T090000",
)
MOVED = vevent(
    "series-1",
    "+31201234567",
    f";{TZ}:20261214T110000",
    f";{TZ}:20261214T120000",
    f"RECURRENCE-ID;{TZ}:20261214T090000",
)
SERIES = vcal(MASTER, MOVED, zone=True)


@pytest.fixture
def fake() -> Iterator[FakeEws]:
    with FakeEws() as server:
        server.add_user(SERVICE, PASSWORD)
        server.add_mailbox(ALICE)
        server.allow_impersonation(SERVICE)
        yield server


@pytest.fixture
async def calls() -> AsyncIterator[BlockingCalls]:
    pool = BlockingCalls(workers=2)
    yield pool
    pool.close()


def make(
    calls: BlockingCalls, url: str, *, password: str = PASSWORD, **more: Any
) -> EwsCalendarSource:
    settings = EwsSettings(
        service_endpoint=url,
        mailbox=more.pop("mailbox", ALICE),
        username=more.pop("username", SERVICE),
        auth=more.pop("auth", "basic"),
        access=more.pop("access", "impersonation"),
        ca_bundle=more.pop("ca_bundle", None),
    )
    return EwsCalendarSource(calls, settings, password=password, timeout=5, deadline=20, **more)


def keys(change: ChangeSet) -> set[tuple[str, str | None]]:
    return {(r.uid, r.recurrence_id) for r in change.upserted}


def expand(rows: list[EventRow], timezones: str) -> list[tuple[str, datetime, datetime]]:
    stored = [StoredEvent(r.uid, r.recurrence_id, r.ical) for r in rows]
    calendar = join_calendar(stored, timezones, None, source="ews test")
    start = datetime(2026, 12, 1, tzinfo=UTC)
    expansion = expand_calendar(calendar, start, datetime(2027, 1, 1, tzinfo=UTC), AMS)
    assert expansion.skipped == []
    return sorted((i.title, i.start, i.end) for i in expansion.instances)


async def test_full_sync_rows_expand_to_the_series_instances(
    fake: FakeEws, calls: BlockingCalls
) -> None:
    fake.put_item(ALICE, "single-1", single("single-1", "+31207654321", 2))
    fake.put_item(ALICE, "series-1", SERIES)
    change = await make(calls, fake.url).changes(None)
    assert change is not None and change.full
    assert keys(change) == {
        ("single-1", None),
        ("series-1", None),
        ("series-1", f"{TZ}:20261214T090000"),
    }
    assert "TZID:W. Europe Standard Time" in change.timezones
    ams = [
        datetime(2026, 12, d, h, tzinfo=AMS).astimezone(UTC) for d, h in ((7, 9), (14, 11), (28, 9))
    ]
    assert expand(list(change.upserted), change.timezones) == sorted(
        [
            (
                "+31207654321",
                datetime(2026, 12, 2, 9, tzinfo=UTC),
                datetime(2026, 12, 2, 10, tzinfo=UTC),
            )
        ]
        + [("+31201234567", s, s.replace(hour=s.hour + 1)) for s in ams]
    )
    assert fake.operations() == ["GetFolder", "GetFolder", "SyncFolderItems", "GetItem"]


async def test_incremental_add_edit_delete_and_a_vanished_override(
    fake: FakeEws, calls: BlockingCalls
) -> None:
    fake.put_item(ALICE, "single-1", single("single-1", "+31207654321", 2))
    fake.put_item(ALICE, "series-1", SERIES)
    src = make(calls, fake.url)
    first = await src.changes(None)
    assert first is not None
    assert await src.changes(first.cursor) is None  # nothing changed

    fake.put_item(ALICE, "single-2", single("single-2", "+31301111111", 3))  # added
    fake.delete_item(ALICE, "single-1")  # deleted
    # the series edited: the moved occurrence moved back (its override is gone)
    fake.put_item(
        ALICE,
        "series-1",
        vcal(MASTER, zone=True),
    )
    second = await src.changes(first.cursor)
    assert second is not None and not second.full
    assert keys(second) == {("single-2", None), ("series-1", None)}
    assert second.removed == ("single-1",)
    assert second.removed_instances == (("series-1", f"{TZ}:20261214T090000"),)
    state = json.loads(second.cursor)
    assert sorted(uid for uid, _ in state["items"].values()) == ["series-1", "single-2"]

    fake.put_item(ALICE, "single-2", single("single-2", "+31302222222", 3))  # edited
    third = await src.changes(second.cursor)
    assert third is not None and not third.full
    assert [r.uid for r in third.upserted] == ["single-2"]
    assert "+31302222222" in third.upserted[0].ical
    assert third.removed == () and third.removed_instances == ()


async def test_refused_or_unreadable_cursor_means_a_full_read(
    fake: FakeEws, calls: BlockingCalls
) -> None:
    fake.put_item(ALICE, "single-1", single("single-1", "+31207654321", 2))
    src = make(calls, fake.url)
    first = await src.changes(None)
    assert first is not None
    fake.put_item(ALICE, "single-2", single("single-2", "+31301111111", 3))
    fake.expire_sync_states()
    again = await src.changes(first.cursor)
    assert again is not None and again.full
    assert keys(again) == {("single-1", None), ("single-2", None)}
    assert fake.operations()[-3:] == ["SyncFolderItems", "SyncFolderItems", "GetItem"]
    garbage = await src.changes("not json")
    assert garbage is not None and garbage.full and len(garbage.upserted) == 2


async def test_a_new_time_zone_in_an_incremental_round_means_a_full_read(
    fake: FakeEws, calls: BlockingCalls
) -> None:
    fake.put_item(ALICE, "single-1", single("single-1", "+31207654321", 2))
    src = make(calls, fake.url)
    first = await src.changes(None)
    assert first is not None and first.timezones == ""
    fake.put_item(ALICE, "series-1", SERIES)
    second = await src.changes(first.cursor)
    assert second is not None and second.full
    assert "W. Europe Standard Time" in second.timezones


async def test_sync_pages_through_max_changes_returned(
    fake: FakeEws, calls: BlockingCalls, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(source, "SYNC_PAGE", 2)
    monkeypatch.setattr(source, "FETCH_BATCH", 3)
    for n in range(5):
        fake.put_item(ALICE, f"e{n}", single(f"e{n}", "+3120000000" + str(n), 2 + n))
    change = await make(calls, fake.url).changes(None)
    assert change is not None and {r.uid for r in change.upserted} == {f"e{n}" for n in range(5)}
    assert fake.operations().count("SyncFolderItems") == 3
    assert fake.operations().count("GetItem") == 2


async def test_impersonation_header_on_every_request_and_delegate_without(
    fake: FakeEws, calls: BlockingCalls
) -> None:
    fake.put_item(ALICE, "single-1", single("single-1", "+31207654321", 2))
    assert await make(calls, fake.url).changes(None) is not None
    assert fake.requests and all(r.impersonated == ALICE for r in fake.requests)
    assert all("<t:ExchangeImpersonation>" in r.body for r in fake.requests)

    fake.add_user(ALICE, "alice-pw")
    fake.requests.clear()
    own = make(calls, fake.url, username=ALICE, password="alice-pw", access="delegate")
    change = await own.changes(None)
    assert change is not None and keys(change) == {("single-1", None)}
    assert all(r.impersonated is None and r.user == ALICE for r in fake.requests)


async def test_impersonation_refused_is_auth_failed(fake: FakeEws, calls: BlockingCalls) -> None:
    fake.add_user("bob", "bob-pw")
    src = make(calls, fake.url, username="bob", password="bob-pw")
    with pytest.raises(CalendarAuthFailed, match="impersonate"):
        await src.check()


async def test_wrong_password_is_auth_failed_without_the_password(
    fake: FakeEws, calls: BlockingCalls
) -> None:
    src = make(calls, fake.url, password="wrong-Pa55")
    with pytest.raises(CalendarAuthFailed) as caught:
        await src.check()
    assert "wrong-Pa55" not in str(caught.value)
    with pytest.raises(CalendarAuthFailed):
        await src.changes(None)


async def test_check_passes_for_good_settings(fake: FakeEws, calls: BlockingCalls) -> None:
    await make(calls, fake.url).check()
    assert fake.operations() == ["GetFolder", "GetFolder"]


async def test_unknown_mailbox_is_a_plain_error(fake: FakeEws, calls: BlockingCalls) -> None:
    with pytest.raises(CalendarError, match="no such mailbox"):
        await make(calls, fake.url, mailbox="nobody@example.org").check()


async def test_unreachable_server_is_unavailable(calls: BlockingCalls) -> None:
    with socket.socket() as bound:  # bound, never listening: connections are refused
        bound.bind(("127.0.0.1", 0))
        port = bound.getsockname()[1]
        src = make(calls, f"http://127.0.0.1:{port}/EWS/Exchange.asmx")
        with pytest.raises(CalendarUnavailable, match="cannot be reached"):
            await src.check()


async def test_server_busy_is_rate_limited_with_the_back_off(
    fake: FakeEws, calls: BlockingCalls
) -> None:
    fake.put_item(ALICE, "single-1", single("single-1", "+31207654321", 2))
    src = make(calls, fake.url)
    fake.fail_next(1, back_off_ms=29999)
    with pytest.raises(CalendarRateLimited) as caught:
        await src.changes(None)
    assert caught.value.retry_after == pytest.approx(29.999)
    assert len(fake.requests) == 1  # FailFast: exchangelib did not retry by itself
    change = await src.changes(None)
    assert change is not None and keys(change) == {("single-1", None)}


def test_ca_bundle_is_used_for_its_endpoint_only(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[Any] = []

    def send(self: Any, request: Any, *args: Any, **kwargs: Any) -> Any:
        seen.append(kwargs.get("verify"))
        return None

    monkeypatch.setattr(requests.adapters.HTTPAdapter, "send", send)
    settings = EwsSettings(
        "https://mail.example.test/EWS/Exchange.asmx",
        ALICE,
        SERVICE,
        ca_bundle="/etc/pbxcal/ca.pem",
    )
    connection.make_account(settings, PASSWORD, timeout=5)
    adapter = connection._VerifyingAdapter()
    for url in (
        "https://mail.example.test/EWS/Exchange.asmx",
        "https://other.example.test/EWS/Exchange.asmx",
    ):
        request = requests.Request("POST", url).prepare()
        adapter.send(request, verify=True)
    system = "/etc/ssl/certs/ca-certificates.crt"  # what requests makes of REQUESTS_CA_BUNDLE
    for url in ("https://mail.example.test/x", "https://other.example.test/x"):
        adapter.send(requests.Request("POST", url).prepare(), verify=system)
    assert seen == ["/etc/pbxcal/ca.pem", True, "/etc/pbxcal/ca.pem", system]


def test_endpoint_with_user_info_is_refused() -> None:
    settings = EwsSettings("https://svc:pw@mail.example.test/EWS/Exchange.asmx", ALICE, SERVICE)
    with pytest.raises(CalendarError) as caught:
        connection.make_account(settings, PASSWORD, timeout=5)
    assert "pw@" not in str(caught.value)


async def test_tls_verified_with_the_configured_ca_bundle(calls: BlockingCalls) -> None:
    with FakeEws(tls=True) as server:
        server.add_user(SERVICE, PASSWORD)
        server.add_mailbox(ALICE)
        server.allow_impersonation(SERVICE)
        server.put_item(ALICE, "single-1", single("single-1", "+31207654321", 2))
        untrusted = make(calls, server.url)
        with pytest.raises(CalendarUnavailable, match="TLS verification"):
            await untrusted.check()
        assert server.requests == []  # nothing was sent to the unverified server
        trusted = make(calls, server.url, ca_bundle=server.ca_file)
        change = await trusted.changes(None)
        assert change is not None and keys(change) == {("single-1", None)}


async def test_wrong_url_path_is_a_plain_error(fake: FakeEws, calls: BlockingCalls) -> None:
    wrong = fake.url.replace("/EWS/Exchange.asmx", "/owa/")
    with pytest.raises(CalendarError) as caught:
        await make(calls, wrong).check()
    print(type(caught.value), caught.value)


async def test_ntlm_handshake_with_impersonation(
    calls: BlockingCalls, monkeypatch: pytest.MonkeyPatch
) -> None:
    with FakeEws(ntlm=True) as server:
        server.add_user("EXAMPLE\\svc-pbxcal", PASSWORD)
        server.add_mailbox(ALICE)
        server.allow_impersonation("EXAMPLE\\svc-pbxcal")
        server.put_item(ALICE, "single-1", single("single-1", "+31207654321", 2))
        monkeypatch.setenv("NTLM_USER_FILE", server.ntlm_user_file)
        wrong = make(
            calls, server.url, username="EXAMPLE\\svc-pbxcal", password="nope", auth="ntlm"
        )
        with pytest.raises(CalendarAuthFailed):
            await wrong.check()
        good = make(calls, server.url, username="EXAMPLE\\svc-pbxcal", auth="ntlm")
        change = await good.changes(None)
        assert change is not None and keys(change) == {("single-1", None)}
        served = [r for r in server.requests if r.user is not None]
        assert [r.operation for r in served] == [
            "GetFolder",
            "GetFolder",
            "SyncFolderItems",
            "GetItem",
        ]
        assert {r.user for r in served} == {"EXAMPLE\\svc-pbxcal"}
        assert all(r.impersonated == ALICE for r in served)


async def test_credentials_never_reach_the_logs(
    fake: FakeEws, calls: BlockingCalls, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    fake.put_item(ALICE, "single-1", single("single-1", "+31207654321", 2))
    with pytest.raises(CalendarAuthFailed):
        await make(calls, fake.url, password="wrong-Pa55").changes(None)
    fake.fail_next(1)
    with pytest.raises(CalendarRateLimited):
        await make(calls, fake.url).changes(None)
    assert await make(calls, fake.url).changes(None) is not None
    assert "Request headers" in caplog.text  # exchangelib did log its headers...
    for secret in (PASSWORD, "wrong-Pa55"):
        for user in (SERVICE,):
            basic = base64.b64encode(f"{user}:{secret}".encode()).decode()
            assert basic not in caplog.text  # ...without the Authorization value
        assert secret not in caplog.text


async def test_a_call_still_running_in_its_thread_blocks_the_next(
    fake: FakeEws, calls: BlockingCalls
) -> None:
    src = make(calls, fake.url)
    src._busy.acquire()  # as if a call that timed out were still running
    with pytest.raises(CalendarUnavailable, match="still running"):
        await src.changes(None)
    assert fake.requests == []
    src._busy.release()
    assert await src.changes(None) is not None


async def test_cancelled_and_free_items_from_their_fields(
    fake: FakeEws, calls: BlockingCalls
) -> None:
    fake.put_item(ALICE, "busy", single("busy", "+31201111111", 2))
    fake.put_item(ALICE, "free", single("free", "+31202222222", 3), free_busy="Free")
    fake.put_item(ALICE, "gone", single("gone", "+31203333333", 4), cancelled=True)
    change = await make(calls, fake.url).changes(None)
    assert change is not None
    by_uid = {r.uid: r.ical for r in change.upserted}
    assert "TRANSP:TRANSPARENT" in by_uid["free"] and "TRANSP:OPAQUE" in by_uid["busy"]
    assert "STATUS:CANCELLED" in by_uid["gone"]
    stored = [StoredEvent(r.uid, r.recurrence_id, r.ical) for r in change.upserted]
    calendar = join_calendar(stored, "", None, source="ews test")
    start = datetime(2026, 12, 1, tzinfo=UTC)
    expansion = expand_calendar(calendar, start, datetime(2027, 1, 1, tzinfo=UTC), AMS)
    assert sorted((i.title, i.transparent) for i in expansion.instances) == [
        ("+31201111111", False),
        ("+31202222222", True),
    ]


async def test_a_uid_deleted_and_created_again_keeps_its_uid_and_drops_old_overrides(
    fake: FakeEws, calls: BlockingCalls
) -> None:
    old_id = fake.put_item(ALICE, "series-1", SERIES)
    src = make(calls, fake.url)
    first = await src.changes(None)
    assert first is not None
    fake.delete_item(ALICE, "series-1")
    new_id = fake.put_item(ALICE, "series-1", vcal(MASTER, zone=True))
    assert new_id != old_id
    second = await src.changes(first.cursor)
    assert second is not None and not second.full
    assert second.removed == ()
    assert keys(second) == {("series-1", None)}
    assert second.removed_instances == (("series-1", f"{TZ}:20261214T090000"),)
    assert len(json.loads(second.cursor)["items"]) == 1


async def test_server_busy_without_a_back_off_waits_exchangelibs_default(
    fake: FakeEws, calls: BlockingCalls
) -> None:
    fake.fail_next(1, back_off_ms=None)
    with pytest.raises(CalendarRateLimited) as caught:
        await make(calls, fake.url).check()
    # exchangelib fills in its own first retry wait when the server names none
    assert caught.value.retry_after == BaseProtocol.RETRY_WAIT
