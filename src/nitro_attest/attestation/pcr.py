"""PCR arithmetic: the one extend the NSM, the simulator and the EIF measurement all use."""

from __future__ import annotations

import hashlib

PCR_SIZE = 48  # SHA-384, the only bank a Nitro NSM has
ZERO_PCR = bytes(PCR_SIZE)


def extend(old: bytes, data: bytes) -> bytes:
    """The NSM's ExtendPCR: SHA-384(old || data)."""
    return hashlib.sha384(old + data).digest()


def extend_zero(data: bytes) -> bytes:
    """One extend of a zeroed register: how EIF PCRs and AWS's PCR3/PCR4 are formed."""
    return extend(ZERO_PCR, data)
