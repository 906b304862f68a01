"""The portal's Google sign-in (``pbxcal.web.portal.oauth``) in-process: the real
``WebServer`` app on a loopback port, a real SQLite store, the real ``FakeGoogle``
(sign-in page, token endpoint that checks PKCE, revocation, calendarList), and an HTTP
client that plays the browser (cookies kept, redirects followed by hand so each step
can be looked at). The browser end-to-end test is tests/integration/test_portal_oauth.py
(a unit test may not share its basename: pytest imports test modules by basename).

Each refusal (state mismatch, replayed callback, expired flow, PKCE verifier mismatch,
denied consent, CSRF) is a clear page and leaves nothing stored: no link, no secret,
the invitation still open.
"""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from pbxcal.admin.invitations import create_invitation
from pbxcal.calendars.google.web_flow import WEB_SCOPES, pkce_challenge
from pbxcal.config import parse_config
from pbxcal.service.metrics import Metrics
from pbxcal.store import KeyRing, Store
from pbxcal.store.secrets import new_key
from pbxcal.testing.fakes import FakeClock
from pbxcal.testing.google_fake import FakeGoogle
from pbxcal.testing.ports import free_port
from pbxcal.web.server import WebServer

CLIENT_SECRET = "web-client-secret-never-shown"


@pytest.fixture
def google() -> Iterator[FakeGoogle]:
    with FakeGoogle() as fake:
        fake.add_calendar("anna@example.com", owner="anna@example.com", summary="Anna")
        fake.add_calendar("team@group.example.com", owner="anna@example.com", summary="Team")
        fake.add_calendar("bob@example.com", owner="bob@example.com", summary="Bob")
        fake.put_event("anna@example.com", _event("0612345678"))
        yield fake


@dataclass
class Portal:
    base: str
    store: Store
    google: FakeGoogle
    clock: FakeClock
    client: httpx.AsyncClient
    invitation_id: int
    invitation_url: str

    async def get(self, url: str) -> httpx.Response:
        return await self.client.get(url)

    async def post(self, url: str, data: dict[str, str]) -> httpx.Response:
        return await self.client.post(url, data=data)

    def links(self) -> list[Any]:
        return self.store.list_links()

    def invitation_open(self) -> bool:
        invitation = self.store.get_invitation(self.invitation_id)
        return invitation is not None and invitation.used_at is None


@pytest.fixture
async def portal(tmp_path: Path, google: FakeGoogle) -> AsyncIterator[Portal]:
    client_file = tmp_path / "google-web-client.json"
    client_file.write_text(json.dumps(google.add_web_client("web-1", CLIENT_SECRET)))
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    config = parse_config({
        "pbxcal": {"region": "NL", "timezone": "UTC"},
        "http": {"listen": f"127.0.0.1:{port}"},
        "pbx": {"main": {"host": "127.0.0.1", "username": "u", "secret_file": str(client_file),
                         "extensions": ["100"]}},
        "portal": {"public_url": base, "google": {
            "client_file": str(client_file), "revoke_uri": f"{google.base_url}/revoke",
            "api_endpoint": google.api_endpoint}},
    }, "test.toml")  # fmt: skip
    keys = KeyRing([new_key()])
    clock = FakeClock(datetime.now(UTC))
    with Store.open(f"sqlite:///{tmp_path / 'store.sqlite3'}", keys=keys) as store:
        server = WebServer(config, store, keys, Metrics(), None, {}, _ok, _ok, clock=clock)
        await server.start()
        invitation, url = create_invitation(store, config, "main", "100", created_by="test")
        async with httpx.AsyncClient(timeout=30) as client:
            yield Portal(base, store, google, clock, client, invitation.id, url)
        await server.stop()


def _ok() -> tuple[bool, dict[str, object]]:
    return True, {}


def _event(title: str) -> dict[str, Any]:
    start = datetime.now(UTC).replace(microsecond=0) + timedelta(hours=1)
    return {
        "summary": title,
        "start": {"dateTime": start.isoformat()},
        "end": {"dateTime": (start + timedelta(hours=1)).isoformat()},
    }


def _csrf(page: str) -> str:
    found = re.search(r'name="csrf_token" value="([^"]+)"', page)
    assert found, page
    return found.group(1)


async def _open_invitation(portal: Portal) -> str:
    """Open the invitation like a browser; the provider choice page's CSRF token."""
    answer = await portal.get(portal.invitation_url)
    while answer.is_redirect:
        answer = await portal.get(str(answer.next_request.url) if answer.next_request else "")
    assert answer.status_code == 200, answer.text
    assert "/oauth/google/start" in answer.text
    return _csrf(answer.text)


async def _start(portal: Portal, csrf: str) -> dict[str, str]:
    """POST start; the authorization request's query (the redirect to the fake)."""
    answer = await portal.post(f"{portal.base}/oauth/google/start", {"csrf_token": csrf})
    assert answer.status_code == 303, answer.text
    location = answer.headers["Location"]
    assert location.startswith(f"{portal.google.base_url}/auth?")
    return {key: values[0] for key, values in parse_qs(urlsplit(location).query).items()}


async def _sign_in_page(portal: Portal, request: dict[str, str], account: str,
                        answer: str = "allow") -> str:  # fmt: skip
    """The fake's sign-in page, shown and submitted; the callback URL it redirects to."""
    page = await portal.get(f"{portal.google.base_url}/auth?{httpx.QueryParams(request)}")
    assert page.status_code == 200 and account in page.text
    form = {**request, "fake_account": account, "fake_answer": answer}
    sent = await portal.post(f"{portal.google.base_url}/auth", form)
    assert sent.status_code == 302
    callback = sent.headers["Location"]
    assert callback.startswith(f"{portal.base}/oauth/google/callback?")
    return callback


async def _signed_in(portal: Portal, account: str = "anna@example.com") -> httpx.Response:
    """From the invitation to the calendar page."""
    csrf = await _open_invitation(portal)
    request = await _start(portal, csrf)
    callback = await _sign_in_page(portal, request, account)
    answer = await portal.get(callback)
    assert answer.status_code == 303, answer.text
    assert answer.headers["Location"] == "/oauth/google/calendars"
    page = await portal.get(f"{portal.base}/oauth/google/calendars")
    assert page.status_code == 200, page.text
    return page


def _nothing_stored(portal: Portal) -> None:
    assert portal.links() == []
    assert portal.invitation_open()


# -- the happy path --------------------------------------------------------------------------


async def test_sign_in_shows_the_account_and_links_the_picked_calendar(portal: Portal) -> None:
    page = await _signed_in(portal)
    assert "You are linking anna@example.com" in page.text
    assert 'value="anna@example.com"' in page.text and 'value="team@group.example.com"' in page.text
    assert "bob@example.com" not in page.text  # only the signed-in account's calendars
    [authorization] = portal.google.authorizations
    assert authorization["code_challenge_method"] == "S256"
    assert authorization["access_type"] == "offline" and "consent" in authorization["prompt"]
    assert authorization["scope"].split() == list(WEB_SCOPES)
    assert authorization["redirect_uri"] == f"{portal.base}/oauth/google/callback"
    answer = await portal.post(
        f"{portal.base}/oauth/google/calendars",
        {"csrf_token": _csrf(page.text), "calendar": "anna@example.com"},
    )
    assert answer.status_code == 303 and answer.headers["Location"] == "/status"
    [link] = portal.links()
    assert (link.provider, link.source, link.extension, link.active) == (
        "google", "anna@example.com", "100", True)
    assert link.settings["auth"] == "user" and link.settings["account"] == "anna@example.com"
    stored = json.loads(portal.store.load_secret(link.id, "google-credentials") or b"{}")
    assert stored["client_id"] == "web-1" and stored["refresh_token"].startswith("refresh-")
    assert not portal.invitation_open()
    assert CLIENT_SECRET not in page.text and stored["refresh_token"] not in page.text


async def test_not_you_revokes_the_grant_and_signs_in_again(portal: Portal) -> None:
    page = await _signed_in(portal, "bob@example.com")
    assert "You are linking bob@example.com" in page.text
    # "not you?": a POST to start with the page's CSRF token
    request = await _start(portal, _csrf(page.text))
    assert len(portal.google.revoked) == 1 and portal.google.revoked[0].startswith("refresh-")
    callback = await _sign_in_page(portal, request, "anna@example.com")
    assert (await portal.get(callback)).status_code == 303
    page = await portal.get(f"{portal.base}/oauth/google/calendars")
    assert "You are linking anna@example.com" in page.text
    answer = await portal.post(
        f"{portal.base}/oauth/google/calendars",
        {"csrf_token": _csrf(page.text), "calendar": "anna@example.com"},
    )
    assert answer.status_code == 303
    [link] = portal.links()
    assert link.settings["account"] == "anna@example.com"


# -- refusals: a clear page, nothing stored --------------------------------------------------


async def test_state_mismatch_is_refused(portal: Portal) -> None:
    csrf = await _open_invitation(portal)
    request = await _start(portal, csrf)
    callback = await _sign_in_page(portal, request, "anna@example.com")
    forged = re.sub(r"state=[^&]+", "state=forged-state", callback)
    answer = await portal.get(forged)
    assert answer.status_code == 400
    assert "This sign-in cannot be used" in answer.text
    assert portal.google.requests["token"] == 0  # the code was never redeemed
    _nothing_stored(portal)


async def test_replayed_callback_is_refused(portal: Portal) -> None:
    csrf = await _open_invitation(portal)
    request = await _start(portal, csrf)
    callback = await _sign_in_page(portal, request, "anna@example.com")
    assert (await portal.get(callback)).status_code == 303
    tokens = portal.google.requests["token"]
    again = await portal.get(callback)
    assert again.status_code == 400 and "This sign-in cannot be used" in again.text
    assert portal.google.requests["token"] == tokens  # not redeemed a second time
    _nothing_stored(portal)


async def test_expired_flow_is_refused(portal: Portal) -> None:
    csrf = await _open_invitation(portal)
    request = await _start(portal, csrf)
    callback = await _sign_in_page(portal, request, "anna@example.com")
    portal.clock.advance(timedelta(minutes=16))
    answer = await portal.get(callback)
    assert answer.status_code == 400 and "older than 15 minutes" in answer.text
    assert portal.google.requests["token"] == 0
    _nothing_stored(portal)


async def test_a_tampered_pkce_verifier_is_refused_by_the_token_endpoint(
    portal: Portal, monkeypatch: pytest.MonkeyPatch
) -> None:
    """pbxcal sends the verifier whose S256 challenge went to the authorization endpoint
    (the fake checks it); a different verifier is refused there and nothing is stored."""
    from pbxcal.calendars.google import web_flow

    sent: list[str] = []
    real_post = web_flow._post

    async def post(url: str, form: Any, *args: Any) -> httpx.Response:
        if "code_verifier" in form:
            sent.append(form["code_verifier"])
            form = {**form, "code_verifier": form["code_verifier"][:-1] + "X"}
        return await real_post(url, form, *args)

    monkeypatch.setattr(web_flow, "_post", post)
    csrf = await _open_invitation(portal)
    request = await _start(portal, csrf)
    callback = await _sign_in_page(portal, request, "anna@example.com")
    answer = await portal.get(callback)
    [verifier] = sent
    assert len(verifier) >= 43 and pkce_challenge(verifier) == request["code_challenge"]
    assert answer.status_code == 403
    assert "refused the sign-in" in answer.text and "invalid_grant" in answer.text
    _nothing_stored(portal)


async def test_denied_consent_is_a_clear_page(portal: Portal) -> None:
    csrf = await _open_invitation(portal)
    request = await _start(portal, csrf)
    callback = await _sign_in_page(portal, request, "anna@example.com", answer="deny")
    assert "error=access_denied" in callback
    answer = await portal.get(callback)
    assert answer.status_code == 403 and "You did not allow access at Google" in answer.text
    assert portal.google.requests["token"] == 0
    _nothing_stored(portal)


async def test_callback_in_another_browser_is_refused(portal: Portal) -> None:
    """The flow is bound to the browser that started it (its ``pbxcal_oauth`` cookie):
    a callback URL sent to someone else (same invitation, other browser) is refused."""
    csrf = await _open_invitation(portal)
    request = await _start(portal, csrf)
    callback = await _sign_in_page(portal, request, "anna@example.com")
    portal.client.cookies.delete("pbxcal_oauth")
    answer = await portal.get(callback)
    assert answer.status_code == 400
    assert portal.google.requests["token"] == 0
    _nothing_stored(portal)


async def test_start_without_csrf_token_changes_nothing(portal: Portal) -> None:
    await _open_invitation(portal)
    answer = await portal.post(f"{portal.base}/oauth/google/start", {"csrf_token": "wrong"})
    assert answer.status_code == 403
    assert portal.google.authorizations == [] and portal.store.take_flow("x") is None
    _nothing_stored(portal)


async def test_pick_without_csrf_or_with_a_foreign_calendar_links_nothing(portal: Portal) -> None:
    page = await _signed_in(portal)
    refused = await portal.post(
        f"{portal.base}/oauth/google/calendars", {"csrf_token": "x", "calendar": "anna@example.com"}
    )
    assert refused.status_code == 403
    foreign = await portal.post(
        f"{portal.base}/oauth/google/calendars",
        {"csrf_token": _csrf(page.text), "calendar": "bob@example.com"},
    )
    assert foreign.status_code == 400 and "Please pick one of the calendars" in foreign.text
    _nothing_stored(portal)
    # the grant is still there for a right pick
    answer = await portal.post(
        f"{portal.base}/oauth/google/calendars",
        {"csrf_token": _csrf(foreign.text), "calendar": "team@group.example.com"},
    )
    assert answer.status_code == 303
    assert [link.source for link in portal.links()] == ["team@group.example.com"]


async def test_calendar_page_without_a_sign_in_is_a_clear_page(portal: Portal) -> None:
    await _open_invitation(portal)
    answer = await portal.get(f"{portal.base}/oauth/google/calendars")
    assert answer.status_code == 410 and "Your sign-in has expired" in answer.text
    async with httpx.AsyncClient() as stranger:
        no_session = await stranger.get(f"{portal.base}/oauth/google/callback?state=x")
    assert no_session.status_code == 403


async def test_a_grant_waiting_too_long_is_revoked_and_the_page_says_sign_in_again(
    portal: Portal,
) -> None:
    page = await _signed_in(portal)
    portal.clock.advance(timedelta(minutes=11))
    answer = await portal.post(
        f"{portal.base}/oauth/google/calendars",
        {"csrf_token": _csrf(page.text), "calendar": "anna@example.com"},
    )
    assert answer.status_code == 410 and "Your sign-in has expired" in answer.text
    assert len(portal.google.revoked) == 1
    _nothing_stored(portal)


async def test_callbacks_are_rate_limited_per_address(portal: Portal) -> None:
    await _open_invitation(portal)
    statuses = [
        (await portal.get(f"{portal.base}/oauth/google/callback?state=guess{n}")).status_code
        for n in range(31)
    ]
    assert statuses[:30] == [400] * 30 and statuses[30] == 429
    _nothing_stored(portal)


async def test_an_invitation_that_expired_meanwhile_starts_no_sign_in(portal: Portal) -> None:
    csrf = await _open_invitation(portal)
    portal.clock.advance(timedelta(hours=73))
    answer = await portal.post(f"{portal.base}/oauth/google/start", {"csrf_token": csrf})
    assert answer.status_code in (403, 410)  # the 2-hour session or the invitation ended
    assert portal.google.authorizations == []
    _nothing_stored(portal)
