"""Which documents count as signing caller-chosen keys (PCR16): only PCR16 locked at zero is
pristine (our servers lock it so at start)."""

from __future__ import annotations

from nitro_attest.attestation.caller_keys import (
    CALLER_KEY_LABEL,
    CALLER_KEY_PCR,
    MARKED_PCR_VALUE,
    PRISTINE_PCR_VALUE,
    signs_caller_keys,
)
from nitro_attest.attestation.pcr import extend

BOOT = {i: bytes([i]) * 48 for i in range(16)}


def test_only_pcr16_locked_at_zero_is_pristine() -> None:
    assert not signs_caller_keys({**BOOT, CALLER_KEY_PCR: PRISTINE_PCR_VALUE})
    assert signs_caller_keys(BOOT)  # never locked: it could be marked later, fails closed


def test_the_mark_and_any_other_value_are_refused() -> None:
    assert extend(PRISTINE_PCR_VALUE, CALLER_KEY_LABEL) == MARKED_PCR_VALUE
    assert signs_caller_keys({**BOOT, CALLER_KEY_PCR: MARKED_PCR_VALUE})
    assert signs_caller_keys({**BOOT, CALLER_KEY_PCR: b"\x01" * 48})
    assert signs_caller_keys({**BOOT, CALLER_KEY_PCR: bytes(32)})  # a zero of another length
