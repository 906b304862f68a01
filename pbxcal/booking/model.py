"""The values of booking: agents with their settings, groups, bookings, "now", errors.

What it does: plain frozen dataclasses that the store returns and the API, the CLI and
the guest pages (``pbxcal.web.booking``) show. ``AgentSettings`` is validated and
parsed in ``settings``; everything here is only data.

Start reading at ``Agent`` and ``Booking``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, time

from pbxcal.errors import PbxcalError

#: A local wall-clock period on one day; ``end`` None is 24:00.
Period = tuple[time, time | None]
WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")


def _office_hours() -> dict[int, tuple[Period, ...]]:
    return {day: ((time(9), time(17)),) for day in range(5)}


@dataclass(frozen=True)
class AgentSettings:
    """When and how an agent can be booked (defaults per issue #12)."""

    timezone: str = "Europe/Amsterdam"
    #: True: ``timezone`` was set by the admin (Outlook's mailbox zone is not used)
    timezone_set: bool = False
    #: Meeting lengths a guest may choose, minutes (15-360).
    durations: tuple[int, ...] = (30,)
    buffer_before: int = 0  # minutes: 0, 15 or 30
    buffer_after: int = 0
    #: weekday (0 = Monday) -> working periods, local wall-clock time
    hours: dict[int, tuple[Period, ...]] = field(default_factory=_office_hours)
    #: True: ``hours`` were set by the admin (Outlook's working hours are not used)
    hours_set: bool = False
    breaks: tuple[Period, ...] = ((time(13), time(14)),)
    horizon_days: int = 31
    min_notice_minutes: int = 60
    #: Minutes between slot starts; None = the meeting's duration.
    step_minutes: int | None = None
    #: Write the buffers into the booked event (it then blocks them in the calendar).
    buffers_in_event: bool = False
    #: E-mail reminder this many minutes before the meeting; None = no reminder.
    reminder_minutes: int | None = 15

    def __hash__(self) -> int:  # ``hours`` is a dict
        return hash((self.timezone, self.durations, tuple(sorted(self.hours.items()))))


@dataclass(frozen=True)
class Agent:
    """Someone guests can book: an extension on a PBX with linked calendars."""

    id: str  # a slug, e.g. "anna"
    pbx: str
    extension: str
    name: str
    settings: AgentSettings
    booking_link_id: int | None
    conflict_link_ids: tuple[int, ...]
    #: the organizer address of invitations (the agent's own e-mail)
    email: str | None = None


@dataclass(frozen=True)
class Group:
    """A team booked through one link; a booking goes round-robin to a free member."""

    id: str
    name: str
    agent_ids: tuple[str, ...]


@dataclass(frozen=True)
class Booking:
    """One booked meeting. ``manage_token`` is set only on what ``book`` returns."""

    id: int
    agent_id: str
    start: datetime
    end: datetime
    subject: str
    guest_name: str
    guest_email: str
    uid: str
    sequence: int
    status: str  # "confirmed" | "cancelled"
    language: str = "en"
    provider_event_id: str | None = None
    created_at: datetime | None = None
    reminded_at: datetime | None = None
    manage_token: str | None = None
    #: What the booking keeps the agent from: ``[start - buffer_before, end +
    #: buffer_after)`` with the agent's buffers when it was booked (or moved); the
    #: database keeps these ranges of one agent's confirmed bookings apart. None: the
    #: meeting itself (``blocked``).
    blocked_start: datetime | None = None
    blocked_end: datetime | None = None
    #: the online meeting's join link (Google Meet, Teams) the booking calendar added
    join_url: str | None = None

    @property
    def blocked(self) -> tuple[datetime, datetime]:
        """The blocked range, buffers included (the meeting when none was stored)."""
        return (self.blocked_start or self.start, self.blocked_end or self.end)


@dataclass(frozen=True)
class NowState:
    """What an agent is doing now, from the calendar and the phone.

    ``state`` is the most telling of: "on-call", "ringing", "dnd", "in-meeting",
    "forwarded", "free", "unknown" (phone state could not be read and nothing else
    applies). The other fields say the details.
    """

    agent_id: str
    state: str
    meeting_until: datetime | None = None
    forwarded_to: tuple[str, ...] = ()
    forwarded_until: datetime | None = None
    phone: str | None = None  # "idle" | "in-use" | "ringing" | "dnd" | "unavailable" | None


class BookingError(PbxcalError):
    """Base of the errors booking answers (one line for the guest or the admin)."""


class AgentNotFound(BookingError):
    """No such agent or group (404)."""


class SlotTaken(BookingError):
    """The slot is not free (any more): another booking or a meeting took it (409)."""


class BookingRefused(BookingError):
    """The request cannot be booked: outside availability, bad e-mail, ... (400)."""


class LinkUnsuitable(BookingError):
    """The link cannot play the role asked (bookings into an ICS or Exchange link) (409)."""


@dataclass(frozen=True)
class CreatedEvent:
    """What a booking calendar answers when it created the meeting's event."""

    #: the provider's id of the event (CalDAV: its URL), for update and delete
    event_id: str
    #: the online meeting's join link the provider added (Google Meet, Teams), if any
    join_url: str | None = None


class ProviderFailed(BookingError):
    """The booking calendar did not take the event; nothing was booked (502)."""
