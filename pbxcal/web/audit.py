"""The admin API's audit log writer: lines queued in memory, committed in batches.

What it does: ``AuditWriter.record`` queues one audit line without waiting (no thread
hop, no commit on the request's path); a background task commits what is queued in
one transaction (``Store.record_audit_lines``) as soon as a line arrives, then at most
once every ``FLUSH_INTERVAL`` (50 ms) while lines keep coming, and once more on
``close`` (the app's cleanup, i.e. the daemon's orderly shutdown). A committed SQLite
or PostgreSQL write per API call cost ~6.5 ms; a batch costs about the same for
hundreds of lines.

The guarantee an admin gets: every call is in the audit log within about 50 ms of its
answer. **A crash (kill -9, power loss) loses at most the lines of that last window**
(those queued and not yet committed); an orderly stop loses none. When the store
cannot be written, the writer logs it, counts it (``pbxcal_audit_write_failures_total``)
and keeps the lines to try again with the next batch, at most ``MAX_PENDING`` of them:
beyond that the oldest are dropped and counted (``pbxcal_audit_lines_dropped_total``),
so an unreachable store cannot eat the process's memory.

What it must not do: block the event loop on the store, or put a secret into a line
(the caller hands in printable, shortened fields, as before).

Start reading at ``AuditWriter``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from prometheus_client import Counter

from pbxcal.errors import StoreError
from pbxcal.store.portal import AuditLine

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

    from pbxcal.store import Store

log = logging.getLogger(__name__)

#: The longest a queued line waits for its commit while lines keep coming (seconds).
FLUSH_INTERVAL = 0.05
#: Lines kept in memory while the store cannot be written; the oldest go beyond this.
MAX_PENDING = 10_000
#: Longest wait between tries while the store refuses the lines (seconds).
RETRY_MAX = 5.0


class AuditWriter:
    """Queues audit lines and commits them in batches (see the module docstring)."""

    def __init__(
        self,
        store: Store,
        registry: CollectorRegistry | None = None,
        *,
        interval: float = FLUSH_INTERVAL,
        max_pending: int = MAX_PENDING,
    ) -> None:
        self.store = store
        self.interval = interval
        self.max_pending = max_pending
        self._pending: deque[AuditLine] = deque()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()  # one batch at a time (the loop and ``flush``)
        self.failures = _counter(
            "pbxcal_audit_write_failures",
            "Batches of admin API audit lines the store did not take (kept, tried again)",
            registry,
        )
        self.dropped = _counter(
            "pbxcal_audit_lines_dropped",
            "Admin API audit lines dropped because too many waited for a failing store",
            registry,
        )

    @property
    def pending(self) -> int:
        """Lines queued and not yet committed."""
        return len(self._pending)

    def record(
        self,
        actor: str,
        action: str,
        target: str,
        detail: Mapping[str, Any] | None = None,
        remote: str | None = None,
        at: datetime | None = None,
    ) -> None:
        """Queue one line (committed within ``interval``; see the module docstring)."""
        line = AuditLine(at or datetime.now(UTC), actor, action, target, dict(detail or {}),
                         remote)  # fmt: skip
        self._pending.append(line)
        self._bound()
        self._wake.set()

    async def start(self, _: object = None) -> None:
        """Start the background committer (an ``on_startup`` hook of the app)."""
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="admin-audit-writer")

    async def close(self, _: object = None) -> None:
        """Stop the committer and commit what is queued (an ``on_cleanup`` hook)."""
        task, self._task = self._task, None
        if task is not None:
            async with self._lock:  # never cancel a batch half written (it would repeat)
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        await self.flush()
        if self._pending:
            log.error("admin API audit: %d lines could not be written at shutdown",
                      len(self._pending))  # fmt: skip

    async def flush(self) -> int:
        """Commit what is queued now, in one transaction; how many lines were written
        (0 when the store refused them: they stay queued)."""
        async with self._lock:
            batch = list(self._pending)
            if not batch:
                return 0
            try:
                await asyncio.to_thread(self.store.record_audit_lines, batch)
            except StoreError as exc:
                self.failures.inc()
                log.warning("admin API audit: %d lines not written yet: %s", len(batch), exc)
                return 0
            for line in batch:  # lines queued meanwhile stay; some may have been dropped
                if self._pending and self._pending[0] is line:
                    self._pending.popleft()
            return len(batch)

    async def _run(self) -> None:
        delay = self.interval
        while True:
            await self._wake.wait()
            self._wake.clear()
            written = await self.flush()
            if not written and self._pending:  # the store refused: again, less often
                self._wake.set()
                delay = min(RETRY_MAX, delay * 2)
            else:
                delay = self.interval
            await asyncio.sleep(delay)  # the next batch collects meanwhile

    def _bound(self) -> None:
        while len(self._pending) > self.max_pending:
            self._pending.popleft()
            self.dropped.inc()


def _counter(name: str, documentation: str, registry: CollectorRegistry | None) -> Counter:
    if registry is not None:
        try:
            return Counter(name, documentation, registry=registry)
        except ValueError:  # a second writer on the same registry (tests): count unexported
            pass
    return Counter(name, documentation, registry=None)
