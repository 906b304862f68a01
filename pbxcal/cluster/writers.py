"""``PbxWriters``: the daemon's one object for "write to a PBX only while its lease is ours".

What it does: wraps each PBX in a ``FencedPbx`` (give ``fenced`` to the reconciler in
place of the PBXes) and runs a ``LeaseKeeper`` over their leases (``pbx:<name>``). When
a lease is gained, that PBX's fence is granted and ``on_owned(name)`` runs (the daemon
passes ``Reconciler.pbx_connected``: read the PBX back and apply the whole difference, as
after any reconnect); when it is lost, the fence is revoked and ``on_released(name)``
runs. ``epoch_for_record(name)`` is the epoch to store with what the latest batch
changed.

What it must not do: clear or touch a PBX when its lease is lost (forwardings stay as
they are; the next owner converges them), or grant a fence the keeper did not give.

Start reading at ``PbxWriters.__init__``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from pbxcal.cluster.fenced_pbx import FencedPbx
from pbxcal.cluster.keeper import LeaseKeeper
from pbxcal.cluster.lease import DEFAULT_MARGIN, DEFAULT_TTL, Fence, LocalClock, local_clock
from pbxcal.pbx import Pbx
from pbxcal.store.fencing import PBX_LEASE_PREFIX, pbx_lease_name


class PbxWriters:
    """Fenced PBXes and the keeper of their leases; see the module docstring."""

    def __init__(
        self,
        pbxes: Mapping[str, Pbx],
        conninfo: str,
        *,
        member_id: str | None = None,
        ttl: float = DEFAULT_TTL,
        margin: float = DEFAULT_MARGIN,
        settle: float | None = None,
        clock: LocalClock = local_clock,
    ) -> None:
        #: give these to the reconciler instead of the PBXes themselves
        self.fenced: dict[str, FencedPbx] = {name: FencedPbx(pbx) for name, pbx in pbxes.items()}
        #: called with a PBX's name when this process starts owning it
        self.on_owned: Callable[[str], None] | None = None
        #: called with a PBX's name when this process stops owning it
        self.on_released: Callable[[str], None] | None = None
        #: called with (PBX name, previous holder) when this process takes a PBX over
        self.on_takeover: Callable[[str, str], None] | None = None
        self.keeper = LeaseKeeper(
            conninfo,
            [pbx_lease_name(name) for name in self.fenced],
            member_id=member_id,
            ttl=ttl,
            margin=margin,
            settle=settle,
            clock=clock,
            on_gained=self._gained,
            on_lost=self._lost,
        )

        self.keeper.on_takeover = self._took_over

    @property
    def members(self) -> list[str]:
        """The live member ids as of the last lease round (empty before the first)."""
        return sorted(member.member_id for member in self.keeper.members)

    @property
    def member_id(self) -> str:
        return self.keeper.member_id

    def owned(self) -> list[str]:
        """The PBXes this process may write to right now."""
        return sorted(name for name in self.fenced if self.keeper.fence(pbx_lease_name(name)))

    def epoch_for_record(self, name: str) -> int | None:
        """The epoch the latest batch to ``name`` was sent under (None: none sent)."""
        return self.fenced[name].applied_epoch

    async def run(self) -> None:
        await self.keeper.run()

    async def close(self) -> None:
        """Stop writing everywhere and hand the leases back (on shutdown)."""
        await self.keeper.close()

    def _gained(self, fence: Fence) -> None:
        name = fence.name.removeprefix(PBX_LEASE_PREFIX)
        pbx = self.fenced.get(name)
        if pbx is None:
            return
        pbx.grant(fence)
        if self.on_owned is not None:
            self.on_owned(name)

    def _took_over(self, lease: str, previous: str) -> None:
        if self.on_takeover is not None and lease.startswith(PBX_LEASE_PREFIX):
            self.on_takeover(lease.removeprefix(PBX_LEASE_PREFIX), previous)

    def _lost(self, fence: Fence, why: str) -> None:
        name = fence.name.removeprefix(PBX_LEASE_PREFIX)
        pbx = self.fenced.get(name)
        if pbx is None:
            return
        pbx.revoke()
        if self.on_released is not None:
            self.on_released(name)
