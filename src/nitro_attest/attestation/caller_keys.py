"""The mark an enclave puts on every document once it may sign keys chosen by its callers.

``serve --allow-caller-public-key`` lets whoever reaches the port obtain a document naming any
public key. Such a document must never pass for one naming a key the enclave itself holds (its
attested-HTTPS certificate key, its KMS Recipient RSA key, its channel key). A document carries
exactly the locked PCRs (0-15 from boot, 16 once locked), so:

- with the opt-in, ``serve`` extends ``CALLER_KEY_PCR`` with ``CALLER_KEY_LABEL`` and locks it
  before it signs a single caller's key: every later document shows ``MARKED_PCR_VALUE``;
- every enclave-side server of ours that holds keys (``serve`` without the opt-in, ``https
  serve``, the KMS client) locks it untouched at start: its documents show
  ``PRISTINE_PCR_VALUE``, and the same boot can never opt in afterwards.

Our relying parties that trust a key the document names (the channel sender, the https client)
therefore require PCR16 present and zero (``signs_caller_keys`` fails closed on absence), and
``kms policy`` pins ``kms:RecipientAttestation:PCR16`` to zero. The verification service, which
appraises enclaves not necessarily running our servers, accepts an absent PCR16 but refuses any
locked value other than zero (docs/service.md).
"""

from __future__ import annotations

from collections.abc import Mapping

from nitro_attest.attestation.pcr import ZERO_PCR, extend

CALLER_KEY_PCR = 16  # the first PCR an enclave may extend; 0-15 are AWS's or reserved
CALLER_KEY_LABEL = b"nitro-attest:caller-chosen-public-keys-allowed:v1"
PRISTINE_PCR_VALUE = ZERO_PCR
MARKED_PCR_VALUE = extend(ZERO_PCR, CALLER_KEY_LABEL)


def signs_caller_keys(pcrs: Mapping[int, bytes]) -> bool:
    """True unless the document's ``CALLER_KEY_PCR`` is locked at zero: the mark, any other
    value, or no PCR16 at all (an enclave that never locked it could still opt in later, or run
    a signer of callers' keys that is not ours) may mean keys chosen by callers. Fails closed."""
    return pcrs.get(CALLER_KEY_PCR) != PRISTINE_PCR_VALUE
