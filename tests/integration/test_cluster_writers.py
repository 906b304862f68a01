"""Two members, each with the real ``Reconciler`` over ``PbxWriters``, on one PBX and a real
PostgreSQL: only the lease holder writes, and after the holder's keeper dies the other
takes over, reads the PBX back and repairs it. Every write is logged with its sender and
epoch, as the PBX saw it (the issue's "prove it from Asterisk's side")."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from cluster_postgres import *  # noqa: F403 - fixtures
from cluster_postgres import wait_for

from pbxcal.cluster.writers import PbxWriters
from pbxcal.core.ical import expand_calendar, parse_calendar
from pbxcal.core.policy import NumberPolicy
from pbxcal.pbx import ApplyResult, ForwardingState
from pbxcal.service.clock import SystemClock
from pbxcal.service.metrics import Metrics
from pbxcal.service.reconciler import LinkInstances, PbxSettings, Reconciler
from pbxcal.testing.fakes import FakePbx

pytestmark = pytest.mark.integration

#: (sender, epoch it was sent under, changes)
Write = tuple[str, int | None, dict[str, tuple[str, ...]]]


class Recorder:
    """One member's connection to the shared PBX: logs each write with its sender."""

    def __init__(self, pbx: FakePbx, sender: str, log: list[Write]) -> None:
        self.pbx = pbx
        self.name = pbx.name
        self.sender = sender
        self.log = log
        self.writers: PbxWriters | None = None

    async def read_applied(self) -> ForwardingState:
        return await self.pbx.read_applied()

    async def read_extensions(self) -> frozenset[str]:
        return await self.pbx.read_extensions()

    async def apply(self, changes: Mapping[str, Sequence[str]]) -> ApplyResult:
        assert self.writers is not None
        epoch = self.writers.epoch_for_record(self.name)
        self.log.append((self.sender, epoch, {e: tuple(t) for e, t in changes.items()}))
        return await self.pbx.apply(changes)


def forwarding_now(extension: str, target: str) -> LinkInstances:
    """A link whose calendar forwards ``extension`` to ``target`` from an hour ago on."""
    now = datetime.now(UTC).replace(microsecond=0)
    start, end = now - timedelta(hours=1), now + timedelta(hours=1)

    def stamp(moment: datetime) -> str:
        return moment.strftime("%Y%m%dT%H%M%SZ")

    text = (
        "BEGIN:VCALENDAR\r\nVERSION:2.0\r\nPRODID:-//t//t//EN\r\nBEGIN:VEVENT\r\n"
        f"UID:e@test\r\nDTSTAMP:{stamp(start)}\r\nDTSTART:{stamp(start)}\r\n"
        f"DTEND:{stamp(end)}\r\nSUMMARY:{target}\r\nEND:VEVENT\r\nEND:VCALENDAR\r\n"
    )
    since, until = start - timedelta(days=1), end + timedelta(days=1)
    expansion = expand_calendar(parse_calendar(text), since, until, ZoneInfo("UTC"))
    return LinkInstances(("main", extension), tuple(expansion.instances), since, until)


async def test_only_the_holder_writes_and_the_successor_repairs_after_the_holder_dies(
    conninfo: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="pbxcal.service.reconciler")  # fenced tries
    shared = FakePbx("main", extensions={"100", "201"})
    log: list[Write] = []
    writers: dict[str, PbxWriters] = {}
    reconcilers: dict[str, Reconciler] = {}
    tasks: dict[str, list[asyncio.Task[None]]] = {}
    for label in ("X", "Y"):
        recorder = Recorder(shared, label, log)
        member = PbxWriters(
            {"main": recorder}, conninfo, member_id=label, ttl=1.5, margin=0.5, settle=0.0
        )
        recorder.writers = member
        reconciler = Reconciler(
            member.fenced,
            NumberPolicy.default("NL"),
            SystemClock(),
            Metrics(),
            settings={"main": PbxSettings(frozenset({"100", "201"}), discover_extensions=False)},
            tick_interval=0.1,  # the stale member keeps trying, often
        )
        member.on_owned = reconciler.pbx_connected
        reconciler.set_link_instances(1, forwarding_now("100", "201"))
        writers[label] = member
        reconcilers[label] = reconciler
        tasks[label] = [
            asyncio.create_task(member.run()),
            asyncio.create_task(reconciler.run()),
        ]
    try:
        await wait_for(lambda: shared.state == {"100": ("201",)}, 10, "the forwarding")
        [owner] = [label for label, member in writers.items() if member.owned() == ["main"]]
        [other] = [label for label in writers if label != owner]
        assert {sender for sender, _, _ in log} == {owner}

        tasks[owner][0].cancel()  # its keeper dies; its reconciler goes on
        with contextlib.suppress(asyncio.CancelledError):
            await tasks[owner][0]
        await wait_for(lambda: writers[owner].owned() == [], 5, "the old lease to run out")
        shared.state.clear()  # somebody deletes the forwarding on the PBX
        reconcilers[owner].pbx_connected("main")  # the old owner wants to repair it, too
        await wait_for(lambda: writers[other].owned() == ["main"], 10, "the takeover")
        await wait_for(lambda: shared.state == {"100": ("201",)}, 10, "the repair")
        assert log[-1] == (other, 2, {"100": ("201",)})
        # the PBX's own view: epochs never go back, and once the successor wrote,
        # nothing more came from the old owner (whose reconciler kept trying)
        epochs = [epoch for _, epoch, _ in log]
        assert epochs == sorted(epochs) and None not in epochs
        first_new = next(i for i, (sender, _, _) in enumerate(log) if sender == other)
        assert all(sender == other for sender, _, _ in log[first_new:])
        assert writers[owner].owned() == []
        assert any(  # it did try, and the fence stopped it before the PBX saw anything
            "does not hold its write lease" in record.getMessage() for record in caplog.records
        )
    finally:
        for member_tasks in tasks.values():
            for task in member_tasks:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        for member in writers.values():
            await member.close()
