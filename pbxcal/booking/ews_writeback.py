"""Writing booked meetings into an on-premises Exchange calendar (EWS): ``EwsCalendar``,
the ``BookingCalendar`` of an ``ews`` link.

What it does: ``ews_calendar(store, link, guard, source)`` takes the daemon's
``EwsCalendarSource`` of the link (its EWS URL is then the one in use, autodiscovered
or not) or builds one from the link's stored settings and encrypted password exactly as
the sync does (``pbxcal.calendars.providers.SourceFactory``; a customer's link passes
the address guard first), and writes through its ``EwsItems``
(``pbxcal.calendars.ews.items``: exchangelib, its own connections):

* ``create``: a calendar item with the booking's subject and times, busy, the booking's
  UID as the item's UID (so the synced row, the iTIP mail pbxcal sends and a guest's
  reply all name one meeting), the guest as required attendee, the guest and the UID in
  the body; ``SendMeetingInvitations="SendToNone"``: Exchange sends nothing, pbxcal mails
  the iTIP itself. The event id kept with the booking is the item id and its change key
  (``EwsItemRef.text``). No online meeting (Exchange on-premises has none to add).
* ``update``: subject and times, ``AlwaysOverwrite`` (the booking is the truth),
  ``SendToNone``;
* ``delete``: ``HardDelete`` with ``SendMeetingCancellations="SendToNone"``; an item
  already gone counts as deleted.

Errors: every ``CalendarError`` of the adapter becomes ``ProviderFailed`` with its one
line (the mailbox and the EWS response code; never a password). Blocking calls run in a
worker thread. Start reading at ``ews_calendar``.
"""

from __future__ import annotations

import asyncio
from typing import Any

from pbxcal.booking.model import Booking, CreatedEvent, ProviderFailed
from pbxcal.errors import CalendarError
from pbxcal.store import Link, Store

__all__ = ["EwsCalendar", "ews_calendar"]

_TIMEOUT = 20.0
_calls: Any = None  # BlockingCalls for sources built here (outside the daemon)


def ews_calendar(store: Store, link: Link, guard: Any = None, source: Any = None) -> EwsCalendar:
    """The booking calendar of the ``ews`` link (blocking: may read the link's secret)."""
    from pbxcal.calendars.ews import EwsCalendarSource

    if not isinstance(source, EwsCalendarSource):
        source = _ews_source(store, link, guard)
    return EwsCalendar(source.items(timeout=_TIMEOUT))


def _ews_source(store: Store, link: Link, guard: Any) -> Any:
    """An ``EwsCalendarSource`` for ``link`` outside the daemon (built like the sync's)."""
    global _calls
    from pbxcal.calendars.blocking import BlockingCalls
    from pbxcal.calendars.providers import SourceFactory

    if _calls is None:
        _calls = BlockingCalls(workers=1, name="pbxcal-booking-ews")
    factory = SourceFactory(None, 0, _calls, store.load_secret, timeout=_TIMEOUT)  # type: ignore[arg-type]
    if guard is not None:
        factory.guard = guard  # the portal's allowed networks for a customer's link
    try:
        return factory(link)
    except CalendarError as exc:
        raise ProviderFailed(f"Exchange: {exc}") from None


class EwsCalendar:
    """One Exchange mailbox's calendar, written through its ``EwsItems``."""

    def __init__(self, items: Any) -> None:
        self._items = items

    def _fields(self, booking: Booking) -> Any:
        from pbxcal.calendars.ews.items import EwsItemFields

        guest = f"{booking.guest_name} <{booking.guest_email}>"
        return EwsItemFields(
            uid=booking.uid, subject=booking.subject, start=booking.start, end=booking.end,
            body=f"Booked by {guest} ({booking.uid})",
            attendees=((booking.guest_name, booking.guest_email),),
        )  # fmt: skip

    async def _run(self, function: Any, *args: Any) -> Any:
        try:
            return await asyncio.to_thread(function, *args)
        except CalendarError as exc:
            raise ProviderFailed(str(exc)) from None
        except Exception as exc:  # noqa: BLE001 - the library's own; its text may hold data
            raise ProviderFailed(f"Exchange: the write failed ({type(exc).__name__})") from None

    async def create(self, booking: Booking, ics: bytes) -> CreatedEvent:
        ref = await self._run(self._items.create, self._fields(booking))
        return CreatedEvent(ref.text)

    async def update(self, event_id: str, booking: Booking, ics: bytes) -> None:
        from pbxcal.calendars.ews.items import EwsItemRef

        ref = await self._run(EwsItemRef.parse, event_id)
        await self._run(self._items.update, ref, self._fields(booking))

    async def delete(self, event_id: str) -> None:
        from pbxcal.calendars.ews.items import EwsItemRef

        ref = await self._run(EwsItemRef.parse, event_id)
        await self._run(self._items.delete, ref)
