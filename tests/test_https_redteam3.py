"""Red team of the front's own NSM thread (``Attester``: a queue, one call at a time, each
document handed back with one ``call_soon_threadsafe`` whose callback writes the answer).

Threat model: the parent opens any number of connections, asks the attestation path on each,
and drops them (or has them shed by newcomers) while their calls wait in the queue; the NSM is
trusted but slow (the real /dev/nsm waits on the hypervisor). What the front must keep: a
dropped connection's call costs the NSM nothing once dropped (as the executor's cancelled work
items did), and the queue holds nothing of a dropped connection (its buffers and transport)."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import ssl
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from nitro_attest.errors import NsmError
from nitro_attest.https import front as front_module
from nitro_attest.https.front import Attester

from .httpskit import running_app, running_front, sim, tls_connect


class _GatedNsm:
    """The software NSM behind a gate (``release``) and ``delay`` s per document; counts the
    documents made, and whether a call is in the NSM."""

    def __init__(self, inner: Any, delay: float = 0.0) -> None:
        self.inner = inner
        self.delay = delay
        self.release = threading.Event()
        self.release.set()
        self.entered = 0
        self.made: list[bytes] = []

    def attestation(self, **fields: Any) -> bytes:
        self.entered += 1
        self.release.wait(20)
        time.sleep(self.delay)
        self.made.append(fields["nonce"])
        return bytes(self.inner.attestation(**fields))

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


class _Signer:
    """A stand-in NSM for the Attester alone: ``doc:NONCE``."""

    def attestation(self, *, nonce: bytes, public_key: bytes, **fields: Any) -> bytes:
        return b"doc:" + nonce


def _attestation_request(nonce: bytes) -> bytes:
    return (b"GET /.well-known/nitro-attestation?nonce=" + nonce.hex().encode()
            + b" HTTP/1.1\r\nHost: x\r\n\r\n")


def _wait(condition: Any, what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.005)


def _read_answer(conn: ssl.SSLSocket) -> bytes:
    data = b""
    while b"\r\n\r\n" not in data:
        piece = conn.recv(65536)
        assert piece, data
        data += piece
    return data


# --- a dropped caller's call is not made, and the queue holds nothing of it


def test_calls_of_callers_dropped_while_queued_are_not_made() -> None:
    """The executor skipped a cancelled work item; the Attester's thread must too, or a parent
    that queues calls and drops them keeps the NSM busy for nothing, ahead of everyone."""
    nsm = _GatedNsm(_Signer())
    nsm.release.clear()
    attester = Attester(nsm, b"spki")  # type: ignore[arg-type]

    async def go() -> bytes:
        first = asyncio.ensure_future(attester.document(b"a" * 16))
        while not nsm.entered:
            await asyncio.sleep(0.005)
        dropped = [asyncio.ensure_future(attester.document(bytes([i]) * 16)) for i in range(50)]
        await asyncio.sleep(0)  # all queued
        for task in dropped:
            task.cancel()
        live = asyncio.ensure_future(attester.document(b"z" * 16))
        await asyncio.sleep(0)
        nsm.release.set()
        assert await asyncio.wait_for(first, 5) == b"doc:" + b"a" * 16
        return await asyncio.wait_for(live, 5)

    try:
        assert asyncio.run(go()) == b"doc:" + b"z" * 16
    finally:
        attester.close()
    assert nsm.made == [b"a" * 16, b"z" * 16]


def test_the_queue_does_not_hold_a_dropped_callers_answer_callback() -> None:
    """``on_ready`` holds the connection (its stream, buffers, transport): once the caller is
    gone the queue must not keep it alive until the NSM thread reaches the call."""
    nsm = _GatedNsm(_Signer())
    nsm.release.clear()
    attester = Attester(nsm, b"spki")  # type: ignore[arg-type]

    class Held:
        alive = 0

        def __init__(self) -> None:
            Held.alive += 1

        def __del__(self) -> None:
            Held.alive -= 1

        def __call__(self, document: bytes) -> None:
            raise AssertionError("a dropped caller's callback was called")

    async def go() -> int:
        first = asyncio.ensure_future(attester.document(b"a" * 16))
        while not nsm.entered:
            await asyncio.sleep(0.005)
        tasks = [asyncio.ensure_future(attester.document(bytes([i]) * 16, on_ready=Held()))
                 for i in range(20)]
        await asyncio.sleep(0)
        for task in tasks:
            task.cancel()
        while not all(task.done() for task in tasks):
            await asyncio.sleep(0)
        del tasks, task  # (their CancelledError's traceback holds the frames)
        gc.collect()
        alive = Held.alive
        nsm.release.set()
        await asyncio.wait_for(first, 5)
        return alive

    try:
        assert asyncio.run(go()) == 0
    finally:
        attester.close()


def test_calls_still_queued_at_close_are_refused_not_made() -> None:
    """``close`` says the thread ends after the call it is in: calls still queued then are
    refused (NsmError, a 503 at the front), not made one by one after the shutdown."""
    nsm = _GatedNsm(_Signer())
    nsm.release.clear()
    attester = Attester(nsm, b"spki")  # type: ignore[arg-type]

    async def go() -> list[object]:
        first = asyncio.ensure_future(attester.document(b"a" * 16))
        while not nsm.entered:
            await asyncio.sleep(0.005)
        queued = [asyncio.ensure_future(attester.document(bytes([i]) * 16)) for i in range(3)]
        await asyncio.sleep(0)
        attester.close()
        nsm.release.set()
        return list(await asyncio.wait_for(
            asyncio.gather(first, *queued, return_exceptions=True), 5))

    outcomes = asyncio.run(go())
    assert outcomes[0] == b"doc:" + b"a" * 16  # the call it was in
    for outcome in outcomes[1:]:
        assert isinstance(outcome, NsmError) and "shutting down" in str(outcome)
    assert nsm.made == [b"a" * 16]


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_shed_connections_calls_do_not_delay_a_newcomer(sim_state: Path, loop: str) -> None:
    """The parent holds the NSM busy, then opens connection after connection, each asking the
    attestation path and each shedding the oldest (``max_connections`` 4): 40 calls of shed
    connections queue. A newcomer's document must wait only for the call in the NSM and the
    live connections' calls (as with the executor, which skipped cancelled work items), not for
    the 40 dropped ones; and the dropped connections' streams are not held by the queue."""
    import uvloop

    new_loop = uvloop.new_event_loop if loop == "uvloop" else asyncio.new_event_loop
    nsm = _GatedNsm(sim(sim_state), delay=0.02)
    limit = 4
    with running_app() as app, running_front(nsm, app.address,  # type: ignore[arg-type]
                                             new_loop=new_loop, max_connections=limit) as front:
        attester = front.front._attester
        nsm.release.clear()
        socks: list[ssl.SSLSocket] = []
        try:
            first = tls_connect(front.address)
            socks.append(first)
            first.sendall(_attestation_request(b"\xff" * 16))
            _wait(lambda: nsm.entered == 1, "the first call never reached the NSM")
            for i in range(40):
                conn = tls_connect(front.address)  # sheds the oldest (all are busy)
                socks.append(conn)
                conn.sendall(_attestation_request(i.to_bytes(2, "big") * 8))
                _wait(lambda i=i: attester._calls.qsize() >= i + 1, f"call {i} never queued")
            assert front.front.active_connections == limit
            gc.collect()
            streams = sum(isinstance(o, front_module._Stream) for o in gc.get_objects())
            # client and app side of each live connection, and the one being shed last
            assert streams <= 2 * limit + 2, f"{streams} streams alive for {limit} connections"
            nsm.release.set()
            with contextlib.closing(tls_connect(front.address)) as newcomer:
                newcomer.settimeout(10)
                newcomer.sendall(_attestation_request(b"n" * 16))
                assert _read_answer(newcomer).startswith(b"HTTP/1.1 200 ")
            # the call in the NSM, the live connections' (one shed by the newcomer meanwhile,
            # perhaps after its call was made), and the newcomer's own
            assert len(nsm.made) <= 1 + limit + 1, f"{len(nsm.made)} documents made"
        finally:
            nsm.release.set()
            for conn in socks:
                with contextlib.suppress(OSError):
                    conn.close()
