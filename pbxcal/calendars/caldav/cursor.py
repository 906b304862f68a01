"""The CalDAV source's cursor: what the last sync saw, as compact JSON (pure).

The store keeps the cursor opaque and hands it back on the next sync. It holds::

    {"v": 1,                      format version (another version: full resync)
     "m": "sync" | "etag",        RFC 6578 sync-collection, or the ETag/CTag fallback
     "t": "<sync token>" | null,  the server's sync token (mode "sync")
     "c": "<ctag>" | null,        the collection's CTag, if the server gives one
     "z": ["Europe/Amsterdam"],   TZIDs of the VTIMEZONE blocks already delivered
     "o": {"<name>": ["<etag digest>", "<uid>" | null, ["<recurrence id>", ...]]}}

``o`` maps each member of the collection (its href relative to the collection, the full
path if it lies elsewhere) to a 12-hex-digit digest of its ETag (equality is all that is
needed), its UID (so a deleted href can be reported as a removed UID) and the
RECURRENCE-IDs of its overrides (only when it has some; so an override that disappears
from an edited series is removed). A cursor that cannot be read is treated as no cursor.

Must not do I/O. Start reading at ``SyncState``.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Literal

__all__ = ["Member", "SyncState", "etag_digest"]

VERSION = 1
Mode = Literal["sync", "etag"]


def etag_digest(etag: str | None) -> str:
    """A short, stable stand-in for an ETag (``""`` when the server gave none)."""
    if not etag:
        return ""
    return hashlib.sha256(etag.encode()).hexdigest()[:12]


@dataclass(frozen=True)
class Member:
    """What the cursor remembers of one calendar object resource."""

    etag: str
    uid: str | None
    overrides: tuple[str, ...] = ()


@dataclass(frozen=True)
class SyncState:
    """The decoded cursor; see the module docstring."""

    mode: Mode
    token: str | None = None
    ctag: str | None = None
    members: dict[str, Member] = field(default_factory=dict)
    tzids: frozenset[str] = frozenset()

    def encode(self) -> str:
        objects: dict[str, list[object]] = {}
        for name, member in sorted(self.members.items()):
            entry: list[object] = [member.etag, member.uid]
            if member.overrides:
                entry.append(list(member.overrides))
            objects[name] = entry
        document = {
            "v": VERSION,
            "m": self.mode,
            "t": self.token,
            "c": self.ctag,
            "z": sorted(self.tzids),
            "o": objects,
        }
        return json.dumps(document, separators=(",", ":"), ensure_ascii=False)

    @classmethod
    def decode(cls, cursor: str | None) -> SyncState | None:
        """The state in ``cursor``; ``None`` for no cursor or one that cannot be read."""
        if not cursor:
            return None
        try:
            document = json.loads(cursor)
            if not isinstance(document, dict) or document.get("v") != VERSION:
                return None
            mode = document["m"]
            token = document.get("t")
            ctag = document.get("c")
            tzids = document.get("z", [])
            objects = document.get("o", {})
            if (
                mode not in ("sync", "etag")
                or not _optional_str(token)
                or not _optional_str(ctag)
                or not isinstance(tzids, list)
                or not all(isinstance(z, str) for z in tzids)
                or not isinstance(objects, dict)
            ):
                return None
            members = {}
            for name, entry in objects.items():
                member = _member(entry)
                if member is None:
                    return None
                members[name] = member
        except (ValueError, KeyError, TypeError):
            return None
        return cls(mode, token, ctag, members, frozenset(tzids))


def _optional_str(value: object) -> bool:
    return value is None or isinstance(value, str)


def _member(entry: object) -> Member | None:
    if not isinstance(entry, list) or len(entry) not in (2, 3):
        return None
    etag, uid = entry[0], entry[1]
    overrides = entry[2] if len(entry) == 3 else []
    if (
        not isinstance(etag, str)
        or not _optional_str(uid)
        or not isinstance(overrides, list)
        or not all(isinstance(o, str) for o in overrides)
    ):
        return None
    return Member(etag, uid, tuple(overrides))
