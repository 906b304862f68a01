"""Agent availability and meeting booking (issue #12).

Guests book a meeting with an agent (an extension whose calendars pbxcal syncs) from a
shared link; the slots offered are the agent's working hours minus busy time from the
synced calendars; a booking is re-checked against fresh provider data, guarded against
double booking by the database, written into the agent's calendar and sent to the
guest as an iTIP invitation.

The map::

    model.py          Agent, AgentSettings, Group, Booking, NowState, the errors
    settings.py       settings JSON <-> AgentSettings (one-line errors), core rules
    agents.py         agents and groups: the operations the admin API and CLI share
    availability.py   available_slots / group_slots from stored data only
    service.py        book, reschedule, cancel, find_booking, manage_url
    writeback.py      the event in the booking calendar (CalDAV PUT, Google insert)
    itip.py           VEVENT, .ics, iTIP REQUEST/CANCEL e-mails, agent notice
    reminders.py      reminder e-mails (a loop in the daemon)
    now.py            agent_now: meeting, forwarding, phone state over AMI
    api.py            the admin API routes (/api/v1/agents/...)

The buffer rule is the database's: a booking blocks its meeting widened by the agent's
buffers (``[start - buffer_before, end + buffer_after)``, stored with it), two confirmed
bookings of an agent never have overlapping blocked ranges, and availability offers a
slot only when its own blocked range meets none of them and no busy calendar event.

The store side is ``pbxcal.store.booking`` (migrations 0006, 0009). Start at
``service.book``.
"""

from __future__ import annotations

from pbxcal.booking.availability import available_slots, group_slots
from pbxcal.booking.itip import booking_ics
from pbxcal.booking.model import (
    Agent,
    AgentNotFound,
    AgentSettings,
    Booking,
    BookingError,
    BookingRefused,
    Group,
    LinkUnsuitable,
    NowState,
    ProviderFailed,
    SlotTaken,
)
from pbxcal.booking.now import agent_now
from pbxcal.booking.service import book, cancel, find_booking, manage_url, reschedule
from pbxcal.core.slots import Slot

__all__ = [
    "Agent",
    "AgentNotFound",
    "AgentSettings",
    "Booking",
    "BookingError",
    "BookingRefused",
    "Group",
    "LinkUnsuitable",
    "NowState",
    "ProviderFailed",
    "Slot",
    "SlotTaken",
    "agent_now",
    "available_slots",
    "book",
    "booking_ics",
    "cancel",
    "find_booking",
    "group_slots",
    "manage_url",
    "reschedule",
]
