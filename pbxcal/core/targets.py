"""Title → target: a calendar title that is only a phone number or an extension.

``parse_title(title, policy)`` returns a ``Target`` (an E.164 number or an extension's
digits) or a ``Rejection`` with one of the reason codes of the ``pbxcal plan`` contract.
It never raises for any string, so a hostile title can only ever become a rejection.

Accepted: digits with spaces, ``-``, ``.``, ``/`` and parentheses, optionally a leading
``+`` or ``00`` (any international prefix of the region). Everything else — words,
control characters, newlines, extra text — is ``not-a-number``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum

import phonenumbers

from pbxcal.core.policy import NumberPolicy

#: Only these characters may appear in a title that is a target.
_TITLE_RE = re.compile(r"\+?[0-9 ()\-./]*[0-9][0-9 ()\-./]*")
_SEPARATORS = re.compile(r"[ ()\-./]")
#: Longest title we even look at; E.164 has at most 15 digits.
_MAX_TITLE_LENGTH = 40


class Reason(StrEnum):
    """Why an event is not a forwarding (the ``reason`` codes of ``pbxcal plan``)."""

    NOT_A_NUMBER = "not-a-number"
    INVALID_NUMBER = "invalid-number"
    BLOCKED_BY_POLICY = "blocked-by-policy"
    TOO_MANY_TARGETS = "too-many-targets"


@dataclass(frozen=True)
class Target:
    """A forwarding target: ``value`` is E.164 ("+31612345678") or extension digits."""

    value: str
    is_extension: bool


@dataclass(frozen=True)
class Rejection:
    """A title that is not a usable target, with the reason and a human detail."""

    reason: Reason
    detail: str


def parse_title(title: str, policy: NumberPolicy) -> Target | Rejection:
    """Turn one calendar title into a target, or say why it is none."""
    text = title.strip(" ")
    if not text or len(text) > _MAX_TITLE_LENGTH or _TITLE_RE.fullmatch(text) is None:
        return Rejection(Reason.NOT_A_NUMBER, "title is not only a phone number")
    digits = _SEPARATORS.sub("", text)
    if not digits.startswith("+") and text == digits and policy.is_extension(digits):
        if policy.is_emergency(digits) and not policy.allow_emergency:
            return Rejection(Reason.BLOCKED_BY_POLICY, f"{digits} is an emergency number")
        return Target(digits, is_extension=True)
    return _parse_number(text, digits, policy)


def _parse_number(text: str, digits: str, policy: NumberPolicy) -> Target | Rejection:
    if policy.is_emergency(digits.lstrip("+")) and not policy.allow_emergency:
        return Rejection(Reason.BLOCKED_BY_POLICY, f"{digits} is an emergency number")
    try:
        number = phonenumbers.parse(digits, policy.region)
    except phonenumbers.NumberParseException as exc:
        return Rejection(Reason.INVALID_NUMBER, f"cannot parse {text!r}: {exc}")
    if not phonenumbers.is_valid_number(number):
        return Rejection(Reason.INVALID_NUMBER, f"{text!r} is not a valid phone number")
    region = phonenumbers.region_code_for_number(number)
    e164 = phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)
    if not policy.allows_country(region):
        return Rejection(Reason.BLOCKED_BY_POLICY, f"{e164}: country {region} not allowed")
    if not policy.allows_type(number):
        return Rejection(Reason.BLOCKED_BY_POLICY, f"{e164}: number type not allowed")
    return Target(e164, is_extension=False)
