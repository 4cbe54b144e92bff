"""The emulator's request bodies are read by codec.strict_json; each refusal is KMS's
SerializationException, worded as before."""

from __future__ import annotations

import pytest

from nitro_attest.kms_emulator.app import parse_json
from nitro_attest.kms_emulator.errors import KmsApiError


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b'{"KeyId": "a", "KeyId": "b"}', "duplicate member 'KeyId'"),
        (b'{"NumberOfBytes": NaN}', "NaN is not a JSON number"),
        (b'{"NumberOfBytes": 1e999}', "number 1e999 is out of range"),
        (b'{"KeyId": ' + b"[" * 40 + b"]" * 40 + b"}", "nested more than 32 levels deep"),
        (b"[" * 100_000, "nested more than 32 levels deep"),
        (b"[1, 2", "Expecting ',' delimiter: line 1 column 6"),
        (b'{"KeyId": "\xff"}', "'utf-8' codec can't decode"),
    ],
)
def test_bad_bodies_are_serialization_exceptions(body: bytes, message: str) -> None:
    with pytest.raises(KmsApiError) as info:
        parse_json(body)
    assert info.value.type_name == "SerializationException"
    assert info.value.message.startswith("the body is not valid JSON: ")
    assert message in info.value.message and "\n" not in info.value.message


def test_empty_body_is_no_parameters_and_a_list_is_refused() -> None:
    assert parse_json(b"  \r\n") == {}
    assert parse_json(b'{"KeyId": "k", "NumberOfBytes": 32}') == {"KeyId": "k", "NumberOfBytes": 32}
    with pytest.raises(KmsApiError, match="must be a JSON object"):
        parse_json(b"[]")
