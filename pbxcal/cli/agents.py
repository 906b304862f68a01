"""``pbxcal agents add|list|set|show``: agents guests can book (issue #12).

Agents are stored (like links made with ``links add``): an id (a slug such as
``anna``), the PBX and extension, a display name, the organizer e-mail, the link that
receives booked meetings (``--booking-link``) and the links whose events make the
agent busy (``--conflict-link``, repeatable), and booking settings as JSON
(``--settings '{"durations": [30, 60]}'`` or ``--settings-file``). Bad input is one
line and nothing is stored; the operations are the admin API's (``pbxcal.booking.agents``).

Start reading at ``run_agents``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from pbxcal.cli.common import global_options, load, opened_store, wants_json
from pbxcal.errors import InputError


def add_agents(sub: Any) -> None:
    common = global_options(json=True)
    p = sub.add_parser(
        "agents",
        parents=[common],
        help="agents guests can book: add, list, set, show",
        description="Agents are extensions guests can book meetings with: their "
        "calendars (links) say when they are busy, one calendar receives the bookings.",
    )
    actions = p.add_subparsers(
        dest="agents_command", required=True, metavar="ACTION", parser_class=type(p)
    )
    add = actions.add_parser("add", parents=[common], help="add an agent")
    add.add_argument("id", help="a slug: lower-case letters, digits, '-' (e.g. anna)")
    add.add_argument("--pbx", required=True, help="the PBX (a [pbx.NAME] of the config)")
    add.add_argument("--extension", required=True, help="the agent's extension")
    add.add_argument("--name", required=True, help="display name shown to guests")
    _change_options(add)
    actions.add_parser("list", parents=[common], help="list agents")
    show = actions.add_parser("show", parents=[common], help="one agent with its settings")
    show.add_argument("id")
    change = actions.add_parser("set", parents=[common], help="change an agent")
    change.add_argument("id")
    change.add_argument("--name", help="display name")
    _change_options(change)
    change.add_argument(
        "--no-booking-link", action="store_true", help="the agent receives no bookings"
    )
    p.set_defaults(handler=run_agents)


def _change_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--email", help="the agent's e-mail (organizer of invitations)")
    p.add_argument("--booking-link", type=int, metavar="LINK", help="link receiving bookings")
    p.add_argument(
        "--conflict-link", type=int, action="append", metavar="LINK",
        help="a link whose events make the agent busy (repeatable)",
    )  # fmt: skip
    p.add_argument("--settings", metavar="JSON", help="booking settings as a JSON object")
    p.add_argument("--settings-file", metavar="FILE", help="booking settings from a JSON file")


def run_agents(ns: argparse.Namespace) -> int:
    from pbxcal.booking import agents as ops
    from pbxcal.booking.model import BookingError
    from pbxcal.store.booking import AgentExists

    config = load(ns)
    with opened_store(ns, config) as (store, _where):
        try:
            if ns.agents_command == "list":
                found = ops.list_agents(store)
                if wants_json(ns):
                    print(json.dumps({"agents": [ops.agent_json(a) for a in found]}, indent=2))
                else:
                    for a in found:
                        links = ",".join(str(i) for i in a.conflict_link_ids) or "-"
                        booking = a.booking_link_id or "-"
                        print(f"{a.id}\t{a.pbx}/{a.extension}\t{a.name}\t"
                              f"booking link {booking}\tconflicts {links}")  # fmt: skip
                    if not found:
                        print("no agents")
                return 0
            if ns.agents_command == "show":
                agent = ops.load_agent(store, ns.id)
            elif ns.agents_command == "add":
                agent = ops.add_agent(
                    store, config, ns.id, pbx=ns.pbx, extension=ns.extension, name=ns.name,
                    email=ns.email, booking_link_id=ns.booking_link,
                    conflict_link_ids=ns.conflict_link or (), settings=_settings(ns),
                )  # fmt: skip
            else:
                changes: dict[str, Any] = {"name": ns.name, "email": ns.email,
                                           "settings": _settings(ns)}  # fmt: skip
                if ns.no_booking_link:
                    changes["booking_link_id"] = None
                elif ns.booking_link is not None:
                    changes["booking_link_id"] = ns.booking_link
                if ns.conflict_link is not None:
                    changes["conflict_link_ids"] = ns.conflict_link
                agent = ops.set_agent(store, ns.id, **changes)
        except (BookingError, AgentExists) as exc:
            raise InputError(str(exc)) from None
    if wants_json(ns) or ns.agents_command == "show":
        print(json.dumps(ops.agent_json(agent), indent=2))
    else:
        print(f"agent {agent.id}: {agent.pbx}/{agent.extension} {agent.name}")
    return 0


def _settings(ns: argparse.Namespace) -> dict[str, Any] | None:
    if ns.settings and ns.settings_file:
        raise InputError("give --settings or --settings-file, not both")
    text = ns.settings
    if ns.settings_file:
        try:
            text = Path(ns.settings_file).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise InputError(f"--settings-file {ns.settings_file}: cannot read ({exc})") from None
    if text is None:
        return None
    try:
        value = json.loads(text)
    except ValueError:
        raise InputError("settings are not JSON") from None
    if not isinstance(value, dict):
        raise InputError("settings must be a JSON object")
    return value
