"""The fake's mailboxes: calendar items by UID, a version counter bumped by every edit,
and the sync-state floor below which SyncFolderItems refuses a state.

``Mailboxes`` is plain data guarded by the fake's one lock (held by the caller); an edit
returns the event kind (``CreatedEvent``/``ModifiedEvent``/``DeletedEvent``) and the item,
which the subscriptions turn into notifications. Start reading at ``Mailboxes.put``.
"""

from __future__ import annotations

import base64
import itertools
from dataclasses import dataclass, field


@dataclass
class Item:
    item_id: str
    uid: str
    ical: str
    change_key: int
    created: int
    updated: int
    deleted: int | None = None
    cancelled: bool = False
    free_busy: str = "Busy"
    #: Set for an item written through EWS (``writes``): its fields, exported again on edit.
    fields: dict[str, object] | None = None


@dataclass
class Mailbox:
    items: dict[str, Item] = field(default_factory=dict)  # by UID
    tombstones: list[Item] = field(default_factory=list)  # deleted, then created again


class Mailboxes:
    """Every mailbox of the fake server (see the module docstring)."""

    def __init__(self) -> None:
        self.boxes: dict[str, Mailbox] = {}
        self.version = 0
        self.state_floor = 0
        self._ids = itertools.count(1)

    def add(self, address: str) -> None:
        self.boxes.setdefault(address.lower(), Mailbox())

    def __contains__(self, address: str) -> bool:
        return address.lower() in self.boxes

    def __getitem__(self, address: str) -> Mailbox:
        return self.boxes[address.lower()]

    def put(
        self, mailbox: str, uid: str, vcalendar: str, cancelled: bool, free_busy: str
    ) -> tuple[str, Item]:
        box = self[mailbox]
        self.version += 1
        item = box.items.get(uid)
        if item is None or item.deleted is not None:
            if item is not None:
                box.tombstones.append(item)
            item_id = base64.b64encode(f"AAMk-fake-{next(self._ids):06d}".encode()).decode()
            item = Item(item_id, uid, vcalendar, 1, self.version, self.version)
            box.items[uid] = item
            item.cancelled, item.free_busy = cancelled, free_busy
            return "CreatedEvent", item
        item.cancelled, item.free_busy = cancelled, free_busy
        item.ical = vcalendar
        item.change_key += 1
        item.updated = self.version
        return "ModifiedEvent", item

    def delete(self, mailbox: str, uid: str) -> tuple[str, Item]:
        self.version += 1
        item = self[mailbox].items[uid]
        item.deleted = self.version
        return "DeletedEvent", item
