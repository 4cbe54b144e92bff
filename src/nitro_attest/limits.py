"""Sizes fixed by the NSM, by AWS's document rules and by our wire protocol: one name for each.

Every size check on untrusted bytes reads its bound from here, so the NSM's field limit, the
largest document and the largest frame cannot drift apart between the modules that enforce them.
"""

from __future__ import annotations

NSM_FIELD_BYTES = 1024  # the NSM's limit on user_data, nonce and public_key, each
MAX_PCRS = 32  # PCR slots an NSM has
MAX_CERT_BYTES = 1024  # one certificate of a document's cabundle or its leaf (AWS's rule)
MAX_PAYLOAD_BYTES = 16 * 1024  # an attestation document's payload (AWS's rule)
MAX_DOCUMENT_BYTES = MAX_PAYLOAD_BYTES + 512  # the COSE_Sign1 envelope around that payload
MAX_FRAME_BYTES = 64 * 1024  # one wire-protocol frame; a document is ~4.5 KiB
