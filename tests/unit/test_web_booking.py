"""The guests' booking pages through the real aiohttp app, a real SQLite store, B1's
booking code (``pbxcal.booking``) and a real Radicale (in-process) as the agent's
booking calendar.

What is proved: the page lists only free times, grouped by day in the guest's zone;
the link's ``start``/``end`` narrow the days and ``subject`` presets the form; each bad
parameter is a message with the default used; a weekend gives "no free times"; a POST
without the guest cookie, with a forged token or from another site is refused and
books nothing; the booking leads to the confirmation (the manage page) with the time
in the guest's zone and an ``.ics`` that icalendar parses, and the event is in Radicale;
a second guest on the same time gets "just taken" (409) and the page again; bad guest
fields re-show the form (400) and store nothing; the manage page moves and cancels;
unknown tokens and agents get clear pages; a team link books a free member; the POSTs
are rate-limited; every answer carries the security headers.
"""

from __future__ import annotations

import re
import sqlite3
import tomllib
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import icalendar
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from pbxcal.admin.operations import add_checked_link
from pbxcal.booking.agents import add_agent, add_group
from pbxcal.calendars.providers import SECRET_CALDAV_PASSWORD
from pbxcal.config.loader import parse_config
from pbxcal.service.metrics import Metrics
from pbxcal.store import KeyRing, Store
from pbxcal.store.secrets import new_key
from pbxcal.testing.fakes import FakeClock
from pbxcal.testing.radicale import RadicaleServer
from pbxcal.web.booking.pages import MANAGE_RATE, POST_RATE
from pbxcal.web.server import WebServer

NOW = datetime(2026, 11, 23, 9, 0, tzinfo=UTC)  # Monday 10:00 in Amsterdam
PASSWORD = "radicale-pw-7x"
CSP = (
    "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; "
    "frame-ancestors 'none'; base-uri 'none'"
)
#: Tuesday 1 December 2026, 10:00 in Amsterdam (UTC+1)
TUESDAY_10 = "2026-12-01T09:00Z"


class Site:
    """The public app with agents anna (30 or 60 min) and bert, team "sales"."""

    def __init__(self, tmp_path: Path, radicale: RadicaleServer) -> None:
        secret = tmp_path / "ami.secret"
        secret.write_text("x")
        secret.chmod(0o600)
        self.config = parse_config(
            tomllib.loads(
                '[http]\nlisten = "127.0.0.1:1"\n'
                '[portal]\npublic_url = "http://127.0.0.1:8080"\n'
                f'[pbx.main]\nsecret_file = "{secret}"\nextensions = ["100", "101"]\n'
            ),
            "test.toml",
        )
        self.keys = KeyRing([new_key()])
        self.path = tmp_path / "store.sqlite3"
        self.store = Store.open(f"sqlite:///{self.path}", self.keys)
        self.radicale = radicale
        for agent_id, extension, name, durations in (
            ("anna", "100", "Anna de Vries", [30, 60]),
            ("bert", "101", "Bert Jansen", [30]),
        ):
            url = radicale.make_calendar("alice", agent_id)
            link = add_checked_link(
                self.store,
                self.config,
                pbx="main",
                extension=extension,
                provider="caldav",
                source=url,
                settings={"username": "alice", "account": "alice"},
                secret_kind=SECRET_CALDAV_PASSWORD,
                secret=PASSWORD.encode(),
                check=False,
            )
            add_agent(
                self.store,
                self.config,
                agent_id,
                pbx="main",
                extension=extension,
                name=name,
                booking_link_id=link.id,
                settings={"timezone": "Europe/Amsterdam", "durations": durations},
            )
        add_group(self.store, "sales", "Sales team", ["anna", "bert"])
        self.clock = FakeClock(NOW)
        server = WebServer(
            self.config,
            self.store,
            self.keys,
            Metrics(),
            None,
            {},
            lambda: (True, {}),
            lambda: (True, {}),
            clock=self.clock,
        )
        [listener] = server.build()
        assert listener.app is not None
        self.app: web.Application = listener.app

    def bookings(self) -> list[tuple[str, str, str, str]]:
        """(agent, start, status, subject) of every booking row."""
        with sqlite3.connect(self.path) as db:
            rows = db.execute(
                "SELECT agent_id, start_at, status, subject FROM bookings ORDER BY id"
            ).fetchall()
        return [(agent, str(start)[:19], status, subject) for agent, start, status, subject in rows]

    def radicale_events(self, calendar: str) -> list[Path]:
        root = self.radicale.directory / "collections" / "collection-root" / "alice" / calendar
        return sorted(root.glob("*.ics"))


@pytest.fixture
def radicale(tmp_path: Path) -> Iterator[RadicaleServer]:
    server = RadicaleServer(tmp_path / "radicale", {"alice": PASSWORD})
    server.start()
    try:
        yield server
    finally:
        server.stop()


SiteClient = tuple[Site, "TestClient[Any, Any]"]


@pytest.fixture
async def site(tmp_path: Path, radicale: RadicaleServer) -> AsyncIterator[SiteClient]:
    made = Site(tmp_path, radicale)
    async with TestClient(TestServer(made.app)) as client:
        yield made, client
    made.store.close()


async def read(reply: Any) -> str:
    """The page's text, with the narrow spaces Babel puts in times ("10:00\u202fAM") plain."""
    return str(await reply.text()).replace("\u202f", " ").replace("\xa0", " ")


def times_of(page: str) -> list[tuple[str, list[str]]]:
    """(day heading, [times]) as the page lists them."""
    days = []
    for block in re.findall(r'<li class="day">(.*?)</ul>', page, re.S):
        heading = re.search(r"<h3>(.*?)</h3>", block)
        assert heading is not None
        days.append((heading.group(1), re.findall(r'class="time[^"]*"[^>]*>([^<]+)</a>', block)))
    return days


def csrf_of(page: str) -> str:
    found = re.search(r'name="csrf_token" value="([^"]+)"', page)
    assert found, page
    return found.group(1)


def alerts(page: str) -> list[str]:
    return [
        " ".join(re.sub(r"<[^>]+>", " ", block).split())
        for block in re.findall(r'role="(?:alert|status)">(.*?)</div>', page, re.S)
    ]


def assert_headers(response: Any) -> None:
    assert response.headers["Content-Security-Policy"] == CSP
    assert response.headers["X-Frame-Options"] == "DENY"
    assert response.headers["Cache-Control"] == "no-store"


GUEST = {"name": "Gert Gast", "email": "gert@example.org", "subject": "Offerte keuken"}


async def open_form(client: TestClient[Any, Any], path: str, at: str, **query: str) -> str:
    reply = await client.get(path, params={"tz": "Europe/Amsterdam", "at": at, **query})
    text = await read(reply)
    assert reply.status == 200, text
    assert 'id="details"' in text, text
    return text


async def book(client: TestClient[Any, Any], path: str, at: str, **fields: str) -> Any:
    form = await open_form(client, path, at)
    data = {
        "csrf_token": csrf_of(form),
        "at": at,
        "duration": "30",
        "tz": "Europe/Amsterdam",
        **GUEST,
        **fields,
    }
    return await client.post(path, data=data, allow_redirects=False)


# -- the page ---------------------------------------------------------------------------------


async def test_the_page_lists_free_times_by_day_in_the_guests_zone(site: SiteClient) -> None:
    _, client = site
    reply = await client.get("/book/anna", params={"tz": "Europe/Amsterdam"})
    text = await read(reply)
    assert reply.status == 200 and "Book a meeting with Anna de Vries" in text
    assert_headers(reply)
    assert "pbxcal_guest" in reply.cookies
    days = times_of(text)
    # today from 11:00 (an hour's notice after 10:00), lunch 13-14 left out, to 16:30
    assert days[0] == (
        "Monday 23 November",
        [
            "11:00 AM",
            "11:30 AM",
            "12:00 PM",
            "12:30 PM",
            "2:00 PM",
            "2:30 PM",
            "3:00 PM",
            "3:30 PM",
            "4:00 PM",
            "4:30 PM",
        ],
    )
    assert [day for day, _ in days] == [
        "Monday 23 November",
        "Tuesday 24 November",
        "Wednesday 25 November",
        "Thursday 26 November",
        "Friday 27 November",
    ]  # one page: a week; the weekend has no hours
    assert "Later dates (from Mon 30 Nov)" in text

    # the same times for a guest in New York: six hours earlier on the clock
    reply = await client.get("/book/anna", params={"tz": "America/New_York"})
    days = times_of(await read(reply))
    assert days[0][1][0] == "5:00 AM" and days[0][1][-1] == "10:30 AM"


async def test_the_zone_defaults_from_the_language_region(site: SiteClient) -> None:
    _, client = site
    reply = await client.get("/book/anna", headers={"Accept-Language": "en-GB,en;q=0.8"})
    text = await read(reply)
    assert '<option value="Europe/London" selected>' in text
    assert times_of(text)[0][1][0] == "10:00 AM"  # 11:00 in Amsterdam
    reply = await client.get("/book/anna", headers={"Accept-Language": "nl-NL"})
    text = await read(reply)
    assert '<option value="Europe/Amsterdam" selected>' in text
    assert times_of(text)[0] == (
        "maandag 23 november",
        [
            "11:00",
            "11:30",
            "12:00",
            "12:30",
            "14:00",
            "14:30",
            "15:00",
            "15:30",
            "16:00",
            "16:30",
        ],
    )
    assert "Maak een afspraak met Anna de Vries" in text


async def test_url_parameters_narrow_the_dates_and_preset_the_subject(site: SiteClient) -> None:
    _, client = site
    query = {
        "start": "01.12.2026",
        "end": "02.12.2026",
        "subject": "Offerte keuken",
        "tz": "Europe/Amsterdam",
    }
    reply = await client.get("/book/anna", params=query)
    text = await read(reply)
    assert [day for day, _ in times_of(text)] == ["Tuesday 1 December", "Wednesday 2 December"]
    assert "Later dates" not in text and alerts(text) == []
    # every time link keeps the link's dates and subject
    links = re.findall(r'class="time" href="([^"]+)"', text)
    assert links and all("start=01.12.2026" in u and "subject=Offerte+keuken" in u for u in links)
    form = await open_form(client, "/book/anna", TUESDAY_10, **query)
    assert 'name="subject" type="text" required maxlength="200" value="Offerte keuken"' in form
    assert "Tuesday, December 1, 2026 10:00 AM – 10:30 AM" in form


async def test_longer_meetings_from_the_offered_lengths(site: SiteClient) -> None:
    _, client = site
    reply = await client.get(
        "/book/anna",
        params={
            "start": "01.12.2026",
            "end": "01.12.2026",
            "duration": "60",
            "tz": "Europe/Amsterdam",
        },
    )
    text = await read(reply)
    assert times_of(text) == [
        (
            "Tuesday 1 December",
            ["9:00 AM", "10:00 AM", "11:00 AM", "12:00 PM", "2:00 PM", "3:00 PM", "4:00 PM"],
        )
    ]
    assert '<option value="60" selected>60 minutes</option>' in text


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ({"start": "2026-12-01"}, "The start date '2026-12-01' is not a date like 31.12.2026."),
        ({"start": "05.12.2026", "end": "01.12.2026"}, "The end date is before the start date."),
        ({"end": "01.11.2026"}, "The dates in this link (until 01.11.2026) have passed."),
        ({"tz": "Mars/Olympus"}, "'Mars/Olympus' is not a time zone this page knows."),
        ({"duration": "45"}, "45 minutes is not a meeting length offered here."),
    ],
)
async def test_a_bad_parameter_gives_a_message_and_the_defaults(
    site: SiteClient, query: dict[str, str], message: str
) -> None:
    _, client = site
    reply = await client.get("/book/anna", params=query)
    text = await read(reply)
    assert reply.status == 200
    assert alerts(text) == [f"{message} The page shows what it can instead."]
    assert times_of(text)[0][0] == "Monday 23 November"  # the default dates


async def test_no_free_times_is_said_plainly(site: SiteClient) -> None:
    _, client = site
    reply = await client.get("/book/anna", params={"start": "28.11.2026", "end": "29.11.2026"})
    text = await read(reply)
    assert times_of(text) == []
    assert "There are no free times on these dates." in text


async def test_unknown_agents_and_teams_get_a_clear_page(site: SiteClient) -> None:
    _, client = site
    for path, heading in (
        ("/book/nobody", "This booking link is not known"),
        ("/book/team/nobody", "This team booking link is not known"),
        ("/book/..%2Fetc", "This booking link is not known"),
    ):
        reply = await client.get(path)
        assert reply.status == 404 and heading in await read(reply)
        assert_headers(reply)


# -- booking ----------------------------------------------------------------------------------


async def test_a_booking_leads_to_the_confirmation_with_an_ics_and_the_event_in_radicale(
    site: SiteClient,
) -> None:
    made, client = site
    reply = await book(client, "/book/anna", TUESDAY_10)
    assert reply.status == 303, await read(reply)
    location = reply.headers["Location"]
    assert re.fullmatch(
        r"/book/manage/[A-Za-z0-9_-]{40,}\?tz=Europe%2FAmsterdam&booked=1", location
    )
    assert made.bookings() == [("anna", "2026-12-01 09:00:00", "confirmed", "Offerte keuken")]

    page = await client.get(location)
    text = await read(page)
    assert page.status == 200 and "Your meeting is booked" in text
    assert "Tuesday, December 1, 2026 10:00 AM – 10:30 AM" in text
    assert "Save the meeting in your own calendar with the button below." in text
    assert "invitation" not in text.lower()  # no [smtp]: no e-mail is promised
    assert "Anna de Vries" in text and "Offerte keuken" in text

    ics = await client.get(location.split("?")[0] + "/meeting.ics")
    assert ics.status == 200 and ics.content_type == "text/calendar"
    calendar = icalendar.Calendar.from_ical(await ics.read())
    [event] = calendar.walk("VEVENT")
    assert event.decoded("DTSTART") == datetime(2026, 12, 1, 9, 0, tzinfo=UTC)
    assert event.decoded("DTEND") == datetime(2026, 12, 1, 9, 30, tzinfo=UTC)
    assert str(event["SUMMARY"]) == "Offerte keuken"
    # the same event, same UID, is in the agent's booking calendar in Radicale
    [stored] = made.radicale_events("anna")
    [in_radicale] = icalendar.Calendar.from_ical(stored.read_bytes()).walk("VEVENT")
    assert str(in_radicale["UID"]) == str(event["UID"])
    assert in_radicale.decoded("DTSTART") == datetime(2026, 12, 1, 9, 0, tzinfo=UTC)

    # the booked time is no longer offered
    reply = await client.get(
        "/book/anna", params={"start": "01.12.2026", "end": "01.12.2026", "tz": "Europe/Amsterdam"}
    )
    assert "10:00 AM" not in times_of(await read(reply))[0][1]


async def test_a_taken_time_shows_the_times_again_with_just_taken(site: SiteClient) -> None:
    made, client = site
    # two guests opened the same time (through a link for that day); the first books it
    narrow = {"start": "01.12.2026", "end": "01.12.2026"}
    second_form = await open_form(client, "/book/anna", TUESDAY_10, **narrow)
    action = re.search(r'<form method="post" action="([^"]+)"', second_form)
    assert action is not None
    first = await book(client, "/book/anna", TUESDAY_10)
    assert first.status == 303
    data = {
        "csrf_token": csrf_of(second_form),
        "at": TUESDAY_10,
        "duration": "30",
        "tz": "Europe/Amsterdam",
        **GUEST,
        "email": "other@example.org",
    }
    post_to = action.group(1).replace("&amp;", "&")
    reply = await client.post(post_to, data=data, allow_redirects=False)
    text = await read(reply)
    assert reply.status == 409
    assert alerts(text) == ["That time was just taken by someone else. Please pick another time."]
    # the times again, still narrowed to the link's day, without the taken one
    assert 'id="details"' not in text
    [(heading, times)] = times_of(text)
    assert heading == "Tuesday 1 December" and "10:00 AM" not in times and "9:30 AM" in times
    assert len(made.bookings()) == 1 and len(made.radicale_events("anna")) == 1


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"name": ""}, "Please fill in your name."),
        ({"email": "not-an-address"}, "'not-an-address' is not an e-mail address."),
        ({"email": "a@b.example\r\nBcc: x@y.example"}, "is not an e-mail address."),
        ({"subject": ""}, "Please say what the meeting is about."),
        ({"subject": "x" * 201}, "This subject is too long or not plain text."),
    ],
)
async def test_bad_guest_fields_show_the_form_again_and_book_nothing(
    site: SiteClient, fields: dict[str, str], message: str
) -> None:
    made, client = site
    reply = await book(client, "/book/anna", TUESDAY_10, **fields)
    text = await read(reply)
    assert reply.status == 400
    assert 'id="details"' in text and any(message in a for a in alerts(text)), alerts(text)
    assert made.bookings() == [] and made.radicale_events("anna") == []


async def test_a_time_outside_the_hours_is_refused_by_the_booking_core(site: SiteClient) -> None:
    made, client = site
    form = await open_form(client, "/book/anna", TUESDAY_10)
    data = {
        "csrf_token": csrf_of(form),
        "at": "2026-12-01T03:00Z",
        "duration": "30",
        "tz": "Europe/Amsterdam",
        **GUEST,
    }
    reply = await client.post("/book/anna", data=data, allow_redirects=False)
    text = await read(reply)
    assert reply.status == 400 and "This booking was refused:" in text, text
    assert made.bookings() == []


@pytest.mark.parametrize("case", ["no-cookie", "forged", "cross-site", "other-cookie"])
async def test_a_post_without_the_guests_token_is_refused(site: SiteClient, case: str) -> None:
    made, client = site
    form = await open_form(client, "/book/anna", TUESDAY_10)
    data = {
        "csrf_token": csrf_of(form),
        "at": TUESDAY_10,
        "duration": "30",
        "tz": "Europe/Amsterdam",
        **GUEST,
    }
    headers: dict[str, str] = {}
    if case == "no-cookie":
        client.session.cookie_jar.clear()
    elif case == "forged":
        data["csrf_token"] = "0" * 64
    elif case == "cross-site":
        headers["Origin"] = "https://evil.example"
    else:  # the attacker's own page and cookie: their token does not fit the guest's cookie
        async with TestClient(TestServer(made.app)) as attacker:
            data["csrf_token"] = csrf_of(await open_form(attacker, "/book/anna", TUESDAY_10))
    reply = await client.post("/book/anna", data=data, headers=headers, allow_redirects=False)
    text = await read(reply)
    assert reply.status == 403 and "This form was refused" in text
    assert_headers(reply)
    assert made.bookings() == []


async def test_booking_posts_are_rate_limited(site: SiteClient) -> None:
    made, client = site
    form = await open_form(client, "/book/anna", TUESDAY_10)
    data = {
        "csrf_token": csrf_of(form),
        "at": TUESDAY_10,
        "duration": "30",
        "tz": "Europe/Amsterdam",
        **GUEST,
        "name": "",
    }
    statuses = [
        (await client.post("/book/anna", data=data, allow_redirects=False)).status
        for _ in range(POST_RATE + 1)
    ]
    assert statuses == [400] * POST_RATE + [429]
    reply = await client.post("/book/anna", data={**data, "name": "Gert"})
    assert reply.status == 429 and "Too many attempts" in await read(reply)
    assert made.bookings() == []


async def test_a_team_link_books_a_free_member(site: SiteClient) -> None:
    made, client = site
    reply = await client.get("/book/team/sales", params={"tz": "Europe/Amsterdam"})
    text = await read(reply)
    assert "Book a meeting with Sales team" in text and times_of(text)
    assert 'id="duration"' not in text  # only 30 minutes is offered by both
    # three guests open the same time while both members are free; each posts in turn
    forms = [await open_form(client, "/book/team/sales", TUESDAY_10) for _ in range(3)]
    statuses = []
    for number, form in enumerate(forms):
        data = {
            "csrf_token": csrf_of(form),
            "at": TUESDAY_10,
            "duration": "30",
            "tz": "Europe/Amsterdam",
            **GUEST,
            "email": f"guest{number}@example.org",
        }
        reply = await client.post("/book/team/sales", data=data, allow_redirects=False)
        statuses.append(reply.status)
    assert statuses == [303, 303, 409]
    assert "just taken" in await read(reply)
    assert sorted(agent for agent, *_ in made.bookings()) == ["anna", "bert"]
    assert len(made.radicale_events("anna")) == len(made.radicale_events("bert")) == 1
    # now nobody is free then: the time is gone from the team's page
    later = await client.get(
        "/book/team/sales", params={"start": "01.12.2026", "end": "01.12.2026"}
    )
    assert "10:00 AM" not in times_of(await read(later))[0][1]


# -- the guest's manage page -----------------------------------------------------------------


async def manage_path(client: TestClient[Any, Any]) -> str:
    reply = await book(client, "/book/anna", TUESDAY_10)
    assert reply.status == 303
    return str(reply.headers["Location"]).split("?")[0]


async def test_the_guest_moves_the_meeting(site: SiteClient) -> None:
    made, client = site
    path = await manage_path(client)
    page = await client.get(path, params={"tz": "Europe/Amsterdam"})
    text = await read(page)
    assert "Your meeting with Anna de Vries" in text and "Move the meeting" in text
    assert times_of(text)  # other free times of the same length
    new_time = "2026-12-02T13:00Z"  # Wednesday 14:00 in Amsterdam
    chosen = await client.get(path, params={"tz": "Europe/Amsterdam", "at": new_time})
    chosen_text = await read(chosen)
    assert "Wednesday, December 2, 2026 2:00 PM – 2:30 PM" in chosen_text
    reply = await client.post(
        f"{path}/reschedule",
        data={"csrf_token": csrf_of(chosen_text), "at": new_time, "tz": "Europe/Amsterdam"},
        allow_redirects=False,
    )
    assert reply.status == 303 and reply.headers["Location"].endswith("moved=1")
    moved = await read(await client.get(reply.headers["Location"]))
    assert "Your meeting has moved" in moved
    assert "Wednesday, December 2, 2026 2:00 PM – 2:30 PM" in moved
    assert made.bookings() == [("anna", "2026-12-02 13:00:00", "confirmed", "Offerte keuken")]
    [stored] = made.radicale_events("anna")
    [event] = icalendar.Calendar.from_ical(stored.read_bytes()).walk("VEVENT")
    assert event.decoded("DTSTART") == datetime(2026, 12, 2, 13, 0, tzinfo=UTC)
    assert int(event["SEQUENCE"]) == 1


async def test_moving_onto_a_taken_time_says_just_taken(site: SiteClient) -> None:
    made, client = site
    path = await manage_path(client)
    other_time = "2026-12-02T13:00Z"
    chosen = await read(await client.get(path, params={"at": other_time}))
    assert (await book(client, "/book/anna", other_time, email="x@example.org")).status == 303
    reply = await client.post(
        f"{path}/reschedule",
        data={"csrf_token": csrf_of(chosen), "at": other_time, "tz": "Europe/Amsterdam"},
        allow_redirects=False,
    )
    text = await read(reply)
    assert reply.status == 409 and "That time was just taken" in text
    assert sorted(start for _, start, *_ in made.bookings()) == [
        "2026-12-01 09:00:00",
        "2026-12-02 13:00:00",
    ]


async def test_the_guest_cancels_after_confirming(site: SiteClient) -> None:
    made, client = site
    path = await manage_path(client)
    question = await client.get(f"{path}/cancel", params={"tz": "Europe/Amsterdam"})
    text = await read(question)
    assert "Cancel this meeting?" in text and made.bookings()[0][2] == "confirmed"
    # a forged form cancels nothing
    forged = await client.post(f"{path}/cancel", data={"csrf_token": "x"})
    assert forged.status == 403 and made.bookings()[0][2] == "confirmed"
    reply = await client.post(
        f"{path}/cancel",
        data={"csrf_token": csrf_of(text), "tz": "Europe/Amsterdam"},
        allow_redirects=False,
    )
    assert reply.status == 303
    after = await read(await client.get(reply.headers["Location"]))
    assert "This meeting is cancelled" in after and "Move the meeting" not in after
    assert made.bookings()[0][2] == "cancelled" and made.radicale_events("anna") == []
    # the cancelled meeting's time is free again
    page = await client.get(
        "/book/anna", params={"start": "01.12.2026", "end": "01.12.2026", "tz": "Europe/Amsterdam"}
    )
    assert "10:00 AM" in times_of(await read(page))[0][1]
    again = await client.get(f"{path}/cancel")
    assert "This meeting cannot be cancelled here" in await read(again)


async def test_a_past_meeting_can_no_longer_be_changed(site: SiteClient) -> None:
    made, client = site
    path = await manage_path(client)
    made.clock.set(datetime(2026, 12, 1, 9, 15, tzinfo=UTC))
    text = await read(await client.get(path))
    assert "it can no longer be moved or cancelled here" in text
    assert "Move the meeting" not in text


async def test_opening_manage_links_is_rate_limited(site: SiteClient) -> None:
    _, client = site
    statuses = [
        (await client.get(f"/book/manage/guess-{n}")).status for n in range(MANAGE_RATE + 1)
    ]
    assert statuses == [404] * MANAGE_RATE + [429]
    # the booking page itself stays open (read-only; a shared proxy address would starve it)
    assert (await client.get("/book/anna")).status == 200


async def test_unknown_manage_links_get_a_clear_page(site: SiteClient) -> None:
    _, client = site
    for path in (
        "/book/manage/not-a-token",
        f"/book/manage/{'x' * 200}",
        "/book/manage/not-a-token/meeting.ics",
        "/book/manage/not-a-token/cancel",
    ):
        reply = await client.get(path)
        assert reply.status == 404, path
        assert "This meeting link is not known" in await read(reply)
