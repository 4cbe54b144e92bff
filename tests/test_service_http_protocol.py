"""The service's HTTP protocol (one socket write per response) and where appraisals run. The
client is the parent: it pipelines, asks for 100-continue, closes the connection, drops it."""

from __future__ import annotations

import asyncio
import base64
import json
import socket
import struct
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import uvicorn
from fastapi.testclient import TestClient

from nitro_attest.nsm.simulator import SimulatedNsm
from nitro_attest.service import app as app_module
from nitro_attest.service.app import ServiceConfig, create_app
from nitro_attest.service.ear import EarSigner
from nitro_attest.service.http_protocol import GatheringHttpToolsProtocol, _GatheringTransport
from nitro_attest.service.sessions import MemoryStore

from .servicekit import MEDIA, check_ear, free_port, wait_until, write_policies

NEW = "/challenge-response/v1/newSession"
RESET_ON_CLOSE = struct.pack("ii", 1, 0)  # SO_LINGER on, 0 s: close() sends a RST


@pytest.fixture(scope="module")
def sim(sim_state: Path) -> SimulatedNsm:
    return SimulatedNsm.open(sim_state)


def _config(sim: SimulatedNsm, tmp: Path) -> ServiceConfig:
    return ServiceConfig(write_policies(tmp / "p.json"), EarSigner.generate(), MemoryStore,
                         root_pem=sim.root_pem)  # fmt: skip


@contextmanager
def _serve(sim: SimulatedNsm, tmp: Path) -> Iterator[int]:
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(
        create_app(_config(sim, tmp)), host="127.0.0.1", port=port, log_level="warning",
        http=GatheringHttpToolsProtocol))  # fmt: skip
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    wait_until(lambda: server.started, what="uvicorn in a thread")
    try:
        yield port
    finally:
        server.should_exit = True
        thread.join(10)


def _read_response(sock: socket.socket, buf: bytearray) -> tuple[int, dict[str, str], bytes]:
    """One HTTP/1.1 response with a Content-Length from ``sock``; ``buf`` keeps what follows."""
    while b"\r\n\r\n" not in buf:
        chunk = sock.recv(65536)
        assert chunk, f"connection closed inside a response head: {bytes(buf)!r}"
        buf += chunk
    head, _, rest = bytes(buf).partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (x.partition(":") for x in lines[1:])}
    length = int(headers.get("content-length", "0"))
    while len(rest) < length:
        chunk = sock.recv(65536)
        assert chunk, "connection closed inside a response body"
        rest += chunk
    buf[:] = rest[length:]
    return int(lines[0].split()[1]), headers, rest[:length]


def test_pipelined_requests_get_whole_responses_in_order(sim: SimulatedNsm,
                                                         tmp_path: Path) -> None:  # fmt: skip
    with _serve(sim, tmp_path) as port, socket.create_connection(("127.0.0.1", port), 5) as s:
        s.sendall(f"POST {NEW}?nonceSize=8 HTTP/1.1\r\nHost: x\r\n\r\n"
                  f"POST {NEW}?nonceSize=64 HTTP/1.1\r\nHost: x\r\n\r\n"
                  "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n".encode())  # fmt: skip
        buf = bytearray()
        first, second, third = (_read_response(s, buf) for _ in range(3))
        assert (first[0], second[0], third[0]) == (201, 201, 200)
        assert len(json.loads(first[2])["nonce"]) == 11  # 8 bytes, base64url
        assert len(json.loads(second[2])["nonce"]) == 86  # 64 bytes
        assert json.loads(third[2]) == {"status": "ready"}
        assert first[1]["location"] != second[1]["location"]


def test_connection_close_still_sends_the_whole_response(sim: SimulatedNsm,
                                                         tmp_path: Path) -> None:  # fmt: skip
    with _serve(sim, tmp_path) as port, socket.create_connection(("127.0.0.1", port), 5) as s:
        s.sendall(f"POST {NEW} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
        status, _, body = _read_response(s, buf := bytearray())
        assert status == 201 and json.loads(body)["state"] == "waiting"
        assert s.recv(1) == b"" and not buf  # then the server closes, nothing more


def test_expect_100_continue_is_answered_before_the_body(sim: SimulatedNsm,
                                                         tmp_path: Path) -> None:  # fmt: skip
    with _serve(sim, tmp_path) as port, socket.create_connection(("127.0.0.1", port), 5) as s:
        s.sendall(f"POST {NEW} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        _, headers, body = _read_response(s, buf := bytearray())
        nonce = json.loads(body)["nonce"]
        doc = sim.attestation(nonce=base64.urlsafe_b64decode(nonce + "=" * (-len(nonce) % 4)))
        s.sendall(f"POST {headers['location']} HTTP/1.1\r\nHost: x\r\nContent-Type: {MEDIA}\r\n"
                  f"Content-Length: {len(doc)}\r\nExpect: 100-continue\r\n\r\n".encode())
        s.settimeout(2)  # the gathered write must not wait for a body that waits for it
        while b"\r\n\r\n" not in buf:
            buf += s.recv(4096)
        assert bytes(buf).startswith(b"HTTP/1.1 100 Continue\r\n\r\n")
        del buf[: len(b"HTTP/1.1 100 Continue\r\n\r\n")]
        s.sendall(doc)
        status, _, body = _read_response(s, buf)
        assert status == 200 and json.loads(body)["state"] == "complete"


def test_a_client_that_drops_the_connection_does_not_stop_the_service(
    sim: SimulatedNsm, tmp_path: Path
) -> None:
    with _serve(sim, tmp_path) as port:
        for _ in range(20):  # gone before its response is written
            with socket.create_connection(("127.0.0.1", port), 5) as s:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, RESET_ON_CLOSE)
                s.sendall(f"POST {NEW} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        with socket.create_connection(("127.0.0.1", port), 5) as s:
            s.sendall(f"POST {NEW} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
            assert _read_response(s, bytearray())[0] == 201


class _RecordingTransport:
    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.closed = False

    def write(self, data: bytes) -> None:
        assert not self.closed, "write after close"
        self.writes.append(data)

    def close(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed

    def get_extra_info(self, name: str) -> Any:
        return f"extra:{name}"


def test_writes_of_one_loop_iteration_go_out_as_one() -> None:
    async def scenario() -> tuple[list[bytes], list[bytes], list[bytes], bool]:
        real = _RecordingTransport()
        gathering = _GatheringTransport(real)  # type: ignore[arg-type]
        gathering.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n")
        gathering.write(b"")
        gathering.write(b"{}")
        held = list(real.writes)  # nothing sent yet: the loop has not run its callbacks
        await asyncio.sleep(0)
        one = list(real.writes)
        gathering.write(b"HTTP/1.1 204 No Content\r\n\r\n")
        gathering.close()  # close sends what is pending, then closes
        assert gathering.get_extra_info("peername") == "extra:peername"
        await asyncio.sleep(0)  # the scheduled flush finds nothing left, writes nothing
        return held, one, real.writes, real.closed

    held, one, final, closed = asyncio.run(scenario())
    assert held == []
    assert one == [b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}"]
    assert final == [one[0], b"HTTP/1.1 204 No Content\r\n\r\n"] and closed


def _appraised_in(monkeypatch: pytest.MonkeyPatch, sim: SimulatedNsm, tmp: Path) -> str:
    threads: list[str] = []
    original = app_module.appraise_evidence

    def recording(*args: Any, **kwargs: Any) -> Any:
        threads.append(threading.current_thread().name)
        return original(*args, **kwargs)

    monkeypatch.setattr(app_module, "appraise_evidence", recording)
    with TestClient(create_app(_config(sim, tmp))) as client:
        jwk = client.get("/.well-known/veraison/verification").json()["ear-verification-key"]
        r = client.post(NEW)
        nonce = r.json()["nonce"]
        doc = sim.attestation(nonce=base64.urlsafe_b64decode(nonce + "=" * (-len(nonce) % 4)))
        done = client.post(r.headers["location"], content=doc, headers={"Content-Type": MEDIA})
        assert done.status_code == 200
        claims = check_ear(done.json()["result"], jwk, nonce)
        assert claims["submods"]["aws-nitro"]["ear.status"] == "affirming"
    assert len(threads) == 1
    return threads[0]


def test_a_real_sized_document_is_appraised_on_the_loop(
    monkeypatch: pytest.MonkeyPatch, sim: SimulatedNsm, tmp_path: Path
) -> None:
    assert not _appraised_in(monkeypatch, sim, tmp_path).startswith("appraisal")


def test_a_larger_document_is_appraised_in_the_worker_thread(
    monkeypatch: pytest.MonkeyPatch, sim: SimulatedNsm, tmp_path: Path
) -> None:
    monkeypatch.setattr(app_module, "INLINE_APPRAISAL_MAX", 1024)  # below any real document
    assert _appraised_in(monkeypatch, sim, tmp_path).startswith("appraisal")


def test_every_real_document_fits_the_inline_size(real_dir: Path) -> None:
    sizes = [p.stat().st_size for p in real_dir.glob("*.cbor")]
    assert sizes and max(sizes) <= app_module.INLINE_APPRAISAL_MAX


def test_session_bodies_are_starlettes_compact_json(sim: SimulatedNsm, tmp_path: Path) -> None:
    with TestClient(create_app(_config(sim, tmp_path))) as client:
        r = client.post(NEW)
        nonce = r.json()["nonce"]
        doc = sim.attestation(nonce=base64.urlsafe_b64decode(nonce + "=" * (-len(nonce) % 4)))
        done = client.post(r.headers["location"], content=doc, headers={"Content-Type": MEDIA})
    for response in (r, done):
        assert response.content == json.dumps(
            response.json(), ensure_ascii=False, separators=(",", ":")
        ).encode()
