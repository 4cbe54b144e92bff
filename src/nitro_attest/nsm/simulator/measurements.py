"""Reading nitro-cli build-enclave measurements, and PCR arithmetic shared by the simulator.

build-enclave prints ``{"Measurements": {"HashAlgorithm": "Sha384 { ... }", "PCR0": hex96,
"PCR1": ..., "PCR2": ..., ["PCR8": ...]}}``. ``nitro-cli describe-eif`` carries the same object
among other keys: give that object alone (``jq '{Measurements}'``), since keys beside
``Measurements`` are refused (a stray ``"PCR8"`` there must not be dropped).
"""

from __future__ import annotations

from nitro_attest.attestation.pcr import PCR_SIZE, extend_zero
from nitro_attest.attestation.policy import parse_expected_measurements
from nitro_attest.errors import ConfigurationError, PolicyError

MAX_MEASUREMENTS_FILE = 64 * 1024
MEASURED_PCRS = frozenset({0, 1, 2, 8})  # what an EIF measures; the rest come from the platform


class MeasurementsError(ConfigurationError):
    """The measurements file is unreadable, malformed or empty."""


def platform_pcr(value: str) -> bytes:
    """AWS's PCR3 (role ARN) / PCR4 (instance id) formula: SHA384(0^48 || utf8(value))."""
    return extend_zero(value.encode("utf-8"))


def parse_measurements(text: str | bytes) -> dict[int, bytes]:
    """PCR index -> 48-byte value from build-enclave / describe-eif JSON.

    The JSON rules are the verifier's (policy.parse_expected_measurements); the simulator adds
    its own: one set, PCR0/1/2 required, PCR8 optional, nothing else (an EIF measures no more).
    """
    if len(text) > MAX_MEASUREMENTS_FILE:
        raise MeasurementsError(f"measurements larger than {MAX_MEASUREMENTS_FILE} bytes")
    try:
        sets = parse_expected_measurements(text, "measurements")
    except PolicyError as exc:
        raise MeasurementsError(str(exc)) from None
    if len(sets) != 1:
        raise MeasurementsError(f"expected one measurements object, got a list of {len(sets)}")
    pcrs = dict(sets[0])
    unexpected = [f"PCR{i}" for i in pcrs if i not in MEASURED_PCRS]
    if unexpected:
        raise MeasurementsError(
            f"unexpected {', '.join(unexpected)} (allowed: PCR0, PCR1, PCR2, PCR8)"
        )
    short = [f"PCR{i}" for i, v in pcrs.items() if len(v) != PCR_SIZE]
    if short:
        raise MeasurementsError(f"{', '.join(short)} must be 96 hex digits (48 bytes)")
    missing = [f"PCR{i}" for i in (0, 1, 2) if i not in pcrs]
    if missing:
        raise MeasurementsError(f"measurements lack {', '.join(missing)}")
    return pcrs
