"""The store's one rule for times: aware values in, aware UTC values out.

What it does: refuses naive datetimes before they reach a table, and converts between
aware UTC datetimes and epoch seconds for compact encodings. What it must not do: guess
a zone for a naive value. Start reading at ``require_utc``.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def require_utc(value: datetime, what: str) -> None:
    """``ValueError`` unless ``value`` is tz-aware (any zone; the store keeps UTC)."""
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"{what} {value.isoformat()} is naive; pbxcal stores UTC times only")


def to_epoch(value: datetime, what: str) -> int | str:
    """Whole seconds since 1970 as an int; ``"seconds.micros"`` text when not whole.

    Exact both ways for every aware datetime (a float would round far-future values),
    and hashable either way, so a decoder can memoise on it.
    """
    require_utc(value, what)
    delta = value - EPOCH
    seconds = delta.days * 86_400 + delta.seconds
    return seconds if delta.microseconds == 0 else f"{seconds}.{delta.microseconds:06d}"


def from_epoch(value: int | str) -> datetime:
    """The aware UTC datetime encoded by ``to_epoch``."""
    if type(value) is int:
        try:
            return datetime.fromtimestamp(value, UTC)  # the fast path, about 0.1 µs
        except (OverflowError, OSError, ValueError):  # pragma: no cover - platform limits
            return EPOCH + timedelta(seconds=value)
    seconds, _, micros = str(value).partition(".")
    return EPOCH + timedelta(seconds=int(seconds), microseconds=int(micros))
