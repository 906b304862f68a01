"""The allow-list that stands between pbxcal and the AMI wire."""

from __future__ import annotations

import pytest

from pbxcal.errors import UnsafeValue
from pbxcal.pbx import values


@pytest.mark.parametrize("ext", ["20", "201", "123456"])
def test_valid_extensions(ext: str) -> None:
    assert values.validate_extension(ext) == ext


@pytest.mark.parametrize(
    "ext",
    ["", "2", "1234567", "abc", "201\r\nAction: Originate", "20 1", "+201", "٢٠١", "201\n",
     "201/x", "../1"],
)
def test_unsafe_extensions(ext: str) -> None:
    with pytest.raises(UnsafeValue) as info:
        values.validate_extension(ext)
    assert "\n" not in str(info.value)


def test_extension_pattern_is_configurable_but_digits_stay_required() -> None:
    assert values.validate_extension("1", r"^[0-9]{1,3}$") == "1"
    with pytest.raises(UnsafeValue):
        values.validate_extension("abc", r"^.*$")


def test_targets_sorted_and_deduplicated() -> None:
    assert values.validate_targets(["333", "+31612345678", "333"]) == ("+31612345678", "333")
    assert values.validate_targets([]) == ()


@pytest.mark.parametrize(
    "target",
    ["201&", "&201", "abc", "201\r\nAction: Originate", "+", "1", "++3161", "0612 345",
     "1234567890123456", "", "31-6", "*97"],
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
