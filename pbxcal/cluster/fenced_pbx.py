"""``FencedPbx``: a ``Pbx`` that talks to its PBX only while this process holds its lease.

What it does: wraps the real ``Pbx`` (``AmiPbx``) of one PBX. ``grant(fence)`` and
``revoke()`` follow the lease keeper's ``on_gained`` / ``on_lost``. Every call first
checks the fence (``Fence.check``), so no AMI write batch is sent — and no read-back
either — unless the lease is valid on this process's own clock; otherwise the call
raises ``LeaseLost``, a ``PbxUnavailable``, which the reconciler already treats as
"unreachable: apply nothing, read back when it returns". ``applied_epoch`` is the
epoch the latest batch was sent under: record it with the state that batch changed
(``Store.save_applied_changes(..., epoch=)``), so a stale owner's record is refused.

Why the read-back is fenced too: a member that does not own a PBX has no reason to load
its forwardings, and the owner's read-back after a takeover is what converges the PBX,
exactly as after a reconnect. The directory (``read_extensions``) is not fenced: every
member reads calendars for every PBX (links are spread by link, not by PBX), and a title
is only a target if it is an extension of its PBX, so each member needs each PBX's
extensions; listing them changes nothing on the PBX.

What it must not do: retry or queue a refused write (the reconciler re-applies the
desired state itself once the PBX is "back"), or decide ownership.

Start reading at ``FencedPbx.apply``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from pbxcal.cluster.lease import Fence
from pbxcal.errors import LeaseLost
from pbxcal.pbx import ApplyResult, ForwardingState, Pbx


class FencedPbx:
    """A ``Pbx`` guarded by a lease fence; see the module docstring."""

    def __init__(self, pbx: Pbx) -> None:
        self.inner = pbx
        self.name = pbx.name
        self._fence: Fence | None = None
        #: the epoch checked before the latest ``apply``: record it with what that
        #: batch changed (``Store.save_applied_changes(..., epoch=...)``)
        self.applied_epoch: int | None = None

    def grant(self, fence: Fence) -> None:
        """This process now holds the PBX's lease (call ``pbx_connected`` afterwards)."""
        self._fence = fence

    def revoke(self) -> None:
        """The lease was lost or given away: refuse everything from now on."""
        self._fence = None

    def epoch(self) -> int:
        """The lease epoch, or ``LeaseLost`` when this process must not write."""
        if self._fence is None:
            raise LeaseLost(f"PBX {self.name}: this process does not hold its write lease")
        return self._fence.check()

    async def read_applied(self) -> ForwardingState:
        self.epoch()
        return await self.inner.read_applied()

    async def apply(self, changes: Mapping[str, Sequence[str]]) -> ApplyResult:
        self.applied_epoch = self.epoch()  # checked right before the batch is sent
        return await self.inner.apply(changes)

    async def read_extensions(self) -> frozenset[str]:
        return await self.inner.read_extensions()  # a read every member needs (docstring)
