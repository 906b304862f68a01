"""Where a calendar can be read from: the one check of a link's ``source`` string.

``check_source(value)`` returns ``None`` for a usable source, else a one-line reason
that never quotes the value (it may be a private URL or hostile text). It is the rule
for the config's ``[[link]] source`` and for ``pbxcal links add --source`` alike, so a
source the store holds is one the daemon's adapters (``pbxcal.calendars.ics``) can use
without an exception: one line, at most ``MAX_SOURCE_LENGTH`` characters, no control
characters, and either a file path, a ``file://`` URL, or an ``http``/``https``/
``webcal``/``webcals`` URL that parses (host, port) — ``https://[bad/cal.ics`` does
not, because ``urlsplit`` raises on it.

Pure and light: standard library only (the CLI imports it at start), no I/O — whether
a file exists is the sync's business, it may appear later. Start at ``check_source``.
"""

from __future__ import annotations

import ipaddress
import re
import unicodedata
from urllib.parse import urlsplit

__all__ = ["MAX_SOURCE_LENGTH", "URL_SCHEMES", "check_source"]

MAX_SOURCE_LENGTH = 2048
#: Schemes of sources read over HTTP (webcal is http(s) by another name).
URL_SCHEMES = frozenset({"http", "https", "webcal", "webcals"})
_SCHEME = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*):")
_ASCII_HOST = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9_-]{0,62}[A-Za-z0-9])?")


def check_source(value: str) -> str | None:
    """``None`` when ``value`` is a usable calendar source, else what is wrong with it."""
    if not value.strip():
        return "must not be empty (a file path or http(s)/webcal URL)"
    if len(value) > MAX_SOURCE_LENGTH:
        return f"is longer than {MAX_SOURCE_LENGTH} characters"
    if "\n" in value or "\r" in value:
        return "must be one line"
    if any(_is_control(c) for c in value):
        return "must not contain control characters"
    if value != value.strip():
        return "must not start or end with white space"
    scheme_match = _SCHEME.match(value)
    if scheme_match is None:
        return None  # a file path
    scheme = scheme_match.group(1).lower()
    if scheme == "file":
        return _check_file_url(value)
    if scheme not in URL_SCHEMES:
        return (
            f"scheme {scheme[:20]!r} is not supported "
            "(only file paths and file://, http(s)/webcal(s) URLs)"
        )
    return _check_http_url(value)


def _check_http_url(value: str) -> str | None:
    if not value.lower().startswith(tuple(f"{s}://" for s in URL_SCHEMES)):
        return "must be a URL like https://host/path"
    if any(c.isspace() for c in value):
        return "must not contain white space (write %20)"
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018 - raises ValueError for a port that is not a number
    except ValueError:
        return "is not a URL that can be parsed"
    host = parts.hostname
    if not host:
        return "has no host name"
    if ":" in host or host.replace(".", "").isdigit():
        try:
            ipaddress.ip_address(host)
        except ValueError:
            return "has an invalid IP address as host"
        return None
    return _check_host_name(host)


def _check_host_name(host: str) -> str | None:
    labels = host.rstrip(".").split(".")
    if len(host) > 253 or not all(labels):
        return "has an invalid host name"
    for label in labels:
        if label.isascii():
            if _ASCII_HOST.fullmatch(label) is None:
                return "has an invalid host name"
            continue
        try:
            label.encode("idna")
        except UnicodeError:
            return "has an invalid host name"
    return None


def _check_file_url(value: str) -> str | None:
    try:
        parts = urlsplit(value)
    except ValueError:
        return "is not a URL that can be parsed"
    if not value.lower().startswith("file://"):
        return "must be a URL like file:///path/to/calendar.ics"
    if parts.netloc not in ("", "localhost"):
        return "file:// URLs must name a local path (file:///path)"
    if not parts.path or parts.query or parts.fragment:
        return "must be a URL like file:///path/to/calendar.ics"
    return None


def _is_control(char: str) -> bool:
    return not char.isprintable() and (
        unicodedata.category(char) in ("Cc", "Cf", "Zl", "Zp", "Cs", "Co", "Cn")
    )
