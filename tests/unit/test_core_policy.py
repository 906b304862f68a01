"""NumberPolicy: toll-fraud rules applied through parse_title."""

from __future__ import annotations

import phonenumbers
import pytest
from phonenumbers import PhoneNumberType

from pbxcal.core.policy import NumberPolicy
from pbxcal.core.targets import Reason, Rejection, Target, parse_title

NL = NumberPolicy.default("NL")


def _blocked(title: str, policy: NumberPolicy) -> bool:
    result = parse_title(title, policy)
    return isinstance(result, Rejection) and result.reason is Reason.BLOCKED_BY_POLICY


def _e164(region: str, kind: int) -> str:
    number = phonenumbers.example_number_for_type(region, kind)
    assert number is not None
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)


def test_default_policy() -> None:
    assert NL.region == "NL"
    assert NL.allowed_countries == frozenset({"NL"})
    assert not NL.allow_emergency
    assert NumberPolicy.default("us").region == "US"


@pytest.mark.parametrize(
    "title",
    ["0900 1234567", "09001234567", "0906 1234567", "0909-1234567", "+31 900 1234567"],
)
def test_premium_rate_blocked(title: str) -> None:
    assert _blocked(title, NL)


@pytest.mark.parametrize("title", ["084 1234567", "0841234567", "087 1234567", "0871234567"])
def test_shared_cost_and_personal_ranges_blocked(title: str) -> None:
    assert _blocked(title, NL)


def test_premium_allowed_only_when_type_is_configured() -> None:
    policy = NumberPolicy(
        region="NL",
        allowed_countries=frozenset({"NL"}),
        allowed_types=frozenset({"mobile", "premium_rate"}),
    )
    assert parse_title("0900 1234567", policy) == Target("+319001234567", False)
    # ... and then a fixed line number is no longer allowed
    assert _blocked("020 1234567", policy)


@pytest.mark.parametrize("title", ["112", "911", "+112", " 112 "])
def test_emergency_blocked_also_as_extension(title: str) -> None:
    assert NL.is_extension("112") and NL.is_extension("911")
    assert _blocked(title, NL)


def test_emergency_blocked_with_custom_extension_pattern() -> None:
    policy = NumberPolicy(
        region="NL", allowed_countries=frozenset({"NL"}), extension_pattern=r"[0-9]{3}"
    )
    assert _blocked("112", policy)
    assert parse_title("113", policy) == Target("113", True)


def test_emergency_of_every_allowed_country_is_blocked() -> None:
    # 101 is the Belgian police; 999 the British emergency number.
    nl_be = NumberPolicy(region="NL", allowed_countries=frozenset({"NL", "BE"}))
    assert _blocked("101", nl_be)
    assert parse_title("101", NL) == Target("101", True)
    gb = NumberPolicy.default("GB")
    assert _blocked("999", gb)
    assert parse_title("999", NL) == Target("999", True)
    us = NumberPolicy.default("US")
    assert _blocked("911", us) and _blocked("112", us)


def test_allow_emergency() -> None:
    policy = NumberPolicy(region="NL", allowed_countries=frozenset({"NL"}), allow_emergency=True)
    assert parse_title("112", policy) == Target("112", True)
    assert parse_title("911", policy) == Target("911", True)


@pytest.mark.parametrize(
    ("title", "country"),
    [
        ("+32 470 12 34 56", "BE"),
        ("0032470123456", "BE"),
        ("+49 1512 3456789", "DE"),
        ("+1 212 555 0100", "US"),
        ("+44 20 7946 0000", "GB"),
    ],
)
def test_foreign_numbers_blocked_unless_country_allowed(title: str, country: str) -> None:
    assert _blocked(title, NL)
    allowed = NumberPolicy(region="NL", allowed_countries=frozenset({"NL", country}))
    result = parse_title(title, allowed)
    assert isinstance(result, Target), result
    assert not result.is_extension
    number = phonenumbers.parse(result.value)
    assert phonenumbers.region_code_for_number(number) == country
    # and the same number is accepted with the wildcard
    anywhere = NumberPolicy(region="NL", allowed_countries=frozenset({"*"}))
    assert parse_title(title, anywhere) == result


def test_wildcard_country_still_applies_number_types() -> None:
    anywhere = NumberPolicy(region="NL", allowed_countries=frozenset({"*"}))
    for region in ("DE", "GB", "US"):
        premium = _e164(region, PhoneNumberType.PREMIUM_RATE)
        assert _blocked(premium, anywhere), premium
        mobile = _e164(region, PhoneNumberType.MOBILE)
        assert parse_title(mobile, anywhere) == Target(mobile, False)


def test_wildcard_does_not_add_emergency_regions() -> None:
    anywhere = NumberPolicy(region="NL", allowed_countries=frozenset({"*"}))
    assert anywhere.is_emergency("112")
    assert anywhere.allows_country("JP") and anywhere.allows_country(None)
    assert not NL.allows_country(None)


def test_us_policy() -> None:
    us = NumberPolicy.default("US")
    assert parse_title("(212) 555-0100", us) == Target("+12125550100", False)
    assert _blocked("1-900-555-1234", us)
    assert _blocked("(900) 555-0123", us)
    assert _blocked("+31 6 1234 5678", us)
