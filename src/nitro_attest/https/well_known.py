"""The attestation path both ends of attested HTTPS agree on, and what it answers."""

from __future__ import annotations

WELL_KNOWN = "/.well-known/nitro-attestation"
DOCUMENT_TYPE = b"application/vnd.aws.nitro-enclaves.attestation-document+cose"
MIN_NONCE, MAX_NONCE = 8, 64  # bytes, as hex in ?nonce=
