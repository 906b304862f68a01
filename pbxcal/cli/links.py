"""``pbxcal links add|list|remove|disable|enable``: the calendars in the store.

Every command works on the store the service uses (``common.opened_store``) and says
which store it wrote. A source is checked with the config's own rule
(``pbxcal.calendars.locations.check_source``) before it is stored; what ``list``
prints is redacted (``redact_url``: a private URL's token never shows) and made
``printable`` (stored text cannot drive the terminal).

Must not import the service. Start reading at ``run_links``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
from typing import TYPE_CHECKING, Any

from pbxcal.cli import args as parse
from pbxcal.cli.common import global_options, load, opened_store, wants_json
from pbxcal.errors import InputError

if TYPE_CHECKING:
    from pbxcal.config import Config
    from pbxcal.store import Link, Store

#: Anything URL-shaped inside a stored message (older sync-log lines kept raw URLs).
_URL_IN_TEXT = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^\s'\"<>]+")


def add_links(sub: Any) -> None:
    common = global_options(json=True)
    p = sub.add_parser(
        "links",
        parents=[common],
        help="manage calendar links in the store",
        description="Add, list, remove, disable or enable the calendars that drive "
        "extensions, in the store the service uses. A running service picks changes up "
        "within seconds. --config, --store and --json may stand before or after ACTION.",
    )
    links = p.add_subparsers(
        dest="links_command", required=True, metavar="ACTION", parser_class=type(p)
    )
    add = links.add_parser("add", parents=[common], help="link a calendar to an extension")
    add.add_argument("--extension", required=True, metavar="EXT")
    add.add_argument(
        "--source",
        required=True,
        metavar="PATH|URL",
        help="a local .ics file or an http(s)/webcal URL (the rules of [[link]] source)",
    )
    add.add_argument("--pbx", metavar="NAME", help="the PBX (default: the first configured)")
    add.add_argument(
        "--timezone", type=parse.zone, metavar="TZ", help="zone for all-day and floating events"
    )
    add.add_argument("--disabled", action="store_true", help="add it disabled")
    links.add_parser("list", parents=[common], help="list links with their last sync")
    for name, text in (
        ("remove", "remove a link and its stored events"),
        ("disable", "stop using a link (its forwardings end)"),
        ("enable", "use a disabled link again"),
    ):
        q = links.add_parser(name, parents=[common], help=text)
        q.add_argument("id", type=parse.link_id, metavar="ID")
    p.set_defaults(handler=run_links)


def run_links(ns: argparse.Namespace) -> int:
    config = load(ns)
    if ns.links_command == "add":
        source = _checked_source(ns.source)
        pbx, extension = _checked_target(ns, config)
    with opened_store(ns, config) as (store, where):
        command = ns.links_command
        if command == "add":
            settings: dict[str, Any] = {"timezone": ns.timezone.key} if ns.timezone else {}
            link = store.add_link(
                extension, pbx, "ics", source, settings, active=not ns.disabled
            )
            _say(
                ns,
                f"link {link.id} added to {where}: extension {link.extension} on {link.pbx} "
                f"<- {_shown_source(link.source)}",
                {"added": link.id, "store": where},
            )
        elif command == "list":
            _print_links(store.list_links(), store, where, as_json=wants_json(ns))
        elif command == "remove":
            store.remove_link(ns.id)
            _say(ns, f"link {ns.id} removed from {where}", {"removed": ns.id, "store": where})
        else:
            link = store.set_link_active(ns.id, command == "enable")
            state = "enabled" if link.active else "disabled"
            _say(ns, f"link {link.id} {state} in {where}", {state: link.id, "store": where})
    return 0


def _checked_source(value: str) -> str:
    from pbxcal.calendars.locations import check_source

    problem = check_source(value)
    if problem is not None:
        raise InputError(f"--source {problem}")
    if "://" not in value and not os.path.isabs(value) and not value.startswith("~"):
        # the service runs elsewhere (systemd: in /): store the path it will find
        return os.path.abspath(value)
    return value


def _checked_target(ns: argparse.Namespace, config: Config) -> tuple[str, str]:
    from pbxcal.config.checks import show

    pbx = ns.pbx or next(iter(config.pbxes), None)
    if pbx is None or pbx not in config.pbxes:
        known = ", ".join(config.pbxes) or f"none in {config.source}"
        raise InputError(f"--pbx {show(pbx or '')}: not a configured PBX ({known})")
    extension: str = ns.extension
    if not config.policy.is_extension(extension):
        raise InputError(
            f"--extension {show(extension)} is not an extension "
            f"(pattern {config.policy.extension_pattern!r})"
        )
    return pbx, extension


def _say(ns: argparse.Namespace, text: str, data: dict[str, Any]) -> None:
    print(json.dumps(data) if wants_json(ns) else text)


def _shown_source(source: str) -> str:
    from pbxcal.core.redact import redact_url

    return redact_url(source)


def shown_message(message: str) -> str:
    """A stored message as it may be printed: URLs redacted, control codes escaped."""
    from pbxcal.core.redact import printable, redact_url

    return printable(_URL_IN_TEXT.sub(lambda m: redact_url(m.group(0)), message))


def _print_links(links: list[Link], store: Store, where: str, *, as_json: bool) -> None:
    from pbxcal.core.redact import printable

    last = store.last_sync()
    rows = []
    for link in links:
        entry = last.get(link.id)
        rows.append(
            {
                "id": link.id,
                "extension": printable(link.extension),
                "pbx": printable(link.pbx),
                "source": _shown_source(link.source),
                "active": link.active,
                "origin": printable(link.origin),
                "last_sync": entry.at.strftime("%Y-%m-%dT%H:%M:%SZ") if entry else None,
                "last_result": printable(entry.result) if entry else None,
                "accepted": entry.accepted if entry else None,
                "rejected": entry.rejected if entry else None,
                "message": shown_message(entry.message) if entry else None,
            }
        )
    if as_json:
        print(json.dumps({"store": where, "links": rows}))
        return
    if not rows:
        print(f"no links in {where}")
        return
    for r in rows:
        state = "active" if r["active"] else "disabled"
        sync = f"{r['last_result']} at {r['last_sync']}" if r["last_sync"] else "never synced"
        print(
            f"{r['id']:>4}  ext {r['extension']:<6} {r['pbx']:<8} {state:<8} {sync:<34} "
            f"{r['source']}"
        )
        if r["message"] and r["last_result"] not in ("changed", "unchanged"):
            print(f"      {r['message']}")
