"""The booking settings on the customer's status page, in a real browser against the real
daemon (issue #12 item 1: agent settings through the customer status page).

A ``pbxcal run`` with the portal on, Radicale over https (a test CA the daemon trusts),
agent anna (extension 100: her Radicale calendar "anna" makes her busy and receives
bookings, set by the admin) and agent bob (extension 201). In Debian's chromium
(Playwright, ``pbxcal.testing.browser``) the customer of extension 100 opens an
invitation and links a second calendar ("extra") through the CalDAV form, then on the
status page:

* sees the share link of anna's booking page (a full URL from ``[portal] public_url``)
  and the form with anna's settings;
* changes the meeting length to 45 minutes, the day's hours to 08:00-12:00 without a
  lunch break, and lets the new calendar count for conflicts: the saved values come
  back on the page, the availability API answers 45-minute slots from 08:00 without the
  meeting in "extra", and the guests' booking page offers the same times;
* a Monday "9-17" is refused with the API's one line (in English and Dutch), nothing is
  stored;
* the form without its CSRF token, and the form edited to name bob, are refused
  (403) and neither agent changes;
* the customer of extension 202, which is no agent, reads that booking is not switched
  on, and gets no form.

Screenshots in English and Dutch at 390 and 1280 px under ``test-artifacts/screenshots/``
(``Browser.shoot`` also checks that nothing scrolls sideways on the phone).
"""

from __future__ import annotations

import re
import ssl
import subprocess
from collections.abc import Iterator
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import httpx
import pytest
from daemon_helpers import DaemonRun, ics_time, new_key_file, wait_for

from pbxcal.admin.invitations import create_invitation
from pbxcal.admin.operations import add_checked_link
from pbxcal.booking.agents import add_agent
from pbxcal.booking.model import WEEKDAYS
from pbxcal.calendars.providers import SECRET_CALDAV_PASSWORD
from pbxcal.config import load_config
from pbxcal.store import Store
from pbxcal.store.secrets import load_key_ring
from pbxcal.testing.asterisk import AsteriskSandbox
from pbxcal.testing.browser import DESKTOP, Browser
from pbxcal.testing.radicale import RadicaleServer
from pbxcal.testing.tls import make_tls

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

PASSWORD = "app-specific-pw-7c2x"
TEST = "portal-booking"
AMSTERDAM = ZoneInfo("Europe/Amsterdam")


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


def settings_daemon(
    tmp_path: Path, ast: AsteriskSandbox, ca_file: Path, radicale: RadicaleServer
) -> DaemonRun:
    """The daemon with the portal on, agents anna (100) and bob (201) made by the admin."""
    key_file = new_key_file(tmp_path)
    daemon = DaemonRun(
        tmp_path, ast, [], key_file=key_file, pbx_extra='extensions = ["100", "201", "202"]\n',
        extra_env={"SSL_CERT_FILE": str(ca_file), "REQUESTS_CA_BUNDLE": str(ca_file)},
    )  # fmt: skip
    portal = (
        f'\n[portal]\npublic_url = "http://{daemon.listen}"\nallow_networks = ["127.0.0.0/8"]\n'
    )
    daemon.config.write_text(daemon.config.read_text() + portal)
    config = load_config(daemon.config)
    with Store.open(daemon.store, load_key_ring(str(key_file), None)) as store:
        for agent_id, extension, calendar in (("anna", "100", "anna"), ("bob", "201", "bob")):
            link = add_checked_link(
                store, config, pbx="main", extension=extension, provider="caldav",
                source=radicale.make_calendar("alice", calendar),
                settings={"username": "alice", "account": "alice"},
                secret_kind=SECRET_CALDAV_PASSWORD, secret=PASSWORD.encode(), check=False,
            )  # fmt: skip
            add_agent(
                store, config, agent_id, pbx="main", extension=extension,
                name=f"{agent_id.title()} de Vries", booking_link_id=link.id,
                conflict_link_ids=[link.id], settings={"timezone": "Europe/Amsterdam"},
            )  # fmt: skip
    return daemon


def invite(daemon: DaemonRun, extension: str) -> str:
    config = load_config(daemon.config)
    with Store.open(daemon.store) as store:
        return create_invitation(store, config, "main", extension, created_by="test")[1]


def admin_token(daemon: DaemonRun) -> str:
    made = subprocess.run(daemon.command("admin-token", "create", "--name", "ops"),
                          capture_output=True, text=True, timeout=60, check=False)  # fmt: skip
    assert made.returncode == 0, made.stderr
    return made.stdout.strip()


def booking_day(today: date) -> date:
    """A weekday at least two days ahead."""
    day = today + timedelta(days=2)
    while day.weekday() >= 5:
        day += timedelta(days=1)
    return day


def at(day: date, hour: int, minute: int = 0) -> datetime:
    return datetime.combine(day, time(hour, minute), tzinfo=AMSTERDAM).astimezone(UTC)


def meeting(uid: str, start: datetime, end: datetime) -> str:
    return (
        "BEGIN:VCALENDAR\r\nVERSION:2.0\r\nPRODID:-//t//t//EN\r\nBEGIN:VEVENT\r\n"
        f"UID:{uid}\r\nDTSTAMP:{ics_time(start)}\r\nDTSTART:{ics_time(start)}\r\n"
        f"DTEND:{ics_time(end)}\r\nSUMMARY:Dentist\r\nEND:VEVENT\r\nEND:VCALENDAR\r\n"
    )


def link_caldav(page: Any, url: str) -> None:
    page.click("text=iCloud or another CalDAV calendar")
    page.fill("#url", url)
    page.fill("#username", "alice")
    page.fill("#password", PASSWORD)
    page.click("button[type=submit]")
    assert page.url.endswith("/status"), page.content()


def shoot_both(browser: Browser, page: Any, name: str, url: str) -> None:
    for lang in ("nl", "en"):  # English last: the flow goes on in English
        page.goto(f"{url}{'&' if '?' in url else '?'}lang={lang}")
        browser.shoot(page, TEST, name, lang)


def test_customer_changes_booking_settings_on_the_status_page(
    ast: AsteriskSandbox,
    daemons: list[DaemonRun],
    tmp_path: Path,
    radicale: RadicaleServer,
    tls: tuple[Path, Path, Path],
    browser: Browser,
) -> None:
    day = booking_day(datetime.now(AMSTERDAM).date())
    weekday = WEEKDAYS[day.weekday()]
    extra_url = radicale.make_calendar("alice", "extra")
    # a meeting in the customer's other calendar, which does not count for anna yet
    radicale.put("alice", "extra", "dentist.ics", meeting("dentist@t", at(day, 10), at(day, 11)))
    daemon = settings_daemon(tmp_path, ast, tls[0], radicale)
    daemons.append(daemon)
    daemon.start()
    daemon.wait_ready()
    base = f"http://{daemon.listen}"
    token = admin_token(daemon)

    def api(path: str, **params: str) -> dict[str, Any]:
        reply = httpx.get(f"{base}/api/v1{path}", params=params, timeout=30,
                          headers={"Authorization": f"Bearer {token}"})  # fmt: skip
        assert reply.status_code == 200, reply.text
        answer: dict[str, Any] = reply.json()
        return answer

    def local_starts() -> tuple[int, list[str]]:
        answer = api("/agents/anna/availability", **{"from": day.isoformat(),
                                                       "to": day.isoformat()})  # fmt: skip
        return answer["duration"], [s["local_start"][11:16] for s in answer["slots"]]

    before = local_starts()
    assert before[0] == 30 and "10:00" in before[1] and "08:00" not in before[1], before
    bob_before = api("/agents/bob")

    # the customer of extension 100 links a second calendar and sees anna's part of the page
    page = browser.new_page(DESKTOP, "en")
    page.goto(invite(daemon, "100"))
    link_caldav(page, extra_url)
    section = page.locator("section.booking")
    assert section.locator("h2").inner_text() == "Meetings guests can book"
    share = section.locator(".share a")
    assert share.inner_text() == f"{base}/book/anna" == share.get_attribute("href")
    form = page.locator("#booking-anna form")
    assert form.locator("input[name=duration][value='30']").is_checked()
    assert form.locator(f"input[name=hours_{weekday}]").input_value() == "09:00-17:00"
    assert form.locator("input[name=conflict_link]").count() == 2  # anna's and "extra"
    assert "bob" not in page.content()
    shoot_both(browser, page, "status-agent", f"{base}/status")

    # a refusal: the API's one line, in both languages, nothing stored
    for lang, words in (("nl", "Er is niets opgeslagen:"), ("en", "Nothing was saved:")):
        page.goto(f"{base}/status?lang={lang}")
        form.locator("input[name=hours_mon]").fill("9-17")
        form.locator("button[type=submit]").click()
        alert = page.locator("#booking-anna [role=alert]")
        assert alert.count() == 1, page.content()
        assert f"{words} hours mon: '9-17' is not HH:MM-HH:MM" in alert.inner_text()
        assert form.locator("input[name=hours_mon]").input_value() == "9-17"  # kept as typed
        browser.shoot(page, TEST, "settings-refused", lang)
    assert local_starts() == before

    # change: 45 minutes, the day 08:00-12:00 without lunch, "extra" counts for conflicts
    page.goto(f"{base}/status")
    form.locator("input[name=duration][value='30']").uncheck()
    form.locator("input[name=duration][value='45']").check()
    form.locator(f"input[name=hours_{weekday}]").fill("8:00 - 12:00")
    form.locator("input[name=breaks]").fill("")
    form.locator("input[name=min_notice_minutes]").fill("0")
    extra = form.locator("input[name=conflict_link]:not(:checked)")
    assert extra.count() == 1
    extra.check()
    form.locator("button[type=submit]").click()
    assert page.url.endswith("/status?saved=anna#booking-anna"), page.url
    assert "Saved." in page.locator("#booking-anna [role=status]").inner_text()
    assert form.locator("input[name=duration][value='45']").is_checked()
    assert not form.locator("input[name=duration][value='30']").is_checked()
    assert form.locator(f"input[name=hours_{weekday}]").input_value() == "08:00-12:00"
    assert form.locator("input[name=conflict_link]:checked").count() == 2
    shoot_both(browser, page, "status-saved", f"{base}/status?saved=anna")

    # the availability API: 45-minute slots from 08:00, none meeting 10:00-11:00 or past noon
    duration, starts = wait_for(
        local_starts, lambda found: "10:00" not in found[1] and "09:30" not in found[1], 30,
        interval=0.5, what="the extra calendar's meeting leaving anna's availability",
    )[0]  # fmt: skip
    assert duration == 45 and starts[0] == "08:00", starts
    for start in starts:
        begins = datetime.combine(day, time.fromisoformat(start))
        ends = begins + timedelta(minutes=45)
        assert ends <= datetime.combine(day, time(12)), starts
        assert ends <= datetime.combine(day, time(10)) or begins >= datetime.combine(day, time(11))

    # ... and the guests' booking page offers exactly those times
    guest = browser.new_page(DESKTOP, "en")
    guest.goto(f"{base}/book/anna?start={day:%d.%m.%Y}&end={day:%d.%m.%Y}&tz=Europe/Amsterdam"
               "&lang=en")  # fmt: skip
    shown = [_hhmm(t) for t in guest.locator("ol.days a.time").all_inner_texts()]
    assert shown == starts, (shown, starts)

    # the form without its CSRF token: refused, nothing saved
    saved = api("/agents/anna")
    assert saved["settings"]["durations"] == [45] and saved["settings"]["breaks"] == []
    page.goto(f"{base}/status")
    page.evaluate("document.querySelector('#booking-anna input[name=csrf_token]').remove()")
    form.locator("input[name=duration][value='120']").check()
    form.locator("button[type=submit]").click()
    assert page.locator("h1").inner_text() == "This form was refused"
    assert api("/agents/anna") == saved and local_starts() == (duration, starts)

    # the form edited to name bob (extension 201): refused, neither agent changes
    page.goto(f"{base}/status")
    page.evaluate("document.querySelector('#booking-anna input[name=agent]').value = 'bob'")
    form.locator("input[name=duration][value='120']").check()
    form.locator("button[type=submit]").click()
    assert page.locator("h1").inner_text() == "This form was refused"
    assert api("/agents/bob") == bob_before and api("/agents/anna") == saved

    # extension 202 is no agent: a sentence, no form
    other = browser.new_page(DESKTOP, "en")
    other.goto(invite(daemon, "202"))
    link_caldav(other, extra_url)
    assert "Booking meetings is not switched on for extension 202" in other.inner_text(
        "section.booking"
    )
    assert other.locator("form[action^='/status/booking']").count() == 0
    shoot_both(browser, other, "status-no-agent", f"{base}/status")
    daemon.check_alive()


def _hhmm(text: str) -> str:
    """``8:00 AM`` -> ``08:00`` (the booking page's English times)."""
    hours, minutes, half = re.fullmatch(r"(\d+):(\d\d)\s*([AP]M)", text.strip()).groups()  # type: ignore[union-attr]
    return f"{int(hours) % 12 + (12 if half == 'PM' else 0):02d}:{minutes}"
