"""The attestation payload in the one layout AWS's NSM emits, read without a CBOR decoder.

The NSM writes the payload map with the same keys in the same order every time: module_id,
digest, timestamp, pcrs (or nitrotpm_pcrs), certificate, cabundle, public_key, user_data, nonce;
definite (``a9``) before 2025-08, indefinite (``bf`` ... ``ff``) since. This reads that layout
with slices and a few byte comparisons, the way ``codec.cose`` slices the COSE envelope and
``wire.protocol.decode_attest_layout`` the attest request, and applies every rule
``document._check_fields`` applies. It returns None for anything else (another order, another
head, a tag, an indefinite string, a field outside its bounds, a byte too many or too few), and
the caller then runs the strict decoder and the field checks, which accept or name the fault.
So what this accepts, the strict path accepts with an identical document
(tests/test_payload_layout.py checks that on the real documents and on mutated bytes); it never
accepts anything the strict path rejects.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import NamedTuple

from nitro_attest.limits import MAX_CERT_BYTES, NSM_FIELD_BYTES

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
# The last millisecond a datetime can hold (year 9999); beyond it the strict path names the fault.
_MAX_TIMESTAMP_MS = (datetime.max.replace(tzinfo=UTC) - _EPOCH) // timedelta(milliseconds=1)

_MODULE_ID_KEY = b"\x69module_id"  # text(9) "module_id"
_DIGEST = b"\x66digest\x66SHA384"  # "digest": "SHA384", the only digest the rules allow
_TIMESTAMP_KEY = b"\x69timestamp\x1b"  # "timestamp": a uint with an 8-byte argument (the NSM's)
_PCRS_KEY = b"\x64pcrs"
_NITROTPM_PCRS_KEY = b"\x6dnitrotpm_pcrs"
_CERTIFICATE_KEY = b"\x6bcertificate"
_CABUNDLE_KEY = b"\x68cabundle"
_PUBLIC_KEY = b"\x6apublic_key"
_USER_DATA = b"\x69user_data"
_NONCE = b"\x65nonce"
# PCR map entries this reader takes: keys 0..23 (one-byte uints), so every entry has the same
# size; a map of more (PCR 24+ takes a two-byte key) goes to the strict decoder.
_MAX_LAYOUT_PCRS = 24
_PCR_INDEXES = bytes(range(_MAX_LAYOUT_PCRS))
_PCR_LENGTHS = frozenset((32, 48, 64))
_NULL = 0xF6


class _PcrShape(NamedTuple):
    """A PCR map of ``count`` entries with keys 0.. in order and values of ``length`` bytes."""

    stride: int  # bytes per entry: the key, 0x58, the length, the digest
    keys: bytes  # every entry's first byte: 0, 1, 2, ...
    heads: bytes  # every entry's second byte: 0x58 (a byte string with a 1-byte length)
    lengths: bytes  # every entry's third byte: the length
    unpack: Callable[[bytes, int], tuple[bytes, ...]]  # every digest, sliced in one C call


def _pcr_shape(count: int, length: int) -> _PcrShape:
    return _PcrShape(
        3 + length,
        _PCR_INDEXES[:count],
        b"\x58" * count,
        bytes((length,)) * count,
        struct.Struct(f"3x{length}s" * count).unpack_from,
    )


# Filled on first use; bounded by its keys: count 1..24 times three lengths.
_PCR_SHAPES: dict[tuple[int, int], _PcrShape] = {}

# (module_id, timestamp_ms, timestamp, pcrs, certificate, cabundle, public_key, user_data, nonce,
#  the key the PCRs came under): the payload's fields, checked.
Fields = tuple[
    str, int, datetime, dict[int, bytes], bytes, tuple[bytes, ...],
    bytes | None, bytes | None, bytes | None, str,
]  # fmt: skip


def _bstr(p: bytes, at: int) -> tuple[int, int]:
    """(start, end) of the byte string whose head is at ``at``; (0, -1) for any other head.

    Heads with a 0, 1 or 2-byte length only (a field here is at most 1024 bytes); cbor2 accepts
    a longer head for a short length too, and so does this, with the same result."""
    head = p[at]
    if 0x40 <= head <= 0x57:
        start = at + 1
        return start, start + head - 0x40
    if head == 0x58:
        start = at + 2
        return start, start + p[at + 1]
    if head == 0x59:
        start = at + 3
        return start, start + (p[at + 1] << 8 | p[at + 2])
    return 0, -1


def read_nsm_payload(p: bytes) -> Fields | None:
    """The payload's fields if ``p`` is in the NSM's layout and every field within its rules;
    None otherwise (then the strict decoder decides)."""
    try:
        return _read(p)
    except (IndexError, UnicodeDecodeError):  # ran off the end, or module_id not UTF-8
        return None


def _read(p: bytes) -> Fields | None:
    size = len(p)
    first = p[0]
    if (first != 0xA9 and first != 0xBF) or not p.startswith(_MODULE_ID_KEY, 1):
        return None
    at = 1 + len(_MODULE_ID_KEY)

    head = p[at]  # module_id: text of 1..255 bytes (a 0- or 1-byte length)
    if 0x61 <= head <= 0x77:
        start, end = at + 1, at + 1 + head - 0x60
    elif head == 0x78:
        start, end = at + 2, at + 2 + p[at + 1]
    else:
        return None
    if end > size or end == start:
        return None
    module_id = p[start:end].decode()  # strict UTF-8, as cbor2 decodes text
    at = end

    if not p.startswith(_DIGEST, at):
        return None
    at += len(_DIGEST)
    if not p.startswith(_TIMESTAMP_KEY, at):
        return None
    at += len(_TIMESTAMP_KEY)
    if at + 8 > size:
        return None
    timestamp_ms = int.from_bytes(p[at : at + 8], "big")  # < 2**64 by its size
    if not 0 < timestamp_ms <= _MAX_TIMESTAMP_MS:
        return None
    at += 8

    if p.startswith(_PCRS_KEY, at):
        pcr_key = "pcrs"
        at += len(_PCRS_KEY)
    elif p.startswith(_NITROTPM_PCRS_KEY, at):
        pcr_key = "nitrotpm_pcrs"
        at += len(_NITROTPM_PCRS_KEY)
    else:
        return None
    head = p[at]  # a map of 1..24 entries, keys 0, 1, ... in order, values of one length
    if 0xA1 <= head <= 0xB7:
        count = head - 0xA0
        at += 1
    elif head == 0xB8:
        count = p[at + 1]
        at += 2
    else:
        return None
    if not 1 <= count <= _MAX_LAYOUT_PCRS or p[at + 1] != 0x58:
        return None
    length = p[at + 2]
    if length not in _PCR_LENGTHS:
        return None
    shape = _PCR_SHAPES.get((count, length))
    if shape is None:
        shape = _PCR_SHAPES[count, length] = _pcr_shape(count, length)
    stride, keys, heads, lengths, unpack = shape
    end = at + stride * count
    if (
        end > size
        or p[at:end:stride] != keys
        or p[at + 1 : end : stride] != heads
        or p[at + 2 : end : stride] != lengths
    ):
        return None
    pcrs = dict(enumerate(unpack(p, at)))
    at = end

    if not p.startswith(_CERTIFICATE_KEY, at):
        return None
    start, end = _bstr(p, at + len(_CERTIFICATE_KEY))
    if not 1 <= end - start <= MAX_CERT_BYTES or end > size:
        return None
    certificate = p[start:end]
    at = end

    if not p.startswith(_CABUNDLE_KEY, at):
        return None
    at += len(_CABUNDLE_KEY)
    head = p[at]  # an array of 1..23 certificates, each with a 2-byte length (as the NSM writes)
    if not 0x81 <= head <= 0x97:
        return None
    at += 1
    bundle = []
    for _ in range(head - 0x80):
        if p[at] != 0x59:
            return None
        start = at + 3
        at = start + (p[at + 1] << 8 | p[at + 2])
        if not 1 <= at - start <= MAX_CERT_BYTES or at > size:
            return None
        bundle.append(p[start:at])

    # public_key, user_data, nonce: each null or 0..1024 bytes
    if not p.startswith(_PUBLIC_KEY, at):
        return None
    at += len(_PUBLIC_KEY)
    if p[at] == _NULL:
        public_key = None
        at += 1
    else:
        start, at = _bstr(p, at)
        if not 0 <= at - start <= NSM_FIELD_BYTES or at > size:
            return None
        public_key = p[start:at]
    if not p.startswith(_USER_DATA, at):
        return None
    at += len(_USER_DATA)
    if p[at] == _NULL:
        user_data = None
        at += 1
    else:
        start, at = _bstr(p, at)
        if not 0 <= at - start <= NSM_FIELD_BYTES or at > size:
            return None
        user_data = p[start:at]
    if not p.startswith(_NONCE, at):
        return None
    at += len(_NONCE)
    if p[at] == _NULL:
        nonce = None
        at += 1
    else:
        start, at = _bstr(p, at)
        if not 0 <= at - start <= NSM_FIELD_BYTES or at > size:
            return None
        nonce = p[start:at]

    if first == 0xBF:  # the indefinite map's break, then nothing
        if p[at] != 0xFF:
            return None
        at += 1
    if at != size:
        return None
    timestamp = _EPOCH + timedelta(0, 0, 0, timestamp_ms)  # milliseconds, positionally
    return (module_id, timestamp_ms, timestamp, pcrs, certificate, tuple(bundle),
            public_key, user_data, nonce, pcr_key)  # fmt: skip
