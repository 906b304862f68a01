"""Writing booked meetings into the agent's booking calendar (CalDAV, Google, Microsoft 365,
on-premises Exchange).

What it does: ``calendar_for(store, link, guard)`` builds a ``BookingCalendar`` for the
agent's booking link from the link's stored settings and encrypted credentials (the
same ones the sync reads with, ``pbxcal.calendars.providers``), with three calls:
``create`` (returns a ``CreatedEvent``: the provider's id of the event and the
online meeting's join link, if the provider added one), ``update``, ``delete``. Blocking
libraries run in a worker thread.

* CalDAV: ``PUT {calendar}/{uid}.ics`` of a VCALENDAR through the ``caldav`` library's
  client (``If-None-Match: *`` on create, so an existing event is never overwritten);
  the id is the event's URL. A customer's link connects only through the address guard.
* Google (``google_writeback.GoogleCalendar``): ``events.insert`` / ``update`` /
  ``delete`` with google-api-python-client,
  ``iCalUID`` = the booking's UID, ``sendUpdates=none`` (pbxcal sends the iTIP mail
  itself), a Google Meet link requested through ``conferenceData.createRequest``.
  Needs the scope ``calendar.events`` (``credentials.WRITE_SCOPE``), which grants made
  since bookings are written hold and record (``scopes`` in the stored authorized-user
  JSON). A grant that records only reading scopes is refused with
  ``READ_ONLY_GOOGLE_GRANT`` before anything is sent; one that records none (older, or
  from gcloud) asks Google for ``calendar.events`` and gets ``invalid_scope`` at the token
  endpoint (or a 403 ``insufficientPermissions`` at the write) when it lacks it: the same
  message, nothing written. A service account (domain-wide delegation) asks for
  ``calendar.events`` for the booking; Google answers ``unauthorized_client`` when the
  Workspace admin did not allow that scope: ``DELEGATION_READ_ONLY``.
* Microsoft 365 (Graph): ``POST /users/{mailbox}/events`` (app-only) or ``/me/events``
  (delegated) with ``transactionId`` = the booking's UID (a repeated POST gives the same
  event), ``PATCH`` on reschedule, ``DELETE`` on cancel, a Teams meeting
  (``isOnlineMeeting``, ``teamsForBusiness``; Graph leaves it out where the mailbox has
  no Teams). Through the link's own ``GraphCalendarSource`` (the daemon's, so its token
  cache is shared; a rotated delegated token is stored afterwards). The guest is named
  in the event's body but is not an attendee: for attendees Exchange sends its own
  invitation (with its own UID) next to pbxcal's iTIP mail, and Graph has no
  ``sendUpdates=none``. Needs Calendars.ReadWrite (the application permission for
  app-only links, the delegated one in the user's grant: grants made since bookings are
  written ask for it; an older, read-only grant — seen in its stored token cache, or
  from Graph's 403 ``ErrorAccessDenied`` — is refused with ``READ_ONLY_GRANT``, before
  anything is booked).
* Exchange on-premises (EWS): ``ews_writeback.EwsCalendar`` (exchangelib ``CreateItem`` /
  ``UpdateItem`` / ``DeleteItem`` with ``SendToNone``: Exchange mails nobody).

Errors become ``ProviderFailed`` with one line (never a credential).

Start reading at ``calendar_for``.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from datetime import UTC
from html import escape
from typing import Any, Protocol
from urllib.parse import quote

from pbxcal.booking.ews_writeback import EwsCalendar, ews_calendar
from pbxcal.booking.google_writeback import (
    DELEGATION_READ_ONLY,
    READ_ONLY_GOOGLE_GRANT,
    GoogleCalendar,
)
from pbxcal.booking.model import Booking, CreatedEvent, ProviderFailed
from pbxcal.core.redact import redact_url
from pbxcal.errors import CalendarAuthFailed, CalendarError, StoreError
from pbxcal.store import Link, Store

__all__ = [
    "DELEGATION_READ_ONLY", "READ_ONLY_GOOGLE_GRANT", "READ_ONLY_GRANT", "BookingCalendar",
    "CaldavCalendar", "EwsCalendar", "GoogleCalendar", "GraphCalendar", "calendar_for",
]  # fmt: skip

_TIMEOUT = 20.0
#: Booking into a delegated Microsoft 365 grant without Calendars.ReadWrite.
READ_ONLY_GRANT = (
    "the Microsoft 365 grant allows reading only: link the calendar again to book into it"
)
_graph_calls: Any = None  # BlockingCalls of Graph sources made here (outside the daemon)


class BookingCalendar(Protocol):
    async def create(self, booking: Booking, ics: bytes) -> CreatedEvent: ...

    async def update(self, event_id: str, booking: Booking, ics: bytes) -> None: ...

    async def delete(self, event_id: str) -> None: ...


def calendar_for(
    store: Store,
    link: Link,
    guard: Any = None,
    *,
    source: Any = None,
    saved: Callable[[], Awaitable[None]] | None = None,
) -> BookingCalendar:
    """The booking calendar behind ``link`` (blocking: reads the link's secret).
    ``source``: the daemon's ``GraphCalendarSource`` of a Graph link, if it has one, and
    ``saved`` what stores its rotated token afterwards (``CalendarSync.save_updated_secret``)."""
    from pbxcal.calendars.providers import SECRET_CALDAV_PASSWORD, SECRET_GOOGLE

    if link.provider == "caldav":
        secret = store.load_secret(link.id, SECRET_CALDAV_PASSWORD)
        if secret is None:
            raise ProviderFailed("the booking calendar has no stored password")
        guarded = link.settings.get("guarded") is True
        return CaldavCalendar(
            link.source,
            str(link.settings.get("username", "")),
            secret.decode(),
            calendar_name=link.settings.get("calendar_name"),
            guard=guard if guarded else None,
        )
    if link.provider == "google":
        raw = store.load_secret(link.id, SECRET_GOOGLE)
        if raw is None:
            raise ProviderFailed("the booking calendar has no stored Google credentials")
        return GoogleCalendar(link, json.loads(raw))  # refuses a read-only grant
    if link.provider == "graph":
        from pbxcal.calendars.graph import GraphCalendarSource

        delegated = link.settings.get("auth") == "delegated"
        if delegated:
            _check_write_grant(store, link)
        if not isinstance(source, GraphCalendarSource):
            source, saved = _graph_source(store, link), None
        return GraphCalendar(source, store, link.id, saved, delegated=delegated)
    if link.provider == "ews":
        return ews_calendar(store, link, guard, source)
    raise ProviderFailed(f"bookings cannot be written to a {link.provider} calendar yet")


class CaldavCalendar:
    """One CalDAV calendar collection, written with ``caldav``'s ``DAVClient``."""

    def __init__(
        self,
        url: str,
        username: str,
        password: str,
        *,
        calendar_name: object = None,
        guard: Any = None,
    ) -> None:
        self._url = url
        self._username = username
        self._password = password
        self._calendar_name = str(calendar_name) if calendar_name else None
        self._guard = guard
        self._where = redact_url(url)

    def _client(self) -> Any:
        from caldav.davclient import DAVClient

        client = DAVClient(
            url=self._url, username=self._username, password=self._password,
            timeout=_TIMEOUT,  # type: ignore[arg-type]
            enable_rfc6764=False,
        )  # fmt: skip
        if self._guard is not None:
            from pbxcal.net.urllib3_guard import guard_niquests_session

            guard_niquests_session(client.session, self._guard)
        return client

    def _collection(self, client: Any) -> str:
        if self._calendar_name is None:
            return self._url if self._url.endswith("/") else self._url + "/"
        from pbxcal.calendars.caldav.dav import DavConnection

        connection = DavConnection(
            self._url, self._username, self._password, timeout=_TIMEOUT, guard=self._guard
        )
        try:
            for found in connection.discover(self._url):
                if self._calendar_name in (found.name, found.url.rstrip("/").rsplit("/", 1)[-1]):
                    return found.url if found.url.endswith("/") else found.url + "/"
        finally:
            connection.close()
        raise ProviderFailed(f"CalDAV {self._where}: no calendar {self._calendar_name!r}")

    def _put(self, url: str | None, uid: str, ics: bytes, create: bool) -> str:
        client = self._client()
        try:
            target = url or self._collection(client) + quote(uid, safe="@.-_") + ".ics"
            headers = {"Content-Type": "text/calendar; charset=utf-8"}
            if create:
                headers["If-None-Match"] = "*"
            response = client.put(target, ics.decode("utf-8"), headers)
            _check(response.status, f"CalDAV PUT at {self._where}")
            return str(target)
        except ProviderFailed:
            raise
        except Exception as exc:  # noqa: BLE001 - the library's and the network's
            raise ProviderFailed(f"CalDAV {self._where}: {_line(exc)}") from None
        finally:
            client.close()

    async def create(self, booking: Booking, ics: bytes) -> CreatedEvent:
        return CreatedEvent(await asyncio.to_thread(self._put, None, booking.uid, ics, True))

    async def update(self, event_id: str, booking: Booking, ics: bytes) -> None:
        await asyncio.to_thread(self._put, event_id, booking.uid, ics, False)

    async def delete(self, event_id: str) -> None:
        def run() -> None:
            client = self._client()
            try:
                response = client.delete(event_id)
                if response.status != 404:
                    _check(response.status, f"CalDAV DELETE at {self._where}")
            except ProviderFailed:
                raise
            except Exception as exc:  # noqa: BLE001
                raise ProviderFailed(f"CalDAV {self._where}: {_line(exc)}") from None
            finally:
                client.close()

        await asyncio.to_thread(run)


def read_only_reason(store: Store, link: Link) -> str | None:
    """Why ``link``'s stored grant cannot receive bookings (it records read-only scopes:
    a Google or delegated Microsoft 365 grant made before bookings were written), or
    None when it can or cannot tell. Reads the stored secret only, sends nothing; for
    ``agents add/set``, so an admin hears it when choosing the booking calendar."""
    from pbxcal.calendars.providers import SECRET_GOOGLE

    try:
        if link.provider == "google" and link.settings.get("auth") != "service_account":
            from pbxcal.calendars.google import grant_can_write

            raw = store.load_secret(link.id, SECRET_GOOGLE)
            info = json.loads(raw) if raw is not None else None
            if isinstance(info, dict) and grant_can_write(info) is False:
                return READ_ONLY_GOOGLE_GRANT
        elif link.provider == "graph" and link.settings.get("auth") == "delegated":
            _check_write_grant(store, link)
    except ProviderFailed as exc:
        return str(exc)
    except (StoreError, ValueError):  # no key, unreadable: the booking will say
        return None
    return None


def _check_write_grant(store: Store, link: Link) -> None:
    """A delegated grant whose stored token cache shows no Calendars.ReadWrite (made
    before bookings were written) cannot book: ``READ_ONLY_GRANT``, nothing sent."""
    from pbxcal.calendars.graph.tokens import grant_can_write
    from pbxcal.calendars.providers import SECRET_GRAPH_TOKEN_CACHE

    raw = store.load_secret(link.id, SECRET_GRAPH_TOKEN_CACHE)
    if raw is not None and grant_can_write(raw.decode("utf-8", "replace")) is False:
        raise ProviderFailed(READ_ONLY_GRANT)


def _graph_source(store: Store, link: Link) -> Any:
    """A ``GraphCalendarSource`` for ``link`` outside the daemon (built like the sync's)."""
    global _graph_calls
    from pbxcal.calendars.blocking import BlockingCalls
    from pbxcal.calendars.providers import SourceFactory

    if _graph_calls is None:
        _graph_calls = BlockingCalls(workers=2, name="pbxcal-booking")
    factory = SourceFactory(None, 0, _graph_calls, store.load_secret, timeout=_TIMEOUT)  # type: ignore[arg-type]
    try:
        return factory(link)
    except CalendarError as exc:
        raise ProviderFailed(f"Microsoft 365: {_line(exc)}") from None


class GraphCalendar:
    """One Microsoft 365 calendar, written through its ``GraphCalendarSource``."""

    def __init__(
        self,
        source: Any,
        store: Store,
        link_id: int,
        saved: Callable[[], Awaitable[None]] | None = None,
        *,
        delegated: bool = False,
    ) -> None:
        self._source = source
        self._store = store
        self._link_id = link_id
        self._saved = saved
        self._delegated = delegated

    def _body(self, booking: Booking) -> dict[str, Any]:
        guest = f"{booking.guest_name} <{booking.guest_email}>"
        return {
            "subject": booking.subject,
            "start": _graph_time(booking.start),
            "end": _graph_time(booking.end),
            "showAs": "busy",
            "body": {"contentType": "html",
                     "content": f"<p>Booked by {escape(guest)} ({escape(booking.uid)})</p>"},
            "isOnlineMeeting": True,
            "onlineMeetingProvider": "teamsForBusiness",
        }  # fmt: skip

    async def _call(self, write: Awaitable[Any]) -> Any:
        try:
            return await write
        except CalendarAuthFailed as exc:
            # Graph's 403 ErrorAccessDenied to a delegated grant: it lacks Calendars.ReadWrite
            if self._delegated and "403 ErrorAccessDenied" in str(exc):
                raise ProviderFailed(READ_ONLY_GRANT) from None
            raise ProviderFailed(f"Microsoft 365: {_line(exc)}") from None
        except CalendarError as exc:
            raise ProviderFailed(f"Microsoft 365: {_line(exc)}") from None
        finally:
            await self._after()

    async def _after(self) -> None:
        """Store a token MSAL rotated meanwhile (delegated links)."""
        if self._saved is not None:
            await self._saved()
            return
        try:
            update = await asyncio.to_thread(self._source.updated_secret)
            if update is not None:
                await asyncio.to_thread(self._store.save_secret, self._link_id, *update)
        except Exception as exc:  # noqa: BLE001 - the write is done; the sync stores it later
            import logging

            logging.getLogger(__name__).warning(
                "link %d: a rotated Microsoft token was not stored: %s", self._link_id, _line(exc)
            )

    async def create(self, booking: Booking, ics: bytes) -> CreatedEvent:
        answer = await self._call(self._source.create_event(self._body(booking), booking.uid))
        meeting = answer.get("onlineMeeting")
        join = meeting.get("joinUrl") if isinstance(meeting, dict) else None
        return CreatedEvent(str(answer["id"]), join if isinstance(join, str) else None)

    async def update(self, event_id: str, booking: Booking, ics: bytes) -> None:
        changes = {key: value for key, value in self._body(booking).items()
                   if key in ("subject", "start", "end", "body")}  # fmt: skip
        await self._call(self._source.update_event(event_id, changes))

    async def delete(self, event_id: str) -> None:
        await self._call(self._source.delete_event(event_id))


def _graph_time(moment: Any) -> dict[str, str]:
    return {"dateTime": moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S"), "timeZone": "UTC"}


def _check(status: int, what: str) -> None:
    if status == 412:
        raise ProviderFailed(f"{what}: an event with this UID exists already")
    if not 200 <= status < 300:
        raise ProviderFailed(f"{what} answered {status}")


def _line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())[:200]
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
