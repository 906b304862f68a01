"""Writing booked meetings into the agent's booking calendar (CalDAV, Google).

What it does: ``calendar_for(store, link, guard)`` builds a ``BookingCalendar`` for the
agent's booking link from the link's stored settings and encrypted credentials (the
same ones the sync reads with, ``pbxcal.calendars.providers``), with three calls:
``create`` (returns the provider's id of the event), ``update``, ``delete``. Blocking
libraries run in a worker thread.

* CalDAV: ``PUT {calendar}/{uid}.ics`` of a VCALENDAR through the ``caldav`` library's
  client (``If-None-Match: *`` on create, so an existing event is never overwritten);
  the id is the event's URL. A customer's link connects only through the address guard.
* Google: ``events.insert`` / ``update`` / ``delete`` with google-api-python-client,
  ``iCalUID`` = the booking's UID, ``sendUpdates=none`` (pbxcal sends the iTIP mail
  itself), a Google Meet link requested through ``conferenceData.createRequest``.

Errors become ``ProviderFailed`` with one line (never a credential).

Start reading at ``calendar_for``.
"""

from __future__ import annotations

import asyncio
import json
from datetime import UTC
from typing import Any, Protocol
from urllib.parse import quote

from pbxcal.booking.model import Booking, ProviderFailed
from pbxcal.core.redact import redact_url
from pbxcal.store import Link, Store

_TIMEOUT = 20.0


class BookingCalendar(Protocol):
    async def create(self, booking: Booking, ics: bytes) -> str: ...

    async def update(self, event_id: str, booking: Booking, ics: bytes) -> None: ...

    async def delete(self, event_id: str) -> None: ...


def calendar_for(store: Store, link: Link, guard: Any = None) -> BookingCalendar:
    """The booking calendar behind ``link`` (blocking: reads the link's secret)."""
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
        return GoogleCalendar(link, json.loads(raw))
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

    async def create(self, booking: Booking, ics: bytes) -> str:
        return await asyncio.to_thread(self._put, None, booking.uid, ics, True)

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
        self._link = link
        self._info = info

    def _events(self) -> tuple[Any, Any]:
        import google_auth_httplib2  # type: ignore[import-untyped]
        import httplib2  # type: ignore[import-untyped]
        from googleapiclient import discovery  # type: ignore[import-untyped]

        from pbxcal.calendars.google import delegated_credentials, user_credentials

        settings = self._link.settings
        if settings.get("auth") == "service_account":
            credentials = delegated_credentials(self._info, str(settings.get("subject", "")))
        else:
            credentials = user_credentials(self._info)
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
        from googleapiclient.errors import HttpError  # type: ignore[import-untyped]

        events, http = self._events()
        try:
            return build(events).execute(http=http, num_retries=0)
        except HttpError as exc:
            status = int(exc.resp.status)
            if status == 404 and getattr(build, "missing_ok", False):
                return {}
            raise ProviderFailed(f"Google Calendar answered {status}") from None
        except Exception as exc:  # noqa: BLE001 - transport and auth errors
            raise ProviderFailed(f"Google Calendar: {_line(exc)}") from None
        finally:
            http.close()

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

    async def create(self, booking: Booking, ics: bytes) -> str:
        calendar_id, body = self._link.source, self._body(booking)

        def insert(events: Any) -> Any:
            return events.insert(
                calendarId=calendar_id, body=body, conferenceDataVersion=1, sendUpdates="none"
            )

        answer = await asyncio.to_thread(self._run, insert)
        return str(answer.get("id", ""))

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


def _check(status: int, what: str) -> None:
    if status == 412:
        raise ProviderFailed(f"{what}: an event with this UID exists already")
    if not 200 <= status < 300:
        raise ProviderFailed(f"{what} answered {status}")


def _line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())[:200]
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
