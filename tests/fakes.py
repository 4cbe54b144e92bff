"""The one fake NSM of the suite, and the measurements every shared simulator state carries.

``MEASUREMENTS`` are the PCRs of conftest's ``sim_state`` and ``sim_debug_state``; tests build
their expectations from it. ``FakeNsm`` stands in for an NSM backend without a simulator state.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import cbor2

from nitro_attest.attestation.pcr import extend
from nitro_attest.nsm.backend import NsmDescription, NsmError, PcrDescription

from . import chainfactory as cf

MEASUREMENTS = {0: bytes([0xA0]) * 48, 1: bytes([0xA1]) * 48, 2: bytes([0xA2]) * 48}
INSTANCE_ID = "i-0a0a0a0a0a0a0a0a0"

# What FakeNsm signs into its documents (a chainfactory chain, not the simulator's).
GOOD_PCRS = {i: (bytes([i + 1]) * 48 if i < 3 else bytes(48)) for i in range(16)}
DEBUG_PCRS = {i: bytes(48) for i in range(16)}
EXPECTED = {0: GOOD_PCRS[0], 1: GOOD_PCRS[1], 2: GOOD_PCRS[2]}


class FakeNsm:
    """An NSM backend that records every ``attestation`` call.

    By default it signs real documents with the chain factory's test chain (a ``Verifier`` with
    ``self.chain.root_pem`` accepts them). ``echo=True`` answers
    ``b"FAKE|nonce|user_data|public_key"`` instead: for protocol and load tests that only need to
    see which request was answered, with no signing cost. Either way the nonce ``b"refuse"``
    makes the NSM refuse (``NsmError``) and ``b"crash"`` makes it fail with an internal error.
    """

    def __init__(
        self,
        *,
        pcrs: Mapping[int, bytes] = GOOD_PCRS,
        drop_public_key: bool = False,
        echo: bool = False,
    ) -> None:
        self.chain = cf.chain()
        self.pcrs = dict(pcrs)
        self.drop_public_key = drop_public_key
        self.echo = echo
        self.calls: list[dict[str, Any]] = []
        # PCR16..31 as the NSM keeps them: untouched and unlocked at boot, extendable until
        # locked; a locked one is carried in every later document (serve locks PCR16).
        self.registers = {i: bytes(48) for i in range(16, 32)}
        self.locked: set[int] = set()

    def attestation(
        self,
        *,
        user_data: bytes | None = None,
        nonce: bytes | None = None,
        public_key: bytes | None = None,
    ) -> bytes:
        self.calls.append({"user_data": user_data, "nonce": nonce, "public_key": public_key})
        if nonce == b"refuse":
            raise NsmError("InputTooLarge", "fake refusal")
        if nonce == b"crash":
            raise RuntimeError("secret-internal-detail")
        if self.echo:
            fields = (nonce or b"", user_data or b"", public_key or b"")
            return b"|".join((b"FAKE", *fields))
        return self.chain.document(
            pcrs={**self.pcrs, **{i: self.registers[i] for i in sorted(self.locked)}},
            nonce=nonce,
            user_data=user_data,
            public_key=None if self.drop_public_key else public_key,
        )

    def describe_nsm(self) -> NsmDescription:
        return NsmDescription(
            1, 0, 0, "i-0123456789abcdef0-enc0123456789abcdef", 32, (0, 1), "SHA384"
        )

    def describe_pcr(self, index: int) -> PcrDescription:
        if index < 16:
            return PcrDescription(locked=True, data=bytes([index]) * 48)
        return PcrDescription(locked=index in self.locked, data=self.registers[index])

    def extend_pcr(self, index: int, data: bytes) -> bytes:
        if index < 16 or index in self.locked:
            raise NsmError("ReadOnlyIndex", "fake")
        self.registers[index] = extend(self.registers[index], data)
        return self.registers[index]

    def lock_pcr(self, index: int) -> None:
        if index < 16 or index in self.locked:
            raise NsmError("ReadOnlyIndex", "fake")
        self.locked.add(index)

    def lock_pcrs(self, range_: int) -> None:
        pass

    def get_random(self) -> bytes:
        return b"\x04" * 32

    def close(self) -> None:
        pass


def payload(document: bytes) -> dict[str, Any]:
    """The signed payload of a document, unverified: to check which request a document answers."""
    outer = cbor2.loads(document)
    sign1 = outer.value if isinstance(outer, cbor2.CBORTag) else outer
    fields: dict[str, Any] = cbor2.loads(sign1[2])
    return fields
