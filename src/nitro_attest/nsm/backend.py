"""The interface every NSM backend offers: the real /dev/nsm driver and the software simulator.

The enclave server only talks to this protocol, so tests swap the simulator in for the device.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from nitro_attest.errors import NsmError

__all__ = ["NsmBackend", "NsmDescription", "NsmError", "PcrDescription"]


@dataclass(frozen=True, slots=True)
class NsmDescription:
    """The NSM's DescribeNSM answer: version, module id, PCR count, locked PCRs, digest."""

    version_major: int
    version_minor: int
    version_patch: int
    module_id: str
    max_pcrs: int
    locked_pcrs: tuple[int, ...]
    digest: str


@dataclass(frozen=True, slots=True)
class PcrDescription:
    """The NSM's DescribePCR answer: whether the PCR is locked, and its value."""

    locked: bool
    data: bytes


class NsmBackend(Protocol):
    """The NSM calls an enclave makes: attestation, PCRs, randomness. ``/dev/nsm`` and the
    software simulator both provide it."""

    def attestation(
        self,
        *,
        user_data: bytes | None = None,
        nonce: bytes | None = None,
        public_key: bytes | None = None,
    ) -> bytes:
        """Return a signed attestation document (raw COSE_Sign1 bytes)."""
        ...

    def describe_nsm(self) -> NsmDescription:
        """Describe the NSM (DescribeNSM)."""
        ...

    def describe_pcr(self, index: int) -> PcrDescription:
        """Read PCR ``index`` and whether it is locked (DescribePCR)."""
        ...

    def extend_pcr(self, index: int, data: bytes) -> bytes:
        """Extend PCR ``index`` with ``data``; return the new value."""
        ...

    def lock_pcr(self, index: int) -> None:
        """Lock PCR ``index``: no extend changes it until the enclave restarts."""
        ...

    def lock_pcrs(self, range_: int) -> None:
        """Lock PCRs ``[0, range_)``."""
        ...

    def get_random(self) -> bytes:
        """Random bytes from the NSM's generator."""
        ...

    def close(self) -> None:
        """Release the device or the simulator's state."""
        ...
