"""redact_url, printable and check_source: what may be shown, what may be stored."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pbxcal.calendars.locations import MAX_SOURCE_LENGTH, check_source
from pbxcal.core.redact import printable, redact_url


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        (
            "https://me:pw@cal.example:8443/a/b.ics?token=s3cret#frag",
            "https://cal.example:8443/a/b.ics?…",
        ),
        ("webcal://cal.example/x.ics", "webcal://cal.example/x.ics"),
        ("https://cal.example/x.ics#only-fragment", "https://cal.example/x.ics"),
        (
            "https://calendar.google.com/calendar/ical/a%40b/private-0123abcdef/basic.ics",
            "https://calendar.google.com/calendar/ical/a%40b/private-…/basic.ics",
        ),
        ("https://[bad/cal.ics?token=s3cret", "https://(unparsable URL)"),
        ("https://host:notaport/x?token=s3cret", "https://(unparsable URL)"),
        ("postgresql+psycopg://pbxcal:pw@db/pbxcal", "postgresql+psycopg://db/pbxcal"),
        ("/srv/calendars/anna.ics", "/srv/calendars/anna.ics"),
        ("https://h/\x1b[2Jx", "https://h/\\x1b[2Jx"),
    ],
)
def test_redact_url(url: str, shown: str) -> None:
    assert redact_url(url) == shown


@given(st.text(max_size=200), st.text(alphabet="abcXYZ019", min_size=6, max_size=20))
def test_a_query_or_user_info_never_shows(prefix: str, secret: str) -> None:
    for url in (
        f"https://cal.example/{prefix}?token={secret}",
        f"https://user:{secret}@cal.example/x",
    ):
        shown = redact_url(url)
        assert f"token={secret}" not in shown and f":{secret}@" not in shown
        assert not any(ord(c) < 0x20 or 0x7F <= ord(c) < 0xA0 for c in shown)


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        ("plain Zürich 🎉", "plain Zürich 🎉"),
        ("\x1b[31mred\x1b[0m", "\\x1b[31mred\\x1b[0m"),
        ("a\r\nAction: Originate", "a\\r\\nAction: Originate"),
        ("\x9b2J", "\\x9b2J"),
        ("abc\u202edef", "abc\\u202edef"),
        ("x\u2028y", "x\\u2028y"),
        ("tab\there", "tab\\there"),
    ],
)
def test_printable(text: str, shown: str) -> None:
    assert printable(text) == shown


@given(st.text())
def test_printable_never_leaves_a_control_character(text: str) -> None:
    shown = printable(text)
    assert not any(ord(c) < 0x20 or 0x7F <= ord(c) < 0xA0 for c in shown)
    assert "\u2028" not in shown and "\u202e" not in shown


@pytest.mark.parametrize(
    "source",
    [
        "/srv/calendars/anna.ics",
        "calendars/anna.ics",
        "file:///srv/anna.ics",
        "https://cal.example/anna.ics?token=x",
        "http://10.0.0.1:8080/a.ics",
        "https://[::1]/a.ics",
        "webcal://cal.example/a.ics",
        "webcals://cal.example/a.ics",
        "https://bücher.example/a.ics",
    ],
)
def test_good_sources(source: str) -> None:
    assert check_source(source) is None


@pytest.mark.parametrize(
    ("source", "why"),
    [
        ("https://[bad/cal.ics", "parsed"),
        ("ftp://cal.example/a.ics", "not supported"),
        ("javascript:alert(1)", "not supported"),
        ("x\r\nAction: Originate", "one line"),
        ("a" * 100_000, f"longer than {MAX_SOURCE_LENGTH}"),
        ("\x1b[2J/etc/a.ics", "control characters"),
        ("/etc/\u202ea.ics", "control characters"),
        ("", "empty"),
        ("https://cal example/a.ics", "white space"),
        ("https:///a.ics", "no host"),
        ("https://host:99999/a.ics", "parsed"),
        ("https://999.1.1.1/a.ics", "IP address"),
        ("https://-bad-.example/a.ics", "host name"),
        ("file://remote/a.ics", "local path"),
    ],
)
def test_bad_sources(source: str, why: str) -> None:
    problem = check_source(source)
    assert problem is not None and why in problem
    assert "Originate" not in problem and "aaaa" not in problem
