"""The portal's Microsoft 365 sign-in in-process: the real ``WebServer`` app, a real
SQLite store, the real MSAL (``Authorizer`` as a confidential web app) against
``FakeGraph`` over TLS (sign-in page, token endpoint checking PKCE and the client
secret, ``/me/calendars``, calendarView delta), and an HTTP client as the browser.
"""

from __future__ import annotations

import asyncio
import json
import re
import ssl
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from pbxcal.admin.invitations import create_invitation
from pbxcal.config import parse_config
from pbxcal.service.metrics import Metrics
from pbxcal.store import KeyRing, Store
from pbxcal.store.secrets import new_key
from pbxcal.testing.fakes import FakeClock
from pbxcal.testing.graph_fake import TENANT, FakeGraph
from pbxcal.testing.ports import free_port
from pbxcal.web.server import WebServer

CLIENT = "portal-app"
SECRET = "portal-app-secret-never-shown"
USER = "anna@example.com"


@pytest.fixture
def graph() -> Iterator[FakeGraph]:
    with FakeGraph() as fake:
        fake.add_app(CLIENT, SECRET)
        for user in ("anna@example.com", "bob@example.com"):
            fake.add_mailbox(user)
        start = datetime.now(UTC).replace(microsecond=0, tzinfo=None) + timedelta(hours=1)
        fake.put_event(USER, {
            "id": "ev1", "subject": "0612345678", "showAs": "busy",
            "start": {"dateTime": start.isoformat(), "timeZone": "UTC"},
            "end": {"dateTime": (start + timedelta(hours=1)).isoformat(), "timeZone": "UTC"},
        })  # fmt: skip
        yield fake


@dataclass
class Portal:
    base: str
    store: Store
    graph: FakeGraph
    client: httpx.AsyncClient
    invitation_id: int
    invitation_url: str
    config: Any


@pytest.fixture
async def portal(tmp_path: Path, graph: FakeGraph) -> AsyncIterator[Portal]:
    secret_file = tmp_path / "entra-secret"
    secret_file.write_text(SECRET + "\n")
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    config = parse_config({
        "pbxcal": {"region": "NL", "timezone": "UTC"},
        "http": {"listen": f"127.0.0.1:{port}"},
        "pbx": {"main": {"host": "127.0.0.1", "username": "u", "secret_file": str(secret_file),
                         "extensions": ["100"]}},
        "portal": {"public_url": base, "microsoft": {
            "client_id": CLIENT, "client_secret_file": str(secret_file), "tenant": TENANT,
            "authority_host": graph.authority_host, "graph_url": graph.graph_url,
            "ca_file": graph.ca_file}},
    }, "test.toml")  # fmt: skip
    keys = KeyRing([new_key()])
    with Store.open(f"sqlite:///{tmp_path / 'store.sqlite3'}", keys=keys) as store:
        server = WebServer(config, store, keys, Metrics(), None, {}, _ok, _ok,
                           clock=FakeClock(datetime.now(UTC)))  # fmt: skip
        await server.start()
        invitation, url = create_invitation(store, config, "main", "100", created_by="test")
        verify = ssl.create_default_context(cafile=graph.ca_file)
        async with httpx.AsyncClient(timeout=30, verify=verify) as client:
            yield Portal(base, store, graph, client, invitation.id, url, config)
        await server.stop()


def _ok() -> tuple[bool, dict[str, object]]:
    return True, {}


def _csrf(page: str) -> str:
    found = re.search(r'name="csrf_token" value="([^"]+)"', page)
    assert found, page
    return found.group(1)


async def _sign_in(portal: Portal, account: str, *, allow: bool = True) -> httpx.Response:
    """Invitation → Microsoft 365 → the fake's sign-in page → the callback's answer."""
    answer = await portal.client.get(portal.invitation_url, follow_redirects=True)
    assert "/oauth/microsoft/start" in answer.text
    started = await portal.client.post(f"{portal.base}/oauth/microsoft/start",
                                       data={"csrf_token": _csrf(answer.text)})  # fmt: skip
    assert started.status_code == 303, started.text
    location = started.headers["Location"]
    assert location.startswith(f"{portal.graph.authority_host}/{TENANT}/oauth2/v2.0/authorize?")
    request = {k: v[0] for k, v in parse_qs(urlsplit(location).query).items()}
    assert request["code_challenge_method"] == "S256" and request["state"] and request["nonce"]
    page = await portal.client.get(location)
    assert page.status_code == 200 and account in page.text
    form = {**request, "fake_account": account, "fake_answer": "allow" if allow else "deny"}
    sent = await portal.client.post(location.split("?")[0], data=form)
    assert sent.status_code == 302
    callback = sent.headers["Location"]
    assert callback.startswith(f"{portal.base}/oauth/microsoft/callback?")
    return await portal.client.get(callback)


async def test_microsoft_sign_in_links_the_default_calendar_delegated(portal: Portal) -> None:
    answer = await _sign_in(portal, USER)
    assert answer.status_code == 303, answer.text
    page = await portal.client.get(f"{portal.base}/oauth/microsoft/calendars")
    assert page.status_code == 200 and f"You are linking {USER}" in page.text
    assert "Calendar" in page.text
    calendar = re.search(r'name="calendar" value="([^"]+)"', page.text)
    assert calendar is not None
    linked = await portal.client.post(
        f"{portal.base}/oauth/microsoft/calendars",
        data={"csrf_token": _csrf(page.text), "calendar": calendar.group(1)},
    )
    assert linked.status_code == 303 and linked.headers["Location"] == "/status", linked.text
    [link] = portal.store.list_links()
    assert (link.provider, link.source, link.active) == ("graph", "me", True)
    settings: dict[str, Any] = dict(link.settings)
    assert settings["auth"] == "delegated" and settings["account"] == USER
    assert settings["client_id"] == CLIENT and SECRET not in json.dumps(settings)
    cache = portal.store.load_secret(link.id, "graph-token-cache") or b""
    assert b"RefreshToken" in cache
    assert portal.graph.requests["delta"] >= 1  # read once before it was switched on
    # a later sync refreshes with the portal app's secret (a confidential client's
    # refresh token is refused without it): the link names the secret file
    from pbxcal.admin.operations import check_link_read

    portal.graph.expire_access_tokens()
    tokens = portal.graph.requests["token"]
    await asyncio.to_thread(check_link_read, link, portal.store, portal.config)
    assert portal.graph.requests["token"] == tokens + 1


async def test_microsoft_denied_sign_in_stores_nothing(portal: Portal) -> None:
    answer = await _sign_in(portal, USER, allow=False)
    assert answer.status_code == 403
    assert "You did not allow access at Microsoft 365" in answer.text
    assert portal.store.list_links() == []
    invitation = portal.store.get_invitation(portal.invitation_id)
    assert invitation is not None and invitation.used_at is None


async def test_microsoft_state_mismatch_stores_nothing(portal: Portal) -> None:
    answer = await portal.client.get(portal.invitation_url, follow_redirects=True)
    started = await portal.client.post(f"{portal.base}/oauth/microsoft/start",
                                       data={"csrf_token": _csrf(answer.text)})  # fmt: skip
    location = started.headers["Location"]
    request = {k: v[0] for k, v in parse_qs(urlsplit(location).query).items()}
    form = {**request, "fake_account": USER, "fake_answer": "allow"}
    sent = await portal.client.post(location.split("?")[0], data=form)
    forged = re.sub(r"state=[^&]+", "state=forged", sent.headers["Location"])
    refused = await portal.client.get(forged)
    assert refused.status_code == 400 and "This sign-in cannot be used" in refused.text
    assert portal.graph.requests["token"] == 0
    assert portal.store.list_links() == []
