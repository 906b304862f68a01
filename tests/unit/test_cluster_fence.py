"""``Fence`` and ``FencedPbx`` with a hand-driven local clock (no database needed)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from pbxcal.cluster.fenced_pbx import FencedPbx
from pbxcal.cluster.lease import Fence, Lease
from pbxcal.errors import LeaseLost, PbxUnavailable
from pbxcal.testing.fakes import FakePbx

EXPIRES = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def lease(epoch: int = 3, valid_until: float = 108.0) -> Lease:
    return Lease("pbx:main", "A", epoch, 10.0, 2.0, valid_until, EXPIRES)


def test_a_fence_is_valid_until_its_local_deadline_and_not_a_moment_longer() -> None:
    clock = Clock()
    fence = Fence(lease(), clock)
    assert fence.check() == 3
    clock.now = 107.9
    assert fence.check() == 3
    with pytest.raises(LeaseLost):
        fence.check(need=0.5)  # a batch that needs more time than is left is refused
    clock.now = 108.0
    with pytest.raises(LeaseLost, match="ran out on this process's clock"):
        fence.check()
    assert not fence.valid() and fence.remaining() == 0.0


def test_a_renewal_extends_it_and_a_revocation_ends_it_for_good() -> None:
    clock = Clock()
    fence = Fence(lease(), clock)
    fence.renewed(lease(valid_until=111.0))
    clock.now = 110.0
    assert fence.check() == 3
    fence.renewed(lease(valid_until=109.0))  # a late, older answer never shortens it
    assert fence.remaining() == pytest.approx(1.0)
    with pytest.raises(ValueError, match="not this fence's"):
        fence.renewed(lease(epoch=4, valid_until=200.0))
    fence.revoke("handed over to member B")
    fence.renewed(lease(valid_until=300.0))
    with pytest.raises(LeaseLost, match="handed over to member B"):
        fence.check()


async def test_a_fenced_pbx_sends_nothing_without_a_valid_lease() -> None:
    clock = Clock()
    fake = FakePbx("main", extensions={"100"})
    fenced = FencedPbx(fake)
    with pytest.raises(LeaseLost, match="does not hold"):
        await fenced.apply({"100": ["333"]})
    with pytest.raises(PbxUnavailable):  # what the reconciler catches
        await fenced.read_applied()
    assert fake.calls == {"read_applied": 0, "apply": 0, "read_extensions": 0}

    fenced.grant(Fence(lease(), clock))
    assert (await fenced.apply({"100": ["333"]})).ok
    assert fake.state == {"100": ("333",)}
    assert fenced.epoch() == fenced.applied_epoch == 3

    clock.now = 108.0  # ran out locally: nothing more reaches the PBX
    with pytest.raises(LeaseLost):
        await fenced.apply({"100": []})
    # the directory is read without a lease: every member parses titles for every PBX
    assert await fenced.read_extensions() == frozenset({"100"})
    assert fake.state == {"100": ("333",)} and fake.calls["apply"] == 1

    fenced.grant(Fence(lease(epoch=5, valid_until=120.0), clock))
    fenced.revoke()
    with pytest.raises(LeaseLost):
        await fenced.apply({"100": []})
