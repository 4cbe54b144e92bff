"""An NsmBackend that speaks the NSM API over a raw request/response transport.

The /dev/nsm driver is one such transport (one ioctl per request); the simulator's ``process`` is
another, which lets tests drive the simulator through exactly the bytes a real enclave sends.
"""

from __future__ import annotations

from collections.abc import Callable

from nitro_attest.nsm import messages as m
from nitro_attest.nsm.backend import NsmDescription, PcrDescription

Transport = Callable[[bytes], bytes]


class NsmClient:
    """NsmBackend over ``transport(request_bytes) -> response_bytes``."""

    def __init__(self, transport: Transport, *, close: Callable[[], None] | None = None) -> None:
        self._transport = transport
        self._close = close

    def call(self, request: m.Request) -> m.Response:
        """Encode ``request`` (limits enforced first), send it, decode the answer."""
        return m.decode_response(self._transport(m.encode_request(request)))

    def attestation(
        self,
        *,
        user_data: bytes | None = None,
        nonce: bytes | None = None,
        public_key: bytes | None = None,
    ) -> bytes:
        req = m.Attestation(user_data=user_data, nonce=nonce, public_key=public_key)
        return m.expect(self.call(req), m.AttestationResponse).document

    def describe_nsm(self) -> NsmDescription:
        return m.expect(self.call(m.DescribeNsm()), m.DescribeNsmResponse).description

    def describe_pcr(self, index: int) -> PcrDescription:
        r = m.expect(self.call(m.DescribePcr(index)), m.DescribePcrResponse)
        return PcrDescription(locked=r.lock, data=r.data)

    def extend_pcr(self, index: int, data: bytes) -> bytes:
        return m.expect(self.call(m.ExtendPcr(index, data)), m.ExtendPcrResponse).data

    def lock_pcr(self, index: int) -> None:
        m.expect(self.call(m.LockPcr(index)), m.LockPcrResponse)

    def lock_pcrs(self, range_: int) -> None:
        m.expect(self.call(m.LockPcrs(range_)), m.LockPcrsResponse)

    def get_random(self) -> bytes:
        return m.expect(self.call(m.GetRandom()), m.GetRandomResponse).random

    def close(self) -> None:
        if self._close is not None:
            self._close()
