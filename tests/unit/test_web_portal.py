"""The customer pages' safety rules, through the real aiohttp app and a real SQLite store.

Each refusal is a clear page and changes nothing: unknown, expired and reused
invitations; a missing, wrong, foreign or cross-site CSRF token on every form (CalDAV,
Exchange, unlink); a CalDAV or Exchange URL pointing at 127.0.0.1, 10.0.0.1 or
169.254.169.254 without ``allow_networks`` (and with it, the URL gets past the guard);
an altered, foreign-key or expired session cookie; too many invitation requests. Every
answer carries the security headers; the session cookie is Secure (on https),
HttpOnly and SameSite=Lax.
"""

from __future__ import annotations

import re
import sqlite3
import tomllib
from collections.abc import AsyncIterator, Callable
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from pbxcal.admin.invitations import create_invitation
from pbxcal.admin.tokens import hash_token
from pbxcal.config.loader import parse_config
from pbxcal.service.metrics import Metrics
from pbxcal.store import KeyRing, Store
from pbxcal.store.secrets import new_key
from pbxcal.testing.fakes import FakeClock
from pbxcal.web.cookies import COOKIE_NAME, CookieSealer, PortalSession
from pbxcal.web.server import WebServer

NOW = datetime(2026, 11, 23, 9, 0, tzinfo=UTC)
CSP = (
    "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; "
    "frame-ancestors 'none'; base-uri 'none'"
)


class Portal:
    """One portal app on a test server, its store and the sealer of its cookies."""

    def __init__(self, tmp_path: Path, *, public_url: str, allow: str = "[]") -> None:
        secret = tmp_path / "ami.secret"
        secret.write_text("x")
        secret.chmod(0o600)
        self.config = parse_config(
            tomllib.loads(
                f'[http]\nlisten = "127.0.0.1:1"\n'
                f'[portal]\npublic_url = "{public_url}"\nallow_networks = {allow}\n'
                f'[pbx.main]\nsecret_file = "{secret}"\nextensions = ["100", "101"]\n'
            ),
            "test.toml",
        )
        self.keys = KeyRing([new_key()])
        self.path = tmp_path / "store.sqlite3"
        self.store = Store.open(f"sqlite:///{self.path}", self.keys)
        self.clock = FakeClock(NOW)
        server = WebServer(
            self.config, self.store, self.keys, Metrics(), None, {},
            lambda: (True, {}), lambda: (True, {}), clock=self.clock,
        )  # fmt: skip
        [listener] = server.build()
        assert listener.app is not None
        self.app: web.Application = listener.app
        self.sealer = CookieSealer(self.keys, secure=False)

    def invitation(self, extension: str = "100") -> tuple[int, str]:
        invitation, url = create_invitation(
            self.store, self.config, "main", extension, created_by="test"
        )
        return invitation.id, url.rsplit("/", 1)[1]

    def session(self, **changes: Any) -> PortalSession:
        invitation_id, token = self.invitation()
        session = PortalSession.start(invitation_id, hash_token(token), "main", "100", NOW)
        return replace(session, **changes)

    def cookie(self, session: PortalSession) -> dict[str, str]:
        return {"Cookie": f"{COOKIE_NAME}={self.sealer.seal(session)}"}

    def counts(self) -> tuple[int, int]:
        """(links, secrets) in the store."""
        with sqlite3.connect(self.path) as db:
            links = db.execute("SELECT count(*) FROM links").fetchone()[0]
            secrets = db.execute("SELECT count(*) FROM secrets").fetchone()[0]
        return int(links), int(secrets)


@pytest.fixture
async def portal(tmp_path: Path) -> AsyncIterator[tuple[Portal, TestClient[Any, Any]]]:
    made = Portal(tmp_path, public_url="http://127.0.0.1:8080")
    async with TestClient(TestServer(made.app)) as client:
        yield made, client
    made.store.close()


PortalClient = tuple[Portal, "TestClient[Any, Any]"]


def csrf_of(page: str) -> str:
    found = re.search(r'name="csrf_token" value="([^"]+)"', page)
    assert found, page
    return found.group(1)


def assert_headers(response: Any, *, hsts: bool = False) -> None:
    headers = response.headers
    assert headers["Content-Security-Policy"] == CSP
    assert headers["X-Content-Type-Options"] == "nosniff"
    assert headers["Referrer-Policy"] == "no-referrer"
    assert headers["X-Frame-Options"] == "DENY"
    assert ("Strict-Transport-Security" in headers) is hsts


# -- invitations ------------------------------------------------------------------------------


async def test_an_invitation_starts_a_session_and_leaves_the_address_bar(
    portal: PortalClient,
) -> None:
    made, client = portal
    _, token = made.invitation()
    reply = await client.get(f"/i/{token}", allow_redirects=False)
    assert reply.status == 303 and reply.headers["Location"] == "/link"
    assert_headers(reply)
    page = await client.get("/link")
    text = await page.text()
    assert page.status == 200 and "Extension 100" in text
    assert "iCloud or another CalDAV calendar" in text
    assert "/oauth/google/start" not in text  # [portal.google] is not configured


@pytest.mark.parametrize(
    ("case", "status", "words"),
    [
        ("unknown", 404, "This invitation link is not known"),
        ("expired", 410, "This invitation has expired"),
        ("used", 410, "already used to link a calendar"),
    ],
)
async def test_refused_invitations_get_a_clear_page_and_no_session(
    portal: PortalClient, case: str, status: int, words: str
) -> None:
    made, client = portal
    token = "never-issued-token"
    if case == "expired":
        made.store.add_invitation(
            "main", "100", hash_token(token), email=None,
            expires_at=NOW - timedelta(seconds=1), created_by="test",
        )  # fmt: skip
    if case == "used":
        invitation_id, token = made.invitation()
        link = made.store.add_link("100", "main", "ics", "/tmp/x.ics", {})
        assert made.store.use_invitation(invitation_id, link.id)
    reply = await client.get(f"/i/{token}", allow_redirects=False)
    text = await reply.text()
    assert reply.status == status and words in text
    assert "Set-Cookie" not in reply.headers
    assert_headers(reply)
    follow = await client.get("/link")
    assert follow.status == 403 and "Open your invitation link" in await follow.text()


async def test_opening_invitations_is_rate_limited(portal: PortalClient) -> None:
    _, client = portal
    statuses = [(await client.get(f"/i/guess{n}")).status for n in range(31)]
    assert statuses[:30] == [404] * 30
    assert statuses[30] == 429
    reply = await client.get("/i/guess-more")
    assert reply.status == 429 and "Too many attempts" in await reply.text()


# -- CSRF on every form -------------------------------------------------------------------


FORMS: dict[str, dict[str, str]] = {
    "/link/caldav": {"url": "https://cal.example/", "username": "u", "password": "p"},
    "/link/exchange": {
        "url": "https://mail.example/EWS/Exchange.asmx",
        "mailbox": "a@example.com",
        "username": "u",
        "password": "p",
        "auth": "ntlm",
    },
    "/unlink": {},
}


@pytest.mark.parametrize("path", list(FORMS))
@pytest.mark.parametrize("attack", ["missing", "wrong", "foreign", "cross-site", "no-session"])
async def test_csrf_is_checked_on_every_form_and_nothing_changes(
    portal: PortalClient, path: str, attack: str
) -> None:
    made, client = portal
    link = made.store.add_link("100", "main", "ics", "/tmp/linked.ics", {})
    mine = made.session(link_id=link.id if path == "/unlink" else None)
    other = made.session()
    form = dict(FORMS[path])
    headers = made.cookie(mine)
    if attack == "wrong":
        form["csrf_token"] = "x" + mine.csrf[1:]
    elif attack == "foreign":
        form["csrf_token"] = other.csrf  # a real token, of another session
    elif attack == "cross-site":
        form["csrf_token"] = mine.csrf
        headers["Origin"] = "https://evil.example"
    elif attack == "no-session":
        form["csrf_token"] = mine.csrf
        headers = {}
    before = made.counts()
    reply = await client.post(path, data=form, headers=headers, allow_redirects=False)
    text = await reply.text()
    assert reply.status == 403, text
    expected = "Open your invitation link" if attack == "no-session" else "This form was refused"
    assert expected in text
    if attack != "no-session":
        assert "Nothing was changed" in text
    assert_headers(reply)
    assert made.counts() == before
    assert made.store.get_link(link.id) is not None


async def test_unlink_with_the_right_token_removes_the_link_and_reopens_the_invitation(
    portal: PortalClient,
) -> None:
    made, client = portal
    session = made.session()
    link = made.store.add_link("100", "main", "caldav", "https://cal.example/", {})
    made.store.save_secret(link.id, "caldav-password", b"pw")
    assert made.store.use_invitation(session.invitation_id, link.id)
    mine = replace(session, link_id=link.id)
    reply = await client.post(
        "/unlink", data={"csrf_token": mine.csrf}, headers=made.cookie(mine),
        allow_redirects=False,
    )  # fmt: skip
    assert reply.status == 303 and reply.headers["Location"] == "/link?unlinked=1"
    assert made.counts() == (0, 0)
    invitation = made.store.get_invitation(session.invitation_id)
    assert invitation is not None and invitation.used_at is None
    reopened = made.sealer.open(reply.cookies[COOKIE_NAME].value, NOW)
    assert reopened is not None and reopened.link_id is None


# -- customer URLs: the SSRF guard --------------------------------------------------------


@pytest.mark.parametrize("path", ["/link/caldav", "/link/exchange"])
@pytest.mark.parametrize(
    "url",
    [
        "https://127.0.0.1:8443/dav/",
        "https://10.0.0.1/dav/",
        "https://169.254.169.254/latest/meta-data/",
        "http://cal.example/dav/",
    ],
)
async def test_a_url_to_a_private_address_is_refused_and_nothing_stored(
    portal: PortalClient, path: str, url: str
) -> None:
    made, client = portal
    session = made.session()
    form = {**FORMS[path], "url": url, "csrf_token": session.csrf}
    reply = await client.post(path, data=form, headers=made.cookie(session))
    text = await reply.text()
    assert reply.status == 400
    assert "This address cannot be used" in text
    assert 'value="' + url.replace("&", "&amp;") + '"' in text  # what was typed is kept
    assert 'name="password"' in text and 'value="p"' not in text  # the password is not
    assert made.counts() == (0, 0)


async def test_allow_networks_lets_a_loopback_url_past_the_guard(tmp_path: Path) -> None:
    made = Portal(tmp_path, public_url="http://127.0.0.1:8080", allow='["127.0.0.0/8"]')
    session = made.session()
    form = {**FORMS["/link/caldav"], "url": "https://127.0.0.1:9/dav/", "csrf_token": session.csrf}
    async with TestClient(TestServer(made.app)) as client:
        reply = await client.post("/link/caldav", data=form, headers=made.cookie(session))
        text = await reply.text()
    assert reply.status == 400
    assert "This address cannot be used" not in text  # the guard let it through ...
    assert "could not be reached" in text  # ... and the first read failed: nothing stored
    assert made.counts() == (0, 0)
    made.store.close()


@pytest.mark.parametrize(
    ("field", "value", "words"),
    [("username", "", "Please fill in: User name."), ("username", "a\nb", "does not look right")],
)
async def test_bad_fields_reshow_the_form(
    portal: PortalClient, field: str, value: str, words: str
) -> None:
    made, client = portal
    session = made.session()
    form = {**FORMS["/link/caldav"], field: value, "csrf_token": session.csrf}
    reply = await client.post("/link/caldav", data=form, headers=made.cookie(session))
    assert reply.status == 400 and words in await reply.text()
    assert made.counts() == (0, 0)


# -- the session cookie ---------------------------------------------------------------------


async def test_the_session_cookie_is_secure_httponly_and_samesite(tmp_path: Path) -> None:
    made = Portal(tmp_path, public_url="https://pbx.example.com")
    _, token = made.invitation()
    async with TestClient(TestServer(made.app)) as client:
        reply = await client.get(f"/i/{token}?lang=nl", allow_redirects=False)
        assert_headers(reply, hsts=True)
        cookies = {c.split("=", 1)[0]: c for c in reply.headers.getall("Set-Cookie")}
    session_cookie = cookies[COOKIE_NAME]
    for attribute in ("Secure", "HttpOnly", "SameSite=Lax", "Path=/"):
        assert attribute in session_cookie, session_cookie
    made.store.close()


async def test_an_http_loopback_portal_has_no_secure_cookie(portal: PortalClient) -> None:
    made, client = portal
    _, token = made.invitation()
    reply = await client.get(f"/i/{token}", allow_redirects=False)
    [cookie] = reply.headers.getall("Set-Cookie")
    assert "HttpOnly" in cookie and "SameSite=Lax" in cookie and "Secure" not in cookie


def _flip(value: str) -> str:
    middle = len(value) // 2
    return value[:middle] + ("A" if value[middle] != "A" else "B") + value[middle + 1 :]


@pytest.mark.parametrize(
    "spoil",
    [
        ("altered", lambda made, s: _flip(made.sealer.seal(s))),
        ("other key", lambda made, s: CookieSealer(KeyRing([new_key()]), secure=False).seal(s)),
        ("expired", lambda made, s: made.sealer.seal(replace(s, expires=NOW.timestamp() - 1))),
        ("garbage", lambda made, s: "%%%not-base64"),
    ],
    ids=lambda spoil: spoil[0],
)
async def test_a_spoiled_session_cookie_is_no_session(
    portal: PortalClient, spoil: tuple[str, Callable[[Portal, PortalSession], str]]
) -> None:
    made, client = portal
    value = spoil[1](made, made.session())
    reply = await client.get("/link", headers={"Cookie": f"{COOKIE_NAME}={value}"})
    assert reply.status == 403 and "Open your invitation link" in await reply.text()


def test_a_cookie_sealed_before_a_key_rotation_still_opens() -> None:
    old, new = new_key(), new_key()
    session = PortalSession.start(1, "h" * 64, "main", "100", NOW)
    sealed = CookieSealer(KeyRing([old]), secure=True).seal(session)
    rotated = CookieSealer(KeyRing([new, old]), secure=True)
    assert rotated.open(sealed, NOW) == session
    assert CookieSealer(KeyRing([new]), secure=True).open(sealed, NOW) is None


# -- headers on everything --------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/", "/link", "/i/x", "/no/such/page", "/static/portal.css"])
async def test_every_answer_has_the_security_headers(portal: PortalClient, path: str) -> None:
    _, client = portal
    reply = await client.get(path)
    assert_headers(reply)
    cache = reply.headers["Cache-Control"]
    assert cache == ("public, max-age=3600" if path.startswith("/static/") else "no-store")


async def test_pages_have_no_inline_script_or_style(portal: PortalClient) -> None:
    made, client = portal
    session = made.session()
    for path in ("/link", "/link/caldav", "/link/exchange"):
        reply = await client.get(path, headers=made.cookie(session))
        text = await reply.text()
        assert reply.status == 200
        assert "<script" not in text and "<style" not in text and " style=" not in text
        assert 'name="viewport"' in text and "/static/portal.css" in text


# -- the status page --------------------------------------------------------------------------


async def test_the_status_page_of_a_link_not_read_yet(portal: PortalClient) -> None:
    made, client = portal
    link = made.store.add_link(
        "100", "main", "caldav", "https://cal.example/u/work/?token=secret-in-url",
        {"username": "anna", "account": "anna@example.com"},
    )  # fmt: skip
    session = made.session(link_id=link.id)
    reply = await client.get("/status?lang=nl", headers=made.cookie(session))
    text = await reply.text()
    assert reply.status == 200
    assert "anna@example.com" in text and "Nog niet gelezen" in text
    assert "Geen doorschakelingen in de komende zeven dagen." in text
    assert "secret-in-url" not in text  # the calendar's URL is shown without its query
    assert 'action="/unlink"' in text and session.csrf in text


async def test_the_status_page_without_a_link_goes_to_the_choice(portal: PortalClient) -> None:
    made, client = portal
    reply = await client.get("/status", headers=made.cookie(made.session()), allow_redirects=False)
    assert reply.status == 303 and reply.headers["Location"] == "/link"
    gone = made.session(link_id=424242)  # removed by an admin meanwhile
    reply = await client.get("/status", headers=made.cookie(gone), allow_redirects=False)
    assert reply.status == 303 and reply.headers["Location"] == "/link"
    cleared = made.sealer.open(reply.cookies[COOKIE_NAME].value, NOW)
    assert cleared is not None and cleared.link_id is None
