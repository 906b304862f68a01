"""Delegated Microsoft 365 grants and booking (the Graph fake over TLS, the real MSAL):

* the CLI's ``links authorize microsoft`` (``run_installed_app_flow``) and the portal's
  Microsoft sign-in ask for Calendars.ReadWrite; the grant says so (``grant_can_write``)
  and books into the calendar;
* a grant made before (Calendars.Read only) keeps reading with the scopes it holds (a
  refresh asks for no more), and booking into it is refused with the one-line
  ``READ_ONLY_GRANT`` (seen in the stored grant, before the write): no booking row
  stays, no event;
* where the cache cannot tell, Graph's 403 ``ErrorAccessDenied`` to the write gives the
  same message.
"""

from __future__ import annotations

import asyncio
import threading
import urllib.parse
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from pbxcal.booking import book
from pbxcal.booking.agents import add_agent, load_agent, set_agent
from pbxcal.booking.model import Booking, LinkUnsuitable, ProviderFailed
from pbxcal.booking.writeback import READ_ONLY_GRANT, GraphCalendar, calendar_for
from pbxcal.calendars.blocking import BlockingCalls
from pbxcal.calendars.graph import DelegatedTokens, GraphCalendarSource
from pbxcal.calendars.graph.authorize import Authorizer, run_installed_app_flow
from pbxcal.calendars.graph.tokens import READ_ONLY_SCOPES, grant_can_write
from pbxcal.calendars.providers import SECRET_GRAPH_TOKEN_CACHE
from pbxcal.config import Config, parse_config
from pbxcal.service.metrics import Metrics
from pbxcal.store import KeyRing, Link, Store
from pbxcal.store.secrets import new_key
from pbxcal.testing.fakes import FakeClock
from pbxcal.testing.graph_fake import TENANT, FakeGraph
from pbxcal.web import WebContext
from pbxcal.web.i18n import Templates
from pbxcal.web.portal.oauth_providers import MicrosoftSignIn

USER = "dana@contoso.com"
CLI_APP = "cli-app"
PORTAL_APP = "portal-app"
PORTAL_SECRET = "portal-secret-3f1"
REDIRECT = "http://localhost:8765/callback"
NOW = datetime(2026, 11, 30, 7, 0, tzinfo=UTC)  # a Monday, 08:00 in Amsterdam
START = datetime(2026, 11, 30, 9, 0, tzinfo=UTC)  # 10:00 in Amsterdam


@pytest.fixture
def graph() -> Iterator[FakeGraph]:
    with FakeGraph() as fake:
        fake.add_public_client(CLI_APP)
        fake.add_app(PORTAL_APP, PORTAL_SECRET)
        fake.add_mailbox(USER)
        yield fake


@pytest.fixture
def config(tmp_path: Path, graph: FakeGraph) -> Config:
    secret_file = tmp_path / "secret"
    secret_file.write_text(PORTAL_SECRET + "\n")
    secret_file.chmod(0o600)
    return parse_config({
        "pbxcal": {"region": "NL", "timezone": "Europe/Amsterdam"},
        "http": {"listen": "127.0.0.1:1"},
        "pbx": {"main": {"host": "127.0.0.1", "username": "u", "secret_file": str(secret_file),
                         "extensions": ["100"]}},
        "portal": {"public_url": "https://pbx.example.com", "microsoft": {
            "client_id": PORTAL_APP, "client_secret_file": str(secret_file), "tenant": TENANT,
            "authority_host": graph.authority_host, "graph_url": graph.graph_url,
            "ca_file": graph.ca_file}},
    }, "test.toml")  # fmt: skip


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    with Store.open(f"sqlite:///{tmp_path / 'store.sqlite3'}", KeyRing([new_key()])) as opened:
        yield opened


def scope_of(url: str) -> list[str]:
    query = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(url).query))
    return query["scope"].split()


def cli_grant(graph: FakeGraph, scopes: tuple[str, ...] | None = None) -> str:
    """A grant of the public CLI app: ``scopes`` None is what the CLI asks for."""
    if scopes is None:
        asked: list[str] = []

        def browser(url: str) -> None:  # the user's browser, on its own thread
            asked.extend(scope_of(url))
            threading.Thread(target=graph.sign_in, args=(url, USER), daemon=True).start()

        grant = run_installed_app_flow(CLI_APP, browser, tenant=TENANT, timeout=20,
                                       authority_host=graph.authority_host,
                                       ca_file=graph.ca_file)  # fmt: skip
        assert "https://graph.microsoft.com/Calendars.ReadWrite" in asked
        return grant.token_cache
    flow = Authorizer(CLI_APP, tenant=TENANT, authority_host=graph.authority_host,
                      ca_file=graph.ca_file, scopes=scopes)  # fmt: skip
    start = flow.begin(REDIRECT)
    redirect = graph.consent(start.url, USER)
    return flow.finish(start, dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(redirect).query)))


def delegated_link(store: Store, graph: FakeGraph, cache: str, extension: str = "100") -> Link:
    link = store.add_link(extension, "main", "graph", "me", {
        "auth": "delegated", "client_id": CLI_APP, "tenant": TENANT,
        "authority_host": graph.authority_host, "graph_url": graph.graph_url,
        "ca_file": graph.ca_file})  # fmt: skip
    store.save_secret(link.id, SECRET_GRAPH_TOKEN_CACHE, cache)
    return link


def meeting() -> Booking:
    return Booking(id=1, agent_id="dana", start=START, end=START + timedelta(minutes=30),
                   subject="Quote", guest_name="Gail", guest_email="gail@example.org",
                   uid="q-1@pbxcal", sequence=0, status="confirmed")  # fmt: skip


def events(graph: FakeGraph) -> list[dict[str, Any]]:
    with graph._lock:
        return [dict(e) for e in graph._mailboxes[USER].events.values()]


def test_the_cli_grant_asks_for_calendars_readwrite_and_books(
    graph: FakeGraph, store: Store
) -> None:
    cache = cli_grant(graph)
    assert grant_can_write(cache) is True
    calendar = calendar_for(store, delegated_link(store, graph, cache))
    created = asyncio.run(calendar.create(meeting(), b""))
    assert [e["id"] for e in events(graph)] == [created.event_id]
    assert graph.requests["events (create)"] == 1


def test_the_portal_sign_in_asks_for_calendars_readwrite(config: Config) -> None:
    assert config.portal is not None and config.portal.microsoft is not None
    begun = asyncio.run(MicrosoftSignIn(config.portal.microsoft).begin(
        "https://pbx.example.com/portal/oauth/microsoft/callback"))  # fmt: skip
    scopes = scope_of(begun.url)
    assert "https://graph.microsoft.com/Calendars.ReadWrite" in scopes
    assert "https://graph.microsoft.com/Calendars.Read" not in scopes


def test_an_old_read_only_grant_keeps_reading_with_its_own_scopes(graph: FakeGraph) -> None:
    cache = cli_grant(graph, READ_ONLY_SCOPES)
    assert grant_can_write(cache) is False
    tokens = DelegatedTokens(CLI_APP, cache, tenant=TENANT,
                             authority_host=graph.authority_host, ca_file=graph.ca_file)
    assert tokens.can_write is False
    before = graph.requests["token"]
    assert tokens.access_token(fresh=True)  # a refresh, asking for what the grant holds
    assert graph.requests["token"] == before + 1
    assert grant_can_write(tokens.serialize()) is False  # not Calendars.ReadWrite


def test_booking_into_a_read_only_grant_books_nothing(
    graph: FakeGraph, store: Store, config: Config
) -> None:
    read_only = cli_grant(graph, READ_ONLY_SCOPES)
    link = delegated_link(store, graph, cli_grant(graph))
    add_agent(store, config, "dana", pbx="main", extension="100", name="Dana",
              booking_link_id=link.id,
              settings={"timezone": "Europe/Amsterdam", "min_notice_minutes": 0})  # fmt: skip
    # an agent made before this version: its booking link's grant reads only
    store.save_secret(link.id, SECRET_GRAPH_TOKEN_CACHE, read_only)
    ctx = WebContext(config=config, store=store, keys=None, sync=None, clock=FakeClock(NOW),
                     metrics=Metrics(), templates=Templates(("en",)))  # fmt: skip
    with pytest.raises(ProviderFailed) as caught:
        asyncio.run(book(ctx, "dana", start=START, duration_minutes=30, subject="Quote",
                         guest_name="Gail", guest_email="gail@example.org"))  # fmt: skip
    assert str(caught.value) == READ_ONLY_GRANT
    assert store.list_bookings("dana", NOW - timedelta(days=1)) == []  # the row taken back
    assert events(graph) == [] and graph.requests["events (create)"] == 0  # nothing sent


def test_graphs_403_to_a_delegated_grant_is_the_read_only_message(
    graph: FakeGraph, store: Store
) -> None:
    link = delegated_link(store, graph, cli_grant(graph, READ_ONLY_SCOPES))
    calls = BlockingCalls(workers=1, name="test-graph")
    try:
        tokens = DelegatedTokens(CLI_APP, cli_grant(graph, READ_ONLY_SCOPES), tenant=TENANT,
                                 authority_host=graph.authority_host, ca_file=graph.ca_file)
        source = GraphCalendarSource(tokens, None, calls=calls, graph_url=graph.graph_url,
                                     ca_file=graph.ca_file)  # fmt: skip
        # past the grant check (the cache's verdict): Graph itself refuses the write
        calendar = GraphCalendar(source, store, link.id, delegated=True)
        with pytest.raises(ProviderFailed) as caught:
            asyncio.run(calendar.create(meeting(), b""))
        assert str(caught.value) == READ_ONLY_GRANT and events(graph) == []
        app_only = GraphCalendar(source, store, link.id, delegated=False)
        with pytest.raises(ProviderFailed) as other:
            asyncio.run(app_only.create(meeting(), b""))
        assert "403 ErrorAccessDenied" in str(other.value)  # not a grant to link again
    finally:
        calls.close()


def test_a_read_only_grant_is_refused_when_chosen_as_booking_calendar(
    graph: FakeGraph, store: Store, config: Config
) -> None:
    """``agents add`` / ``set --booking-link`` say it at once, not when a guest books;
    an agent already using such a link can still change its other settings."""
    read_only = delegated_link(store, graph, cli_grant(graph, READ_ONLY_SCOPES))
    writable = delegated_link(store, graph, cli_grant(graph), extension="101")
    with pytest.raises(LinkUnsuitable) as caught:
        add_agent(store, config, "dana", pbx="main", extension="100", name="Dana",
                  booking_link_id=read_only.id)  # fmt: skip
    assert str(caught.value) == f"link {read_only.id}: {READ_ONLY_GRANT}"
    assert store.list_agents() == []
    add_agent(store, config, "dana", pbx="main", extension="100", name="Dana",
              booking_link_id=writable.id)  # fmt: skip
    with pytest.raises(LinkUnsuitable):
        set_agent(store, "dana", booking_link_id=read_only.id)
    assert load_agent(store, "dana").booking_link_id == writable.id
    store.save_secret(writable.id, SECRET_GRAPH_TOKEN_CACHE, store.load_secret(
        read_only.id, SECRET_GRAPH_TOKEN_CACHE) or b"")  # fmt: skip
    changed = set_agent(store, "dana", settings={"min_notice_minutes": 60})
    assert changed.settings.min_notice_minutes == 60  # the link was chosen before
