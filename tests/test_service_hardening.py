"""Threat model: the parent and the operator against the service, in process (memory sessions).

The parent keeps an old document and replays it in a new session after the store lost its
records; it has an enclave that signs caller-chosen keys (the PCR16 mark) produce a document
for a key of its own; it floods the memory store with create-and-delete calls and with junk
evidence. The operator needs /healthz to say when the store cannot take a session.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from nitro_attest.attestation.caller_keys import CALLER_KEY_LABEL, CALLER_KEY_PCR
from nitro_attest.nsm.simulator import SimulatedNsm
from nitro_attest.service.app import ServiceConfig, create_app
from nitro_attest.service.ear import EarSigner
from nitro_attest.service.sessions import MemoryStore, Session, StoreError

from .servicekit import MEDIA, check_ear, submod, write_policies

NEW = "/challenge-response/v1/newSession"


def _b64d(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


@pytest.fixture(scope="module")
def sim(sim_state: Path) -> SimulatedNsm:
    return SimulatedNsm.open(sim_state)


def _client(
    sim: SimulatedNsm, tmp: Path, *, store: Any = MemoryStore, skew: float = 60.0
) -> TestClient:
    config = ServiceConfig(write_policies(tmp / "policies.json"), EarSigner.generate(), store,
                           root_pem=sim.root_pem, session_ttl=60.0,
                           clock_skew=skew)  # fmt: skip
    return TestClient(create_app(config))


@pytest.fixture
def client(sim: SimulatedNsm, tmp_path: Path) -> Iterator[TestClient]:
    with _client(sim, tmp_path) as c:
        yield c


def _jwk(client: TestClient) -> dict[str, Any]:
    key: dict[str, Any] = client.get("/.well-known/veraison/verification").json()[
        "ear-verification-key"
    ]
    return key


def _submit(client: TestClient, location: str, doc: bytes) -> dict[str, Any]:
    r = client.post(location, content=doc, headers={"Content-Type": MEDIA})
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    return body


def _status(client: TestClient, query: str, make: Any) -> tuple[str, dict[str, Any]]:
    r = client.post(f"{NEW}?{query}")
    assert r.status_code == 201, r.text
    nonce = r.json()["nonce"]
    done = _submit(client, r.headers["location"], make(_b64d(nonce)))
    sub = submod(check_ear(done["result"], _jwk(client), nonce))
    return sub["ear.status"], sub["ear.veraison.annotated-evidence"]


def test_old_document_is_contraindicated_after_the_store_forgot(
    sim: SimulatedNsm, tmp_path: Path
) -> None:
    """Threat model: the parent replays a document affirmed once into a new session with the
    same relying-party nonce after the service restarted with an empty store."""
    nonce = b"relying-party-nonce-" + str(time.time()).encode()
    kept: list[bytes] = []

    def make(n: bytes) -> bytes:
        kept.append(sim.attestation(nonce=n))
        return kept[-1]

    with _client(sim, tmp_path, skew=1.0) as first:
        status, _ = _status(first, f"nonce={_b64(nonce)}", make)
        assert status == "affirming"
        assert first.post(f"{NEW}?nonce={_b64(nonce)}").status_code == 409
    time.sleep(1.3)  # the document is now older than the skew allows for a new session
    with _client(sim, tmp_path, skew=1.0) as restarted:  # a new, empty memory store
        status, evidence = _status(restarted, f"nonce={_b64(nonce)}", lambda n: kept[0])
        assert status == "contraindicated"
        assert evidence["error"]["check"] == "session_time"
        assert "before the session began" in evidence["error"]["message"]
        # A document the enclave makes now, for the same nonce, is fresh: affirmed.
        status, _ = _status(restarted, "nonceSize=32", lambda n: sim.attestation(nonce=n))
        assert status == "affirming"


def test_document_from_before_the_session_less_skew(sim: SimulatedNsm, tmp_path: Path) -> None:
    """A document made before the session began fails once it is older than the stated skew;
    one inside the skew passes (the NSM's clock and the service's disagree by a little)."""
    with _client(sim, tmp_path, skew=1.0) as c:
        old_nonce = _b64(b"\x01" * 32)
        early = sim.attestation(nonce=b"\x01" * 32)
        time.sleep(1.2)
        status, evidence = _status(c, "nonceSize=32",
                                   lambda n: sim.attestation(nonce=n))
        assert status == "affirming", evidence["error"]
        checks = {ch["name"]: ch["ok"] for ch in evidence["checks"]}
        assert checks["session_time"] is True and checks["caller_key_mark"] is True
        r = c.post(f"{NEW}?nonce={old_nonce}")
        done = _submit(c, r.headers["location"], early)
        sub = submod(check_ear(done["result"], _jwk(c), old_nonce))
        assert sub["ear.status"] == "contraindicated"
        assert sub["ear.veraison.annotated-evidence"]["error"]["check"] == "session_time"
    with _client(sim, tmp_path, skew=30.0) as lenient:  # the same age, inside a 30 s skew
        r = lenient.post(f"{NEW}?nonce={old_nonce}")
        done = _submit(lenient, r.headers["location"], early)
        sub = submod(check_ear(done["result"], _jwk(lenient), old_nonce))
        assert sub["ear.status"] == "affirming"


@pytest.mark.parametrize("data", [CALLER_KEY_LABEL, b"anything else"])
def test_caller_key_mark_is_contraindicated(
    client: TestClient, sim_state: Path, data: bytes
) -> None:
    """Threat model: an enclave serving --allow-caller-public-key signs a document naming the
    parent's key; the service must never affirm it (PCR16 not pristine, whatever its value)."""
    marked = SimulatedNsm.open(sim_state)
    marked.extend_pcr(CALLER_KEY_PCR, data)
    marked.lock_pcr(CALLER_KEY_PCR)
    parent_key = b"parent-chosen public key"
    status, evidence = _status(client, "nonceSize=32",
                               lambda n: marked.attestation(nonce=n, public_key=parent_key))
    assert status == "contraindicated"
    assert evidence["error"]["check"] == "caller_key_mark"
    assert "PCR16" in evidence["error"]["message"]


def test_pcr16_locked_pristine_or_absent_is_affirmed(client: TestClient, sim_state: Path) -> None:
    pristine = SimulatedNsm.open(sim_state)
    pristine.lock_pcr(CALLER_KEY_PCR)  # locked untouched: all zeros
    status, evidence = _status(client, "nonceSize=32", lambda n: pristine.attestation(nonce=n))
    assert status == "affirming", evidence["error"]
    assert evidence["pcrs"][str(CALLER_KEY_PCR)] == "00" * 48


def test_evidence_is_kept_as_digest_and_size(client: TestClient) -> None:
    """3,000 sessions of 64 KiB junk must not keep 64 KiB each: the store keeps what the
    result needs (the digest and the size)."""
    store = client.app.state.service.store  # type: ignore[attr-defined]
    junk = b"\xa5" * (64 * 1024)
    r = client.post(f"{NEW}?nonceSize=32")
    done = _submit(client, r.headers["location"], junk)
    assert done["evidence"] == {"type": MEDIA, "sha256": hashlib.sha256(junk).hexdigest(),
                                "size": len(junk)}  # fmt: skip
    stored: Session = store._sessions[r.headers["location"].rsplit("/", 1)[1]][1]
    assert len(stored.dumps()) < 4096
    assert client.get(r.headers["location"]).json()["evidence"]["size"] == len(junk)


def test_create_and_delete_does_not_lock_out_new_sessions(
    sim: SimulatedNsm, tmp_path: Path
) -> None:
    """Threat model: 100,000 create-and-delete calls with relying-party nonces used to fill the
    memory store's cap with day-long nonce records (503 for every new session for a day).
    The cap counts live sessions only; nonce records have their own bound (here both 50)."""

    def small() -> MemoryStore:
        return MemoryStore(max_sessions=50, max_nonces=50)

    with _client(sim, tmp_path, store=small) as c:
        for i in range(500):
            r = c.post(f"{NEW}?nonce={_b64(i.to_bytes(8, 'big'))}")
            if r.status_code == 201:
                assert c.delete(r.headers["location"]).status_code == 204
            else:  # nonce records full: relying-party nonces wait for the window, fail closed
                assert r.status_code == 503, r.text
        for _ in range(50):  # the cap applies to live sessions: all 50 slots are free
            assert c.post(f"{NEW}?nonceSize=16").status_code == 201
        r = c.post(f"{NEW}?nonceSize=16")
        assert r.status_code == 503 and "full" in r.json()["detail"]
        health = c.get("/healthz")
        assert health.status_code == 503
        assert "memory store full" in health.json()["reason"]


def test_memory_store_bounds_and_expiry() -> None:
    now = [1000.0]
    store = MemoryStore(max_sessions=3, max_nonces=2, clock=lambda: now[0])

    def session(i: int) -> Session:
        return Session(f"s{i}", "bm9uY2U", now[0] + 10, now[0], "prod", (MEDIA,))

    async def run() -> None:
        assert await store.create(session(1), nonce_digest="a", nonce_ttl=20)
        assert await store.create(session(2), nonce_digest="b", nonce_ttl=20)
        with pytest.raises(StoreError, match="nonce records"):
            await store.create(session(3), nonce_digest="c", nonce_ttl=20)
        assert await store.get("s3") is None  # refused: nothing stored
        assert await store.create(session(3))  # a service-chosen nonce needs no record
        with pytest.raises(StoreError, match="memory store full"):
            await store.create(session(4))
        assert await store.health() is not None
        assert await store.delete("s1") and await store.delete("s2")
        assert await store.create(session(4))  # a deleted session frees its slot at once
        assert not await store.create(session(5), nonce_digest="a", nonce_ttl=20)  # reuse
        now[0] += 21  # sessions and nonce records expire: both bounds free up
        assert await store.create(session(6), nonce_digest="a", nonce_ttl=20)
        assert await store.health() is None
        assert len(store._sessions) == 1 and len(store._nonces) == 1

    asyncio.run(run())


def test_healthz_ready_answers_reason_field(client: TestClient) -> None:
    assert client.get("/healthz").json() == {"status": "ready"}

    async def full() -> str | None:
        return "memory store full (3 live sessions)"

    client.app.state.service.store.health = full  # type: ignore[attr-defined]
    r = client.get("/healthz")
    assert r.status_code == 503
    assert r.json() == {"status": "unavailable", "reason": "memory store full (3 live sessions)"}
