"""The AMI wire codec: bytes in, messages out; actions in, bytes out. Pure.

The Asterisk Manager Interface is a line protocol over TCP. The server greets with one
banner line (``Asterisk Call Manager/11.0.0\\r\\n``); after that every message, in both
directions, is a block of ``Name: value`` lines ended by ``\\r\\n`` and terminated by an
empty line (``\\r\\n\\r\\n``). A message from Asterisk is a ``Response`` (the answer to
an action, carrying the action's ``ActionID``) or an ``Event`` (list items carry the
ActionID of the action that asked for them).

* ``encode_action`` builds the bytes of one action and refuses (``UnsafeValue``) any
  name or value that could end a line or a message early: CR, LF, NUL.
* ``MessageParser.feed`` takes whatever a socket read returned (any split, any number
  of messages) and returns the complete messages so far; the rest waits for the next
  read. It bounds what it buffers (``ProtocolError`` past ``MAX_MESSAGE_BYTES``).

Must not do I/O, import asyncio or know what an action means (that is
``pbxcal.pbx.ami.session``). Start reading at ``MessageParser.feed``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from pbxcal.errors import UnsafeValue

__all__ = [
    "BANNER_PREFIX",
    "MAX_MESSAGE_BYTES",
    "Message",
    "MessageParser",
    "ProtocolError",
    "encode_action",
    "parse_message",
]

#: How an AMI server greets; anything else on the first line is not Asterisk.
BANNER_PREFIX = b"Asterisk Call Manager/"
_EOL = b"\r\n"
_EOM = b"\r\n\r\n"
#: A single message larger than this is an error, not something to buffer forever.
MAX_MESSAGE_BYTES = 1 << 20
#: The banner line is short; a first line longer than this is not a banner.
_MAX_BANNER = 256
_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")
_UNSAFE = re.compile(r"[\r\n\x00]")


class ProtocolError(ValueError):
    """The peer does not speak AMI (no banner, or a message past the size bound)."""


@dataclass(frozen=True, slots=True)
class Message:
    """One AMI message: its header lines in order (names as sent, values stripped).

    A name that occurs twice keeps its first value in ``get``; ``fields`` has all.
    """

    fields: tuple[tuple[str, str], ...]

    def get(self, name: str, default: str = "") -> str:
        """The first value of header ``name`` (case-sensitive, as Asterisk sends it)."""
        for key, value in self.fields:
            if key == name:
                return value
        return default

    def __contains__(self, name: object) -> bool:
        return any(key == name for key, _ in self.fields)

    @property
    def response(self) -> str:
        """``Success``, ``Error``, ``Goodbye``... or ``""`` for an event."""
        return self.get("Response")

    @property
    def event(self) -> str:
        """The event name, or ``""`` for a response."""
        return self.get("Event")

    @property
    def action_id(self) -> str:
        return self.get("ActionID")

    @property
    def message(self) -> str:
        """The human-readable ``Message`` header (the reason of an ``Error``)."""
        return self.get("Message")


def parse_message(raw: bytes) -> Message:
    """One message block (without its terminating empty line) into a ``Message``.

    A line without a colon is kept with an empty name (Asterisk never sends one in the
    actions pbxcal uses; it must not break the parse either).
    """
    fields: list[tuple[str, str]] = []
    for line in raw.split(_EOL):
        if not line:
            continue
        name, sep, value = line.partition(b":")
        if not sep:
            name, value = b"", name
        fields.append((name.decode("utf-8", "replace").strip(),
                       value.decode("utf-8", "replace").strip()))
    return Message(tuple(fields))


class MessageParser:
    """Incremental parser of the byte stream from one AMI connection."""

    def __init__(self) -> None:
        self._buffer = b""
        #: The version from the banner (``"11.0.0"``) once it was read.
        self.version: str | None = None

    def feed(self, data: bytes) -> list[Message]:
        """Add ``data``; return every message completed by it, in order."""
        buffer = self._buffer + data
        if self.version is None:
            line, sep, rest = buffer.partition(_EOL)
            if not sep:
                if len(buffer) > _MAX_BANNER or not BANNER_PREFIX.startswith(
                        buffer[: len(BANNER_PREFIX)]):
                    raise ProtocolError("the peer sent no AMI banner")
                self._buffer = buffer
                return []
            if not line.startswith(BANNER_PREFIX):
                raise ProtocolError(f"the peer sent no AMI banner (first line {line[:40]!r})")
            self.version = line[len(BANNER_PREFIX) :].decode("ascii", "replace").strip()
            buffer = rest
        *blocks, self._buffer = buffer.split(_EOM)
        if len(self._buffer) > MAX_MESSAGE_BYTES:
            raise ProtocolError(f"an AMI message exceeds {MAX_MESSAGE_BYTES} bytes")
        return [parse_message(block) for block in blocks if block.strip(_EOL)]


def _unsafe(name: str) -> UnsafeValue:
    # Never the value itself: it may be a secret.
    return UnsafeValue(f"AMI header {name!r} has a value with a line break or NUL")


def encode_action(action: str, action_id: str,
                  fields: Mapping[str, str] | Iterable[tuple[str, str]] = ()) -> bytes:
    """The bytes of one action: ``Action``, ``ActionID``, then ``fields`` in order.

    Raises ``UnsafeValue`` when a header name is not a plain token or any value holds
    CR, LF or NUL, so no value can add a header or an action of its own.
    """
    items = list(fields.items() if isinstance(fields, Mapping) else fields)
    parts = [f"Action: {action}", f"ActionID: {action_id}"]
    for name, value in items:
        if name not in _GOOD_NAMES:
            if _NAME.fullmatch(name) is None:
                raise UnsafeValue(f"AMI header name {name[:40]!r} is not a plain name")
            if len(_GOOD_NAMES) < 256:
                _GOOD_NAMES.add(name)
        parts.append(f"{name}: {value}")
    body = "\r\n".join(parts)
    # Cheap whole-message check (C speed); find the culprit only when it fails.
    separators = len(parts) - 1
    if body.count("\n") != separators or body.count("\r") != separators or "\x00" in body:
        if _NAME.fullmatch(action) is None:
            raise UnsafeValue(f"AMI action {action[:40]!r} is not a plain name")
        for name, value in [("ActionID", action_id), *items]:
            if _UNSAFE.search(value) is not None:
                raise _unsafe(name)
        raise _unsafe("Action")
    if _NAME.fullmatch(action) is None:
        raise UnsafeValue(f"AMI action {action[:40]!r} is not a plain name")
    return (body + "\r\n\r\n").encode()


#: Header names already checked (the few pbxcal uses); bounded.
_GOOD_NAMES: set[str] = set()
