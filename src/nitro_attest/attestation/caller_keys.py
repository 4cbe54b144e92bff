"""The mark an enclave puts on every document once it may sign keys chosen by its callers.

``serve --allow-caller-public-key`` lets whoever reaches the port obtain a document naming any
public key. Such a document must never pass for one naming a key the enclave itself holds (its
attested-HTTPS certificate key, its KMS Recipient RSA key, its channel key). So before the opt-in
takes effect the enclave extends ``CALLER_KEY_PCR`` with ``CALLER_KEY_LABEL`` and locks it. A
document carries exactly the locked PCRs (0-15 from boot, and 16 once locked), so every document
the enclave signs from then on shows ``MARKED_PCR_VALUE`` there. One that never opted in either
lacks PCR16 or shows it locked at ``PRISTINE_PCR_VALUE``: the enclave-side servers that hold keys
of their own (``https serve``, the KMS client) lock it at zero when they start, so the same boot
can never opt in later. Every relying party of ours that trusts a key named by the enclave (the
channel sender, the https client, the verification service) refuses a document that
``signs_caller_keys``; ``kms policy`` requires PCR16 present and zero (our KMS client locks it).
"""

from __future__ import annotations

from collections.abc import Mapping

from nitro_attest.attestation.pcr import ZERO_PCR, extend

CALLER_KEY_PCR = 16  # the first PCR an enclave may extend; 0-15 are AWS's or reserved
CALLER_KEY_LABEL = b"nitro-attest:caller-chosen-public-keys-allowed:v1"
PRISTINE_PCR_VALUE = ZERO_PCR
MARKED_PCR_VALUE = extend(ZERO_PCR, CALLER_KEY_LABEL)


def signs_caller_keys(pcrs: Mapping[int, bytes]) -> bool:
    """True when the document's ``CALLER_KEY_PCR`` is locked at anything but zero: the mark, or
    a value we cannot interpret, either of which may mean keys chosen by callers (fails closed).
    Absent (never locked) or locked at zero is pristine: the opt-in locks the mark before it
    signs a single caller's key, and a locked PCR cannot change until the enclave restarts."""
    value = pcrs.get(CALLER_KEY_PCR)
    return value is not None and value != PRISTINE_PCR_VALUE
