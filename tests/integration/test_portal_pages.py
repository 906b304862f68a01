"""The customer portal in a real browser against the real daemon (issue #11, P1's part).

Debian's chromium (Playwright, ``pbxcal.testing.browser``) opens an invitation made for
extension 100 of the sandboxed Asterisk, links a calendar of a real Radicale served over
https (a test CA the daemon trusts through ``SSL_CERT_FILE`` / ``REQUESTS_CA_BUNDLE``;
``[portal] allow_networks = ["127.0.0.0/8"]`` lets the portal reach loopback), and:

* a wrong password re-shows the form with a plain error, what was typed except the
  password, and nothing stored;
* the right one leads to the status page; an appointment "201" put in Radicale drives
  the forwarding in Asterisk's AstDB, and the status page lists it, with "Lunch" and a
  0900 number among the ignored appointments in plain words;
* "Linked the wrong account?" unlinks in one click (the link, its password and the
  forwarding are gone) and the same invitation links again;
* the used, unknown and expired invitation pages, the Exchange form and the CSRF refusal
  page are shown.

Every page is saved in English and Dutch at phone and desktop width under
``test-artifacts/screenshots/`` (and checked for sideways scrolling on a phone).
"""

from __future__ import annotations

import sqlite3
import ssl
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from daemon_helpers import DaemonRun, ics_time, new_key_file, wait_for, wait_forwarding

from pbxcal.admin.invitations import create_invitation
from pbxcal.admin.tokens import hash_token
from pbxcal.config import load_config
from pbxcal.store import Store
from pbxcal.testing.asterisk import AsteriskSandbox
from pbxcal.testing.browser import DESKTOP, PHONE, Browser
from pbxcal.testing.radicale import RadicaleServer
from pbxcal.testing.tls import make_tls

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]

PASSWORD = "app-specific-pw-4k9q"
TEST = "portal"


# -- a CA the daemon trusts, and Radicale over https ---------------------------------------


@pytest.fixture
def tls(tmp_path: Path) -> tuple[Path, Path, Path]:
    return make_tls(tmp_path / "tls")


@pytest.fixture
def radicale(tmp_path: Path, tls: tuple[Path, Path, Path]) -> Iterator[RadicaleServer]:
    ca_file, cert_file, key_file = tls
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert_file, key_file)
    server = RadicaleServer(
        tmp_path / "radicale", {"alice": PASSWORD}, tls=context, ca_file=str(ca_file)
    )
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def browser() -> Iterator[Browser]:
    with Browser() as running:
        yield running


def portal_daemon(
    tmp_path: Path, ast: AsteriskSandbox, ca_file: Path, *, allow_loopback: bool = True
) -> DaemonRun:
    daemon = DaemonRun(
        tmp_path,
        ast,
        [],
        key_file=new_key_file(tmp_path),
        pbx_extra='extensions = ["100", "201"]\n',
        extra_env={"SSL_CERT_FILE": str(ca_file), "REQUESTS_CA_BUNDLE": str(ca_file)},
    )
    allow = '["127.0.0.0/8"]' if allow_loopback else "[]"
    portal = f'\n[portal]\npublic_url = "http://{daemon.listen}"\nallow_networks = {allow}\n'
    daemon.config.write_text(daemon.config.read_text() + portal)
    return daemon


def invite(daemon: DaemonRun, extension: str = "100") -> str:
    """A fresh invitation URL for ``extension`` (made as ``pbxcal`` admins do)."""
    config = load_config(daemon.config)
    store = Store.open(daemon.store)
    try:
        _, url = create_invitation(store, config, "main", extension, created_by="test")
    finally:
        store.close()
    return url


def expired_invitation(daemon: DaemonRun) -> str:
    store = Store.open(daemon.store)
    try:
        store.add_invitation(
            "main",
            "100",
            hash_token("expired-token-for-the-test"),
            email=None,
            expires_at=datetime.now(UTC) - timedelta(hours=1),
            created_by="test",
        )
    finally:
        store.close()
    return f"http://{daemon.listen}/i/expired-token-for-the-test"


def stored_secrets(daemon: DaemonRun) -> int:
    with sqlite3.connect(daemon.store.removeprefix("sqlite:///")) as db:
        return int(db.execute("SELECT count(*) FROM secrets").fetchone()[0])


def event(uid: str, title: str, start: datetime, end: datetime) -> str:
    return (
        "BEGIN:VCALENDAR\r\nVERSION:2.0\r\nPRODID:-//t//t//EN\r\nBEGIN:VEVENT\r\n"
        f"UID:{uid}\r\nDTSTAMP:{ics_time(start)}\r\nDTSTART:{ics_time(start)}\r\n"
        f"DTEND:{ics_time(end)}\r\nSUMMARY:{title}\r\nEND:VEVENT\r\nEND:VCALENDAR\r\n"
    )


def both_languages(browser: Browser, page: Any, name: str) -> None:
    """Screenshots of the GET page ``page`` shows, in English and Dutch, both widths."""
    url = page.url.split("?")[0]
    for lang in ("nl", "en"):  # English last: the flow goes on in English
        page.goto(f"{url}?lang={lang}")
        browser.shoot(page, TEST, name, lang)


def fill_caldav(page: Any, url: str, password: str) -> None:
    page.fill("#url", url)
    page.fill("#username", "alice")
    page.fill("#password", password)
    page.click("button[type=submit]")


# -- the test --------------------------------------------------------------------------------


def test_customer_links_caldav_sees_status_and_relinks(
    ast: AsteriskSandbox,
    daemons: list[DaemonRun],
    tmp_path: Path,
    radicale: RadicaleServer,
    tls: tuple[Path, Path, Path],
    browser: Browser,
) -> None:
    calendar_url = radicale.make_calendar("alice", "work")
    assert calendar_url.startswith("https://127.0.0.1:")
    daemon = portal_daemon(tmp_path, ast, tls[0])
    daemons.append(daemon)
    daemon.start()
    daemon.wait_ready()
    page = browser.new_page(DESKTOP, "en")

    # the invitation leads to the provider choice (the token leaves the address bar)
    first_invitation = invite(daemon)
    page.goto(first_invitation)
    assert page.url.endswith("/link")
    assert page.locator("h1").inner_text() == "Link your calendar"
    assert "Extension 100" in page.inner_text("header")
    both_languages(browser, page, "choose")
    page.click("text=iCloud or another CalDAV calendar")
    assert page.url.endswith("/link/caldav")
    both_languages(browser, page, "caldav-form")

    # a wrong password: a plain error, what was typed kept except the password, nothing stored
    for lang in ("nl", "en"):
        page.goto(f"{page.url.split('?')[0]}?lang={lang}")
        fill_caldav(page, calendar_url, "not-the-password")
        alert = page.locator("[role=alert]")
        assert alert.count() == 1, page.content()
        browser.shoot(page, TEST, "caldav-wrong-password", lang)
    assert "The server refused this user name or password" in alert.inner_text()
    assert "wrong user name or password" in alert.inner_text(), alert.inner_text()
    assert "not-the-password" not in page.content()
    assert page.input_value("#url") == calendar_url
    assert page.input_value("#username") == "alice"
    assert page.input_value("#password") == ""
    assert daemon.links() == [] and stored_secrets(daemon) == 0

    # the right password: linked, read once, and the status page
    fill_caldav(page, calendar_url, PASSWORD)
    assert page.url.endswith("/status"), page.content()
    links = daemon.links()
    assert len(links) == 1 and links[0]["extension"] == "100", links
    assert stored_secrets(daemon) == 1
    store_file = Path(daemon.store.removeprefix("sqlite:///"))
    assert PASSWORD.encode() not in store_file.read_bytes()

    # an appointment in Radicale drives a forwarding; the status page shows what it understood
    now = datetime.now(UTC)
    radicale.put(
        "alice",
        "work",
        "fwd.ics",
        event("fwd@t", "201", now - timedelta(minutes=1), now + timedelta(minutes=30)),
    )
    radicale.put(
        "alice",
        "work",
        "lunch.ics",
        event("lunch@t", "Lunch", now + timedelta(hours=2), now + timedelta(hours=3)),
    )
    radicale.put("alice", "work", "premium.ics",
                 event("premium@t", "0900 1234567", now + timedelta(hours=4),
                       now + timedelta(hours=5)))  # fmt: skip
    wait_forwarding(ast, "100", "201", timeout=30)

    def status_text() -> str:
        page.goto(f"http://{daemon.listen}/status?lang=en")
        return str(page.inner_text("main"))

    text, _ = wait_for(
        status_text,
        lambda t: "0900 numbers are premium rate and blocked" in t,
        30,
        interval=0.5,
        what="the status page listing the ignored appointments",
    )
    assert "alice" in text and "Working: pbxcal reads this calendar" in text, text
    assert "to 201" in text, text
    assert "'Lunch' is not a phone number" in text, text
    both_languages(browser, page, "status")
    assert "'Lunch' is geen telefoonnummer" in _dutch(page)

    # "Linked the wrong account?": one click, everything gone, the forwarding too
    page.click("text=Unlink and start again")
    assert page.url.endswith("/link?unlinked=1"), page.url
    assert page.locator("[role=status]").count() == 1
    for lang in ("nl", "en"):
        page.goto(f"http://{daemon.listen}/link?unlinked=1&lang={lang}")
        browser.shoot(page, TEST, "unlinked", lang)
    assert daemon.links() == [] and stored_secrets(daemon) == 0
    wait_forwarding(ast, "100", None, timeout=30)

    # ... and the same invitation links again
    page.click("text=iCloud or another CalDAV calendar")
    fill_caldav(page, calendar_url, PASSWORD)
    assert page.url.endswith("/status"), page.content()
    assert len(daemon.links()) == 1
    wait_forwarding(ast, "100", "201", timeout=30)

    # the Exchange form
    page.goto(f"http://{daemon.listen}/link/exchange")
    assert page.url.endswith("/status")  # one link per invitation: unlink first
    other = browser.new_page(PHONE, "en")  # a phone (touch, mobile viewport)
    other.goto(invite(daemon, "201"))
    other.click("text=Microsoft Exchange (on premises)")
    assert other.locator("#mailbox").count() == 1
    both_languages(browser, other, "exchange-form")

    # a form whose CSRF token was changed: the 403 page, nothing changed
    for lang, heading in (("nl", "Dit formulier is geweigerd"), ("en", "This form was refused")):
        other.goto(f"http://{daemon.listen}/link/caldav?lang={lang}")
        other.evaluate("document.querySelector('input[name=csrf_token]').value = 'forged'")
        fill_caldav(other, calendar_url, PASSWORD)
        assert other.locator("h1").inner_text() == heading
        browser.shoot(other, TEST, "csrf-refused", lang)
    assert len(daemon.links()) == 1

    # used, unknown and expired invitations: clear pages, in a browser without a session
    fresh = browser.new_page(DESKTOP, "en")
    for name, url, heading_text in (
        ("invitation-used", first_invitation, "already used"),
        ("invitation-unknown", f"http://{daemon.listen}/i/not-a-real-token", "is not known"),
        ("invitation-expired", expired_invitation(daemon), "has expired"),
        ("no-session", f"http://{daemon.listen}/link", "open the link again"),
    ):
        for lang in ("nl", "en"):
            fresh.goto(f"{url}?lang={lang}")
            browser.shoot(fresh, TEST, name, lang)
        assert heading_text in fresh.inner_text("main")
    assert len(daemon.links()) == 1
    daemon.check_alive()


def _dutch(page: Any) -> str:
    page.goto(f"{page.url.split('?')[0]}?lang=nl")
    text = str(page.inner_text("main"))
    page.goto(f"{page.url.split('?')[0]}?lang=en")
    return text
