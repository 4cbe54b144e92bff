"""The front on uvloop (what `https serve` runs when uvloop is installed) keeps its behaviour:
attested requests, bodies, keep-alive, and the hostile-client limits; and the NSM call is made
where the Attester says (the software NSM's on the loop, any other off it).

Threat model: as tests/test_https_hostile.py (anyone who reaches the port, the parent included,
sends anything); the loop is an implementation detail the parent must not be able to exploit."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import threading
import time
from pathlib import Path
from typing import Any

import uvloop

from nitro_attest.attestation.verifier import Verifier
from nitro_attest.event_loop import fast_loop_factory
from nitro_attest.https.client import fetch
from nitro_attest.https.front import Attester

from .httpskit import POLICY, running_app, running_front, sim, tls_connect


class _ThreadNotingNsm:
    """Records the thread each attestation runs on."""

    def __init__(self) -> None:
        self.threads: list[int] = []

    def attestation(self, **fields: Any) -> bytes:
        self.threads.append(threading.get_ident())
        return b"document"


def _document_thread(on_loop: bool) -> tuple[int, int]:
    nsm = _ThreadNotingNsm()
    attester = Attester(nsm, b"spki", on_loop=on_loop)  # type: ignore[arg-type]

    async def go() -> bytes:
        return await attester.document(b"n" * 16)

    try:
        assert asyncio.run(go()) == b"document"
    finally:
        attester.close()
    return nsm.threads[0], threading.get_ident()


def test_the_nsm_is_called_off_the_loop_unless_told() -> None:
    made_on, loop_thread = _document_thread(on_loop=False)
    assert made_on != loop_thread
    made_on, loop_thread = _document_thread(on_loop=True)
    assert made_on == loop_thread


def test_serve_runs_on_uvloop_when_installed() -> None:
    assert fast_loop_factory() is uvloop.new_event_loop


def test_attested_requests_and_bodies_on_uvloop(sim_state: Path) -> None:
    verifier = Verifier(root_pem=(sim_state / "root.pem").read_bytes())
    with running_app() as app, running_front(
        sim(sim_state), app.address, new_loop=uvloop.new_event_loop, nsm_on_loop=True
    ) as front:
        got: list[bytes] = []
        response, verified = fetch(front.url + "/ok", verifier=verifier, policy=POLICY,
                                   sink=got.append, timeout=10)
        assert response.status == 200 and b"".join(got) == b"hello /ok\n"
        assert verified.document.public_key == front.identity.spki_der
        body = bytes(range(256)) * 4096  # 1 MiB up, through the front's pieces
        got.clear()
        response, _ = fetch(front.url + "/upload", verifier=verifier, policy=POLICY,
                            sink=got.append, method="POST", body=body, timeout=10)
        assert response.status == 200
        assert b"".join(got).startswith(f"{len(body)} ".encode())
        assert app.seen[-1].size == len(body)
        # keep-alive: two requests on one raw TLS connection, the second after the first's answer
        with contextlib.closing(tls_connect(front.address)) as conn:
            for path in (b"/a", b"/b"):
                conn.sendall(b"GET " + path + b" HTTP/1.1\r\nHost: x\r\n\r\n")
                answer = b""
                while not answer.endswith(b"hello " + path + b"\n"):
                    data = conn.recv(65536)
                    assert data, answer
                    answer += data
                assert answer.startswith(b"HTTP/1.1 200 ")
    assert [s.path for s in app.seen[-2:]] == ["/a", "/b"]


def test_slow_and_huge_heads_are_refused_on_uvloop(sim_state: Path) -> None:
    with running_app() as app, running_front(
        sim(sim_state), app.address, new_loop=uvloop.new_event_loop, header_timeout=0.5,
        max_header_bytes=2048,
    ) as front:
        slow = tls_connect(front.address)
        slow.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n")  # never completed
        huge = tls_connect(front.address)
        huge.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 4096 + b"\r\n\r\n")
        started = time.monotonic()
        for sock, status in ((slow, b" 408 "), (huge, b" 431 ")):
            sock.settimeout(5)
            answer = b""
            with contextlib.suppress(ssl.SSLError, OSError):
                while data := sock.recv(65536):
                    answer += data
            sock.close()
            assert answer.startswith(b"HTTP/1.1" + status), answer[:80]
        assert time.monotonic() - started < 4.5
    assert not app.seen
