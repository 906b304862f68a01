"""parse_title: a calendar title becomes a target (E.164 / extension digits) or a rejection."""

from __future__ import annotations

import re

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from pbxcal.core.policy import NumberPolicy
from pbxcal.core.targets import Reason, Rejection, Target, parse_title

NL = NumberPolicy.default("NL")
US = NumberPolicy.default("US")
SAFE_TARGET = re.compile(r"\+?[0-9]+")


@pytest.mark.parametrize(
    ("title", "value", "is_extension"),
    [
        ("0612345678", "+31612345678", False),
        ("06-12345678", "+31612345678", False),
        ("+31 6 1234 5678", "+31612345678", False),
        ("0031612345678", "+31612345678", False),
        ("(06) 1234 5678", "+31612345678", False),
        ("06.1234.5678", "+31612345678", False),
        ("06/12345678", "+31612345678", False),
        ("  0612345678  ", "+31612345678", False),
        ("+31 20 123 4567", "+31201234567", False),
        ("020-1234567", "+31201234567", False),
        ("0800 1234567", "+318001234567", False),  # toll free is allowed by default
        ("333", "333", True),
        ("20", "20", True),
        ("123456", "123456", True),
    ],
)
def test_accepted_titles_nl(title: str, value: str, is_extension: bool) -> None:
    assert parse_title(title, NL) == Target(value, is_extension)


@pytest.mark.parametrize(
    ("title", "value"),
    [
        ("(212) 555-0100", "+12125550100"),
        ("212-555-0100", "+12125550100"),
        ("+1 212 555 0100", "+12125550100"),
        ("(201) 555-0123", "+12015550123"),
        ("(800) 555-0100", "+18005550100"),
    ],
)
def test_accepted_titles_us(title: str, value: str) -> None:
    assert parse_title(title, US) == Target(value, False)


def test_region_decides_how_a_national_number_is_read() -> None:
    # The same digits are a US number in region US and not a valid number in NL.
    assert parse_title("(212) 555-0100", US) == Target("+12125550100", False)
    nl = parse_title("(212) 555-0100", NL)
    assert isinstance(nl, Rejection)


@pytest.mark.parametrize(
    "title",
    [
        "",
        " ",
        "Lunch",
        "0612345678 mobile",
        "Call 333",
        "tel:0612345678",
        "0612345678\n",
        "\n0612345678",
        "06\n12345678",
        "06\r\n12345678",
        "06\t12345678",
        "\t333",
        "06\x0012345678",
        "333\x00",
        "06\x1b[2J12345678",
        "06\x7f12345678",
        "0612345678\u200b",  # zero-width space
        "06\u00a012345678",  # no-break space
        "1" * 41,
        "9" * 200,
        "+" + "1" * 60,
        "٠٦١٢٣٤٥٦٧٨",  # Arabic-Indic digits
        "٣٣٣",
        "０６１２３４５６７８",  # fullwidth digits
        "３３３",
        "۰۶۱۲۳۴۵۶۷۸",  # extended Arabic-Indic
        "०६१२३४५६७८",  # Devanagari
        "+",
        "++31612345678",
        "+1+1+1",
        "06*12345678",
        "06#12345678",
        "333,1",
        "333;1",
        "333&444",
        "0612345678 & 333",
        "Local/333@from-internal",
    ],
)
def test_not_a_number(title: str) -> None:
    result = parse_title(title, NL)
    assert isinstance(result, Rejection)
    assert result.reason is Reason.NOT_A_NUMBER


@pytest.mark.parametrize(
    "title",
    [
        "1" * 40,
        "061234567890123",
        "2222222222222222",
        "(((((1)))))",
        "0031 112",
        "+999999999999999",
    ],
)
def test_invalid_numbers(title: str) -> None:
    result = parse_title(title, NL)
    assert isinstance(result, Rejection)
    assert result.reason is Reason.INVALID_NUMBER


def test_extension_needs_plain_digits() -> None:
    # With separators it is read as a phone number, not an extension.
    assert parse_title("333", NL) == Target("333", True)
    assert parse_title("3 3 3", NL) == Rejection(
        Reason.INVALID_NUMBER, "'3 3 3' is not a valid phone number"
    )


def test_custom_extension_pattern() -> None:
    policy = NumberPolicy(
        region="NL", allowed_countries=frozenset({"NL"}), extension_pattern=r"2[0-9]{2}"
    )
    assert parse_title("201", policy) == Target("201", True)
    assert isinstance(parse_title("333", policy), Rejection)


def test_unicode_digit_pattern_cannot_smuggle_non_ascii() -> None:
    # \d in the configured pattern matches Arabic-Indic digits; the title filter must not.
    policy = NumberPolicy(
        region="NL", allowed_countries=frozenset({"NL"}), extension_pattern=r"\d{2,6}"
    )
    result = parse_title("٣٣٣", policy)
    assert isinstance(result, Rejection)
    assert result.reason is Reason.NOT_A_NUMBER


# -- property: any text is a rejection or a safe target, never an exception -------------

_title_chars = st.sampled_from([*list("0123456789+ ()-./"), "\n", "\t", "\x00", "a", "٣", "３"])


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(
    title=st.one_of(st.text(), st.text(_title_chars, max_size=45)),
    region=st.sampled_from(["NL", "US", "GB", "DE", "BE"]),
    anywhere=st.booleans(),
)
@example(title="٠٦١٢٣٤٥٦٧٨", region="NL", anywhere=True)
@example(title="+" + "0" * 39, region="NL", anywhere=True)
@example(title="00" + "9" * 38, region="US", anywhere=True)
def test_parse_title_never_raises_and_targets_are_safe(
    title: str, region: str, anywhere: bool
) -> None:
    policy = NumberPolicy(
        region=region,
        allowed_countries=frozenset({"*"} if anywhere else {region}),
        allow_emergency=anywhere,
    )
    result = parse_title(title, policy)
    if isinstance(result, Target):
        assert SAFE_TARGET.fullmatch(result.value), result
        assert "\n" not in result.value
        if result.is_extension:
            assert result.value.isascii() and result.value.isdigit()
        else:
            assert result.value.startswith("+")
    else:
        assert isinstance(result, Rejection)
        assert result.reason in set(Reason)
