"""The two BER encodings the envelope needs: definite (DER) lengths and indefinite ones.

Kept minimal (single-byte tags only); the project's BER reader checks what this writes.
"""

from __future__ import annotations


def _length(n: int) -> bytes:
    if n < 0x80:
        return bytes((n,))
    body = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes((0x80 | len(body),)) + body


def write_definite(tag: int, content: bytes) -> bytes:
    """One TLV with a definite (shortest-form) length."""
    return bytes((tag,)) + _length(len(content)) + content


def write_indefinite(tag: int, *parts: bytes) -> bytes:
    """A constructed TLV with an indefinite length: its parts, then end-of-contents."""
    if not tag & 0x20:
        raise ValueError(f"tag {tag:#x} is not constructed: an indefinite length needs one")
    return bytes((tag, 0x80)) + b"".join(parts) + b"\x00\x00"
