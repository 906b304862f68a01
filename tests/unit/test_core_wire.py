"""The wire rule: ASCII digits only, E.164 for external numbers."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pbxcal.core.wire import is_wire_extension, is_wire_number, is_wire_target


@pytest.mark.parametrize("value", ["1", "100", "5", "012", "123456789012345"])
def test_extensions_on_the_wire(value: str) -> None:
    assert is_wire_extension(value)
    assert is_wire_target(value)


@pytest.mark.parametrize(
    "value",
    ["", "١٢٣", "１２３", "12\n", "12 3", "+100", "1234567890123456", "12a", None, 100, b"100"],
)
def test_not_extensions_on_the_wire(value: object) -> None:
    assert not is_wire_extension(value)


@pytest.mark.parametrize("value", ["+31612345678", "+12", "+123456789012345"])
def test_numbers_on_the_wire(value: str) -> None:
    assert is_wire_number(value)
    assert is_wire_target(value)


@pytest.mark.parametrize(
    "value", ["+0612345678", "+1", "+1234567890123456", "+31 6", "+٣١٦١٢٣٤٥٦٧٨", "++31", "31+"]
)
def test_not_numbers_on_the_wire(value: str) -> None:
    assert not is_wire_number(value)
    assert not is_wire_target(value)


@given(st.text(max_size=20))
def test_a_wire_target_holds_only_ascii_digits_and_a_leading_plus(value: str) -> None:
    if is_wire_target(value):
        assert value.isascii()
        assert value.lstrip("+").isdigit()
        assert "+" not in value[1:]
