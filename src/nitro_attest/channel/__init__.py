"""The attested channel: deliver a secret only to an enclave whose attestation verifies.

``keys`` (HPKE suites and the key named in a document's public_key), ``seal`` (sealing bound to
the nonce and the document) and ``signing`` (sender signatures) are pure; ``messages`` holds the
typed requests and responses both ends use on the wire protocol; ``replay`` is the enclave's
one-use nonce ledger; ``receiver`` is the enclave side and ``sender`` the client side, and neither
imports the other. See docs/channel.md and docs/threat-model.md.
"""
