"""The online meeting's join link on its way to the guest.

``join_link`` keeps only ``https`` links (a provider's ``javascript:`` or a link with a
line break never reaches a page or a mail); the guest's iTIP invitation, update and
reminder carry it as ``LOCATION``, ``URL`` and RFC 7986 ``CONFERENCE;VALUE=URI;
FEATURE=VIDEO`` and on a line of the text (a Teams-like link with ``%``, ``&``, ``,``
and ``;`` parsed back unchanged), the cancellation's text does not offer it; the admin
API's booking answer has ``join_url`` and matches the OpenAPI document's ``Booking``;
the confirmation / manage page (through the real aiohttp app, ``test_web_booking``'s
site) shows it as a link named by its host, escaped, in English and Dutch, and the
``.ics`` download has it.
"""

from __future__ import annotations

import email
import json
from datetime import UTC, datetime, timedelta
from email.policy import default as default_policy
from pathlib import Path
from typing import Any

import icalendar
import pytest
from test_web_booking import SiteClient, book, radicale, read, site  # noqa: F401 - fixtures

from pbxcal.booking.api import booking_json
from pbxcal.booking.itip import invitation_email
from pbxcal.booking.model import Agent, AgentSettings, Booking
from pbxcal.booking.service import join_link
from pbxcal.web.api import OPENAPI_FILE

TEAMS = (
    "https://teams.microsoft.com/l/meetup-join/19%3ameeting_NjQ5%40thread.v2/0"
    "?context=%7b%22Tid%22%3a%22t%22%2c%22Oid%22%3a%22o%22%7d&a=1,2;3"
)
START = datetime(2027, 3, 9, 10, tzinfo=UTC)
AGENT = Agent("anna", "main", "100", "Anna", AgentSettings(), 1, (1,), "anna@example.com")


def booking(join_url: str | None = TEAMS, **changes: Any) -> Booking:
    values: dict[str, Any] = {
        "id": 7, "agent_id": "anna", "start": START, "end": START + timedelta(minutes=30),
        "subject": "Kitchen", "guest_name": "Gail", "guest_email": "gail@example.org",
        "uid": "u1@pbxcal", "sequence": 0, "status": "confirmed", "join_url": join_url,
    }  # fmt: skip
    return Booking(**{**values, **changes})


def test_join_link_keeps_only_https_links() -> None:
    assert join_link(TEAMS, AGENT) == TEAMS
    assert join_link("https://meet.google.com/abc-defg-hij", AGENT) is not None
    for bad in ("javascript:alert(1)", "http://meet.example.com/x", "https://", "ftp://x/y",
                "https://x.example/a b", "https://x.example/a\r\nBcc: x@y", "https://x/é",
                "https://x.example/" + "a" * 2000):  # fmt: skip
        assert join_link(bad, AGENT) is None, bad
    assert join_link(None, AGENT) is None


def parsed(message: Any) -> tuple[str, Any]:
    """(the text part, the VEVENT) of a message, as a mail client reads them."""
    back = email.message_from_bytes(bytes(message), policy=default_policy)
    text, event = "", None
    for part in back.walk():
        if part.get_content_type() == "text/plain":
            text = part.get_content()
        elif part.get_content_type() == "text/calendar":
            (event,) = icalendar.Calendar.from_ical(part.get_payload(decode=True)).walk("VEVENT")
    assert event is not None
    return text, event


@pytest.mark.parametrize("kind", ["request", "update", "reminder"])
def test_the_invitation_carries_the_join_link(kind: str) -> None:
    message = invitation_email(booking(), AGENT, "pbxcal@example.com", kind=kind,
                               manage_url="https://pbx.example.com/book/manage/t")  # fmt: skip
    text, event = parsed(message)
    assert f"Join online: {TEAMS}\n" in text
    assert str(event["LOCATION"]) == TEAMS and str(event["URL"]) == TEAMS
    conference = event["CONFERENCE"]
    assert str(conference) == TEAMS
    assert conference.params["VALUE"] == "URI" and conference.params["FEATURE"] == "VIDEO"


def test_dutch_text_and_no_link_without_a_meeting_or_when_cancelled() -> None:
    text, _ = parsed(invitation_email(booking(language="nl"), AGENT, "p@example.com",
                                      kind="request"))  # fmt: skip
    assert f"Online deelnemen: {TEAMS}\n" in text
    text, event = parsed(invitation_email(booking(None), AGENT, "p@example.com", kind="request"))
    assert "online" not in text.lower()
    assert all(name not in event for name in ("LOCATION", "URL", "CONFERENCE"))
    cancelled = booking(status="cancelled", sequence=1)
    text, _ = parsed(invitation_email(cancelled, AGENT, "p@example.com", kind="cancel"))
    assert TEAMS not in text


def test_the_api_answer_has_the_join_link_as_documented() -> None:
    document = json.loads(Path(OPENAPI_FILE).read_text(encoding="utf-8"))
    schema = document["components"]["schemas"]["Booking"]
    for made in (booking(), booking(None)):
        answer = booking_json(made)
        assert set(answer) == set(schema["properties"]) - {"manage_url"}
        assert set(schema["required"]) <= set(answer)
    assert booking_json(booking())["join_url"] == TEAMS
    assert booking_json(booking(None))["join_url"] is None
    assert schema["properties"]["join_url"]["type"] == ["string", "null"]


async def test_the_confirmation_page_and_the_ics_show_the_join_link(site: SiteClient) -> None:  # noqa: F811
    made, client = site
    reply = await book(client, "/book/anna", "2026-12-01T09:00Z")
    assert reply.status == 303
    confirmation = str(reply.headers["Location"])
    (row,) = made.store.list_bookings("anna", datetime(2026, 1, 1, tzinfo=UTC))
    page = await read(await client.get(confirmation))
    assert "Online meeting" not in page  # CalDAV adds no online meeting
    made.store.update_booking(row["id"], {"join_url": TEAMS})
    page = await read(await client.get(confirmation))
    escaped = TEAMS.replace("&", "&amp;")
    link = f'<a class="join" href="{escaped}" rel="noopener noreferrer">'
    assert f"{link}Join on teams.microsoft.com</a>" in page
    assert "Online meeting" in page and "Your meeting is booked" in page
    dutch = await read(await client.get(confirmation, params={"lang": "nl"}))
    assert "Online vergadering" in dutch and f"{link}Deelnemen via teams.microsoft.com" in dutch
    download = await client.get(confirmation.split("?")[0] + "/meeting.ics")
    (event,) = icalendar.Calendar.from_ical(await download.read()).walk("VEVENT")
    assert str(event["LOCATION"]) == TEAMS and str(event["CONFERENCE"]) == TEAMS
