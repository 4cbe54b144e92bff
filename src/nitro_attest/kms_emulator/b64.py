"""Base64 for the request and answer members (a Recipient document is ~6 KiB of it).

pybase64 (SIMD; the kms-emulator extra brings it) when installed, the standard library
otherwise: the standard library's strict decoder takes ~12 us for a document, pybase64 ~0.6
(docs/kms.md, "Speed"). Both refuse every character outside the alphabet, with
``binascii.Error`` (a ValueError); pybase64 also refuses superfluous padding after a complete
group (``QUJD=``), which the standard library lets through: stricter, never looser, and the two
give the same bytes for what both accept (tests/test_kms_emulator_speed.py fuzzes them side by
side). Nothing is trusted for being well-formed base64: a document's bytes are verified by their
signature, a blob's by its GCM tag.
"""

from __future__ import annotations

try:
    from pybase64 import b64decode as _decode
    from pybase64 import b64encode as _encode
except ImportError:  # pragma: no cover - the kms-emulator extra installs it
    from base64 import b64decode as _decode  # type: ignore[assignment]
    from base64 import b64encode as _encode  # type: ignore[assignment]


def decode(text: str) -> bytes:
    """The bytes ``text`` encodes; raises ``binascii.Error`` (or ValueError, non-ASCII text)
    for anything but the standard alphabet with its padding."""
    return _decode(text, validate=True)


def encode(data: bytes) -> str:
    return _encode(data).decode("ascii")
