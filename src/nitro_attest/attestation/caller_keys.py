"""The mark an enclave puts on every document once it may sign keys chosen by its callers.

``serve --allow-caller-public-key`` lets whoever reaches the port obtain a document naming any
public key. Such a document must never pass for one naming a key the enclave itself holds (its
attested-HTTPS certificate key, its KMS Recipient RSA key, its channel key). So before the opt-in
takes effect the enclave extends ``CALLER_KEY_PCR`` with ``CALLER_KEY_LABEL`` and locks it: every
document it signs from then on carries ``MARKED_PCR_VALUE`` there, and one that was never marked
carries ``PRISTINE_PCR_VALUE``. Every relying party of ours that trusts a key named by the enclave
(the channel sender, the https client, the verification service, ``kms policy``'s condition)
requires the pristine value. The register is locked, so nothing in the enclave can reset it.
"""

from __future__ import annotations

from collections.abc import Mapping

from nitro_attest.attestation.pcr import ZERO_PCR, extend

CALLER_KEY_PCR = 16  # the first PCR an enclave may extend; 0-15 are AWS's or reserved
CALLER_KEY_LABEL = b"nitro-attest:caller-chosen-public-keys-allowed:v1"
PRISTINE_PCR_VALUE = ZERO_PCR
MARKED_PCR_VALUE = extend(ZERO_PCR, CALLER_KEY_LABEL)


def signs_caller_keys(pcrs: Mapping[int, bytes]) -> bool:
    """True unless the document's ``CALLER_KEY_PCR`` is pristine: a document without that PCR,
    or with any other value, may name a key chosen by a caller (fails closed)."""
    return pcrs.get(CALLER_KEY_PCR) != PRISTINE_PCR_VALUE
