"""The number policy: which parsed targets may be forwarded to (toll-fraud protection).

Pure data plus one decision function. The policy is on by default: only numbers of the
configured countries and of "ordinary" types may be targets; premium rate, shared cost,
emergency numbers (also when they look like an extension, e.g. 112) and everything else
are refused. ``NumberPolicy.default(region)`` is what a fresh install gets.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import phonenumbers
from phonenumbers import PhoneNumberType, shortnumberinfo

#: Config names of phonenumbers' number types, in the order the docs list them.
NUMBER_TYPES: dict[str, int] = {
    "fixed_line": PhoneNumberType.FIXED_LINE,
    "mobile": PhoneNumberType.MOBILE,
    "fixed_line_or_mobile": PhoneNumberType.FIXED_LINE_OR_MOBILE,
    "voip": PhoneNumberType.VOIP,
    "toll_free": PhoneNumberType.TOLL_FREE,
    "premium_rate": PhoneNumberType.PREMIUM_RATE,
    "shared_cost": PhoneNumberType.SHARED_COST,
    "personal_number": PhoneNumberType.PERSONAL_NUMBER,
    "pager": PhoneNumberType.PAGER,
    "uan": PhoneNumberType.UAN,
    "voicemail": PhoneNumberType.VOICEMAIL,
    "unknown": PhoneNumberType.UNKNOWN,
}

DEFAULT_ALLOWED_TYPES: frozenset[str] = frozenset(
    {"fixed_line", "mobile", "fixed_line_or_mobile", "voip", "toll_free"}
)
DEFAULT_EXTENSION_PATTERN = r"[1-9][0-9]{1,5}"
DEFAULT_MAX_TARGETS = 5
#: ``allowed_countries`` containing this allows every country (not recommended).
ANY_COUNTRY = "*"


@dataclass(frozen=True)
class NumberPolicy:
    """What a calendar title may turn into.

    ``region`` is the default region for numbers written without a country code (ISO
    3166 alpha-2, e.g. "NL"). ``extension_pattern`` is a full-match regular expression
    for internal extensions.
    """

    region: str
    allowed_countries: frozenset[str]
    allowed_types: frozenset[str] = DEFAULT_ALLOWED_TYPES
    allow_emergency: bool = False
    max_targets: int = DEFAULT_MAX_TARGETS
    extension_pattern: str = DEFAULT_EXTENSION_PATTERN
    _extension_re: re.Pattern[str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_extension_re", re.compile(self.extension_pattern))

    @classmethod
    def default(cls, region: str = "NL") -> NumberPolicy:
        """The policy a fresh install gets: only the region's own ordinary numbers."""
        return cls(region=region.upper(), allowed_countries=frozenset({region.upper()}))

    def is_extension(self, digits: str) -> bool:
        """True when ``digits`` is an internal extension by the configured pattern."""
        return self._extension_re.fullmatch(digits) is not None

    def is_emergency(self, digits: str) -> bool:
        """True when ``digits`` is an emergency short number in any region we dial in."""
        regions = {self.region} | (self.allowed_countries - {ANY_COUNTRY})
        return any(shortnumberinfo.is_emergency_number(digits, r) for r in regions)

    def allows_country(self, region_code: str | None) -> bool:
        if ANY_COUNTRY in self.allowed_countries:
            return True
        return region_code is not None and region_code in self.allowed_countries

    def allows_type(self, number: phonenumbers.PhoneNumber) -> bool:
        kind = phonenumbers.number_type(number)
        return any(NUMBER_TYPES[name] == kind for name in self.allowed_types)
