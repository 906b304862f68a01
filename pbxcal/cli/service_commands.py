"""``pbxcal run``, ``pbxcal links …``, ``pbxcal apply`` and ``pbxcal pbx-status``.

These need a config file (``--config``, default ``$PBXCAL_CONFIG`` or
``/etc/pbxcal/pbxcal.toml``) because they reach the store or a PBX. ``apply`` and
``pbx-status`` are for admins and for debugging: they talk to the PBX directly, once.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from pbxcal.cli.args import zone
from pbxcal.cli.offline import read_instances
from pbxcal.config import Config, load_config
from pbxcal.core.windows import plan_windows
from pbxcal.errors import InputError

# The daemon, store and AMI modules pull in SQLAlchemy, aiohttp and panoramisk (~0.7 s);
# they are imported inside the handlers so `plan`, `slots` and `--help` start fast.
if TYPE_CHECKING:
    from pbxcal.pbx.ami import AmiPbx
    from pbxcal.store import Link, Store

DEFAULT_CONFIG = "/etc/pbxcal/pbxcal.toml"


def _config_option(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--config",
        metavar="FILE",
        default=os.environ.get("PBXCAL_CONFIG", DEFAULT_CONFIG),
        help=f"the TOML config (default: $PBXCAL_CONFIG or {DEFAULT_CONFIG})",
    )


def add_run(sub: Any) -> None:
    p = sub.add_parser(
        "run",
        help="run the service (forwardings, sync, metrics)",
        description="Run pbxcal as a service: read the linked calendars, "
        "switch forwardings at the exact boundaries, serve /metrics.",
    )
    _config_option(p)
    p.add_argument("--store", metavar="URL", help="override [store] url")
    p.add_argument(
        "--log-level",
        default="INFO",
        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
        help="default INFO",
    )
    p.set_defaults(handler=run_service)


def add_links(sub: Any) -> None:
    p = sub.add_parser(
        "links",
        help="manage calendar links in the store",
        description="Add, list, remove, disable or enable the calendars "
        "that drive extensions. A running service picks changes up within "
        "seconds.",
    )
    _config_option(p)
    p.add_argument("--store", metavar="URL", help="override [store] url")
    links = p.add_subparsers(
        dest="links_command", required=True, metavar="ACTION", parser_class=type(p)
    )
    add = links.add_parser("add", help="link a calendar to an extension")
    add.add_argument("--extension", required=True, metavar="EXT")
    add.add_argument(
        "--source",
        required=True,
        metavar="PATH|URL",
        help="a local .ics file or an http(s)/webcal URL",
    )
    add.add_argument("--pbx", metavar="NAME", help="the PBX (default: the first configured)")
    add.add_argument(
        "--timezone", type=zone, metavar="TZ", help="zone for all-day and floating events"
    )
    add.add_argument("--disabled", action="store_true", help="add it disabled")
    lst = links.add_parser("list", help="list links with their last sync")
    lst.add_argument("--json", action="store_true")
    for name, text in (
        ("remove", "remove a link and its stored events"),
        ("disable", "stop using a link (its forwardings end)"),
        ("enable", "use a disabled link again"),
    ):
        q = links.add_parser(name, help=text)
        q.add_argument("id", type=int, metavar="ID")
    p.set_defaults(handler=run_links)


def add_apply(sub: Any) -> None:
    p = sub.add_parser(
        "apply",
        help="plan a calendar now and apply it to the PBX once",
        description="Plan the given calendar for an extension at the current "
        "time and write the result to the PBX (for admins and debugging), or "
        "clear an extension's forwarding with --clear.",
    )
    _config_option(p)
    p.add_argument("--pbx", metavar="NAME", help="the PBX (default: the first configured)")
    p.add_argument("--ics", action="append", metavar="FILE", help="calendar file(s) to plan")
    p.add_argument("--extension", metavar="EXT", help="the extension to plan for")
    p.add_argument("--clear", metavar="EXT", help="clear this extension's forwarding")
    p.set_defaults(handler=run_apply)


def add_pbx_status(sub: Any) -> None:
    p = sub.add_parser(
        "pbx-status",
        help="show what the PBX holds for each extension",
        description="Read pbxcal's forwardings back from the PBX (AstDB "
        "family pbxcal) and print them.",
    )
    _config_option(p)
    p.add_argument("--pbx", metavar="NAME", help="the PBX (default: every configured PBX)")
    p.add_argument("--json", action="store_true", help="one JSON object per PBX")
    p.set_defaults(handler=run_pbx_status)


def run_service(ns: argparse.Namespace) -> int:
    from pbxcal.service.daemon import Daemon, default_store_url
    from pbxcal.service.logs import setup_logging

    config = load_config(ns.config)
    setup_logging(ns.log_level)
    store_url = ns.store or config.store_url or default_store_url(os.environ.get("STATE_DIRECTORY"))
    daemon = Daemon(config, config_path=ns.config, store_url=store_url)
    asyncio.run(daemon.run())
    return 0


def run_links(ns: argparse.Namespace) -> int:
    from pbxcal.service.daemon import default_store_url
    from pbxcal.store import Store

    config = load_config(ns.config)
    store = Store.open(
        ns.store or config.store_url or default_store_url(os.environ.get("STATE_DIRECTORY"))
    )
    try:
        return _links(ns, config, store)
    finally:
        store.close()


def _links(ns: argparse.Namespace, config: Config, store: Store) -> int:
    command = ns.links_command
    if command == "add":
        pbx = ns.pbx or next(iter(config.pbxes), None)
        if pbx is None or pbx not in config.pbxes:
            raise InputError(f"--pbx {pbx!r}: not a configured PBX ({', '.join(config.pbxes)})")
        if not (ns.extension.isdigit() and config.policy.is_extension(ns.extension)):
            raise InputError(f"--extension {ns.extension!r} is not an extension")
        settings: dict[str, Any] = {}
        if ns.timezone:
            settings["timezone"] = ns.timezone.key
        link = store.add_link(ns.extension, pbx, "ics", ns.source, settings, active=not ns.disabled)
        print(f"added link {link.id}: extension {link.extension} on {link.pbx} <- {link.source}")
    elif command == "list":
        _print_links(store.list_links(), store, as_json=ns.json)
    elif command == "remove":
        store.remove_link(ns.id)
        print(f"removed link {ns.id}")
    else:
        link = store.set_link_active(ns.id, command == "enable")
        print(f"link {link.id} {'enabled' if link.active else 'disabled'}")
    return 0


def _print_links(links: list[Link], store: Store, *, as_json: bool) -> None:
    last = store.last_sync()
    rows = []
    for link in links:
        entry = last.get(link.id)
        rows.append(
            {
                "id": link.id,
                "extension": link.extension,
                "pbx": link.pbx,
                "source": link.source,
                "active": link.active,
                "origin": link.origin,
                "last_sync": entry.at.strftime("%Y-%m-%dT%H:%M:%SZ") if entry else None,
                "last_result": entry.result if entry else None,
                "accepted": entry.accepted if entry else None,
                "rejected": entry.rejected if entry else None,
                "message": entry.message if entry else None,
            }
        )
    if as_json:
        print(json.dumps({"links": rows}))
        return
    if not rows:
        print("no links")
        return
    for r in rows:
        state = "active" if r["active"] else "disabled"
        sync = f"{r['last_result']} at {r['last_sync']}" if r["last_sync"] else "never synced"
        print(
            f"{r['id']:>4}  ext {r['extension']:<6} {r['pbx']:<8} {state:<8} {sync:<34} "
            f"{r['source']}"
        )


def _pbx(config: Config, name: str | None) -> AmiPbx:
    from pbxcal.pbx.ami import AmiPbx
    from pbxcal.service.daemon import ami_config

    name = name or next(iter(config.pbxes), None)
    if name is None or name not in config.pbxes:
        raise InputError(f"no PBX named {name!r} in {config.source}")
    return AmiPbx(ami_config(config.pbxes[name], config))


def run_apply(ns: argparse.Namespace) -> int:
    config = load_config(ns.config)
    if ns.clear:
        changes: dict[str, tuple[str, ...]] = {ns.clear: ()}
    else:
        if not ns.ics or not ns.extension:
            raise InputError("give --ics FILE and --extension EXT, or --clear EXT")
        now = datetime.now(UTC)
        start, end = now - timedelta(days=1), now + timedelta(days=1)
        instances = read_instances(ns.ics, start, end, config.zone)
        plan = plan_windows(instances, start, end, config.policy)
        changes = {ns.extension: plan.targets_at(now)}
    pbx = _pbx(config, ns.pbx)

    async def apply() -> None:
        await pbx.start(retry=False)
        try:
            await pbx.apply(changes)
        finally:
            await pbx.close()

    asyncio.run(apply())
    for ext, targets in changes.items():
        what = " & ".join(targets) if targets else "no forwarding"
        print(f"{pbx.name}: extension {ext} -> {what}")
    return 0


def run_pbx_status(ns: argparse.Namespace) -> int:
    from pbxcal.cli.pbx_commands import format_status_json, format_status_table, pbx_status

    config = load_config(ns.config)
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
        print((format_status_json if ns.json else format_status_table)(result, name), end="")
    return 0
