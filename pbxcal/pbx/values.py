"""What pbxcal may put on the AMI wire, and where in Asterisk it goes.

Pure functions and constants: the AstDB family and key of a forwarding, the custom
device name of its BLF state, and the validators every value passes before an adapter
sends it. Validation is the core's wire rule (``pbxcal.core.wire``: an extension is 1-15
ASCII digits, a number is E.164), so whatever the core accepts as a ``Target`` the wire
accepts, and CR/LF, spaces, colons, non-ASCII digits and anything else that could
smuggle a header onto the AMI wire is refused. Which digit strings *are* extensions is
the number policy's business, not this module's.

Must not do I/O or import asyncio. Start reading at ``validate_forwarding``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

from pbxcal.core.wire import is_wire_extension, is_wire_target
from pbxcal.errors import UnsafeValue

#: The AstDB family pbxcal owns. Nothing outside it is ever written.
FAMILY = "pbxcal"
#: Key prefix of a forwarding inside ``FAMILY``: ``fwd/<ext>``.
FWD_PREFIX = "fwd/"
#: Separator of parallel targets in the stored value (what ``Dial()`` uses).
TARGET_SEPARATOR = "&"
#: Prefix of the custom device (``Custom:pbxcal<ext>``) that shows a forwarding on a BLF key.
DEVICE_PREFIX = "Custom:pbxcal"
#: Device states pbxcal writes.
STATE_ACTIVE = "INUSE"
STATE_INACTIVE = "NOT_INUSE"

_VALUE_RE = re.compile(r"^[0-9+&]+$")
#: Asterisk reads an AMI line into a 1 KiB buffer; a longer ``Val:`` line would be cut.
MAX_VALUE_LENGTH = 900
#: Bound the length of what is echoed back in an error message.
_SHOW = 40


def _show(value: object) -> str:
    text = repr(value)
    return text if len(text) <= _SHOW else text[: _SHOW - 3] + "..."


def validate_extension(ext: object) -> str:
    """Return ``ext`` if it is an extension by the wire rule; else ``UnsafeValue``.

    The extension ends up in an AstDB key and a device name on the AMI wire.
    """
    if not isinstance(ext, str):
        raise UnsafeValue(f"extension {_show(ext)} is not a string")
    if not is_wire_extension(ext):
        raise UnsafeValue(f"extension {_show(ext)} is not 1 to 15 ASCII digits")
    return ext


def validate_targets(targets: Iterable[str]) -> tuple[str, ...]:
    """Return the targets sorted and de-duplicated, or raise ``UnsafeValue``.

    Each target is an extension or an E.164 number by the wire rule.
    """
    if isinstance(targets, str):
        raise UnsafeValue(f"targets {_show(targets)} must be a sequence, not a string")
    checked: set[str] = set()
    for target in targets:
        if not is_wire_target(target):
            raise UnsafeValue(f"target {_show(target)} is not a number or extension")
        checked.add(target)
    result = tuple(sorted(checked))
    joined = join_targets(result)
    if result and _VALUE_RE.fullmatch(joined) is None:  # pragma: no cover - belt and braces
        raise UnsafeValue(f"joined targets {_show(joined)} contain unsafe characters")
    if len(joined) > MAX_VALUE_LENGTH:
        raise UnsafeValue(f"{len(result)} targets are {len(joined)} characters joined, "
                          f"more than {MAX_VALUE_LENGTH}")
    return result


def validate_forwarding(ext: object, targets: Sequence[str]) -> tuple[str, tuple[str, ...]]:
    """Validate one forwarding (an empty ``targets`` means clear it)."""
    return validate_extension(ext), validate_targets(targets)


def join_targets(targets: Sequence[str]) -> str:
    """The AstDB value for ``targets``: joined by ``&``."""
    return TARGET_SEPARATOR.join(targets)


def split_value(value: str) -> tuple[str, ...]:
    """Parse a stored AstDB value back into sorted targets; ``UnsafeValue`` if malformed."""
    if _VALUE_RE.fullmatch(value) is None:
        raise UnsafeValue(f"stored value {_show(value)} contains unexpected characters")
    return validate_targets(value.split(TARGET_SEPARATOR))


def fwd_key(ext: str) -> str:
    """The AstDB key (inside ``FAMILY``) that holds ``ext``'s forwarding."""
    return FWD_PREFIX + ext


def ext_from_key(key: str) -> str | None:
    """The extension of an AstDB key as DBGetTree reports it (``/pbxcal/fwd/201``).

    Returns ``None`` for keys that are not a forwarding of pbxcal's own.
    """
    for prefix in (f"/{FAMILY}/{FWD_PREFIX}", FWD_PREFIX):
        if key.startswith(prefix):
            ext = key[len(prefix) :]
            return ext if is_wire_extension(ext) else None
    return None


def device_name(ext: str) -> str:
    """The custom device whose state shows ``ext``'s forwarding (``Custom:pbxcal<ext>``)."""
    return DEVICE_PREFIX + ext
