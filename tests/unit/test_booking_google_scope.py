"""Google grants and booking write-back: the scope a grant holds decides (FakeGoogle, the
real google-auth, google-auth-oauthlib and google-api-python-client):

* the CLI's ``links authorize google`` (``run_installed_app_flow``) and the portal's Google
  sign-in ask for ``calendar.events`` and record what Google granted (``scopes`` in the
  authorized-user JSON); such a grant syncs and books;
* a grant made before (``calendar.events.readonly``, no ``scopes`` recorded) keeps
  syncing with its own scope (the fake refuses a refresh asking for more with
  ``invalid_scope``, as Google does), and booking into it is refused with
  ``READ_ONLY_GOOGLE_GRANT``: no booking row stays and no event is written; a grant that
  records read-only scopes is refused before any request at all;
* the fake gives a token issued for reading only Google's 403 ``insufficientPermissions``
  on ``events.insert`` (what made the old write-back fail at the real Google), and the
  write-back maps that answer to the same message;
* a service account whose domain-wide delegation lacks ``calendar.events``: the sync
  reads, a booking gets Google's ``unauthorized_client`` as ``DELEGATION_READ_ONLY``.
"""

from __future__ import annotations

import asyncio
import json
import threading
import urllib.parse
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httplib2  # type: ignore[import-untyped]
import pytest
from google.auth.exceptions import RefreshError
from google_auth_httplib2 import AuthorizedHttp  # type: ignore[import-untyped]

from pbxcal.booking import book
from pbxcal.booking.agents import add_agent
from pbxcal.booking.model import Booking, LinkUnsuitable, ProviderFailed
from pbxcal.booking.writeback import (
    DELEGATION_READ_ONLY,
    READ_ONLY_GOOGLE_GRANT,
    GoogleCalendar,
    calendar_for,
)
from pbxcal.calendars.blocking import BlockingCalls
from pbxcal.calendars.google import (
    CALENDAR_SCOPE,
    WRITE_SCOPE,
    GoogleCalendarSource,
    delegated_credentials,
    grant_can_write,
    user_credentials,
)
from pbxcal.calendars.google.authorize import run_installed_app_flow
from pbxcal.calendars.google.web_flow import WEB_SCOPES, begin, finish, web_client
from pbxcal.calendars.providers import SECRET_GOOGLE
from pbxcal.config import Config, parse_config
from pbxcal.service.metrics import Metrics
from pbxcal.store import KeyRing, Link, Store
from pbxcal.store.secrets import new_key
from pbxcal.testing.fakes import FakeClock
from pbxcal.testing.google_fake import FakeGoogle
from pbxcal.web import WebContext
from pbxcal.web.i18n import Templates

CALENDAR = "dana@example.com"
SECRET = "desktop-secret-7"
NOW = datetime(2026, 11, 30, 7, 0, tzinfo=UTC)  # a Monday, 08:00 in Amsterdam
START = datetime(2026, 11, 30, 9, 0, tzinfo=UTC)  # 10:00 in Amsterdam


@pytest.fixture
def google(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeGoogle]:
    # oauthlib refuses a token endpoint without TLS; the fake is plain HTTP on loopback.
    monkeypatch.setenv("OAUTHLIB_INSECURE_TRANSPORT", "1")
    with FakeGoogle() as fake:
        fake.add_calendar(CALENDAR)
        fake.put_event(CALENDAR, {"id": "e1", "summary": "Customer call",
                                  "start": {"dateTime": "2026-11-30T13:00:00Z"},
                                  "end": {"dateTime": "2026-11-30T14:00:00Z"}})  # fmt: skip
        yield fake


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    with Store.open(f"sqlite:///{tmp_path / 'store.sqlite3'}", KeyRing([new_key()])) as opened:
        yield opened


@pytest.fixture
def config(tmp_path: Path) -> Config:
    secret_file = tmp_path / "secret"
    secret_file.write_text("ami-secret\n")
    secret_file.chmod(0o600)
    return parse_config({
        "pbxcal": {"region": "NL", "timezone": "Europe/Amsterdam"},
        "http": {"listen": "127.0.0.1:1"},
        "pbx": {"main": {"host": "127.0.0.1", "username": "u", "secret_file": str(secret_file),
                         "extensions": ["100"]}},
    }, "test.toml")  # fmt: skip


def cli_grant(google: FakeGoogle, granted: tuple[str, ...] | None = None) -> dict[str, Any]:
    """A grant from the CLI's installed-app flow, the user's browser on its own thread
    (``granted``: what Google grants when not what was asked)."""
    client = google.add_client("desktop-1", SECRET)

    def browser(url: str) -> None:
        target = google.consent(url, account=CALENDAR, granted=granted)

        def follow() -> None:
            with urllib.request.urlopen(target, timeout=10) as answer:  # noqa: S310 - loopback
                answer.read()

        threading.Thread(target=follow, daemon=True).start()

    return run_installed_app_flow(client, browser, timeout=20)


def old_grant(google: FakeGoogle) -> dict[str, Any]:
    """A grant made before bookings were written: read-only, no ``scopes`` recorded."""
    info: dict[str, Any] = google.add_user("desktop-1", SECRET, "refresh-old", (CALENDAR_SCOPE,))
    assert "scopes" not in info
    return info


def link_of(store: Store, google: FakeGoogle, info: dict[str, Any], **extra: Any) -> Link:
    link = store.add_link(
        "100",
        "main",
        "google",
        CALENDAR,
        {"auth": "user", "api_endpoint": google.api_endpoint, **extra},
    )
    store.save_secret(link.id, SECRET_GOOGLE, json.dumps(info))
    return link


def meeting() -> Booking:
    return Booking(id=1, agent_id="dana", start=START, end=START + timedelta(minutes=30),
                   subject="Quote", guest_name="Gail", guest_email="gail@example.org",
                   uid="q-1@pbxcal", sequence=0, status="confirmed")  # fmt: skip


def booked(google: FakeGoogle) -> list[dict[str, Any]]:
    with google._lock:
        return [dict(e) for e in google._calendars[CALENDAR].events.values()
                if str(e.get("iCalUID", "")).endswith("@pbxcal")]  # fmt: skip


def synced_uids(google: FakeGoogle, credentials: Any) -> list[str]:
    async def run() -> list[str]:
        calls = BlockingCalls(1)
        try:
            source = GoogleCalendarSource(credentials, CALENDAR, calls=calls,
                                          api_endpoint=google.api_endpoint)  # fmt: skip
            change_set = await source.changes(None)
            assert change_set is not None
            return sorted(row.uid for row in change_set.upserted)
        finally:
            calls.close()

    return asyncio.run(run())


def test_the_cli_grant_asks_for_calendar_events_records_it_syncs_and_books(
    google: FakeGoogle, store: Store
) -> None:
    info = cli_grant(google)
    assert google.authorizations[-1]["scope"].split() == [WRITE_SCOPE]
    assert info["scopes"] == [WRITE_SCOPE] and grant_can_write(info) is True
    assert synced_uids(google, user_credentials(info)) == ["e1"]  # the sync: its own scope
    created = asyncio.run(calendar_for(store, link_of(store, google, info)).create(meeting(), b""))
    [event] = booked(google)
    assert event["id"] == created.event_id and event["iCalUID"] == "q-1@pbxcal"
    assert created.join_url is not None and google.requests["insufficientPermissions"] == 0


def test_a_cli_grant_given_more_than_asked_records_what_google_granted(
    google: FakeGoogle, store: Store
) -> None:
    # include_granted_scopes: the client's earlier read-only grant comes along; oauthlib
    # calls that a changed scope (a Warning carrying the token), taken as granted
    info = cli_grant(google, granted=(CALENDAR_SCOPE, WRITE_SCOPE))
    assert sorted(info["scopes"]) == sorted([CALENDAR_SCOPE, WRITE_SCOPE])
    assert grant_can_write(info) is True and info["refresh_token"].startswith("refresh-")
    created = asyncio.run(calendar_for(store, link_of(store, google, info)).create(meeting(), b""))
    assert [e["id"] for e in booked(google)] == [created.event_id]


async def test_a_portal_grant_without_the_events_box_records_it_and_books_nothing(
    google: FakeGoogle, store: Store
) -> None:
    client = web_client(google.add_web_client("web-1", "web-secret"))
    url, flow = begin(client, "http://127.0.0.1:1/cb")
    listing = "https://www.googleapis.com/auth/calendar.calendarlist.readonly"
    back = google.consent(url, account=CALENDAR, granted=(CALENDAR_SCOPE, listing))
    info = await finish(
        client, flow, dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(back).query))
    )
    assert sorted(info["scopes"]) == sorted([CALENDAR_SCOPE, listing])
    assert grant_can_write(info) is False
    with pytest.raises(ProviderFailed) as caught:
        calendar_for(store, link_of(store, google, info))
    assert str(caught.value) == READ_ONLY_GOOGLE_GRANT and google.requests["events.insert"] == 0


async def test_the_portal_sign_in_asks_for_calendar_events_and_records_the_grant(
    google: FakeGoogle,
) -> None:
    client = web_client(google.add_web_client("web-1", "web-secret"))
    url, flow = begin(client, "http://127.0.0.1:1/cb")
    asked = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(url).query))["scope"].split()
    assert WRITE_SCOPE in asked and CALENDAR_SCOPE not in asked and list(WEB_SCOPES) == asked
    assert "https://www.googleapis.com/auth/calendar.calendarlist.readonly" in asked
    back = google.consent(url, account=CALENDAR)
    info = await finish(
        client, flow, dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(back).query))
    )
    assert sorted(info["scopes"]) == sorted(WEB_SCOPES) and grant_can_write(info) is True
    # its refresh asks for exactly what it holds: the fake would refuse more
    credentials = user_credentials(info)
    assert sorted(credentials.scopes) == sorted(WEB_SCOPES)  # type: ignore[attr-defined]


def test_an_old_read_only_grant_keeps_syncing_with_its_own_scope(google: FakeGoogle) -> None:
    info = old_grant(google)
    assert grant_can_write(info) is None
    credentials = user_credentials(info)
    assert credentials.scopes == [CALENDAR_SCOPE]  # type: ignore[attr-defined]
    assert synced_uids(google, credentials) == ["e1"]
    # asking such a grant for more is what Google refuses (so the sync must not)
    wider = user_credentials(info, (WRITE_SCOPE,))
    with pytest.raises(RefreshError, match="invalid_scope"):
        wider.refresh(_request())


def test_booking_into_an_old_grant_is_refused_and_nothing_is_booked(
    google: FakeGoogle, store: Store, config: Config
) -> None:
    link = link_of(store, google, old_grant(google))
    add_agent(store, config, "dana", pbx="main", extension="100", name="Dana",
              booking_link_id=link.id,
              settings={"timezone": "Europe/Amsterdam", "min_notice_minutes": 0})  # fmt: skip
    ctx = WebContext(config=config, store=store, keys=None, sync=None, clock=FakeClock(NOW),
                     metrics=Metrics(), templates=Templates(("en",)))  # fmt: skip
    with pytest.raises(ProviderFailed) as caught:
        asyncio.run(book(ctx, "dana", start=START, duration_minutes=30, subject="Quote",
                         guest_name="Gail", guest_email="gail@example.org"))  # fmt: skip
    assert str(caught.value) == READ_ONLY_GOOGLE_GRANT
    assert store.list_bookings("dana", NOW - timedelta(days=1)) == []  # the row taken back
    assert booked(google) == [] and google.requests["events.insert"] == 0  # nothing sent


def test_a_grant_recording_read_only_scopes_is_refused_before_any_request(
    google: FakeGoogle, store: Store
) -> None:
    reading = (CALENDAR_SCOPE, "https://www.googleapis.com/auth/calendar.calendarlist.readonly")
    info = {**google.add_user("web-1", SECRET, "refresh-read", reading), "scopes": list(reading)}
    assert grant_can_write(info) is False
    with pytest.raises(ProviderFailed) as caught:
        calendar_for(store, link_of(store, google, info))
    assert str(caught.value) == READ_ONLY_GOOGLE_GRANT and google.requests["token"] == 0
    assert synced_uids(google, user_credentials(info)) == ["e1"]  # it still reads


def test_a_grant_recording_read_only_scopes_is_refused_as_booking_calendar(
    google: FakeGoogle, store: Store, config: Config
) -> None:
    """``agents add`` says it when the calendar is chosen, without asking Google; a grant
    that records nothing (older) cannot tell and is taken (the booking will say)."""
    reading = (CALENDAR_SCOPE,)
    info = {**google.add_user("web-1", SECRET, "refresh-read", reading), "scopes": list(reading)}
    link = link_of(store, google, info)
    with pytest.raises(LinkUnsuitable) as caught:
        add_agent(store, config, "dana", pbx="main", extension="100", name="Dana",
                  booking_link_id=link.id)  # fmt: skip
    assert str(caught.value) == f"link {link.id}: {READ_ONLY_GOOGLE_GRANT}"
    assert google.requests["token"] == 0 and store.list_agents() == []
    old = store.add_link("101", "main", "google", CALENDAR,
                         {"auth": "user", "api_endpoint": google.api_endpoint})  # fmt: skip
    store.save_secret(old.id, SECRET_GOOGLE, json.dumps(old_grant(google)))
    add_agent(store, config, "dana", pbx="main", extension="100", name="Dana",
              booking_link_id=old.id)  # fmt: skip


def test_a_read_only_token_gets_403_insufficient_permissions_and_the_message(
    google: FakeGoogle, store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    info = google.add_user("desktop-1", SECRET, "refresh-any")  # a grant that holds anything
    from googleapiclient import discovery  # type: ignore[import-untyped]
    from googleapiclient.errors import HttpError  # type: ignore[import-untyped]

    # what the write-back did before: a token for reading only, then events.insert
    service = discovery.build("calendar", "v3", http=httplib2.Http(timeout=10),
                              client_options={"api_endpoint": google.api_endpoint},
                              static_discovery=True, cache_discovery=False)  # fmt: skip
    http = AuthorizedHttp(user_credentials(info, (CALENDAR_SCOPE,)), http=httplib2.Http(timeout=10))
    with pytest.raises(HttpError) as refused:
        service.events().insert(
            calendarId=CALENDAR,
            body={
                "start": {"dateTime": "2026-11-30T09:00:00Z"},
                "end": {"dateTime": "2026-11-30T09:30:00Z"},
            },
        ).execute(http=http, num_retries=0)
    assert refused.value.resp.status == 403
    error = json.loads(refused.value.content)["error"]
    assert error["message"] == "Request had insufficient authentication scopes."
    assert error["errors"][0]["reason"] == "insufficientPermissions"
    assert error["status"] == "PERMISSION_DENIED"
    assert error["details"][0]["reason"] == "ACCESS_TOKEN_SCOPE_INSUFFICIENT"
    assert "insufficient_scope" in refused.value.resp["www-authenticate"]
    # the write-back, made to ask for reading only, answers the one-line message
    import pbxcal.calendars.google as google_package

    monkeypatch.setattr(google_package, "WRITE_SCOPE", CALENDAR_SCOPE)
    calendar = GoogleCalendar(link_of(store, google, info), info)
    with pytest.raises(ProviderFailed) as caught:
        asyncio.run(calendar.create(meeting(), b""))
    assert str(caught.value) == READ_ONLY_GOOGLE_GRANT and booked(google) == []
    assert google.requests["insufficientPermissions"] == 2


def test_domain_wide_delegation_without_calendar_events_is_a_clear_refusal(
    google: FakeGoogle, store: Store
) -> None:
    key = google.add_service_account("sync@project.iam.gserviceaccount.com", (CALENDAR_SCOPE,))
    assert synced_uids(google, delegated_credentials(key, CALENDAR)) == ["e1"]  # reads
    link = store.add_link(
        "100",
        "main",
        "google",
        CALENDAR,
        {"auth": "service_account", "subject": CALENDAR, "api_endpoint": google.api_endpoint},
    )
    store.save_secret(link.id, SECRET_GOOGLE, json.dumps(key))
    with pytest.raises(ProviderFailed) as caught:
        asyncio.run(calendar_for(store, link).create(meeting(), b""))
    assert str(caught.value) == DELEGATION_READ_ONLY and "\n" not in str(caught.value)
    assert booked(google) == [] and google.requests["events.insert"] == 0
    # the admin adds calendar.events: the same link books
    allowed = google.add_service_account("book@project.iam.gserviceaccount.com",
                                         (CALENDAR_SCOPE, WRITE_SCOPE))  # fmt: skip
    store.save_secret(link.id, SECRET_GOOGLE, json.dumps(allowed))
    created = asyncio.run(calendar_for(store, link).create(meeting(), b""))
    assert [e["id"] for e in booked(google)] == [created.event_id]
    assert google.assertions[-1]["scope"] == WRITE_SCOPE


def _request() -> Any:
    from google.auth.transport.requests import Request

    return Request()
