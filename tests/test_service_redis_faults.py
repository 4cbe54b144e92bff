"""The operator's Redis under faults, with a real redis-server: restarted empty, full
(maxmemory, noeviction), stopped, requiring a password.

Threat model: the parent keeps a document affirmed once and replays it in a new session with
the same relying-party nonce after Redis restarted empty (no persistence, a failover); the
service must not affirm it again. Readiness must tell the truth when Redis refuses writes, and
the password must never sit on a command line.
"""

from __future__ import annotations

import base64
import hashlib
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from nitro_attest.nsm.simulator import SimulatedNsm
from nitro_attest.service.redis_store import HEALTH_KEY

from .servicekit import (
    ENTRY,
    MEDIA,
    check_ear,
    redis_port,
    redis_server,
    service,
    submod,
    wait_until,
    write_policies,
)

NEW = "/challenge-response/v1/newSession"
PASSWORD = "s3cret-" + "x" * 20


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _b64d(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


@pytest.fixture(scope="module")
def files(sim_state: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    tmp = tmp_path_factory.mktemp("faults")
    sim = SimulatedNsm.open(sim_state)
    (tmp / "root.pem").write_bytes(sim.root_pem)
    policies = write_policies(tmp / "policies.json")
    return {"tmp": tmp, "sim": sim,
            "args": ["--policies", str(policies), "--root", str(tmp / "root.pem")]}  # fmt: skip


def _appraise(base: str, query: str, document: Any) -> tuple[str, dict[str, Any]]:
    r = httpx.post(f"{base}{NEW}?{query}")
    assert r.status_code == 201, r.text
    nonce = r.json()["nonce"]
    done = httpx.post(f"{base}{r.headers['location']}", content=document(_b64d(nonce)),
                      headers={"Content-Type": MEDIA})  # fmt: skip
    assert done.status_code == 200, done.text
    jwk = httpx.get(f"{base}/.well-known/veraison/verification").json()["ear-verification-key"]
    sub = submod(check_ear(done.json()["result"], jwk, nonce))
    return sub["ear.status"], sub["ear.veraison.annotated-evidence"]


def test_replay_after_redis_restarts_empty(files: dict[str, Any]) -> None:
    sim: SimulatedNsm = files["sim"]
    tmp: Path = files["tmp"]
    nonce = b"rp-nonce-" + str(time.time()).encode()
    kept: list[bytes] = []

    def make(n: bytes) -> bytes:
        kept.append(sim.attestation(nonce=n))
        return kept[-1]

    with redis_server(tmp) as url:
        port = redis_port(url)
        args = [*files["args"], "--sessions", url, "--session-ttl", "30", "--clock-skew", "1"]
        with service(args) as (base, _):
            status, _ = _appraise(base, f"nonce={_b64(nonce)}", make)
            assert status == "affirming"
            assert httpx.post(f"{base}{NEW}?nonce={_b64(nonce)}").status_code == 409
            # The nonce record lives as long as the window needs (ttl + 2 skew), not a day.
            key = f"nitro-attest:nonce:{hashlib.sha256(nonce).hexdigest()}"
            ttl = redis.Redis(port=port).pttl(key)
            assert 0 < ttl <= 32_000, ttl
            # Redis restarts empty where the service expects it.
            redis_cli = redis.Redis(port=port)
            redis_cli.shutdown(nosave=True)
            with redis_server(tmp, port=port):
                wait_until(lambda: httpx.get(f"{base}/healthz").status_code == 200,
                           what="ready again")  # fmt: skip
                time.sleep(max(0.0, 1.3 - (time.time() - sim_time(kept[0]))))
                status, evidence = _appraise(base, f"nonce={_b64(nonce)}", lambda n: kept[0])
                assert status == "contraindicated"
                assert evidence["error"]["check"] == "session_time"


def sim_time(document: bytes) -> float:
    from nitro_attest.attestation.document import parse_document

    return parse_document(document).timestamp_ms / 1000


def test_no_day_long_records(files: dict[str, Any]) -> None:
    """Every key the service writes expires with the session (plus the skew window)."""
    with redis_server(files["tmp"]) as url:
        args = [*files["args"], "--sessions", url, "--session-ttl", "20"]
        with service(args) as (base, _):
            for i in range(5):
                _appraise(base, f"nonce={_b64(b'nonce-%d-' % i + str(time.time()).encode())}",
                          lambda n: files["sim"].attestation(nonce=n))  # fmt: skip
                _appraise(base, "nonceSize=16", lambda n: files["sim"].attestation(nonce=n))
            r = redis.Redis(port=redis_port(url))
            keys = r.keys("nitro-attest:*")
            assert len(keys) >= 15
            for key in keys:
                assert 0 < r.pttl(key) <= (20 + 2 * 60) * 1000, key


def test_full_redis_is_not_ready(files: dict[str, Any]) -> None:
    # Generous timeouts: on a loaded machine a 5 s client timeout failed it once.
    with (
        redis_server(files["tmp"], "--maxmemory", "3mb", "--maxmemory-policy", "noeviction") as url,
        service([*files["args"], "--sessions", url]) as (base, proc),
    ):
        assert httpx.get(f"{base}/healthz", timeout=30).status_code == 200
        filler = redis.Redis(port=redis_port(url))
        # The first /healthz left its probe key with a 10 s expiry: when it expired during a slow
        # fill it freed room for the next probe (the test failed under load). Gone before filling.
        filler.delete(HEALTH_KEY)
        # Redis trims a refused client's input buffer after an OOM answer, which can free room
        # for one more small write: fill again until the store stays full for both checks.
        for attempt in range(20):
            for size in (64 * 1024, 4096, 512):  # until not even a session record fits
                with pytest.raises(redis.exceptions.OutOfMemoryError):
                    for i in range(10_000):
                        filler.set(f"fill:{attempt}:{size}:{i}", b"\x00" * size)
            health = httpx.get(f"{base}/healthz", timeout=30)
            r = httpx.post(f"{base}{NEW}", timeout=30)
            if health.status_code == 503 and r.status_code == 503:
                break
        assert health.status_code == 503
        assert "maxmemory" in health.json()["reason"]
        assert r.status_code == 503 and r.json()["detail"] == "the session store is full"
        filler.flushall()
        assert httpx.get(f"{base}/healthz", timeout=30).status_code == 200
        proc.terminate()
        out = proc.communicate(timeout=60)[0].decode()
        assert "maxmemory" in out


def test_stopped_redis_is_named_in_health(files: dict[str, Any]) -> None:
    with (
        redis_server(files["tmp"]) as url,
        service([*files["args"], "--sessions", url]) as (base, _),
    ):
        redis.Redis(port=redis_port(url)).shutdown(nosave=True)
        wait_until(lambda: httpx.get(f"{base}/healthz").status_code == 503, what="503")
        assert "cannot reach redis" in httpx.get(f"{base}/healthz").json()["reason"]
        r = httpx.post(f"{base}{NEW}")
        assert r.status_code == 503 and r.json()["detail"] == "the session store is unavailable"
        assert "127.0.0.1" not in r.text  # the cause goes to the log, not to clients


@pytest.fixture(scope="module")
def locked_redis(files: dict[str, Any]) -> Iterator[str]:
    with redis_server(files["tmp"], "--requirepass", PASSWORD) as url:
        yield url


def _cmdline(pid: int) -> str:
    return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()


def test_password_from_the_environment(files: dict[str, Any], locked_redis: str) -> None:
    env = {"REDIS_PASSWORD": PASSWORD}
    with service([*files["args"], "--sessions", locked_redis], env=env) as (base, proc):
        assert PASSWORD not in _cmdline(proc.pid)
        status, _ = _appraise(base, "nonceSize=32", lambda n: files["sim"].attestation(nonce=n))
        assert status == "affirming"
    url = locked_redis.replace("redis://", f"redis://:{PASSWORD}@")
    with service(files["args"], env={"NITRO_ATTEST_REDIS_URL": url}) as (base, proc):
        assert PASSWORD not in _cmdline(proc.pid)
        assert httpx.post(f"{base}{NEW}").status_code == 201


def test_password_from_a_file(files: dict[str, Any], locked_redis: str) -> None:
    secret = files["tmp"] / "redis-url"
    secret.write_text(locked_redis.replace("redis://", f"redis://:{PASSWORD}@") + "\n")
    secret.chmod(0o644)
    with service([*files["args"], "--sessions-file", str(secret)]) as (base, proc):
        assert PASSWORD not in _cmdline(proc.pid)
        assert httpx.post(f"{base}{NEW}").status_code == 201
        proc.terminate()
        out = proc.communicate(timeout=15)[0].decode()
    assert "readable by other users" in out and PASSWORD not in out
    secret.chmod(0o600)
    with service([*files["args"], "--sessions-file", str(secret)]) as (base, proc):
        assert httpx.post(f"{base}{NEW}").status_code == 201
        proc.terminate()
        assert "readable by other users" not in proc.communicate(timeout=15)[0].decode()


def test_password_on_the_command_line_is_refused(files: dict[str, Any], locked_redis: str) -> None:
    url = locked_redis.replace("redis://", f"redis://:{PASSWORD}@")
    done = subprocess.run([*ENTRY, "service", *files["args"], "--sessions", url],
                          capture_output=True, text=True, timeout=60)  # fmt: skip
    assert done.returncode == 2
    assert "--sessions-file" in done.stderr and PASSWORD not in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1


def test_wrong_password_is_logged_with_its_cause(files: dict[str, Any], locked_redis: str) -> None:
    env = {"REDIS_PASSWORD": "wrong"}
    args = [*files["args"], "--sessions", locked_redis]
    with service(args, env=env, ready=False) as (base, proc):
        health = httpx.get(f"{base}/healthz")
        assert health.status_code == 503
        assert "refused the credentials" in health.json()["reason"]
        assert httpx.post(f"{base}{NEW}").status_code == 503
        proc.terminate()
        out = proc.communicate(timeout=15)[0].decode()
    assert "refused the credentials" in out
    assert "did not answer" not in out
    assert "wrong" not in out.replace("WRONGPASS", "")  # never the password itself
