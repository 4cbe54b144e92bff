"""The parent and a hostile caller against the emulator's remembered answers (docs/kms.md,
"Red team (rt-emu4)"): the envelope's fixed bytes cut once per RSA size, and the remembered
policy decisions' memory. Findings' tests failed before their fix; the rest hold what was
attacked and did not give."""

from __future__ import annotations

import base64
import dataclasses
import gc
import itertools
import json
import random
import subprocess
import sys
import tracemalloc
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from nitro_attest.attestation.document import DocumentKind
from nitro_attest.kms import envelope as shared
from nitro_attest.kms.keypolicy import Decision, RequestContext, evaluate
from nitro_attest.kms.sigv4 import Credentials, sign_request
from nitro_attest.kms_emulator import access
from nitro_attest.kms_emulator import envelope as writer
from nitro_attest.kms_emulator.auth import Authenticator, Principal, SignedRequest
from nitro_attest.kms_emulator.errors import KmsApiError
from nitro_attest.kms_emulator.operations import Emulator
from nitro_attest.kms_emulator.recipient import RecipientVerifier
from nitro_attest.kms_emulator.store import KeyRecord, StateStore

from . import kmsemukit as kit

ACCOUNT = "111122223333"
ADMIN = Principal("AKIAADMIN0000000001", "s", f"arn:aws:iam::{ACCOUNT}:root", None)
STRANGER = Principal("AKIASTRANGER0000001", "s", "arn:aws:iam::444455556666:role/stranger", None)


# --- finding: an RSA key whose length in bytes ends in 0xbb got a corrupt envelope -----------


class _FixedKey:
    """An RSA public key stand-in of ``size`` bytes whose OAEP output is fixed (the two writers'
    outputs compare byte for byte); its last byte is 0xbb, like the layout's placeholder."""

    def __init__(self, size: int, bits: int | None = None) -> None:
        self.key_size = bits if bits is not None else size * 8
        self.size = size

    def encrypt(self, plaintext: bytes, padding: object) -> bytes:
        return (bytes(range(256)) * (self.size // 256 + 1))[: self.size - 1] + b"\xbb"


def test_writer_matches_the_shared_one_for_every_rsa_length(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Every modulus length from RSA-2048 to RSA-16384 (the emulator sets no upper bound), with
    bit counts that are not a multiple of 8 too. Before the fix the layout searched the
    placeholder for the encrypted key (0xbb bytes) and found it one byte early when the key's
    DER length ended in 0xbb: 443, 699, 955... bytes (RSA-3537..3544, -5585..5592, ...) got an
    envelope with the length's last byte missing and the key shifted by one."""
    ski = bytes(range(7, 39))
    wrong = []
    for size in range(256, 2049):
        bits = size * 8 - (size % 7)  # e.g. RSA-3541 is 443 bytes too
        for plaintext in (b"", b"k" * 32, bytes(range(256)) * 16):
            randomness = random.Random(size * 3 + len(plaintext)).randbytes(48)
            draws = iter((randomness[:32], randomness[32:]))
            monkeypatch.setattr("os.urandom", lambda n, d=draws: next(d))
            expected = shared.seal_envelope(
                plaintext, _FixedKey(size, bits), subject_key_id=ski  # type: ignore[arg-type]
            )
            monkeypatch.setattr("os.urandom", lambda n, r=randomness: r[:n])
            ours = writer.seal_for_recipient(
                plaintext, _FixedKey(size, bits), ski=ski  # type: ignore[arg-type]
            )
            monkeypatch.undo()
            if ours != expected:
                wrong.append((bits, len(plaintext)))
    assert wrong == []


@pytest.fixture(scope="module")
def rsa_3544() -> rsa.RSAPrivateKey:
    return kit.rsa_key(3544)  # 443 bytes: the DER length of the encrypted key is 82 01 bb


def _emulator(folder: Path, sim_state: Path) -> Iterator[Emulator]:
    store = StateStore(folder)
    try:
        yield Emulator(store, RecipientVerifier([(sim_state / "root.pem").read_bytes()]),
                       "us-east-1")
    finally:
        store.close()


@pytest.fixture
def emulator(tmp_path: Path, sim_state: Path) -> Iterator[Emulator]:
    yield from _emulator(tmp_path / "state", sim_state)


def test_an_rsa_3544_recipient_gets_an_envelope_openssl_opens(
    emulator: Emulator, sim_state: Path, rsa_3544: rsa.RSAPrivateKey, tmp_path: Path
) -> None:
    """End to end: a document naming an RSA-3544 key, GenerateDataKey with Recipient; the
    envelope opens with OpenSSL, the project's reader and asn1crypto, to the data key."""
    key_id = emulator.call("CreateKey", ADMIN, {})["KeyMetadata"]["KeyId"]
    doc = kit.document(sim_state, kit.spki(rsa_3544))
    answer = emulator.call("GenerateDataKey", ADMIN, {
        "KeyId": key_id, "NumberOfBytes": 48,
        "Recipient": {"AttestationDocument": base64.b64encode(doc).decode()},
    })
    envelope = base64.b64decode(answer["CiphertextForRecipient"])
    assert "Plaintext" not in answer
    (tmp_path / "env.ber").write_bytes(envelope)
    (tmp_path / "key.pem").write_bytes(kit.pem(rsa_3544))
    out = subprocess.run(
        ["openssl", "cms", "-decrypt", "-inform", "DER", "-inkey", str(tmp_path / "key.pem"),
         "-in", str(tmp_path / "env.ber")],
        capture_output=True, timeout=30, check=False,
    )
    assert out.returncode == 0, out.stderr.decode(errors="replace")[-300:]
    assert len(out.stdout) == 48
    assert shared.open_envelope(envelope, rsa_3544) == out.stdout
    assert kit.open_envelope(envelope, rsa_3544) == out.stdout


# --- finding: remembered decisions kept a hostile caller's request (and old policies) --------


def _retained(work: Iterator[None]) -> int:
    """The most bytes still allocated after any step of ``work`` (each step's locals gone)."""
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        most = 0
        for _ in work:
            most = max(most, tracemalloc.get_traced_memory()[0] - before)
        gc.collect()
        return max(most, tracemalloc.get_traced_memory()[0] - before)
    finally:
        tracemalloc.stop()


def _names(count: int) -> list[str]:
    """``count`` two-character EncryptionContext names distinct ignoring case."""
    alphabet = "".join(c for c in map(chr, range(33, 127)) if not c.isupper())
    return ["".join(p) for p in itertools.islice(itertools.product(alphabet, repeat=2), count)]


def test_large_encryption_contexts_are_not_kept(emulator: Emulator) -> None:
    """A caller with no rights on the key sends Encrypts with an 8 KiB context of 4096 names
    (32 KiB of JSON, far under the body cap), each a little different. Each is denied, and
    before the fix each left its condition keys (~770 KiB of Python objects) in the decision
    cache: 1,024 such requests (33 MiB sent) held ~770 MiB. Now a decision whose inputs weigh
    more than MAX_SLOT_BYTES is evaluated every time and not kept."""
    key = emulator.call("CreateKey", ADMIN, {})["KeyMetadata"]["Arn"]
    names = _names(4094)  # 8188 bytes of names, up to 4 of the value: the 8192 cap

    def attack() -> Iterator[None]:
        for n in range(24):  # ~19 MiB kept before the fix
            context = dict.fromkeys(names, "")
            context[names[0]] = str(n)
            with pytest.raises(KmsApiError, match="AccessDenied"):
                emulator.call("Encrypt", STRANGER, {
                    "KeyId": key, "Plaintext": "AA==", "EncryptionContext": context,
                })
            yield

    assert _retained(attack()) < 2 * 1024 * 1024


def test_remembered_decisions_stay_within_their_byte_budget(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Contexts just under the per-decision cap, many of them: what the cache holds stays
    within MAX_DECISION_BYTES (its estimate of a decision's weight is not below what it keeps)."""
    monkeypatch.setattr(access, "MAX_DECISION_BYTES", 1024 * 1024)
    cache = access.PolicyCache()
    key = KeyRecord("1234abcd-12ab-34cd-56ef-1234567890ab", ACCOUNT, "us-east-1", 0.0, "",
                    "SYMMETRIC_DEFAULT", "ENCRYPT_DECRYPT", access.default_policy(ACCOUNT),
                    bytes(32))
    sizes = [0, 1, 8, 40, 90, 120]
    most = 0

    def fill() -> Iterator[None]:
        nonlocal most
        for n in range(600):
            names = _names(sizes[n % len(sizes)])
            astral = "\U0001f600" * (n % 3)  # 4 bytes a character in a str, when present
            context = {name: f"{n}-{name}{astral}" for name in names}
            keys = access.request_keys(ADMIN, context)
            decision = cache.decide(key, "kms:Encrypt", ADMIN.arn, keys)
            assert not isinstance(decision, Exception) and decision.allowed
            most = max(most, len(cache._decisions))
            del keys, context
            yield

    held = _retained(fill())
    assert held <= access.MAX_DECISION_BYTES + access.MAX_SLOT_BYTES
    assert most > 40  # and it does remember (~60 fit at these sizes)


def test_replaced_policies_are_not_kept_by_their_decisions(emulator: Emulator) -> None:
    """The owner of a key (any caller: CreateKey) replaces its policy again and again with
    32 KiB texts. Before the fix every decision kept the policy text it was made under, so
    1,024 PutKeyPolicy calls held 1,024 old texts (~34 MiB); now a decision holds a token of
    the text, and the text goes when the key's policy is replaced."""
    key = emulator.call("CreateKey", ADMIN, {})["KeyMetadata"]["KeyId"]
    policy = json.loads(access.default_policy(ACCOUNT))

    def churn() -> Iterator[None]:
        for n in range(48):
            policy["Id"] = f"{n:04d}" + "x" * 32000
            emulator.call("PutKeyPolicy", ADMIN, {"KeyId": key, "Policy": json.dumps(policy)})
            yield
        emulator.call("DescribeKey", ADMIN, {"KeyId": key})

    assert _retained(churn()) < 16 * 32 * 1024  # 48 replaced texts: 1.7 MB before, ~0.25 now


# --- held: what was attacked and did not give -------------------------------------------------


def _policy(*statements: dict[str, object]) -> str:
    return json.dumps({"Version": "2012-10-17", "Statement": list(statements)})


def _allow(condition: dict[str, object] | None = None, principal: str = "*") -> dict[str, object]:
    statement: dict[str, object] = {
        "Effect": "Allow", "Principal": {"AWS": principal}, "Action": "kms:Decrypt",
        "Resource": "*",
    }
    if condition:
        statement["Condition"] = condition
    return statement


def _verdicts(cache: access.PolicyCache, key: KeyRecord, cases: list[
        tuple[str, dict[str, tuple[str, ...]]]]) -> list[bool]:
    out = []
    for principal_arn, keys in cases:
        policy = cache.get(key)
        assert not isinstance(policy, Exception)
        fresh = evaluate(policy, RequestContext("kms:Decrypt", principal_arn, key.arn, keys))
        for _ in range(2):  # the remembered answer, then the same again
            decision = cache.decide(key, "kms:Decrypt", principal_arn, keys)
            assert decision == fresh, (principal_arn, keys)
        out.append(fresh.allowed)
    return out


def test_remembered_decisions_follow_every_input_a_condition_reads() -> None:
    """Absent, empty and present keys; case in names, values and the caller's ARN; ForAnyValue,
    ForAllValues, IfExists, Null; one cache across all of them and across policy texts: each
    remembered answer equals a fresh evaluation (and both readings occur)."""
    cache = access.PolicyCache()
    role = f"arn:aws:iam::{ACCOUNT}:role/enclave"
    conditions: list[dict[str, object]] = [
        {"StringEquals": {"kms:EncryptionContext:Dept": "a"}},
        {"StringEqualsIfExists": {"kms:EncryptionContext:dept": "a"}},
        {"StringEqualsIgnoreCase": {"kms:encryptioncontext:DEPT": "A"}},
        {"ForAnyValue:StringEquals": {"kms:EncryptionContextKeys": ["dept", "x"]}},
        {"ForAllValues:StringEquals": {"kms:EncryptionContextKeys": ["dept"]}},
        {"Null": {"kms:EncryptionContext:dept": "true"}},
        {"Null": {"kms:RecipientAttestation:PCR0": "false"}},
        {"DateLessThan": {"aws:CurrentTime": "2030-01-01T00:00:00Z"}},
        {"StringNotEquals": {"kms:RecipientAttestation:ImageSha384": "ab" * 48}},
    ]
    contexts: list[dict[str, tuple[str, ...]]] = [
        {},
        {"kms:encryptioncontext:dept": ("a",), "kms:encryptioncontextkeys": ("dept",)},
        {"kms:encryptioncontext:dept": ("A",), "kms:encryptioncontextkeys": ("dept",)},
        {"kms:encryptioncontext:dept": ("",), "kms:encryptioncontextkeys": ("dept",)},
        {"kms:encryptioncontext:dept": (), "kms:encryptioncontextkeys": ()},
        {"kms:encryptioncontext:Dept": ("a",), "kms:encryptioncontextkeys": ("Dept",)},
        {"kms:encryptioncontext:dept": ("a",), "kms:encryptioncontextkeys": ("dept", "x")},
        {"kms:recipientattestation:pcr0": ("ab" * 48,),
         "kms:recipientattestation:imagesha384": ("ab" * 48,)},
        {"kms:recipientattestation:nitrotpmpcr0": ("ab" * 48,)},
    ]
    callers = [role, role.upper(), role.replace("enclave", "Enclave"), STRANGER.arn]
    key = KeyRecord("1234abcd-12ab-34cd-56ef-1234567890ab", ACCOUNT, "us-east-1", 0.0, "",
                    "SYMMETRIC_DEFAULT", "ENCRYPT_DECRYPT", "", bytes(32))
    seen = set()
    cases = [(caller, keys) for caller in callers for keys in contexts]
    for condition in conditions:
        for principal in ("*", role):
            key.policy = _policy(_allow(condition, principal))  # PutKeyPolicy, one key
            seen.update(_verdicts(cache, key, cases))
    assert seen == {True, False}
    assert len(conditions) * 2 * len(cases) == 648


def test_a_recipient_kind_is_part_of_its_remembered_condition_keys(
    sim_state: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same PCRs from an enclave and from a NitroTPM: each keeps its own names."""
    verifier = RecipientVerifier([(sim_state / "root.pem").read_bytes()])
    verified = verifier._verify_any_root(kit.document(sim_state, kit.spki(kit.rsa_key())))
    tpm = dataclasses.replace(
        verified, document=dataclasses.replace(verified.document, kind=DocumentKind.NITROTPM)
    )
    answers = iter([verified, tpm, verified, tpm])
    monkeypatch.setattr(verifier, "_verify_any_root", lambda _doc: next(answers))
    names = [sorted(verifier.verify(b"-").condition_keys) for _ in range(4)]
    assert names[0] == names[2] and names[1] == names[3]
    assert "kms:recipientattestation:imagesha384" in names[0]
    assert all("nitrotpmpcr" in n for n in names[1])



def test_a_remembered_date_is_checked_against_each_requests_clock() -> None:
    """The parent replays one signed request (its X-Amz-Date the remembered one) as the clock
    moves, and steps the clock back: the window is checked on every request, on the remembered
    parse as on a fresh one."""
    creds = Credentials("AKIADATE000000000002", "date-secret-0000000000000000000000000001")
    principal = Principal(creds.access_key_id, creds.secret_access_key, STRANGER.arn, None)
    authenticator = Authenticator({creds.access_key_id: principal}, "us-east-1")
    signed_at = datetime(2026, 12, 6, 12, 0, 0, tzinfo=UTC)
    headers = [("host", "kms"), ("x-amz-target", "TrentService.Decrypt")]
    headers += sign_request("POST", "/", [], headers, b"{}", creds, region="us-east-1",
                            service="kms", when=signed_at)
    request = SignedRequest("POST", "/", [], [(k.lower(), v) for k, v in headers], b"{}")

    def verdict(offset_seconds: int) -> str:
        try:
            authenticator.authenticate(request, signed_at + timedelta(seconds=offset_seconds))
        except KmsApiError as exc:
            return exc.message[:24]
        return "accepted"

    outcomes = [verdict(s) for s in (0, 299, 300, 301, 0, -300, -301, 3600, -3600, 0)]
    assert outcomes == [
        "accepted", "accepted", "accepted", "Signature expired: 20261",
        "accepted", "accepted", "Signature not yet curren",
        "Signature expired: 20261", "Signature not yet curren", "accepted",
    ]


def test_the_empty_body_shortcut_is_strip() -> None:
    """``not body or body.isspace()`` for ``not body.strip()``: the same for every body of up
    to two bytes (the two agree on what whitespace is byte by byte)."""
    singles = [bytes((b,)) for b in range(256)]
    bodies = [b"", *singles, *(a + b for a in singles for b in singles)]
    assert [not b or b.isspace() for b in bodies] == [not b.strip() for b in bodies]
    assert len(bodies) == 65793


def test_a_decisions_weight_is_never_below_what_getsizeof_counts() -> None:
    """The estimate from lengths against sys.getsizeof of every object a slot keeps (its
    strings, the pairs and values tuples, the items tuple), on random slots with ASCII, Latin-1,
    BMP and astral characters."""
    rng = random.Random(4)
    alphabet = ["a", "Z", "0", "\u00e9", "\u2603", "\U0001f600"]

    def text(most: int) -> str:
        return "".join(rng.choice(alphabet) for _ in range(rng.randrange(most)))

    for _ in range(5000):
        items = tuple(
            (text(40), tuple(text(60) for _ in range(rng.randrange(4))))
            for _ in range(rng.randrange(8))
        )
        slot = (object(), text(20), text(40), text(80), items)
        decision = Decision(rng.random() < 0.5, text(300))
        kept = sys.getsizeof(slot) + sys.getsizeof(items) + sys.getsizeof(decision.reason)
        kept += sum(sys.getsizeof(s) for s in slot[1:4])
        for pair in items:
            kept += sys.getsizeof(pair) + sys.getsizeof(pair[0]) + sys.getsizeof(pair[1])
            kept += sum(sys.getsizeof(v) for v in pair[1])
        assert access._weight(slot, decision) >= kept
