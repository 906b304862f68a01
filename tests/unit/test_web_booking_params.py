"""The booking link's query, read without ever failing: dates narrow the days, bad values
become one message each and their defaults, the guest's zone from the language's region,
slots grouped by the guest's local day."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime
from zoneinfo import ZoneInfo

import pytest

from pbxcal.web.booking.params import (
    by_day,
    format_moment,
    guess_zone,
    parse_date,
    parse_moment,
    read_query,
    zone_choices,
    zone_names,
)

NOW = datetime(2026, 11, 23, 9, 0, tzinfo=UTC)  # a Monday


def test_no_parameters_give_today_to_the_horizon_in_the_default_zone() -> None:
    got = read_query(
        {}, now=NOW, horizon_days=31, durations=(30, 60), default_zone="Europe/Amsterdam"
    )
    assert got.zone_name == "Europe/Amsterdam"
    assert (got.first_day, got.last_day) == (date(2026, 11, 23), date(2026, 12, 24))
    assert got.duration == 30 and got.problems == () and got.at is None
    assert got.page_day == got.first_day and got.page_last_day == date(2026, 11, 29)
    assert got.window() == (
        datetime(2026, 11, 22, 23, 0, tzinfo=UTC),
        datetime(2026, 11, 29, 23, 0, tzinfo=UTC),
    )


def test_start_end_and_subject_narrow_the_dates_and_preset_the_subject() -> None:
    got = read_query(
        {"start": "01.12.2026", "end": "3.12.2026", "subject": "Offerte keuken"},
        now=NOW, horizon_days=31, durations=(30,), default_zone="Europe/Amsterdam",
    )  # fmt: skip
    assert (got.first_day, got.last_day) == (date(2026, 12, 1), date(2026, 12, 3))
    assert got.subject == "Offerte keuken" and got.problems == ()
    assert (got.start_text, got.end_text) == ("01.12.2026", "3.12.2026")
    assert got.later_day() is None and got.earlier_day() is None


def test_a_start_in_the_past_is_clipped_to_today() -> None:
    got = read_query(
        {"start": "01.11.2026", "end": "25.11.2026"},
        now=NOW, horizon_days=31, durations=(30,), default_zone="UTC",
    )  # fmt: skip
    assert (got.first_day, got.last_day) == (date(2026, 11, 23), date(2026, 11, 25))
    assert got.problems == ()


@pytest.mark.parametrize(
    ("query", "message", "value"),
    [
        ({"start": "2026-12-01"}, "The start date '%(value)s' is not a date like 31.12.2026.",
         "2026-12-01"),
        ({"end": "31.02.2026"}, "The end date '%(value)s' is not a date like 31.12.2026.",
         "31.02.2026"),
        ({"start": "05.12.2026", "end": "01.12.2026"}, "The end date is before the start date.",
         "01.12.2026"),
        ({"end": "01.11.2026"}, "The dates in this link (until %(value)s) have passed.",
         "01.11.2026"),
        ({"start": "01.06.2027"},
         "Meetings can be booked until %(value)s; the dates in this link are later.",
         "24.12.2026"),
        ({"tz": "Mars/Olympus"}, "'%(value)s' is not a time zone this page knows.",
         "Mars/Olympus"),
        ({"duration": "45"}, "%(value)s minutes is not a meeting length offered here.", "45"),
        ({"subject": "x" * 201},
         "The subject in this link was too long or not plain text; please type it below.", ""),
        ({"subject": "a\x00b"},
         "The subject in this link was too long or not plain text; please type it below.", ""),
        ({"at": "tomorrow"}, "The chosen time could not be read; please pick a time.", ""),
    ],
)  # fmt: skip
def test_a_bad_value_is_one_message_and_the_default_is_used(
    query: dict[str, str], message: str, value: str
) -> None:
    got = read_query(
        query, now=NOW, horizon_days=31, durations=(30,), default_zone="Europe/Amsterdam"
    )
    assert [(p.message, p.value) for p in got.problems] == [(message, value)]
    assert (got.first_day, got.last_day) == (date(2026, 11, 23), date(2026, 12, 24))
    assert got.zone_name == "Europe/Amsterdam" and got.duration == 30
    assert got.subject == "" and got.at is None


def test_an_offered_duration_and_a_zone_are_taken() -> None:
    got = read_query(
        {"duration": "60", "tz": "America/New_York"},
        now=NOW, horizon_days=31, durations=(30, 60), default_zone="Europe/Amsterdam",
    )  # fmt: skip
    assert got.duration == 60 and got.zone_name == "America/New_York"
    # the guest's "today" is their own: 04:00 in New York is still 23 November
    assert got.first_day == date(2026, 11, 23)


def test_from_pages_through_the_range_and_stays_inside_it() -> None:
    query = {"start": "23.11.2026", "end": "10.12.2026"}
    first = read_query(query, now=NOW, horizon_days=31, durations=(30,), default_zone="UTC")
    assert first.later_day() == date(2026, 11, 30)
    second = read_query(
        {**query, "from": "30.11.2026"}, now=NOW, horizon_days=31, durations=(30,),
        default_zone="UTC",
    )  # fmt: skip
    assert (second.page_day, second.page_last_day) == (date(2026, 11, 30), date(2026, 12, 6))
    assert second.earlier_day() == date(2026, 11, 23)
    outside = read_query(
        {**query, "from": "20.12.2026"}, now=NOW, horizon_days=31, durations=(30,),
        default_zone="UTC",
    )  # fmt: skip
    assert outside.page_day == date(2026, 11, 23)


def test_dates_and_moments_round_trip() -> None:
    assert parse_date("1.2.2027") == date(2027, 2, 1)
    assert parse_date("29.02.2027") is None and parse_date("01.12.26") is None
    moment = datetime(2026, 11, 24, 9, 30, tzinfo=UTC)
    assert parse_moment(format_moment(moment)) == moment
    assert parse_moment("2026-11-24T09:30") is None  # no zone: not ours
    assert parse_moment("2026-11-24T09:30+01:00") is None


@pytest.mark.parametrize(
    ("header", "agent_zone", "expected"),
    [
        ("nl-NL,nl;q=0.9", "UTC", "Europe/Amsterdam"),
        ("en-GB", "Europe/Amsterdam", "Europe/London"),
        ("en-US,en;q=0.8", "Europe/Amsterdam", "Europe/Amsterdam"),  # several zones
        ("en-US", "America/Chicago", "America/Chicago"),  # the agent's is one of them
        ("nl", "Europe/Brussels", "Europe/Brussels"),  # no region
        (None, "Europe/Brussels", "Europe/Brussels"),
        ("zz-QQ", "UTC", "UTC"),
    ],
)
def test_the_guest_zone_comes_from_the_language_region(
    header: str | None, agent_zone: str, expected: str
) -> None:
    assert guess_zone(header, agent_zone) == expected


def test_the_zone_list_is_area_city_names() -> None:
    names = zone_names()
    assert "Europe/Amsterdam" in names and "America/Argentina/Buenos_Aires" in names
    assert "US/Eastern" not in names and "Etc/GMT+1" not in names and names[0] == "UTC"
    assert "America/Buenos_Aires" not in names  # an old spelling (a CLDR alias)
    # ... that still works when a link or an agent names it, and is then offered
    got = read_query({"tz": "America/Buenos_Aires"}, now=NOW, horizon_days=31,
                     durations=(30,), default_zone="UTC")  # fmt: skip
    assert got.zone_name == "America/Buenos_Aires" and got.problems == ()
    assert "America/Buenos_Aires" in zone_choices("America/Buenos_Aires")


@dataclass(frozen=True)
class Slot:
    start: datetime


def test_slots_are_grouped_by_the_guests_local_day() -> None:
    # 23:30 UTC on Monday is Tuesday 00:30 in Amsterdam and Monday 18:30 in New York
    late = Slot(datetime(2026, 11, 23, 23, 30, tzinfo=UTC))
    early = Slot(datetime(2026, 11, 23, 10, 0, tzinfo=UTC))
    amsterdam = by_day([early, late], ZoneInfo("Europe/Amsterdam"))
    assert [(day, len(slots)) for day, slots in amsterdam] == [
        (date(2026, 11, 23), 1),
        (date(2026, 11, 24), 1),
    ]
    new_york = by_day([early, late], ZoneInfo("America/New_York"))
    assert [(day, len(slots)) for day, slots in new_york] == [(date(2026, 11, 23), 2)]
    assert by_day([], ZoneInfo("UTC")) == []
