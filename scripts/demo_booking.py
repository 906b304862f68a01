"""The demo's booking step (``scripts/demo.py`` step 6): an agent, a guest, a meeting.

What it does: ``booking_step`` runs ``pbxcal agents add`` for extension 101 (its CalDAV
link as conflict and booking calendar), then ``guest_books`` plays the guest's browser
over plain HTTP: open ``/book/<agent>`` (the page sets the guest cookie), follow the
first free time, send the form with the page's CSRF token and the site's ``Origin``,
and read the confirmation the 303 leads to. The invitation comes from ``Inbox`` (an
aiosmtpd handler behind ``smtp_server``, which ``[smtp]`` of the demo's config points
at) and is parsed with ``icalendar``; the event is read back from Radicale with a plain
GET of the calendar collection, not through pbxcal's CalDAV client, so the two sides
cannot share a bug. Everything is printed as ``NAME  value`` lines that
``tests/integration/test_demo.py`` checks.

Start reading at ``booking_step``.
"""

from __future__ import annotations

import contextlib
import email
import queue
import re
import shlex
import ssl
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC
from email.message import Message
from email.policy import default as default_policy
from html import unescape
from pathlib import Path
from typing import Any

import httpx
import icalendar
from aiosmtpd.controller import Controller

#: The agent the demo makes of extension 101, and the guest who books them.
AGENT = "bob"
AGENT_SETTINGS = '{"timezone": "Europe/Amsterdam", "durations": [30, 60]}'
GUEST_NAME, GUEST_EMAIL = "Sam Jansen", "sam@guest.example"
SUBJECT = "Quote for a new kitchen"
MAIL_TIMEOUT = 30.0


def page_text(page: str, skip: str | None = None, until: str = "</main>") -> str:
    """The ``<main>`` of an HTML page up to ``until`` as indented plain lines (headings,
    terms and paragraphs on lines of their own), without lines that contain ``skip``;
    ``RuntimeError`` for a page without a ``<main>`` (an error page)."""
    begin = page.find("<main")
    end = page.find(until, begin)
    if begin < 0 or end < 0:
        raise RuntimeError(f"a page without <main>...{until}: {page[:200]!r}")
    main = page[begin:end]
    text = re.sub(r"<(?:dt|h1|h2|p|li)(?:\s[^>]*)?>", "\n", main)
    text = unescape(re.sub(r"<[^>]+>", " ", text)).replace("\u202f", " ").replace("\xa0", " ")
    lines = [" ".join(line.split()) for line in text.splitlines()]
    return "\n".join(f"    {line}" for line in lines if line and not (skip and skip in line))


class Inbox:
    """The guest's mailbox: an aiosmtpd handler that keeps every message it accepts."""

    def __init__(self) -> None:
        self.messages: queue.Queue[bytes] = queue.Queue()

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.messages.put(bytes(envelope.content))
        return "250 OK"

    def next_to(self, address: str, timeout: float) -> Message:
        """The next message to ``address`` (others are passed over), waiting at most
        ``timeout`` seconds for it."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                raw = self.messages.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise RuntimeError(f"no e-mail to {address} within {timeout:.0f} s") from None
            message = email.message_from_bytes(raw, policy=default_policy)
            if address in str(message["To"]):
                return message


def attribute(tag: str, name: str) -> str:
    found = re.search(rf'\s{name}="([^"]*)"', tag)
    return unescape(found.group(1)) if found else ""


@dataclass(frozen=True)
class DavAccount:
    """A Radicale calendar and how to read it: its URL, the user and password, and the
    CA file its TLS certificate is signed by."""

    url: str
    user: str
    password: str
    ca_file: Path


@dataclass(frozen=True)
class GuestVisit:
    """What the guest saw: the time picked as the page words it and as its ``at`` value
    (UTC), how long the booking POST took, and the confirmation page as text."""

    when: str
    at: str
    seconds: float
    confirmation: str


def guest_books(base: str, agent: str) -> GuestVisit:
    """What a guest does in the browser, as plain HTTP: open the agent's booking page
    (which sets the guest cookie), pick the first free time, fill in the form (with the
    page's CSRF token) and book."""
    headers = {"Accept-Language": "en"}
    with httpx.Client(base_url=base, follow_redirects=True, timeout=60,
                      headers=headers) as browser:  # fmt: skip
        page = browser.get(f"/book/{agent}")
        page.raise_for_status()
        first = re.search(r'<a [^>]*class="time"[^>]*>', page.text)
        if first is None:
            raise RuntimeError(f"the booking page /book/{agent} offers no free time")
        href, when = attribute(first.group(0), "href"), attribute(first.group(0), "aria-label")
        picked = browser.get(href.split("#")[0])
        picked.raise_for_status()
        form = re.search(r'<form method="post"([^>]*)>(.*?)</form>', picked.text, re.S)
        if form is None:
            raise RuntimeError("picking a time shows no booking form")
        fields = {
            attribute(tag, "name"): attribute(tag, "value")
            for tag in re.findall(r'<input type="hidden"[^>]*>', form.group(2))
        }
        if "csrf_token" not in fields or "at" not in fields:
            raise RuntimeError("the booking form carries no CSRF token or no time")
        done = browser.post(
            attribute(form.group(1), "action"),
            data={**fields, "name": GUEST_NAME, "email": GUEST_EMAIL, "subject": SUBJECT},
            headers={"Origin": base},
        )
        if "/book/manage/" not in str(done.url):
            found = re.search(r'role="alert"[^>]*>(.*?)</div>', done.text, re.S)
            why = " ".join(unescape(re.sub(r"<[^>]+>", " ", found.group(1))).split()) \
                if found else done.status_code  # fmt: skip
            raise RuntimeError(f"the booking page refused: {why}")
    posted = done.history[0] if done.history else done
    return GuestVisit(when, fields["at"], posted.elapsed.total_seconds(),
                      page_text(done.text, until="</dl>"))  # fmt: skip


def ical_lines(component: Any, names: tuple[str, ...]) -> str:
    """``names`` of an iCalendar component as indented lines; times in UTC."""
    lines = []
    for name in names:
        if name not in component:
            continue
        value = component[name]
        if name in ("DTSTART", "DTEND"):
            text = f"{component.decoded(name).astimezone(UTC):%Y-%m-%dT%H:%M:%SZ}"
        elif name == "ATTENDEE":
            params = ", ".join(f"{k}={v}" for k, v in value.params.items() if k != "CN")
            text = f"{value} ({params})"
        else:
            text = str(value)
        lines.append(f"    {name:<10} {text}")
    return "\n".join(lines)


def invitation(message: Message) -> tuple[str, Any, Any]:
    """(the content type, the VCALENDAR, its VEVENT) of an iTIP e-mail."""
    part = next((p for p in message.walk() if p.get_content_type() == "text/calendar"), None)
    if part is None:
        raise RuntimeError(f"the e-mail {message['Subject']!r} has no text/calendar part")
    body = part.get_payload(decode=True)
    if not isinstance(body, bytes):
        raise RuntimeError("the invitation's text/calendar part is empty")
    calendar = icalendar.Calendar.from_ical(body)
    event = next(iter(calendar.walk("VEVENT")), None)
    if event is None:
        raise RuntimeError("the invitation's calendar has no VEVENT")
    kind = f"{part.get_content_type()}; method={part.get_param('method')}"
    return kind, calendar, event


def radicale_event(calendar: DavAccount, uid: str) -> Any:
    """The VEVENT ``uid`` read back from Radicale over plain HTTP (a GET of the whole
    calendar collection), independent of pbxcal's CalDAV client."""
    tls = ssl.create_default_context(cafile=str(calendar.ca_file))
    answer = httpx.get(calendar.url, auth=(calendar.user, calendar.password), verify=tls,
                       timeout=30)  # fmt: skip
    answer.raise_for_status()
    for event in icalendar.Calendar.from_ical(answer.content).walk("VEVENT"):
        if str(event.get("UID")) == uid:
            return event
    raise RuntimeError(f"Radicale has no event with UID {uid}")


@contextlib.contextmanager
def smtp_server(inbox: Inbox, port: int) -> Iterator[Controller]:
    """An SMTP server on loopback ``port`` that delivers into ``inbox``, for the ``with``
    block."""
    server = Controller(inbox, hostname="127.0.0.1", port=port)
    server.start()
    try:
        yield server
    finally:
        server.stop()


def booking_step(
    pbxcal: Path, config_args: list[str], base: str, link_id: str, inbox: Inbox,
    smtp_port: int, calendar: DavAccount,
) -> None:  # fmt: skip
    """The admin makes extension 101 an agent (``pbxcal`` is the console script,
    ``config_args`` its --config and --store), a guest books the first free time on
    ``base``; prints the confirmation, the event read back from ``calendar`` (link
    ``link_id``) and the invitation that reached ``inbox``."""
    command = ["agents", "add", AGENT, "--pbx", "main", "--extension", "101",
               "--name", "Bob Jansen", "--email", "bob@demo.example",
               "--booking-link", link_id, "--conflict-link", link_id,
               "--settings", AGENT_SETTINGS]  # fmt: skip
    made = subprocess.run([str(pbxcal), *command, *config_args], capture_output=True,
                          text=True, check=True)  # fmt: skip
    shown = shlex.join(command)
    print(f"\nThe admin makes extension 101 an agent guests can book (its CalDAV calendar, "
          f"link {link_id}, says when Bob is busy and receives the bookings):\n"
          f"  $ pbxcal {shown}\n  {made.stdout.strip()}")  # fmt: skip
    visit = guest_books(base, AGENT)
    print(f"A guest opens {base}/book/{AGENT} and picks the first free time: {visit.when} "
          f"(at={visit.at}).\nThey type name, e-mail and subject, book (pbxcal re-reads "
          f"Bob's calendar, writes the meeting into it and mails the invitation: "
          f"{visit.seconds:.1f} s), and see:")  # fmt: skip
    print(visit.confirmation)
    message = inbox.next_to(GUEST_EMAIL, MAIL_TIMEOUT)
    kind, itip, event = invitation(message)
    uid = str(event["UID"])
    print(f"Bob's calendar in Radicale now holds the meeting (read back with GET {calendar.url}):")
    print(ical_lines(radicale_event(calendar, uid),
                     ("UID", "SUMMARY", "DTSTART", "DTEND", "ORGANIZER", "ATTENDEE")))  # fmt: skip
    print(f"The guest's mailbox (aiosmtpd on 127.0.0.1:{smtp_port}) received "
          f"\"{message['Subject']}\" with a {kind} part:")  # fmt: skip
    print(f"    {'METHOD':<10} {itip['METHOD']}")
    print(ical_lines(event, ("UID", "SEQUENCE", "SUMMARY", "DTSTART", "DTEND", "ORGANIZER",
                             "ATTENDEE")))  # fmt: skip
