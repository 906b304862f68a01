"""Checks of single config values, and what the extension pattern may cost or admit.

Every ``check`` takes a value of the right TOML type and returns ``None`` or a one-line
problem that quotes the value only when it is short and printable (never a secret).
``extension_pattern`` compiles the pattern and times it on growing digit strings
(``slow_pattern``), so a pattern with catastrophic backtracking is refused before a
title can cost seconds; ``pattern_warnings`` says when a pattern admits titles that
skip the number policy. ``expand_extensions`` reads ``[pbx.X] extensions``.

Must not read files or the environment. Start reading at ``extension_pattern``.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterable
from typing import Any
from urllib.parse import urlsplit

import phonenumbers

from pbxcal.calendars.locations import check_source
from pbxcal.core.policy import ANY_COUNTRY, NUMBER_TYPES
from pbxcal.core.redact import printable
from pbxcal.core.vevent import safe_zone
from pbxcal.core.wire import is_wire_extension

#: A pattern that takes longer than this on one probe (after a second try) is refused.
PATTERN_BUDGET = 0.005
#: Digit strings this long are timed, shortest first; the probe stops at the first slow one.
PROBE_LENGTHS = (8, 10, 12, 14, 16, 18, 20, 22, 25, 30, 35, 40)
#: Most extensions ``[pbx.X] extensions`` may expand to.
MAX_EXTENSIONS = 100_000
#: Longest extension that is not a phone number in disguise (the default pattern's 6).
MAX_EXTENSION_DIGITS = 6
_RANGE = re.compile(r"([0-9]{1,15})-([0-9]{1,15})")
_CYCLE = "1234567890" * 5


def show(value: str, limit: int = 60) -> str:
    """``value`` quoted for a message: printable and at most ``limit`` characters."""
    text = printable(value)
    return repr(text if len(text) <= limit else text[:limit] + "…")


def within(low: float, high: float) -> Callable[[Any], str | None]:
    def check(value: Any) -> str | None:
        if not low <= value <= high:
            return f"must be between {low:g} and {high:g}, got {value!r}"
        return None

    return check


def region(value: str) -> str | None:
    if value.upper() not in phonenumbers.SUPPORTED_REGIONS:
        return f"{show(value)} is not a region code like 'NL' or 'US'"
    return None


def zone(value: str) -> str | None:
    if value != value.strip() or safe_zone(value) is None:
        return f"{show(value)} is not an IANA time zone like 'Europe/Amsterdam'"
    return None


def compile_pattern(value: str) -> re.Pattern[str] | str:
    """The compiled pattern, or a one-line reason it is none."""
    try:
        return re.compile(value)
    except (re.error, OverflowError, RecursionError, ValueError, MemoryError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        return f"not a valid regular expression: {printable(reason)[:200]}"


def extension_pattern(value: str) -> str | None:
    compiled = compile_pattern(value)
    if isinstance(compiled, str):
        return compiled
    if (slow := slow_pattern(compiled)) is not None:
        length, took = slow
        return (
            f"too slow: {took * 1000:.0f} ms to match a {length}-digit title (limit "
            f"{PATTERN_BUDGET * 1000:g} ms); avoid nested repetition like (1+)+"
        )
    return None


def slow_pattern(
    regex: re.Pattern[str],
    *,
    budget: float = PATTERN_BUDGET,
    timer: Callable[[], float] = time.perf_counter,
) -> tuple[int, float] | None:
    """``(length, seconds)`` of the first digit string ``regex`` is too slow on, or None.

    Lengths grow (``PROBE_LENGTHS``) and the probe stops at the first string over
    ``budget``, so a catastrophic pattern costs at most a few budgets to detect. A slow
    probe is timed a second time and the faster run counts: one scheduler hiccup does
    not refuse a good pattern.
    """
    for length in PROBE_LENGTHS:
        for probe in _timing_probes(length):
            took = _time_match(regex, probe, timer)
            if took > budget:
                took = min(took, _time_match(regex, probe, timer))
                if took > budget:
                    return length, took
    return None


def _time_match(regex: re.Pattern[str], probe: str, timer: Callable[[], float]) -> float:
    begin = timer()
    regex.fullmatch(probe)
    return timer() - begin


def _timing_probes(n: int) -> tuple[str, ...]:
    return ("1" * n, "1" * (n - 1) + "0", "0" * n, "0" + "1" * (n - 1), _CYCLE[:n], "9" * n)


def pattern_warnings(regex: re.Pattern[str]) -> list[str]:
    """What the pattern admits that switches the number policy off for such titles."""
    warnings = []
    zero = next((p for p in _leading_zero_probes() if regex.fullmatch(p)), None)
    if zero is not None:
        warnings.append(
            f"admits digits with a leading 0 (e.g. {zero!r}): such titles count as "
            "extensions and skip the number policy (a leading 0 is a trunk or "
            "international prefix)"
        )
    long = next((p for p in _long_probes() if regex.fullmatch(p)), None)
    if long is not None:
        warnings.append(
            f"admits more than {MAX_EXTENSION_DIGITS} digits (e.g. {long!r}): such titles "
            "count as extensions and skip the number policy (they look like phone numbers)"
        )
    return warnings


def _leading_zero_probes() -> Iterable[str]:
    yield from ("0", "00", "01", "06", "09", "012", "0123", "0900", "0800", "00112")
    yield from ("0612345678", "0031612345678", "0201234567")
    for n in range(1, 16):
        yield "0" * n
        yield "0" + _CYCLE[: n - 1]
        for d in "123456789":
            yield "0" + d * (n - 1)


def _long_probes() -> Iterable[str]:
    yield from ("1234567", "12345678", "123456789", "31612345678", "612345678", "2025550123")
    for n in range(MAX_EXTENSION_DIGITS + 1, 16):
        yield _CYCLE[:n]
        for d in "123456789":
            yield d * n
            yield d + "0" * (n - 1)


def expand_extensions(
    values: list[str], regex: re.Pattern[str] | None
) -> tuple[frozenset[str], list[str]]:
    """``["100", "200-299"]`` → the extensions, and one problem per bad entry."""
    found: set[str] = set()
    problems: list[str] = []
    for value in values:
        match = _RANGE.fullmatch(value)
        if match is not None:
            first, last = match.groups()
            if int(first) > int(last):
                problems.append(f"{show(value)}: the range ends before it starts")
                continue
            if int(last) - int(first) + len(found) >= MAX_EXTENSIONS:
                problems.append(f"more than {MAX_EXTENSIONS} extensions")
                break
            width = len(first) if len(first) == len(last) else 0
            members = [f"{n:0{width}d}" for n in range(int(first), int(last) + 1)]
        else:
            members = [value]
        bad = [
            m for m in members
            if not is_wire_extension(m) or (regex is not None and regex.fullmatch(m) is None)
        ]
        if bad:
            pattern = f" the extension pattern {regex.pattern!r}" if regex is not None else ""
            problems.append(
                f"{show(value)}: {show(bad[0])} is not an extension (1-15 digits matching"
                f"{pattern or ' the extension pattern'})"
            )
            continue
        found.update(members)
        if len(found) > MAX_EXTENSIONS:
            problems.append(f"more than {MAX_EXTENSIONS} extensions")
            break
    return frozenset(found), problems


def strings(value: list[Any]) -> str | None:
    if not all(isinstance(v, str) for v in value):
        return "must be a list of strings"
    return None


def countries(value: list[Any]) -> str | None:
    if (message := strings(value)) is not None:
        return message
    bad = [v for v in value if v != ANY_COUNTRY and v.upper() not in phonenumbers.SUPPORTED_REGIONS]
    return f"unknown region codes: {', '.join(show(v, 10) for v in bad)}" if bad else None


def number_types(value: list[Any]) -> str | None:
    if (message := strings(value)) is not None:
        return message
    bad = [v for v in value if v not in NUMBER_TYPES]
    if bad:
        shown = ", ".join(printable(v)[:30] for v in bad)
        return f"unknown number types: {shown} (known: {', '.join(NUMBER_TYPES)})"
    return None


def store_url(value: str) -> str | None:
    if not value.startswith(("sqlite:", "postgresql:", "postgresql+psycopg:")):
        return "must be a sqlite:/// or postgresql:// URL"
    if not value.isprintable():
        return "must not contain control characters"
    return None


def listen(value: str) -> str | None:
    host, _, port = value.rpartition(":")
    if not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        return f"must be HOST:PORT like '127.0.0.1:9640', got {show(value)}"
    return None


def host(value: str) -> str | None:
    if not value or len(value) > 253 or any(c.isspace() or not c.isprintable() for c in value):
        return f"{show(value)} is not a host name or address"
    return None


def username(value: str) -> str | None:
    if not re.fullmatch(r"[A-Za-z0-9_.-]{1,64}", value):
        return "may only hold letters, digits, '_', '.', '-'"
    return None


def path(value: str) -> str | None:
    if not value or len(value) > 4096 or not value.isprintable():
        return "must be a file path without control characters"
    return None


def credential(value: str) -> str | None:
    if not re.fullmatch(r"[A-Za-z0-9_.-]{1,255}", value) or value in (".", ".."):
        return "must be a credential name (letters, digits, '_', '.', '-')"
    return None


def source(value: str) -> str | None:
    return check_source(value)


def printable_key(key: str) -> str:
    """A TOML key or table name as it may appear in a message."""
    text = printable(key)
    return text if len(text) <= 64 else text[:64] + "…"


def is_extension(value: str, regex: re.Pattern[str] | None) -> bool:
    """ASCII digits that fit the wire and fully match the extension pattern."""
    return is_wire_extension(value) and (regex is None or regex.fullmatch(value) is not None)


def public_url(value: str) -> str | None:
    """``[http] public_url``: an absolute http(s) URL without user info, query or fragment."""
    try:
        parts = urlsplit(value)
    except ValueError:
        return f"{show(value)} is not a URL"
    if parts.scheme not in ("https", "http") or not parts.hostname:
        return f"{show(value)} must be an https URL like 'https://pbx.example/pbxcal'"
    if parts.username or parts.password or parts.query or parts.fragment:
        return "must not carry a user name, password, query or fragment"
    return None


def networks(value: list[Any]) -> str | None:
    """``[portal] allow_networks``: CIDRs such as "10.20.0.0/16" or "127.0.0.0/8"."""
    import ipaddress

    for item in value:
        if not isinstance(item, str):
            return "must be a list of CIDR strings like '10.20.0.0/16'"
        try:
            ipaddress.ip_network(item, strict=False)
        except ValueError:
            return f"{show(item)} is not a network like '10.20.0.0/16'"
    return None


#: Languages the customer pages are translated into.
PORTAL_LANGUAGES = ("en", "nl")


def languages(value: list[Any]) -> str | None:
    if not value:
        return "must name at least one language"
    for item in value:
        if item not in PORTAL_LANGUAGES:
            return f"{show(str(item))} is not one of {', '.join(PORTAL_LANGUAGES)}"
    return None


def token(value: str) -> str | None:
    """An id such as an app registration's client id or a tenant name."""
    if not re.fullmatch(r"[A-Za-z0-9_.-]{1,128}", value):
        return "may only hold letters, digits, '_', '.', '-'"
    return None


def email(value: str) -> str | None:
    local, at, domain = value.rpartition("@")
    if not at or not local or "." not in domain or len(value) > 254 or not value.isprintable() \
            or any(c.isspace() for c in value):
        return f"{show(value)} is not an e-mail address"
    return None
