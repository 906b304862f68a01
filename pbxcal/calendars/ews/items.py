"""Writing single calendar items into an Exchange mailbox through EWS (exchangelib): what
``pbxcal.booking`` books into an on-premises Exchange link.

``EwsItems(settings, password)`` writes with an exchangelib ``Account`` built exactly as
the sync builds its own (``connection.make_account``: the link's endpoint, NTLM/basic/OAuth
credentials, delegate or impersonation access, CA bundle, fixed server version), on
connections of its own (``channel="booking"``), so a write never waits for a sync's.
With ``autodiscover`` and no URL known yet (``service_endpoint == ""``), the URL is found
once (``discovery``) before the first write.

* ``create(fields)`` → ``EwsItemRef(item_id, changekey)``: ``CreateItem`` in the
  mailbox's calendar with ``SendMeetingInvitations="SendToNone"`` (Exchange sends no
  invitation: pbxcal mails its own iTIP), the item's ``UID`` set by the caller (Exchange
  then exports that UID, so the synced row and the iTIP mail name the same meeting);
* ``update(ref, fields)``: ``UpdateItem`` of subject, start and end with
  ``ConflictResolution="AlwaysOverwrite"`` (the booking is the truth; a change key gone
  stale meanwhile does not refuse the write) and
  ``SendMeetingInvitationsOrCancellations="SendToNone"``;
* ``delete(ref)``: ``DeleteItem`` (``HardDelete``, ``SendMeetingCancellations=
  "SendToNone"``) by item id alone (a stale change key must not keep the item); an item
  already gone counts as deleted.

``EwsItemRef.text`` / ``EwsItemRef.parse`` keep a reference as one string (the id, a
space, the change key: EWS ids are base64 and hold no space). Errors are pbxcal's
(``connection.ews_errors``: ``CalendarAuthFailed`` for a refused password or a mailbox the
account may not write to, ``CalendarUnavailable``, ``CalendarRateLimited``,
``CalendarError``), one line each, never a password. Blocking: call from a worker thread.

Must not do: send meeting mail, or write anything but the one item it is given.
Start reading at ``EwsItems.create``.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

from exchangelib import CalendarItem, EWSDateTime, EWSTimeZone
from exchangelib import errors as ews
from exchangelib.items import ALWAYS_OVERWRITE, HARD_DELETE, SEND_TO_NONE
from exchangelib.properties import Attendee, ItemId, Mailbox

from pbxcal.calendars.ews.connection import (
    EwsSettings,
    ews_errors,
    make_account,
    once_more_on_expiry,
)
from pbxcal.calendars.ews.discovery import discover_ews_url
from pbxcal.errors import CalendarError

__all__ = ["EwsItemFields", "EwsItemRef", "EwsItems"]


@dataclass(frozen=True)
class EwsItemFields:
    """What a written item holds: times are aware; ``attendees`` are (name, address)."""

    uid: str
    subject: str
    start: datetime
    end: datetime
    body: str = ""
    attendees: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class EwsItemRef:
    """An item as EWS names it: its id and the change key it had when written."""

    item_id: str
    changekey: str | None = None

    @property
    def text(self) -> str:
        return self.item_id if not self.changekey else f"{self.item_id} {self.changekey}"

    @classmethod
    def parse(cls, text: str) -> EwsItemRef:
        item_id, _, changekey = text.strip().partition(" ")
        if not item_id:
            raise CalendarError("EWS: the stored item reference is empty")
        return cls(item_id, changekey or None)


class EwsItems:
    """Calendar items of one mailbox, written (see the module docstring)."""

    def __init__(self, settings: EwsSettings, password: str, *, timeout: float = 30.0) -> None:
        self._settings = settings
        self._password = password
        self._timeout = timeout
        self._account: Any = None
        self._lock = threading.Lock()
        self._where = f"EWS {settings.mailbox}"

    def create(self, fields: EwsItemFields) -> EwsItemRef:
        def run() -> EwsItemRef:
            account = self._account_now()
            item = CalendarItem(account=account, folder=account.calendar, **_values(fields))
            item.save(send_meeting_invitations=SEND_TO_NONE)
            return EwsItemRef(str(item.id), str(item.changekey) if item.changekey else None)

        made: EwsItemRef = self._run(run)
        return made

    def update(self, ref: EwsItemRef, fields: EwsItemFields) -> None:
        def run() -> None:
            account, values = self._account_now(), _values(fields)
            changekey = ref.changekey or self._changekey(account, ref.item_id)
            item = CalendarItem(
                account=account, id=ref.item_id, changekey=changekey,
                subject=values["subject"], start=values["start"], end=values["end"],
            )  # fmt: skip
            item.save(
                update_fields=["subject", "start", "end"],
                conflict_resolution=ALWAYS_OVERWRITE,
                send_meeting_invitations=SEND_TO_NONE,
            )

        self._run(run)

    def delete(self, ref: EwsItemRef) -> None:
        def run() -> None:
            answers = self._account_now().bulk_delete(
                ids=[ItemId(id=ref.item_id)], delete_type=HARD_DELETE,
                send_meeting_cancellations=SEND_TO_NONE, suppress_read_receipts=True,
            )  # fmt: skip
            for answer in answers:
                if isinstance(answer, ews.ErrorItemNotFound):
                    continue  # deleted already (by the agent, or a repeated cancel)
                if isinstance(answer, Exception):
                    raise answer

        self._run(run)

    # --- in the caller's (worker) thread -------------------------------------------------

    def _run(self, function: Any) -> Any:
        with self._lock, ews_errors(self._where, self._settings, who="booking"):
            return once_more_on_expiry(
                self._where, function, bearer=self._settings.auth == "oauth"
            )

    def _changekey(self, account: Any, item_id: str) -> str:
        """The item's current change key (GetItem), for a reference stored without one."""
        (found,) = account.fetch(ids=[ItemId(id=item_id)], only_fields=["uid"])
        if isinstance(found, Exception):
            raise found
        return str(found.changekey)

    def _account_now(self) -> Any:
        if self._account is None:
            settings = self._settings
            if not settings.service_endpoint:
                if not settings.autodiscover:
                    raise CalendarError(f"{self._where}: no EWS URL is known")
                found = discover_ews_url(settings, self._password)
                settings = self._settings = replace(settings, service_endpoint=found)
            self._account = make_account(
                settings, self._password, timeout=self._timeout, channel="booking"
            )
        return self._account


def _values(fields: EwsItemFields) -> dict[str, Any]:
    utc = EWSTimeZone("UTC")
    values: dict[str, Any] = {
        "uid": fields.uid,
        "subject": fields.subject,
        "body": fields.body,
        "start": EWSDateTime.from_datetime(fields.start.astimezone(UTC)).astimezone(utc),
        "end": EWSDateTime.from_datetime(fields.end.astimezone(UTC)).astimezone(utc),
        "legacy_free_busy_status": "Busy",
        "reminder_is_set": False,
    }
    if fields.attendees:
        values["required_attendees"] = [
            Attendee(mailbox=Mailbox(name=name, email_address=address), response_type="Unknown")
            for name, address in fields.attendees
        ]
    return values
