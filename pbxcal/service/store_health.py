"""Whether the store can be written, as the daemon saw it last.

The daemon keeps running when its store becomes unwritable (read-only filesystem, full
disk, immutable file): forwardings keep following the plan already in memory and every
write is retried later. ``StoreHealth`` is where that condition is noted once: it logs
the start and the end of an outage once each, sets ``pbxcal_store_writable`` and counts
``pbxcal_store_write_failures_total`` by operation; ``/readyz`` reports it.

Start reading at ``StoreHealth.failed``.
"""

from __future__ import annotations

import logging

from pbxcal.errors import StoreError
from pbxcal.service.metrics import Metrics

log = logging.getLogger(__name__)


class StoreHealth:
    """Tracks failing store writes. See the module docstring."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics
        self.writable = True
        self.last_error = ""
        metrics.store_writable.set(1)

    def failed(self, operation: str, exc: StoreError) -> None:
        """A write failed; the caller keeps what it has in memory and retries later."""
        self.metrics.store_write_failures.labels(operation).inc()
        self.last_error = str(exc)
        if self.writable:
            self.writable = False
            self.metrics.store_writable.set(0)
            log.error(
                "store cannot be written (%s): %s; forwardings keep following the plan in "
                "memory and writes are retried",
                operation,
                exc,
            )

    def succeeded(self) -> None:
        """A write went through: the outage (if any) is over."""
        if not self.writable:
            self.writable = True
            self.last_error = ""
            self.metrics.store_writable.set(1)
            log.info("store writable again")
