"""The AMI actions ``AmiPbx`` sends and how their answers are read, as pure functions.

What it does: builds the ``Step``s of a change batch (routing: ``DBPut`` / ``DBDel`` of
``pbxcal/fwd/<ext>``; lamps: ``Setvar DEVICE_STATE(Custom:pbxcal<ext>)``) from
forwardings already validated by ``pbxcal.pbx.values``, and turns the events of the
list actions (``DBGetTree``, ``PJSIPShowEndpoints``, ``ExtensionStateList``) into the
port's answers: the applied forwardings, the extensions that exist, what each phone is
doing.

What it must not do: any I/O or waiting (``adapter.AmiPbx`` sends the steps and maps
errors), or build a step from a value that was not validated.

Start reading at ``routing_steps``, then ``forwardings_from_tree``.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence

from pbxcal.core.wire import is_wire_extension
from pbxcal.errors import UnsafeValue
from pbxcal.pbx import ForwardingState
from pbxcal.pbx.ami.codec import Message
from pbxcal.pbx.ami.session import Step
from pbxcal.pbx.values import (
    FAMILY,
    STATE_ACTIVE,
    STATE_INACTIVE,
    device_name,
    ext_from_key,
    fwd_key,
    join_targets,
    split_value,
)

log = logging.getLogger(__name__)

#: A forwarding that passed ``validate_forwarding``: extension and its targets.
CheckedForwarding = tuple[str, tuple[str, ...]]

#: How DBDel says the key was not there. Asterisk 22 answers "Database entry could not
#: be deleted" (ast_db_del2 fails for an absent key and for a database error alike);
#: older releases said "not found". Both count as cleared: a real failure shows up in
#: the next ``read_applied``, and the reconciler re-applies.
ABSENT_KEY = ("not found", "could not be deleted")

#: ``ExtensionStatus`` ``Status`` (a hint's state bits) and an endpoint's
#: ``DeviceState`` as ``read_extension_states`` answers them.
_HINT_STATES = {"0": "idle", "1": "in-use", "2": "in-use", "4": "unavailable", "8": "ringing",
                "9": "in-use", "16": "in-use", "17": "in-use"}  # fmt: skip
_DEVICE_STATES = {"not in use": "idle", "in use": "in-use", "busy": "in-use",
                  "ringing": "ringing", "ring+inuse": "in-use", "on hold": "in-use"}  # fmt: skip
#: What the list actions answer when there is nothing to list (not a failure).
_NOTHING_LISTED = ("no extension", "no endpoints", "not found", "invalid/unknown command")

# -- the steps sent -------------------------------------------------------------------

#: ``DBGetTree`` of pbxcal's AstDB family: the forwardings as applied.
APPLIED_TREE = Step("DBGetTree", (("Family", FAMILY),), tolerate=("not found",))
#: The PJSIP endpoints (class ``system``) and the hinted extensions (class ``call``).
ENDPOINTS = Step("PJSIPShowEndpoints", tolerate=("no endpoints", "invalid/unknown command"))
HINTS = Step("ExtensionStateList", tolerate=("no extension",))
#: The same three lists as ``read_extension_states`` reads them, plus FreePBX's DND tree.
STATE_HINTS = Step("ExtensionStateList", tolerate=_NOTHING_LISTED)
STATE_ENDPOINTS = Step("PJSIPShowEndpoints", tolerate=_NOTHING_LISTED)
DND_TREE = Step("DBGetTree", (("Family", "DND"),), tolerate=_NOTHING_LISTED)


def routing_steps(checked: Iterable[CheckedForwarding]) -> list[Step]:
    """``DBPut`` of each extension's targets, ``DBDel`` where there are none; tagged by
    extension so a refusal names its own."""
    return [
        Step("DBPut", (("Family", FAMILY), ("Key", fwd_key(ext)),
                       ("Val", join_targets(targets))), tag=ext)
        if targets else
        Step("DBDel", (("Family", FAMILY), ("Key", fwd_key(ext))), ABSENT_KEY, tag=ext)
        for ext, targets in checked
    ]  # fmt: skip


def lamp_steps(checked: Iterable[CheckedForwarding], refused: Iterable[str]) -> list[Step]:
    """The BLF lamp of each extension whose routing was not refused: on while it
    forwards, off when cleared."""
    skip = set(refused)
    return [
        Step("Setvar", (("Variable", f"DEVICE_STATE({device_name(ext)})"),
                        ("Value", STATE_ACTIVE if targets else STATE_INACTIVE)),
             tag=ext)
        for ext, targets in checked if ext not in skip
    ]  # fmt: skip


# -- the answers read ------------------------------------------------------------------


def forwardings_from_tree(events: Sequence[Message], where: str) -> ForwardingState:
    """``pbxcal/fwd/*`` as ``DBGetTree`` listed it: extension -> sorted targets.
    Malformed keys and values are logged (naming ``where``) and left out."""
    state: ForwardingState = {}
    for message in events:
        if message.event != "DBGetTreeResponse":
            continue
        key, value = message.get("Key"), message.get("Val")
        ext = ext_from_key(key)
        if ext is None:
            if key.startswith(f"/{FAMILY}/fwd/"):
                log.warning("%s: ignoring AstDB key %r: not an extension", where, key)
            continue
        try:
            targets = split_value(value)
        except UnsafeValue as exc:
            log.warning("%s: ignoring AstDB %s: %s", where, key, exc)
            continue
        if targets:
            state[ext] = targets
    return state


def extensions_listed(endpoints: Sequence[Message], hints: Sequence[Message]) -> frozenset[str]:
    """The endpoint and hint names of ``ENDPOINTS`` / ``HINTS`` that are extensions by the
    wire rule (names like ``pstn`` or ``pbxcal100`` are not)."""
    found = {m.get("ObjectName") for m in endpoints if m.event == "EndpointList"}
    found.update(m.get("Exten") for m in hints if m.event == "ExtensionStatus")
    return frozenset(ext for ext in found if is_wire_extension(ext))


def extension_states(
    hints: Sequence[Message], endpoints: Sequence[Message], dnd: Sequence[Message]
) -> dict[str, str]:
    """Each extension's "in-use", "ringing", "dnd", "idle" or "unavailable": a hint's
    state, overridden by the PJSIP endpoint of that name, and do-not-disturb (AstDB
    ``DND/<ext>`` = ``YES``, as FreePBX keeps it) over an idle phone."""
    found: dict[str, str] = {}
    for m in hints:
        ext = m.get("Exten") or ""
        if m.event == "ExtensionStatus" and is_wire_extension(ext):
            found[ext] = _HINT_STATES.get(m.get("Status") or "", "unavailable")
    for m in endpoints:
        ext = m.get("ObjectName") or ""
        if m.event == "EndpointList" and is_wire_extension(ext):
            state = (m.get("DeviceState") or "").lower()
            found[ext] = _DEVICE_STATES.get(state, "unavailable")
    for m in dnd:
        ext = (m.get("Key") or "").rpartition("/")[2]
        on = m.event == "DBGetTreeResponse" and (m.get("Val") or "").upper() == "YES"
        if on and found.get(ext) in (None, "idle"):
            found[ext] = "dnd"
    return found
