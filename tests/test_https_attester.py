"""The front's Attester: one NSM call at a time on a thread of its own, each document handed
back to the loop that asked. What the parent can do to it: ask many at once (they queue, one
call at a time, each answer to its own caller), drop its connections mid-call (the calls behind
it still come), and make the NSM fail (503, no hang); a shutdown refuses new calls.

Threat model: the parent opens connections and asks the attestation path at will; the NSM
(/dev/nsm, or the software one standing for it) is trusted but can fail or be slow."""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from nitro_attest.errors import NsmError
from nitro_attest.https.front import Attester

from .httpskit import running_app, running_front, sim, tls_connect


class _CountingNsm:
    """Signs after ``delay`` s; records the nonces in the order made and the most calls seen
    at once."""

    def __init__(self, delay: float = 0.01) -> None:
        self.delay = delay
        self.nonces: list[bytes] = []
        self.active = 0
        self.most = 0
        self.release = threading.Event()
        self.release.set()
        self._lock = threading.Lock()

    def attestation(self, *, nonce: bytes, public_key: bytes, **fields: Any) -> bytes:
        with self._lock:
            self.active += 1
            self.most = max(self.most, self.active)
        try:
            self.release.wait(10)
            time.sleep(self.delay)
            self.nonces.append(nonce)
            return b"doc:" + nonce + b":" + public_key
        finally:
            with self._lock:
                self.active -= 1


def test_calls_are_made_one_at_a_time_in_order_each_to_its_caller() -> None:
    nsm = _CountingNsm()
    attester = Attester(nsm, b"spki")  # type: ignore[arg-type]
    nonces = [bytes([i]) * 16 for i in range(8)]

    async def go() -> list[bytes]:
        return await asyncio.gather(*(attester.document(n) for n in nonces))

    try:
        got = asyncio.run(go())
    finally:
        attester.close()
    assert got == [b"doc:" + n + b":spki" for n in nonces]
    assert nsm.nonces == nonces
    assert nsm.most == 1


def test_an_nsm_failure_is_raised_to_its_caller_and_the_next_call_works() -> None:
    class Failing(_CountingNsm):
        def attestation(self, *, nonce: bytes, public_key: bytes, **fields: Any) -> bytes:
            if nonce == b"f" * 16:
                raise NsmError("InternalError", "the device said no")
            return super().attestation(nonce=nonce, public_key=public_key)

    attester = Attester(Failing(), b"spki")  # type: ignore[arg-type]

    async def go() -> bytes:
        with pytest.raises(NsmError, match="the device said no"):
            await attester.document(b"f" * 16)
        return await attester.document(b"g" * 16)

    try:
        assert asyncio.run(go()) == b"doc:" + b"g" * 16 + b":spki"
    finally:
        attester.close()


def test_a_caller_cancelled_mid_call_leaves_the_others_served() -> None:
    nsm = _CountingNsm()
    nsm.release.clear()  # the first call waits in the NSM until released
    attester = Attester(nsm, b"spki")  # type: ignore[arg-type]

    async def go() -> bytes:
        first = asyncio.ensure_future(attester.document(b"a" * 16))
        while nsm.active == 0:  # the first call is in the NSM
            await asyncio.sleep(0.005)
        first.cancel()  # its connection was dropped
        second = asyncio.ensure_future(attester.document(b"b" * 16))
        nsm.release.set()
        with pytest.raises(asyncio.CancelledError):
            await first
        return await asyncio.wait_for(second, 5)

    try:
        assert asyncio.run(go()) == b"doc:" + b"b" * 16 + b":spki"
    finally:
        attester.close()
    assert nsm.nonces == [b"a" * 16, b"b" * 16]


def test_closed_refuses_new_calls_and_its_thread_ends() -> None:
    attester = Attester(_CountingNsm(), b"spki")  # type: ignore[arg-type]

    async def one() -> bytes:
        return await attester.document(b"c" * 16)

    assert asyncio.run(one()).startswith(b"doc:")
    thread = attester._thread
    assert thread is not None and thread.is_alive() and thread.daemon
    attester.close()
    thread.join(5)
    assert not thread.is_alive()
    with pytest.raises(NsmError, match="shutting down"):
        asyncio.run(one())


def test_a_failing_nsm_is_a_503_and_the_front_serves_on(sim_state: Path) -> None:
    class FailOnce:
        def __init__(self) -> None:
            self.inner = sim(sim_state)
            self.failed = False

        def attestation(self, **fields: Any) -> bytes:
            if not self.failed:
                self.failed = True
                raise NsmError("InternalError", "the device said no")
            return self.inner.attestation(**fields)

        def __getattr__(self, name: str) -> Any:
            return getattr(self.inner, name)

    with running_app() as app, running_front(FailOnce(), app.address) as front:  # type: ignore[arg-type]
        request = b"GET /.well-known/nitro-attestation?nonce=" + b"ab" * 16 + b" HTTP/1.1\r\n" \
            b"Host: x\r\n\r\n"
        for status in (b"503", b"200"):
            with tls_connect(front.address) as conn:
                conn.sendall(request)
                answer = b""
                while b"\r\n\r\n" not in answer:
                    piece = conn.recv(65536)
                    assert piece, answer
                    answer += piece
                assert answer.startswith(b"HTTP/1.1 " + status), answer[:80]
