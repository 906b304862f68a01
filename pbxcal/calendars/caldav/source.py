"""``CaldavSource``: one CalDAV calendar read incrementally (the ``IncrementalSource`` port).

``changes(cursor)`` answers what changed since the cursor, with one request per poll when
nothing did:

* **sync mode** (RFC 6578): a ``sync-collection`` REPORT with the sync token from the
  cursor; the reply carries the changed members' data and the deleted hrefs. A token the
  server refuses (expired, invalid) means a full resync.
* **etag mode**, for servers without sync-collection: the collection's CTag (if it has
  one) says whether anything changed; then a PROPFIND lists every member's ETag, the
  ETags are compared with the cursor's, and only changed members are fetched
  (calendar-multiget).
* a **full read** (no or unreadable cursor, refused token, or a member brought a time
  zone the store has not seen): every member, ``ChangeSet.full``.

Members are raw VCALENDAR objects (never expanded by the server); each becomes one row
per VEVENT (``objects.read_object``). The cursor (``cursor.SyncState``, compact JSON)
remembers href → (ETag digest, UID, override RECURRENCE-IDs), so a deleted href becomes a
removed UID, a vanished override a removed instance, and a member moved to another href
within the calendar is no removal at all. A member that is not valid iCalendar is left
out (logged with its href, never its content) and read again when it changes.

Construction does no I/O; every request runs in ``BlockingCalls`` with ``timeout``
(seconds, also the HTTP library's own per-request timeout). Usage::

    calls = BlockingCalls()
    source = CaldavSource(calls, url="https://cal.example/dav/alice/work/",
                          username="alice", password=secret)
    # or discovery: CaldavSource(calls, server_url="https://caldav.icloud.com/",
    #                            calendar_name="Work", username=..., password=...)
    change = await source.changes(stored_cursor)   # None: nothing changed
    calendars = await list_calendars(calls, "https://cal.example/", "alice", secret)

Must not do: I/O on the event loop, keep anything between calls but the resolved
calendar URL (the cursor is the state), or put a password or URL user info into a
message. Start reading at ``CaldavSource.changes``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable
from typing import TypeVar
from urllib.parse import unquote, urlsplit

from pbxcal.calendars.blocking import BlockingCalls
from pbxcal.calendars.caldav.cursor import Member, Mode, SyncState, etag_digest
from pbxcal.calendars.caldav.dav import (
    MULTIGET_BATCH,
    CalendarInfo,
    DavConnection,
    Fetched,
    SyncTokenRefused,
    SyncUnsupported,
    strip_user_info,
)
from pbxcal.calendars.caldav.objects import CalendarObject, read_object
from pbxcal.calendars.changes import ChangeSet, EventRow
from pbxcal.core.redact import printable, redact_url
from pbxcal.core.vevent import safe_zone
from pbxcal.errors import CalendarError, CalendarUnavailable
from pbxcal.net.guard import AddressGuard

__all__ = ["DEFAULT_TIMEOUT", "CaldavSource", "list_calendars"]

log = logging.getLogger(__name__)

#: Seconds per request (and per blocking call) unless the caller says otherwise.
DEFAULT_TIMEOUT = 30.0

T = TypeVar("T")


async def list_calendars(
    calls: BlockingCalls,
    server_url: str,
    username: str,
    password: str,
    *,
    timeout: float = DEFAULT_TIMEOUT,  # noqa: ASYNC109 - a per-request timeout, not ours
    verify: bool | str = True,
    guard: AddressGuard | None = None,
) -> list[CalendarInfo]:
    """The calendars (URL, display name) of the account at ``server_url`` that hold events.

    For the CLI and the portal to offer a choice. Errors as ``CaldavSource.changes``.
    """

    server_url = strip_user_info(server_url)

    def discover() -> list[CalendarInfo]:
        connection = DavConnection(
            server_url, username, password, timeout=timeout, verify=verify, guard=guard
        )
        try:
            return connection.discover(server_url)
        finally:
            connection.close()

    # Discovery is up to four requests (principal, well-known, home set, listing).
    return await calls.run(
        discover, timeout=timeout * 4, what=f"CalDAV discovery at {redact_url(server_url)}"
    )


class CaldavSource:
    """One CalDAV calendar as an ``IncrementalSource``; see the module docstring.

    Give either ``url`` (the calendar collection) or ``server_url`` plus
    ``calendar_name`` (a display name, or the calendar's URL or last path segment) for
    discovery through the user's principal. ``verify`` is ``True`` (the system's CA
    store) or a CA bundle path; TLS verification cannot be turned off here. ``guard``
    (a link a customer made) lets every connection reach only addresses it accepted.
    """

    provider = "caldav"

    def __init__(
        self,
        calls: BlockingCalls,
        *,
        username: str,
        password: str,
        url: str | None = None,
        server_url: str | None = None,
        calendar_name: str | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        verify: bool | str = True,
        guard: AddressGuard | None = None,
    ) -> None:
        if (url is None) == (server_url is None):
            raise ValueError("CaldavSource: give either url or server_url")
        if server_url is not None and not calendar_name:
            raise ValueError("CaldavSource: server_url needs calendar_name")
        if verify is False:
            raise ValueError("CaldavSource: TLS verification cannot be turned off")
        self._calls = calls
        self._username = username
        self._password = password
        self._url = _with_slash(strip_user_info(url)) if url is not None else None
        self._server_url = strip_user_info(server_url) if server_url is not None else None
        self._calendar_name = calendar_name
        self._timeout = timeout
        self._verify = verify
        self._guard = guard
        self._connection: DavConnection | None = None
        self._lock = asyncio.Lock()

    @property
    def where(self) -> str:
        """The calendar's (or server's) URL without secrets, for messages."""
        return redact_url(self._url or self._server_url or "")

    async def changes(self, cursor: str | None) -> ChangeSet | None:
        """What changed since ``cursor``; ``None`` when nothing did. See the module."""
        async with self._lock:
            url = await self._calendar_url()
            state = SyncState.decode(cursor)
            if cursor and state is None:
                log.info("CalDAV %s: cursor not readable, reading the calendar in full", self.where)
            if state is None:
                return await self._full(url)
            if state.mode == "sync" and state.token:
                return await self._sync(url, state)
            return await self._etags(url, state)

    def close(self) -> None:
        """Drop the HTTP session (a later ``changes`` opens a new one)."""
        connection, self._connection = self._connection, None
        if connection is not None:
            connection.close()

    # -- the three ways of reading -------------------------------------------------

    async def _sync(self, url: str, state: SyncState) -> ChangeSet | None:
        assert state.token is not None
        try:
            reply = await self._run(
                lambda c: c.sync_collection(url, state.token or ""), "sync", calls=4
            )
        except SyncTokenRefused:
            log.info("CalDAV %s: sync token refused, reading the calendar in full", self.where)
            return await self._full(url)
        except SyncUnsupported:
            log.info("CalDAV %s: sync-collection gone, reading the calendar in full", self.where)
            return await self._full(url)
        if reply.token == state.token and not reply.changed and not reply.deleted:
            return None
        fetched = await self._complete(url, reply.changed)
        return await self._incremental(
            url, state, fetched, set(reply.deleted), "sync", reply.token, state.ctag
        )

    async def _etags(self, url: str, state: SyncState) -> ChangeSet | None:
        info = await self._run(lambda c: c.collection(url), "PROPFIND")
        if info.ctag is not None and info.ctag == state.ctag:
            return None
        listed = await self._run(lambda c: c.members(url), "PROPFIND")
        base = _path(url)
        now = {_name(href, base): (href, etag_digest(etag)) for href, etag in listed.items()}
        changed = [
            href
            for name, (href, digest) in now.items()
            if name not in state.members or not digest or state.members[name].etag != digest
        ]
        deleted = {_href(name, base) for name in state.members if name not in now}
        if not changed and not deleted:
            if info.ctag == state.ctag:
                return None
            new = SyncState("etag", None, info.ctag, dict(state.members), state.tzids)
            return ChangeSet(cursor=new.encode(), full=False)
        fetched = (
            await self._run(lambda c: c.multiget(url, changed), "multiget", calls=_batches(changed))
            if changed
            else {}
        )
        gone = {href for href in changed if href not in fetched}
        return await self._incremental(
            url, state, list(fetched.values()), deleted | gone, "etag", None, info.ctag
        )

    async def _full(self, url: str) -> ChangeSet:
        info = await self._run(lambda c: c.collection(url), "PROPFIND")
        mode: Mode = "etag"
        token: str | None = None
        members: list[Fetched]
        if info.supports_sync is not False:
            try:
                reply = await self._run(lambda c: c.sync_collection(url, ""), "sync", calls=4)
            except (SyncTokenRefused, SyncUnsupported):
                pass
            else:
                mode, token = "sync", reply.token
                members = await self._complete(url, reply.changed)
        if mode == "etag":
            listed = await self._run(lambda c: c.members(url), "PROPFIND")
            hrefs = sorted(listed)
            fetched = (
                await self._run(lambda c: c.multiget(url, hrefs), "multiget", calls=_batches(hrefs))
                if hrefs
                else {}
            )
            members = [
                Fetched(href, item.etag or listed.get(href), item.data)
                for href, item in fetched.items()
            ]
        base = _path(url)
        known: dict[str, Member] = {}
        rows: dict[tuple[str, str | None], EventRow] = {}
        zones: dict[str, str] = {}
        for item in members:
            name = _name(item.href, base)
            read = self._read(item)
            if read is None:
                known[name] = Member(etag_digest(item.etag), None)
                continue
            known[name] = Member(etag_digest(item.etag), read.uid, read.overrides)
            for row in read.rows:
                rows[(row.uid, row.recurrence_id)] = row
            for tzid, block in read.timezones.items():
                zones.setdefault(tzid, block)
        state = SyncState(mode, token, info.ctag, known, frozenset(zones))
        return ChangeSet(
            cursor=state.encode(),
            full=True,
            upserted=tuple(rows.values()),
            timezones="".join(zones[z] for z in sorted(zones)),
            calendar_tz=_calendar_zone(info.timezone),
        )

    async def _incremental(
        self,
        url: str,
        state: SyncState,
        fetched: Iterable[Fetched],
        deleted: set[str],
        mode: Mode,
        token: str | None,
        ctag: str | None,
    ) -> ChangeSet:
        base = _path(url)
        members = dict(state.members)
        replaced: list[Member] = []
        upserted: dict[tuple[str, str | None], EventRow] = {}
        for href in deleted:
            old = members.pop(_name(href, base), None)
            if old is not None:
                replaced.append(old)
        for item in fetched:
            name = _name(item.href, base)
            old = members.get(name)
            if old is not None:
                replaced.append(old)
            read = self._read(item)
            if read is None:
                members[name] = Member(etag_digest(item.etag), None)
                continue
            if not set(read.timezones) <= state.tzids:
                # The store replaces its VTIMEZONE blocks as a whole: a zone it has not
                # seen is delivered with all the others, by a full read (rare).
                log.info("CalDAV %s: a new time zone, reading the calendar in full", self.where)
                return await self._full(url)
            members[name] = Member(etag_digest(item.etag), read.uid, read.overrides)
            for row in read.rows:
                upserted[(row.uid, row.recurrence_id)] = row
        present: dict[str, set[str]] = {}
        for member in members.values():
            if member.uid is not None:
                present.setdefault(member.uid, set()).update(member.overrides)
        removed: dict[str, None] = {}
        removed_instances: dict[tuple[str, str], None] = {}
        for old in replaced:
            if old.uid is None:
                continue
            if old.uid not in present:
                removed[old.uid] = None
                continue
            for override in old.overrides:
                if override not in present[old.uid]:
                    removed_instances[(old.uid, override)] = None
        new = SyncState(mode, token, ctag, members, state.tzids)
        return ChangeSet(
            cursor=new.encode(),
            full=False,
            upserted=tuple(upserted.values()),
            removed=tuple(removed),
            removed_instances=tuple(removed_instances),
        )

    # -- plumbing ----------------------------------------------------------------------

    async def _complete(self, url: str, items: Iterable[Fetched]) -> list[Fetched]:
        """``items`` with the data of those a sync reply sent without it (multiget)."""
        items = list(items)
        missing = [i.href for i in items if i.data is None]
        if not missing:
            return items
        fetched = await self._run(
            lambda c: c.multiget(url, missing), "multiget", calls=_batches(missing)
        )
        complete = [i for i in items if i.data is not None]
        return complete + [fetched[h] for h in missing if h in fetched]

    def _read(self, item: Fetched) -> CalendarObject | None:
        if item.data is None:
            return None
        try:
            where = f"CalDAV {self.where} member {printable(item.href)}"
            return read_object(item.data, where)
        except CalendarError as exc:
            log.warning("%s; left out until it changes", exc)
            return None

    async def _calendar_url(self) -> str:
        if self._url is not None:
            return self._url
        assert self._server_url is not None and self._calendar_name is not None
        server_url, wanted = self._server_url, self._calendar_name

        def discover(connection: DavConnection) -> list[CalendarInfo]:
            return connection.discover(server_url)

        calendars = await self._run(discover, "discovery", calls=4)
        chosen = _choose(calendars, wanted)
        if chosen is None:
            names = ", ".join(sorted(repr(c.name) for c in calendars)) or "none"
            raise CalendarError(
                f"CalDAV {self.where}: no calendar called {wanted!r} (found: {names})"
            )
        self._url = _with_slash(chosen.url)
        return self._url

    async def _run(self, call: Callable[[DavConnection], T], what: str, *, calls: int = 1) -> T:
        """``call(connection)`` in the pool; the timeout covers ``calls`` requests
        (a sync reply that is truncated or a large multiget may need more)."""

        def blocking() -> T:
            if self._connection is None:
                self._connection = DavConnection(
                    self._url or self._server_url or "",
                    self._username,
                    self._password,
                    timeout=self._timeout,
                    verify=self._verify,
                    guard=self._guard,
                )
            return call(self._connection)

        try:
            return await self._calls.run(
                blocking,
                timeout=self._timeout * max(calls, 2),
                what=f"CalDAV {what} at {self.where}",
            )
        except CalendarUnavailable:
            # A call that timed out may still hold the session in its thread; the next
            # call gets a fresh one (also after a server restart).
            self._connection = None
            raise


def _batches(hrefs: list[str]) -> int:
    return 1 + len(hrefs) // MULTIGET_BATCH


def _choose(calendars: list[CalendarInfo], wanted: str) -> CalendarInfo | None:
    for match in (
        lambda c: c.name == wanted,
        lambda c: _with_slash(c.url) == _with_slash(wanted),
        lambda c: unquote(c.url.rstrip("/").rpartition("/")[2]) == wanted.strip("/"),
        lambda c: c.name.casefold() == wanted.casefold(),
    ):
        found = [c for c in calendars if match(c)]
        if len(found) == 1:
            return found[0]
    return None


def _calendar_zone(vtimezone: str | None) -> str | None:
    """The IANA name in a CALDAV:calendar-timezone property, if it names a real zone."""
    if not vtimezone:
        return None
    for line in vtimezone.splitlines():
        if line.upper().startswith("TZID"):
            name = line.partition(":")[2].strip()
            return name if safe_zone(name) is not None else None
    return None


def _with_slash(url: str) -> str:
    return url if url.endswith("/") else url + "/"


def _path(url: str) -> str:
    return _with_slash(unquote(urlsplit(url).path) or "/")


def _name(href: str, base: str) -> str:
    """A member's href relative to the collection (compact cursor keys)."""
    return href[len(base) :] if href.startswith(base) and len(href) > len(base) else href


def _href(name: str, base: str) -> str:
    return name if name.startswith("/") else base + name


def _printable_path(href: str) -> str:
    return printable(href)
