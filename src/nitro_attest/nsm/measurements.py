"""Reading nitro-cli build-enclave measurements, and PCR arithmetic shared by the simulator.

build-enclave prints ``{"Measurements": {"HashAlgorithm": "Sha384 { ... }", "PCR0": hex96,
"PCR1": ..., "PCR2": ..., ["PCR8": ...]}}``; ``nitro-cli describe-eif`` carries the same object.
"""

from __future__ import annotations

import hashlib
import json
import re
from typing import Any

PCR_SIZE = 48
ZERO_PCR = bytes(PCR_SIZE)
MAX_MEASUREMENTS_FILE = 64 * 1024
_PCR_KEY = re.compile(r"PCR(\d{1,2})")
MEASURED_PCRS = frozenset({0, 1, 2, 8})  # what an EIF measures; the rest come from the platform


class MeasurementsError(ValueError):
    """The measurements file is unreadable, malformed or empty."""


def extend(old: bytes, data: bytes) -> bytes:
    """The NSM's ExtendPCR: SHA-384(old || data), with the raw data."""
    return hashlib.sha384(old + data).digest()


def platform_pcr(value: str) -> bytes:
    """AWS's PCR3 (role ARN) / PCR4 (instance id) formula: SHA384(0^48 || utf8(value))."""
    return extend(ZERO_PCR, value.encode("utf-8"))


def parse_measurements(text: str | bytes) -> dict[int, bytes]:
    """PCR index -> 48-byte value from build-enclave / describe-eif JSON.

    PCR0, PCR1 and PCR2 are required; PCR8 is optional. A measurements object carrying no PCR is an
    error, never "no constraint".
    """
    if len(text) > MAX_MEASUREMENTS_FILE:
        raise MeasurementsError(f"measurements larger than {MAX_MEASUREMENTS_FILE} bytes")
    try:
        doc: Any = json.loads(text)
    except (ValueError, UnicodeDecodeError) as exc:
        raise MeasurementsError(f"measurements are not valid JSON: {exc}") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("Measurements"), dict):
        raise MeasurementsError('expected an object {"Measurements": {"PCR0": ..., ...}}')
    raw: dict[str, Any] = doc["Measurements"]
    algo = raw.get("HashAlgorithm")
    if algo is not None and not (isinstance(algo, str) and algo.startswith("Sha384")):
        raise MeasurementsError(f"HashAlgorithm must be Sha384, got {algo!r:.40}")
    pcrs: dict[int, bytes] = {}
    for key, value in raw.items():
        if key == "HashAlgorithm":
            continue
        match = _PCR_KEY.fullmatch(key)
        if match is None or int(match.group(1)) not in MEASURED_PCRS:
            raise MeasurementsError(f"unexpected key {key!r:.20} (allowed: PCR0, PCR1, PCR2, PCR8)")
        if not isinstance(value, str) or not re.fullmatch(r"[0-9a-fA-F]{96}", value):
            raise MeasurementsError(f"{key} must be 96 hex digits (48 bytes)")
        pcrs[int(match.group(1))] = bytes.fromhex(value)
    if not pcrs:
        raise MeasurementsError("measurements are empty: no PCR given")
    missing = [f"PCR{i}" for i in (0, 1, 2) if i not in pcrs]
    if missing:
        raise MeasurementsError(f"measurements lack {', '.join(missing)}")
    return pcrs
