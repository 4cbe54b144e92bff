"""The front's Attester: one NSM call at a time on a thread of its own, each document handed
back to the loop that asked, where the front writes its answer before its coroutine resumes.
What the parent can do to it: ask many at once (they queue, one call at a time, each answer to
its own caller and connection, in order), drop its connections mid-call (the calls behind it
still come), read nothing (the answers wait, bounded), and make the NSM fail (503, no hang); a
shutdown refuses new calls.

Threat model: the parent opens connections and asks the attestation path at will; the NSM
(/dev/nsm, or the software one standing for it) is trusted but can fail or be slow."""

from __future__ import annotations

import asyncio
import re
import socket
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from nitro_attest.errors import NsmError
from nitro_attest.https.front import Attester

from .httpskit import POLICY, running_app, running_front, sim, tls_connect


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


def test_on_ready_runs_on_the_loop_before_the_caller_resumes() -> None:
    attester = Attester(_CountingNsm(), b"spki")  # type: ignore[arg-type]
    seen: list[tuple[str, bytes, int]] = []

    async def go() -> None:
        loop_thread = threading.get_ident()
        got = await attester.document(
            b"r" * 16, on_ready=lambda d: seen.append(("ready", d, threading.get_ident()))
        )
        seen.append(("resumed", got, loop_thread))

    try:
        asyncio.run(go())
    finally:
        attester.close()
    document = b"doc:" + b"r" * 16 + b":spki"
    (ready, resumed) = seen
    assert ready == ("ready", document, resumed[2])  # on the loop's thread, first
    assert resumed[:2] == ("resumed", document)


def test_on_ready_is_not_called_for_a_failure_or_a_cancelled_caller() -> None:
    class Failing(_CountingNsm):
        def attestation(self, *, nonce: bytes, public_key: bytes, **fields: Any) -> bytes:
            if nonce == b"f" * 16:
                raise NsmError("InternalError", "the device said no")
            return super().attestation(nonce=nonce, public_key=public_key)

    nsm = Failing()
    attester = Attester(nsm, b"spki")  # type: ignore[arg-type]
    called: list[bytes] = []

    async def go() -> None:
        with pytest.raises(NsmError):
            await attester.document(b"f" * 16, on_ready=called.append)
        nsm.release.clear()
        task = asyncio.ensure_future(attester.document(b"c" * 16, on_ready=called.append))
        while nsm.active == 0:
            await asyncio.sleep(0.005)
        task.cancel()
        nsm.release.set()
        with pytest.raises(asyncio.CancelledError):
            await task
        # the call behind it still comes, to its own on_ready
        await attester.document(b"d" * 16, on_ready=called.append)

    try:
        asyncio.run(go())
    finally:
        attester.close()
    assert called == [b"doc:" + b"d" * 16 + b":spki"]


def test_on_ready_raising_is_raised_to_the_caller() -> None:
    attester = Attester(_CountingNsm(), b"spki")  # type: ignore[arg-type]

    def broken(document: bytes) -> None:
        raise RuntimeError("cannot write")

    async def go() -> None:
        with pytest.raises(RuntimeError, match="cannot write"):
            await attester.document(b"e" * 16, on_ready=broken)

    try:
        asyncio.run(go())
    finally:
        attester.close()


def _attestation_request(nonce: bytes) -> bytes:
    return (b"GET /.well-known/nitro-attestation?nonce=" + nonce.hex().encode()
            + b" HTTP/1.1\r\nHost: x\r\n\r\n")


def test_pipelined_attestations_to_a_client_reading_late_come_in_order(sim_state: Path) -> None:
    """1000 attestation requests at once (some 4.7 MB of answers) from a client with a small
    receive window that reads nothing for a while: the front's writes back up past its 64 KiB
    limit (it waits to write the next), and then every answer arrives, in order, each naming
    its own nonce and the front's key."""
    from nitro_attest.attestation.verifier import Verifier
    from nitro_attest.https import front as front_module
    from nitro_attest.https.client import client_context

    verifier = Verifier(root_pem=(sim_state / "root.pem").read_bytes())
    nonces = [i.to_bytes(2, "big") * 16 for i in range(1000)]
    paused: list[int] = []
    buffered: list[int] = []  # the front's TLS write buffer before each answer
    pause, write_now = front_module._Stream.pause_writing, front_module._Stream.write_now

    def noted(stream: Any) -> None:
        paused.append(1)
        pause(stream)

    def measured(stream: Any, data: bytes) -> bool:
        buffered.append(stream.transport.get_write_buffer_size())
        return bool(write_now(stream, data))

    with running_app() as app, running_front(sim(sim_state), app.address) as front, \
            pytest.MonkeyPatch.context() as patch:
        patch.setattr(front_module._Stream, "pause_writing", noted)
        patch.setattr(front_module._Stream, "write_now", measured)
        raw = socket.socket()
        raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        raw.settimeout(10)
        raw.connect((front.address.host, front.address.port))
        with client_context().wrap_socket(raw, server_hostname=None) as conn:
            conn.sendall(b"".join(_attestation_request(n) for n in nonces))
            time.sleep(0.5)  # the front's writes back up meanwhile
            data = b""
            documents: list[bytes] = []
            while len(documents) < len(nonces):
                piece = conn.recv(65536)
                assert piece, f"closed after {len(documents)} answers"
                data += piece
                while (end := data.find(b"\r\n\r\n")) >= 0:
                    head = data[:end]
                    length = int(re.search(rb"content-length: (\d+)", head, re.I).group(1))
                    if len(data) < end + 4 + length:
                        break
                    assert head.startswith(b"HTTP/1.1 200 "), head
                    documents.append(data[end + 4:end + 4 + length])
                    data = data[end + 4 + length:]
        assert paused, "the front's writes never backed up: the test did not test that"
        # each answer waited for room: what the front holds stays at its write limit
        assert len(buffered) == len(nonces) and max(buffered) <= front_module.PIECE
        for nonce, document in zip(nonces, documents, strict=True):
            verified = verifier.verify(
                document, policy=POLICY.__class__(pcr_sets=POLICY.pcr_sets, nonce=nonce,
                                                  public_key=front.identity.spki_der))
            assert verified.document.nonce == nonce


def test_a_client_gone_during_the_nsm_call_leaves_the_front_serving(sim_state: Path) -> None:
    class Slow:
        def __init__(self) -> None:
            self.inner = sim(sim_state)

        def attestation(self, **fields: Any) -> bytes:
            time.sleep(0.3)
            return self.inner.attestation(**fields)

        def __getattr__(self, name: str) -> Any:
            return getattr(self.inner, name)

    with running_app() as app, running_front(Slow(), app.address) as front:  # type: ignore[arg-type]
        gone = tls_connect(front.address)
        gone.sendall(_attestation_request(b"g" * 32))
        time.sleep(0.05)  # the front is in the NSM call
        gone.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\0\0\0\0\0\0\0")
        gone.close()  # a reset
        with tls_connect(front.address) as conn:
            conn.sendall(_attestation_request(b"h" * 32))
            answer = b""
            while b"\r\n\r\n" not in answer:
                piece = conn.recv(65536)
                assert piece
                answer += piece
            assert answer.startswith(b"HTTP/1.1 200 ")
