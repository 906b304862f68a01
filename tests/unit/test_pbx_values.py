"""The allow-list that stands between pbxcal and the AMI wire: the core's wire rule."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pbxcal.core.wire import is_wire_extension, is_wire_target
from pbxcal.errors import UnsafeValue
from pbxcal.pbx import values


@pytest.mark.parametrize("ext", ["5", "20", "201", "123456", "0", "123456789012345"])
def test_valid_extensions(ext: str) -> None:
    # "5" and 7+ digits were refused by the adapter's own pattern while the core planned
    # them (issue #7 item 1): the wire now uses the core's rule, whatever the policy says.
    assert values.validate_extension(ext) == ext


@pytest.mark.parametrize(
    "ext",
    ["", "1234567890123456", "abc", "201\r\nAction: Originate", "20 1", "+201", "٢٠١",
     "201\n", "201/x", "../1", "²⁰¹"],
)
def test_unsafe_extensions(ext: str) -> None:
    with pytest.raises(UnsafeValue) as info:
        values.validate_extension(ext)
    assert "\n" not in str(info.value)


def test_non_strings_are_refused() -> None:
    for ext in (201, None, b"201"):
        with pytest.raises(UnsafeValue):
            values.validate_extension(ext)


def test_targets_sorted_and_deduplicated() -> None:
    assert values.validate_targets(["333", "+31612345678", "333"]) == ("+31612345678", "333")
    assert values.validate_targets([]) == ()


@pytest.mark.parametrize(
    "target",
    ["201&", "&201", "abc", "201\r\nAction: Originate", "+", "++3161", "0612 345",
     "1234567890123456", "", "31-6", "*97", "+0612345678", "+3", "+1234567890123456",
     "+٣١٦١٢٣٤٥٦٧٨"],
)
def test_unsafe_targets(target: str) -> None:
    with pytest.raises(UnsafeValue) as info:
        values.validate_targets([target])
    assert "\n" not in str(info.value) and "\r" not in str(info.value)


def test_targets_must_not_be_a_bare_string() -> None:
    with pytest.raises(UnsafeValue):
        values.validate_targets("201")


def test_too_long_joined_value_is_refused() -> None:
    many = [f"+31{n:09d}" for n in range(100)]
    with pytest.raises(UnsafeValue, match="more than"):
        values.validate_targets(many)


def test_round_trip_of_stored_value() -> None:
    targets = values.validate_targets(["+31612345678", "333"])
    assert values.split_value(values.join_targets(targets)) == targets
    for bad in ["", "201&", "abc", "201&&202", "201;202"]:
        with pytest.raises(UnsafeValue):
            values.split_value(bad)


def test_keys_and_device_names() -> None:
    assert values.FAMILY == "pbxcal"
    assert values.fwd_key("201") == "fwd/201"
    assert values.ext_from_key("/pbxcal/fwd/201") == "201"
    assert values.ext_from_key("fwd/201") == "201"
    assert values.ext_from_key("/pbxcal/other/201") is None
    assert values.ext_from_key("/pbxcal/fwd/20a") is None
    assert values.device_name("201") == "Custom:pbxcal201"


def test_validate_forwarding() -> None:
    assert values.validate_forwarding("201", ["333"]) == ("201", ("333",))
    assert values.validate_forwarding("201", []) == ("201", ())


def test_targets_the_core_accepts_are_accepted() -> None:
    # "1" (an extension under a [1-9][0-9]{0,5} policy) and 15-digit extensions were
    # refused by the old adapter rule; "+0..." slipped through it.
    assert values.validate_targets(["1", "123456789012345", "+12"]) == (
        "+12", "1", "123456789012345")


@given(st.text(max_size=20))
def test_wire_and_adapter_agree_on_every_extension(text: str) -> None:
    try:
        values.validate_extension(text)
    except UnsafeValue:
        assert not is_wire_extension(text)
    else:
        assert is_wire_extension(text)


@given(st.text(alphabet="0123456789+&١ \r\n", max_size=20))
def test_wire_and_adapter_agree_on_every_target(text: str) -> None:
    try:
        values.validate_targets([text])
    except UnsafeValue:
        assert not is_wire_target(text)
    else:
        assert is_wire_target(text)
