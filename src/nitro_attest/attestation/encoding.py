"""How attestation documents are stored: raw CBOR, base64 text or hex text, told apart by content.

The tutorial's client/attestation-document.dat is base64; many projects keep raw .cbor or hex.
"""

from __future__ import annotations

import base64
import binascii
import re

from nitro_attest.errors import MalformedDocumentError
from nitro_attest.limits import MAX_DOCUMENT_BYTES

# A text encoding of the largest document, with room for line breaks.
MAX_INPUT_BYTES = 2 * MAX_DOCUMENT_BYTES + 4096
_COSE_FIRST_BYTES = (0x84, 0xD2, 0xD8)  # array(4), tag 18, or a two-byte tag head
_HEX = re.compile(r"^(?:0x)?[0-9a-fA-F]+$")
_B64 = re.compile(r"^[A-Za-z0-9+/_-]+={0,2}$")


def decode_document_input(data: bytes) -> bytes:
    """Return the raw COSE_Sign1 bytes from raw, base64 (standard or URL-safe) or hex input."""
    if len(data) > MAX_INPUT_BYTES:
        raise MalformedDocumentError(f"input is {len(data)} bytes, larger than {MAX_INPUT_BYTES}")
    if not data.strip():
        raise MalformedDocumentError("input is empty")
    if data[0] in _COSE_FIRST_BYTES:
        return data
    try:
        text = "".join(data.decode("ascii").split())
    except UnicodeDecodeError:
        raise MalformedDocumentError(
            "input is neither a raw COSE_Sign1 (first byte 0x84 or tag 0xd2) nor base64/hex text "
            f"(first byte 0x{data[0]:02x})"
        ) from None
    if _HEX.match(text) and len(text.removeprefix("0x")) % 2 == 0:
        raw = bytes.fromhex(text.removeprefix("0x"))
        if raw[:1] and raw[0] in _COSE_FIRST_BYTES:
            return raw
    if not _B64.match(text):
        raise MalformedDocumentError("input text is neither base64 nor hex")
    altchars = b"-_" if ("-" in text or "_" in text) else None
    padded = text.rstrip("=") + "=" * (-len(text.rstrip("=")) % 4)
    try:
        raw = base64.b64decode(padded, altchars=altchars, validate=True)
    except (binascii.Error, ValueError):
        raise MalformedDocumentError("input text is not valid base64") from None
    if not raw or raw[0] not in _COSE_FIRST_BYTES:
        raise MalformedDocumentError(
            "decoded base64 is not a COSE_Sign1 (expected first byte 0x84 or tag 0xd2)"
        )
    return raw

