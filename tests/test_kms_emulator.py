"""The local KMS against the real AWS SDK (boto3) over HTTPS on 127.0.0.1.

Every operation with and without Recipient; CiphertextForRecipient opened by openssl; documents
that must be refused (forged, re-signed, expired chain, foreign root, unusable key) and requests
altered after signing; state across a restart; two emulators on one state folder.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import os
import socket
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import botocore.auth
import cbor2
import pytest
from botocore.exceptions import ClientError
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from nitro_attest.nsm.simulator.state import SimulatorConfig, init_state

from . import chainfactory as cf
from . import kmsemukit as kit
from .fakes import INSTANCE_ID, MEASUREMENTS


def _code(exc: pytest.ExceptionInfo[ClientError]) -> str:
    code: str = exc.value.response["Error"]["Code"]
    return code


def _message(exc: pytest.ExceptionInfo[ClientError]) -> str:
    message: str = exc.value.response["Error"]["Message"]
    return message


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("kmsemu")


@pytest.fixture(scope="module")
def tls(folder: Path) -> tuple[Path, Path, Path]:
    return kit.make_tls(folder)


@pytest.fixture(scope="module")
def other_image(folder: Path) -> Path:
    """A second simulated image: other PCR0, its own root (the emulator trusts both)."""
    path = folder / "other-sim"
    measurements = {**MEASUREMENTS, 0: bytes([0xB0]) * 48}
    init_state(path, SimulatorConfig(instance_id=INSTANCE_ID, measurements=measurements))
    return path


@pytest.fixture(scope="module")
def emu(
    folder: Path, tls: tuple[Path, Path, Path], sim_state: Path, other_image: Path
) -> Iterator[kit.Emulator]:
    creds = kit.write_credentials(folder / "creds.json")
    roots = [sim_state / "root.pem", other_image / "root.pem"]
    with kit.running(folder / "state", creds, roots, tls=tls) as emulator:
        yield emulator


@pytest.fixture(scope="module")
def parent(emu: kit.Emulator) -> Any:
    return emu.client(kit.PARENT)


@pytest.fixture(scope="module")
def enclave(emu: kit.Emulator) -> Any:
    return emu.client(kit.ENCLAVE)


@pytest.fixture(scope="module")
def symmetric_key(parent: Any) -> str:
    key_id: str = parent.create_key(Description="plain")["KeyMetadata"]["KeyId"]
    return key_id


@pytest.fixture(scope="module")
def ecc_key(parent: Any) -> str:
    meta = parent.create_key(KeySpec="ECC_NIST_P256", KeyUsage="KEY_AGREEMENT")["KeyMetadata"]
    key_id: str = meta["KeyId"]
    return key_id


@pytest.fixture(scope="module")
def recipient_key() -> Any:
    return kit.rsa_key()


@pytest.fixture
def good_recipient(sim_state: Path, recipient_key: Any) -> dict[str, Any]:
    return kit.recipient(kit.document(sim_state, kit.spki(recipient_key)))


def _peer() -> tuple[ec.EllipticCurvePrivateKey, bytes]:
    key = ec.generate_private_key(ec.SECP256R1())
    der = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return key, der


# --- every operation, without Recipient -------------------------------------------------------


def test_key_management_operations(emu: kit.Emulator, parent: Any, symmetric_key: str) -> None:
    meta = parent.describe_key(KeyId=symmetric_key)["KeyMetadata"]
    assert meta["KeyId"] == symmetric_key
    assert meta["Arn"] == f"arn:aws:kms:{kit.REGION}:{kit.ACCOUNT}:key/{symmetric_key}"
    assert meta["KeySpec"] == "SYMMETRIC_DEFAULT" and meta["KeyUsage"] == "ENCRYPT_DECRYPT"
    assert meta["KeyState"] == "Enabled" and meta["Description"] == "plain"
    assert abs(meta["CreationDate"].timestamp() - dt.datetime.now(dt.UTC).timestamp()) < 600

    keys = parent.list_keys()["Keys"]
    assert {"KeyId": symmetric_key, "KeyArn": meta["Arn"]} in keys
    # the stranger's account holds none of them
    strangers = emu.client(kit.STRANGER).list_keys()["Keys"]
    assert symmetric_key not in {k["KeyId"] for k in strangers}

    policy = json.loads(parent.get_key_policy(KeyId=symmetric_key, PolicyName="default")["Policy"])
    assert policy["Statement"][0]["Principal"] == {"AWS": f"arn:aws:iam::{kit.ACCOUNT}:root"}

    parent.create_alias(AliasName="alias/plain", TargetKeyId=symmetric_key)
    alias_arn = f"arn:aws:kms:{kit.REGION}:{kit.ACCOUNT}:alias/plain"
    aliases = parent.list_aliases(KeyId=symmetric_key)["Aliases"]
    assert [(a["AliasName"], a["AliasArn"], a["TargetKeyId"]) for a in aliases] == [
        ("alias/plain", alias_arn, symmetric_key)
    ]
    for key_id in (symmetric_key, meta["Arn"], "alias/plain", alias_arn):
        assert parent.describe_key(KeyId=key_id)["KeyMetadata"]["KeyId"] == symmetric_key
    with pytest.raises(ClientError) as exc:
        parent.create_alias(AliasName="alias/plain", TargetKeyId=symmetric_key)
    assert _code(exc) == "AlreadyExistsException"
    with pytest.raises(ClientError) as exc:
        parent.describe_key(KeyId="alias/missing")
    assert _code(exc) == "NotFoundException"

    new_policy = dict(policy, Id="replaced")
    parent.put_key_policy(KeyId=symmetric_key, PolicyName="default", Policy=json.dumps(new_policy))
    got = json.loads(parent.get_key_policy(KeyId=symmetric_key, PolicyName="default")["Policy"])
    assert got["Id"] == "replaced"


def test_encrypt_decrypt_and_encryption_context(parent: Any, symmetric_key: str) -> None:
    context = {"purpose": "test", "app": "kms"}
    blob = parent.encrypt(KeyId=symmetric_key, Plaintext=b"secret", EncryptionContext=context)
    assert blob["KeyId"].endswith(symmetric_key)
    out = parent.decrypt(
        CiphertextBlob=blob["CiphertextBlob"], EncryptionContext={"app": "kms", "purpose": "test"}
    )
    assert out["Plaintext"] == b"secret" and out["KeyId"].endswith(symmetric_key)
    for wrong in ({}, {"purpose": "test"}, {"purpose": "test", "app": "other"}):
        with pytest.raises(ClientError) as exc:
            parent.decrypt(CiphertextBlob=blob["CiphertextBlob"], EncryptionContext=wrong)
        assert _code(exc) == "InvalidCiphertextException"
    tampered = bytearray(blob["CiphertextBlob"])
    tampered[-1] ^= 1
    with pytest.raises(ClientError) as exc:
        parent.decrypt(CiphertextBlob=bytes(tampered), EncryptionContext=context)
    assert _code(exc) == "InvalidCiphertextException"
    other = parent.create_key()["KeyMetadata"]["KeyId"]
    with pytest.raises(ClientError) as exc:
        parent.decrypt(
            CiphertextBlob=blob["CiphertextBlob"], EncryptionContext=context, KeyId=other
        )
    assert _code(exc) == "IncorrectKeyException"


def test_data_keys_random_and_shared_secret(parent: Any, symmetric_key: str, ecc_key: str) -> None:
    made = parent.generate_data_key(KeyId=symmetric_key, KeySpec="AES_256")
    assert len(made["Plaintext"]) == 32
    assert parent.decrypt(CiphertextBlob=made["CiphertextBlob"])["Plaintext"] == made["Plaintext"]
    assert len(parent.generate_data_key(KeyId=symmetric_key, NumberOfBytes=7)["Plaintext"]) == 7
    bare = parent.generate_data_key_without_plaintext(KeyId=symmetric_key, KeySpec="AES_128")
    assert "Plaintext" not in bare
    assert len(parent.decrypt(CiphertextBlob=bare["CiphertextBlob"])["Plaintext"]) == 16

    for spec in ("RSA_2048", "ECC_NIST_P256"):
        pair = parent.generate_data_key_pair(KeyId=symmetric_key, KeyPairSpec=spec)
        private = serialization.load_der_private_key(pair["PrivateKeyPlaintext"], None)
        public = private.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        assert public == pair["PublicKey"] and pair["KeyPairSpec"] == spec
        reopened = parent.decrypt(CiphertextBlob=pair["PrivateKeyCiphertextBlob"])["Plaintext"]
        assert reopened == pair["PrivateKeyPlaintext"]

    random = parent.generate_random(NumberOfBytes=48)["Plaintext"]
    assert len(random) == 48 and random != parent.generate_random(NumberOfBytes=48)["Plaintext"]

    peer, peer_der = _peer()
    kms_public = serialization.load_der_public_key(
        parent.get_public_key(KeyId=ecc_key)["PublicKey"]
    )
    assert isinstance(kms_public, ec.EllipticCurvePublicKey)
    shared = parent.derive_shared_secret(
        KeyId=ecc_key, KeyAgreementAlgorithm="ECDH", PublicKey=peer_der
    )
    assert shared["SharedSecret"] == peer.exchange(ec.ECDH(), kms_public)
    with pytest.raises(ClientError) as exc:
        parent.encrypt(KeyId=ecc_key, Plaintext=b"x")
    assert _code(exc) == "InvalidKeyUsageException"
    with pytest.raises(ClientError) as exc:
        parent.derive_shared_secret(
            KeyId=symmetric_key, KeyAgreementAlgorithm="ECDH", PublicKey=peer_der
        )
    assert _code(exc) == "InvalidKeyUsageException"


# --- every operation, with Recipient ----------------------------------------------------------


def test_every_operation_with_recipient(
    parent: Any,
    symmetric_key: str,
    ecc_key: str,
    good_recipient: dict[str, Any],
    recipient_key: Any,
) -> None:
    blob = parent.encrypt(KeyId=symmetric_key, Plaintext=b"for the enclave")["CiphertextBlob"]
    out = parent.decrypt(CiphertextBlob=blob, Recipient=good_recipient)
    assert "Plaintext" not in out
    assert kit.open_envelope(out["CiphertextForRecipient"], recipient_key) == b"for the enclave"

    made = parent.generate_data_key(
        KeyId=symmetric_key, KeySpec="AES_256", Recipient=good_recipient
    )
    assert "Plaintext" not in made
    data_key = kit.open_envelope(made["CiphertextForRecipient"], recipient_key)
    assert parent.decrypt(CiphertextBlob=made["CiphertextBlob"])["Plaintext"] == data_key

    pair = parent.generate_data_key_pair(
        KeyId=symmetric_key, KeyPairSpec="ECC_NIST_P256", Recipient=good_recipient
    )
    assert "PrivateKeyPlaintext" not in pair
    private_der = kit.open_envelope(pair["CiphertextForRecipient"], recipient_key)
    private = serialization.load_der_private_key(private_der, None)
    assert (
        private.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        == pair["PublicKey"]
    )

    random = parent.generate_random(NumberOfBytes=32, Recipient=good_recipient)
    assert "Plaintext" not in random
    assert len(kit.open_envelope(random["CiphertextForRecipient"], recipient_key)) == 32

    peer, peer_der = _peer()
    kms_public = serialization.load_der_public_key(
        parent.get_public_key(KeyId=ecc_key)["PublicKey"]
    )
    assert isinstance(kms_public, ec.EllipticCurvePublicKey)
    shared = parent.derive_shared_secret(
        KeyId=ecc_key, KeyAgreementAlgorithm="ECDH", PublicKey=peer_der, Recipient=good_recipient
    )
    assert "SharedSecret" not in shared
    secret = kit.open_envelope(shared["CiphertextForRecipient"], recipient_key)
    assert secret == peer.exchange(ec.ECDH(), kms_public)


def test_envelope_opened_by_openssl(
    parent: Any,
    symmetric_key: str,
    good_recipient: dict[str, Any],
    recipient_key: Any,
    tmp_path: Path,
) -> None:
    blob = parent.encrypt(KeyId=symmetric_key, Plaintext=b"opened by openssl")["CiphertextBlob"]
    envelope = parent.decrypt(CiphertextBlob=blob, Recipient=good_recipient)[
        "CiphertextForRecipient"
    ]
    (tmp_path / "env.ber").write_bytes(envelope)
    (tmp_path / "key.pem").write_bytes(
        recipient_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    out = subprocess.run(
        [
            "openssl",
            "cms",
            "-decrypt",
            "-inform",
            "DER",
            "-inkey",
            str(tmp_path / "key.pem"),
            "-in",
            str(tmp_path / "env.ber"),
        ],
        capture_output=True,
        check=True,
        timeout=30,
    )
    assert out.stdout == b"opened by openssl"


# --- documents that must be refused -----------------------------------------------------------


def _refused(parent: Any, key_id: str, recipient: dict[str, Any]) -> str:
    blob = parent.encrypt(KeyId=key_id, Plaintext=b"never leaves")["CiphertextBlob"]
    with pytest.raises(ClientError) as exc:
        parent.decrypt(CiphertextBlob=blob, Recipient=recipient)
    assert _code(exc) == "ValidationException"
    assert "Plaintext" not in exc.value.response and "CiphertextForRecipient" not in (
        exc.value.response
    )
    return _message(exc)


def _present_chain() -> cf.Chain:
    now = dt.datetime.now(dt.UTC)
    specs = cf.default_chain()
    for spec in specs:
        spec.not_before = now - dt.timedelta(hours=1)
        spec.not_after = now + dt.timedelta(hours=3)
    return cf.chain(specs)


def test_forged_and_resigned_documents_refused(
    parent: Any, symmetric_key: str, sim_state: Path, recipient_key: Any
) -> None:
    doc = kit.document(sim_state, kit.spki(recipient_key))
    forged = bytearray(doc)
    forged[-5] ^= 0x01  # in the signature
    assert "cose_signature" in _refused(parent, symmetric_key, kit.recipient(bytes(forged)))

    # the parent swaps PCR0 for the image the policy wants and signs again with its own key
    _protected, _unprotected, payload, _sig = cbor2.loads(doc)
    body = cbor2.loads(payload)
    body["pcrs"][0] = bytes([0xEE]) * 48
    resigned = cf.sign_document(cbor2.dumps(body), ec.generate_private_key(ec.SECP384R1()))
    assert "cose_signature" in _refused(parent, symmetric_key, kit.recipient(resigned))


def test_foreign_root_and_expired_chain_refused(
    parent: Any, symmetric_key: str, recipient_key: Any
) -> None:
    foreign = _present_chain().document(
        public_key=kit.spki(recipient_key),
        timestamp=int(dt.datetime.now(dt.UTC).timestamp() * 1000),
    )
    message = _refused(parent, symmetric_key, kit.recipient(foreign))
    assert "certificate_chain" in message and "trusted roots" in message
    # an expired chain from an untrusted root; an expired chain under a trusted root is
    # test_kms_emulator_parts.py::test_expired_chain_named_as_such
    expired = cf.chain().document(public_key=kit.spki(recipient_key))  # valid around 2025-01-01
    assert "certificate_chain" in _refused(parent, symmetric_key, kit.recipient(expired))


def test_unusable_recipient_keys_refused(parent: Any, symmetric_key: str, sim_state: Path) -> None:
    missing = _refused(parent, symmetric_key, kit.recipient(kit.document(sim_state, None)))
    assert "no public_key" in missing
    small = kit.rsa_key(1024)
    assert "RSA-1024" in _refused(
        parent, symmetric_key, kit.recipient(kit.document(sim_state, kit.spki(small)))
    )
    _, ec_der = _peer()
    assert "not an RSA key" in _refused(
        parent, symmetric_key, kit.recipient(kit.document(sim_state, ec_der))
    )
    assert "SubjectPublicKeyInfo" in _refused(
        parent, symmetric_key, kit.recipient(kit.document(sim_state, b"not a key"))
    )
    good = kit.recipient(kit.document(sim_state, kit.spki(kit.rsa_key())))
    blob = parent.encrypt(KeyId=symmetric_key, Plaintext=b"x")["CiphertextBlob"]
    with pytest.raises(ClientError) as exc:
        parent.decrypt(CiphertextBlob=blob, Recipient={**good, "KeyEncryptionAlgorithm": "RSA"})
    assert _code(exc) == "ValidationException" and "Plaintext" not in exc.value.response


def test_garbage_document_refused(parent: Any, symmetric_key: str) -> None:
    assert "format" in _refused(parent, symmetric_key, kit.recipient(b"\xa0" * 64))


# --- SigV4 ------------------------------------------------------------------------------------


def test_request_altered_after_signing_refused(emu: kit.Emulator, symmetric_key: str) -> None:
    client = emu.client(kit.PARENT)

    def alter(request: Any, **kwargs: Any) -> None:
        altered = request.body.replace(base64.b64encode(b"aaaa"), base64.b64encode(b"bbbb"))
        assert altered != request.body
        request.body = altered

    client.meta.events.register("before-send.kms.Encrypt", alter)
    with pytest.raises(ClientError) as exc:
        client.encrypt(KeyId=symmetric_key, Plaintext=b"aaaa")
    assert _code(exc) == "InvalidSignatureException"


def test_unknown_key_wrong_secret_and_tokens(emu: kit.Emulator) -> None:
    cases = [
        (kit.Cred("AKIAUNKNOWN000000001", "x" * 40, kit.PARENT_ARN), "UnrecognizedClientException"),
        (
            kit.Cred(kit.PARENT.access_key_id, "wrong" * 8, kit.PARENT_ARN),
            "InvalidSignatureException",
        ),
        (
            kit.Cred(kit.ENCLAVE.access_key_id, kit.ENCLAVE.secret_access_key, kit.ENCLAVE.arn),
            "UnrecognizedClientException",
        ),  # the session token is missing
        (
            kit.Cred(
                kit.ENCLAVE.access_key_id,
                kit.ENCLAVE.secret_access_key,
                kit.ENCLAVE.arn,
                session_token="another-token",
            ),
            "UnrecognizedClientException",
        ),
        (
            kit.Cred(
                kit.PARENT.access_key_id,
                kit.PARENT.secret_access_key,
                kit.PARENT_ARN,
                session_token="unexpected",
            ),
            "UnrecognizedClientException",
        ),
    ]
    for cred, code in cases:
        with pytest.raises(ClientError) as exc:
            emu.client(cred).list_keys()
        assert _code(exc) == code, cred
    assert "Keys" in emu.client(kit.ENCLAVE).list_keys()


def test_clock_skew_refused(emu: kit.Emulator, monkeypatch: pytest.MonkeyPatch) -> None:
    for offset in (-6, +6):
        when = dt.datetime.now(dt.UTC).replace(tzinfo=None) + dt.timedelta(minutes=offset)
        monkeypatch.setattr(botocore.auth, "get_current_datetime", lambda when=when: when)
        with pytest.raises(ClientError) as exc:
            emu.client(kit.PARENT).list_keys()
        assert _code(exc) == "InvalidSignatureException"
        assert "Signature expired" in _message(exc) or "not yet current" in _message(exc)
    when = dt.datetime.now(dt.UTC).replace(tzinfo=None) - dt.timedelta(minutes=4)
    monkeypatch.setattr(botocore.auth, "get_current_datetime", lambda: when)
    assert "Keys" in emu.client(kit.PARENT).list_keys()


def test_wrong_region_scope_refused(emu: kit.Emulator) -> None:
    other = __import__("boto3").client(
        "kms",
        endpoint_url=emu.endpoint,
        region_name="eu-west-1",
        aws_access_key_id=kit.PARENT.access_key_id,
        aws_secret_access_key=kit.PARENT.secret_access_key,
        verify=str(emu.ca),
    )
    with pytest.raises(ClientError) as exc:
        other.list_keys()
    assert _code(exc) == "InvalidSignatureException" and "region" in _message(exc)


# --- state ------------------------------------------------------------------------------------


def test_state_survives_restart_and_is_private(tmp_path: Path, sim_state: Path) -> None:
    creds = kit.write_credentials(tmp_path / "creds.json")
    state = tmp_path / "state"
    with kit.running(state, creds, [sim_state / "root.pem"]) as first:
        client = first.client()
        key_id = client.create_key(Description="kept")["KeyMetadata"]["KeyId"]
        client.create_alias(AliasName="alias/kept", TargetKeyId=key_id)
        blob = client.encrypt(
            KeyId="alias/kept", Plaintext=b"across restarts", EncryptionContext={"a": "b"}
        )["CiphertextBlob"]
    assert stat.S_IMODE(os.stat(state).st_mode) == 0o700
    assert stat.S_IMODE(os.stat(state / "state.json").st_mode) == 0o600
    with kit.running(state, creds, [sim_state / "root.pem"]) as second:
        client = second.client()
        assert client.describe_key(KeyId="alias/kept")["KeyMetadata"]["Description"] == "kept"
        out = client.decrypt(CiphertextBlob=blob, EncryptionContext={"a": "b"})
        assert out["Plaintext"] == b"across restarts"


def test_second_emulator_on_one_state_refused(tmp_path: Path, sim_state: Path) -> None:
    creds = kit.write_credentials(tmp_path / "creds.json")
    with kit.running(tmp_path / "state", creds, [sim_state / "root.pem"]):
        port = kit.free_port()
        proc = kit.start(["--state", str(tmp_path / "state"), "--credentials", str(creds)], port)
        assert proc.wait(30) == 2
        out = kit.stop(proc)
        assert "another emulator is using this state folder" in out
        assert "Traceback" not in out


def test_state_folder_open_to_others_refused(tmp_path: Path) -> None:
    creds = kit.write_credentials(tmp_path / "creds.json")
    state = tmp_path / "state"
    state.mkdir(mode=0o755)
    state.chmod(0o755)
    proc = kit.start(["--state", str(state), "--credentials", str(creds)], kit.free_port())
    assert proc.wait(30) == 2
    out = kit.stop(proc)
    assert "chmod 700" in out and "Traceback" not in out


# --- CLI --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ("not json", "not valid JSON"),
        ("[]", "non-empty JSON list"),
        ('[{"AccessKeyId": "AKIAX0000000000000001", "SecretAccessKey": "s"}]', "Arn"),
        (
            '[{"AccessKeyId": "AKIAX0000000000000001", "SecretAccessKey": "s", "Arn": "bob"}]',
            "not an IAM or STS principal ARN",
        ),
    ],
)
def test_bad_credentials_file(tmp_path: Path, content: str, expected: str) -> None:
    (tmp_path / "creds.json").write_text(content)
    proc = kit.start(
        ["--state", str(tmp_path / "s"), "--credentials", str(tmp_path / "creds.json")],
        kit.free_port(),
    )
    assert proc.wait(30) == 2
    out = kit.stop(proc)
    assert expected in out and "Traceback" not in out and len(out.strip().splitlines()) == 1


def test_plain_http_warns(tmp_path: Path) -> None:
    creds = kit.write_credentials(tmp_path / "creds.json")
    with kit.running(tmp_path / "state", creds) as emulator:
        assert emulator.endpoint.startswith("http://")
        assert emulator.client().list_keys()["Keys"] == []
    out = emulator.log
    assert "warning: no --tls-cert: serving plain HTTP" in out


def test_oversized_and_malformed_bodies(emu: kit.Emulator, symmetric_key: str) -> None:
    client = emu.client(kit.PARENT)

    def inflate(request: Any, **kwargs: Any) -> None:
        request.body = b" " * (300 * 1024) + request.body
        request.headers["Content-Length"] = str(len(request.body))

    client.meta.events.register("before-send.kms.ListKeys", inflate)
    with pytest.raises(ClientError) as exc:
        client.list_keys()
    assert exc.value.response["ResponseMetadata"]["HTTPStatusCode"] == 413

    signed = emu.client(kit.PARENT)

    signed.meta.events.register("before-sign.kms.ListAliases", _replace_body(b"[1, 2"))
    with pytest.raises(ClientError) as exc:
        signed.list_aliases()
    assert _code(exc) == "SerializationException"

    dup = emu.client(kit.PARENT)
    body = b'{"KeyId": "%s", "KeyId": "alias/other"}' % symmetric_key.encode()
    dup.meta.events.register("before-sign.kms.DescribeKey", _replace_body(body))
    with pytest.raises(ClientError) as exc:
        dup.describe_key(KeyId=symmetric_key)
    assert _code(exc) == "SerializationException" and "duplicate" in _message(exc)


def _replace_body(body: bytes) -> Any:
    def hook(request: Any, **kwargs: Any) -> None:
        request.data = body

    return hook


def test_unusable_tls_files_and_busy_port(tmp_path: Path) -> None:
    creds = kit.write_credentials(tmp_path / "creds.json")
    (tmp_path / "bad.pem").write_text("not a certificate")
    base = ["--state", str(tmp_path / "state"), "--credentials", str(creds)]
    proc = kit.start(
        [*base, "--tls-cert", str(tmp_path / "bad.pem"), "--tls-key", str(tmp_path / "bad.pem")],
        kit.free_port(),
    )
    assert proc.wait(30) == 2
    out = kit.stop(proc)
    assert "not a PEM certificate chain" in out and "Traceback" not in out
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        proc = kit.start(base, busy.getsockname()[1])
        assert proc.wait(30) == 2
        out = kit.stop(proc)
    assert "cannot listen on 127.0.0.1" in out and "Traceback" not in out


# --- the protocol, raw (the parent can send anything) -----------------------------------------


def _raw(
    emu: kit.Emulator,
    target: str,
    params: dict[str, Any],
    *,
    cred: kit.Cred = kit.PARENT,
    service: str = "kms",
    method: str = "POST",
    tamper: Any = None,
    sign: bool = True,
    content_type: str = "application/x-amz-json-1.1",
) -> tuple[int, dict[str, Any]]:
    """One request signed with the project's own SigV4 signer, sent with http.client over TLS."""
    import http.client
    import ssl

    from nitro_attest.kms.sigv4 import Credentials, sign_request

    port = int(emu.endpoint.rsplit(":", 1)[1])
    body = json.dumps(params).encode()
    headers = [
        ("Host", f"127.0.0.1:{port}"),
        ("Content-Type", content_type),
        ("X-Amz-Target", f"TrentService.{target}"),
    ]
    if sign:
        credentials = Credentials(cred.access_key_id, cred.secret_access_key, cred.session_token)
        headers += sign_request(
            method,
            "/",
            [],
            headers,
            body,
            credentials,
            region=kit.REGION,
            service=service,
            when=dt.datetime.now(dt.UTC),
        )
    if tamper is not None:
        body, headers = tamper(body, headers)
    context = ssl.create_default_context(cafile=str(emu.ca))
    conn = http.client.HTTPSConnection("127.0.0.1", port, context=context, timeout=30)
    try:
        conn.request(method, "/", body, dict(headers))
        answer = conn.getresponse()
        return answer.status, json.loads(answer.read())
    finally:
        conn.close()


def test_raw_protocol_errors(emu: kit.Emulator, symmetric_key: str, sim_state: Path) -> None:
    status, out = _raw(emu, "ListKeys", {})
    assert status == 200 and "Keys" in out  # the project's signer and the emulator agree
    cases: list[tuple[dict[str, Any], str]] = [
        ({"sign": False}, "MissingAuthenticationTokenException"),
        ({"service": "s3"}, "InvalidSignatureException"),
        ({"method": "PUT"}, "UnknownOperationException"),
        ({"content_type": "application/json"}, "SerializationException"),
        (
            {
                "tamper": lambda b, h: (
                    b,
                    [
                        (k, "TrentService.CreateKey") if k == "X-Amz-Target" else (k, v)
                        for k, v in h
                    ],
                )
            },
            "InvalidSignatureException",
        ),
        (
            {
                "tamper": lambda b, h: (
                    b,
                    [
                        (k, v.replace("Signature=", "Signature=0"))
                        if k == "Authorization"
                        else (k, v)
                        for k, v in h
                    ],
                )
            },
            "IncompleteSignatureException",
        ),
    ]
    for kwargs, code in cases:
        status, out = _raw(emu, "ListKeys", {}, **kwargs)
        assert (status, out["__type"]) == (400, code), kwargs
    status, out = _raw(emu, "NoSuchOperation", {})
    assert (status, out["__type"]) == (400, "UnknownOperationException")

    blob = base64.b64encode(
        emu.client().encrypt(KeyId=symmetric_key, Plaintext=b"s")["CiphertextBlob"]
    ).decode()
    doc = base64.b64encode(kit.document(sim_state, kit.spki(kit.rsa_key()))).decode()
    for recipient, code in (
        (
            {"KeyEncryptionAlgorithm": "RSAES_OAEP_SHA_1", "AttestationDocument": doc},
            "ValidationException",
        ),
        ({"KeyEncryptionAlgorithm": "RSAES_OAEP_SHA_256"}, "ValidationException"),
        ({"AttestationDocument": "not base64!"}, "SerializationException"),
        ({"AttestationDocument": doc, "Extra": 1}, "SerializationException"),
        ("a string", "SerializationException"),
    ):
        status, out = _raw(emu, "Decrypt", {"CiphertextBlob": blob, "Recipient": recipient})
        assert (status, out["__type"]) == (400, code), recipient
        assert "Plaintext" not in out and "CiphertextForRecipient" not in out
    # without KeyEncryptionAlgorithm, RSAES_OAEP_SHA_256 is meant: the envelope comes back
    status, out = _raw(
        emu, "Decrypt", {"CiphertextBlob": blob, "Recipient": {"AttestationDocument": doc}}
    )
    assert status == 200 and "CiphertextForRecipient" in out and "Plaintext" not in out
