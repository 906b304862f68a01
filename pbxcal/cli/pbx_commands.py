"""What ``pbxcal pbx-status`` and ``pbxcal apply`` show: forwardings and refusals.

``pbx_status`` reads the forwardings over the ``Pbx`` port; ``format_status_table`` and
``format_status_json`` turn the result into text, with every value made ``printable``
(AstDB may hold anything someone else wrote). ``format_refused`` is one line per
extension that ``Pbx.apply`` refused. Argument parsing, config loading and exit codes
live in ``service_commands.py``; this module must not parse arguments, print, or exit.
Start reading at ``pbx_status``.
"""

from __future__ import annotations

import json

from pbxcal.core.redact import printable
from pbxcal.pbx import ApplyResult, Pbx
from pbxcal.pbx.values import device_name


async def pbx_status(pbx: Pbx) -> dict[str, list[str]]:
    """Extension -> sorted targets, for every forwarding the PBX holds now.

    Raises what ``Pbx.read_applied`` raises (``PbxUnavailable``, ``PbxActionFailed``).
    """
    applied = await pbx.read_applied()
    return {
        printable(ext): [printable(t) for t in sorted(applied[ext])]
        for ext in sorted(applied, key=_ext_order)
    }


def format_refused(result: ApplyResult, pbx_name: str = "") -> list[str]:
    """One printable line per refused extension, in extension order."""
    where = f"{printable(pbx_name)}: " if pbx_name else ""
    return [
        f"{where}extension {printable(ext)} refused: {printable(reason)}"
        for ext, reason in sorted(result.refused.items(), key=lambda item: _ext_order(item[0]))
    ]


def format_status_table(status: dict[str, list[str]], pbx_name: str = "") -> str:
    """A human table, one line per forwarding; says so when there is none."""
    where = f" on {pbx_name}" if pbx_name else ""
    if not status:
        return f"no forwardings active{where}\n"
    rows = [("EXTENSION", "DEVICE", "TARGETS")]
    rows += [(ext, _device(ext), ", ".join(targets)) for ext, targets in status.items()]
    width0 = max(len(r[0]) for r in rows)
    width1 = max(len(r[1]) for r in rows)
    lines = [f"{a:<{width0}}  {b:<{width1}}  {c}".rstrip() for a, b, c in rows]
    lines.append(f"{len(status)} forwarding{'s' if len(status) != 1 else ''} active{where}")
    return "\n".join(lines) + "\n"


def format_status_json(status: dict[str, list[str]], pbx_name: str = "") -> str:
    """``{"pbx": NAME, "forwardings": {"201": ["+31612345678", "333"]}}`` on one line."""
    return json.dumps({"pbx": pbx_name, "forwardings": status}, sort_keys=False) + "\n"


def _device(ext: str) -> str:
    return printable(device_name(ext))


def _ext_order(ext: str) -> tuple[int, str]:
    return (len(ext), ext)
