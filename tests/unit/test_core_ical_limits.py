"""Bounded, fault-contained expansion (issue #7 items 3, 5, 6; issue #8 item 3).

* one bad event is skipped with its reason in plain words; the others still count;
* a document that is not iCalendar is a one-line ``InputError`` that never echoes it;
* limits: events per document (``count_events`` before parsing), occurrences per event
  (skipped), occurrences per calendar (``OverLimit``); ``checkpoint`` lets a caller abort;
* single events are read without recurring-ical-events.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from pbxcal.core import recurrence
from pbxcal.core.ical import (
    EventInstance,
    Expansion,
    ExpansionLimits,
    OverLimit,
    count_events,
    expand_calendar,
    parse_calendar,
)
from pbxcal.errors import InputError

HOSTILE = Path(__file__).resolve().parents[1] / "data" / "hostile"
AMS = ZoneInfo("Europe/Amsterdam")
START = datetime(2026, 3, 30, tzinfo=UTC)
END = START + timedelta(days=14)
GOOD = EventInstance(
    "good@test",
    datetime(2026, 3, 30, 9, tzinfo=UTC),
    datetime(2026, 3, 30, 10, tzinfo=UTC),
    "0612345678",
)


def _expand(data: bytes | str, **kwargs: object) -> Expansion:
    return expand_calendar(parse_calendar(data), START, END, AMS, **kwargs)  # type: ignore[arg-type]


def _event(uid: str, body: str) -> str:
    return f"BEGIN:VEVENT\r\nUID:{uid}\r\nDTSTAMP:20260301T000000Z\r\n{body}END:VEVENT\r\n"


def _calendar(*events: str, header: str = "") -> str:
    return (
        "BEGIN:VCALENDAR\r\nVERSION:2.0\r\nPRODID:-//pbxcal//tests//EN\r\n"
        + header
        + "".join(events)
        + "END:VCALENDAR\r\n"
    )


def _single(n: int, title: str = "333") -> str:
    start = START + timedelta(hours=n)
    return _event(
        f"s{n}",
        f"DTSTART:{start:%Y%m%dT%H%M%SZ}\r\nDTEND:{start + timedelta(minutes=30):%Y%m%dT%H%M%SZ}"
        f"\r\nSUMMARY:{title}\r\n",
    )


# -- issue #7 item 5: every fuzz finding ends as a skipped event, the rest still count ----


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("interval_zero.ics", "the repeat rule (RRULE) has an INTERVAL below 1"),
        ("year_1_to_9999.ics", "event starts in the year 1 (only 1900-8999)"),
        ("duration_huge.ics", "event lasts too long (beyond the year 8999)"),
        ("secondly_forever.ics", "repeats too often"),
        ("never_matches_again.ics", "its repeat rule matches too rarely to expand"),
        ("tzid_directory.ics", "the event's time zone 'Europe' does not exist"),
        (
            "zone_name_256.ics",
            "the event's time zone 'AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA... does",
        ),
    ],
)
def test_a_bad_event_is_skipped_with_its_reason_and_the_others_count(
    name: str, reason: str
) -> None:
    result = _expand((HOSTILE / name).read_bytes())
    assert result.instances == [GOOD]
    assert [s.uid for s in result.skipped] == ["bad@test"]
    assert result.skipped[0].detail.startswith(reason), result.skipped[0].detail


def test_a_calendar_zone_that_is_no_zone_falls_back_to_the_default() -> None:
    # "Europe" is a directory of the zone database: as an X-WR-TIMEZONE it is ignored
    # (the default zone applies), as any unknown X-WR-TIMEZONE always was.
    result = _expand((HOSTILE / "x_wr_timezone_directory.ics").read_bytes())
    assert result.instances == [GOOD]
    assert result.skipped == []


def test_unknown_tzid_skips_only_its_event() -> None:
    text = _calendar(
        _single(1),
        _event("mars", "DTSTART;TZID=Mars/Base:20260330T110000\r\nSUMMARY:333\r\n"),
        _event("vtz", "DTSTART;TZID=Custom:20260330T110000\r\nSUMMARY:333\r\n"),
        header="BEGIN:VTIMEZONE\r\nTZID:Custom\r\nBEGIN:STANDARD\r\n"
        "DTSTART:19700101T000000\r\nTZOFFSETFROM:+0200\r\nTZOFFSETTO:+0200\r\n"
        "END:STANDARD\r\nEND:VTIMEZONE\r\n",
    )
    result = _expand(text)
    assert [(i.uid, i.start.hour) for i in result.instances] == [("s1", 1), ("vtz", 9)]
    assert [(s.uid, s.detail) for s in result.skipped] == [
        ("mars", "the event's time zone 'Mars/Base' does not exist")
    ]


def test_a_broken_vtimezone_document_is_one_input_error() -> None:
    with pytest.raises(InputError) as caught:
        parse_calendar((HOSTILE / "broken_vtimezone.ics").read_bytes(), source="cal.ics")
    assert str(caught.value).startswith("cal.ics: not valid iCalendar data")
    assert "\n" not in str(caught.value)


def test_the_expansion_limits_are_the_plan_defaults() -> None:
    limits = ExpansionLimits()
    assert (limits.max_events, limits.max_instances_per_event) == (20_000, 5_000)
    assert limits.max_instances_per_link == 50_000


# -- issue #7 item 6: an unparsable document is never echoed ------------------------------


def test_parse_error_never_echoes_the_document() -> None:
    secret = (HOSTILE / "not_a_calendar.secret").read_bytes()
    with pytest.raises(InputError) as caught:
        parse_calendar(secret, source="/etc/pbxcal/ami.secret")
    message = str(caught.value)
    assert "s3cr3t" not in message and "password" not in message
    assert message == (
        "/etc/pbxcal/ami.secret: not valid iCalendar data "
        "(line 1: it does not start with BEGIN:VCALENDAR)"
    )
    assert caught.value.__cause__ is None and caught.value.__suppress_context__


@pytest.mark.parametrize(
    ("data", "where"),
    [
        ("BEGIN:VCALENDAR\r\nVERSION:2.0\r\nhunter2 is the secret\r\nEND:VCALENDAR\r\n", "line 3"),
        (b"BEGIN:VCALENDAR\r\nSUMMARY;X=\xff\xfe:secret\r\n", "not valid iCalendar data"),
        ("BEGIN:VCALENDAR\r\nBEGIN:VEVENT\r\nSUMMARY:secret\r\n", "not valid iCalendar data"),
        ("", "empty"),
    ],
)
def test_parse_error_says_where_not_what(data: str | bytes, where: str) -> None:
    with pytest.raises(InputError) as caught:
        parse_calendar(data)
    assert where in str(caught.value)
    assert "secret" not in str(caught.value) and "hunter2" not in str(caught.value)


# -- issue #7 item 3: bounded work ----------------------------------------------------------


def test_count_events_counts_without_parsing_also_folded_and_lowercase() -> None:
    assert count_events(_calendar(_single(1), _single(2))) == 2
    assert count_events(b"begin:vevent\r\nBEGIN:VEV\r\n ENT\r\nBEGIN:VEVENTX\r\n") == 2
    assert count_events(b"not a calendar") == 0
    assert count_events("BEGIN:VEVENT\nSUMMARY:BEGIN:VEVENT\n") == 1


def test_too_many_events_are_refused_before_parsing() -> None:
    data = _calendar(*(_single(n) for n in range(11)))
    with pytest.raises(OverLimit) as caught:
        parse_calendar(data, source="big.ics", limits=ExpansionLimits(max_events=10))
    assert str(caught.value) == (
        "big.ics: 11 events, more than the limit of 10 (max_events); the calendar is not read"
    )
    assert isinstance(caught.value, InputError)
    # and expand_calendar refuses the parsed document too
    with pytest.raises(OverLimit):
        _expand(data, limits=ExpansionLimits(max_events=10))


def test_an_event_over_its_cap_is_skipped_and_the_rest_counts() -> None:
    hourly = _event(
        "hourly",
        "DTSTART:20260330T000000Z\r\nDTEND:20260330T003000Z\r\nRRULE:FREQ=HOURLY\r\n"
        "SUMMARY:201\r\n",
    )
    result = _expand(
        _calendar(hourly, _single(3)), limits=ExpansionLimits(max_instances_per_event=100)
    )
    assert [i.uid for i in result.instances] == ["s3"]
    assert [(s.uid, s.detail) for s in result.skipped] == [
        (
            "hourly",
            "has more than 100 occurrences in the planning range (limit max_instances_per_event)",
        )
    ]


def test_a_calendar_over_its_cap_raises_over_limit_in_plain_words() -> None:
    data = _calendar(*(_single(n) for n in range(30)))
    with pytest.raises(OverLimit) as caught:
        _expand(data, limits=ExpansionLimits(max_instances_per_link=20))
    assert str(caught.value) == (
        "the calendar has more than 20 appointments in the planning range "
        "(limit max_instances_per_link)"
    )
    assert len(_expand(data, limits=ExpansionLimits(max_instances_per_link=30)).instances) == 30


def test_secondly_forever_never_generates_an_occurrence(monkeypatch: pytest.MonkeyPatch) -> None:
    made: list[object] = []
    real = recurrence._series

    def counting(*args: object) -> object:
        made.append(args)
        return real(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(recurrence, "_series", counting)
    result = _expand((HOSTILE / "secondly_forever.ics").read_bytes())
    assert made == []
    assert result.instances == [GOOD]


def test_checkpoint_is_called_every_thousand_and_can_abort() -> None:
    class Stop(Exception):
        pass

    calls = 0

    def checkpoint() -> None:
        nonlocal calls
        calls += 1

    many = _calendar(*(_single(n % 300) for n in range(2500)))
    _expand(many, checkpoint=checkpoint)
    assert calls >= 2

    def abort() -> None:
        raise Stop

    with pytest.raises(Stop):
        _expand(many, checkpoint=abort)
    daily = _event(
        "d",
        "DTSTART:20260101T090000Z\r\nDTEND:20260101T093000Z\r\nRRULE:FREQ=MINUTELY\r\n"
        "SUMMARY:201\r\n",
    )
    with pytest.raises(Stop):  # also inside one event's occurrences
        expand_calendar(
            parse_calendar(_calendar(daily)),
            START,
            START + timedelta(hours=30),
            AMS,
            checkpoint=abort,
        )


# -- issue #8 item 3: single events without recurring-ical-events ------------------------


def test_single_events_do_not_go_through_the_expander(monkeypatch: pytest.MonkeyPatch) -> None:
    groups: list[list[object]] = []
    real = recurrence._series

    def spying(components: list[object], zone: str | None) -> object:
        groups.append(components)
        return real(components, zone)

    monkeypatch.setattr(recurrence, "_series", spying)
    weekly = _event(
        "w",
        "DTSTART:20260330T120000Z\r\nDTEND:20260330T130000Z\r\nRRULE:FREQ=WEEKLY;COUNT=3\r\n"
        "SUMMARY:201\r\n",
    )
    result = _expand(_calendar(_single(1), _single(2), weekly))
    assert [str(c.get("UID")) for group in groups for c in group] == ["w"]  # type: ignore[attr-defined]
    assert [i.uid for i in result.instances] == ["s1", "s2", "w", "w"]


def test_events_outside_the_range_do_not_count_against_the_calendar_cap() -> None:
    later = [_single(24 * 30 + n) for n in range(30)]  # a month after the range
    data = _calendar(_single(1), *later)
    result = _expand(data, limits=ExpansionLimits(max_instances_per_link=5))
    assert [i.uid for i in result.instances] == ["s1"]


def test_rarely_matching_rules_share_one_budget_per_calendar(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Each of these rules is legal but costly (the next 29 February is far away); no
    # single one exceeds its own allowance, together they exceed the calendar's.
    from pbxcal.core import ical

    leap = [
        _event(
            f"leap{n}",
            "DTSTART:20260301T090000Z\r\nDTEND:20260301T093000Z\r\n"
            "RRULE:FREQ=DAILY;BYMONTH=2;BYMONTHDAY=29\r\nSUMMARY:201\r\n",
        )
        for n in range(4)
    ]
    assert _expand(_calendar(*leap)).skipped == []
    budget = recurrence.StepBudget(10_000_000, 10_000_000)
    components = list(parse_calendar(_calendar(leap[0])).subcomponents)
    list(recurrence.occurrences(components, START, END, None, budget, 1))
    assert budget.overrun > 10_000  # it looked far beyond the range
    monkeypatch.setattr(ical, "_STEPS_PER_LINK", budget.overrun * 3)
    with pytest.raises(OverLimit) as caught:
        _expand(_calendar(*leap))
    assert "repeat rules match too rarely" in str(caught.value)


def test_a_rule_that_never_matches_again_costs_a_bounded_allowance() -> None:
    budget = recurrence.StepBudget(50_000, 10_000_000)
    never = _event(
        "never",
        "DTSTART:20260301T090000Z\r\nRRULE:FREQ=DAILY;BYMONTH=2;BYMONTHDAY=30\r\n",
    )
    components = list(parse_calendar(_calendar(never)).subcomponents)
    with pytest.raises(recurrence.RuleTooCostly):
        list(recurrence.occurrences(components, START, END, None, budget, 10))
    assert 50_000 <= budget.overrun <= 50_002


def test_count_events_in_pieces_counts_the_same_across_every_cut(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Counting runs in pieces (so the GIL is released between them); a folded
    ``BEGIN:VEV`` / `` ENT`` line is never cut in two, whatever the piece size."""
    from pbxcal.core import ical as module

    doc = b"BEGIN:VCALENDAR\r\n" + b"".join(
        b"BEGIN:VEVENT\r\nSUMMARY:x\r\n y\r\nEND:VEVENT\r\nBEGIN:VEV\r\n ENT\r\nEND:VEVENT\r\n"
        for _ in range(30)
    ) + b"END:VCALENDAR\r\n"
    whole = module.count_events(doc)
    assert whole == 60
    for size in (1, 7, 13, 64, 1000):
        monkeypatch.setattr(module, "_COUNT_CHUNK", size)
        assert module.count_events(doc) == whole
