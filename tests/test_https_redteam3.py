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
import random
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


# --- SIGTERM drain with calls in flight and queued


def _shutdown(front: Any, drain: float) -> float:
    """``front.shutdown(drain)`` on its loop, from the test's thread; the seconds it took."""
    started = time.monotonic()
    asyncio.run_coroutine_threadsafe(front.shutdown(drain), front._loop).result(drain + 10)
    return time.monotonic() - started


def _rest(conn: ssl.SSLSocket) -> bytes:
    """All the connection still gives, to its end (a reset counts as the end)."""
    data = b""
    with contextlib.suppress(OSError):
        while piece := conn.recv(65536):
            data += piece
    return data


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_a_document_in_the_making_at_sigterm_is_answered_within_the_drain(
    sim_state: Path, loop: str
) -> None:
    import uvloop

    new_loop = uvloop.new_event_loop if loop == "uvloop" else asyncio.new_event_loop
    nsm = _GatedNsm(sim(sim_state), delay=0.3)
    with running_app() as app, running_front(nsm, app.address,  # type: ignore[arg-type]
                                             new_loop=new_loop) as front, \
            contextlib.closing(tls_connect(front.address)) as conn:
        conn.settimeout(10)
        conn.sendall(_attestation_request(b"d" * 16))
        _wait(lambda: nsm.entered == 1, "the call never reached the NSM")
        took = _shutdown(front.front, 3.0)
        assert took < 2.0, f"the drain took {took:.2f} s for a 0.3 s call"
        answer = _rest(conn)
        assert answer.startswith(b"HTTP/1.1 200 ") and b"attestation-document+cose" in answer
        assert front.front.active_connections == 0


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_calls_in_flight_and_queued_past_the_drain_write_nothing_and_cost_nothing(
    sim_state: Path, loop: str
) -> None:
    """The NSM holds its call past the drain: SIGTERM cuts both connections at the drain
    timeout (none waits for the NSM), nothing is written on them afterwards, the call queued
    behind is never made, and the front logged no traceback."""
    import uvloop

    new_loop = uvloop.new_event_loop if loop == "uvloop" else asyncio.new_event_loop
    nsm = _GatedNsm(sim(sim_state))
    with running_app() as app, running_front(nsm, app.address,  # type: ignore[arg-type]
                                             new_loop=new_loop) as front, \
            contextlib.closing(tls_connect(front.address)) as first, \
            contextlib.closing(tls_connect(front.address)) as second:
        nsm.release.clear()
        first.sendall(_attestation_request(b"1" * 16))
        _wait(lambda: nsm.entered == 1, "the first call never reached the NSM")
        second.sendall(_attestation_request(b"2" * 16))
        _wait(lambda: front.front._attester._calls.qsize() == 1, "the second never queued")
        for conn in (first, second):
            conn.settimeout(10)
        took = _shutdown(front.front, 0.3)
        assert took < 1.5, f"the drain took {took:.2f} s"
        nsm.release.set()
        _wait(lambda: len(nsm.made) == 1, "the call in the NSM never ended")
        time.sleep(0.1)  # its document back on the loop meanwhile
        assert _rest(first) == b"" and _rest(second) == b""
        assert nsm.made == [b"1" * 16]
        assert not any("Traceback" in line or "exception" in line.lower()
                       for line in front.logs.lines()), front.logs.lines()


# --- the answer written from the NSM's callback, the coroutine a turn later


def test_waiting_for_room_on_a_stream_closed_meanwhile_ends_at_once() -> None:
    """The attestation answer is written from the NSM's callback and the coroutine waits for
    room a turn of the loop later: if the connection is cut in between (the sweep's deadline,
    in the same turn), ``drained`` must not wait on a closed stream until the next deadline."""

    class Owner:
        deadline = 0.0

    async def scenario() -> None:
        stream = front_module._Stream(Owner())  # type: ignore[arg-type]
        stream.blocked = True  # the answer filled the write buffer
        stream.closed = True  # cut before the coroutine resumed: nothing will wake it
        with pytest.raises(front_module._Closed):
            await asyncio.wait_for(stream.drained(30.0), 2.0)

    asyncio.run(scenario())


# --- the NSM thread cannot start, or its call raises what is not an Exception


def test_a_thread_that_cannot_start_is_a_503_and_the_next_call_starts_one(
    sim_state: Path,
) -> None:
    """Starting a thread fails when the enclave is out of memory or threads (the operator's
    limits, a flood of connections): that attestation is a 503, not a traceback and a dropped
    connection, and the next one starts the thread, instead of queuing for a thread that never
    ran (every attestation after it hung, with no answer, until shed)."""
    real_start = threading.Thread.start
    failed: list[str] = []

    def start_once_failing(thread: threading.Thread) -> None:
        if thread.name.startswith("nsm") and not failed:
            failed.append(thread.name)
            raise RuntimeError("can't start new thread")
        real_start(thread)

    with running_app() as app, running_front(sim(sim_state), app.address) as front, \
            pytest.MonkeyPatch.context() as patch:
        patch.setattr(threading.Thread, "start", start_once_failing)
        for status in (b"503", b"200", b"200"):
            with contextlib.closing(tls_connect(front.address, timeout=5)) as conn:
                conn.sendall(_attestation_request(b"t" * 16))
                assert _read_answer(conn).startswith(b"HTTP/1.1 " + status)
        assert failed


def test_a_call_raising_what_is_not_an_exception_does_not_kill_the_nsm_thread() -> None:
    """A BaseException out of the backend (what the executor's worker caught and handed to
    its caller) must neither end the thread, leaving every later call waiting for good, nor
    reach the loop as such (a SystemExit out of a task stops the loop): the caller gets an
    NsmError (a 503) and the calls behind it are made."""

    class Exiting(_Signer):
        def attestation(self, *, nonce: bytes, public_key: bytes, **fields: Any) -> bytes:
            if nonce == b"x" * 16:
                raise SystemExit(3)
            return super().attestation(nonce=nonce, public_key=public_key)

    attester = Attester(Exiting(), b"spki")  # type: ignore[arg-type]

    async def go() -> bytes:
        with pytest.raises(NsmError):
            await asyncio.wait_for(attester.document(b"x" * 16), 5)
        return await asyncio.wait_for(attester.document(b"y" * 16), 5)

    try:
        assert asyncio.run(go()) == b"doc:" + b"y" * 16
    finally:
        attester.close()


# --- answers in order and to their own connection, whatever the mix


def _mixed_case(rng: random.Random, n: int) -> list[tuple[bytes, bytes | None, bytes]]:
    """``n`` pipelined requests: (request, the nonce of an attestation or None, the body
    expected otherwise)."""
    out: list[tuple[bytes, bytes | None, bytes]] = []
    for i in range(n):
        kind = rng.choice(["att", "att", "plain", "split", "post", "interim"])
        if kind == "att":
            nonce = rng.randbytes(rng.choice([8, 32, 64]))
            out.append((_attestation_request(nonce), nonce, b""))
        elif kind == "plain":
            path = b"/p%d" % i
            out.append((b"GET " + path + b" HTTP/1.1\r\nHost: x\r\n\r\n", None, path + b"\n"))
        elif kind in ("split", "interim"):
            out.append((b"GET /%s HTTP/1.1\r\nHost: x\r\n\r\n" % kind.encode(), None,
                        kind.encode() + b"\n"))
        else:
            size = rng.choice([0, 100, 70000])
            out.append((b"POST /up HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % size
                        + b"x" * size, None, b"%d" % size))
    return out


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_mixed_pipelines_on_concurrent_connections_keep_order_and_owner(
    sim_state: Path, loop: str
) -> None:
    """Four clients at once, each pipelining attestations and proxied requests (bodies,
    answers handed to the coroutine, interim answers) in random order and random pieces, on a
    slow NSM, while connections asking the same are reset mid-pipeline: every answer is its
    request's, in order, each document names its own connection's nonce and the front's key,
    and no connection is left behind (a seeded short run of the longer one in docs/https.md)."""
    import socket

    import uvloop

    from nitro_attest.attestation.document import parse_document

    from .test_https_callback_path import _answer, raw_app

    class SlowNsm:
        def __init__(self, inner: Any) -> None:
            self.inner = inner

        def attestation(self, **fields: Any) -> bytes:
            time.sleep(0.003)
            return bytes(self.inner.attestation(**fields))

        def __getattr__(self, name: str) -> Any:
            return getattr(self.inner, name)

    new_loop = uvloop.new_event_loop if loop == "uvloop" else asyncio.new_event_loop
    errors: list[BaseException] = []
    answered = [0]
    with raw_app() as app, running_front(SlowNsm(sim(sim_state)), app.address,  # type: ignore[arg-type]
                                         new_loop=new_loop) as front:
        spki = front.identity.spki_der

        def client(seed: int) -> None:
            rng = random.Random(seed)
            try:
                for _ in range(6):
                    case = _mixed_case(rng, rng.randint(2, 6))
                    data = b"".join(request for request, _, _ in case)
                    if rng.random() < 0.3:  # a parent's connection reset mid-pipeline
                        cut = tls_connect(front.address)
                        cut.sendall(data[: rng.randrange(1, len(data))])
                        cut.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                                       b"\x01\0\0\0\0\0\0\0")
                        cut.close()
                    with contextlib.closing(tls_connect(front.address)) as conn:
                        position = 0
                        while position < len(data):
                            size = rng.choice([1, 40, 5000, len(data)])
                            conn.sendall(data[position:position + size])
                            position += size
                        buffer = bytearray()
                        for _, nonce, body in case:
                            head, got = _answer(conn, buffer)
                            assert head.startswith(b"HTTP/1.1 200 "), head
                            if nonce is None:
                                assert got == body, (got[:40], body[:40])
                            else:
                                document = parse_document(got)
                                assert (document.nonce, document.public_key) == (nonce, spki)
                            answered[0] += 1
                        assert not buffer
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=client, args=(seed,)) for seed in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        assert not errors, errors[0]
        assert answered[0] >= 4 * 6 * 2
        _wait(lambda: front.front.active_connections == 0, "connections left behind")
