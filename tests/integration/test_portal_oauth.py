"""The portal's Google sign-in end to end in a real browser (issue #11): Debian's
chromium through Playwright against the real ``pbxcal run`` and FakeGoogle's sign-in
page, token endpoint (PKCE checked), revocation endpoint and calendar API.

A customer opens an invitation, chooses Google, signs in at the fake as bob, sees "You
are linking bob@example.com", clicks "not you?" (bob's grant is revoked at the fake),
signs in as anna, picks her calendar and lands on the status page; an appointment
"0612345678" in that calendar then forwards extension 100 on the sandboxed Asterisk.
Screenshots of the sign-in pages (the calendar pick, a refused sign-in), English and
Dutch, phone and desktop: ``test-artifacts/screenshots/portal-oauth-*`` (P1's
``pbxcal.testing.browser``).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from daemon_helpers import DaemonRun, new_key_file, wait_forwarding

from pbxcal.testing.asterisk import AsteriskSandbox
from pbxcal.testing.browser import DESKTOP, PHONE, Browser
from pbxcal.testing.google_fake import FakeGoogle

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

TEST = "portal-oauth"


@pytest.fixture
def google() -> Iterator[FakeGoogle]:
    with FakeGoogle() as fake:
        fake.add_calendar("anna@example.com", owner="anna@example.com", summary="Anna Jansen")
        fake.add_calendar("team@group.example.com", owner="anna@example.com", summary="Team")
        fake.add_calendar("bob@example.com", owner="bob@example.com", summary="Bob")
        yield fake


@pytest.fixture
def browser() -> Iterator[Browser]:
    with Browser() as started:
        yield started


def _portal_daemon(tmp_path: Path, ast: AsteriskSandbox, google: FakeGoogle) -> DaemonRun:
    client_file = tmp_path / "google-web-client.json"
    client_file.write_text(json.dumps(google.add_web_client("portal-web", "portal-secret")))
    client_file.chmod(0o600)
    daemon = DaemonRun(tmp_path, ast, [], interval=2, key_file=new_key_file(tmp_path),
                       pbx_extra='extensions = ["100"]\n')  # fmt: skip
    daemon.config.write_text(
        daemon.config.read_text()
        + f'\n[portal]\npublic_url = "http://{daemon.listen}"\n'
        + f'\n[portal.google]\nclient_file = "{client_file}"\n'
        + f'revoke_uri = "{google.base_url}/revoke"\napi_endpoint = "{google.api_endpoint}"\n'
    )
    return daemon


def _invitation(daemon: DaemonRun) -> str:
    from pbxcal.admin.invitations import create_invitation
    from pbxcal.config import load_config
    from pbxcal.store import Store, load_key_ring

    config = load_config(daemon.config)
    keys = load_key_ring(config.secrets_key_file, None)
    with Store.open(daemon.store, keys=keys) as store:
        _, url = create_invitation(store, config, "main", "100", created_by="test")
    return url


def _sign_in(page: Any, google: FakeGoogle, account: str, *, allow: bool = True) -> None:
    """On the fake's sign-in page: pick ``account``, Allow (or Deny)."""
    page.wait_for_url(f"{google.base_url}/auth?*")
    page.get_by_label(account).check()
    page.get_by_role("button", name="Allow" if allow else "Deny").click()


def test_customer_links_google_in_the_browser_and_it_forwards(
    ast: AsteriskSandbox, daemons: list[DaemonRun], tmp_path: Path, google: FakeGoogle,
    browser: Browser,
) -> None:
    daemon = _portal_daemon(tmp_path, ast, google)
    daemons.append(daemon)
    daemon.start()
    daemon.wait_ready()
    invitation = _invitation(daemon)
    now = datetime.now(UTC)
    google.put_event("anna@example.com", {
        "summary": "0612345678",
        "start": {"dateTime": (now - timedelta(minutes=1)).isoformat()},
        "end": {"dateTime": (now + timedelta(minutes=20)).isoformat()},
    })  # fmt: skip

    context = browser.new_context(DESKTOP, "en")
    page = context.new_page()
    page.goto(invitation)
    page.get_by_role("button", name="Google").click()
    _sign_in(page, google, "bob@example.com")
    page.wait_for_url("**/oauth/google/calendars")
    assert "You are linking bob@example.com" in page.content()

    # "not you?": bob's grant is revoked at Google, and the sign-in starts again
    page.get_by_role("button", name="Not you?").click()
    _sign_in(page, google, "anna@example.com")
    page.wait_for_url("**/oauth/google/calendars")
    assert len(google.revoked) == 1
    text = page.inner_text("main")
    assert "You are linking anna@example.com" in text
    assert "Anna Jansen" in text and "Team" in text and "Bob" not in text
    page.get_by_label("Anna Jansen").check()
    page.get_by_role("button", name="Link this calendar").click()
    page.wait_for_url("**/status")
    assert "anna@example.com" in page.inner_text("main")

    links = daemon.links()
    assert [(link["extension"], link["source"], link["active"]) for link in links] == [
        ("100", "anna@example.com", True)
    ]
    wait_forwarding(ast, "100", "+31612345678", timeout=20)
    context.close()
    daemon.check_alive()


def test_sign_in_pages_in_english_and_dutch_on_phone_and_desktop(
    ast: AsteriskSandbox, daemons: list[DaemonRun], tmp_path: Path, google: FakeGoogle,
    browser: Browser,
) -> None:
    """Screenshots of the calendar pick, a refused sign-in (Deny at the provider) and a
    callback with a state pbxcal never issued, in both languages and at both widths;
    nothing is linked by any of them."""
    daemon = _portal_daemon(tmp_path, ast, google)
    daemons.append(daemon)
    daemon.start()
    daemon.wait_ready()
    invitation = _invitation(daemon)
    words = {"en": ("You are linking", "Nothing was linked", "This sign-in cannot be used"),
             "nl": ("Je koppelt", "Er is niets gekoppeld",
                    "Deze inlogpoging kan niet worden gebruikt")}  # fmt: skip
    for language, (linking, denied, cannot) in words.items():
        context = browser.new_context(PHONE, language)
        page = context.new_page()
        page.goto(invitation)
        page.get_by_role("button", name="Google").click()
        _sign_in(page, google, "anna@example.com")
        page.wait_for_url("**/oauth/google/calendars")
        assert linking in page.inner_text("main"), page.inner_text("main")
        browser.shoot(page, TEST, "calendars", language)
        page.locator("form[action='/oauth/google/start'] button").click()  # not you?
        _sign_in(page, google, "anna@example.com", allow=False)
        page.wait_for_url("**/oauth/google/callback?*")
        assert denied in page.inner_text("main"), page.inner_text("main")
        browser.shoot(page, TEST, "denied", language)
        page.goto(f"http://{daemon.listen}/oauth/google/callback?state=forged&code=x")
        assert cannot in page.inner_text("main"), page.inner_text("main")
        browser.shoot(page, TEST, "state-refused", language)
        context.close()
    assert daemon.links() == []
    assert len(google.revoked) == 2  # each "sign in again" revoked the grant waiting
    daemon.check_alive()


def test_customer_links_microsoft_365_in_the_browser_and_it_forwards(
    ast: AsteriskSandbox, daemons: list[DaemonRun], tmp_path: Path, browser: Browser,
) -> None:
    """The same for Microsoft 365: MSAL as the portal's confidential app against
    FakeGraph over TLS (the browser accepts the fake's certificate, the daemon trusts it
    through ``[portal.microsoft] ca_file``); the delegated link forwards on Asterisk."""
    from pbxcal.testing.graph_fake import TENANT, FakeGraph

    with FakeGraph() as graph:
        graph.add_app("portal-app", "portal-app-secret")
        graph.add_mailbox("anna@example.com")
        graph.add_mailbox("bob@example.com")
        now = datetime.now(UTC).replace(microsecond=0, tzinfo=None)
        graph.put_event("anna@example.com", {
            "id": "ev1", "subject": "0612345678", "showAs": "busy",
            "start": {"dateTime": (now - timedelta(minutes=1)).isoformat(), "timeZone": "UTC"},
            "end": {"dateTime": (now + timedelta(minutes=20)).isoformat(), "timeZone": "UTC"},
        })  # fmt: skip
        secret_file = tmp_path / "entra-secret"
        secret_file.write_text("portal-app-secret\n")
        secret_file.chmod(0o600)
        daemon = DaemonRun(tmp_path, ast, [], interval=2, key_file=new_key_file(tmp_path),
                           pbx_extra='extensions = ["100"]\n')  # fmt: skip
        daemon.config.write_text(
            daemon.config.read_text()
            + f'\n[portal]\npublic_url = "http://{daemon.listen}"\n'
            + f'\n[portal.microsoft]\nclient_id = "portal-app"\ntenant = "{TENANT}"\n'
            + f'client_secret_file = "{secret_file}"\n'
            + f'authority_host = "{graph.authority_host}"\ngraph_url = "{graph.graph_url}"\n'
            + f'ca_file = "{graph.ca_file}"\n'
        )
        daemons.append(daemon)
        daemon.start()
        daemon.wait_ready()
        invitation = _invitation(daemon)

        context = browser.new_context(DESKTOP, "en", ignore_https_errors=True)
        page = context.new_page()
        page.goto(invitation)
        page.get_by_role("button", name="Microsoft 365").click()
        page.wait_for_url(f"{graph.authority_host}/{TENANT}/oauth2/v2.0/authorize?*")
        page.get_by_label("bob@example.com").check()
        page.get_by_role("button", name="Allow").click()
        page.wait_for_url("**/oauth/microsoft/calendars")
        assert "You are linking bob@example.com" in page.inner_text("main")
        page.get_by_role("button", name="Not you?").click()  # Microsoft: the grant is dropped
        page.wait_for_url(f"{graph.authority_host}/{TENANT}/oauth2/v2.0/authorize?*")
        page.get_by_label("anna@example.com").check()
        page.get_by_role("button", name="Allow").click()
        page.wait_for_url("**/oauth/microsoft/calendars")
        assert "You are linking anna@example.com" in page.inner_text("main")
        browser.shoot(page, TEST, "calendars-microsoft", "en")
        page.get_by_role("button", name="Link this calendar").click()
        page.wait_for_url("**/status")
        assert "anna@example.com" in page.inner_text("main")
        links = daemon.links()
        assert [(link["extension"], link["source"]) for link in links] == [("100", "me")]
        wait_forwarding(ast, "100", "+31612345678", timeout=20)
        context.close()
        daemon.check_alive()
