"""The installed-app flow (google-auth-oauthlib, PKCE, loopback redirect) against
FakeGoogle's consent page and token endpoint, and reading authorized-user files.

The "browser" is a thread that asks the fake's consent page where to go and follows
the redirect to the flow's loopback listener, as a real browser would.
"""

from __future__ import annotations

import asyncio
import json
import threading
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from pbxcal.calendars.blocking import BlockingCalls
from pbxcal.calendars.google import GoogleCalendarSource, user_credentials
from pbxcal.calendars.google.authorize import (
    read_authorized_user_file,
    read_client_config,
    run_installed_app_flow,
)
from pbxcal.errors import CalendarAuthFailed, CalendarUnavailable
from pbxcal.testing.google_fake import FakeGoogle

SECRET = "desktop-secret-do-not-print"


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeGoogle]:
    # oauthlib refuses a token endpoint without TLS; the fake is plain HTTP on loopback.
    monkeypatch.setenv("OAUTHLIB_INSECURE_TRANSPORT", "1")
    with FakeGoogle() as server:
        server.add_calendar("primary")
        yield server


class Browser:
    """Follows the consent page's redirect in a thread, like the user's browser."""

    def __init__(self, fake: FakeGoogle, *, refuse: bool = False, state: str | None = None):
        self.fake = fake
        self.refuse = refuse
        self.state = state
        self.pages: list[bytes] = []
        self.threads: list[threading.Thread] = []

    def __call__(self, url: str) -> None:
        target = self.fake.consent(url, refuse=self.refuse)
        if self.state is not None:
            target = target.replace("state=", f"state={self.state}&ignored=", 1)
        thread = threading.Thread(target=self._open, args=(target,))
        thread.start()
        self.threads.append(thread)

    def _open(self, url: str) -> None:
        with urllib.request.urlopen(url, timeout=10) as answer:  # noqa: S310 - loopback
            self.pages.append(answer.read())

    def join(self) -> None:
        for thread in self.threads:
            thread.join(10)


def test_flow_with_pkce_returns_authorized_user_info_that_syncs(fake: FakeGoogle) -> None:
    client = fake.add_client("desktop-1", SECRET)
    browser = Browser(fake)
    info = run_installed_app_flow(client, browser, timeout=10)
    browser.join()
    assert info["type"] == "authorized_user"
    assert info["client_id"] == "desktop-1" and info["token_uri"] == fake.token_uri
    assert info["refresh_token"].startswith("refresh-")
    assert b"close this window" in browser.pages[0]
    [request] = fake.authorizations
    assert request["code_challenge_method"] == "S256" and len(request["code_challenge"]) == 43
    assert request["access_type"] == "offline" and request["prompt"] == "consent"
    assert request["redirect_uri"].startswith("http://127.0.0.1:")
    assert request["scope"] == "https://www.googleapis.com/auth/calendar.events"
    assert info["scopes"] == ["https://www.googleapis.com/auth/calendar.events"]

    fake.put_event("primary", {"id": "a", "summary": "333", "start": {"date": "2026-03-30"},
                               "end": {"date": "2026-03-31"}})

    async def sync() -> None:
        calls = BlockingCalls(1)
        try:
            source = GoogleCalendarSource(
                user_credentials(info), calls=calls, api_endpoint=fake.api_endpoint
            )
            change_set = await source.changes(None)
            assert change_set is not None and [r.uid for r in change_set.upserted] == ["a"]
        finally:
            calls.close()

    asyncio.run(sync())


def test_user_refuses(fake: FakeGoogle) -> None:
    client = fake.add_client("desktop-1", SECRET)
    browser = Browser(fake, refuse=True)
    with pytest.raises(CalendarAuthFailed, match="refused \\(access_denied\\)"):
        run_installed_app_flow(client, browser, timeout=10)
    browser.join()


def test_forged_state_is_refused(fake: FakeGoogle) -> None:
    client = fake.add_client("desktop-1", SECRET)
    browser = Browser(fake, state="forged")
    with pytest.raises(CalendarAuthFailed, match="state does not match") as caught:
        run_installed_app_flow(client, browser, timeout=10)
    browser.join()
    assert "code-" not in str(caught.value)


def test_wrong_client_secret_is_refused_without_printing_it(fake: FakeGoogle) -> None:
    client = fake.add_client("desktop-1", SECRET)
    client["installed"]["client_secret"] = "wrong-" + SECRET
    browser = Browser(fake)
    with pytest.raises(CalendarAuthFailed, match="refused the code") as caught:
        run_installed_app_flow(client, browser, timeout=10)
    browser.join()
    assert SECRET not in str(caught.value)


def test_no_answer_from_the_browser(fake: FakeGoogle) -> None:
    client = fake.add_client("desktop-1", SECRET)
    with pytest.raises(CalendarUnavailable, match="no answer"):
        run_installed_app_flow(client, lambda url: None, timeout=0.2)


def test_files(tmp_path: Path) -> None:
    user = tmp_path / "user.json"
    user.write_text(json.dumps({
        "type": "authorized_user", "client_id": "c", "client_secret": SECRET,
        "refresh_token": "r", "account": "",
    }))
    assert read_authorized_user_file(user) == {
        "type": "authorized_user", "client_id": "c", "client_secret": SECRET,
        "refresh_token": "r", "token_uri": "https://oauth2.googleapis.com/token",
    }
    broken = tmp_path / "broken.json"
    broken.write_text(json.dumps({"type": "authorized_user", "client_id": "c",
                                  "client_secret": SECRET}))
    with pytest.raises(CalendarAuthFailed, match="misses refresh_token") as caught:
        read_authorized_user_file(broken)
    assert SECRET not in str(caught.value)
    sa = tmp_path / "sa.json"
    sa.write_text(json.dumps({"type": "service_account", "private_key": "k"}))
    with pytest.raises(CalendarAuthFailed, match="not an authorized-user file"):
        read_authorized_user_file(sa)
    garbage = tmp_path / "garbage.json"
    garbage.write_text("refresh_token=" + SECRET)
    with pytest.raises(CalendarAuthFailed, match="is not JSON") as caught:
        read_authorized_user_file(garbage)
    assert SECRET not in str(caught.value)
    with pytest.raises(CalendarAuthFailed, match="cannot be read"):
        read_authorized_user_file(tmp_path / "missing.json")
    client = tmp_path / "client.json"
    client.write_text(json.dumps({"web": {"client_id": "c", "client_secret": "s"}}))
    with pytest.raises(CalendarAuthFailed, match="Desktop app"):
        read_client_config(client)
    client.write_text(json.dumps({"installed": {"client_id": "c", "client_secret": "s"}}))
    assert read_client_config(client)["installed"]["client_id"] == "c"


def test_redirect_uri_is_loopback_only(fake: FakeGoogle) -> None:
    client = fake.add_client("desktop-1", SECRET)
    browser = Browser(fake)
    run_installed_app_flow(client, browser, timeout=10)
    browser.join()
    redirect = urllib.parse.urlsplit(fake.authorizations[0]["redirect_uri"])
    assert redirect.hostname == "127.0.0.1"
