"""Entry point of the ``pbxcal`` console script.

``main(argv)`` builds one argparse parser with a sub-command per task and turns every
pbxcal error into a one-line message on stderr and exit status 2 — never a traceback
(an unexpected exception is one line too, exit 1, with the traceback only when
``PBXCAL_DEBUG=1``). The commands live in ``offline.py`` (plan, slots, check-config),
``links.py``, ``service_commands.py`` (run, apply, pbx-status) and ``keys.py`` (the keys
that encrypt stored credentials).

Imports here stay light (argparse and the command modules, which import the core,
store and service inside their handlers): ``pbxcal --version`` takes about 0.1 s.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from typing import NoReturn

from pbxcal import __version__
from pbxcal.cli import admin, agents, cluster, keys, links, offline, service_commands
from pbxcal.errors import ConfigError, PbxcalError

EXIT_USAGE = 2
EXIT_INTERNAL = 1


class _Parser(argparse.ArgumentParser):
    """argparse with a one-line error (``pbxcal plan: error: ...``) instead of usage."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="pbxcal",
        description="Calendar appointments whose title is a phone number become call "
        "forwardings on an Asterisk PBX.",
    )
    parser.add_argument("--version", action="version", version=f"pbxcal {__version__}")
    sub = parser.add_subparsers(
        dest="command", required=True, metavar="COMMAND", parser_class=_Parser
    )
    offline.add_plan(sub)
    offline.add_slots(sub)
    offline.add_check_config(sub)
    service_commands.add_run(sub)
    links.add_links(sub)
    service_commands.add_apply(sub)
    service_commands.add_pbx_status(sub)
    keys.add_keys(sub)
    cluster.add_cluster(sub)
    admin.add_admin_commands(sub)
    agents.add_agents(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    ns = parser.parse_args(argv)
    try:
        code: int = ns.handler(ns)
    except ConfigError as exc:
        for problem in exc.problems:
            print(f"pbxcal: error: {_one_line(problem)}", file=sys.stderr)
        return EXIT_USAGE
    except PbxcalError as exc:
        print(f"pbxcal: error: {_one_line(str(exc))}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # the last line of defence: never a traceback
        if os.environ.get("PBXCAL_DEBUG") == "1":
            raise
        print(
            f"pbxcal: internal error: {type(exc).__name__}: {_one_line(str(exc))} "
            "(PBXCAL_DEBUG=1 shows the traceback)",
            file=sys.stderr,
        )
        return EXIT_INTERNAL
    return code


def _one_line(text: str) -> str:
    """A message as one printable line, URLs redacted (a message may quote a source)."""
    from pbxcal.cli.links import shown_message

    first = text.strip().splitlines()[0] if text.strip() else ""
    return shown_message(first)[:500]


if __name__ == "__main__":
    sys.exit(main())
