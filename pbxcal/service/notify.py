"""sd_notify: tells systemd READY, STATUS, WATCHDOG and STOPPING (``Type=notify``).

A thin wrapper over ``sdnotify`` that does nothing when ``NOTIFY_SOCKET`` is unset, and
knows the watchdog interval (``WATCHDOG_USEC``) so the reconciler loop can beat it.
"""

from __future__ import annotations

import logging
import os

import sdnotify

log = logging.getLogger(__name__)


class SystemdNotifier:
    def __init__(self) -> None:
        self.enabled = bool(os.environ.get("NOTIFY_SOCKET"))
        self._notifier = sdnotify.SystemdNotifier() if self.enabled else None
        usec = os.environ.get("WATCHDOG_USEC", "")
        self.watchdog_interval: float | None = int(usec) / 1e6 if usec.isdigit() else None

    def send(self, *lines: str) -> None:
        if self._notifier is not None:
            self._notifier.notify("\n".join(lines))

    def ready(self, status: str) -> None:
        self.send("READY=1", f"STATUS={status}")

    def status(self, status: str) -> None:
        self.send(f"STATUS={status}")

    def watchdog(self) -> None:
        self.send("WATCHDOG=1")

    def stopping(self) -> None:
        self.send("STOPPING=1", "STATUS=stopping")
