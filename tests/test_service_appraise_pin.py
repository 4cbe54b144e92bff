"""Threat model: the parent stands between the relying party and the verification service. It
runs a fake service with a key of its own (which affirms anything), redirects the client to it,
or points the session's Location elsewhere. `appraise` pins the EAR key (--ear-key, --ear-jwks),
refuses plain http:// off the machine, and never follows a redirect to another origin."""

from __future__ import annotations

import json
import subprocess
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from nitro_attest.nsm.simulator import SimulatedNsm
from nitro_attest.relying_party.client import request_appraisal
from nitro_attest.relying_party.errors import EarError, ServiceClientError
from nitro_attest.service.ear import EarSigner
from nitro_attest.wire.server import nsm_handlers
from tests.serverkit import running_server

from .servicekit import ENTRY, service, write_policies


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*ENTRY, *args], capture_output=True, text=True, timeout=60)


@pytest.fixture(scope="module")
def stack(sim_state: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    tmp = tmp_path_factory.mktemp("pin")
    sim = SimulatedNsm.open(sim_state)
    (tmp / "root.pem").write_bytes(sim.root_pem)
    policies = write_policies(tmp / "policies.json")
    real, fake = EarSigner.generate(), EarSigner.generate()
    for name, signer in (("real", real), ("fake", fake)):
        (tmp / f"{name}.pem").write_bytes(signer.private_pem())
    (tmp / "real.pub.pem").write_bytes(real.key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))  # fmt: skip
    (tmp / "real.jwks").write_text(json.dumps({"keys": [real.public_jwk()]}))
    common = ["--policies", str(policies), "--root", str(tmp / "root.pem")]
    with (
        service([*common, "--signing-key", str(tmp / "real.pem")]) as (real_url, _),
        # The parent's fake: the same software, the same trust root, its own signing key.
        service([*common, "--signing-key", str(tmp / "fake.pem")]) as (fake_url, _),
        running_server("tcp://127.0.0.1:0", nsm_handlers(sim)) as (addr, _, _),
    ):
        yield {"tmp": tmp, "sim": sim, "real": real_url, "fake": fake_url,
               "enclave": f"tcp://{addr.host}:{addr.port}",
               "pub": str(tmp / "real.pub.pem"), "jwks": str(tmp / "real.jwks")}  # fmt: skip


@pytest.mark.parametrize("pin", ["--ear-key", "--ear-jwks"])
def test_pinned_key_affirms_the_real_service(stack: dict[str, Any], pin: str) -> None:
    path = stack["pub"] if pin == "--ear-key" else stack["jwks"]
    done = _run("appraise", "--service", stack["real"], "--connect", stack["enclave"], pin, path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "affirming"


@pytest.mark.parametrize("pin", ["--ear-key", "--ear-jwks"])
def test_fake_service_with_another_key_is_refused(stack: dict[str, Any], pin: str) -> None:
    path = stack["pub"] if pin == "--ear-key" else stack["jwks"]
    done = _run("appraise", "--service", stack["fake"], "--connect", stack["enclave"], pin, path)
    assert done.returncode == 2
    assert "affirming" not in done.stdout
    assert "EAR does not verify" in done.stderr and "pinned" in done.stderr


def test_no_pin_is_a_usage_error(stack: dict[str, Any]) -> None:
    done = _run("appraise", "--service", stack["fake"], "--connect", stack["enclave"])
    assert done.returncode == 2
    assert "--ear-key" in done.stderr and "--trust-advertised-key" in done.stderr
    assert done.stdout == ""


def test_trusting_the_advertised_key_warns(stack: dict[str, Any]) -> None:
    done = _run("appraise", "--service", stack["fake"], "--connect", stack["enclave"],
                "--trust-advertised-key")  # fmt: skip
    assert done.returncode == 0 and done.stdout.strip() == "affirming"
    assert "warning" in done.stderr and "advertises" in done.stderr


def test_library_pins_too(stack: dict[str, Any]) -> None:
    sim: SimulatedNsm = stack["sim"]
    pem = Path(stack["pub"]).read_bytes()

    def document(nonce: bytes) -> bytes:
        return sim.attestation(nonce=nonce)

    assert request_appraisal(stack["real"], document, ear_key=pem).status == "affirming"
    with pytest.raises(EarError, match="pinned"):
        request_appraisal(stack["fake"], document, ear_key=pem)
    jwks = json.loads(Path(stack["jwks"]).read_text())
    with pytest.raises(EarError):
        request_appraisal(stack["fake"], document, ear_jwks=jwks)
    with pytest.raises(ServiceClientError, match="trust_advertised_key"):
        request_appraisal(stack["real"], document)
    other = ec.generate_private_key(ec.SECP256R1()).public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)  # fmt: skip
    with pytest.raises(EarError):
        request_appraisal(stack["real"], document, ear_key=other)  # the real service, another pin


@pytest.mark.parametrize("url", ["http://example.com:8080", "http://10.0.0.1:8080",
                                 "http://[2001:db8::1]:8080"])  # fmt: skip
def test_plain_http_off_the_machine_is_refused(url: str, stack: dict[str, Any]) -> None:
    pem = Path(stack["pub"]).read_bytes()
    with pytest.raises(ServiceClientError, match="insecure_http"):
        request_appraisal(url, lambda n: b"", ear_key=pem)  # refused before any connection
    done = _run("appraise", "--service", url, "--connect", stack["enclave"],
                "--ear-key", stack["pub"])  # fmt: skip
    assert done.returncode == 2 and "--insecure-http" in done.stderr


class _Redirector(BaseHTTPRequestHandler):
    target = ""
    mode = "discovery"

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _send(self, code: int, body: bytes = b"", **headers: str) -> None:
        self.send_response(code)
        for name, value in headers.items():
            self.send_header(name.replace("_", "-"), value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        if self.mode == "discovery":  # every request, to the parent's fake service
            self._send(302, Location=self.target + self.path)
        else:
            self._send(200, json.dumps({"ear-verification-key": {"alg": "ES256"},
                                        "media-types": ["x"]}).encode())  # fmt: skip

    def do_POST(self) -> None:
        # newSession answered with a Location on another origin: the document would go there.
        body = json.dumps({"nonce": "AAAAAAAAAAA", "state": "waiting"}).encode()
        self._send(201, body, Location=self.target + "/challenge-response/v1/session/x")


@pytest.fixture
def redirector(stack: dict[str, Any]) -> Iterator[tuple[str, type[_Redirector]]]:
    handler = type("Handler", (_Redirector,), {"target": stack["fake"]})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", handler
    finally:
        server.shutdown()
        server.server_close()


def test_redirect_to_another_origin_is_not_followed(
    stack: dict[str, Any], redirector: tuple[str, type[_Redirector]]
) -> None:
    base, handler = redirector
    with pytest.raises(ServiceClientError, match="another origin"):
        request_appraisal(base, lambda n: b"", trust_advertised_key=True)
    handler.mode = "location"
    with pytest.raises(ServiceClientError, match="another origin"):
        request_appraisal(base, lambda n: b"", trust_advertised_key=True)
