"""The booking settings on the customer's status page (``portal/agent_form.py``,
``portal/agent_settings.py``): the form's parsing as plain values, then through the real
aiohttp app and a real SQLite store.

Parsing: a filled-in form becomes the JSON the admin API stores (times typed loosely are
tidied, empty step / reminder are none), the values a form shows read back to the same
settings, Outlook's hours and zone stay Outlook's unless changed, and only the
customer's own calendars can be chosen (the admin's others are kept).

Pages: the status page shows the share link and the form of the extension's agent, or a
sentence when the extension is no agent; saving changes the agent and shows the saved
values back; every refusal is the admin API's one line on a 400 page with what was
typed, and nothing stored; a missing or wrong CSRF token is the 403 page; an agent of
another extension, or of the same extension number on another PBX, can never be
changed or even seen.
"""

from __future__ import annotations

import re
import sqlite3
import tomllib
from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import UTC, datetime, time
from html import unescape
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from pbxcal.admin.invitations import create_invitation
from pbxcal.admin.tokens import hash_token
from pbxcal.booking.agents import add_agent, load_agent
from pbxcal.booking.model import Agent, AgentSettings, BookingRefused
from pbxcal.booking.settings import parse_settings
from pbxcal.config.loader import parse_config
from pbxcal.service.metrics import Metrics
from pbxcal.store import KeyRing, Link, Store
from pbxcal.store.secrets import new_key
from pbxcal.testing.fakes import FakeClock
from pbxcal.web.cookies import COOKIE_NAME, CookieSealer, PortalSession
from pbxcal.web.portal.agent_form import (
    fields_of,
    form_values,
    periods,
    read_form,
)
from pbxcal.web.server import WebServer

NOW = datetime(2026, 11, 23, 9, 0, tzinfo=UTC)


def link(link_id: int, extension: str = "100", provider: str = "caldav") -> Link:
    return Link(link_id, extension, "main", provider, f"https://cal.example/{link_id}/",
                {"calendar_name": f"Cal {link_id}"}, True, "cli", NOW)  # fmt: skip


def agent(settings: AgentSettings | None = None, **changes: Any) -> Agent:
    made = Agent("anna", "main", "100", "Anna", settings or AgentSettings(), 1, (1,))
    return replace(made, **changes)


def filled(**changes: Any) -> list[tuple[str, str]]:
    """A form as a browser posts it: the defaults, ``changes`` replacing fields (a list
    value repeats the field, None leaves it out)."""
    fields: dict[str, Any] = {
        "agent": "anna", "timezone": "Europe/Amsterdam", "duration": ["30"],
        "buffer_before": "0", "buffer_after": "0", "hours_mon": "09:00-17:00",
        "hours_tue": "09:00-17:00", "hours_wed": "09:00-17:00", "hours_thu": "09:00-17:00",
        "hours_fri": "09:00-17:00", "hours_sat": "", "hours_sun": "", "breaks": "13:00-14:00",
        "horizon_days": "31", "min_notice_minutes": "60", "step_minutes": "",
        "reminder_minutes": "15", "conflict_link": ["1"], "booking_link": "1",
    }  # fmt: skip
    fields.update(changes)
    pairs = []
    for name, value in fields.items():
        for item in [] if value is None else value if isinstance(value, list) else [value]:
            pairs.append((name, item))
    return pairs


# -- the form as plain values -----------------------------------------------------------------


def test_the_form_becomes_the_settings_the_api_stores() -> None:
    change = read_form(
        fields_of(filled(
            timezone="Europe/London", duration=["60", "15"], buffer_before="15",
            hours_mon="9:00 - 12:00, 13:00\u201317:30", hours_fri="", breaks="",
            step_minutes="20", reminder_minutes="", buffers_in_event="1",
            min_notice_minutes=" 0 ",
        )),
        agent(),
        [link(1)],
    )  # fmt: skip
    parsed = parse_settings(change.settings)
    assert parsed.timezone == "Europe/London" and parsed.timezone_set
    assert parsed.durations == (15, 60)
    assert (parsed.buffer_before, parsed.buffer_after) == (15, 0)
    assert parsed.hours[0] == ((time(9), time(12)), (time(13), time(17, 30)))
    assert 4 not in parsed.hours and parsed.hours[1] == ((time(9), time(17)),)
    assert parsed.breaks == () and parsed.step_minutes == 20
    assert parsed.reminder_minutes is None and parsed.buffers_in_event
    assert parsed.min_notice_minutes == 0 and parsed.hours_set
    assert (change.booking_link_id, change.conflict_link_ids) == (1, (1,))


@pytest.mark.parametrize(
    ("typed", "periods_sent"),
    [
        ("", []),
        ("09:00-17:00", ["09:00-17:00"]),
        (" 8:30 - 12:00 ;13:00-24:00 ", ["08:30-12:00", "13:00-24:00"]),
        ("9-17", ["9-17"]),  # not HH:MM: left for parse_settings to refuse
        ("09:00\u201417:00,", ["09:00-17:00"]),
    ],
)
def test_times_typed_loosely_are_tidied(typed: str, periods_sent: list[str]) -> None:
    assert periods(typed) == periods_sent


@pytest.mark.parametrize(
    "settings",
    [
        AgentSettings(),
        parse_settings({
            "timezone": "America/New_York", "durations": [20, 45, 90], "buffer_before": 30,
            "buffer_after": 15, "hours": {"mon": ["08:00-12:00", "12:30-18:00"],
                                          "sat": ["10:00-24:00"]},
            "breaks": [], "horizon_days": 366, "min_notice_minutes": 0, "step_minutes": 5,
            "buffers_in_event": True, "reminder_minutes": None,
        }),
    ],
)  # fmt: skip
def test_what_the_form_shows_reads_back_to_the_same_settings(settings: AgentSettings) -> None:
    shown = agent(settings)
    values = form_values(shown, [link(1)])
    pairs = [("agent", "anna"), ("booking_link", values["booking_link"])]
    pairs += [("duration", d) for d in sorted(values["durations"])]
    pairs += [("conflict_link", c) for c in sorted(values["conflict_links"])]
    if values["buffers_in_event"]:
        pairs.append(("buffers_in_event", "1"))
    skip = {"durations", "conflict_links", "buffers_in_event", "booking_link"}
    pairs += [(name, value) for name, value in values.items() if name not in skip]
    change = read_form(fields_of(pairs), shown, [link(1)])
    assert parse_settings(change.settings, settings) == settings
    assert (change.booking_link_id, change.conflict_link_ids) == (1, (1,))


def test_outlooks_hours_and_zone_stay_outlooks_unless_changed() -> None:
    outlook = replace(AgentSettings(), timezone="Europe/Berlin",
                      hours={d: ((time(8, 30), time(16)),) for d in range(4)})  # fmt: skip
    assert not outlook.hours_set and not outlook.timezone_set
    shown = agent(outlook)
    unchanged = filled(timezone="Europe/Berlin", hours_fri="", **{
        f"hours_{d}": "08:30-16:00" for d in ("mon", "tue", "wed", "thu")})  # fmt: skip
    settings = read_form(fields_of(unchanged), shown, [link(1)]).settings
    assert "hours" not in settings and "timezone" not in settings
    changed = read_form(fields_of([*unchanged, ("hours_fri", "08:30-12:00")]), shown, [link(1)])
    assert changed.settings["hours"]["fri"] == ["08:30-12:00"]
    assert "timezone" not in changed.settings


def test_only_the_customers_own_calendars_can_be_chosen() -> None:
    own = [link(1), link(2)]
    # the admin made a calendar of extension 101 count and receive bookings: kept as it is
    admins = agent(booking_link_id=7, conflict_link_ids=(7, 1))
    values = form_values(admins, own)
    assert values["booking_link"] == "keep" and values["conflict_links"] == {"1"}
    kept = read_form(fields_of(filled(booking_link="keep", conflict_link=["2"])), admins, own)
    assert (kept.booking_link_id, kept.conflict_link_ids) == (7, (7, 2))
    mine = read_form(fields_of(filled(booking_link="2", conflict_link=[])), admins, own)
    assert (mine.booking_link_id, mine.conflict_link_ids) == (2, (7,))
    assert read_form(fields_of(filled(booking_link="none")), agent(), own).booking_link_id is None
    for refused in (
        filled(conflict_link=["7"]),  # extension 101's calendar
        filled(booking_link="7"),
        filled(conflict_link=["1 OR 1=1"]),
        filled(booking_link="keep"),  # anna's booking calendar is her own: nothing to keep
        filled(booking_link=None),
    ):
        with pytest.raises(BookingRefused, match="calendar"):
            read_form(fields_of(refused), agent(), own)


# -- the pages, through the real app ----------------------------------------------------------


class Portal:
    """The portal app with agent anna (extension 100, her link 1 and the customer's
    link 2), bob (extension 101) and olga (extension 100 of another PBX)."""

    def __init__(self, tmp_path: Path) -> None:
        secret = tmp_path / "ami.secret"
        secret.write_text("x")
        secret.chmod(0o600)
        self.config = parse_config(
            tomllib.loads(
                f'[http]\nlisten = "127.0.0.1:1"\n'
                f'[portal]\npublic_url = "https://portal.example.com/"\n'
                f'[pbx.main]\nsecret_file = "{secret}"\nextensions = ["100", "101"]\n'
                f'[pbx.other]\nsecret_file = "{secret}"\nextensions = ["100"]\n'
            ),
            "test.toml",
        )
        self.keys = KeyRing([new_key()])
        self.path = tmp_path / "store.sqlite3"
        self.store = Store.open(f"sqlite:///{self.path}", self.keys)
        server = WebServer(
            self.config, self.store, self.keys, Metrics(), None, {},
            lambda: (True, {}), lambda: (True, {}), clock=FakeClock(NOW),
        )  # fmt: skip
        [listener] = server.build()
        assert listener.app is not None
        self.app = listener.app
        self.sealer = CookieSealer(self.keys, secure=True)
        add = self.store.add_link
        self.anna_link = add("100", "main", "caldav", "https://cal.example/anna/", {}).id
        self.own_link = add("100", "main", "google", "primary",
                            {"calendar_name": "Privé"}).id  # fmt: skip
        self.bob_link = add("101", "main", "caldav", "https://cal.example/bob/",
                            {"calendar_name": "Bob's"}).id  # fmt: skip
        self.olga_link = add("100", "other", "caldav", "https://cal.example/olga/",
                             {"calendar_name": "Olga's"}).id  # fmt: skip
        for agent_id, pbx, ext, link_id in (
            ("anna", "main", "100", self.anna_link),
            ("bob", "main", "101", self.bob_link),
            ("olga", "other", "100", self.olga_link),
        ):
            add_agent(self.store, self.config, agent_id, pbx=pbx, extension=ext,
                      name=agent_id.title(), booking_link_id=link_id,
                      conflict_link_ids=[link_id])  # fmt: skip

    def cookie(self, extension: str = "100") -> dict[str, str]:
        """A session of the customer of ``extension`` on main who linked a calendar."""
        invitation, url = create_invitation(self.store, self.config, "main", extension,
                                            created_by="test")  # fmt: skip
        token = url.rsplit("/", 1)[1]
        session = PortalSession.start(invitation.id, hash_token(token), "main", extension, NOW)
        linked = replace(session, link_id=self.own_link if extension == "100" else self.bob_link)
        return {"Cookie": f"{COOKIE_NAME}={self.sealer.seal(linked)}"}

    def settings(self, agent_id: str) -> str:
        """The agent's stored row (settings and links), as stored."""
        with sqlite3.connect(self.path) as db:
            row = db.execute("SELECT settings, booking_link_id, conflict_link_ids FROM agents "
                             "WHERE id = ?", (agent_id,)).fetchone()  # fmt: skip
        return repr(row)


@pytest.fixture
async def portal(tmp_path: Path) -> AsyncIterator[tuple[Portal, TestClient[Any, Any]]]:
    made = Portal(tmp_path)
    async with TestClient(TestServer(made.app)) as client:
        yield made, client
    made.store.close()


PortalClient = tuple[Portal, "TestClient[Any, Any]"]


def csrf_of(page: str) -> str:
    found = re.search(r'name="csrf_token" value="([^"]+)"', page)
    assert found, page
    return found.group(1)


def alert(page: str) -> str:
    found = re.search(r'role="alert">\s*<p>(.*?)</p>', page, re.S)
    assert found, page
    return unescape(found.group(1))


async def test_the_status_page_shows_the_share_link_and_the_form(portal: PortalClient) -> None:
    made, client = portal
    page = await (await client.get("/status", headers=made.cookie())).text()
    assert '<a href="https://portal.example.com/book/anna">' in page
    assert 'action="/status/booking#booking-anna"' in page and 'name="agent" value="anna"' in page
    assert "Privé (Google)" in page and "cal.example/anna/ (CalDAV)" in page
    # nothing of extension 101 or of the other PBX
    for other in ("bob", "olga", "Bob&#39;s", "Olga&#39;s", f'value="{made.bob_link}"'):
        assert other not in page
    dutch = await (await client.get("/status?lang=nl", headers=made.cookie())).text()
    assert "Deel het adres" in dutch and ">Maandag</label>" in dutch


async def test_an_extension_that_is_no_agent_gets_a_sentence_and_no_form(
    portal: PortalClient,
) -> None:
    made, client = portal
    assert made.store.delete_agent("bob")
    page = await (await client.get("/status", headers=made.cookie("101"))).text()
    assert "Booking meetings is not switched on for extension 101" in page
    assert "/status/booking" not in page and "/book/" not in page


async def test_saving_changes_the_agent_and_shows_the_settings_back(
    portal: PortalClient,
) -> None:
    made, client = portal
    cookie = made.cookie()
    csrf = csrf_of(await (await client.get("/status", headers=cookie)).text())
    form = filled(csrf_token=csrf, duration=["45", "60"], hours_wed="10:00-15:00",
                  conflict_link=[str(made.anna_link), str(made.own_link)],
                  booking_link=str(made.own_link), reminder_minutes="")  # fmt: skip
    reply = await client.post("/status/booking", data=form, headers=cookie,
                              allow_redirects=False)  # fmt: skip
    assert reply.status == 303
    assert reply.headers["Location"] == "/status?saved=anna#booking-anna"
    stored = load_agent(made.store, "anna")
    assert stored.settings.durations == (45, 60) and stored.settings.reminder_minutes is None
    assert stored.settings.hours[2] == ((time(10), time(15)),)
    assert stored.booking_link_id == made.own_link
    assert stored.conflict_link_ids == (made.anna_link, made.own_link)
    page = await (await client.get("/status?saved=anna", headers=cookie)).text()
    assert 'role="status">Saved.' in page
    assert 'value="45" checked' in page and 'value="15">' in page
    assert 'name="hours_wed" type="text"' in page and 'value="10:00-15:00"' in page
    assert f'name="booking_link" value="{made.own_link}" checked' in page


@pytest.mark.parametrize(
    ("changes", "api_words"),
    [
        ({"hours_mon": "9-17"}, {"hours": {"mon": ["9-17"]}}),
        ({"hours_tue": "12:00-10:00"}, {"hours": {"tue": ["12:00-10:00"]}}),
        ({"duration": None}, {"durations": []}),
        ({"duration": ["10"]}, {"durations": [10]}),
        ({"timezone": "Mars/Olympus"}, {"timezone": "Mars/Olympus"}),
        ({"buffer_after": "20"}, {"buffer_after": 20}),
        ({"horizon_days": "0"}, {"horizon_days": 0}),
        ({"horizon_days": "a month"}, {"horizon_days": "a month"}),
        ({"breaks": "13:00-14:00, 13:30-15:00"}, {"breaks": ["13:00-14:00", "13:30-15:00"]}),
        ({"step_minutes": "2"}, {"step_minutes": 2}),
        ({"reminder_minutes": "-5"}, {"reminder_minutes": "-5"}),
    ],
)
async def test_a_refusal_is_the_apis_one_line_and_nothing_is_stored(
    portal: PortalClient, changes: dict[str, Any], api_words: dict[str, Any]
) -> None:
    made, client = portal
    cookie = made.cookie()
    before = made.settings("anna")
    csrf = csrf_of(await (await client.get("/status", headers=cookie)).text())
    reply = await client.post("/status/booking", data=filled(csrf_token=csrf, **changes),
                              headers=cookie)  # fmt: skip
    page = await reply.text()
    assert reply.status == 400
    with pytest.raises(BookingRefused) as api:
        parse_settings(api_words)
    assert alert(page) == f"Nothing was saved: {api.value}"
    assert "\n" not in str(api.value)
    assert made.settings("anna") == before
    for name, value in changes.items():  # what was typed is shown again
        if isinstance(value, str) and name.startswith(("hours", "breaks", "horizon")):
            assert f'value="{value}"' in page


async def test_a_calendar_of_another_extension_is_refused(portal: PortalClient) -> None:
    made, client = portal
    cookie = made.cookie()
    before = made.settings("anna")
    csrf = csrf_of(await (await client.get("/status", headers=cookie)).text())
    for form in (filled(csrf_token=csrf, conflict_link=[str(made.bob_link)]),
                 filled(csrf_token=csrf, booking_link=str(made.olga_link))):  # fmt: skip
        reply = await client.post("/status/booking", data=form, headers=cookie)
        assert reply.status == 400
        assert "is not one of your calendars" in alert(await reply.text())
    assert made.settings("anna") == before


async def test_another_extensions_agent_can_never_be_changed(portal: PortalClient) -> None:
    made, client = portal
    cookie = made.cookie()  # the customer of extension 100 on main
    before = {a: made.settings(a) for a in ("anna", "bob", "olga")}
    csrf = csrf_of(await (await client.get("/status", headers=cookie)).text())
    for target, link_id in (("bob", made.bob_link), ("olga", made.olga_link),
                            ("nobody", made.own_link), ("", made.own_link)):  # fmt: skip
        form = filled(csrf_token=csrf, agent=target, duration=["120"],
                      conflict_link=[str(link_id)], booking_link=str(link_id))  # fmt: skip
        reply = await client.post("/status/booking", data=form, headers=cookie)
        assert reply.status == 403, target
        assert "This form was refused" in await reply.text()
    # anna's form with bob's session: refused too (bob's session is extension 101)
    bob = made.cookie("101")
    bob_csrf = csrf_of(await (await client.get("/status", headers=bob)).text())
    reply = await client.post("/status/booking", headers=bob,
                              data=filled(csrf_token=bob_csrf, duration=["120"]))  # fmt: skip
    assert reply.status == 403
    assert {a: made.settings(a) for a in ("anna", "bob", "olga")} == before


@pytest.mark.parametrize("token", [None, "forged", "other-session"])
async def test_a_missing_or_wrong_csrf_token_is_refused_and_nothing_saved(
    portal: PortalClient, token: str | None
) -> None:
    made, client = portal
    cookie = made.cookie()
    before = made.settings("anna")
    if token == "other-session":
        token = csrf_of(await (await client.get("/status", headers=made.cookie())).text())
    form = filled(duration=["120"]) + ([] if token is None else [("csrf_token", token)])
    reply = await client.post("/status/booking", data=form, headers=cookie)
    assert reply.status == 403 and "This form was refused" in await reply.text()
    assert made.settings("anna") == before
    cross = await client.post(
        "/status/booking", headers={**cookie, "Origin": "https://evil.example"},
        data=filled(duration=["120"], csrf_token=csrf_of(
            await (await client.get("/status", headers=cookie)).text())),
    )  # fmt: skip
    assert cross.status == 403 and made.settings("anna") == before


async def test_a_removed_conflict_calendar_does_not_block_saving(portal: PortalClient) -> None:
    made, client = portal
    gone = made.store.add_link("101", "main", "ics", "https://cal.example/gone.ics", {}).id
    with sqlite3.connect(made.path) as db:  # as an admin's agents set --conflict-link does
        db.execute(
            "UPDATE agents SET conflict_link_ids = ? WHERE id = 'anna'",
            (f"[{made.anna_link}, {gone}]",),
        )
    made.store.remove_link(gone)  # the agent's list still names it
    cookie = made.cookie()
    page = await (await client.get("/status", headers=cookie)).text()
    assert "Calendars your phone provider added count too." not in page
    reply = await client.post(
        "/status/booking", data=filled(csrf_token=csrf_of(page), duration=["60"]),
        headers=cookie, allow_redirects=False,
    )  # fmt: skip
    assert reply.status == 303
    stored = load_agent(made.store, "anna")
    assert stored.settings.durations == (60,) and stored.conflict_link_ids == (made.anna_link,)


async def test_each_agent_of_the_extension_has_its_own_form(portal: PortalClient) -> None:
    made, client = portal
    add_agent(made.store, made.config, "anna-sales", pbx="main", extension="100",
              name="Anna (sales)", booking_link_id=made.own_link)  # fmt: skip
    cookie = made.cookie()
    page = await (await client.get("/status", headers=cookie)).text()
    assert page.count('action="/status/booking#booking-') == 2
    assert "<h3>Anna</h3>" in page and "<h3>Anna (sales)</h3>" in page
    assert 'id="anna-sales-timezone"' in page and 'id="anna-timezone"' in page
    before = made.settings("anna")
    form = filled(csrf_token=csrf_of(page), agent="anna-sales", duration=["90"],
                  conflict_link=[], booking_link=str(made.own_link))  # fmt: skip
    reply = await client.post("/status/booking", data=form, headers=cookie,
                              allow_redirects=False)  # fmt: skip
    assert reply.headers["Location"] == "/status?saved=anna-sales#booking-anna-sales"
    assert load_agent(made.store, "anna-sales").settings.durations == (90,)
    assert made.settings("anna") == before
    back = await client.get("/status/booking", headers=cookie, allow_redirects=False)
    assert back.status == 303 and back.headers["Location"] == "/status"


def test_the_store_answers_the_links_of_one_extension(tmp_path: Path) -> None:
    made = Portal(tmp_path)
    try:
        mine = made.store.extension_links("main", "100")
        assert [x.id for x in mine] == [made.anna_link, made.own_link]
        assert [x.id for x in made.store.extension_links("other", "100")] == [made.olga_link]
        assert made.store.extension_links("main", "10") == []
    finally:
        made.store.close()
