"""The guests' booking page in a real browser against the real daemon (issue #12, B2).

Debian's chromium (Playwright, ``pbxcal.testing.browser``) opens ``/book/anna`` of a
``pbxcal run`` whose agent anna (extension 100 of the sandboxed Asterisk) has a real
Radicale calendar as both her conflict calendar and her booking calendar:

* a meeting put in Radicale is synced by the daemon and its times leave the page;
* the link's ``?start=&end=&subject=`` narrow the page to that day and preset the
  subject; a bad date in the link is a plain message and the defaults are used;
* the guest picks a time, fills in name and e-mail, books, and sees the confirmation
  with the time in their zone; the ``.ics`` download parses with icalendar; the event
  is in Radicale (read from Radicale's own storage, not through pbxcal);
* the manage page behind the guest's link moves the meeting (Radicale follows) and
  cancels it (the event is gone from Radicale);
* a booking with an online meeting (a Teams join link, as Microsoft 365 answers it, put
  in its row: CalDAV adds none) shows the link on the confirmation, and its long
  address wraps on a phone instead of making the page scroll sideways.

The booking page, the details form, the confirmation, the manage page and the cancel
question are saved in English and Dutch at phone and desktop width under
``test-artifacts/screenshots/`` (and checked for sideways scrolling on a phone).
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, quote, urlencode, urlsplit
from zoneinfo import ZoneInfo

import icalendar
import pytest
from daemon_helpers import DaemonRun, ics_time, new_key_file, wait_for

from pbxcal.admin.operations import add_checked_link
from pbxcal.booking.agents import add_agent
from pbxcal.calendars.providers import SECRET_CALDAV_PASSWORD
from pbxcal.config import load_config
from pbxcal.store import Store
from pbxcal.store.secrets import load_key_ring
from pbxcal.testing.asterisk import AsteriskSandbox
from pbxcal.testing.browser import DESKTOP, PHONE, Browser
from pbxcal.testing.radicale import RadicaleServer

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]

PASSWORD = "radicale-pw-3m8v"
TEST = "booking"
AMSTERDAM = ZoneInfo("Europe/Amsterdam")
TEAMS_LINK = (
    "https://teams.microsoft.com/l/meetup-join/19%3ameeting_ZjA4NGM0YzItNWU2ZS00Yjk3LWI1ODAt"
    "NDc5ZDkxMmQ0YTg3%40thread.v2/0?context=%7b%22Tid%22%3a%2272f988bf-86f1-41af-91ab-"
    "2d7cd011db47%22%2c%22Oid%22%3a%22a4a3c5f2-0c2e-4f0e-9d5b-3c1a2b3c4d5e%22%7d"
)


@pytest.fixture
def radicale(tmp_path: Path) -> Iterator[RadicaleServer]:
    server = RadicaleServer(tmp_path / "radicale", {"alice": PASSWORD})
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def browser() -> Iterator[Browser]:
    with Browser() as running:
        yield running


def booking_daemon(tmp_path: Path, ast: AsteriskSandbox, calendar_url: str) -> DaemonRun:
    """A daemon with the portal on and agent anna whose calendar is ``calendar_url``."""
    key_file = new_key_file(tmp_path)
    daemon = DaemonRun(
        tmp_path, ast, [], key_file=key_file, pbx_extra='extensions = ["100", "201"]\n'
    )
    portal = (
        f'\n[portal]\npublic_url = "http://{daemon.listen}"\nallow_networks = ["127.0.0.0/8"]\n'
    )
    daemon.config.write_text(daemon.config.read_text() + portal)
    config = load_config(daemon.config)
    store = Store.open(daemon.store, load_key_ring(str(key_file), None))
    try:
        link = add_checked_link(
            store, config, pbx="main", extension="100", provider="caldav", source=calendar_url,
            settings={"username": "alice", "account": "alice"},
            secret_kind=SECRET_CALDAV_PASSWORD, secret=PASSWORD.encode(), check=False,
        )  # fmt: skip
        add_agent(
            store, config, "anna", pbx="main", extension="100", name="Anna de Vries",
            booking_link_id=link.id, conflict_link_ids=[link.id],
            settings={"timezone": "Europe/Amsterdam", "durations": [30, 60]},
        )  # fmt: skip
    finally:
        store.close()
    return daemon


def booking_day(today: date) -> date:
    """A weekday at least two days ahead (clear of the minimum notice)."""
    day = today + timedelta(days=2)
    while day.weekday() >= 5:
        day += timedelta(days=1)
    return day


def at(day: date, hour: int, minute: int = 0) -> datetime:
    """``day`` at ``hour:minute`` in Amsterdam, as UTC."""
    return datetime.combine(day, time(hour, minute), tzinfo=AMSTERDAM).astimezone(UTC)


def link_date(day: date) -> str:
    return f"{day.day:02d}.{day.month:02d}.{day.year}"


def moment(value: datetime) -> str:
    return value.strftime("%Y-%m-%dT%H:%MZ")


def meeting(uid: str, title: str, start: datetime, end: datetime) -> str:
    return (
        "BEGIN:VCALENDAR\r\nVERSION:2.0\r\nPRODID:-//t//t//EN\r\nBEGIN:VEVENT\r\n"
        f"UID:{uid}\r\nDTSTAMP:{ics_time(start)}\r\nDTSTART:{ics_time(start)}\r\n"
        f"DTEND:{ics_time(end)}\r\nSUMMARY:{title}\r\nEND:VEVENT\r\nEND:VCALENDAR\r\n"
    )


def booked_events(radicale: RadicaleServer) -> list[Any]:
    """The VEVENTs pbxcal wrote (every event in anna's calendar but the test's own)."""
    root = radicale.directory / "collections" / "collection-root" / "alice" / "anna"
    events = []
    for path in sorted(root.glob("*.ics")):
        for event in icalendar.Calendar.from_ical(path.read_bytes()).walk("VEVENT"):
            if str(event["UID"]) != "busy@test":
                events.append(event)
    return events


def with_lang(url: str, lang: str) -> str:
    """``url`` with ``lang=`` set (any earlier one replaced), without a fragment."""
    parts = urlsplit(url)
    query = [(k, v) for k, v in parse_qsl(parts.query) if k != "lang"] + [("lang", lang)]
    return parts._replace(query=urlencode(query), fragment="").geturl()


def both_languages(browser: Browser, page: Any, name: str) -> None:
    """Screenshots of the GET page ``page`` shows, in Dutch and English, both widths."""
    url = page.url
    for lang in ("nl", "en"):  # English last: the flow goes on in English
        page.goto(with_lang(url, lang))
        browser.shoot(page, TEST, name, lang)


def plain(text: str) -> str:
    return text.replace("\u202f", " ").replace("\xa0", " ")


def test_guest_books_moves_and_cancels_in_the_browser(
    ast: AsteriskSandbox,
    daemons: list[DaemonRun],
    tmp_path: Path,
    radicale: RadicaleServer,
    browser: Browser,
) -> None:
    calendar_url = radicale.make_calendar("alice", "anna")
    day = booking_day(datetime.now(AMSTERDAM).date())
    # anna is in a meeting from 10:00 to 11:00 that day
    radicale.put("alice", "anna", "busy.ics",
                 meeting("busy@test", "Team meeting", at(day, 10), at(day, 11)))  # fmt: skip
    daemon = booking_daemon(tmp_path, ast, calendar_url)
    daemons.append(daemon)
    daemon.start()
    daemon.wait_ready()
    base = f"http://{daemon.listen}"
    narrowed = (
        f"{base}/book/anna?start={link_date(day)}&end={link_date(day)}"
        f"&subject={quote('Offerte keuken')}&tz=Europe/Amsterdam"
    )

    # the synced meeting takes its times off the page; the link narrows it to that day
    page = browser.new_page(PHONE, "en")

    def times() -> str:
        page.goto(narrowed)
        return plain(page.inner_text("main"))

    text, _ = wait_for(times, lambda t: "11:00 AM" in t and "10:00 AM" not in t, 30,
                       interval=0.5, what="the synced meeting leaving the page")  # fmt: skip
    assert "10:30 AM" not in text and "9:30 AM" in text and "1:00 PM" not in text  # lunch
    headings = page.locator("ol.days h3").all_inner_texts()
    assert headings == [f"{day:%A} {day.day} {day:%B}"], headings
    assert page.locator("[role=status]").count() == 0
    both_languages(browser, page, "times")
    assert "Maak een afspraak met Anna de Vries" in _dutch(page)

    # a bad date in the link: a plain message, and the default dates instead
    page.goto(f"{base}/book/anna?start=2026-13-45&subject=Offerte")
    assert "is not a date like 31.12.2026" in page.inner_text("[role=status]")
    assert page.locator("ol.days h3").count() >= 1
    both_languages(browser, page, "bad-link")

    # pick 11:00, fill in, book
    page.goto(narrowed)
    page.click(f'a.time[href*="at={quote(moment(at(day, 11)))}"]')
    assert page.input_value("#subject") == "Offerte keuken"
    both_languages(browser, page, "details")
    page.fill("#name", "Gert Gast")
    page.fill("#email", "gert@example.org")
    page.click("button[type=submit] >> text=Book this meeting")
    assert "/book/manage/" in page.url and "booked=1" in page.url, page.content()
    confirmation = plain(page.inner_text("main"))
    assert "Your meeting is booked" in confirmation
    assert f"{day:%A}, {day:%B} {day.day}, {day.year} 11:00 AM – 11:30 AM" in confirmation
    assert "Save the meeting in your own calendar" in confirmation
    both_languages(browser, page, "confirmation")

    # the event is in Radicale (read back without pbxcal), the .ics download parses
    [event] = booked_events(radicale)
    assert event.decoded("DTSTART") == at(day, 11) and str(event["SUMMARY"]) == "Offerte keuken"
    download = page.request.get(page.url.split("?")[0] + "/meeting.ics")
    assert download.status == 200 and download.headers["content-type"].startswith("text/calendar")
    [downloaded] = icalendar.Calendar.from_ical(download.body()).walk("VEVENT")
    assert str(downloaded["UID"]) == str(event["UID"])
    assert downloaded.decoded("DTSTART") == at(day, 11)
    manage = page.url.split("?")[0]

    # an online meeting's join link (as Google or Microsoft 365 would have added it)
    with Store.open(daemon.store) as store:
        (row,) = store.list_bookings("anna", at(day, 0))
        assert row["join_url"] is None  # CalDAV adds no online meeting
        store.update_booking(row["id"], {"join_url": TEAMS_LINK})
    page.reload()
    assert page.locator("a.join").get_attribute("href") == TEAMS_LINK
    assert "Online meeting Join on teams.microsoft.com" in " ".join(page.inner_text("main").split())
    both_languages(browser, page, "confirmation-online-meeting")

    # another guest no longer sees 11:00
    other = browser.new_page(DESKTOP, "en")
    other.goto(narrowed)
    assert "11:00 AM" not in plain(other.inner_text("ol.days"))

    # the manage page: move to 14:30 the same day
    page.goto(f"{manage}?tz=Europe/Amsterdam&start={link_date(day)}&end={link_date(day)}")
    assert "Move the meeting" in page.inner_text("main")
    assert page.locator("a.time").first.is_visible() is False  # folded until asked for
    both_languages(browser, page, "manage")
    page.click("summary >> text=Move the meeting")
    browser.shoot(page, TEST, "manage-times", "en")
    page.click(f'a.time[href*="at={quote(moment(at(day, 14, 30)))}"]')
    page.click("button[type=submit] >> text=Move the meeting here")
    assert "moved=1" in page.url, page.content()
    assert "2:30 PM – 3:00 PM" in plain(page.inner_text("main"))
    [moved] = booked_events(radicale)
    assert moved.decoded("DTSTART") == at(day, 14, 30) and int(moved["SEQUENCE"]) == 1

    # cancel, after the question
    page.click("text=Cancel this meeting")
    assert page.locator("h1").inner_text() == "Cancel this meeting?"
    both_languages(browser, page, "cancel")
    page.click("button[type=submit] >> text=Yes, cancel the meeting")
    assert page.locator("h1").inner_text() == "This meeting is cancelled"
    both_languages(browser, page, "cancelled")
    assert booked_events(radicale) == []

    # an unknown manage link and an unknown agent: clear pages
    fresh = browser.new_page(DESKTOP, "en")
    unknown = f"{base}/book/manage/not-a-real-token"
    for name, url, heading in (
        ("unknown-meeting", unknown, "This meeting link is not known"),
        ("unknown-agent", f"{base}/book/nobody", "This booking link is not known"),
    ):
        fresh.goto(url)
        assert fresh.locator("h1").inner_text() == heading
        both_languages(browser, fresh, name)
    daemon.check_alive()


def _dutch(page: Any) -> str:
    url = page.url
    page.goto(with_lang(url, "nl"))
    text = str(page.inner_text("main"))
    page.goto(with_lang(url, "en"))
    return text
