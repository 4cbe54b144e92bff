"""Key policies as the emulator enforces them, through boto3: the policy `kms policy` generates,
and the cases a key policy must get right (allow, deny, missing attestation, wrong ImageSha384,
wrong PCR, explicit deny beating allow, encryption context, the lockout check). The evaluator's own
table of AWS's documented cases is tests/test_kms_keypolicy.py."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError

from nitro_attest.attestation.caller_keys import CALLER_KEY_LABEL, CALLER_KEY_PCR
from nitro_attest.kms.keypolicy.generate import enclave_key_policy
from nitro_attest.nsm.simulator import SimulatedNsm
from nitro_attest.nsm.simulator.state import SimulatorConfig, init_state

from . import kmsemukit as kit
from .fakes import INSTANCE_ID, MEASUREMENTS

IMAGE = MEASUREMENTS[0].hex()


@pytest.fixture(scope="module")
def other_image(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("kmspol") / "other-sim"
    measurements = {**MEASUREMENTS, 0: bytes([0xB0]) * 48}
    init_state(path, SimulatorConfig(instance_id=INSTANCE_ID, measurements=measurements))
    return path


@pytest.fixture(scope="module")
def emu(
    tmp_path_factory: pytest.TempPathFactory, sim_state: Path, other_image: Path
) -> Iterator[kit.Emulator]:
    folder = tmp_path_factory.mktemp("kmspol-emu")
    creds = kit.write_credentials(folder / "creds.json")
    roots = [sim_state / "root.pem", other_image / "root.pem"]
    with kit.running(folder / "state", creds, roots) as emulator:
        yield emulator


@pytest.fixture(scope="module")
def parent(emu: kit.Emulator) -> Any:
    return emu.client(kit.PARENT)


@pytest.fixture(scope="module")
def enclave(emu: kit.Emulator) -> Any:
    return emu.client(kit.ENCLAVE)


@pytest.fixture(scope="module")
def recipient_key() -> Any:
    return kit.rsa_key()


def _document(state: Path, key: Any, *, caller_keys: bool = False) -> dict[str, Any]:
    """A document as the enclave-side client makes it (PCR16 locked as it stands, pristine), or,
    with ``caller_keys``, from an enclave that marked PCR16 (it signs keys its callers choose)."""
    nsm = SimulatedNsm.open(state)
    if caller_keys:
        nsm.extend_pcr(CALLER_KEY_PCR, CALLER_KEY_LABEL)
    nsm.lock_pcr(CALLER_KEY_PCR)
    return kit.recipient(nsm.attestation(public_key=kit.spki(key)))


def _statement(sid: str, effect: str, principal: str, actions: list[str], **condition: Any) -> Any:
    statement = {
        "Sid": sid,
        "Effect": effect,
        "Principal": {"AWS": principal},
        "Action": actions,
        "Resource": "*",
    }
    if condition:
        statement["Condition"] = condition
    return statement


def _admin() -> Any:
    return _statement("admin", "Allow", kit.PARENT_ARN, ["kms:*"])


def _key(parent: Any, *statements: Any) -> str:
    policy = {"Version": "2012-10-17", "Statement": [_admin(), *statements]}
    key_id: str = parent.create_key(Policy=json.dumps(policy))["KeyMetadata"]["KeyId"]
    return key_id


def _denied(call: Any, **kwargs: Any) -> str:
    with pytest.raises(ClientError) as exc:
        call(**kwargs)
    assert exc.value.response["Error"]["Code"] == "AccessDeniedException"
    assert "Plaintext" not in exc.value.response
    assert "CiphertextForRecipient" not in exc.value.response
    message: str = exc.value.response["Error"]["Message"]
    return message


def test_generated_policy_binds_the_key_to_the_image(
    parent: Any,
    enclave: Any,
    emu: kit.Emulator,
    sim_state: Path,
    other_image: Path,
    recipient_key: Any,
) -> None:
    policy = enclave_key_policy(
        image_sha384=IMAGE, principal=kit.ENCLAVE_ARN, admins=[kit.PARENT_ARN]
    )
    # the generated admin statement carries no cryptographic action: the parent encrypts under
    # a statement of its own
    policy["Statement"].append(
        _statement("parent encrypts", "Allow", kit.PARENT_ARN, ["kms:Encrypt"])
    )
    key_id = parent.create_key(Policy=json.dumps(policy))["KeyMetadata"]["KeyId"]
    key_arn = parent.describe_key(KeyId=key_id)["KeyMetadata"]["Arn"]
    blob = parent.encrypt(KeyId=key_id, Plaintext=b"image-bound secret")["CiphertextBlob"]

    good = _document(sim_state, recipient_key)
    out = enclave.decrypt(CiphertextBlob=blob, Recipient=good)
    assert kit.open_envelope(out["CiphertextForRecipient"], recipient_key) == b"image-bound secret"
    made = enclave.generate_data_key(KeyId=key_arn, KeySpec="AES_256", Recipient=good)
    assert len(kit.open_envelope(made["CiphertextForRecipient"], recipient_key)) == 32

    missing = _denied(enclave.decrypt, CiphertextBlob=blob)  # no Recipient: no attestation keys
    assert missing == (
        f"User: {kit.ENCLAVE.arn} is not authorized to perform: kms:Decrypt on resource: "
        f"{key_arn} because no resource-based policy allows the kms:Decrypt action"
    )
    other = _document(other_image, recipient_key)  # another image: other PCR0
    _denied(enclave.decrypt, CiphertextBlob=blob, Recipient=other)
    marked = _document(sim_state, recipient_key, caller_keys=True)  # signs callers' keys
    _denied(enclave.decrypt, CiphertextBlob=blob, Recipient=marked)
    _denied(parent.decrypt, CiphertextBlob=blob, Recipient=good)  # the admin never decrypts
    _denied(emu.client(kit.STRANGER).decrypt, CiphertextBlob=blob, Recipient=good)


def test_wrong_pcr_denied(parent: Any, enclave: Any, sim_state: Path, recipient_key: Any) -> None:
    good = {
        "kms:RecipientAttestation:ImageSha384": IMAGE,
        "kms:RecipientAttestation:PCR1": MEASUREMENTS[1].hex(),
    }
    allowed = _key(
        parent,
        _statement(
            "enclave", "Allow", kit.ENCLAVE_ARN, ["kms:Decrypt"], StringEqualsIgnoreCase=good
        ),
    )
    wrong = {**good, "kms:RecipientAttestation:PCR1": "00" * 48}
    refused = _key(
        parent,
        _statement(
            "enclave", "Allow", kit.ENCLAVE_ARN, ["kms:Decrypt"], StringEqualsIgnoreCase=wrong
        ),
    )
    doc = _document(sim_state, recipient_key)
    blob = parent.encrypt(KeyId=allowed, Plaintext=b"x")["CiphertextBlob"]
    assert "CiphertextForRecipient" in enclave.decrypt(CiphertextBlob=blob, Recipient=doc)
    blob = parent.encrypt(KeyId=refused, Plaintext=b"x")["CiphertextBlob"]
    _denied(enclave.decrypt, CiphertextBlob=blob, Recipient=doc)


def test_explicit_deny_beats_allow(
    parent: Any, enclave: Any, sim_state: Path, recipient_key: Any
) -> None:
    attested = {"kms:RecipientAttestation:ImageSha384": IMAGE}
    key_id = _key(
        parent,
        _statement("allow", "Allow", kit.ENCLAVE_ARN, ["kms:*"], StringEquals=attested),
        _statement("deny", "Deny", kit.ENCLAVE_ARN, ["kms:GenerateDataKey*"]),
    )
    doc = _document(sim_state, recipient_key)
    blob = parent.encrypt(KeyId=key_id, Plaintext=b"x")["CiphertextBlob"]
    assert "CiphertextForRecipient" in enclave.decrypt(CiphertextBlob=blob, Recipient=doc)
    message = _denied(enclave.generate_data_key, KeyId=key_id, NumberOfBytes=32, Recipient=doc)
    assert message.endswith("with an explicit deny in a resource-based policy")
    _denied(enclave.generate_data_key_pair, KeyId=key_id, KeyPairSpec="RSA_2048", Recipient=doc)


def test_encryption_context_conditions(parent: Any, enclave: Any) -> None:
    key_id = _key(
        parent,
        _statement(
            "ctx",
            "Allow",
            kit.ENCLAVE_ARN,
            ["kms:Decrypt", "kms:Encrypt"],
            StringEquals={"kms:EncryptionContext:app": "demo"},
            **{"ForAllValues:StringEquals": {"kms:EncryptionContextKeys": ["app"]}},
        ),
    )
    blob = enclave.encrypt(KeyId=key_id, Plaintext=b"c", EncryptionContext={"app": "demo"})
    out = enclave.decrypt(CiphertextBlob=blob["CiphertextBlob"], EncryptionContext={"app": "demo"})
    assert out["Plaintext"] == b"c"
    _denied(enclave.encrypt, KeyId=key_id, Plaintext=b"c", EncryptionContext={"app": "other"})
    _denied(enclave.encrypt, KeyId=key_id, Plaintext=b"c")
    _denied(
        enclave.encrypt,
        KeyId=key_id,
        Plaintext=b"c",
        EncryptionContext={"app": "demo", "extra": "key"},
    )


def test_derive_shared_secret_needs_attestation(
    parent: Any, enclave: Any, sim_state: Path, recipient_key: Any
) -> None:
    attested = {"kms:RecipientAttestation:ImageSha384": IMAGE}
    policy = {
        "Version": "2012-10-17",
        "Statement": [
            _admin(),
            _statement(
                "e",
                "Allow",
                kit.ENCLAVE_ARN,
                ["kms:DeriveSharedSecret"],
                StringEqualsIgnoreCase=attested,
            ),
        ],
    }
    key_id = parent.create_key(
        KeySpec="ECC_NIST_P256", KeyUsage="KEY_AGREEMENT", Policy=json.dumps(policy)
    )["KeyMetadata"]["KeyId"]
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    peer = (
        ec.generate_private_key(ec.SECP256R1())
        .public_key()
        .public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    doc = _document(sim_state, recipient_key)
    out = enclave.derive_shared_secret(
        KeyId=key_id, KeyAgreementAlgorithm="ECDH", PublicKey=peer, Recipient=doc
    )
    assert len(kit.open_envelope(out["CiphertextForRecipient"], recipient_key)) == 32
    _denied(
        enclave.derive_shared_secret, KeyId=key_id, KeyAgreementAlgorithm="ECDH", PublicKey=peer
    )


def test_policy_lockout_and_malformed_policies(parent: Any, enclave: Any) -> None:
    lockout = {
        "Version": "2012-10-17",
        "Statement": [_statement("only enclave", "Allow", kit.ENCLAVE_ARN, ["kms:Decrypt"])],
    }
    for call in (
        lambda: parent.create_key(Policy=json.dumps(lockout)),
        lambda: parent.put_key_policy(
            KeyId=_key(parent), PolicyName="default", Policy=json.dumps(lockout)
        ),
        lambda: parent.create_key(Policy="{not json"),
        lambda: parent.create_key(Policy=json.dumps({"Version": "2012-10-17"})),
    ):
        with pytest.raises(ClientError) as exc:
            call()
        assert exc.value.response["Error"]["Code"] == "MalformedPolicyDocumentException"
    key_id = parent.create_key(Policy=json.dumps(lockout), BypassPolicyLockoutSafetyCheck=True)
    _denied(parent.describe_key, KeyId=key_id["KeyMetadata"]["KeyId"])
    # GetKeyPolicy/PutKeyPolicy obey the policy too
    guarded = _key(parent)
    _denied(enclave.get_key_policy, KeyId=guarded, PolicyName="default")
