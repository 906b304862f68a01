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
* Google: ``events.insert`` / ``update`` / ``delete`` with google-api-python-client,
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
#: Booking into a Google grant that holds no scope to write events.
READ_ONLY_GOOGLE_GRANT = (
    "the Google grant allows reading only: link the calendar again to book into it"
)
#: Booking through a service account whose domain-wide delegation lacks calendar.events.
DELEGATION_READ_ONLY = (
    "the Workspace admin has not allowed this service account to write events: add the "
    "scope https://www.googleapis.com/auth/calendar.events to its domain-wide delegation"
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


class GoogleCalendar:
    """One Google calendar, written with google-api-python-client."""

    def __init__(self, link: Link, info: Any) -> None:
        from pbxcal.calendars.google import grant_can_write

        self._link = link
        self._info = info
        self._delegated = link.settings.get("auth") == "service_account"
        if not self._delegated and isinstance(info, dict) and grant_can_write(info) is False:
            raise ProviderFailed(READ_ONLY_GOOGLE_GRANT)  # the stored grant says so

    def _events(self) -> tuple[Any, Any]:
        import google_auth_httplib2  # type: ignore[import-untyped]
        import httplib2  # type: ignore[import-untyped]
        from googleapiclient import discovery  # type: ignore[import-untyped]

        from pbxcal.calendars.google import (
            WRITE_SCOPE,
            delegated_credentials,
            grant_scopes,
            user_credentials,
        )

        settings = self._link.settings
        try:
            if self._delegated:
                credentials = delegated_credentials(
                    self._info, str(settings.get("subject", "")), (WRITE_SCOPE,)
                )
            else:  # what the grant holds (it can write), else ask for the write scope
                credentials = user_credentials(
                    self._info, grant_scopes(self._info) or (WRITE_SCOPE,)
                )
        except CalendarError as exc:
            raise ProviderFailed(f"Google Calendar: {exc}") from None
        endpoint = settings.get("api_endpoint")
        options = {"api_endpoint": str(endpoint)} if endpoint else None
        service = discovery.build(
            "calendar", "v3", http=httplib2.Http(timeout=_TIMEOUT), client_options=options,
            static_discovery=True, cache_discovery=False,
        )  # fmt: skip
        plain = httplib2.Http(timeout=_TIMEOUT)
        http = google_auth_httplib2.AuthorizedHttp(credentials, http=plain)
        return service.events(), http

    def _run(self, build: Any) -> Any:
        from google.auth.exceptions import RefreshError
        from googleapiclient.errors import HttpError  # type: ignore[import-untyped]

        events, http = self._events()
        try:
            return build(events).execute(http=http, num_retries=0)
        except RefreshError as exc:  # the token endpoint's answer, before any write
            raise ProviderFailed(self._refused(exc)) from None
        except HttpError as exc:
            status = int(exc.resp.status)
            if status == 404 and getattr(build, "missing_ok", False):
                return {}
            if status == 403 and _google_reason(exc) == "insufficientPermissions":
                raise ProviderFailed(
                    DELEGATION_READ_ONLY if self._delegated else READ_ONLY_GOOGLE_GRANT
                ) from None
            raise ProviderFailed(f"Google Calendar answered {status}") from None
        except Exception as exc:  # noqa: BLE001 - transport and auth errors
            raise ProviderFailed(f"Google Calendar: {_line(exc)}") from None
        finally:
            http.close()

    def _refused(self, exc: BaseException) -> str:
        """The one line for a refused token request (``invalid_scope``: a user grant
        without the write scope; ``unauthorized_client``: delegation without it)."""
        answer = exc.args[1] if len(exc.args) > 1 and isinstance(exc.args[1], dict) else {}
        code = str(answer.get("error") or "")
        if code == "invalid_scope" and not self._delegated:
            return READ_ONLY_GOOGLE_GRANT
        if code == "unauthorized_client" and self._delegated:
            return DELEGATION_READ_ONLY
        from pbxcal.calendars.google.web_flow import safe_word

        return f"Google Calendar: the token endpoint refused ({safe_word(code or 'no answer')})"

    def _body(self, booking: Booking) -> dict[str, Any]:
        return {
            "summary": booking.subject,
            "iCalUID": booking.uid,
            "sequence": booking.sequence,
            "start": {"dateTime": booking.start.astimezone(UTC).isoformat()},
            "end": {"dateTime": booking.end.astimezone(UTC).isoformat()},
            "attendees": [{"email": booking.guest_email, "displayName": booking.guest_name}],
            "conferenceData": {
                "createRequest": {
                    "requestId": booking.uid[:64],
                    "conferenceSolutionKey": {"type": "hangoutsMeet"},
                }
            },
        }

    async def create(self, booking: Booking, ics: bytes) -> CreatedEvent:
        calendar_id, body = self._link.source, self._body(booking)

        def insert(events: Any) -> Any:
            return events.insert(
                calendarId=calendar_id, body=body, conferenceDataVersion=1, sendUpdates="none"
            )

        answer = await asyncio.to_thread(self._run, insert)
        join = answer.get("hangoutLink")
        return CreatedEvent(str(answer.get("id", "")), join if isinstance(join, str) else None)

    async def update(self, event_id: str, booking: Booking, ics: bytes) -> None:
        calendar_id, body = self._link.source, self._body(booking)

        def change(events: Any) -> Any:
            return events.update(
                calendarId=calendar_id, eventId=event_id, body=body, sendUpdates="none"
            )

        await asyncio.to_thread(self._run, change)

    async def delete(self, event_id: str) -> None:
        calendar_id = self._link.source

        def remove(events: Any) -> Any:
            return events.delete(calendarId=calendar_id, eventId=event_id, sendUpdates="none")

        remove.missing_ok = True  # type: ignore[attr-defined]
        await asyncio.to_thread(self._run, remove)


def _google_reason(exc: Any) -> str:
    """The ``reason`` of a Google API error answer (``insufficientPermissions``)."""
    try:
        errors = json.loads(exc.content)["error"]["errors"]
        return str(errors[0]["reason"])
    except (ValueError, KeyError, IndexError, TypeError):
        return ""


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
