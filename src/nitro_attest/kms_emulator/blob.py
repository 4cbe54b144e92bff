"""The emulator's ciphertext blobs: its own authenticated format, not AWS's.

    b"nakb" | version 1 | key id length (1 byte) | key id (ASCII) | 12-byte nonce |
    AES-256-GCM(plaintext) with its 16-byte tag

The associated data is everything before the nonce plus the encryption context in one canonical
form (sorted keys, JSON), so a blob opens only under its own key, and only with the exact context
it was sealed with (as on AWS, where a different context is InvalidCiphertextException). Callers
treat blobs as opaque, as they must with AWS's; the key id is readable so that Decrypt needs no
KeyId for a symmetric key (AWS's blobs carry theirs too).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from nitro_attest.errors import FormatError

MAGIC = b"nakb"
VERSION = 1
NONCE_BYTES = 12
TAG_BYTES = 16
MAX_BLOB_BYTES = 6144  # AWS's limit on CiphertextBlob


class BlobError(FormatError):
    """Not a blob of this emulator, or it does not open (wrong key, context or altered bytes)."""


@dataclass(frozen=True, slots=True)
class BlobHeader:
    key_id: str
    header: bytes  # the authenticated prefix, up to the nonce
    body: bytes  # nonce | ciphertext | tag


# json.dumps(..., sort_keys=True, separators=(",", ":")) builds this encoder on every call
_CANONICAL = json.JSONEncoder(sort_keys=True, separators=(",", ":"))


def context_bytes(context: Mapping[str, str]) -> bytes:
    """The canonical encryption context: order-independent, as AWS treats it."""
    if not context:
        return b"{}"
    return _CANONICAL.encode(dict(context)).encode()


def seal(key: bytes, key_id: str, plaintext: bytes, context: Mapping[str, str]) -> bytes:
    kid = key_id.encode("ascii")
    header = MAGIC + bytes((VERSION, len(kid))) + kid
    nonce = os.urandom(NONCE_BYTES)
    sealed = AESGCM(key).encrypt(nonce, plaintext, header + context_bytes(context))
    return header + nonce + sealed


def read_header(blob: bytes) -> BlobHeader:
    """The key id a blob names; raises BlobError for anything that is not one of ours."""
    if len(blob) > MAX_BLOB_BYTES:
        raise BlobError(f"ciphertext is {len(blob)} bytes, more than {MAX_BLOB_BYTES}")
    if len(blob) < len(MAGIC) + 2 or blob[:4] != MAGIC or blob[4] != VERSION:
        raise BlobError("not a ciphertext blob of this emulator")
    end = 6 + blob[5]
    if len(blob) < end + NONCE_BYTES + TAG_BYTES:
        raise BlobError("ciphertext blob truncated")
    try:
        key_id = blob[6:end].decode("ascii")
    except UnicodeDecodeError:
        raise BlobError("ciphertext blob names no valid key id") from None
    return BlobHeader(key_id, blob[:end], blob[end:])


def open_blob(key: bytes, header: BlobHeader, context: Mapping[str, str]) -> bytes:
    body = header.body
    try:
        return AESGCM(key).decrypt(
            body[:NONCE_BYTES], body[NONCE_BYTES:], header.header + context_bytes(context)
        )
    except InvalidTag:
        raise BlobError("ciphertext does not open under this key and encryption context") from None
