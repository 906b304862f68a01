"""Agent settings: the issue's defaults, round trip through JSON, one-line refusals."""

from __future__ import annotations

from datetime import time

import pytest

from pbxcal.booking.model import AgentSettings, BookingRefused
from pbxcal.booking.settings import parse_settings, settings_json, stored_settings


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
    assert stored_settings({**again, "hours_set": True}) == parsed


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
