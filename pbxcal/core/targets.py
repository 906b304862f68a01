"""Title → target: a calendar title that is only a phone number or an extension.

``parse_title(title, policy, known_extensions)`` returns a ``Target`` (an E.164 number
or an extension's digits) or a ``Rejection`` with one of the reason codes of the
``pbxcal plan`` contract and a detail in plain words a customer understands. It never
raises for any string, so a hostile title can only ever become a rejection.
``TitleParser`` is the same function memoised per policy and PBX, for planning many
instances whose titles repeat. Must not do I/O. Start reading at ``parse_title``.

Accepted: digits with spaces, ``-``, ``.``, ``/`` and parentheses, optionally a leading
``+`` or ``00`` (any international prefix of the region). Everything else — words,
control characters, newlines, non-ASCII digits, extra text — is ``not-a-number``.

A title of plain digits that matches the policy's ``extension_pattern`` looks like an
extension, but that alone does not make it one (toll fraud: "118218" is a French
premium-rate code, "1120" reaches 112):

* digits that connect to an emergency service in a dialled region (the policy's region
  and allowed countries) are ``blocked-by-policy`` unless ``allow_emergency``, always;
* with ``known_extensions`` (the extensions that exist on that PBX) a pattern match
  that is not one of them is ``unknown-extension``;
* with ``known_extensions=None`` (no directory, e.g. offline ``pbxcal plan``) a pattern
  match that is a valid short number in a dialled region (directory enquiries, premium
  services, helplines) is ``blocked-by-policy``.

Every other title is read as a phone number and must pass the policy's country and
number-type rules. A ``Target`` checks itself against the wire rule (``core.wire``)
when it is built, so one that exists is safe to put on the AMI wire.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Collection
from dataclasses import dataclass
from enum import StrEnum

import phonenumbers
from phonenumbers import ShortNumberCost

from pbxcal.core.policy import NumberPolicy
from pbxcal.core.wire import is_wire_extension, is_wire_number
from pbxcal.errors import UnsafeValue

#: Only these characters may appear in a title that is a target.
_TITLE_RE = re.compile(r"\+?[0-9 ()\-./]*[0-9][0-9 ()\-./]*")
_SEPARATORS = re.compile(r"[ ()\-./]")
#: Longest title we even look at; E.164 has at most 15 digits.
_MAX_TITLE_LENGTH = 40
#: Titles longer than this are not kept in a ``TitleParser``'s cache (they are
#: rejected at once anyway, and would only hold memory).
_MAX_CACHED_TITLE = 256
#: Bound of a ``TitleParser``'s cache (entries); the oldest entries go first.
DEFAULT_CACHE_SIZE = 8192


class Reason(StrEnum):
    """Why an event is not a forwarding (the ``reason`` codes of ``pbxcal plan``)."""

    NOT_A_NUMBER = "not-a-number"
    INVALID_NUMBER = "invalid-number"
    BLOCKED_BY_POLICY = "blocked-by-policy"
    TOO_MANY_TARGETS = "too-many-targets"
    UNKNOWN_EXTENSION = "unknown-extension"


@dataclass(frozen=True)
class Target:
    """A forwarding target: ``value`` is E.164 ("+31612345678") or extension digits.

    Building one with a value that fails the wire rule for its kind raises
    ``UnsafeValue``: a ``Target`` that exists may be written to a PBX as it is.
    """

    value: str
    is_extension: bool

    def __post_init__(self) -> None:
        if self.is_extension:
            if not is_wire_extension(self.value):
                raise UnsafeValue(f"extension target {_show(self.value)} is not 1-15 digits")
        elif not is_wire_number(self.value):
            raise UnsafeValue(f"number target {_show(self.value)} is not an E.164 number")


@dataclass(frozen=True)
class Rejection:
    """A title that is not a usable target, with the reason and a plain-words detail."""

    reason: Reason
    detail: str


def parse_title(
    title: str,
    policy: NumberPolicy,
    known_extensions: Collection[str] | None = None,
) -> Target | Rejection:
    """Turn one calendar title into a target, or say why it is none.

    ``known_extensions`` are the extensions that exist on the PBX; ``None`` means no
    directory is available (see the module docstring for what changes).
    """
    text = title.strip(" ")
    if not text or len(text) > _MAX_TITLE_LENGTH or _TITLE_RE.fullmatch(text) is None:
        return Rejection(Reason.NOT_A_NUMBER, "title is not only a phone number")
    digits = _SEPARATORS.sub("", text)
    if not digits.startswith("+") and text == digits and policy.is_extension(digits):
        return _parse_extension(digits, policy, known_extensions)
    return _parse_number(text, digits, policy)


class TitleParser:
    """``parse_title`` for one policy and one PBX's extensions, memoised.

    The cache is a bounded dict (oldest entries evicted first), so a calendar full of
    distinct titles costs at most ``max_entries`` results of memory. One parser may be
    shared by threads (the daemon plans in worker threads): results are immutable and
    a race only costs a parse twice (writes take a lock, so the bound holds).
    """

    def __init__(
        self,
        policy: NumberPolicy,
        known_extensions: Collection[str] | None = None,
        *,
        max_entries: int = DEFAULT_CACHE_SIZE,
    ) -> None:
        if max_entries < 1:
            raise ValueError("max_entries must be at least 1")
        self.policy = policy
        self.known_extensions: frozenset[str] | None = (
            None if known_extensions is None else frozenset(known_extensions)
        )
        self.max_entries = max_entries
        self._cache: dict[str, Target | Rejection] = {}
        self._writing = threading.Lock()

    def parse(self, title: str) -> Target | Rejection:
        """``parse_title(title, self.policy, self.known_extensions)``, remembered."""
        cached = self._cache.get(title)
        if cached is not None:
            return cached
        result = parse_title(title, self.policy, self.known_extensions)
        if len(title) <= _MAX_CACHED_TITLE:
            with self._writing:  # readers need no lock; two writers must not both evict
                while len(self._cache) >= self.max_entries:
                    del self._cache[next(iter(self._cache))]
                self._cache[title] = result
        return result

    @property
    def cached(self) -> int:
        """How many titles are remembered.

        Deliberately not ``__len__``: that made a parser with an empty cache falsy, and
        ``parser or TitleParser(policy)`` silently dropped its known extensions.
        """
        return len(self._cache)


def _parse_extension(
    digits: str, policy: NumberPolicy, known_extensions: Collection[str] | None
) -> Target | Rejection:
    emergency = policy.connects_to_emergency(digits)
    if emergency and not policy.allow_emergency:
        return Rejection(Reason.BLOCKED_BY_POLICY, f"{digits} connects to emergency services")
    if known_extensions is not None:
        if digits not in known_extensions:
            return Rejection(
                Reason.UNKNOWN_EXTENSION, f"{digits} is not an extension on this phone system"
            )
        return Target(digits, is_extension=True)
    short = None if emergency else policy.short_number(digits)  # allowed emergency stays
    if short is not None:
        region, cost = short
        return Rejection(
            Reason.BLOCKED_BY_POLICY,
            f"{digits} is {_SHORT_NUMBER_KIND.get(cost, _SERVICE)} short number in {region}"
            " and is blocked",
        )
    return Target(digits, is_extension=True)


_SERVICE = "a directory-enquiry/premium"
_SHORT_NUMBER_KIND = {
    ShortNumberCost.PREMIUM_RATE: "a premium-rate",
    ShortNumberCost.TOLL_FREE: "a free service (helpline)",
}


def _parse_number(text: str, digits: str, policy: NumberPolicy) -> Target | Rejection:
    if not policy.allow_emergency and (
        policy.is_emergency(digits.lstrip("+"))
        # dialled as written (no international or trunk prefix): "1120" reaches 112
        or (not digits.startswith(("+", "0")) and policy.connects_to_emergency(digits))
    ):
        return Rejection(Reason.BLOCKED_BY_POLICY, f"{digits} connects to emergency services")
    try:
        number = phonenumbers.parse(digits, policy.region)
    except phonenumbers.NumberParseException:
        return Rejection(Reason.INVALID_NUMBER, f"{text!r} is not a valid phone number")
    if not phonenumbers.is_valid_number(number):
        return Rejection(Reason.INVALID_NUMBER, f"{text!r} is not a valid phone number")
    region = phonenumbers.region_code_for_number(number)
    e164 = phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)
    if not policy.allows_country(region):
        return Rejection(Reason.BLOCKED_BY_POLICY, f"{e164}: country {region} not allowed")
    if not policy.allows_type(number):
        return Rejection(Reason.BLOCKED_BY_POLICY, f"{e164}: number type not allowed")
    if not is_wire_number(e164):  # phonenumbers' output, checked rather than trusted
        return Rejection(Reason.INVALID_NUMBER, f"{text!r} is not a valid phone number")
    return Target(e164, is_extension=False)


def _show(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."
