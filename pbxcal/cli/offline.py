"""``pbxcal plan``, ``pbxcal slots`` and ``pbxcal check-config``: dry runs, no network.

These read iCalendar files, run the pure core and print JSON (``--json``) or a short
table. The JSON shapes are contracts (see docs/architecture.md); change them only by
adding fields. ``plan`` knows which extensions exist from ``--extensions`` or the
config's ``[pbx.X] extensions`` (``known_extensions``); calendars are expanded under
the config's ``[sync]`` limits. ``check-config`` also checks the machine
(``pbxcal.config.audit``) and prints warnings on stderr.

The core is imported inside the handlers, so ``pbxcal --version`` stays fast. Must not
touch the network or a store. Start reading at ``run_plan``.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo

from pbxcal.cli import args as parse
from pbxcal.errors import InputError

if TYPE_CHECKING:
    from pbxcal.config import Config
    from pbxcal.core.ical import EventInstance, ExpansionLimits
    from pbxcal.core.policy import NumberPolicy
    from pbxcal.core.slots import LocalPeriod
    from pbxcal.store import Link

#: A calendar file larger than this is refused rather than read into memory.
MAX_ICS_BYTES = 50_000_000


def add_plan(sub: Any) -> None:
    p = sub.add_parser(
        "plan",
        help="dry run: which targets an extension forwards to, from when to when",
        description="Read iCalendar files and print the forwarding windows of one "
        "extension in a time range, plus the events that are not forwardings and why.",
    )
    _add_calendar_options(p, ics_required=False)
    p.add_argument(
        "--link",
        type=parse.link_id,
        metavar="ID",
        help="plan from a link's events as the service stored them (instead of --ics)",
    )
    p.add_argument("--store", metavar="URL", help="the store of --link (default: the service's)")
    p.add_argument(
        "--extension",
        metavar="EXT",
        help="the extension whose calendar this is (default with --link: the link's)",
    )
    p.add_argument(
        "--from",
        dest="start",
        required=True,
        type=parse.moment,
        metavar="ISO",
        help="start of the range: 2026-03-30T00:00:00Z, or a date (local midnight)",
    )
    p.add_argument(
        "--to",
        dest="end",
        required=True,
        type=parse.moment,
        metavar="ISO",
        help="end of the range (exclusive), same formats as --from",
    )
    p.add_argument(
        "--extensions",
        metavar="LIST",
        help='extensions that exist on the PBX, e.g. "100,200-299" (default: the '
        "config's [pbx.X] extensions; with neither, every title that matches the "
        "extension pattern counts as one)",
    )
    p.add_argument("--json", action="store_true", help="print the JSON object of the contract")
    p.set_defaults(handler=run_plan)


def add_slots(sub: Any) -> None:
    p = sub.add_parser(
        "slots",
        help="dry run: free slots a guest could book",
        description="Read iCalendar files and print the free slots of an agent between "
        "two local dates, given working hours, breaks, buffers and notice.",
    )
    _add_calendar_options(p, timezone_required=True)
    p.add_argument(
        "--from",
        dest="first_day",
        required=True,
        type=parse.day,
        metavar="YYYY-MM-DD",
        help="first local date",
    )
    p.add_argument(
        "--to",
        dest="last_day",
        required=True,
        type=parse.day,
        metavar="YYYY-MM-DD",
        help="last local date (inclusive)",
    )
    p.add_argument(
        "--duration",
        required=True,
        type=parse.positive_minutes,
        metavar="MIN",
        help="length of a slot in minutes",
    )
    p.add_argument(
        "--step",
        type=parse.positive_minutes,
        metavar="MIN",
        help="minutes between slot starts (default: the duration)",
    )
    p.add_argument(
        "--buffer-before",
        type=parse.minutes,
        default=timedelta(0),
        metavar="MIN",
        help="free minutes needed after busy time before a slot (default 0)",
    )
    p.add_argument(
        "--buffer-after",
        type=parse.minutes,
        default=timedelta(0),
        metavar="MIN",
        help="free minutes needed after a slot before busy time (default 0)",
    )
    p.add_argument(
        "--hours",
        type=parse.hours,
        action="append",
        metavar='"DAYS HH:MM-HH:MM"',
        help='working hours, repeatable: "mon-fri 09:00-17:00", '
        '"sat 10:00-12:00,13:00-15:00" (default: mon-fri 09:00-17:00)',
    )
    p.add_argument(
        "--break",
        dest="breaks",
        type=parse.period,
        action="append",
        default=[],
        metavar="HH:MM-HH:MM",
        help="a daily break, repeatable: 13:00-14:00",
    )
    p.add_argument(
        "--min-notice",
        type=parse.minutes,
        default=timedelta(0),
        metavar="MIN",
        help="earliest slot start is now + this many minutes (default 0)",
    )
    p.add_argument(
        "--now",
        type=parse.moment,
        metavar="ISO",
        help="pretend it is this time (default: the current time)",
    )
    p.add_argument("--json", action="store_true", help="print the JSON object of the contract")
    p.set_defaults(handler=run_slots)


def add_check_config(sub: Any) -> None:
    p = sub.add_parser(
        "check-config",
        help="validate a configuration file",
        description="Validate a TOML configuration file and name the file, section, key "
        "and problem for every error. Exit 0 when it is valid, 2 otherwise.",
    )
    p.add_argument("file", metavar="FILE", help="the TOML file, e.g. /etc/pbxcal/pbxcal.toml")
    p.set_defaults(handler=run_check_config)


def _add_calendar_options(
    p: argparse.ArgumentParser, *, timezone_required: bool = False, ics_required: bool = True
) -> None:
    p.add_argument(
        "--ics",
        required=ics_required,
        action="append",
        metavar="FILE",
        help="an iCalendar file; repeat for several calendars",
    )
    p.add_argument(
        "--region",
        metavar="CC",
        help="default region for numbers without country code (default: config or NL)",
    )
    p.add_argument(
        "--timezone",
        type=parse.zone,
        required=timezone_required,
        metavar="TZ",
        help="zone for all-day and floating events when a calendar names none"
        + ("" if timezone_required else " (default: config or Europe/Amsterdam)"),
    )
    p.add_argument(
        "--config",
        metavar="FILE",
        help="read region, time zone and number policy from this TOML file",
    )


def run_plan(ns: argparse.Namespace) -> int:
    from pbxcal.config.checks import show
    from pbxcal.core.targets import TitleParser
    from pbxcal.core.windows import plan_windows

    config = _config(ns)
    policy = _policy(ns, config)
    if bool(ns.ics) == (ns.link is not None):
        raise InputError("give either --ics FILE (one or more) or --link ID")
    link = _stored_link(ns, config) if ns.link is not None else None
    if ns.extension is None:
        if link is None:
            raise InputError("--extension is required with --ics")
        ns.extension = link.extension
    if not policy.is_extension(ns.extension):
        raise InputError(
            f"--extension {show(ns.extension)} is not an extension "
            f"(pattern {policy.extension_pattern!r})"
        )
    known = known_extensions(ns.extensions, config)
    zone = ns.timezone or config.zone
    start, end = parse.resolve(ns.start, zone), parse.resolve(ns.end, zone)
    if end <= start:
        raise InputError("--to must be after --from")
    if link is None:
        instances = read_instances(ns.ics, start, end, zone, config.limits)
    else:
        instances = stored_instances(ns, config, link.id, start, end, zone)
    plan = plan_windows(instances, start, end, policy, parser=TitleParser(policy, known))
    if known is None:
        print(
            "pbxcal: note: no known extensions (--extensions or [pbx.X] extensions): "
            "every title that matches the extension pattern counts as an extension",
            file=sys.stderr,
        )
    result = {
        "extension": ns.extension,
        "windows": [
            {"start": _iso(w.start), "end": _iso(w.end), "targets": list(w.targets)}
            for w in plan.windows
        ],
        "rejected": [
            {"uid": r.uid, "start": _iso(r.start), "title": r.title, "reason": r.reason.value}
            for r in plan.rejected
        ],
    }
    if ns.json:
        print(json.dumps(result, ensure_ascii=False))
        return 0
    print(f"Extension {ns.extension}: {len(plan.windows)} forwarding windows")
    for w in plan.windows:
        print(f"  {_iso(w.start)} .. {_iso(w.end)}  {' & '.join(w.targets)}")
    for r in plan.rejected:
        print(
            f"  rejected {_iso(r.start)} {_title(r.title)}: {r.reason.value} "
            f"({printable(r.detail)})"
        )
    return 0


def _title(title: str) -> str:
    return repr(printable(title))


def known_extensions(spec: str | None, config: Config) -> frozenset[str] | None:
    """``--extensions`` ("100,200-299"), else every ``[pbx.X] extensions``, else None."""
    import re

    from pbxcal.config.checks import expand_extensions

    if spec is None:
        listed = frozenset().union(*(p.extensions for p in config.pbxes.values()))
        return listed or None
    regex = re.compile(config.policy.extension_pattern)
    found, problems = expand_extensions([v.strip() for v in spec.split(",")], regex)
    if problems:
        raise InputError(f"--extensions {problems[0]}")
    return found


def run_slots(ns: argparse.Namespace) -> int:
    from pbxcal.core.slots import AvailabilityRules, busy_intervals, free_slots

    config = _config(ns)
    policy = _policy(ns, config)
    zone: ZoneInfo = ns.timezone
    if ns.last_day < ns.first_day:
        raise InputError("--to must not be before --from")
    if (ns.last_day - ns.first_day).days > 366:
        raise InputError("--from .. --to may span at most 366 days")
    hours: dict[int, list[LocalPeriod]] = {}
    for spec in ns.hours or [parse.hours("mon-fri 09:00-17:00")]:
        for weekday, periods in spec.items():
            hours.setdefault(weekday, []).extend(periods)
    now = parse.resolve(ns.now, zone) if ns.now else datetime.now(UTC)
    rules = AvailabilityRules(
        timezone=zone,
        duration=ns.duration,
        hours=hours,
        breaks=ns.breaks,
        step=ns.step,
        buffer_before=ns.buffer_before,
        buffer_after=ns.buffer_after,
        min_notice=ns.min_notice,
    )
    margin = timedelta(days=1) + ns.buffer_before + ns.buffer_after
    start = parse.resolve(ns.first_day, zone) - margin
    end = parse.resolve(ns.last_day + timedelta(days=1), zone) + margin
    busy = busy_intervals(read_instances(ns.ics, start, end, zone, config.limits), policy)
    slots = free_slots(busy, rules, ns.first_day, ns.last_day, now)
    if ns.json:
        result = {
            "timezone": zone.key,
            "slots": [{"start": _iso(s.start), "end": _iso(s.end)} for s in slots],
        }
        print(json.dumps(result))
        return 0
    print(f"{len(slots)} free slots ({zone.key}):")
    for s in slots:
        local = s.start.astimezone(zone)
        print(f"  {local:%a %Y-%m-%d %H:%M} .. {s.end.astimezone(zone):%H:%M}  ({_iso(s.start)})")
    return 0


def run_check_config(ns: argparse.Namespace) -> int:
    from pbxcal.config import load_config
    from pbxcal.config.audit import audit
    from pbxcal.errors import ConfigError

    config = load_config(ns.file)
    errors, warnings = audit(config)
    for warning in (*config.warnings, *warnings):
        print(f"pbxcal: warning: {warning}", file=sys.stderr)
    if errors:
        raise ConfigError(errors)
    print(
        f"{ns.file}: OK ({len(config.pbxes)} PBX, {len(config.links)} links, "
        f"region {config.region}, time zone {config.timezone}"
        + (f", {len(config.warnings) + len(warnings)} warnings" if warnings or config.warnings
           else "")
        + ")"
    )
    return 0


def read_ics_file(path: str) -> bytes:
    """Read one iCalendar file with a size limit; ``InputError`` names the file."""
    try:
        with Path(path).open("rb") as handle:
            data = handle.read(MAX_ICS_BYTES + 1)
    except OSError as exc:
        raise InputError(f"cannot read {path}: {exc.strerror}") from exc
    if len(data) > MAX_ICS_BYTES:
        raise InputError(f"{path}: larger than {MAX_ICS_BYTES} bytes")
    return data


def _stored_link(ns: argparse.Namespace, config: Config) -> Link:
    from pbxcal.cli.common import opened_store

    with opened_store(ns, config) as (store, where):
        link = store.get_link(ns.link)
    if link is None:
        raise InputError(f"no link {ns.link} in {where} (see: links list)")
    return link


def stored_instances(
    ns: argparse.Namespace,
    config: Config,
    link_id: int,
    start: datetime,
    end: datetime,
    zone: ZoneInfo,
) -> list[EventInstance]:
    """The instances of a link's stored events in ``[start, end)`` (``plan --link``)."""
    from pbxcal.calendars.snapshot import join_calendar
    from pbxcal.cli.common import opened_store
    from pbxcal.core.ical import OverLimit, expand_calendar

    with opened_store(ns, config) as (store, where):
        link = store.get_link(link_id)
        events, state = store.load_events(link_id)
    if link is None or state is None:
        raise InputError(f"link {link_id} in {where} has no stored events yet (see: links show)")
    if link.settings.get("timezone"):
        zone = ZoneInfo(str(link.settings["timezone"]))
    owners = [str(o) for o in link.settings.get("owner_emails") or []]
    calendar = join_calendar(events, state.timezones, state.calendar_tz, source=f"link {link_id}")
    try:
        expansion = expand_calendar(
            calendar, start, end, zone, owner_emails=owners, limits=config.limits
        )
    except OverLimit as exc:
        raise InputError(f"link {link_id}: {printable(str(exc))}") from None
    for skipped in expansion.skipped:
        print(f"pbxcal: warning: link {link_id}: skipped event: {printable(skipped.detail)}",
              file=sys.stderr)  # fmt: skip
    return list(expansion.instances)


def read_instances(
    paths: Sequence[str],
    start: datetime,
    end: datetime,
    zone: ZoneInfo,
    limits: ExpansionLimits | None = None,
) -> list[EventInstance]:
    """Every event instance of the calendar files in ``[start, end)``; warns on skips.

    A calendar over one of ``limits`` is an ``InputError`` (``OverLimit``) naming it.
    """
    from pbxcal.core.ical import ExpansionLimits, OverLimit, expand_calendar, parse_calendar

    limits = limits or ExpansionLimits()
    found: list[EventInstance] = []
    for path in paths:
        calendar = parse_calendar(read_ics_file(path), source=path, limits=limits)
        try:
            expansion = expand_calendar(calendar, start, end, zone, limits=limits)
        except OverLimit as exc:
            raise InputError(f"{path}: {printable(str(exc))}") from None
        for skipped in expansion.skipped:
            if skipped.uid == "*":  # the whole calendar could not be expanded
                raise InputError(f"{path}: {printable(skipped.detail)}")
            print(
                f"pbxcal: warning: {path}: skipped event {_title(skipped.uid)}: "
                f"{printable(skipped.detail)}",
                file=sys.stderr,
            )
        found.extend(expansion.instances)
    return found


def printable(text: str) -> str:
    from pbxcal.core.redact import printable as escape

    return escape(text)


def _config(ns: argparse.Namespace) -> Config:
    from pbxcal.config import Config, load_config

    return load_config(ns.config) if ns.config else Config.default()


def _policy(ns: argparse.Namespace, config: Config) -> NumberPolicy:
    if not ns.region:
        return config.policy
    import phonenumbers

    from pbxcal.core.policy import NumberPolicy

    region = ns.region.upper()

    if region not in phonenumbers.SUPPORTED_REGIONS:
        raise InputError(f"--region {ns.region!r} is not a region code like NL or US")
    base = config.policy
    countries = base.allowed_countries if ns.config else frozenset({region})
    return NumberPolicy(
        region,
        countries,
        base.allowed_types,
        base.allow_emergency,
        base.max_targets,
        base.extension_pattern,
    )


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
