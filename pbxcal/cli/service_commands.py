"""``pbxcal run``, ``pbxcal apply`` and ``pbxcal pbx-status``: the service and the PBX.

These need a config file (``--config``, default ``$PBXCAL_CONFIG`` or
``/etc/pbxcal/pbxcal.toml``) because they reach the store or a PBX. ``apply`` and
``pbx-status`` are for admins and for debugging: they talk to the PBX directly, once;
an extension the PBX port refuses is printed (one line each) and the exit status is 1.
The ``links`` commands are in ``links.py``.

The daemon, store and AMI modules pull in SQLAlchemy and aiohttp; they are imported
inside the handlers so ``plan``, ``slots`` and ``--help`` start fast. Start reading at
``run_apply``.
"""

from __future__ import annotations

import argparse
import sys
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from pbxcal.cli.common import global_options, load, store_url, wants_json
from pbxcal.errors import InputError

if TYPE_CHECKING:
    from pbxcal.config import Config
    from pbxcal.pbx import ApplyResult
    from pbxcal.pbx.ami import AmiPbx

EXIT_REFUSED = 1


def add_run(sub: Any) -> None:
    p = sub.add_parser(
        "run",
        parents=[global_options()],
        help="run the service (forwardings, sync, metrics)",
        description="Run pbxcal as a service: read the linked calendars, "
        "switch forwardings at the exact boundaries, serve /metrics.",
    )
    p.add_argument(
        "--log-level",
        default="INFO",
        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
        help="default INFO",
    )
    p.set_defaults(handler=run_service)


def add_apply(sub: Any) -> None:
    p = sub.add_parser(
        "apply",
        parents=[global_options(store=False)],
        help="plan a calendar now and apply it to the PBX once",
        description="Plan the given calendar for an extension at the current "
        "time and write the result to the PBX (for admins and debugging), or "
        "clear an extension's forwarding with --clear. Exit status 1 when the PBX "
        "port refused an extension.",
    )
    p.add_argument("--pbx", metavar="NAME", help="the PBX (default: the first configured)")
    p.add_argument("--ics", action="append", metavar="FILE", help="calendar file(s) to plan")
    p.add_argument("--extension", metavar="EXT", help="the extension to plan for")
    p.add_argument("--clear", metavar="EXT", help="clear this extension's forwarding")
    p.set_defaults(handler=run_apply)


def add_pbx_status(sub: Any) -> None:
    p = sub.add_parser(
        "pbx-status",
        parents=[global_options(store=False, json=True)],
        help="show what the PBX holds for each extension",
        description="Read pbxcal's forwardings back from the PBX (AstDB "
        "family pbxcal) and print them.",
    )
    p.add_argument("--pbx", metavar="NAME", help="the PBX (default: every configured PBX)")
    p.set_defaults(handler=run_pbx_status)


def run_service(ns: argparse.Namespace) -> int:
    import asyncio

    from pbxcal.cli.common import config_path
    from pbxcal.service.daemon import Daemon
    from pbxcal.service.logs import setup_logging

    config = load(ns)
    setup_logging(ns.log_level)
    daemon = Daemon(config, config_path=config_path(ns), store_url=store_url(ns, config))
    asyncio.run(daemon.run())
    return 0


def _pbx(config: Config, name: str | None) -> AmiPbx:
    from pbxcal.config.checks import show
    from pbxcal.pbx.ami import AmiConfig, AmiPbx

    name = name or next(iter(config.pbxes), None)
    if name is None or name not in config.pbxes:
        raise InputError(f"no PBX named {show(name or '')} in {config.source}")
    return AmiPbx(AmiConfig.from_config(config.pbxes[name]))


def run_apply(ns: argparse.Namespace) -> int:
    import asyncio

    from pbxcal.cli.offline import read_instances
    from pbxcal.cli.pbx_commands import format_refused
    from pbxcal.core.redact import printable
    from pbxcal.core.targets import TitleParser
    from pbxcal.core.windows import plan_windows

    config = load(ns)
    if ns.clear:
        if not config.policy.is_extension(ns.clear):
            raise InputError(f"--clear {printable(ns.clear)!r} is not an extension")
        changes: dict[str, tuple[str, ...]] = {ns.clear: ()}
    else:
        if not ns.ics or not ns.extension:
            raise InputError("give --ics FILE and --extension EXT, or --clear EXT")
        if not config.policy.is_extension(ns.extension):
            raise InputError(f"--extension {printable(ns.extension)!r} is not an extension")
        now = datetime.now(UTC)
        start, end = now - timedelta(days=1), now + timedelta(days=1)
        instances = read_instances(ns.ics, start, end, config.zone, config.limits)
        changes = {}
    pbx = _pbx(config, ns.pbx)
    settings = config.pbxes[pbx.name]

    async def apply() -> ApplyResult:
        await pbx.start(retry=False)
        try:
            if not changes:  # plan with the extensions that exist on this PBX
                known = set(settings.extensions)
                if settings.discover_extensions:
                    known |= await pbx.read_extensions()
                parser = TitleParser(config.policy, known)
                plan = plan_windows(instances, start, end, config.policy, parser=parser)
                changes[ns.extension] = plan.targets_at(now)
            return await pbx.apply(changes)
        finally:
            await pbx.close()

    result = asyncio.run(apply())
    for ext, targets in changes.items():
        if ext in result.refused:
            continue
        what = " & ".join(targets) if targets else "no forwarding"
        print(f"{pbx.name}: extension {ext} -> {what}")
    refused = format_refused(result, pbx.name)
    for line in refused:
        print(f"pbxcal: error: {line}", file=sys.stderr)
    return EXIT_REFUSED if refused else 0


def run_pbx_status(ns: argparse.Namespace) -> int:
    import asyncio

    from pbxcal.cli.pbx_commands import format_status_json, format_status_table, pbx_status

    config = load(ns)
    names = [ns.pbx] if ns.pbx else list(config.pbxes)
    if not names:
        raise InputError(f"no [pbx.NAME] configured in {config.source}")

    async def status(name: str) -> dict[str, list[str]]:
        pbx = _pbx(config, name)
        await pbx.start(retry=False)
        try:
            return await pbx_status(pbx)
        finally:
            await pbx.close()

    for name in names:
        result = asyncio.run(status(name))
        print((format_status_json if wants_json(ns) else format_status_table)(result, name), end="")
    return 0

