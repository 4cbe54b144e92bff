"""The emulator's speed changes hold to what they replace: the envelope writer's fixed bytes to
the shared writer's output, the remembered policy decisions and recipient keys to what a fresh
evaluation or load gives, for every input that decides them (the parent varies each one)."""

from __future__ import annotations

import json
import random
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from nitro_attest.kms import envelope as shared
from nitro_attest.kms.envelope import seal_envelope
from nitro_attest.kms.keypolicy import RequestContext, evaluate
from nitro_attest.kms.sigv4 import Credentials, sign_request
from nitro_attest.kms_emulator import access, blob
from nitro_attest.kms_emulator.auth import Authenticator, Principal, SignedRequest
from nitro_attest.kms_emulator.envelope import seal_for_recipient, subject_key_identifier
from nitro_attest.kms_emulator.errors import KmsApiError
from nitro_attest.kms_emulator.front import _RequestIds
from nitro_attest.kms_emulator.recipient import MAX_KEYS, RecipientVerifier, condition_keys
from nitro_attest.kms_emulator.store import KeyRecord

from . import kmsemukit as kit

# --- the envelope writer ---------------------------------------------------------------------


class _FixedKey:
    """An RSA public key stand-in whose OAEP output is fixed, so two writers can be compared."""

    def __init__(self, bits: int) -> None:
        self.key_size = bits
        self.calls: list[bytes] = []

    def encrypt(self, plaintext: bytes, padding: object) -> bytes:
        self.calls.append(plaintext)
        return bytes(range(256)) * (self.key_size // 2048) + bytes(self.key_size // 8 % 256)


@pytest.mark.parametrize("bits", [2048, 3072, 4096])
def test_writer_is_byte_identical_to_the_shared_one(
    bits: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    ski = bytes(range(100, 132))
    pattern = bytes(range(251)) * 17
    for length in range(0, 4097):
        randomness = random.Random(length).randbytes(48)
        plaintext = pattern[length % 251 : length % 251 + length]
        # the shared writer draws the content key (32) then the IV (16); ours both at once
        draws = iter((randomness[:32], randomness[32:]))
        monkeypatch.setattr("os.urandom", lambda n, d=draws: next(d))
        key = _FixedKey(bits)
        expected = seal_envelope(plaintext, key, subject_key_id=ski)  # type: ignore[arg-type]
        # (the layout, cut on first use for this size, takes its own draws: any bytes do)
        monkeypatch.setattr("os.urandom", lambda n, r=randomness: r[:n])
        ours_key = _FixedKey(bits)
        ours = seal_for_recipient(plaintext, ours_key, ski=ski)  # type: ignore[arg-type]
        assert ours == expected, length
        assert ours_key.calls == key.calls == [randomness[:32]]
        monkeypatch.undo()


def test_writer_output_opens_and_each_answer_has_fresh_keys() -> None:
    key = kit.rsa_key()
    first = seal_for_recipient(b"secret", key.public_key())
    second = seal_for_recipient(b"secret", key.public_key())
    assert kit.open_envelope(first, key) == kit.open_envelope(second, key) == b"secret"
    assert first != second
    assert shared.parse_envelope(first)[1] != shared.parse_envelope(second)[1]  # the IVs
    assert first[33:65] == subject_key_identifier(key.public_key())


def test_other_identifier_lengths_go_to_the_shared_writer() -> None:
    key = kit.rsa_key()
    envelope = seal_for_recipient(b"x", key.public_key(), ski=b"\x01" * 20)
    assert kit.open_envelope(envelope, key) == b"x"
    assert b"\x80\x14" + b"\x01" * 20 in envelope


# --- remembered policy decisions -------------------------------------------------------------

ACCOUNT = "111122223333"
ENCLAVE = Principal("AKIAENCLAVE000000001", "s", f"arn:aws:iam::{ACCOUNT}:role/enclave", None)
OTHER = Principal("AKIAOTHER00000000001", "s", f"arn:aws:iam::{ACCOUNT}:role/other", None)
PCR0 = "ab" * 48


def _policy(pcr0: str = PCR0, *, deny_context: bool = False) -> str:
    statements: list[dict[str, object]] = [
        {
            "Sid": "enclave",
            "Effect": "Allow",
            "Principal": {"AWS": ENCLAVE.arn},
            "Action": "kms:Decrypt",
            "Resource": "*",
            "Condition": {"StringEqualsIgnoreCase": {"kms:RecipientAttestation:PCR0": pcr0}},
        }
    ]
    if deny_context:
        statements.append({
            "Sid": "no-test",
            "Effect": "Deny",
            "Principal": {"AWS": "*"},
            "Action": "kms:*",
            "Resource": "*",
            "Condition": {"StringEquals": {"kms:EncryptionContext:stage": "test"}},
        })
    return json.dumps({"Version": "2012-10-17", "Statement": statements})


def _key(policy: str, key_id: str = "1234abcd-12ab-34cd-56ef-1234567890ab") -> KeyRecord:
    return KeyRecord(
        key_id, ACCOUNT, "us-east-1", 0.0, "", "SYMMETRIC_DEFAULT", "ENCRYPT_DECRYPT", policy,
        bytes(32),
    )


def _keys(pcr0: str = PCR0, **context: str) -> dict[str, tuple[str, ...]]:
    keys: dict[str, tuple[str, ...]] = {
        "aws:principalarn": (ENCLAVE.arn,), "kms:calleraccount": (ACCOUNT,)
    }
    for name, value in context.items():
        keys[f"kms:encryptioncontext:{name}"] = (value,)
    if context:
        keys["kms:encryptioncontextkeys"] = tuple(context)
    keys["kms:recipientattestation:pcr0"] = (pcr0,)
    return keys


def _allowed(cache: access.PolicyCache, principal: Principal, key: KeyRecord,
             keys: dict[str, tuple[str, ...]], action: str = "kms:Decrypt") -> bool:
    try:
        access.authorize(cache, principal, action, key, keys)
    except KmsApiError as exc:
        assert exc.type_name == "AccessDeniedException"
        return False
    return True


def test_each_input_of_a_remembered_decision_decides_it() -> None:
    cache = access.PolicyCache()
    key = _key(_policy())
    assert _allowed(cache, ENCLAVE, key, _keys())
    assert _allowed(cache, ENCLAVE, key, _keys())  # remembered, the same answer
    assert not _allowed(cache, ENCLAVE, key, _keys("cd" * 48))  # another image
    assert not _allowed(cache, OTHER, key, _keys())  # another caller
    assert not _allowed(cache, ENCLAVE, key, _keys(), action="kms:GenerateDataKey")
    no_recipient = {k: v for k, v in _keys().items() if "recipient" not in k}
    assert not _allowed(cache, ENCLAVE, key, no_recipient)  # attestation key absent
    other_key = _key(_policy(), "ffffffff-12ab-34cd-56ef-1234567890ab")
    other_key.account = "444455556666"  # another key ARN: the Resource "*" still matches
    assert _allowed(cache, ENCLAVE, other_key, _keys())
    # the policy's text is part of the key: replaced (PutKeyPolicy), the new one decides
    key.policy = _policy("cd" * 48)
    assert not _allowed(cache, ENCLAVE, key, _keys())
    assert _allowed(cache, ENCLAVE, key, _keys("cd" * 48))
    key.policy = _policy()
    assert _allowed(cache, ENCLAVE, key, _keys())


def test_explicit_deny_by_context_is_not_hidden_by_a_remembered_allow() -> None:
    cache = access.PolicyCache()
    key = _key(_policy(deny_context=True))
    assert _allowed(cache, ENCLAVE, key, _keys(stage="prod"))
    assert not _allowed(cache, ENCLAVE, key, _keys(stage="test"))
    assert _allowed(cache, ENCLAVE, key, _keys(stage="prod"))
    with pytest.raises(KmsApiError, match="explicit deny"):
        access.authorize(cache, ENCLAVE, "kms:Decrypt", key, _keys(stage="test"))


def test_an_unreadable_stored_policy_denies_every_time() -> None:
    cache = access.PolicyCache()
    key = _key(_policy())
    assert _allowed(cache, ENCLAVE, key, _keys())
    key.policy = "{not json"
    assert not _allowed(cache, ENCLAVE, key, _keys())
    assert not _allowed(cache, ENCLAVE, key, _keys())


def test_remembered_decisions_are_bounded() -> None:
    cache = access.PolicyCache()
    key = _key(_policy())
    for n in range(access.MAX_DECISIONS + 5):
        assert not _allowed(cache, ENCLAVE, key, _keys(f"{n:096x}"))
        assert len(cache._decisions) <= access.MAX_DECISIONS
    assert _allowed(cache, ENCLAVE, key, _keys())


def test_a_decision_is_what_evaluate_gives() -> None:
    cache = access.PolicyCache()
    key = _key(_policy(deny_context=True))
    for keys in (_keys(), _keys("cd" * 48), _keys(stage="test"), _keys(stage="prod")):
        request = RequestContext("kms:Decrypt", ENCLAVE.arn, key.arn, keys)
        policy = cache.get(key)
        assert not isinstance(policy, Exception)
        fresh = evaluate(policy, request)
        assert cache.decide(key, "kms:Decrypt", ENCLAVE.arn, keys) == fresh
        assert cache.decide(key, "kms:Decrypt", ENCLAVE.arn, keys) == fresh


# --- remembered recipient keys ---------------------------------------------------------------


def test_a_remembered_key_is_the_documents_and_refusals_are_never_remembered(
    sim_state: Path,
) -> None:
    verifier = RecipientVerifier([(sim_state / "root.pem").read_bytes()])
    private = kit.rsa_key()
    first = verifier.verify(kit.document(sim_state, kit.spki(private)))
    again = verifier.verify(kit.document(sim_state, kit.spki(private)))
    assert again.public_key is first.public_key
    assert first.subject_key_id == subject_key_identifier(private.public_key())
    other = kit.rsa_key()
    third = verifier.verify(kit.document(sim_state, kit.spki(other)))
    assert third.subject_key_id == subject_key_identifier(other.public_key())
    small = rsa.generate_private_key(65537, 1024)
    for _ in range(2):
        with pytest.raises(KmsApiError, match="RSA-1024"):
            verifier.verify(kit.document(sim_state, kit.spki(small)))
    ec_key = ec.generate_private_key(ec.SECP256R1()).public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    for _ in range(2):
        with pytest.raises(KmsApiError, match="not an RSA key"):
            verifier.verify(kit.document(sim_state, ec_key))
    assert set(verifier._keys) == {kit.spki(private), kit.spki(other)}


def test_remembered_keys_are_bounded(sim_state: Path) -> None:
    verifier = RecipientVerifier([(sim_state / "root.pem").read_bytes()])
    public = kit.rsa_key().public_key()
    for n in range(MAX_KEYS + 3):
        verifier._keys[n.to_bytes(4, "big")] = (public, b"")
        if len(verifier._keys) >= MAX_KEYS:
            break
    private = kit.rsa_key()
    verifier.verify(kit.document(sim_state, kit.spki(private)))
    assert len(verifier._keys) == 1


# --- request ids -----------------------------------------------------------------------------


def test_request_ids_are_distinct_version_4_uuids_and_wrap_in_their_counter() -> None:
    ids = _RequestIds()
    taken = [ids.take() for _ in range(1000)]
    assert len(set(taken)) == 1000
    for value in taken[:3]:
        parsed = uuid.UUID(value.decode("ascii"))
        assert parsed.version == 4 and str(parsed).encode() == value
    assert _RequestIds().take()[:24] != ids.take()[:24]  # another process' prefix
    ids._next = 0xFFFF_FFFF_FFFF
    assert ids.take().endswith(b"-ffffffffffff") and ids.take().endswith(b"-000000000000")


def test_context_bytes_is_what_json_dumps_writes() -> None:
    for context in ({}, {"b": "2", "a": "1"}, {"é": "\u2603", "x": "\"\\"}, {"k": "v" * 100}):
        expected = json.dumps(dict(context), sort_keys=True, separators=(",", ":")).encode()
        assert blob.context_bytes(context) == expected


def test_remembered_condition_keys_follow_each_documents_pcrs(
    sim_state: Path, sim_debug_state: Path
) -> None:
    verifier = RecipientVerifier(
        [(sim_state / "root.pem").read_bytes(), (sim_debug_state / "root.pem").read_bytes()]
    )
    spki = kit.spki(kit.rsa_key())
    real = kit.document(sim_state, spki)
    debug = kit.document(sim_debug_state, spki)
    seen = []
    for doc in (real, debug, real, debug):
        recipient = verifier.verify(doc)
        assert dict(recipient.condition_keys) == condition_keys(recipient.document)
        seen.append(recipient.condition_keys["kms:recipientattestation:pcr0"])
    assert seen[0] == seen[2] != seen[1] == seen[3] == ("00" * 48,)
    with pytest.raises(TypeError):
        recipient.condition_keys["kms:recipientattestation:pcr0"] = ("ab",)  # type: ignore[index]


# --- the remembered X-Amz-Date ---------------------------------------------------------------


def test_one_authenticator_checks_each_requests_own_date() -> None:
    creds = Credentials("AKIADATE000000000001", "date-secret-0000000000000000000000000000")
    principal = Principal(creds.access_key_id, creds.secret_access_key, ENCLAVE.arn, None)
    authenticator = Authenticator({creds.access_key_id: principal}, "us-east-1")
    now = datetime(2026, 12, 6, 12, 0, 0, tzinfo=UTC)

    def verdict(when: datetime | None, date_text: str | None = None) -> str:
        headers = [("host", "kms"), ("x-amz-target", "TrentService.Decrypt")]
        headers += sign_request("POST", "/", [], headers, b"{}", creds, region="us-east-1",
                                service="kms", when=when or now)
        headers = [(k.lower(), v) for k, v in headers]
        if date_text is not None:  # altered after signing
            headers = [(k, date_text if k == "x-amz-date" else v) for k, v in headers]
        try:
            authenticator.authenticate(SignedRequest("POST", "/", [], headers, b"{}"), now)
        except KmsApiError as exc:
            return exc.type_name
        return "accepted"

    stale = now - timedelta(minutes=6)
    for _ in range(2):
        assert verdict(now) == "accepted"
        assert verdict(stale) == "InvalidSignatureException"  # expired, after a fresh one
        assert verdict(now + timedelta(minutes=6)) == "InvalidSignatureException"
        assert verdict(now, "20261206T120001Z") == "InvalidSignatureException"  # altered
        assert verdict(now, "20261306T120000Z") == "IncompleteSignatureException"  # no date
        assert verdict(now) == "accepted"


def test_header_values_join_repeated_headers_as_header_does() -> None:
    headers = [("host", "a"), ("x-amz-date", "1"), ("host", "b"), ("authorization", "x"),
               ("x-amz-date", ""), ("host", "c")]
    request = SignedRequest("POST", "/", [], headers, b"")
    values = request.header_values()
    assert values == {name: request.header(name) for name, _ in headers}
    assert values["host"] == "a,b,c" and values["x-amz-date"] == "1,"
    assert request.header("x-amz-target") is None and "x-amz-target" not in values


def test_a_remembered_decision_is_for_its_own_key() -> None:
    cache = access.PolicyCache()
    first = _key("")
    statement = json.loads(_policy())
    statement["Statement"][0]["Resource"] = first.arn
    first.policy = json.dumps(statement)
    second = _key(first.policy, "ffffffff-12ab-34cd-56ef-1234567890ab")  # the same text
    assert _allowed(cache, ENCLAVE, first, _keys())
    assert not _allowed(cache, ENCLAVE, second, _keys())
    assert _allowed(cache, ENCLAVE, first, _keys())
