"""Writing booked meetings into a Google calendar (``pbxcal.booking.writeback``'s Google part).

What it does: ``GoogleCalendar`` creates, updates and deletes the booking's event with
google-api-python-client (``events.insert`` / ``update`` / ``delete``, ``iCalUID`` = the
booking's UID, ``sendUpdates=none``, a Google Meet link through
``conferenceData.createRequest``), in a worker thread. It needs the scope
``calendar.events``: a stored grant that records only reading scopes is refused before
anything is sent (``READ_ONLY_GOOGLE_GRANT``); Google's ``invalid_scope`` or 403
``insufficientPermissions`` give the same message; a service account whose domain-wide
delegation lacks the scope gives ``DELEGATION_READ_ONLY``.

What it must not do: put a credential into an error message.

Start reading at ``GoogleCalendar.create``; ``writeback.calendar_for`` builds it.
"""

from __future__ import annotations

import asyncio
import json
from datetime import UTC
from typing import Any

from pbxcal.booking.model import Booking, CreatedEvent, ProviderFailed
from pbxcal.errors import CalendarError
from pbxcal.store import Link

_TIMEOUT = 20.0
#: Booking into a Google grant that holds no scope to write events.
READ_ONLY_GOOGLE_GRANT = (
    "the Google grant allows reading only: link the calendar again to book into it"
)
#: Booking through a service account whose domain-wide delegation lacks calendar.events.
DELEGATION_READ_ONLY = (
    "the Workspace admin has not allowed this service account to write events: add the "
    "scope https://www.googleapis.com/auth/calendar.events to its domain-wide delegation"
)


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


def _line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())[:200]
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
