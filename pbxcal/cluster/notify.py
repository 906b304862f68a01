"""Wake-ups between processes: "link N changed" over PostgreSQL LISTEN/NOTIFY.

What it does: a process that stored a change of link N sends ``NOTIFY pbxcal_link,
'N'`` (``LinkNotifier.link_changed``, or ``notify_sql`` inside the very transaction that
stored it: PostgreSQL delivers a notification only when that transaction commits). Every
other process runs ``LinkListener.run``: one connection that LISTENs and calls
``on_link(N)`` per notification. When the connection drops (PostgreSQL restarted, a
network fault) it reconnects with a capped backoff, LISTENs again and then calls
``on_resync()``: notifications sent while it was away are lost for good (PostgreSQL
does not keep them), so the owner must re-read what it cares about from the store.

The store stays the truth: a notification carries nothing but a link id and only says
"look now"; a missed one costs at most the polling backstop, a duplicate one a cheap
re-read.

What it must not do: carry data in the payload (8000 bytes at most, and no replay), log
the connection string, or let a ``psycopg`` error escape (the listener retries; the
notifier raises ``StoreError``).

Start reading at ``LinkListener.run``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

import psycopg

from pbxcal.cluster.connection import connect
from pbxcal.errors import StoreError
from pbxcal.store.engine import one_line

log = logging.getLogger(__name__)

#: The channel every pbxcal process LISTENs on.
CHANNEL = "pbxcal_link"

#: ``SELECT pg_notify(...)`` for use inside a store transaction (bind ``link``).
NOTIFY_SQL = f"SELECT pg_notify('{CHANNEL}', CAST(:link AS text))"


class LinkNotifier:
    """Sends "link N changed" on a connection of its own (opened on first use)."""

    def __init__(self, conninfo: str) -> None:
        self._conninfo = conninfo
        self._conn: psycopg.AsyncConnection[tuple[object, ...]] | None = None

    async def link_changed(self, link_id: int) -> None:
        """Tell every listening process that link ``link_id`` changed (after commit)."""
        for attempt in (1, 2):  # a connection that died since the last call: once more
            try:
                if self._conn is None or self._conn.closed:
                    self._conn = await connect(self._conninfo)
                await self._conn.execute("SELECT pg_notify(%s, %s)", (CHANNEL, str(link_id)))
                return
            except psycopg.Error as exc:
                await self.close()
                if attempt == 2:
                    raise StoreError(f"cannot notify link {link_id}: {one_line(exc)}") from exc

    async def close(self) -> None:
        if self._conn is not None:
            conn, self._conn = self._conn, None
            await conn.close()


class Listener:
    """LISTENs on one channel until cancelled: hands each payload to ``on_payload``,
    reconnects with backoff, and calls ``on_listening(again)`` every time LISTEN is in
    place (``again``: after a loss, when what was sent meanwhile is lost). The one
    reconnect loop of the link listener and the push keepers' ``ChannelChanges``."""

    def __init__(
        self,
        conninfo: str,
        channel: str,
        on_payload: Callable[[str], None],
        on_listening: Callable[[bool], None],
        *,
        what: str,
        backoff_first: float = 0.2,
        backoff_max: float = 5.0,
    ) -> None:
        self._conninfo = conninfo
        self._channel = channel
        self._on_payload = on_payload
        self._on_listening = on_listening
        self._what = what
        self._backoff_first = backoff_first
        self._backoff_max = backoff_max
        #: set while LISTEN is in place (tests and readiness wait on it)
        self.listening = asyncio.Event()
        #: how many times LISTEN was (re-)established
        self.connections = 0

    async def run(self) -> None:
        """LISTEN, deliver, reconnect; forever (cancel to stop)."""
        delay = self._backoff_first
        down_logged = False
        while True:
            try:
                async with await connect(self._conninfo) as conn:
                    await conn.execute(f"LISTEN {self._channel}")
                    self.connections += 1
                    self.listening.set()
                    self._on_listening(self.connections > 1 or down_logged)
                    down_logged = False
                    delay = self._backoff_first
                    async for note in conn.notifies():
                        self._on_payload(note.payload)
                    raise psycopg.OperationalError("the notification stream ended")
            except psycopg.Error as exc:
                self.listening.clear()
                if not down_logged:
                    log.warning("%s notifications lost (%s); reconnecting", self._what,
                                one_line(exc))  # fmt: skip
                    down_logged = True
            await asyncio.sleep(delay)  # backoff between reconnects, not synchronisation
            delay = min(delay * 2, self._backoff_max)


class LinkListener(Listener):
    """Listens for "link N changed" until cancelled; see the module docstring."""

    def __init__(
        self,
        conninfo: str,
        on_link: Callable[[int], None],
        on_resync: Callable[[], None],
        *,
        backoff_first: float = 0.2,
        backoff_max: float = 5.0,
    ) -> None:
        super().__init__(conninfo, CHANNEL, self._deliver, self._listening,
                         what="cluster: link change", backoff_first=backoff_first,
                         backoff_max=backoff_max)  # fmt: skip
        self._on_link = on_link
        self._on_resync = on_resync

    def _listening(self, again: bool) -> None:
        if again:
            log.info("cluster: listening for link changes again; re-reading all")
            self._on_resync()  # what was sent while away is lost

    def _deliver(self, payload: str) -> None:
        try:
            link_id = int(payload)
        except ValueError:
            log.warning("cluster: ignoring a notification that is not a link id")
            return
        self._on_link(link_id)
