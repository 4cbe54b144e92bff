"""Helpers for the verification service tests: simulator documents, policies files, a real
redis-server on a free loopback port, service processes, and EAR checks with joserfc (a JOSE
library other than the PyJWT the service signs with)."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
from joserfc import jwt as jose_jwt
from joserfc.jwk import ECKey

from nitro_attest.nsm.simulator import SimulatedNsm
from nitro_attest.nsm.simulator.state import SimulatorConfig, init_state
from nitro_attest.service.sessions import Session

from .fakes import INSTANCE_ID, MEASUREMENTS

ENTRY = [sys.executable, "-c", "from nitro_attest._cli import entrypoint; entrypoint()"]
MEDIA = "application/vnd.aws.nitro-enclaves.attestation-document+cose"


def waiting_session(session_id: str, lifetime: float) -> Session:
    """A session of the "prod" policy for a document, waiting, ``lifetime`` seconds from now."""
    now = time.time()
    return Session(session_id, "bm9uY2U", now + lifetime, now, "prod", (MEDIA,))


def make_sim(path: Path, *, debug: bool = False) -> SimulatedNsm:
    """A simulator with a CA of its own; tests that need no second CA use conftest's sim_state."""
    config = SimulatorConfig(instance_id=INSTANCE_ID, measurements=MEASUREMENTS, debug=debug)
    return SimulatedNsm(init_state(path, config))


def debug_twin(sim: SimulatedNsm, path: Path) -> SimulatedNsm:
    """A debug-mode NSM under the same CA as ``sim`` (same state, debug flag set)."""
    shutil.copytree(sim.state.path, path)
    config = json.loads((path / "config.json").read_text())
    config["debug"] = True
    (path / "config.json").write_text(json.dumps(config))
    return SimulatedNsm.open(path)


def build_enclave_json(pcrs: Mapping[int, bytes]) -> dict[str, Any]:
    measurements: dict[str, str] = {"HashAlgorithm": "Sha384 { ... }"}
    measurements.update({f"PCR{i}": v.hex() for i, v in pcrs.items()})
    return {"Measurements": measurements}


def write_policies(path: Path, **extra: dict[str, Any]) -> Path:
    policies: dict[str, Any] = {"prod": {"expected": [build_enclave_json(MEASUREMENTS)]}}
    policies.update(extra)
    path.write_text(json.dumps({"default": "prod", "policies": policies}))
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def wait_until(check: Any, timeout: float = 15.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except (OSError, httpx.HTTPError):
            pass
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


@contextmanager
def redis_server(tmp: Path, *extra: str, port: int | None = None) -> Iterator[str]:
    """A throwaway redis-server (Debian's package, installed by test.sh) on a free port, or on
    ``port`` (to restart one empty where a service expects it); ``extra`` are server options
    (``--maxmemory``, ``--requirepass``...). The URL it yields carries no password."""
    binary = shutil.which("redis-server") or "/usr/bin/redis-server"
    port = port or free_port()
    proc = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
         "--dir", str(tmp), *extra],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        def up() -> bool:
            if proc.poll() is not None:
                raise AssertionError(f"redis-server exited {proc.returncode}")
            with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
                s.sendall(b"PING\r\n")
                answer = s.recv(64)
                return answer.startswith((b"+PONG", b"-NOAUTH"))

        wait_until(up, what="redis-server")
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        proc.terminate()
        proc.wait(10)


def redis_port(url: str) -> int:
    return int(url.rsplit(":", 1)[1].split("/")[0])


@contextmanager
def service(
    args: list[str], *, port: int | None = None, env: Mapping[str, str] | None = None,
    ready: bool = True,
) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """``nitro-attest service`` in a child process; yields its base URL once /healthz is ready
    (or, with ``ready=False``, once it answers /healthz at all)."""
    port = port or free_port()
    proc = subprocess.Popen([*ENTRY, "service", "--listen", f"127.0.0.1:{port}", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            env=None if env is None else {**os.environ, **env})  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    try:
        def answers() -> bool:
            if proc.poll() is not None:
                out = proc.stdout.read().decode() if proc.stdout else ""
                raise AssertionError(f"service exited {proc.returncode}: {out}")
            code = httpx.get(f"{base}/healthz", timeout=1).status_code
            return code == 200 or not ready

        wait_until(answers, what="service /healthz")
        yield base, proc
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def check_ear(token: str, jwk: dict[str, Any], nonce: str) -> dict[str, Any]:
    """Verify an EAR with joserfc and return its claims; asserts the fixed EAR shape."""
    key = ECKey.import_key(jwk)
    decoded = jose_jwt.decode(token, key, algorithms=[jwk["alg"]])
    assert decoded.header["alg"] == jwk["alg"]
    claims: dict[str, Any] = dict(decoded.claims)
    assert claims["eat_profile"] == "tag:github.com,2023:veraison/ear"
    assert claims["eat_nonce"] == nonce
    assert isinstance(claims["iat"], int) and abs(claims["iat"] - time.time()) < 120
    assert set(claims["ear.verifier-id"]) == {"developer", "build"}
    assert list(claims["submods"]) == ["aws-nitro"]
    return claims


def submod(claims: dict[str, Any]) -> dict[str, Any]:
    result: dict[str, Any] = claims["submods"]["aws-nitro"]
    return result
