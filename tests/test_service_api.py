"""The verification service in process (memory sessions): Veraison API shapes and codes, and the
EAR for good and attacked documents, each EAR checked with joserfc against the discovered key."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from nitro_attest.nsm.simulator import SimulatedNsm
from nitro_attest.service.app import INLINE_APPRAISAL_MAX, ServiceConfig, create_app
from nitro_attest.service.ear import EarSigner
from nitro_attest.service.sessions import MemoryStore

from .servicekit import (
    MEASUREMENTS,
    MEDIA,
    build_enclave_json,
    check_ear,
    debug_twin,
    make_sim,
    submod,
    write_policies,
)

NEW = "/challenge-response/v1/newSession"
OTHER_PCRS = {0: b"\x40" * 48, 1: MEASUREMENTS[1], 2: MEASUREMENTS[2]}
DEBUG_PCRS = {0: bytes(48), 1: bytes(48), 2: bytes(48)}  # what a debug-mode enclave reports


@pytest.fixture(scope="module")
def sims(sim_state: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, SimulatedNsm]:
    tmp = tmp_path_factory.mktemp("sims")
    good = SimulatedNsm.open(sim_state)
    # "debug" must share good's CA (sim_debug_state has its own) so that only the debug flag
    # differs; "foreign" needs a CA of its own in production mode.
    return {"good": good, "debug": debug_twin(good, tmp / "debug"),
            "foreign": make_sim(tmp / "foreign")}  # fmt: skip


def _app_client(sims: dict[str, SimulatedNsm], tmp: Path, ttl: float = 60.0) -> TestClient:
    policies = write_policies(
        tmp / "policies.json",
        other={"expected": [build_enclave_json(OTHER_PCRS)]},
        dev={"expected": [build_enclave_json(DEBUG_PCRS)], "allow_debug": True},
        tpm={"expected": [build_enclave_json(MEASUREMENTS)], "kind": "nitrotpm"},
        fresh={"expected": [build_enclave_json(MEASUREMENTS)], "max_age": 60},
    )
    config = ServiceConfig(policies, EarSigner.generate(), MemoryStore,
                           root_pem=sims["good"].root_pem, session_ttl=ttl)  # fmt: skip
    return TestClient(create_app(config))


@pytest.fixture
def client(sims: dict[str, SimulatedNsm], tmp_path: Path) -> Iterator[TestClient]:
    with _app_client(sims, tmp_path) as c:
        yield c


def _jwk(client: TestClient) -> dict[str, Any]:
    key: dict[str, Any] = client.get("/.well-known/veraison/verification").json()[
        "ear-verification-key"
    ]
    return key


def _b64d(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _session(client: TestClient, query: str = "nonceSize=32") -> tuple[str, dict[str, Any]]:
    r = client.post(f"{NEW}?{query}")
    assert r.status_code == 201, r.text
    assert r.headers["location"].startswith("/challenge-response/v1/session/")
    return r.headers["location"], r.json()


def _appraise(
    client: TestClient, make_doc: Callable[[bytes], bytes], policy: str | None = None
) -> tuple[dict[str, Any], bytes]:
    location, body = _session(client, "nonceSize=32" + (f"&policy={policy}" if policy else ""))
    doc = make_doc(_b64d(body["nonce"]))
    r = client.post(location, content=doc, headers={"Content-Type": MEDIA})
    assert r.status_code == 200, r.text
    done = r.json()
    assert done["state"] == "complete"
    assert done["evidence"] == {"type": MEDIA, "sha256": hashlib.sha256(doc).hexdigest(),
                                "size": len(doc)}  # the digest, never the bytes
    return check_ear(done["result"], _jwk(client), body["nonce"]), doc


def test_discovery_document(client: TestClient) -> None:
    r = client.get("/.well-known/veraison/verification")
    assert r.status_code == 200
    data = r.json()
    assert data["media-types"] == [MEDIA]
    assert data["state"] == "READY"
    assert data["api-endpoints"]["newChallengeResponseSession"] == NEW
    assert data["ear-verification-key"]["alg"] == "ES256"
    assert data["ear-verification-key"]["kty"] == "EC"
    assert "d" not in data["ear-verification-key"]  # never the private part


def test_fresh_document_is_affirming(client: TestClient, sims: dict[str, SimulatedNsm]) -> None:
    claims, doc = _appraise(client, lambda n: sims["good"].attestation(nonce=n))
    sub = submod(claims)
    assert sub["ear.status"] == "affirming"
    assert sub["ear.appraisal-policy-id"] == "policy:prod"
    assert sub["ear.trustworthiness-vector"] == {
        "instance-identity": 2, "hardware": 2, "configuration": 2, "executables": 2,
        "runtime-opaque": 3,
    }  # fmt: skip
    evidence = sub["ear.veraison.annotated-evidence"]
    assert evidence["module_id"] == sims["good"].module_id
    assert evidence["kind"] == "enclave"
    assert evidence["pcrs"]["0"] == MEASUREMENTS[0].hex()
    assert evidence["document_sha256"] == hashlib.sha256(doc).hexdigest()
    assert evidence["error"] is None
    checks = {c["name"]: c["ok"] for c in evidence["checks"]}
    for name in ("format", "cose_signature", "certificate_chain", "debug_mode", "pcrs", "nonce",
                 "document_kind"):  # fmt: skip
        assert checks[name] is True, name


def _flip_signature(doc: bytes) -> bytes:
    tampered = bytearray(doc)
    tampered[-1] ^= 0x01  # the signature is the COSE_Sign1's last element
    return bytes(tampered)


CASES: dict[str, tuple[str | None, str, Callable[[dict[str, SimulatedNsm], bytes], bytes]]] = {
    "wrong PCR": ("other", "pcrs", lambda s, n: s["good"].attestation(nonce=n)),
    "wrong nonce": (None, "nonce", lambda s, n: s["good"].attestation(nonce=b"\x00" * 32)),
    "no nonce": (None, "nonce", lambda s, n: s["good"].attestation()),
    "flipped signature bit": (
        None, "cose_signature", lambda s, n: _flip_signature(s["good"].attestation(nonce=n))
    ),
    "foreign root": (None, "certificate_chain", lambda s, n: s["foreign"].attestation(nonce=n)),
    "debug document": (None, "debug_mode", lambda s, n: s["debug"].attestation(nonce=n)),
    "wrong kind": ("tpm", "document_kind", lambda s, n: s["good"].attestation(nonce=n)),
    "garbage": (None, "format", lambda s, n: b"\xa1\x01\x02 not a document"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_attacks_are_contraindicated(
    client: TestClient, sims: dict[str, SimulatedNsm], case: str
) -> None:
    policy, check, make = CASES[case]
    claims, _ = _appraise(client, lambda n: make(sims, n), policy)
    sub = submod(claims)
    assert sub["ear.status"] == "contraindicated"
    assert sub["ear.veraison.annotated-evidence"]["error"]["check"] == check
    failed = [c for c in sub["ear.veraison.annotated-evidence"]["checks"] if c["ok"] is False]
    assert failed and failed[0]["name"] == check
    vector = sub["ear.trustworthiness-vector"]
    expected = {"cose_signature": 99, "certificate_chain": 97, "format": 1}
    if check in expected:
        assert vector["hardware"] == vector["instance-identity"] == expected[check]
    if check == "pcrs":
        assert vector["executables"] == 33
    if check == "debug_mode":
        assert vector["configuration"] == 96


def test_allowed_debug_document_is_a_warning(
    client: TestClient, sims: dict[str, SimulatedNsm]
) -> None:
    claims, _ = _appraise(client, lambda n: sims["debug"].attestation(nonce=n), "dev")
    assert submod(claims)["ear.status"] == "warning"
    assert submod(claims)["ear.trustworthiness-vector"]["configuration"] == 32


def test_max_age_policy_checks_freshness(
    client: TestClient, sims: dict[str, SimulatedNsm]
) -> None:
    claims, _ = _appraise(client, lambda n: sims["good"].attestation(nonce=n), "fresh")
    evidence = submod(claims)["ear.veraison.annotated-evidence"]
    checks = {c["name"]: c["ok"] for c in evidence["checks"]}
    assert submod(claims)["ear.status"] == "affirming" and checks["freshness"] is True


def test_session_takes_evidence_once(client: TestClient, sims: dict[str, SimulatedNsm]) -> None:
    location, body = _session(client)
    doc = sims["good"].attestation(nonce=_b64d(body["nonce"]))
    first = client.post(location, content=doc, headers={"Content-Type": MEDIA})
    assert first.status_code == 200
    again = client.post(location, content=doc, headers={"Content-Type": MEDIA})
    assert again.status_code == 409
    assert again.headers["content-type"] == "application/problem+json"
    assert "result" not in again.json()
    assert client.get(location).json()["result"] == first.json()["result"]


def test_concurrent_submissions_one_wins(client: TestClient, sims: dict[str, SimulatedNsm]) -> None:
    location, body = _session(client)
    doc = sims["good"].attestation(nonce=_b64d(body["nonce"]))

    async def race() -> list[int]:
        transport = httpx.ASGITransport(app=client.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as ac:
            rs = await asyncio.gather(*(ac.post(location, content=doc,
                                                headers={"Content-Type": MEDIA})
                                        for _ in range(8)))  # fmt: skip
        return sorted(r.status_code for r in rs)

    assert asyncio.run(race()) == [200] + [409] * 7


def test_concurrent_large_submissions_one_wins(client: TestClient) -> None:
    """Evidence over INLINE_APPRAISAL_MAX is appraised in the worker's thread, so concurrent
    submissions for one session overlap their appraisals: one outcome is stored, the others are
    409 without a result."""
    location, _ = _session(client)
    junk = b"\xa0" * (INLINE_APPRAISAL_MAX + 1)

    async def race() -> list[httpx.Response]:
        transport = httpx.ASGITransport(app=client.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as ac:
            return await asyncio.gather(*(ac.post(location, content=junk,
                                                  headers={"Content-Type": MEDIA})
                                          for _ in range(6)))  # fmt: skip

    answers = asyncio.run(race())
    assert sorted(r.status_code for r in answers) == [200] + [409] * 5
    winner = next(r for r in answers if r.status_code == 200).json()
    assert all("result" not in r.json() for r in answers if r.status_code == 409)
    stored = client.get(location).json()
    assert stored["state"] == "complete" and stored["result"] == winner["result"]


def test_new_session_parameters(client: TestClient) -> None:
    for size in (8, 64):
        _, body = _session(client, f"nonceSize={size}")
        assert len(_b64d(body["nonce"])) == size
        assert "=" not in body["nonce"]
        assert body["state"] == "waiting" and body["accept"] == [MEDIA]
    _, body = _session(client, "")
    assert len(_b64d(body["nonce"])) == 32
    for query in ("nonceSize=7", "nonceSize=65", "nonceSize=x", "policy=nope",
                  "nonce=AAAAAAAAAAA&nonceSize=8", "nonce=AAAA", "nonce=not*base64url",
                  "nonce=AAAAAAAAAAA="):  # fmt: skip
        r = client.post(f"{NEW}?{query}")
        assert r.status_code == 400, query
        assert r.json()["status"] == 400


def test_relying_party_nonce_is_used_once(
    client: TestClient, sims: dict[str, SimulatedNsm]
) -> None:
    nonce = base64.urlsafe_b64encode(b"relying-party-nonce!").rstrip(b"=").decode()
    location, body = _session(client, f"nonce={nonce}")
    assert body["nonce"] == nonce
    # The same nonce again would let the first session's document be appraised a second time.
    assert client.post(f"{NEW}?nonce={nonce}").status_code == 409
    doc = sims["good"].attestation(nonce=b"relying-party-nonce!")
    done = client.post(location, content=doc, headers={"Content-Type": MEDIA}).json()
    assert submod(check_ear(done["result"], _jwk(client), nonce))["ear.status"] == "affirming"


def test_body_limits_and_media_types(client: TestClient) -> None:
    location, _ = _session(client)
    big = b"\x00" * (64 * 1024 + 1)
    assert client.post(location, content=big, headers={"Content-Type": MEDIA}).status_code == 413

    def chunks() -> Iterator[bytes]:  # no Content-Length: the cap must hold while streaming
        for _ in range(80):
            yield b"\x00" * 1024

    streamed = client.post(location, content=chunks(), headers={"Content-Type": MEDIA})
    assert streamed.status_code == 413
    for media in ("application/cose", "application/octet-stream", "", MEDIA + "x"):
        r = client.post(location, content=b"\xd2", headers={"Content-Type": media})
        assert r.status_code == 415, media
    assert client.post(location, content=b"", headers={"Content-Type": MEDIA}).status_code == 400
    assert client.get(location).json()["state"] == "waiting"  # none of these used the session


def test_unknown_and_deleted_sessions(client: TestClient) -> None:
    unknown = "/challenge-response/v1/session/00000000-0000-4000-8000-000000000000"
    assert client.get(unknown).status_code == 404
    assert client.delete(unknown).status_code == 404
    assert client.post(unknown, content=b"x", headers={"Content-Type": MEDIA}).status_code == 404
    assert client.get("/challenge-response/v1/session/" + "a" * 500).status_code == 404
    location, _ = _session(client)
    assert client.delete(location).status_code == 204
    assert client.get(location).status_code == 404
    assert client.post(location, content=b"x", headers={"Content-Type": MEDIA}).status_code == 404


def test_expired_session_is_gone(sims: dict[str, SimulatedNsm], tmp_path: Path) -> None:
    with _app_client(sims, tmp_path, ttl=0.3) as c:
        location, body = _session(c)
        time.sleep(0.4)
        assert c.get(location).status_code == 404
        doc = sims["good"].attestation(nonce=_b64d(body["nonce"]))
        assert c.post(location, content=doc, headers={"Content-Type": MEDIA}).status_code == 404


def test_health_and_metrics(client: TestClient, sims: dict[str, SimulatedNsm]) -> None:
    assert client.get("/healthz").json() == {"status": "ready"}
    _appraise(client, lambda n: sims["good"].attestation(nonce=n))
    _appraise(client, lambda n: sims["good"].attestation(nonce=b"\x01" * 32))
    text = client.get("/metrics").text
    assert 'nitro_attest_results_total{status="affirming"} 1.0' in text
    assert 'nitro_attest_results_total{status="contraindicated"} 1.0' in text
    assert "nitro_attest_request_seconds_bucket" in text
    assert "nitro_attest_store_errors_total 0.0" in text


def test_reload_keeps_old_policies_on_error(
    client: TestClient, sims: dict[str, SimulatedNsm], tmp_path: Path
) -> None:
    state = client.app.state.service  # type: ignore[attr-defined]
    path = tmp_path / "policies.json"
    good_text = path.read_text()
    path.write_text('{"default": "prod", "policies": {"prod": {"expected": [], "x": 1}}}')
    assert state.reload() is False
    claims, _ = _appraise(client, lambda n: sims["good"].attestation(nonce=n))
    assert submod(claims)["ear.status"] == "affirming"  # old policies still in force
    location, body = _session(client, "policy=other")
    data = json.loads(good_text)
    data["policies"]["prod"] = data["policies"].pop("other")  # 'other' is gone; prod changes
    path.write_text(json.dumps(data))
    assert state.reload() is True
    claims, _ = _appraise(client, lambda n: sims["good"].attestation(nonce=n))
    assert submod(claims)["ear.status"] == "contraindicated"
    doc = sims["good"].attestation(nonce=_b64d(body["nonce"]))
    done = client.post(location, content=doc, headers={"Content-Type": MEDIA}).json()
    assert submod(check_ear(done["result"], _jwk(client), body["nonce"]))["ear.status"] == (
        "contraindicated"  # its policy vanished in the reload: fail closed
    )
