"""``EwsCalendarSource``: one Exchange mailbox's calendar through EWS (``IncrementalSource``).

``changes(cursor)`` runs one EWS SyncFolderItems round (exchangelib's ``sync_items``, only
item ids and UIDs) from the sync state in the cursor, then fetches the created and updated
items' MimeContent (plus ``is_cancelled`` and ``legacy_free_busy_status``, laid over the
exported master: ``STATUS:CANCELLED``, ``TRANSP:TRANSPARENT``) with GetItem (batches of
``FETCH_BATCH``). Exchange exports a calendar
item's MimeContent as a VCALENDAR holding the item's VEVENT — for a recurring master the
RRULE, EXDATEs of deleted occurrences and one VEVENT per modified occurrence — which becomes
one row per VEVENT (``caldav.objects.read_object``: the same per-UID object as CalDAV's).
Deleted items become removed UIDs, overrides an item no longer carries removed instances.

The cursor is compact JSON: ``{"v": 1, "state": <EWS sync state>, "items": {digest of the
item id: [UID, [override RECURRENCE-IDs]]}, "tz": [TZIDs seen]}`` — SyncFolderItems reports
a deletion by item id only, hence the map (about 80 bytes per item). No cursor, an
unreadable one, or ``ErrorInvalidSyncStateData`` mean a full read (``ChangeSet.full``); so
does an incremental round bringing a time zone the stored calendar has not seen (the rows
then need the new VTIMEZONE block). With ``autodiscover`` the cursor also keeps the EWS
URL found (``"url"``): a restart reads it from there instead of autodiscovering again, and
only a failure at a stored URL makes the source autodiscover once more (a moved mailbox:
then a full read at the new URL).

An ErrorServerBusy the mailbox's notification stream got (``held_for``) makes ``changes``
raise ``CalendarRateLimited`` without asking the server; an OAuth token refused or found
expired is replaced once per call (``once_more_on_expiry``). ``notifications()`` gives the
mailbox's ``EwsNotifications`` (``push``) for the daemon's ``EwsPush``; ``items()`` its
``EwsItems`` (``items``) for writing booked meetings.

Construction does no I/O; each ``changes``/``check`` runs in ``BlockingCalls`` within
``deadline`` seconds, each HTTP request within ``timeout``. Usage::

    settings = EwsSettings(service_endpoint="https://mail.example/EWS/Exchange.asmx",
                           mailbox="alice@example.org", username="EXAMPLE\\\\svc-pbxcal",
                           auth="ntlm", access="impersonation", ca_bundle="/etc/pbxcal/ca.pem")
    source = EwsCalendarSource(calls, settings, password=secret)
    await source.check()                      # when the link is added: plain errors
    change = await source.changes(stored_cursor)   # None: nothing changed

Must not do: I/O on the event loop, keep state between calls but the resolved calendar
folder and the EWS URL in use (the cursor is the state), or put a password into a message.
Start reading at ``EwsCalendarSource.changes``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any, TypeVar

import icalendar
from exchangelib import errors as ews
from exchangelib.properties import ItemId

from pbxcal.calendars.blocking import BlockingCalls
from pbxcal.calendars.caldav.objects import read_object
from pbxcal.calendars.changes import ChangeSet, EventRow
from pbxcal.calendars.ews.connection import (
    EwsSettings,
    ews_errors,
    held_for,
    make_account,
    once_more_on_expiry,
)
from pbxcal.calendars.ews.discovery import discover_ews_url
from pbxcal.calendars.ews.items import EwsItems
from pbxcal.calendars.ews.push import EwsNotifications
from pbxcal.errors import (
    CalendarAuthFailed,
    CalendarError,
    CalendarRateLimited,
    CalendarUnavailable,
)

__all__ = ["DEFAULT_DEADLINE", "DEFAULT_TIMEOUT", "FETCH_BATCH", "EwsCalendarSource"]

log = logging.getLogger(__name__)

#: Seconds per HTTP request.
DEFAULT_TIMEOUT = 30.0
#: Seconds for one whole ``changes`` round (sync plus fetches).
DEFAULT_DEADLINE = 120.0
#: Items per GetItem request.
FETCH_BATCH = 50
#: Changes per SyncFolderItems page.
SYNC_PAGE = 200

T = TypeVar("T")

_CREATE = "create"
_UPDATE = "update"
_DELETE = "delete"


@dataclass
class _Cursor:
    state: str | None = None
    items: dict[str, tuple[str, list[str]]] = field(default_factory=dict)
    tzids: set[str] = field(default_factory=set)
    url: str | None = None  # the EWS URL autodiscover found

    def dump(self) -> str:
        items = {k: [uid, sorted(rids)] for k, (uid, rids) in sorted(self.items.items())}
        data: dict[str, Any] = {"v": 1, "state": self.state, "items": items}
        data["tz"] = sorted(self.tzids)
        if self.url is not None:
            data["url"] = self.url
        return json.dumps(data, separators=(",", ":"))

    @classmethod
    def load(cls, text: str | None) -> _Cursor | None:
        if not text:
            return None
        try:
            data = json.loads(text)
            if (
                not isinstance(data, dict)
                or data.get("v") != 1
                or not isinstance(data.get("state"), str)
            ):
                return None
            items: dict[str, tuple[str, list[str]]] = {}
            for key, value in data["items"].items():
                uid, rids = value
                if not isinstance(key, str) or not isinstance(uid, str):
                    return None
                items[key] = (uid, [str(r) for r in rids])
            tzids = {str(t) for t in data.get("tz", [])}
            url = data.get("url")
        except (ValueError, TypeError, AttributeError, KeyError):
            return None
        return cls(data["state"], items, tzids, url if isinstance(url, str) else None)


@dataclass
class _Fetched:
    uid: str
    rows: tuple[EventRow, ...]
    overrides: list[str]
    timezones: dict[str, str]


class EwsCalendarSource:
    """The default calendar of one Exchange mailbox, read incrementally (see the module)."""

    provider = "ews"

    def __init__(
        self,
        calls: BlockingCalls,
        settings: EwsSettings,
        *,
        password: str,
        timeout: float = DEFAULT_TIMEOUT,
        deadline: float = DEFAULT_DEADLINE,
    ) -> None:
        self._calls = calls
        self._settings = settings
        # autodiscover: unknown until found (or read from the cursor)
        self._endpoint: str | None = None if settings.autodiscover else settings.service_endpoint
        self._endpoint_stored = False  # it came from a cursor: may be stale
        self._password = password
        self._timeout = timeout
        self._deadline = deadline
        self._account: Any = None
        self._folder: Any = None
        self._where = f"EWS {settings.mailbox}"
        # A call that timed out keeps running in its thread; the next one must not share
        # the folder (and its sync state) with it.
        self._busy = threading.Lock()

    def __repr__(self) -> str:
        where = self._endpoint or "autodiscover"
        return f"EwsCalendarSource({where!r}, {self._settings.mailbox!r})"

    async def check(self) -> None:
        """Reach the server and the mailbox's calendar once: plain errors for a wrong
        password (``CalendarAuthFailed``), URL (``CalendarUnavailable``/``CalendarError``)
        or mailbox, when the link is added."""
        await self._calls.run(self._alone, self._check, timeout=self._deadline, what=self._where)

    async def changes(self, cursor: str | None) -> ChangeSet | None:
        """What changed since ``cursor``; ``None`` when nothing did. See the module docstring."""
        return await self._calls.run(
            self._alone, self._changes, cursor, timeout=self._deadline, what=self._where
        )

    # --- in a worker thread -------------------------------------------------------------

    @property
    def settings(self) -> EwsSettings:
        """The link's settings with the EWS URL in use (``""`` before autodiscover)."""
        return replace(self._settings, service_endpoint=self._endpoint or "")

    def notifications(self, timeout: float = DEFAULT_TIMEOUT) -> EwsNotifications | None:
        """This mailbox's calendar notifications, on connections of their own (no I/O);
        None while autodiscover has not found the EWS URL yet."""
        if self._endpoint is None:
            return None
        return EwsNotifications(self.settings, self._password, timeout=timeout)

    def items(self, timeout: float = DEFAULT_TIMEOUT) -> EwsItems:
        """This mailbox's calendar items to write (booked meetings; ``items``), on
        connections of their own, with the credentials and settings this source reads
        with (no I/O; with autodiscover and no URL known yet, the writer finds it)."""
        return EwsItems(self.settings, self._password, timeout=timeout)

    def _alone(self, function: Callable[..., T], *args: Any) -> T:
        if not self._busy.acquire(blocking=False):
            raise CalendarUnavailable(f"{self._where}: the previous request is still running")
        try:
            waiting = held_for(self.settings, "sync") if self._endpoint else 0.0
            if waiting > 0:  # the server said ErrorServerBusy to this mailbox's stream
                raise CalendarRateLimited(
                    f"{self._where}: the Exchange server asked to wait (ErrorServerBusy)",
                    retry_after=waiting,
                )
            return function(*args)
        finally:
            self._busy.release()

    def _calendar(self) -> Any:
        if self._folder is None:
            if self._account is None:
                self._account = make_account(self.settings, self._password, timeout=self._timeout)
            self._folder = self._account.calendar
        return self._folder

    def _once_more(self, function: Callable[..., T], *args: Any) -> T:
        bearer = self._settings.auth == "oauth"
        return once_more_on_expiry(self._where, function, *args, bearer=bearer)

    def _discover(self, stored: str | None) -> None:
        """Know the EWS URL: the stored one, else autodiscover's (see ``discovery``)."""
        if self._endpoint is not None:
            return
        if stored is not None:
            self._endpoint, self._endpoint_stored = stored, True
            return
        self._endpoint = discover_ews_url(self._settings, self._password)
        self._endpoint_stored = False
        log.info("%s: autodiscover found the EWS URL %s", self._where, self._endpoint)

    def _rediscover(self) -> bool:
        """After a failure at a stored URL: autodiscover again; True when the URL moved."""
        if not (self._settings.autodiscover and self._endpoint_stored):
            return False
        found = discover_ews_url(self._settings, self._password)
        self._endpoint_stored = False
        if found == self._endpoint:
            return False
        log.info("%s: the mailbox moved to %s (autodiscover)", self._where, found)
        self._endpoint, self._account, self._folder = found, None, None
        return True

    def _check(self) -> None:
        self._discover(None)
        with ews_errors(self._where, self.settings):
            self._once_more(self._calendar)

    def _changes(self, text: str | None) -> ChangeSet | None:
        previous = _Cursor.load(text)
        if text and previous is None:
            log.info(
                "%s: the stored cursor is unreadable; reading the calendar in full", self._where
            )
        self._discover(previous.url if previous is not None else None)
        try:
            with ews_errors(self._where, self.settings):
                return self._once_more(self._read_since, previous)
        except CalendarError as exc:
            if isinstance(exc, (CalendarAuthFailed, CalendarRateLimited)):
                raise
            try:
                moved = self._rediscover()
            except CalendarError:
                moved = False  # autodiscover failing too: the first error says more
            if not moved:
                raise
        with ews_errors(self._where, self.settings):  # at the new URL: a full read
            return self._once_more(self._read_since, None)

    def _read_since(self, previous: _Cursor | None) -> ChangeSet | None:
        if previous is not None:
            try:
                change = self._incremental(previous)
            except ews.ErrorInvalidSyncStateData:
                log.info("%s: the server refused the sync state; reading in full", self._where)
            else:
                if change is not _FULL:
                    return change  # type: ignore[return-value]
                log.info("%s: a new time zone; reading the calendar in full", self._where)
        return self._full()

    def _sync(self, state: str | None) -> tuple[list[tuple[str, str]], str]:
        folder = self._calendar()
        # sync_items() falls back to the folder's own last state when given None: a full
        # read must start from no state at all.
        folder.item_sync_state = state
        changes: list[tuple[str, str]] = []
        for change_type, item in folder.sync_items(
            sync_state=state, only_fields=["uid"], max_changes_returned=SYNC_PAGE
        ):
            if change_type in (_CREATE, _UPDATE) or change_type == _DELETE:
                changes.append((change_type, item.id))
        new_state = folder.item_sync_state
        if not isinstance(new_state, str):
            raise CalendarError(f"{self._where}: the server sent no sync state")
        return changes, new_state

    def _fetch(self, ids: list[str]) -> dict[str, _Fetched]:
        account = self._account
        out: dict[str, _Fetched] = {}
        for start in range(0, len(ids), FETCH_BATCH):
            batch = ids[start : start + FETCH_BATCH]
            results = account.fetch(ids=[ItemId(id=i) for i in batch], only_fields=list(_FIELDS))
            for item_id, item in zip(batch, results, strict=True):
                if isinstance(item, ews.ErrorItemNotFound):
                    continue  # deleted between the sync and the fetch: the next round says so
                if isinstance(item, Exception):
                    raise item
                fetched = self._read(item_id, item)
                if fetched is not None:
                    out[item_id] = fetched
        return out

    def _read(self, item_id: str, item: Any) -> _Fetched | None:
        mime = item.mime_content
        if not mime:
            log.warning("%s: an item came without MimeContent; left out", self._where)
            return None
        raw = mime if isinstance(mime, bytes) else str(mime).encode()
        text = raw.decode("utf-8", errors="replace")
        try:
            obj = read_object(text, f"{self._where} item {item_id[-12:]}")
        except CalendarError as exc:
            log.warning("%s", exc)
            return None
        if obj.uid is None:
            return None
        rows = tuple(_with_item_fields(row, item) for row in obj.rows)
        return _Fetched(obj.uid, rows, list(obj.overrides), obj.timezones)

    def _full(self) -> ChangeSet:
        changes, state = self._sync(None)
        ids = [i for kind, i in changes if kind != _DELETE]
        fetched = self._fetch(list(dict.fromkeys(ids)))
        cursor = _Cursor(state, url=self._endpoint if self._settings.autodiscover else None)
        rows: dict[tuple[str, str | None], EventRow] = {}
        zones: dict[str, str] = {}
        for item_id, got in fetched.items():
            cursor.items[_key(item_id)] = (got.uid, got.overrides)
            for row in got.rows:
                rows[(row.uid, row.recurrence_id)] = row
            for tzid, block in got.timezones.items():
                zones.setdefault(tzid, block)
        cursor.tzids = set(zones)
        return ChangeSet(
            cursor=cursor.dump(),
            full=True,
            upserted=tuple(rows.values()),
            timezones="".join(zones[t] for t in sorted(zones)),
        )

    def _incremental(self, previous: _Cursor) -> ChangeSet | object | None:
        changes, state = self._sync(previous.state)
        cursor = _Cursor(state, dict(previous.items), set(previous.tzids), previous.url)
        updated = list(dict.fromkeys(i for kind, i in changes if kind != _DELETE))
        deleted = [i for kind, i in changes if kind == _DELETE]
        fetched = self._fetch(updated)
        if any(t not in previous.tzids for got in fetched.values() for t in got.timezones):
            return _FULL
        upserted: list[EventRow] = []
        removed_instances: list[tuple[str, str]] = []
        removed_uids: set[str] = set()
        old_overrides: dict[str, set[str]] = {}
        for item_id in deleted:
            gone = cursor.items.pop(_key(item_id), None)
            if gone is not None:
                removed_uids.add(gone[0])
                old_overrides.setdefault(gone[0], set()).update(gone[1])
        for item_id, got in fetched.items():
            old = cursor.items.get(_key(item_id))
            if old is not None:
                if old[0] != got.uid:
                    removed_uids.add(old[0])
                old_overrides.setdefault(old[0], set()).update(old[1])
            cursor.items[_key(item_id)] = (got.uid, got.overrides)
            upserted.extend(got.rows)
        live: dict[str, set[str]] = {}
        for uid, current in cursor.items.values():
            live.setdefault(uid, set()).update(current)
        removed = tuple(sorted(removed_uids - set(live)))
        # a UID still (or again) there drops the overrides it no longer has
        for uid, had in sorted(old_overrides.items()):
            if uid in live:
                removed_instances += [(uid, r) for r in sorted(had - live[uid])]
        if not upserted and not removed and not removed_instances:
            return None
        return ChangeSet(
            cursor=cursor.dump(),
            full=False,
            upserted=tuple(upserted),
            removed=removed,
            removed_instances=tuple(removed_instances),
        )


_FULL = object()


def _key(item_id: str) -> str:
    """An EWS item id (~150 characters) as the cursor keeps it: a digest."""
    return hashlib.sha256(item_id.encode()).hexdigest()[:24]


#: What GetItem asks for: the iCalendar export, and the fields it may not carry.
_FIELDS = ("mime_content", "uid", "is_cancelled", "legacy_free_busy_status")


def _with_item_fields(row: EventRow, item: Any) -> EventRow:
    """The item's own fields over its export: a cancelled meeting (``is_cancelled``) is
    ``STATUS:CANCELLED``, a ``Free`` one ``TRANSP:TRANSPARENT`` — for the single event or
    the series master; an exception keeps what its VEVENT says."""
    if row.recurrence_id is not None:
        return row
    cancelled = item.is_cancelled is True
    free = item.legacy_free_busy_status == "Free"
    if not cancelled and not free:
        return row
    event = icalendar.Event.from_ical(row.ical)
    if cancelled:
        event.pop("STATUS", None)
        event.add("STATUS", "CANCELLED")
    if free:
        event.pop("TRANSP", None)
        event.add("TRANSP", "TRANSPARENT")
    return EventRow(row.uid, row.recurrence_id, event.to_ical().decode())
