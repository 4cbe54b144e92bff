"""End to end: the enclave's KMS client against the local KMS (``nitro-attest kms emulator`` in a
child process, HTTPS with a test CA, documents checked against the software NSM's root, key
policies bound to the image), with ``nitro-attest proxy`` as the parent: a raw forward as AWS's
vsock-proxy does, and HTTP CONNECT. Every Recipient operation; a key bound to another image is
refused; the CLI; boto3 through ``kms proxy``.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from nitro_attest._cli import main
from nitro_attest.errors import TransportError
from nitro_attest.kms.client import KmsClient, KmsError
from nitro_attest.kms.keypolicy.generate import enclave_key_policy
from nitro_attest.kms.sdk_proxy import KmsProxy
from nitro_attest.kms.sigv4 import Credentials
from nitro_attest.nsm import open_backend
from nitro_attest.nsm.backend import NsmBackend
from nitro_attest.proxy import ProxyConfig
from nitro_attest.proxy.allowlist import Allowlist
from nitro_attest.wire.transport import parse_address

from . import kmsemukit as kit
from .fakes import MEASUREMENTS
from .kmsclientkit import make_pki
from .proxykit import running_proxy

IMAGE = MEASUREMENTS[0].hex()
ENCLAVE = Credentials(kit.ENCLAVE.access_key_id, kit.ENCLAVE.secret_access_key,
                      kit.ENCLAVE.session_token)




@pytest.fixture(scope="module")
def emu(tmp_path_factory: pytest.TempPathFactory, sim_state: Path) -> Iterator[kit.Emulator]:
    folder = tmp_path_factory.mktemp("kmse2e")
    tls = kit.make_tls(folder)
    creds = kit.write_credentials(folder / "creds.json")
    with kit.running(folder / "state", creds, [sim_state / "root.pem"], tls=tls) as emulator:
        yield emulator


@pytest.fixture(scope="module")
def keys(emu: kit.Emulator) -> dict[str, str]:
    """The parent (key administrator) makes: a symmetric key bound to this image, the same bound
    to another image, and an ECC key-agreement key bound to this image. ARNs."""
    admin = emu.client(kit.PARENT)

    def create(policy: dict[str, Any], **kw: Any) -> str:
        policy["Statement"].append({"Sid": "parent encrypts", "Effect": "Allow",
                                    "Principal": {"AWS": kit.PARENT_ARN},
                                    "Action": ["kms:Encrypt", "kms:GetPublicKey"],
                                    "Resource": "*"})
        arn: str = admin.create_key(Policy=json.dumps(policy), **kw)["KeyMetadata"]["Arn"]
        return arn

    bound = enclave_key_policy(image_sha384=IMAGE, principal=kit.ENCLAVE_ARN,
                               admins=[kit.PARENT_ARN])
    other = enclave_key_policy(image_sha384="b0" * 48, principal=kit.ENCLAVE_ARN,
                               admins=[kit.PARENT_ARN])
    agree = enclave_key_policy(image_sha384=IMAGE, principal=kit.ENCLAVE_ARN,
                               admins=[kit.PARENT_ARN], operations=["DeriveSharedSecret"])
    return {
        "bound": create(bound),
        "other": create(other),
        "ecc": create(agree, KeySpec="ECC_NIST_P256", KeyUsage="KEY_AGREEMENT"),
    }


@pytest.fixture
def nsm(sim_state: Path) -> Iterator[NsmBackend]:
    backend = open_backend("simulator", state_dir=sim_state)
    yield backend
    backend.close()


def _port(emu: kit.Emulator) -> int:
    return int(emu.endpoint.rsplit(":", 1)[1])


@pytest.fixture(params=["vsock-proxy style", "CONNECT"])
def via(request: pytest.FixtureRequest, emu: kit.Emulator) -> Iterator[str]:
    """``nitro-attest proxy`` as the parent, the way it would run on vsock://any:8000."""
    listen = parse_address("tcp://127.0.0.1:0", role="listen")
    if request.param == "CONNECT":
        config = ProxyConfig(listen, None, allowlist=Allowlist.of([("127.0.0.1", _port(emu))]))
    else:
        config = ProxyConfig(listen, parse_address(f"tcp://127.0.0.1:{_port(emu)}"))
    with running_proxy(config) as (bound, _, _):
        yield (f"connect://127.0.0.1:{bound.port}" if request.param == "CONNECT"
               else str(bound))


def _client(emu: kit.Emulator, nsm: NsmBackend, via: str, **kw: Any) -> KmsClient:
    assert emu.ca is not None
    return KmsClient(region=kit.REGION, nsm=nsm, credentials=ENCLAVE, endpoint=emu.endpoint,
                     via=via, ca_bundle=emu.ca, **kw)


def test_every_recipient_operation_through_the_parent(
    emu: kit.Emulator, keys: dict[str, str], nsm: NsmBackend, via: str
) -> None:
    admin = emu.client(kit.PARENT)
    blob = admin.encrypt(KeyId=keys["bound"], Plaintext=b"database password")["CiphertextBlob"]
    with _client(emu, nsm, via) as client:
        assert client.decrypt(blob).secret == b"database password"

        made = client.generate_data_key(keys["bound"], key_spec="AES_256")
        assert made.secret is not None and len(made.secret) == 32
        again = client.decrypt(base64.b64decode(made.fields["CiphertextBlob"]))
        assert again.secret == made.secret

        pair = client.generate_data_key_pair(keys["bound"], "ECC_NIST_P256")
        private = serialization.load_der_private_key(pair.secret or b"", None)
        assert private.public_key().public_bytes(  # type: ignore[union-attr]
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        ) == base64.b64decode(pair.fields["PublicKey"])

        random = client.generate_random(32)
        assert random.secret is not None and len(random.secret) == 32

        peer = ec.generate_private_key(ec.SECP256R1())
        peer_der = peer.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
        shared = client.derive_shared_secret(keys["ecc"], peer_der)
        kms_public = serialization.load_der_public_key(
            admin.get_public_key(KeyId=keys["ecc"])["PublicKey"])
        assert shared.secret == peer.exchange(ec.ECDH(), kms_public)  # type: ignore[arg-type]
        for result in (made, pair, random, shared):
            assert "CiphertextForRecipient" not in result.fields


def test_a_key_bound_to_another_image_is_refused(
    emu: kit.Emulator, keys: dict[str, str], nsm: NsmBackend, via: str
) -> None:
    with _client(emu, nsm, via) as client, pytest.raises(KmsError) as refused:
        client.generate_data_key(keys["other"], key_spec="AES_256")
    assert refused.value.code == "AccessDeniedException"


def test_an_enclave_that_signs_caller_keys_is_refused(
    emu: kit.Emulator, keys: dict[str, str], sim_state: Path, via: str
) -> None:
    """PCR16 marked (serve --allow-caller-public-key ran in this enclave): the document says
    anyone could have had a key of their choosing attested, and the key policy refuses it."""
    from nitro_attest.attestation.caller_keys import CALLER_KEY_LABEL, CALLER_KEY_PCR

    marked = open_backend("simulator", state_dir=sim_state)
    try:
        marked.extend_pcr(CALLER_KEY_PCR, CALLER_KEY_LABEL)
        marked.lock_pcr(CALLER_KEY_PCR)
        with _client(emu, marked, via) as client, pytest.raises(KmsError) as refused:
            client.generate_data_key(keys["bound"], key_spec="AES_256")
        assert refused.value.code == "AccessDeniedException"
    finally:
        marked.close()


def test_the_client_locks_pcr16_pristine(emu: kit.Emulator, nsm: NsmBackend) -> None:
    from nitro_attest.attestation.caller_keys import CALLER_KEY_PCR, PRISTINE_PCR_VALUE
    from nitro_attest.attestation.document import parse_document

    assert not nsm.describe_pcr(CALLER_KEY_PCR).locked
    _client(emu, nsm, "direct").close()
    assert nsm.describe_pcr(CALLER_KEY_PCR).locked
    doc = parse_document(nsm.attestation(public_key=b"k"))
    assert doc.pcrs[CALLER_KEY_PCR] == PRISTINE_PCR_VALUE


def test_a_client_trusting_another_ca_sends_nothing(
    emu: kit.Emulator, nsm: NsmBackend, tmp_path: Path
) -> None:
    stranger = make_pki(tmp_path / "other", label="other")
    client = KmsClient(region=kit.REGION, nsm=nsm, credentials=ENCLAVE, endpoint=emu.endpoint,
                       ca_bundle=stranger.ca)
    with pytest.raises(TransportError, match="not trusted"):
        client.generate_random(8)


def test_the_cli_in_the_enclave(
    emu: kit.Emulator, keys: dict[str, str], sim_state: Path, tmp_path: Path,
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", ENCLAVE.access_key_id)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", ENCLAVE.secret_access_key)
    monkeypatch.setenv("AWS_SESSION_TOKEN", ENCLAVE.session_token or "")
    blob = tmp_path / "blob"
    blob.write_bytes(emu.client(kit.PARENT).encrypt(KeyId=keys["bound"],
                                                    Plaintext=b"cli secret")["CiphertextBlob"])
    common = ["--region", kit.REGION, "--endpoint", emu.endpoint, "--ca-bundle", str(emu.ca),
              "--nsm", "simulator", "--state", str(sim_state)]
    assert main(["kms", "decrypt", "--ciphertext-blob", str(blob), *common]) == 0
    out = json.loads(capsys.readouterr().out)
    assert base64.b64decode(out["Plaintext"]) == b"cli secret"
    assert out["KeyId"] == keys["bound"]
    rc = main(["kms", "generate-data-key", "--key-id", keys["other"], "--key-spec", "AES_256",
               *common])
    err = capsys.readouterr().err
    assert rc == 1
    assert err.startswith("nitro-attest: AccessDeniedException: ") and err.count("\n") == 1


def test_boto3_through_kms_proxy(
    emu: kit.Emulator, keys: dict[str, str], nsm: NsmBackend, via: str
) -> None:
    """An unmodified SDK in the enclave, pointed at `kms proxy`, with made-up credentials."""
    import boto3
    from botocore.config import Config

    blob = emu.client(kit.PARENT).encrypt(KeyId=keys["bound"], Plaintext=b"sdk")["CiphertextBlob"]
    client = _client(emu, nsm, via)
    proxy = KmsProxy(client, ("127.0.0.1", 0))
    proxy.start()
    try:
        sdk = boto3.client("kms", endpoint_url=f"http://127.0.0.1:{proxy.address[1]}",
                           region_name=kit.REGION, aws_access_key_id="x",
                           aws_secret_access_key="y", config=Config(retries={"max_attempts": 1}))
        assert sdk.decrypt(CiphertextBlob=blob)["Plaintext"] == b"sdk"
        made = sdk.generate_data_key(KeyId=keys["bound"], KeySpec="AES_128")
        assert len(made["Plaintext"]) == 16
        assert sdk.decrypt(CiphertextBlob=made["CiphertextBlob"])["Plaintext"] == made["Plaintext"]
        assert len(sdk.generate_random(NumberOfBytes=5)["Plaintext"]) == 5
        from botocore.exceptions import ClientError

        with pytest.raises(ClientError) as denied:
            sdk.generate_data_key(KeyId=keys["other"], KeySpec="AES_256")
        assert denied.value.response["Error"]["Code"] == "AccessDeniedException"
    finally:
        proxy.close()
        client.close()
