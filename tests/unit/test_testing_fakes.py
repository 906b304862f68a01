"""The fakes pbxcal ships for users of its ports (``pbxcal.testing.fakes``)."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import pytest

from pbxcal.errors import PbxUnavailable
from pbxcal.pbx import ApplyResult, Pbx
from pbxcal.service.clock import Clock
from pbxcal.testing.fakes import FakeClock, FakePbx


async def test_fake_pbx_implements_the_port_and_records() -> None:
    fake = FakePbx("main", state={"100": ["300"]}, extensions={"100", "201"})
    port: Pbx = fake
    assert await port.read_extensions() == frozenset({"100", "201"})
    assert await port.read_applied() == {"100": ("300",)}
    assert await port.apply({"201": ["333", "+31612345678", "333"], "100": []}) == ApplyResult()
    assert fake.state == {"201": ("+31612345678", "333")}
    assert fake.applied == [{"201": ("+31612345678", "333"), "100": ()}]
    assert fake.calls == {"read_applied": 1, "apply": 1, "read_extensions": 1}


async def test_fake_pbx_refuses_per_extension_like_the_adapter() -> None:
    fake = FakePbx()
    fake.refuse["202"] = "AMI DBPut refused: Failed to update entry"
    result = await fake.apply({"201": ["333"], "202": ["333"], "203": ["x\r\nAction: y"]})
    assert set(result.refused) == {"202", "203"} and not result.ok
    assert fake.state == {"201": ("333",)}
    assert fake.batches[0].refused == result.refused


async def test_fake_pbx_unavailable() -> None:
    fake = FakePbx()
    fake.unavailable = True
    for call in (fake.read_applied(), fake.read_extensions(), fake.apply({"201": []})):
        with pytest.raises(PbxUnavailable):
            await call
    assert fake.batches == []


async def test_next_apply_is_an_event_not_a_poll() -> None:
    fake = FakePbx()
    waiter = asyncio.ensure_future(fake.next_apply())
    await asyncio.sleep(0)  # let the waiter register
    assert not waiter.done()
    await fake.apply({"201": ["333"]})
    async with asyncio.timeout(1):
        batch = await waiter
    assert batch.applied == {"201": ("333",)}


def test_fake_clock() -> None:
    clock = FakeClock(datetime(2026, 3, 30, 9, 0, tzinfo=UTC))
    port: Clock = clock
    assert port.now() == datetime(2026, 3, 30, 9, 0, tzinfo=UTC)
    assert clock.advance(90) == datetime(2026, 3, 30, 9, 1, 30, tzinfo=UTC)
    assert clock.advance(timedelta(hours=1)).hour == 10
    clock.set(datetime(2026, 1, 1, tzinfo=UTC))
    assert clock.now().year == 2026 and clock.now().month == 1
    with pytest.raises(ValueError):
        clock.advance(-1)
    with pytest.raises(ValueError):
        FakeClock(datetime(2026, 1, 1))  # noqa: DTZ001 - naive on purpose
