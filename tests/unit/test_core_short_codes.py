"""Toll fraud: a title that looks like an extension is not yet an extension (issue #7.2).

Emergency short codes are blocked always (unless ``allow_emergency``); without a
directory of the PBX's extensions, valid short numbers (premium, directory enquiries,
helplines) are blocked; with one, only listed extensions are extensions. The wire rule:
whatever ``parse_title`` accepts passes ``core.wire``.
"""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from phonenumbers import ShortNumberCost

from pbxcal.core.policy import NumberPolicy
from pbxcal.core.targets import Reason, Rejection, Target, TitleParser, parse_title
from pbxcal.core.wire import is_wire_target
from pbxcal.errors import UnsafeValue

NL = NumberPolicy.default("NL")
US = NumberPolicy.default("US")
FR = NumberPolicy.default("FR")


def _policy(region: str = "NL", **kwargs: object) -> NumberPolicy:
    return NumberPolicy(region=region, allowed_countries=frozenset({region}), **kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("title", "policy", "words"),
    [
        ("1120", NL, "1120 connects to emergency services"),
        ("1129", NL, "1129 connects to emergency services"),
        ("9110", US, "9110 connects to emergency services"),
        ("9110", NL, "9110 connects to emergency services"),
        ("112", US, "112 connects to emergency services"),
        ("911", NL, "911 connects to emergency services"),
    ],
)
def test_emergency_short_codes_are_blocked(title: str, policy: NumberPolicy, words: str) -> None:
    assert parse_title(title, policy) == Rejection(Reason.BLOCKED_BY_POLICY, words)
    # ... whether or not the PBX has such an extension
    assert parse_title(title, policy, frozenset({title})) == Rejection(
        Reason.BLOCKED_BY_POLICY, words
    )


def test_emergency_short_code_with_a_pattern_that_does_not_call_it_an_extension() -> None:
    policy = _policy(extension_pattern=r"2[0-9]{2}")
    result = parse_title("1120", policy)
    assert isinstance(result, Rejection) and result.reason is Reason.BLOCKED_BY_POLICY


@pytest.mark.parametrize(
    ("title", "policy", "words"),
    [
        ("118218", FR, "118218 is a premium-rate short number in FR and is blocked"),
        ("1888", NL, "1888 is a directory-enquiry/premium short number in NL and is blocked"),
        ("1850", NL, "1850 is a directory-enquiry/premium short number in NL and is blocked"),
        ("116000", NL, "116000 is a free service (helpline) short number in NL and is blocked"),
        ("116123", NL, "116123 is a free service (helpline) short number in NL and is blocked"),
    ],
)
def test_short_numbers_are_blocked_without_a_directory(
    title: str, policy: NumberPolicy, words: str
) -> None:
    assert parse_title(title, policy) == Rejection(Reason.BLOCKED_BY_POLICY, words)


def test_short_number_of_an_allowed_country_is_blocked() -> None:
    nl_fr = NumberPolicy(region="NL", allowed_countries=frozenset({"NL", "FR"}))
    result = parse_title("118218", nl_fr)
    assert isinstance(result, Rejection) and result.reason is Reason.BLOCKED_BY_POLICY
    assert "FR" in result.detail


def test_short_number_names_region_and_cost() -> None:
    assert FR.short_number("118218") == ("FR", ShortNumberCost.PREMIUM_RATE)
    assert NL.short_number("333") is None


def test_known_extensions_decide_what_an_extension_is() -> None:
    known = frozenset({"100", "118218", "333"})
    assert parse_title("333", NL, known) == Target("333", True)
    assert parse_title("444", NL, known) == Rejection(
        Reason.UNKNOWN_EXTENSION, "444 is not an extension on this phone system"
    )
    # a short code that really is an extension on this PBX is dialled internally
    assert parse_title("118218", FR, known) == Target("118218", True)
    # numbers are not affected by the directory
    assert parse_title("0612345678", NL, known) == Target("+31612345678", False)
    assert parse_title("0612345678", NL, frozenset()) == Target("+31612345678", False)
    assert parse_title("333", NL, frozenset()) == Rejection(
        Reason.UNKNOWN_EXTENSION, "333 is not an extension on this phone system"
    )


def test_allow_emergency_lets_emergency_through_but_not_other_short_codes() -> None:
    policy = _policy(allow_emergency=True)
    assert parse_title("112", policy) == Target("112", True)
    assert parse_title("1120", policy) == Target("1120", True)
    result = parse_title("1888", policy)
    assert isinstance(result, Rejection) and result.reason is Reason.BLOCKED_BY_POLICY


def test_ordinary_extensions_without_a_directory() -> None:
    for title in ("333", "201", "20", "123456"):
        assert parse_title(title, NL) == Target(title, True)


# -- one extension rule: ASCII digits that fit the wire -------------------------------


@pytest.mark.parametrize(
    ("value", "is_extension"),
    [
        ("١٢٣", True),
        ("３３３", True),
        ("12\n", True),
        ("", True),
        ("1" * 16, True),
        ("+31612345678", True),
        ("333", False),
        ("+٣١٦١٢٣٤٥٦٧٨", False),
        ("+0612345678", False),
        ("+31 6", False),
    ],
)
def test_target_refuses_values_that_fail_the_wire(value: str, is_extension: bool) -> None:
    with pytest.raises(UnsafeValue):
        Target(value, is_extension)


def test_unicode_digit_pattern_is_not_an_extension_rule() -> None:
    # \d matches "١٢٣": the policy's is_extension must still be ASCII digits only
    policy = _policy(extension_pattern=r"\d{1,6}")
    assert not policy.is_extension("١٢٣")
    assert not policy.is_extension("３３３")
    assert policy.is_extension("333")


def test_extension_pattern_longer_than_the_wire_is_not_a_target() -> None:
    policy = _policy(extension_pattern=r"[1-9][0-9]{0,30}")
    result = parse_title("1" * 20, policy)
    assert isinstance(result, Rejection)
    assert parse_title("5", policy) == Target("5", True)


_title_chars = st.sampled_from([*"0123456789+ ()-./", "\n", "\x00", "a", "٣", "３", "\u200b"])


@settings(max_examples=500, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(
    title=st.one_of(st.text(), st.text(_title_chars, max_size=45)),
    region=st.sampled_from(["NL", "US", "GB", "FR", "BE", "DE"]),
    pattern=st.sampled_from(
        [r"[1-9][0-9]{1,5}", r"[1-9][0-9]{0,5}", r"\d{1,20}", r"[0-9]{1,25}", r".+", r"\S*"]
    ),
    allow_emergency=st.booleans(),
    known=st.sampled_from([None, frozenset(), frozenset({"333", "1" * 20, "١٢٣"})]),
)
@example(title="1" * 20, region="NL", pattern=r"[0-9]{1,25}", allow_emergency=False, known=None)
@example(title="١٢٣", region="NL", pattern=r"\d{1,20}", allow_emergency=True, known=None)
def test_every_target_passes_the_wire(
    title: str,
    region: str,
    pattern: str,
    allow_emergency: bool,
    known: frozenset[str] | None,
) -> None:
    policy = _policy(region, extension_pattern=pattern, allow_emergency=allow_emergency)
    result = parse_title(title, policy, known)
    if isinstance(result, Target):
        assert is_wire_target(result.value), result
        assert result.is_extension == (not result.value.startswith("+"))
    else:
        assert result.reason in set(Reason)
        assert "\n" not in result.detail


# -- TitleParser: memoised and bounded ------------------------------------------------


def test_title_parser_gives_what_parse_title_gives() -> None:
    known = frozenset({"333"})
    parser = TitleParser(NL, known)
    for title in ("333", "444", "0612345678", "Lunch", "1120", "333", "Lunch"):
        assert parser.parse(title) == parse_title(title, NL, known)
    assert parser.cached == 5
    assert parser.policy is NL and parser.known_extensions == known


def test_title_parser_remembers() -> None:
    parser = TitleParser(NL)
    first = parser.parse("0612345678")
    assert parser.parse("0612345678") is first


def test_title_parser_cache_is_bounded() -> None:
    parser = TitleParser(NL, max_entries=10)
    for n in range(1000):
        parser.parse(f"Meeting {n}")
    assert parser.cached == 10
    parser.parse("x" * 10_000)  # long titles are not kept
    assert "x" * 10_000 not in parser._cache
    with pytest.raises(ValueError):
        TitleParser(NL, max_entries=0)


def test_the_configured_pattern_never_sees_more_than_fifteen_digits() -> None:
    # A pattern like (1+)+0 backtracks exponentially: a 30-digit title cost 28 s.
    # The wire rule (at most 15 ASCII digits) is checked before the pattern runs.
    seen: list[str] = []

    class Spy:
        def fullmatch(self, text: str) -> None:
            seen.append(text)

    policy = _policy(extension_pattern=r"(1+)+0")
    object.__setattr__(policy, "_extension_re", Spy())
    for title in ("1" * 30, "1" * 16, "١" * 5, "1" * 15):
        parse_title(title, policy)
    assert seen == ["1" * 15]


def test_title_parser_shared_by_threads() -> None:
    from concurrent.futures import ThreadPoolExecutor

    parser = TitleParser(NL, max_entries=16)
    titles = [f"0612345{n:03d}" for n in range(200)] + ["333", "Lunch", "1120"]

    def parse_all(offset: int) -> list[Target | Rejection]:
        return [parser.parse(titles[(i + offset) % len(titles)]) for i in range(2000)]

    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(parse_all, range(0, 200, 50)))
    for offset, got in zip(range(0, 200, 50), results, strict=True):
        assert got == [parse_title(titles[(i + offset) % len(titles)], NL) for i in range(2000)]
    assert parser.cached <= 16


def test_a_fresh_parser_is_used_by_plan_windows_even_with_an_empty_cache() -> None:
    # An empty TitleParser must not be replaced by a default one (that assumes every
    # pattern match is an extension): its known extensions decide.
    from datetime import UTC, datetime, timedelta

    from pbxcal.core.ical import EventInstance
    from pbxcal.core.windows import plan_windows

    start = datetime(2026, 3, 30, 9, tzinfo=UTC)
    instances = [EventInstance("a", start, start + timedelta(hours=1), "333")]
    parser = TitleParser(NL, frozenset({"201"}))
    assert bool(parser)
    plan = plan_windows(instances, start, start + timedelta(days=1), NL, parser=parser)
    assert plan.windows == ()
    assert [r.reason for r in plan.rejected] == [Reason.UNKNOWN_EXTENSION]
