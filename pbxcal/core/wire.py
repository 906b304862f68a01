"""The wire rule: the one syntax every forwarding value has before it may reach a PBX.

Pure constants and predicates, shared by the core (a ``Target`` validates itself with
them) and the AMI adapter (``pbxcal.pbx.values`` checks with the same functions), so
whatever the core accepts as a target, the wire accepts too.

* an extension is 1 to 15 ASCII digits (``WIRE_EXTENSION``);
* an external number is E.164: ``+``, a non-zero digit, 1 to 14 more ASCII digits
  (``WIRE_NUMBER``).

This is syntax only. Which titles and link extensions *are* extensions is decided by the
number policy's ``extension_pattern`` and the PBX's known extensions
(``pbxcal.core.targets``). Python's ``str.isdigit`` and ``\\d`` accept non-ASCII digits
("١٢٣"); nothing here uses them. Must not do I/O. Start reading at ``is_wire_target``.
"""

from __future__ import annotations

import re

#: An extension on the wire: ASCII digits only (use ``fullmatch``).
WIRE_EXTENSION = re.compile(r"[0-9]{1,15}")
#: An external number on the wire: E.164 (use ``fullmatch``).
WIRE_NUMBER = re.compile(r"\+[1-9][0-9]{1,14}")


def is_wire_extension(value: object) -> bool:
    """True when ``value`` is a ``str`` of 1 to 15 ASCII digits."""
    return isinstance(value, str) and WIRE_EXTENSION.fullmatch(value) is not None


def is_wire_number(value: object) -> bool:
    """True when ``value`` is a ``str`` holding an E.164 number ("+31612345678")."""
    return isinstance(value, str) and WIRE_NUMBER.fullmatch(value) is not None


def is_wire_target(value: object) -> bool:
    """True when ``value`` may be a forwarding target on the wire: extension or E.164."""
    return is_wire_extension(value) or is_wire_number(value)
