"""Agent settings: the issue's defaults, round trip through JSON, one-line refusals."""

from __future__ import annotations

from datetime import time

import pytest

from pbxcal.booking.model import AgentSettings, BookingRefused
from pbxcal.booking.settings import (
    parse_settings,
    settings_json,
    stored_json,
    stored_settings,
    with_mailbox_hours,
)


def test_defaults_are_the_issues() -> None:
    s = AgentSettings()
    assert s.durations == (30,) and s.buffer_before == s.buffer_after == 0
    assert s.breaks == ((time(13), time(14)),)
    assert s.hours == {d: ((time(9), time(17)),) for d in range(5)}
    assert s.horizon_days == 31 and s.reminder_minutes == 15 and s.step_minutes is None


def test_round_trip() -> None:
    raw = {
        "timezone": "America/New_York", "durations": [60, 15, 30], "buffer_before": 15,
        "buffer_after": 30,
        "hours": {"mon": ["08:00-12:00", "12:30-18:00"], "sat": ["10:00-24:00"]},
        "breaks": [], "horizon_days": 90, "min_notice_minutes": 0, "step_minutes": 15,
        "buffers_in_event": True, "reminder_minutes": None,
    }  # fmt: skip
    parsed = parse_settings(raw)
    assert parsed.durations == (15, 30, 60)
    assert parsed.hours[5] == ((time(10), None),) and 1 not in parsed.hours
    again = settings_json(parsed)
    assert again["hours"]["mon"] == ["08:00-12:00", "12:30-18:00"]
    assert again["hours"]["sat"] == ["10:00-24:00"] and again["hours"]["tue"] == []
    assert stored_settings({**again, "hours_set": True, "timezone_set": True}) == parsed


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"durations": [10]}, "durations must be whole minutes from 15 to 360"),
        ({"durations": []}, "durations must be a list"),
        ({"buffer_before": 20}, "buffer_before must be 0, 15 or 30 minutes"),
        ({"buffer_after": True}, "buffer_after must be 0, 15 or 30 minutes"),
        ({"timezone": "Mars/Base"}, "timezone 'Mars/Base' is not an IANA zone"),
        ({"hours": {"monday": ["09:00-17:00"]}}, "'monday' is not a weekday"),
        ({"hours": {"mon": ["17:00-09:00"]}}, "ends before it starts"),
        ({"hours": {"mon": ["09:00-12:00", "11:00-13:00"]}}, "periods overlap"),
        ({"breaks": ["13:00"]}, "'13:00' is not HH:MM-HH:MM"),
        ({"horizon_days": 0}, "horizon_days must be a whole number from 1 to 366"),
        ({"colour": "red"}, "unknown setting 'colour'"),
        ({"buffers_in_event": "yes"}, "buffers_in_event must be true or false"),
    ],
)
def test_refusals_are_one_line(raw: dict[str, object], message: str) -> None:
    with pytest.raises(BookingRefused) as caught:
        parse_settings(raw)
    assert message in str(caught.value) and "\n" not in str(caught.value)


OUTLOOK = {"time_zone": "America/Chicago", "days": ["monday", "friday", "holiday"],
           "start": "08:30", "end": "16:00"}  # fmt: skip


def test_whether_the_admin_chose_hours_and_zone_survives_the_store() -> None:
    default = parse_settings({"durations": [30]})
    assert not default.hours_set and not default.timezone_set
    chosen = parse_settings({"timezone": "Europe/London", "hours": {"mon": ["09:00-12:00"]}})
    assert chosen.hours_set and chosen.timezone_set
    for settings in (default, chosen):
        assert stored_settings(stored_json(settings)) == settings
        again = stored_settings(stored_json(settings))
        assert (again.hours_set, again.timezone_set) == (settings.hours_set, settings.timezone_set)
    # a row stored before the flag existed: its zone counts as not chosen
    assert not stored_settings(settings_json(chosen)).timezone_set


def test_outlook_hours_and_zone_fill_in_only_what_the_admin_did_not_set() -> None:
    filled = with_mailbox_hours(AgentSettings(), OUTLOOK, "Europe/Berlin")
    assert filled.timezone == "America/Chicago"  # the working hours' zone first
    assert filled.hours == {0: ((time(8, 30), time(16)),), 4: ((time(8, 30), time(16)),)}
    assert filled.breaks == AgentSettings().breaks
    own = parse_settings({"timezone": "Europe/London", "hours": {"tue": ["10:00-11:00"]}})
    assert with_mailbox_hours(own, OUTLOOK, "Europe/Berlin") == own
    zone_only = parse_settings({"timezone": "Europe/London"})
    assert with_mailbox_hours(zone_only, OUTLOOK, None).timezone == "Europe/London"
    assert with_mailbox_hours(zone_only, OUTLOOK, None).hours[4] == ((time(8, 30), time(16)),)
    no_zone = {**OUTLOOK, "time_zone": None}
    assert with_mailbox_hours(AgentSettings(), no_zone, "Europe/Berlin").timezone == "Europe/Berlin"


@pytest.mark.parametrize(
    "hours",
    [{**OUTLOOK, "start": "16:00", "end": "08:30"}, {**OUTLOOK, "days": []},
     {**OUTLOOK, "start": None}, {**OUTLOOK, "days": "monday"}, {"time_zone": "Mars/Base"}],
)  # fmt: skip
def test_unusable_outlook_hours_leave_the_defaults(hours: dict[str, object]) -> None:
    settings = with_mailbox_hours(AgentSettings(), hours, None)
    assert settings.hours == AgentSettings().hours
    assert settings.timezone in (AgentSettings().timezone, "America/Chicago")


def test_a_day_that_ends_at_midnight_in_outlook() -> None:
    late = with_mailbox_hours(AgentSettings(), {**OUTLOOK, "end": "00:00"}, None)
    assert late.hours[0] == ((time(8, 30), None),)
