"""Replicas sharing a real redis-server: two service processes, one Redis, one signing key.

A session made on one replica completes on the other; a replay to either is a conflict; an
expired session is gone from both; concurrent claims on Redis let exactly one through.
"""

from __future__ import annotations

import asyncio
import base64
import os
import re
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from nitro_attest.nsm.simulator import SimulatedNsm
from nitro_attest.service.redis_store import RedisStore
from nitro_attest.service.sessions import Session

from .servicekit import (
    MEDIA,
    build_enclave_json,
    check_ear,
    redis_server,
    service,
    submod,
    wait_until,
    write_policies,
)

NEW = "/challenge-response/v1/newSession"


@pytest.fixture(scope="module")
def setup(
    sim_state: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, Any]]:
    tmp = tmp_path_factory.mktemp("replicas")
    sim = SimulatedNsm.open(sim_state)
    (tmp / "root.pem").write_bytes(sim.root_pem)
    key = ec.generate_private_key(ec.SECP384R1())
    (tmp / "ear.pem").write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))  # fmt: skip
    policies = write_policies(tmp / "policies.json")
    with redis_server(tmp) as url:
        yield {"tmp": tmp, "sim": sim, "url": url, "policies": policies,
               "args": ["--policies", str(policies), "--root", str(tmp / "root.pem"),
                        "--signing-key", str(tmp / "ear.pem"), "--sessions", url]}  # fmt: skip


@pytest.fixture(scope="module")
def replicas(setup: dict[str, Any]) -> Iterator[tuple[str, str]]:
    args = [*setup["args"], "--session-ttl", "1.5"]
    with service(args) as (a, _), service([*args, "--workers", "2"]) as (b, _):
        yield a, b


def _b64d(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _jwk(base: str) -> dict[str, Any]:
    key: dict[str, Any] = httpx.get(f"{base}/.well-known/veraison/verification").json()[
        "ear-verification-key"
    ]
    return key


def test_replicas_publish_the_same_key(replicas: tuple[str, str]) -> None:
    a, b = replicas
    assert _jwk(a) == _jwk(b)
    assert _jwk(a)["alg"] == "ES384"


def test_session_made_on_one_completes_on_the_other(
    replicas: tuple[str, str], setup: dict[str, Any]
) -> None:
    a, b = replicas
    sim: SimulatedNsm = setup["sim"]
    r = httpx.post(f"{a}{NEW}?nonceSize=32")
    assert r.status_code == 201
    location, nonce = r.headers["location"], r.json()["nonce"]
    assert httpx.get(f"{b}{location}").json()["state"] == "waiting"
    doc = sim.attestation(nonce=_b64d(nonce))
    done = httpx.post(f"{b}{location}", content=doc, headers={"Content-Type": MEDIA})
    assert done.status_code == 200
    claims = check_ear(done.json()["result"], _jwk(a), nonce)  # key from the other replica
    assert submod(claims)["ear.status"] == "affirming"
    for base in (a, b):  # the replay, to either replica
        again = httpx.post(f"{base}{location}", content=doc, headers={"Content-Type": MEDIA})
        assert again.status_code == 409
        assert httpx.get(f"{base}{location}").json()["result"] == done.json()["result"]


def test_concurrent_submissions_to_both_replicas(
    replicas: tuple[str, str], setup: dict[str, Any]
) -> None:
    a, b = replicas
    r = httpx.post(f"{a}{NEW}?nonceSize=16")
    location = r.headers["location"]
    doc = setup["sim"].attestation(nonce=_b64d(r.json()["nonce"]))

    async def race() -> list[int]:
        async with httpx.AsyncClient() as client:
            rs = await asyncio.gather(*(
                client.post(f"{base}{location}", content=doc, headers={"Content-Type": MEDIA})
                for base in (a, b) * 5))  # fmt: skip
        return sorted(x.status_code for x in rs)

    assert asyncio.run(race()) == [200] + [409] * 9


def _appraisals(base: str) -> float:
    text = httpx.get(f"{base}/metrics").text
    found = re.search(r"^nitro_attest_appraisal_seconds_count (\S+)$", text, re.M)
    assert found is not None
    return float(found.group(1))


def test_concurrent_and_replayed_submissions_to_the_creating_replica(
    replicas: tuple[str, str], setup: dict[str, Any]
) -> None:
    """The replica that made the session remembers it (no read from Redis): of the parent's
    concurrent copies of the evidence, those that arrive before the first is settled are
    appraised too, and all but one refused by the store's atomic settle (none shows its EAR); a
    replay after that is refused from Redis's record before any appraisal."""
    a, _ = replicas
    r = httpx.post(f"{a}{NEW}?nonceSize=16")
    location = r.headers["location"]
    doc = setup["sim"].attestation(nonce=_b64d(r.json()["nonce"]))

    async def race() -> list[httpx.Response]:
        async with httpx.AsyncClient() as client:
            return await asyncio.gather(*(
                client.post(f"{a}{location}", content=doc, headers={"Content-Type": MEDIA})
                for _ in range(10)))  # fmt: skip

    answers = asyncio.run(race())
    assert sorted(x.status_code for x in answers) == [200] + [409] * 9
    winner = next(x for x in answers if x.status_code == 200).json()["result"]
    assert all("result" not in x.json() for x in answers if x.status_code == 409)
    assert httpx.get(f"{a}{location}").json()["result"] == winner
    before = _appraisals(a)
    again = httpx.post(f"{a}{location}", content=doc, headers={"Content-Type": MEDIA})
    assert again.status_code == 409 and "result" not in again.json()
    assert _appraisals(a) == before  # refused before any appraisal


def test_expired_session_is_gone_from_both(
    replicas: tuple[str, str], setup: dict[str, Any]
) -> None:
    a, b = replicas
    r = httpx.post(f"{b}{NEW}?nonceSize=8")
    location = r.headers["location"]
    doc = setup["sim"].attestation(nonce=_b64d(r.json()["nonce"]))
    time.sleep(1.7)
    for base in (a, b):
        assert httpx.get(f"{base}{location}").status_code == 404
        sent = httpx.post(f"{base}{location}", content=doc, headers={"Content-Type": MEDIA})
        assert sent.status_code == 404


def test_relying_party_nonce_reuse_across_replicas(replicas: tuple[str, str]) -> None:
    a, b = replicas
    nonce = base64.urlsafe_b64encode(b"shared-nonce-" + str(time.time()).encode()).rstrip(b"=")
    assert httpx.post(f"{a}{NEW}?nonce={nonce.decode()}").status_code == 201
    assert httpx.post(f"{b}{NEW}?nonce={nonce.decode()}").status_code == 409


def test_redis_settle_is_atomic(setup: dict[str, Any]) -> None:
    async def run() -> list[str]:
        stores = [RedisStore(setup["url"]) for _ in range(4)]
        session = Session("race-1", "bm9uY2U", time.time() + 30, time.time(), "prod", (MEDIA,))
        assert await stores[0].create(session, nonce_digest="d1", nonce_ttl=30)
        again = Session("race-2", "bm9uY2U", time.time() + 30, time.time(), "prod", (MEDIA,))
        assert not await stores[1].create(again, nonce_digest="d1", nonce_ttl=30)
        assert await stores[1].get("race-2") is None  # a reused nonce stores nothing
        # Every replica may take the waiting session (the creator from memory, the others
        # from Redis); only one settle, of 40 racing, writes its outcome.
        taken = [await s.take("race-1") for s in stores]
        assert [outcome for outcome, _ in taken] == ["waiting"] * 4
        results = await asyncio.gather(*(
            s.settle(session.finished("complete", {}, f"ear-{i}"))
            for i, s in enumerate(stores * 10)))  # fmt: skip
        stored = await stores[3].get("race-1")
        assert stored is not None and stored.state == "complete"
        assert stored.result == f"ear-{results.index('done')}"  # the winner's, nobody else's
        assert [await s.take("race-1") for s in stores] == [("taken", None)] * 4
        # A settle must not resurrect a deleted key (it would live without a TTL).
        await stores[1].delete("race-1")
        assert await stores[2].settle(session.finished("complete", {}, "x")) == "missing"
        assert await stores[3].get("race-1") is None
        for s in stores:
            await s.close()
        return sorted(results)

    assert asyncio.run(run()) == ["done"] + ["taken"] * 39


def test_sighup_reloads_and_bad_file_keeps_old(setup: dict[str, Any], tmp_path: Path) -> None:
    policies = tmp_path / "policies.json"
    policies.write_text(setup["policies"].read_text())
    args = list(setup["args"])
    args[args.index("--policies") + 1] = str(policies)
    with service(args) as (base, proc):
        assert httpx.post(f"{base}{NEW}?policy=extra").status_code == 400
        policies.write_text("{not json")
        proc.send_signal(signal.SIGHUP)
        time.sleep(0.5)
        assert proc.poll() is None
        assert httpx.post(f"{base}{NEW}").status_code == 201  # old policies still serve
        write_policies(policies, extra={"expected": [build_enclave_json({0: b"\x01" * 48})]})
        proc.send_signal(signal.SIGHUP)
        wait_until(lambda: httpx.post(f"{base}{NEW}?policy=extra").status_code == 201,
                   what="reloaded policy")  # fmt: skip
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(15) == 0
        out = proc.stdout.read().decode() if proc.stdout else ""
        assert "policies reload failed, keeping the previous policies" in out


def test_health_reports_store_down(setup: dict[str, Any]) -> None:
    with redis_server(setup["tmp"]) as url:
        args = list(setup["args"])
        args[args.index("--sessions") + 1] = url
        with service(args) as (base, _):
            assert httpx.get(f"{base}/healthz").status_code == 200
            port = int(url.rsplit(":", 1)[1].split("/")[0])
            subprocess.run(["redis-cli", "-p", str(port), "shutdown", "nosave"],
                           capture_output=True, timeout=10)  # fmt: skip
            wait_until(lambda: httpx.get(f"{base}/healthz").status_code == 503, what="503")
            r = httpx.post(f"{base}{NEW}")
            assert r.status_code == 503
            metrics = httpx.get(f"{base}/metrics").text
            assert "nitro_attest_store_errors_total 0.0" not in metrics


def _ss(*filters: str) -> str:
    return subprocess.run(["ss", "-Htnp", *filters], capture_output=True, text=True,
                          check=True).stdout  # fmt: skip


def test_workers_each_listen_and_share_connections(setup: dict[str, Any]) -> None:
    """--workers N: one SO_REUSEPORT socket per worker, so the kernel spreads connections (one
    shared socket let the busiest worker accept them all); a killed worker's replacement
    serves its socket."""
    with service([*setup["args"], "--workers", "3"]) as (base, proc):
        port = int(base.rsplit(":", 1)[1])
        wait_until(lambda: len(_ss("-l", f"( sport = :{port} )").splitlines()) == 3,
                   what="three listening sockets")  # fmt: skip
        socks = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(24)]
        try:
            for s in socks:
                s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            assert all(s.recv(4096).startswith(b"HTTP/1.1 200") for s in socks)
            held = _ss("state", "established", f"( sport = :{port} )")
            pids = set(re.findall(r"pid=(\d+)", held))
            assert len(pids) >= 2, held  # 24 connections on one of 3 workers: p < 1e-10
        finally:
            for s in socks:
                s.close()
        victim = int(next(iter(pids)))
        assert victim != proc.pid
        os.kill(victim, signal.SIGKILL)
        time.sleep(1.5)  # the supervisor restarts it on the same socket
        for _ in range(12):
            assert httpx.get(f"{base}/healthz", headers={"Connection": "close"}).status_code == 200
        assert len(_ss("-l", f"( sport = :{port} )").splitlines()) == 3
