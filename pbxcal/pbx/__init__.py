"""The PBX port: what the reconciler needs from a PBX, and nothing more.

``Pbx`` is the protocol the reconciler talks to. ``pbxcal.pbx.ami.AmiPbx`` implements it
over the Asterisk Manager Interface (panoramisk). Forwarding state lives in the AstDB
family ``pbxcal``: ``pbxcal/fwd/<ext>`` holds the targets joined by ``&``; absent means
no forwarding. ``Custom:pbxcal<ext>`` is INUSE while a forwarding is active (for BLF).

Start reading at ``Pbx`` below, then ``ami.py``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Protocol

#: The applied forwarding state of one PBX: extension -> sorted targets. Absent = none.
ForwardingState = dict[str, tuple[str, ...]]


class Pbx(Protocol):
    """One PBX that holds forwardings. Every method is idempotent."""

    name: str

    async def read_applied(self) -> ForwardingState:
        """Read back what the PBX holds now (AstDB family ``pbxcal``)."""
        ...

    async def apply(self, changes: Mapping[str, Sequence[str]]) -> None:
        """Set each extension's targets; an empty sequence clears the forwarding.

        Values are validated before anything is sent; raises ``UnsafeValue`` for a value
        that could not be written safely, ``PbxUnavailable`` / ``PbxActionFailed`` else.
        """
        ...
