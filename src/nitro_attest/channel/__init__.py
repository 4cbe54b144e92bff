"""The attested channel: deliver a secret only to an enclave whose attestation verifies.

``keys`` (HPKE suites and the key named in a document's public_key) and ``seal`` (sealing bound
to the nonce and the document) are pure; ``replay`` is the enclave's one-use nonce ledger;
``receiver`` is the enclave side, ``sender`` the client side, and ``protocol`` their request and
response types on the wire protocol. See docs/channel.md and docs/threat-model.md.
"""

from nitro_attest.channel.keys import (
    SUITE_LABELS,
    AdvertisedKey,
    SuiteId,
    parse_public_key_field,
)
from nitro_attest.channel.receiver import (
    REQUEST_CHANNEL_ATTEST,
    REQUEST_SEALED_MESSAGE,
    ChannelReceiver,
    Delivery,
    InMemorySecretStore,
    handle_channel_attest,
    handle_sealed_message,
)
from nitro_attest.channel.sender import (
    Receipt,
    Sealed,
    deliver_secret,
    seal_for_document,
    send_secret,
)

__all__ = [
    "REQUEST_CHANNEL_ATTEST",
    "REQUEST_SEALED_MESSAGE",
    "SUITE_LABELS",
    "AdvertisedKey",
    "ChannelReceiver",
    "Delivery",
    "InMemorySecretStore",
    "Receipt",
    "Sealed",
    "SuiteId",
    "deliver_secret",
    "handle_channel_attest",
    "handle_sealed_message",
    "parse_public_key_field",
    "seal_for_document",
    "send_secret",
]
