"""Expectations travel as one Policy (with_* copies), the sender takes it, Check keys checks."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from nitro_attest.attestation.policy import Policy
from nitro_attest.attestation.verifier import Verifier
from nitro_attest.channel.messages import REQUEST_CHANNEL_ATTEST, REQUEST_SEALED_MESSAGE
from nitro_attest.channel.receiver import ChannelReceiver, InMemorySecretStore
from nitro_attest.channel.sender import deliver_secret
from nitro_attest.errors import Check, PcrMismatchError, PolicyError, UserDataMismatchError
from nitro_attest.nsm import open_backend
from nitro_attest.service.appraisal import REQUIRED, appraise_evidence
from nitro_attest.service.policies import NamedPolicy

from .channel_helpers import LocalExchange
from .fakes import EXPECTED, FakeNsm

SECRET = b"policy travels"


def test_with_copies_leave_the_original_and_check_the_new_value() -> None:
    base = Policy.build(expected_pcrs=EXPECTED)
    nonced = base.with_nonce(b"n" * 16)
    assert base.nonce is None and nonced.nonce == b"n" * 16 and nonced.pcr_sets == base.pcr_sets
    assert base.with_public_key(b"k").public_key == b"k"
    assert base.with_user_data(b"u").user_data == b"u"
    assert base.with_max_age(30).max_age == 30 and base.with_max_age(None).max_age is None
    assert base.refusing_caller_keys().refuse_caller_keys and not base.refuse_caller_keys
    with pytest.raises(PolicyError, match="nonce expectation is empty"):
        base.with_nonce(b"")
    with pytest.raises(PolicyError, match="max_age"):
        base.with_max_age(float("inf"))
    with pytest.raises(dataclasses.FrozenInstanceError):
        base.nonce = b"x"  # type: ignore[misc]


def _setup() -> tuple[LocalExchange, Verifier, InMemorySecretStore]:
    store = InMemorySecretStore()
    nsm = FakeNsm()
    return LocalExchange(ChannelReceiver(handler=store), nsm), Verifier(
        root_pem=nsm.chain.root_pem
    ), store


def test_deliver_secret_takes_a_policy() -> None:
    ex, verifier, store = _setup()
    policy = Policy.build(expected_pcrs=EXPECTED).with_user_data(b"order-42")
    receipt = deliver_secret(ex, SECRET, verifier=verifier, at="document", policy=policy)
    assert store.secrets == [SECRET]
    assert ex.kinds() == [REQUEST_CHANNEL_ATTEST, REQUEST_SEALED_MESSAGE]
    assert ex.requests[0][1]["user_data"] == b"order-42"  # the policy's user_data is sent
    used = receipt.verified.policy
    assert used.refuse_caller_keys and used.nonce == ex.requests[0][1]["nonce"]
    assert used.user_data == b"order-42"


def test_a_policy_is_enforced_like_the_keywords() -> None:
    ex, verifier, store = _setup()
    wrong = Policy.build(expected_pcrs={0: bytes(48)})
    with pytest.raises(PcrMismatchError):
        deliver_secret(ex, SECRET, verifier=verifier, at="document", policy=wrong)
    assert ex.kinds() == [REQUEST_CHANNEL_ATTEST] and store.secrets == []
    # The parent answers a request for user_data A with a document for B: refused.
    ex2, verifier2, _ = _setup()
    ex2.tamper = lambda kind, fields: {**fields, "user_data": b"other"} if kind == (
        REQUEST_CHANNEL_ATTEST) else fields
    policy = Policy.build(expected_pcrs=EXPECTED, user_data=b"mine")
    with pytest.raises(UserDataMismatchError):
        deliver_secret(ex2, SECRET, verifier=verifier2, at="document", policy=policy)
    assert ex2.kinds() == [REQUEST_CHANNEL_ATTEST]


@pytest.mark.parametrize(
    ("policy", "loose", "message"),
    [
        (Policy.build(expected_pcrs=EXPECTED), {"allow_debug": True}, "not both"),
        (Policy.build(expected_pcrs=EXPECTED), {"expected_pcrs": EXPECTED}, "not both"),
        (Policy.build(expected_pcrs=EXPECTED), {"kind": "enclave"}, "not both"),
        (Policy.build(expected_pcrs=EXPECTED, nonce=b"n" * 16), {}, "picks each delivery's nonce"),
        (Policy.build(expected_pcrs=EXPECTED, public_key=b"k"), {}, "channel key"),
        (Policy(), {}, "without a PCR expectation"),
    ],
)
def test_refused_before_contact(policy: Policy, loose: dict[str, object], message: str) -> None:
    ex, verifier, _ = _setup()
    with pytest.raises(PolicyError, match=message):
        deliver_secret(ex, SECRET, verifier=verifier, at="document", policy=policy, **loose)  # type: ignore[arg-type]
    assert ex.requests == []


def test_check_keys_the_report_and_the_appraisal(sim_state: Path) -> None:
    nsm = open_backend("simulator", state_dir=sim_state)
    try:
        document = nsm.attestation(nonce=b"s" * 16)
    finally:
        nsm.close()
    verifier = Verifier(root_pem=(sim_state / "root.pem").read_bytes())
    pcr0 = verifier.verify(document).document.pcrs[0]
    report = verifier.evaluate(document, expected_pcrs={0: pcr0})
    assert all(isinstance(c.name, Check) for c in report.checks)
    assert report.outcome()[Check.PCRS] is True and report.outcome()[Check.NONCE] is None
    result = report.result(Check.PCRS)
    assert result is not None and result.to_json()["name"] == "pcrs"
    assert type(result.to_json()["name"]) is str  # JSON shape unchanged: plain strings
    assert Check.SESSION_TIME in REQUIRED and Check.CALLER_KEY_MARK in REQUIRED
    named = NamedPolicy("p", Policy.build(expected_pcrs={0: pcr0}).pcr_sets)
    appraisal = appraise_evidence(verifier, named, b"s" * 16, document, not_before=0.0)
    assert appraisal.status == "affirming", appraisal.annotated["error"]
    assert appraisal.failed is None and appraisal.vector["executables"] == 2
    names = [c["name"] for c in appraisal.annotated["checks"]]
    assert names[-2:] == ["session_time", "caller_key_mark"]
    assert all(type(n) is str for n in names)
    late = appraise_evidence(verifier, named, b"s" * 16, document, not_before=4e9)
    assert late.status == "contraindicated" and late.failed == "session_time"
    assert type(late.failed) is str and late.annotated["error"]["check"] == "session_time"
    other = appraise_evidence(verifier, named, b"t" * 16, document, not_before=0.0)
    assert other.failed == "nonce"
