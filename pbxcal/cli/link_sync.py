"""``pbxcal links sync ID``: read one link's calendar now, in this process, and say
what pbxcal made of it.

It runs the service's own ``CalendarSync.sync_link`` once against the real store (the
same parse, limits, expansion, store writes and sync-log line as the daemon), with a
reconciler that only lends its title parser: extension targets are those of the
config's ``[pbx.X] extensions`` (this command does not ask Asterisk). It prints the
result, the counts, the message and the forwarding windows of the coming week. A
running service reads the calendar again at its next poll and reaches the same result.

Start reading at ``sync_once``.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Mapping, Sequence
from datetime import timedelta
from typing import TYPE_CHECKING

from pbxcal.errors import InputError, PbxUnavailable

if TYPE_CHECKING:
    from pbxcal.config import Config
    from pbxcal.pbx import ApplyResult, ForwardingState
    from pbxcal.store import Store

#: How far ahead ``links sync`` shows the windows.
_SHOWN = timedelta(days=7)


class _NoPbx:
    """A PBX this command never talks to (the reconciler only lends its parser)."""

    def __init__(self, name: str) -> None:
        self.name = name

    async def read_applied(self) -> ForwardingState:
        raise PbxUnavailable(f"{self.name}: not contacted by links sync")

    async def read_extensions(self) -> frozenset[str]:
        raise PbxUnavailable(f"{self.name}: not contacted by links sync")

    async def apply(self, changes: Mapping[str, Sequence[str]]) -> ApplyResult:
        raise PbxUnavailable(f"{self.name}: not contacted by links sync")


def sync_once(link_id: int, config: Config, store: Store, where: str, *, as_json: bool) -> int:
    """Sync link ``link_id`` once; 0 when the calendar was read, 1 when it was not."""
    link = store.get_link(link_id)
    if link is None:
        raise InputError(f"no link {link_id} in {where} (see: links list)")
    return asyncio.run(_sync(link_id, config, store, where, as_json=as_json))


async def _sync(link_id: int, config: Config, store: Store, where: str, *, as_json: bool) -> int:
    import httpx

    from pbxcal.calendars.health import SUCCESS_RESULTS, link_status
    from pbxcal.cli.links import shown_message
    from pbxcal.core.redact import printable
    from pbxcal.core.windows import plan_windows
    from pbxcal.service.clock import SystemClock
    from pbxcal.service.metrics import Metrics
    from pbxcal.service.reconciler import PbxSettings, Reconciler
    from pbxcal.service.sync import CalendarSync

    link = store.get_link(link_id)
    assert link is not None
    clock, metrics = SystemClock(), Metrics()
    settings = {
        name: PbxSettings(extensions=pbx.extensions, discover_extensions=False)
        for name, pbx in config.pbxes.items()
    }
    reconciler = Reconciler(
        {name: _NoPbx(name) for name in config.pbxes},
        config.policy,
        clock,
        metrics,
        settings=settings,
    )
    from pbxcal.calendars.blocking import BlockingCalls
    from pbxcal.calendars.providers import SourceFactory
    from pbxcal.store import load_key_ring

    store.use_keys(load_key_ring(config.secrets_key_file, config.secrets_key_credential))
    calls = BlockingCalls(workers=2)
    async with httpx.AsyncClient(timeout=config.sync_timeout, follow_redirects=True) as client:
        factory = SourceFactory(
            client, config.max_calendar_bytes, calls, store.load_secret,
            timeout=config.sync_timeout,
        )  # fmt: skip
        sync = CalendarSync(
            store, reconciler, metrics, clock, config, client, source_factory=factory
        )
        await sync.restore([link])
        try:
            result = await sync.sync_link(link_id)
        finally:
            sync.stop()
            calls.close()
    entry = next(iter(store.sync_log(link_id, 1)), None)
    now = clock.now()
    windows = []
    instances = reconciler.link_instances(link_id)
    if instances is not None:
        parser = reconciler.parser_for(link.pbx)
        plan = plan_windows(instances.instances, now, now + _SHOWN, parser.policy, parser=parser)
        windows = [
            {
                "start": w.start.strftime("%Y-%m-%dT%H:%M:%SZ"),
                "end": w.end.strftime("%Y-%m-%dT%H:%M:%SZ"),
                "targets": list(w.targets),
            }
            for w in plan.windows
        ]
    fresh = entry is not None and result != "unchanged"
    data = {
        "store": where,
        "id": link_id,
        "result": result,
        "status": link_status(result),
        "accepted": entry.accepted if fresh and entry else None,
        "rejected": entry.rejected if fresh and entry else None,
        "message": shown_message(entry.message) if fresh and entry else "",
        "windows_next_7_days": windows,
    }
    if as_json:
        print(json.dumps(data))
    else:
        print(f"link {link_id} in {where}: {result} ({data['status']})")
        if fresh and entry is not None:
            rejected = ", ".join(f"{n} {r}" for r, n in sorted(entry.rejected.items()))
            more = f"; rejected: {rejected}" if rejected else ""
            print(f"  {entry.accepted} appointments forward{more}")
        if data["message"]:
            print(f"  {data['message']}")
        print(f"  forwarding windows in the next 7 days: {len(windows)}")
        for w in windows:
            print(f"    {w['start']} .. {w['end']}  {printable(' & '.join(w['targets']))}")
    return 0 if result in SUCCESS_RESULTS else 1
