"""Strict decoding of untrusted CBOR: one item, no trailing bytes, no duplicate keys, no tags.

cbor2 does the decoding (its C extension is fast); this wrapper adds the rules cbor2 leaves off by
default. Tags are refused by overriding every semantic decoder, so a tag-1 date or a tag-2 bignum
never silently becomes a Python datetime or int.
"""

from __future__ import annotations

import io
from collections.abc import Iterator, Mapping
from typing import Any, NoReturn

import cbor2

from nitro_attest.errors import FormatError


class CborError(FormatError):
    """The bytes are not the single, well-formed, tag-free CBOR item expected."""


MAX_DEPTH = 16


def _refuse_tag(*args: Any) -> NoReturn:
    raise CborError("CBOR tags are not allowed here")


class _EveryTag(Mapping[int, Any]):
    """Overrides every semantic decoder cbor2 could apply (it looks a tag up here before its
    built-in decoders); tag_hook catches the rest. A mapping that answers every number, rather than
    a 65536-entry dict, which took longer to build at import than verifying a document."""

    def __getitem__(self, tag: int) -> Any:
        if isinstance(tag, int):
            return _refuse_tag
        raise KeyError(tag)

    def __iter__(self) -> Iterator[int]:  # what a copy would see: the 16-bit tags
        return iter(range(65536))

    def __len__(self) -> int:
        return 65536


_NO_SEMANTIC_TAGS = _EveryTag()


def strict_loads(data: bytes, *, max_depth: int = MAX_DEPTH) -> Any:
    """Decode exactly one CBOR item from ``data``.

    Indefinite-length maps and strings are accepted (real documents use indefinite maps since
    2025); trailing bytes, duplicate map keys, tags, and nesting beyond ``max_depth`` are not.
    """
    if not data:
        raise CborError("empty input")
    stream = io.BytesIO(data)
    try:
        value = cbor2.CBORDecoder(
            stream,
            allow_duplicate_keys=False,
            max_depth=max_depth,
            semantic_decoders=_NO_SEMANTIC_TAGS,
            tag_hook=_refuse_tag,
        ).decode()
    except CborError:
        raise
    except Exception as exc:  # cbor2 raises several types on hostile input; only ours escape
        raise CborError(_error_text(exc)) from None
    end = stream.tell()
    if end != len(data):
        raise CborError(f"{len(data) - end} trailing byte(s) after the CBOR item")
    return value


def _error_text(exc: Exception) -> str:
    text = str(exc).strip() or type(exc).__name__
    cause = exc.__cause__ or exc.__context__
    if isinstance(cause, CborError):
        return str(cause)
    if "premature end" in text.lower() or "end of stream" in text.lower():
        return "truncated CBOR"
    return f"invalid CBOR: {text}"


def bstr_head(n: int) -> bytes:
    """The shortest CBOR head of a byte string of ``n`` bytes (what cbor2 writes): for the
    encoders that write a known layout by hand (COSE's Sig_structure, the attestation answer)."""
    if n < 24:
        return bytes((0x40 | n,))
    if n < 0x100:
        return bytes((0x58, n))
    if n < 0x10000:
        return b"\x59" + n.to_bytes(2, "big")
    if n < 0x100000000:
        return b"\x5a" + n.to_bytes(4, "big")
    return b"\x5b" + n.to_bytes(8, "big")
