"""The PBX port: what the reconciler needs from a PBX, and nothing more.

``Pbx`` is the protocol the reconciler talks to; ``ApplyResult`` is what ``apply``
answers. ``pbxcal.pbx.ami.AmiPbx`` implements it over the Asterisk Manager Interface
(pbxcal's own small AMI client, ``pbxcal.pbx.ami``); ``pbxcal.testing.fakes.FakePbx``
implements it in memory for tests. Forwarding state lives in the AstDB family
``pbxcal``: ``pbxcal/fwd/<ext>`` holds the targets joined by ``&``; absent means no
forwarding. ``Custom:pbxcal<ext>`` is INUSE while a forwarding is active (for BLF).

Must not import an adapter (the port knows no AMI). Start reading at ``Pbx`` below,
then ``pbxcal/pbx/ami/adapter.py``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

__all__ = ["ApplyResult", "ForwardingState", "Pbx"]

#: The applied forwarding state of one PBX: extension -> sorted targets. Absent = none.
ForwardingState = dict[str, tuple[str, ...]]


@dataclass(frozen=True)
class ApplyResult:
    """What ``Pbx.apply`` did with a batch.

    ``refused`` maps each extension that was *not* (fully) applied to a one-line reason:
    an unsafe extension or target (nothing was sent for it), or a PBX error answer for
    its routing or lamp action. Every extension of the batch not in ``refused`` was
    applied. A refused extension's real state on the PBX is whatever ``read_applied``
    reports next.
    """

    refused: dict[str, str] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        """True when every extension of the batch was applied."""
        return not self.refused


class Pbx(Protocol):
    """One PBX that holds forwardings. Every method is idempotent."""

    name: str

    async def read_applied(self) -> ForwardingState:
        """Read back what the PBX holds now (AstDB family ``pbxcal``).

        Raises ``PbxUnavailable`` when not connected or the connection is lost.
        """
        ...

    async def apply(self, changes: Mapping[str, Sequence[str]]) -> ApplyResult:
        """Set each extension's targets; an empty sequence clears the forwarding.

        Validated per extension: an unsafe value or a PBX refusal refuses *that*
        extension only (``ApplyResult.refused``); all others are applied. On the wire all
        routing actions (DBPut/DBDel) go first, then the BLF lamps (``DEVICE_STATE``).
        Raises ``PbxUnavailable`` only when the connection is lost or an action times
        out; then nothing is known about the batch and the caller reads back.
        """
        ...

    async def read_extensions(self) -> frozenset[str]:
        """The extensions that exist on this PBX (e.g. PJSIP endpoints named by digits).

        Raises ``PbxUnavailable`` when not connected or the connection is lost.
        """
        ...
