"""strict_loads refuses every CBOR tag, including those cbor2 would decode on its own."""

from __future__ import annotations

import cbor2
import pytest

from nitro_attest.codec.cbor import CborError, strict_loads

# Tags cbor2 6 decodes natively (dates, bignums, decimals, sharing, regex, MIME, UUID, IP
# addresses, sets, self-describe...), found by probing it, and numbers beyond 16 bits.
NATIVE = [0, 1, 2, 3, 4, 5, 25, 28, 29, 30, 35, 36, 37, 52, 54, 100, 256, 258, 260, 261, 1004]
OTHERS = [6, 18, 24, 43000, 55799, 65535, 65536, 2**32, 2**64 - 1]
PAYLOADS = [0, -1, 1.5, "2020-01-01T00:00:00Z", b"\x01" * 16, [0, 1], [b"a", b"b"], {}]


@pytest.mark.parametrize("tag", NATIVE + OTHERS)
def test_every_tag_is_refused(tag: int) -> None:
    for payload in PAYLOADS:
        data = cbor2.dumps(cbor2.CBORTag(tag, payload))
        with pytest.raises(CborError, match="tags are not allowed"):
            strict_loads(data)
        nested = cbor2.dumps({"k": [cbor2.CBORTag(tag, payload)]})
        with pytest.raises(CborError, match="tags are not allowed"):
            strict_loads(nested)


def test_untagged_values_still_decode() -> None:
    value = {"a": [1, -2, b"x", "y", None, True], "b": {3: 4.5}}
    assert strict_loads(cbor2.dumps(value)) == value
