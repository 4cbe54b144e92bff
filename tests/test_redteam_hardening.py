"""Red-team findings on the hardening wave (issues 21, 25 item 6, 26), each reproduced here as
the parent or an operator would, before its fix."""

from __future__ import annotations

import contextlib
import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization

from nitro_attest.relying_party.client import request_appraisal
from nitro_attest.relying_party.errors import ServiceClientError
from nitro_attest.service.ear import EarSigner, ear_claims

MEDIA = "application/vnd.aws.nitro-enclaves.attestation-document+cose"


# --- 1. appraise: the nonce the EAR is bound to must be the relying party's own -------------
#
# The parent (or whoever answers for the service) kept a genuine EAR, signed by the pinned key,
# from an earlier session: an enclave that was affirmed then (an older image, since revoked, or
# another instance). When the service picks the session nonce, the impostor picks that old
# session's nonce, ignores the document and hands back the old EAR: its signature is the pinned
# key's and its eat_nonce is "this session's", so the relying party reads "affirming" for an
# enclave the service never saw.

OLD_NONCE = "b2xkLXNlc3Npb24tbm9uY2UtMDEyMzQ1Njc4OWFiY2RlZg"


@contextmanager
def _replaying_service(signer: EarSigner, echo: bool) -> Iterator[tuple[str, list[bytes]]]:
    old_ear = signer.sign(ear_claims(nonce=OLD_NONCE, status="affirming", vector={},
                                     policy_id="policy:prod", annotated={}))  # fmt: skip
    submitted: list[bytes] = []

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

        def _json(self, status: int, body: dict[str, Any], location: str = "") -> None:
            raw = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(raw)))
            if location:
                self.send_header("Location", location)
            self.end_headers()
            self.wfile.write(raw)

        def do_GET(self) -> None:
            self._json(200, {"ear-verification-key": signer.public_jwk(), "media-types": [MEDIA]})

        def do_POST(self) -> None:
            if "newSession" in self.path:
                nonce = OLD_NONCE
                if echo and "nonce=" in self.path:  # takes the caller's nonce, as ours does
                    nonce = self.path.split("nonce=")[1].split("&")[0]
                self._json(201, {"nonce": nonce, "state": "waiting", "accept": [MEDIA]},
                           "/challenge-response/v1/session/1")  # fmt: skip
                return
            submitted.append(self.rfile.read(int(self.headers["Content-Length"])))
            self._json(200, {"state": "complete", "result": old_ear, "nonce": OLD_NONCE})

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", submitted
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize("echo", [False, True], ids=["own-nonce", "echoes-ours"])
def test_appraise_refuses_a_replayed_ear_for_a_nonce_it_did_not_choose(echo: bool) -> None:
    signer = EarSigner.generate()  # the real service's key: the relying party pins it
    pem = signer.key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    asked: list[bytes] = []

    def document(nonce: bytes) -> bytes:
        asked.append(nonce)
        return b"a document from whatever enclave the parent runs now"

    with _replaying_service(signer, echo) as (url, _), pytest.raises(ServiceClientError) as caught:
        request_appraisal(url, document, ear_key=pem, timeout=5)
    assert "nonce" in str(caught.value)
    # Either the impostor's own nonce is refused before the enclave is asked, or the enclave
    # is asked for ours, and the old EAR (for another nonce) fails.
    assert asked == [] if not echo else len(asked) == 1


# --- 2. strict JSON: a non-finite number written as an overflowing literal -------------------
#
# strict_json promises "a non-finite number is a JsonFormatError", but refused only the NaN and
# Infinity words: 1e999 (or -1e999) reads as float inf, the very value a bound like max_age must
# never take. And `appraise --ear-jwks` read its file with the lenient json module.


@pytest.mark.parametrize("raw", [b'{"max_age": 1e999}', b"[-1e400]", b'{"a": {"b": 2E+308}}'])
def test_strict_json_refuses_overflowing_numbers(raw: bytes) -> None:
    from nitro_attest.codec.strict_json import JsonFormatError, loads

    with pytest.raises(JsonFormatError, match="out of range"):
        loads(raw)


def test_strict_json_keeps_large_finite_numbers() -> None:
    from nitro_attest.codec.strict_json import loads

    assert loads(b"[1.7976931348623157e308, 1e-400, 12345678901234567890]") == [
        1.7976931348623157e308, 0.0, 12345678901234567890]  # fmt: skip


def test_appraise_ear_jwks_file_is_read_strictly(tmp_path: Any) -> None:
    import subprocess
    import sys

    signer = EarSigner.generate()
    jwks = tmp_path / "ear.jwks"
    key = json.dumps(signer.public_jwk())
    jwks.write_text(f'{{"keys": [], "keys": [{key}]}}')  # which one did the operator mean?
    done = subprocess.run(
        [sys.executable, "-c", "from nitro_attest._cli import entrypoint; entrypoint()",
         "appraise", "--service", "http://127.0.0.1:9", "--connect", "tcp://127.0.0.1:9",
         "--ear-jwks", str(jwks)],
        capture_output=True, text=True, timeout=60)  # fmt: skip
    assert done.returncode == 2
    assert "given twice" in done.stderr and "Traceback" not in done.stderr


# --- 3. a replica's clock must not decide how long a session lives --------------------------
#
# Operator fault: NTP steps a replica's clock (it ran a day ahead, or a day behind). Sessions
# expired at an absolute time from that clock: in Redis (PEXPIREAT) a replica a day behind
# created sessions already expired (every submission 404), one a day ahead kept each record a
# day (Redis memory that should come back at the session TTL). The memory store judged expiry
# by the wall clock too: after a day-ahead hour, everything created in it stayed live a day and
# the store answered "full" (503) long after the clock was corrected.

DAY = 86_400.0


def _session(sid: str, clock_offset: float, ttl: float) -> Any:
    import time

    from nitro_attest.service.sessions import Session

    now = time.time() + clock_offset  # the replica's clock
    return Session(sid, "bm9uY2U", now + ttl, now, "prod", (MEDIA,))


@pytest.mark.parametrize("offset", [-DAY, DAY], ids=["replica-behind", "replica-ahead"])
def test_redis_session_lives_its_ttl_whatever_the_replica_clock(
    offset: float, tmp_path: Any
) -> None:
    import asyncio

    import redis

    from nitro_attest.service.redis_store import RedisStore

    from .servicekit import redis_port, redis_server

    async def run(url: str) -> Any:
        store = RedisStore(url)
        try:
            assert await store.create(_session("s1", offset, 300.0))
            return await store.get("s1")
        finally:
            await store.close()

    with redis_server(tmp_path) as url:
        found = asyncio.run(run(url))
        ttl_ms = redis.Redis(port=redis_port(url)).pttl("nitro-attest:session:s1")
    assert found is not None and found.id == "s1"
    assert 290_000 < ttl_ms <= 300_000, ttl_ms


def test_memory_store_frees_sessions_made_while_the_clock_ran_ahead() -> None:
    import asyncio
    import time

    from nitro_attest.service.sessions import MemoryStore

    store = MemoryStore(max_sessions=2, max_nonces=2)

    async def run() -> None:
        # Made while the clock ran a day ahead; then NTP corrected it.
        assert await store.create(_session("a", DAY, 0.2), nonce_digest="n1", nonce_ttl=0.2)
        assert await store.create(_session("b", DAY, 0.2), nonce_digest="n2", nonce_ttl=0.2)
        assert await store.health() is not None  # full, rightly, while they live
        time.sleep(0.3)  # their TTL has passed
        assert await store.get("a") is None
        assert await store.health() is None
        assert await store.create(_session("c", 0.0, 300.0), nonce_digest="n3", nonce_ttl=1)

    asyncio.run(run())


# --- 4. a policies file whose max_age is an integer too large for a float -------------------
#
# max_age 10**400 passes "a positive number" and then float() raises OverflowError: outside the
# project's exceptions, so `service --policies` ended in "internal error" and a SIGHUP reload
# raised out of reload() (a traceback, no "reload failed" line, no metric): the class of issue
# 26 item 4, by a number rather than by nesting.

_PCR0 = {"Measurements": {"PCR0": "00" * 48}}


def _policies(max_age: Any) -> bytes:
    policy = {"expected": [_PCR0], "max_age": max_age}
    return json.dumps({"default": "p", "policies": {"p": policy}}).encode()


@pytest.mark.parametrize("max_age", [10**400, -(10**400)], ids=["huge", "huge-negative"])
def test_policies_with_an_overflowing_max_age_are_refused(max_age: int) -> None:
    from nitro_attest.errors import PolicyError
    from nitro_attest.service.policies import parse_policies

    with pytest.raises(PolicyError, match="max_age"):
        parse_policies(_policies(max_age))


def test_library_policy_refuses_an_overflowing_max_age() -> None:
    from nitro_attest.attestation.policy import Policy
    from nitro_attest.errors import PolicyError

    with pytest.raises(PolicyError, match="max_age"):
        Policy(max_age=10**400)  # type: ignore[arg-type]


def test_sighup_reload_of_an_overflowing_max_age_keeps_the_old_policies(tmp_path: Any) -> None:
    from nitro_attest.service.app import ServiceConfig, ServiceState
    from nitro_attest.service.sessions import MemoryStore

    path = tmp_path / "policies.json"
    path.write_bytes(_policies(60))
    state = ServiceState(ServiceConfig(path, EarSigner.generate(), MemoryStore))
    path.write_bytes(_policies(10**400))
    assert state.reload() is False
    assert state.policies.policies["p"].max_age == 60.0
    failed = state.metrics.reloads.labels("failed")._value.get()
    assert failed == 1


# --- 5. send-secret: 2 only when nothing was sent -------------------------------------------
#
# Exit 2 tells a wrapper "nothing was sent, safe to retry". Three ways out after the sealed
# message had left did not say 3 (or 0): stdout gone (a wrapper that closed the pipe, a dead log
# collector) turned DELIVERED into 120 and NOT CONFIRMED into 2 or 120 (BrokenPipeError reads as
# a usage error, a failed flush at exit as 120); an interrupt while waiting for the
# acknowledgement was 130; and any unexpected error after sending would be "internal error", 2.

SECRET = b"api token 0f1e2d3c4b5a69788796a5b4c3d2e1f0"


def _send_secret_cmd(address: str, secret: Any, root: Any) -> list[str]:
    import sys

    from tests.fakes import MEASUREMENTS

    return [sys.executable, "-c", "from nitro_attest._cli import entrypoint; entrypoint()",
            "send-secret", "--connect", address, "--file", str(secret), "--suite", "x25519",
            "--root", str(root), "--pcr", f"0={MEASUREMENTS[0].hex()}",
            "--timeout", "20"]  # fmt: skip


def _with_closed_stdout(cmd: list[str]) -> tuple[int, str]:
    import subprocess

    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()  # whoever read our output is gone
    err = proc.stderr.read().decode()
    return proc.wait(60), err


def test_delivered_with_stdout_gone_still_exits_zero(sim_server: Any, sim_state: Any,
                                                     tmp_path: Any) -> None:  # fmt: skip
    secret = tmp_path / "secret"
    secret.write_bytes(SECRET)
    rc, err = _with_closed_stdout(_send_secret_cmd(sim_server.address, secret,
                                                   sim_state / "root.pem"))  # fmt: skip
    assert sim_server.store.secrets == [SECRET]
    assert rc == 0, err


def _lying_relay(upstream: str, hang: Any = None) -> Any:
    from tests.relay import Frame, Relay, Upstream

    class Lying(Relay):
        sealed_seen = threading.Event()

        def handle(self, request: Frame, up: Upstream) -> Frame:
            answer = up.call(request)
            if request["type"] != "sealed_message":
                return answer
            self.sealed_seen.set()
            if hang is not None:
                hang.wait(30)  # hold the acknowledgement back
            return {"v": 1, "type": "error", "code": "channel_refused", "message": "forged"}

    return Lying(upstream)


def test_not_confirmed_with_stdout_gone_still_exits_three(sim_server: Any, sim_state: Any,
                                                          tmp_path: Any) -> None:  # fmt: skip
    from tests.relay import relaying

    secret = tmp_path / "secret"
    secret.write_bytes(SECRET)
    with relaying(_lying_relay(sim_server.address), tmp_path / "r.sock") as address:
        rc, err = _with_closed_stdout(_send_secret_cmd(address, secret, sim_state / "root.pem"))
    assert sim_server.store.secrets == [SECRET]
    assert rc == 3, err


def test_interrupted_after_sending_exits_three(sim_server: Any, sim_state: Any,
                                               tmp_path: Any) -> None:  # fmt: skip
    import signal
    import subprocess

    from tests.relay import relaying

    secret = tmp_path / "secret"
    secret.write_bytes(SECRET)
    release = threading.Event()
    relay = _lying_relay(sim_server.address, hang=release)
    try:
        with relaying(relay, tmp_path / "r.sock") as address:
            cmd = _send_secret_cmd(address, secret, sim_state / "root.pem")
            proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            assert relay.sealed_seen.wait(60)
            proc.send_signal(signal.SIGINT)  # the operator (or a wrapper's timeout) gives up
            out, err = proc.communicate(timeout=60)
            release.set()
    finally:
        release.set()
    assert sim_server.store.secrets == [SECRET]
    assert proc.returncode == 3, (out, err)
    assert out.startswith("NOT CONFIRMED") and "DELIVERED" not in out


# --- 6. SO_REUSEPORT must not let a second service share the port ---------------------------
#
# Operator fault: the old `service --workers N` did not exit (a hung stop, a second unit, a
# deploy that started the new one first). The new one bound the same port without a word, and
# the kernel split connections between both: half the relying parties appraised under the old
# policies (a revoked release still affirming) and the old signing key. A second service must
# fail to listen, as a plain bind would.


def test_second_service_on_the_same_port_cannot_listen() -> None:
    import errno

    from nitro_attest.service.runner import listening_sockets

    first = listening_sockets("127.0.0.1", 0, 2)
    try:
        port = first[0].getsockname()[1]
        assert first[1].getsockname()[1] == port  # ours share it
        with pytest.raises(OSError) as caught:
            second = listening_sockets("127.0.0.1", port, 2)
            for sock in second:
                sock.close()
        assert caught.value.errno == errno.EADDRINUSE
    finally:
        for sock in first:
            sock.close()


# --- 7. /healthz while the nonce records are full --------------------------------------------
#
# The memory store refuses every relying-party nonce (503) once its nonce records are full, the
# path `appraise` now always takes; /healthz still said "ready", so a load balancer kept sending
# relying parties to a service that could not take their sessions.


def test_health_names_full_nonce_records() -> None:
    import asyncio

    from nitro_attest.service.sessions import MemoryStore, StoreFullError

    store = MemoryStore(max_sessions=10, max_nonces=1)

    async def run() -> None:
        assert await store.create(_session("a", 0.0, 300.0), nonce_digest="n1", nonce_ttl=300)
        with pytest.raises(StoreFullError):
            await store.create(_session("b", 0.0, 300.0), nonce_digest="n2", nonce_ttl=300)
        reason = await store.health()
        assert reason is not None and "nonce records" in reason

    asyncio.run(run())


# --- 8. a worker that dies after a failed reload must come back ------------------------------
#
# Operator fault: the policies file is broken (a bad edit), SIGHUP is sent (every worker keeps
# its policies, as promised), then a worker dies (OOM killer, a crash). Its replacement read the
# broken file at start, failed, and was restarted every 0.5 s for ever; the supervisor kept its
# socket open, so the kernel went on queueing 1/N of the new connections there, never accepted:
# those relying parties hung until the file was fixed.


def test_worker_restarted_after_a_failed_reload_serves(sim_state: Any, tmp_path: Any) -> None:
    import os
    import signal
    import socket
    import time
    from pathlib import Path

    import httpx

    from nitro_attest.nsm.simulator import SimulatedNsm

    from .servicekit import redis_server, service, wait_until, write_policies

    (tmp_path / "root.pem").write_bytes(SimulatedNsm.open(sim_state).root_pem)
    policies = write_policies(tmp_path / "policies.json")
    args = ["--policies", str(policies), "--root", str(tmp_path / "root.pem")]
    with redis_server(tmp_path) as url, service([*args, "--sessions", url, "--workers", "2"]) as (
        base, proc):  # fmt: skip
        policies.write_text('{"default": "prod", "policies": {}}')  # a bad edit
        os.kill(proc.pid, signal.SIGHUP)  # reload fails: every worker keeps its policies
        time.sleep(0.5)

        def workers() -> list[str]:
            return Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()

        # (A worker still starting when SIGHUP came has no handler yet and dies of it: it is
        # restarted like any other, the case this test is about.)
        wait_until(lambda: len(workers()) == 2, what="two workers")
        children = workers()
        os.kill(int(children[0]), signal.SIGKILL)

        def replaced() -> bool:  # the supervisor restarts it on the same socket
            now = workers()
            return len(now) == 2 and children[0] not in now

        wait_until(replaced, what="a new worker")
        port = int(base.rsplit(":", 1)[1])
        answered = 0
        for _ in range(16):  # new connections: the kernel spreads them over both sockets
            with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
                s.settimeout(10)  # a worker starting under load accepts late; a dead one never
                s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                with contextlib.suppress(TimeoutError):  # queued where no worker accepts
                    answered += s.recv(4096).startswith(b"HTTP/1.1 200")
        assert answered == 16
        r = httpx.post(f"{base}/challenge-response/v1/newSession?nonceSize=16")
        assert r.status_code == 201  # the old policies, on every worker
