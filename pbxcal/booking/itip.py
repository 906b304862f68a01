"""iCalendar for bookings: the event, the iTIP invitation / update / cancellation e-mail,
the agent's notice and the reminder.

What it does: ``booking_vevent`` is the one VEVENT of a booking (UID, SEQUENCE,
DTSTAMP, ORGANIZER = the agent, ATTENDEE = the guest with ``RSVP=TRUE``; with an online
meeting its join link three times over, so every client finds it: ``LOCATION`` (what
Outlook and Gmail show), ``URL``, and RFC 7986's ``CONFERENCE;VALUE=URI;FEATURE=VIDEO``
(what newer clients turn into a "join" button)); ``booking_ics``
wraps it in a VCALENDAR (the confirmation page's download, the CalDAV PUT);
``invitation_email`` builds the guest's message: ``multipart/alternative`` with a
plain-text part and a ``text/calendar; method=REQUEST`` (or ``CANCEL``) part — the shape
Outlook and Gmail show with accept / decline buttons; the text part names the join link
on a line of its own. Built with ``icalendar`` (the
library the core reads calendars with) and the standard ``email`` package.

Texts are English and Dutch (``TEXTS``; the guest page's language decides).

Start reading at ``invitation_email``.
"""

from __future__ import annotations

from datetime import UTC, datetime
from email.message import EmailMessage
from email.utils import formataddr, make_msgid
from zoneinfo import ZoneInfo

import icalendar

from pbxcal.booking.model import Agent, Booking

PRODID = "-//pbxcal//booking//EN"

TEXTS: dict[str, dict[str, str]] = {
    "en": {
        "request": "Invitation: {subject} ({when})",
        "update": "Updated invitation: {subject} ({when})",
        "cancel": "Cancelled: {subject} ({when})",
        "reminder": "Reminder: {subject} ({when})",
        "agent_new": "New booking: {subject} with {guest} ({when})",
        "agent_update": "Booking moved: {subject} with {guest} ({when})",
        "agent_cancel": "Booking cancelled: {subject} with {guest} ({when})",
        "body": "{subject}\n\nWhen: {when} ({zone})\nWith: {agent}\nGuest: {guest} <{email}>\n",
        "join": "Join online: {url}\n",
        "manage": "\nTo move or cancel this meeting, open:\n{url}\n",
        "cancelled": "\nThis meeting has been cancelled.\n",
    },
    "nl": {
        "request": "Uitnodiging: {subject} ({when})",
        "update": "Gewijzigde uitnodiging: {subject} ({when})",
        "cancel": "Geannuleerd: {subject} ({when})",
        "reminder": "Herinnering: {subject} ({when})",
        "agent_new": "Nieuwe afspraak: {subject} met {guest} ({when})",
        "agent_update": "Afspraak verzet: {subject} met {guest} ({when})",
        "agent_cancel": "Afspraak geannuleerd: {subject} met {guest} ({when})",
        "body": "{subject}\n\nWanneer: {when} ({zone})\nMet: {agent}\nGast: {guest} <{email}>\n",
        "join": "Online deelnemen: {url}\n",
        "manage": "\nOm deze afspraak te verzetten of te annuleren, open:\n{url}\n",
        "cancelled": "\nDeze afspraak is geannuleerd.\n",
    },
}


def organizer_address(agent: Agent, sender: str) -> str:
    """The agent's own address, else the mail server's sender."""
    return agent.email or sender


def booking_vevent(
    booking: Booking,
    agent: Agent,
    organizer: str,
    *,
    cancelled: bool = False,
    stamp: datetime | None = None,
    buffers: bool = False,
) -> icalendar.Event:
    event = icalendar.Event()
    event.add("UID", booking.uid)
    event.add("SEQUENCE", booking.sequence)
    event.add("DTSTAMP", (stamp or datetime.now(UTC)).astimezone(UTC))
    start, end = booking.blocked if buffers else (booking.start, booking.end)
    event.add("DTSTART", start.astimezone(UTC))
    event.add("DTEND", end.astimezone(UTC))
    event.add("SUMMARY", booking.subject)
    organizer_prop = icalendar.vCalAddress(f"mailto:{organizer}")
    organizer_prop.params["CN"] = icalendar.vText(agent.name)
    event.add("ORGANIZER", organizer_prop)
    attendee = icalendar.vCalAddress(f"mailto:{booking.guest_email}")
    attendee.params["CN"] = icalendar.vText(booking.guest_name)
    attendee.params["ROLE"] = icalendar.vText("REQ-PARTICIPANT")
    attendee.params["PARTSTAT"] = icalendar.vText("NEEDS-ACTION")
    attendee.params["RSVP"] = icalendar.vText("TRUE")
    event.add("ATTENDEE", attendee)
    event.add("STATUS", "CANCELLED" if cancelled else "CONFIRMED")
    event.add("TRANSP", "OPAQUE")
    if booking.join_url:
        event.add("LOCATION", booking.join_url)
        event.add("URL", booking.join_url)
        conference = icalendar.vUri(booking.join_url)
        conference.params["VALUE"] = "URI"  # RFC 7986 5.11: VALUE=URI is required
        conference.params["FEATURE"] = "VIDEO"
        event.add("CONFERENCE", conference)
    return event


def booking_calendar(
    booking: Booking, agent: Agent, organizer: str, *, method: str | None = None,
    buffers: bool = False,
) -> icalendar.Calendar:  # fmt: skip
    calendar = icalendar.Calendar()
    calendar.add("PRODID", PRODID)
    calendar.add("VERSION", "2.0")
    calendar.add("CALSCALE", "GREGORIAN")
    if method:
        calendar.add("METHOD", method)
    cancelled = method == "CANCEL" or booking.status == "cancelled"
    calendar.add_component(
        booking_vevent(booking, agent, organizer, cancelled=cancelled, buffers=buffers)
    )
    return calendar


def booking_ics(booking: Booking, agent: Agent) -> bytes:
    """The .ics of the booking (``METHOD:PUBLISH``), for the confirmation download."""
    organizer = agent.email or "noreply@invalid"
    return bytes(booking_calendar(booking, agent, organizer, method="PUBLISH").to_ical())


def when_text(booking: Booking, zone: str) -> str:
    local = booking.start.astimezone(ZoneInfo(zone))
    end = booking.end.astimezone(ZoneInfo(zone))
    return f"{local:%Y-%m-%d %H:%M}-{end:%H:%M}"


def invitation_email(
    booking: Booking,
    agent: Agent,
    sender: str,
    *,
    kind: str,
    manage_url: str | None = None,
) -> EmailMessage:
    """The guest's e-mail. ``kind``: "request" (new), "update" (moved: same UID, higher
    SEQUENCE), "cancel" (``METHOD:CANCEL``) or "reminder" (``METHOD:REQUEST`` again, so
    the calendar entry stays current)."""
    texts = TEXTS.get(booking.language, TEXTS["en"])
    organizer = organizer_address(agent, sender)
    method = "CANCEL" if kind == "cancel" else "REQUEST"
    when = when_text(booking, agent.settings.timezone)
    values = {
        "subject": booking.subject, "when": when, "zone": agent.settings.timezone,
        "agent": agent.name, "guest": booking.guest_name, "email": booking.guest_email,
    }  # fmt: skip
    body = texts["body"].format(**values)
    if booking.join_url and kind != "cancel":
        body += texts["join"].format(url=booking.join_url)
    body += texts["cancelled"] if kind == "cancel" else ""
    if manage_url and kind != "cancel":
        body += texts["manage"].format(url=manage_url)
    message = _message(sender, booking.guest_email, texts[kind].format(**values), body)
    message["Reply-To"] = formataddr((agent.name, organizer))
    calendar = booking_calendar(booking, agent, organizer, method=method)
    message.add_alternative(
        calendar.to_ical(),
        maintype="text",
        subtype="calendar",
        params={"method": method, "charset": "utf-8"},
    )
    return message


def agent_notice(booking: Booking, agent: Agent, sender: str, *, kind: str) -> EmailMessage:
    """The agent's notice of a new, moved or cancelled booking (with the .ics)."""
    texts = TEXTS["en"]
    when = when_text(booking, agent.settings.timezone)
    values = {
        "subject": booking.subject, "when": when, "zone": agent.settings.timezone,
        "agent": agent.name, "guest": booking.guest_name, "email": booking.guest_email,
    }  # fmt: skip
    subject = texts[f"agent_{kind}"].format(**values)
    assert agent.email is not None
    body = texts["body"].format(**values)
    if booking.join_url and kind != "cancel":
        body += texts["join"].format(url=booking.join_url)
    message = _message(sender, agent.email, subject, body)
    message.add_attachment(
        booking_ics(booking, agent), maintype="text", subtype="calendar", filename="booking.ics"
    )
    return message


def _message(sender: str, to: str, subject: str, body: str) -> EmailMessage:
    for value in (sender, to, subject):
        if any(c in value for c in "\r\n"):
            raise ValueError("a header value may not hold a line break")
    message = EmailMessage()
    message["From"] = sender
    message["To"] = to
    message["Subject"] = subject
    message["Message-ID"] = make_msgid(domain=sender.rpartition("@")[2] or None)
    message.set_content(body)
    return message
