"""Text that is safe to show: URLs without their secrets, stored text without control codes.

``redact_url(url)`` keeps a URL's scheme, host, port and path and drops what private
calendar addresses carry their secret in: the user info (``user:password@``), the query
(``?token=…``, shown as ``?…``) and the fragment; the secret segment of a Google
"secret address" (``/private-<hex>/``) is shown as ``private-…``. A string that is no
URL (a file path) is returned as it is. ``printable(text)`` escapes control characters,
terminal escape sequences (their ESC/CSI byte), line and paragraph separators and bidi
overrides, so a stored value printed by the CLI cannot move the cursor, recolour the
terminal or forge another line. ``redact_url``'s result is already ``printable``.

Pure: must not do I/O or import anything of pbxcal. Start reading at ``redact_url``.
"""

from __future__ import annotations

import re
import unicodedata
from urllib.parse import urlsplit

__all__ = ["printable", "redact_url"]

#: ``scheme://`` at the start of a string: it is meant as a URL, not a file path.
_URL = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://")
#: The secret path segment of a Google Calendar "secret address in iCal format".
_PRIVATE_SEGMENT = re.compile(r"(?<=/)private-[0-9A-Za-z]+(?=/|$)")
#: Bidi embeddings, overrides and isolates (the "Trojan source" characters) and marks.
_BIDI = frozenset("\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")
_SHORT_ESCAPES = {"\t": "\\t", "\n": "\\n", "\r": "\\r"}


def redact_url(url: str) -> str:
    """``url`` without user info, query and fragment, ready to print.

    ``https://me:pw@cal.example:8443/a/b.ics?token=s3cret#x`` becomes
    ``https://cal.example:8443/a/b.ics?…``. A URL that does not parse is shown as its
    scheme only (``https://(unparsable URL)``); a file path is returned escaped.
    """
    scheme_match = _URL.match(url)
    if scheme_match is None:
        return printable(url)
    scheme = scheme_match.group(0)[:-3]
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError for a port that is not a number
    except ValueError:
        return printable(f"{scheme}://(unparsable URL)")
    host = parts.netloc.rpartition("@")[2]
    path = _PRIVATE_SEGMENT.sub("private-…", parts.path)
    query = "?…" if parts.query else ""
    return printable(f"{parts.scheme}://{host}{path}{query}")


def printable(text: str) -> str:
    """``text`` with every character that could act on a terminal escaped.

    Control characters become ``\\t``, ``\\n``, ``\\r`` or ``\\xNN`` (ESC is ``\\x1b``,
    so an escape sequence is shown, not run), separators and bidi controls ``\\uNNNN``.
    Ordinary text, including non-ASCII letters and emoji, is unchanged.
    """
    if text.isprintable():
        return text
    return "".join(_escape(c) for c in text)


def _escape(char: str) -> str:
    if char in _SHORT_ESCAPES:
        return _SHORT_ESCAPES[char]
    if char in _BIDI or unicodedata.category(char) in ("Cc", "Zl", "Zp", "Cs"):
        code = ord(char)
        return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"
    return char
