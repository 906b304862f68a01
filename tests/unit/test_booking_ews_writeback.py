"""The booking write-back into an on-premises Exchange link (``calendar_for`` of an ``ews``
link → ``EwsCalendar`` → ``EwsItems``), driven by the real exchangelib against ``FakeEws``
(SOAP on loopback), with the link's credentials stored encrypted in a SQLite store as
``links add`` stores them.

Shown: create → one item with the booking's UID, subject, times, busy, the guest as
attendee, and ``SendToNone`` (Exchange mails nobody); the event id is the item id and its
change key; update → the same item with new times, also with the stored (now stale) change
key; delete → gone, and a second delete is fine; errors are one-line ``ProviderFailed``
without the password (wrong password, a mailbox the account may only read, an item
deleted meanwhile, the server busy); the daemon's own ``EwsCalendarSource`` is used when
given (its settings, no second read of the secret); an OAuth link writes with the app's
token; a customer's (guarded) link is refused where the portal's allowed networks do not
reach.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import icalendar
import pytest

from pbxcal.booking.model import Booking, ProviderFailed
from pbxcal.booking.writeback import EwsCalendar, calendar_for
from pbxcal.calendars.blocking import BlockingCalls
from pbxcal.calendars.ews import EwsCalendarSource, EwsSettings
from pbxcal.calendars.ews.items import EwsItemRef
from pbxcal.calendars.providers import SECRET_EWS_CLIENT, SECRET_EWS_PASSWORD
from pbxcal.net.guard import AddressGuard
from pbxcal.store import KeyRing, Link, Store
from pbxcal.store.secrets import new_key
from pbxcal.testing.ews_fake import FakeEws

SERVICE = "svc-pbxcal"
PASSWORD = "s3cret-Ews-7"
MAILBOX = "erik@example.org"
START = datetime(2026, 12, 7, 9, 0, tzinfo=UTC)


@pytest.fixture
def exchange() -> Iterator[FakeEws]:
    with FakeEws() as server:
        server.add_user(SERVICE, PASSWORD)
        server.add_mailbox(MAILBOX)
        server.allow_impersonation(SERVICE)
        yield server


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    with Store.open(f"sqlite:///{tmp_path / 'pbxcal.db'}", KeyRing([new_key()])) as opened:
        yield opened


def ews_link(
    store: Store, exchange: FakeEws, password: str = PASSWORD, extension: str = "102",
    **more: object,
) -> Link:  # fmt: skip
    settings = {"mailbox": MAILBOX, "username": SERVICE, "auth": "basic",
                "access": "impersonation", **more}  # fmt: skip
    link = store.add_link(extension, "main", "ews", exchange.url, settings)
    store.save_secret(link.id, SECRET_EWS_PASSWORD, password)
    return link


def booking(start: datetime = START, uid: str = "b-1@pbxcal") -> Booking:
    return Booking(id=1, agent_id="erik", start=start, end=start + timedelta(minutes=30),
                   subject="Boiler service", guest_name="Gail", guest_email="gail@example.org",
                   uid=uid, sequence=0, status="confirmed")  # fmt: skip


def vevent(exchange: FakeEws, uid: str) -> icalendar.Event:
    (event,) = icalendar.Calendar.from_ical(exchange.items(MAILBOX)[uid]).walk("VEVENT")
    return event


def bodies(exchange: FakeEws, operation: str) -> list[str]:
    return [r.body for r in exchange.requests if r.operation == operation]


def test_create_move_and_delete_one_item_without_meeting_mail(
    exchange: FakeEws, store: Store
) -> None:
    calendar = calendar_for(store, ews_link(store, exchange))
    assert isinstance(calendar, EwsCalendar)
    created = asyncio.run(calendar.create(booking(), b""))
    assert created.join_url is None
    ref = EwsItemRef.parse(created.event_id)
    assert ref.changekey and ref.text == created.event_id
    event = vevent(exchange, "b-1@pbxcal")
    assert str(event["SUMMARY"]) == "Boiler service" and str(event["TRANSP"]) == "OPAQUE"
    assert event.decoded("DTSTART") == START
    assert event.decoded("DTEND") == START + timedelta(minutes=30)
    assert str(event["ATTENDEE"]) == "mailto:gail@example.org"
    assert "gail@example.org" in str(event["DESCRIPTION"])
    (create,) = bodies(exchange, "CreateItem")
    assert 'SendMeetingInvitations="SendToNone"' in create and "<t:UID>b-1@pbxcal</t:UID>" in create

    later = START + timedelta(hours=2)
    asyncio.run(calendar.update(created.event_id, booking(later), b""))
    # the stored id's change key is stale now: AlwaysOverwrite still writes
    asyncio.run(calendar.update(created.event_id, booking(later + timedelta(hours=1)), b""))
    assert list(exchange.items(MAILBOX)) == ["b-1@pbxcal"]  # one item, moved twice
    assert vevent(exchange, "b-1@pbxcal").decoded("DTSTART") == later + timedelta(hours=1)
    updates = bodies(exchange, "UpdateItem")
    assert len(updates) == 2
    for update in updates:
        assert 'ConflictResolution="AlwaysOverwrite"' in update
        assert 'SendMeetingInvitationsOrCancellations="SendToNone"' in update

    asyncio.run(calendar.delete(created.event_id))
    assert exchange.items(MAILBOX) == {}
    asyncio.run(calendar.delete(created.event_id))  # gone already: not an error
    deletes = bodies(exchange, "DeleteItem")
    assert len(deletes) == 2 and all('SendMeetingCancellations="SendToNone"' in d for d in deletes)
    assert exchange.sent == []  # Exchange would have mailed nobody


def fails(calendar: EwsCalendar, action: str, event_id: str = "") -> str:
    with pytest.raises(ProviderFailed) as caught:
        if action == "create":
            asyncio.run(calendar.create(booking(), b""))
        else:
            asyncio.run(calendar.update(event_id, booking(), b""))
    message = str(caught.value)
    assert "\n" not in message and PASSWORD not in message
    return message


def test_errors_are_one_line_provider_failures(exchange: FakeEws, store: Store) -> None:
    wrong = calendar_for(store, ews_link(store, exchange, "not-the-password", "103"))
    assert isinstance(wrong, EwsCalendar)
    assert "refused the user name or password" in fails(wrong, "create")

    calendar = calendar_for(store, ews_link(store, exchange))
    assert isinstance(calendar, EwsCalendar)
    exchange.deny_writes(MAILBOX)
    assert "denied" in fails(calendar, "create")
    assert exchange.items(MAILBOX) == {}
    exchange.deny_writes(MAILBOX, False)

    exchange.fail_next(1, back_off_ms=5000)
    assert "busy" in fails(calendar, "create")

    gone = EwsItemRef("QUFNay1nb25l", "1").text
    assert "ErrorItemNotFound" in fails(calendar, "update", gone)


def test_the_daemons_source_is_written_through(exchange: FakeEws, store: Store) -> None:
    # the stored password is wrong: only the daemon's source (the right one) can write
    link = ews_link(store, exchange, "a-stale-password")
    settings = EwsSettings(exchange.url, MAILBOX, SERVICE, auth="basic", access="impersonation")
    calls = BlockingCalls(workers=1, name="test-ews")
    try:
        source = EwsCalendarSource(calls, settings, password=PASSWORD)
        calendar = calendar_for(store, link, source=source)
        created = asyncio.run(calendar.create(booking(uid="b-2@pbxcal"), b""))
        assert created.event_id and list(exchange.items(MAILBOX)) == ["b-2@pbxcal"]
    finally:
        calls.close()


def test_an_oauth_link_writes_with_the_apps_token(store: Store) -> None:
    with FakeEws(tls=True) as server:
        server.add_app("contoso.example", "app-7", "client-secret-9")
        server.add_mailbox(MAILBOX)
        server.allow_impersonation("app-7")
        link = store.add_link("104", "main", "ews", server.url, {
            "mailbox": MAILBOX, "auth": "oauth", "access": "impersonation",
            "tenant": "contoso.example", "client_id": "app-7",
            "authority_host": server.origin, "ca_bundle": server.ca_file})  # fmt: skip
        store.save_secret(link.id, SECRET_EWS_CLIENT, "client-secret-9")
        created = asyncio.run(calendar_for(store, link).create(booking(uid="o-1@pbxcal"), b""))
        assert created.event_id and list(server.items(MAILBOX)) == ["o-1@pbxcal"]
        assert {r.user for r in server.requests if r.operation == "CreateItem"} == {"app-7"}


def test_a_customers_link_writes_only_where_the_guard_allows(store: Store) -> None:
    with FakeEws(tls=True) as server:
        server.add_user(SERVICE, PASSWORD)
        server.add_mailbox(MAILBOX)
        server.allow_impersonation(SERVICE)
        guarded = ews_link(store, server, guarded=True, ca_bundle=server.ca_file)
        with pytest.raises(ProviderFailed) as caught:
            calendar_for(store, guarded, AddressGuard(()))  # loopback is not allowed
        assert "refused" in str(caught.value) and server.requests == []
        allowed = calendar_for(store, guarded, AddressGuard(["127.0.0.0/8"]))
        asyncio.run(allowed.create(booking(uid="c-1@pbxcal"), b""))
        assert list(server.items(MAILBOX)) == ["c-1@pbxcal"]
