"""codec.strict_json, the one strict JSON reader: each refusal is a JsonFormatError subclass that
carries what its callers (key policies, the KMS emulator, EIF metadata, configuration files) need
to word it their own way."""

from __future__ import annotations

import sys

import pytest

from nitro_attest.codec import strict_json
from nitro_attest.codec.strict_json import (
    MAX_DIGITS,
    ConstantError,
    DuplicateKeyError,
    JsonFormatError,
    JsonSyntaxError,
    NumberError,
    TooDeepError,
)


def test_duplicate_key_carries_the_whole_key() -> None:
    key = "k" * 100
    with pytest.raises(DuplicateKeyError) as info:
        strict_json.loads(f'{{"a": {{"{key}": 1, "{key}": 2}}}}')
    assert info.value.key == key and "given twice" in info.value.message
    assert len(info.value.message) < 100  # the message quotes a bounded prefix


@pytest.mark.parametrize("name", ["NaN", "Infinity", "-Infinity"])
def test_constants_refused(name: str) -> None:
    with pytest.raises(ConstantError) as info:
        strict_json.loads(f"[1, {name}]")
    assert info.value.name == name and info.value.message == f"{name} is not a JSON number"


def test_syntax_error_says_where() -> None:
    with pytest.raises(JsonSyntaxError) as info:
        strict_json.loads('{\n "a": }')
    err = info.value
    assert (err.line, err.column, err.pos) == (2, 7, 8) and err.reason == "Expecting value"
    assert err.message.startswith("not valid JSON (Expecting value: line 2 column 7")
    with pytest.raises(JsonSyntaxError):
        strict_json.loads(b"\xff")


@pytest.mark.parametrize("number", ["9" * (MAX_DIGITS + 1), "1e" + "9" * MAX_DIGITS,
                                    "0." + "0" * MAX_DIGITS + "1"])
def test_numbers_past_the_digit_limit_refused(number: str) -> None:
    with pytest.raises(NumberError) as info:
        strict_json.loads(f"[{number}]")
    assert info.value.too_long and "digits" in info.value.message


def test_digit_limit_does_not_follow_the_process_setting() -> None:
    """Python's own limit can be lifted process-wide; the answer here stays the same."""
    before = sys.get_int_max_str_digits()
    sys.set_int_max_str_digits(0)
    try:
        with pytest.raises(NumberError):
            strict_json.loads("9" * (MAX_DIGITS + 1))
    finally:
        sys.set_int_max_str_digits(before)
    assert strict_json.loads("9" * MAX_DIGITS) == int("9" * MAX_DIGITS)


@pytest.mark.parametrize("number", ["1e999", "-1e999", "1.5e400"])
def test_float_overflow_is_not_infinity(number: str) -> None:
    """1e999 would read as inf: a non-finite number by another spelling."""
    with pytest.raises(NumberError) as info:
        strict_json.loads(f'{{"limit": {number}}}')
    assert not info.value.too_long and "out of range" in info.value.message


def test_depth_bound_and_recursion_both_too_deep() -> None:
    for text in ("[" * 33 + "]" * 33, "[" * 100_000 + "]" * 100_000):
        with pytest.raises(TooDeepError) as info:
            strict_json.loads(text)
        assert info.value.max_depth == 32
    assert strict_json.loads("[" * 40 + "]" * 40, max_depth=40) == strict_json.loads(
        "[" * 40 + "]" * 40, max_depth=64)


def test_every_refusal_is_a_json_format_error() -> None:
    for text in ('{"a":1,"a":2}', "NaN", "{", "1e999", "[" * 40 + "]" * 40):
        with pytest.raises(JsonFormatError):
            strict_json.loads(text)
    assert strict_json.loads('{"a": [1, 2.5, "x", null, true]}') == {
        "a": [1, 2.5, "x", None, True]}
