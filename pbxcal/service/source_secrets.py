"""``SourceSecrets``: storing the credentials calendar sources change while they work.

An OAuth source may renew its credential on its own: MSAL rotates a Microsoft refresh
token when it refreshes, and the old one may stop working. Such a source has
``updated_secret()`` (see ``pbxcal.calendars.changes.IncrementalSource``); ``save``
asks it in a worker thread (it may wait for a token request in progress) and stores the
answer encrypted with ``store.save_secret``, so the newest credential survives a
restart. ``CalendarSync`` calls ``save`` after every sync of a link, the push keeper
after it used a link's credential.

A write that fails is counted and logged like the other store writes
(``StoreHealth.failed("save-secret")``); the value is kept here and written at the next
``save`` (unless the source has a newer one by then), and the source keeps using its
credential from memory. Writes of one link are made one at a time, so an older value
never lands after a newer one. A link removed or replaced meanwhile (``is_current``
false) keeps nothing: its secret may have been replaced by a new grant.

Must not do: block the event loop, or put a secret into a log line.
Start reading at ``SourceSecrets.save``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from pbxcal.errors import StoreError
from pbxcal.service.store_health import StoreHealth
from pbxcal.store.ports import SecretStore

log = logging.getLogger(__name__)

Secret = tuple[str, bytes]


class SourceSecrets:
    """Stores ``updated_secret()`` of sources. See the module docstring."""

    def __init__(self, store: SecretStore, store_health: StoreHealth) -> None:
        self.store = store
        self.store_health = store_health
        self._unsaved: dict[int, Secret] = {}
        self._locks: dict[int, asyncio.Lock] = {}

    async def save(self, link_id: int, source: object, is_current: Callable[[], bool]) -> None:
        """Store what ``source.updated_secret()`` answers (or what could not be stored
        before) as secret of ``link_id``. Never raises."""
        unsaved = self._unsaved.get(link_id)
        if unsaved is None and not hasattr(source, "updated_secret"):
            return
        lock = self._locks.setdefault(link_id, asyncio.Lock())
        async with lock:
            unsaved = self._unsaved.get(link_id)
            try:
                value, error, written = await asyncio.to_thread(
                    self._store, link_id, source, unsaved
                )
            except Exception as exc:  # noqa: BLE001 - the source's own failure
                log.warning("link %d: its renewed credential cannot be read (%s)",
                            link_id, type(exc).__name__)  # fmt: skip
                return
            if not is_current():
                self.forget(link_id)
                return
            if value is None:
                self._unsaved.pop(link_id, None)
            else:
                self._unsaved[link_id] = value
        if error is not None:
            self.store_health.failed("save-secret", error)
            log.warning("link %d: its renewed credential could not be stored (tried again "
                        "after the next sync): %s", link_id, error)  # fmt: skip
        elif written:
            self.store_health.succeeded()

    def forget(self, link_id: int) -> None:
        """The link went or was replaced: drop what is unsaved of it."""
        self._unsaved.pop(link_id, None)
        self._locks.pop(link_id, None)

    def unsaved(self, link_id: int) -> bool:
        return link_id in self._unsaved

    def _store(
        self, link_id: int, source: object, unsaved: Secret | None
    ) -> tuple[Secret | None, StoreError | None, bool]:
        """In a worker thread: (what is still unsaved, the write's error, written)."""
        update = getattr(source, "updated_secret", None)
        value: Secret | None = (update() if update is not None else None) or unsaved
        if value is None:
            return None, None, False
        try:
            self.store.save_secret(link_id, value[0], value[1])
        except StoreError as exc:
            return value, exc, False
        return None, None, True
