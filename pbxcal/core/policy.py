"""The number policy: which parsed targets may be forwarded to (toll-fraud protection).

Pure data plus one decision function. The policy is on by default: only numbers of the
configured countries and of "ordinary" types may be targets; premium rate, shared cost,
emergency numbers (also when they look like an extension, e.g. 112) and everything else
are refused. ``NumberPolicy.default(region)`` is what a fresh install gets.

The "dialled regions" are the policy's region plus its allowed countries (not the ``*``
wildcard): an emergency or short service number of any of them is treated as one.
Must not do I/O. Start reading at ``NumberPolicy``; ``targets.parse_title`` applies it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import phonenumbers
from phonenumbers import PhoneNumberType, shortnumberinfo

from pbxcal.core.wire import is_wire_extension

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
        """True when ``digits`` has the shape of an internal extension.

        It must be ASCII digits that fit the wire (``core.wire``) and fully match the
        configured pattern, whatever the pattern says (``\\d`` would match "١٢٣").
        Shape only: whether the extension exists is for ``targets.parse_title``.
        """
        return is_wire_extension(digits) and self._extension_re.fullmatch(digits) is not None

    @property
    def dialled_regions(self) -> frozenset[str]:
        """The policy's region and its allowed countries (without the ``*`` wildcard)."""
        return frozenset({self.region} | (self.allowed_countries - {ANY_COUNTRY}))

    def is_emergency(self, digits: str) -> bool:
        """True when ``digits`` is exactly an emergency short number in a dialled region."""
        return any(shortnumberinfo.is_emergency_number(digits, r) for r in self.dialled_regions)

    def connects_to_emergency(self, digits: str) -> bool:
        """True when dialling ``digits`` reaches an emergency service in a dialled region.

        Wider than ``is_emergency``: in most regions a longer string that starts with
        an emergency number connects too ("1120" reaches 112, "9110" reaches 911).
        """
        return any(
            shortnumberinfo.connects_to_emergency_number(digits, r) for r in self.dialled_regions
        )

    def short_number(self, digits: str) -> tuple[str, int] | None:
        """``(region, ShortNumberCost)`` when ``digits`` is a valid short number there.

        Short numbers are service codes (directory enquiries, premium services,
        helplines) that a PBX's outbound route would dial; ``None`` when ``digits`` is
        one in no dialled region.
        """
        for region in sorted(self.dialled_regions):
            try:
                number = phonenumbers.parse(digits, region)
            except phonenumbers.NumberParseException:
                continue
            if shortnumberinfo.is_valid_short_number_for_region(number, region):
                return region, shortnumberinfo.expected_cost_for_region(number, region)
        return None

    def allows_country(self, region_code: str | None) -> bool:
        if ANY_COUNTRY in self.allowed_countries:
            return True
        return region_code is not None and region_code in self.allowed_countries

    def allows_type(self, number: phonenumbers.PhoneNumber) -> bool:
        kind = phonenumbers.number_type(number)
        return any(NUMBER_TYPES[name] == kind for name in self.allowed_types)
