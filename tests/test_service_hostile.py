"""Threat model: a hostile client of the service. A trickled upload is cut off (408) without
using the session or holding up other clients; the stream cap holds whatever Content-Length
claims; a bad EAR (another session's, re-signed, other profile) is refused by the client side."""

from __future__ import annotations

import base64
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
import uvicorn
from cryptography.hazmat.primitives.asymmetric import ec

from nitro_attest.nsm.simulator import SimulatedNsm
from nitro_attest.relying_party.ear_check import verify_ear
from nitro_attest.relying_party.errors import EarError
from nitro_attest.service.app import ServiceConfig, create_app
from nitro_attest.service.ear import EarSigner, ear_claims
from nitro_attest.service.sessions import MemoryStore

from .servicekit import MEDIA, free_port, wait_until, write_policies


@contextmanager
def _serve(tmp: Path, state: Path) -> Iterator[tuple[str, object]]:
    sim = SimulatedNsm.open(state)
    config = ServiceConfig(write_policies(tmp / "p.json"), EarSigner.generate(), MemoryStore,
                           root_pem=sim.root_pem, body_timeout=0.5)  # fmt: skip
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(config), host="127.0.0.1", port=port,
                                           log_level="warning"))  # fmt: skip
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    wait_until(lambda: server.started, what="uvicorn in a thread")
    try:
        yield f"http://127.0.0.1:{port}", sim
    finally:
        server.should_exit = True
        thread.join(10)


def _b64d(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def test_trickled_upload_times_out_and_others_are_served(
    tmp_path: Path, sim_state: Path
) -> None:
    with _serve(tmp_path, sim_state) as (base, sim):
        r = httpx.post(f"{base}/challenge-response/v1/newSession")
        location = r.headers["location"]
        port = int(base.rsplit(":", 1)[1])
        with socket.create_connection(("127.0.0.1", port), timeout=5) as slow:
            slow.sendall(f"POST {location} HTTP/1.1\r\nHost: x\r\nContent-Type: {MEDIA}\r\n"
                         "Content-Length: 4000\r\n\r\n".encode() + b"\x84")  # fmt: skip
            started = time.monotonic()
            # Meanwhile another client runs a whole session.
            other = httpx.post(f"{base}/challenge-response/v1/newSession")
            doc = sim.attestation(nonce=_b64d(other.json()["nonce"]))  # type: ignore[attr-defined]
            done = httpx.post(f"{base}{other.headers['location']}", content=doc,
                              headers={"Content-Type": MEDIA})  # fmt: skip
            assert done.status_code == 200
            answer = slow.recv(4096)
            assert answer.startswith(b"HTTP/1.1 408"), answer[:80]
            assert time.monotonic() - started < 3
        assert httpx.get(f"{base}{location}").json()["state"] == "waiting"  # not used up


def test_stream_cap_ignores_a_small_content_length(tmp_path: Path, sim_state: Path) -> None:
    with _serve(tmp_path, sim_state) as (base, _):
        location = httpx.post(f"{base}/challenge-response/v1/newSession").headers["location"]
        port = int(base.rsplit(":", 1)[1])
        with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
            body = b"\x00" * (70 * 1024)
            s.sendall(f"POST {location} HTTP/1.1\r\nHost: x\r\nContent-Type: {MEDIA}\r\n"
                      "Transfer-Encoding: chunked\r\n\r\n".encode()
                      + f"{len(body):x}\r\n".encode() + body + b"\r\n0\r\n\r\n")  # fmt: skip
            assert s.recv(4096).startswith(b"HTTP/1.1 413")


def test_client_refuses_foreign_replayed_or_altered_ears() -> None:
    signer = EarSigner.generate()
    claims = ear_claims(nonce="bm9uY2Utb25l", status="affirming", vector={}, policy_id="policy:p",
                        annotated={})  # fmt: skip
    good = signer.sign(claims)
    assert verify_ear(good, signer.public_jwk(), "bm9uY2Utb25l")["eat_nonce"] == "bm9uY2Utb25l"
    with pytest.raises(EarError, match="not this session's nonce"):
        verify_ear(good, signer.public_jwk(), "b3RoZXItbm9uY2U")  # a result for another session
    other = EarSigner.from_key(ec.generate_private_key(ec.SECP256R1()))
    with pytest.raises(EarError, match="does not verify"):
        verify_ear(other.sign(claims), signer.public_jwk(), "bm9uY2Utb25l")
    head, payload, sig = good.split(".")
    flipped = sig[:-2] + ("A" if sig[-2] != "A" else "B") + sig[-1]
    with pytest.raises(EarError, match="does not verify"):
        verify_ear(f"{head}.{payload}.{flipped}", signer.public_jwk(), "bm9uY2Utb25l")
    with pytest.raises(EarError, match="profile"):
        verify_ear(signer.sign({**claims, "eat_profile": "x"}), signer.public_jwk(),
                   "bm9uY2Utb25l")  # fmt: skip
    with pytest.raises(EarError, match="not ES256 or ES384"):
        verify_ear(good, {**signer.public_jwk(), "alg": "HS256"}, "bm9uY2Utb25l")
    none_header = base64.urlsafe_b64encode(b'{"alg":"none"}').rstrip(b"=").decode()
    unsigned = f"{none_header}.{payload}."
    with pytest.raises(EarError):
        verify_ear(unsigned, signer.public_jwk(), "bm9uY2Utb25l")
