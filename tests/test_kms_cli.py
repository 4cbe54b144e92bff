"""`nitro-attest kms decrypt | generate-* | derive-shared-secret | proxy` against the fake KMS over
TLS: the AWS CLI's JSON, --output-file, exit codes, and boto3 through `kms proxy`."""

from __future__ import annotations

import base64
import json
import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from nitro_attest._cli import main
from nitro_attest.kms.client import KmsClient
from nitro_attest.kms.sdk_proxy import KmsProxy, loopback_listen
from nitro_attest.nsm import open_backend
from tests.kmsclientkit import BLOB_PREFIX, CREDS, ENV, REGION, FakeKms, Pki, make_pki

ENTRY = [sys.executable, "-c", "from nitro_attest._cli import entrypoint; entrypoint()"]


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture
def kms(pki: Pki) -> Iterator[FakeKms]:
    with FakeKms(pki) as server:
        yield server


@pytest.fixture
def aws_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in ENV.items():
        monkeypatch.setenv(name, value)


def _common(kms: FakeKms, pki: Pki, sim_state: Path) -> list[str]:
    return ["--region", REGION, "--via", f"tcp://127.0.0.1:{kms.port}", "--ca-bundle",
            str(pki.ca), "--nsm", "simulator", "--state", str(sim_state)]


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    rc = main(["kms", *argv])
    out, err = capsys.readouterr()
    return rc, out, err


@pytest.mark.usefixtures("aws_env")
def test_decrypt_prints_the_aws_cli_json(
    capsys: pytest.CaptureFixture[str], kms: FakeKms, pki: Pki, sim_state: Path, tmp_path: Path
) -> None:
    blob = tmp_path / "blob.bin"
    blob.write_bytes(BLOB_PREFIX + b"db password")
    rc, out, err = _run(capsys, "decrypt", "--ciphertext-blob", f"fileb://{blob}",
                        "--encryption-context", "app=web", *_common(kms, pki, sim_state))
    assert (rc, err) == (0, "")
    printed = json.loads(out)
    assert base64.b64decode(printed["Plaintext"]) == b"db password"
    assert printed["KeyId"].startswith("arn:aws:kms:")
    assert "CiphertextForRecipient" not in printed
    assert out.startswith('{\n    "')  # the AWS CLI's four-space indent
    assert kms.seen.requests[0]["body"]["EncryptionContext"] == {"app": "web"}


@pytest.mark.usefixtures("aws_env")
def test_every_operation_on_the_command_line(
    capsys: pytest.CaptureFixture[str], kms: FakeKms, pki: Pki, sim_state: Path, tmp_path: Path
) -> None:
    common = _common(kms, pki, sim_state)
    rc, out, _ = _run(capsys, "generate-data-key", "--key-id", "k", "--number-of-bytes", "24",
                      *common)
    assert rc == 0 and len(base64.b64decode(json.loads(out)["Plaintext"])) == 24
    rc, out, _ = _run(capsys, "generate-data-key-pair", "--key-id", "k", "--key-pair-spec",
                      "ECC_NIST_P256", *common)
    pair = json.loads(out)
    assert rc == 0 and serialization.load_der_private_key(
        base64.b64decode(pair["PrivateKeyPlaintext"]), None)
    rc, out, _ = _run(capsys, "generate-random", "--number-of-bytes", "16", *common)
    assert rc == 0 and len(base64.b64decode(json.loads(out)["Plaintext"])) == 16
    peer = ec.generate_private_key(ec.SECP256R1()).public_key()
    pem = tmp_path / "peer.pem"
    pem.write_bytes(peer.public_bytes(serialization.Encoding.PEM,
                                      serialization.PublicFormat.SubjectPublicKeyInfo))
    rc, out, _ = _run(capsys, "derive-shared-secret", "--key-id", "k", "--public-key", str(pem),
                      *common)
    der = peer.public_bytes(serialization.Encoding.DER,
                            serialization.PublicFormat.SubjectPublicKeyInfo)
    assert rc == 0
    assert base64.b64decode(json.loads(out)["SharedSecret"]) == b"shared:" + der[:8]
    assert base64.b64decode(kms.seen.requests[-1]["body"]["PublicKey"]) == der


@pytest.mark.usefixtures("aws_env")
def test_output_file_holds_the_raw_secret_0600(
    capsys: pytest.CaptureFixture[str], kms: FakeKms, pki: Pki, sim_state: Path, tmp_path: Path
) -> None:
    target = tmp_path / "key.bin"
    os.umask(0o022)
    rc, out, _ = _run(capsys, "generate-data-key", "--key-id", "k", "--key-spec", "AES_256",
                      "--output-file", str(target), *_common(kms, pki, sim_state))
    assert rc == 0
    printed = json.loads(out)
    assert "Plaintext" not in printed and "CiphertextBlob" in printed
    secret = target.read_bytes()
    assert len(secret) == 32
    assert base64.b64decode(printed["CiphertextBlob"]) == BLOB_PREFIX + secret
    assert target.stat().st_mode & 0o777 == 0o600


@pytest.mark.usefixtures("aws_env")
@pytest.mark.parametrize("kind", ["file", "symlink", "dangling"])
def test_output_file_never_overwrites_nor_follows(
    capsys: pytest.CaptureFixture[str], kms: FakeKms, pki: Pki, sim_state: Path, tmp_path: Path,
    kind: str,
) -> None:
    target = tmp_path / "key.bin"
    victim = tmp_path / "victim"
    if kind == "file":
        target.write_bytes(b"keep")
    else:
        if kind == "symlink":
            victim.write_bytes(b"keep")
        target.symlink_to(victim)
    rc, _, err = _run(capsys, "generate-random", "--number-of-bytes", "8", "--output-file",
                      str(target), *_common(kms, pki, sim_state))
    assert rc == 2 and "exists (never overwritten)" in err
    assert kms.seen.requests == []  # refused before KMS was called
    if kind != "dangling":
        assert (victim if kind == "symlink" else target).read_bytes() == b"keep"
    else:
        assert not victim.exists()


def test_write_secret_refuses_a_symlink_created_meanwhile(tmp_path: Path) -> None:
    from nitro_attest._cli.common import CliError
    from nitro_attest._cli.kms_client_cmd import write_secret

    (tmp_path / "link").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(CliError, match="exists"):
        write_secret(str(tmp_path / "link"), b"s")
    assert not (tmp_path / "elsewhere").exists()


@pytest.mark.usefixtures("aws_env")
def test_kms_errors_exit_1_on_one_line(
    capsys: pytest.CaptureFixture[str], kms: FakeKms, pki: Pki, sim_state: Path
) -> None:
    rc, out, err = _run(capsys, "generate-data-key", "--key-id", "missing", "--key-spec",
                        "AES_256", *_common(kms, pki, sim_state))
    assert (rc, out) == (1, "")
    assert err == "nitro-attest: NotFoundException: Key 'missing' does not exist\n"


@pytest.mark.usefixtures("aws_env")
def test_tls_failure_exits_2(
    capsys: pytest.CaptureFixture[str], pki: Pki, sim_state: Path, tmp_path: Path
) -> None:
    rogue = make_pki(tmp_path / "rogue", label="rogue")
    with FakeKms(rogue) as fake:
        rc, out, err = _run(capsys, "generate-random", "--number-of-bytes", "8",
                            *_common(fake, pki, sim_state))
    assert (rc, out) == (2, "")
    assert "certificate is not trusted" in err and err.count("\n") == 1
    assert fake.seen.requests == []


def test_usage_errors_exit_2(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, sim_state: Path
) -> None:
    for name in ENV:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.delenv("AWS_REGION", raising=False)
    monkeypatch.delenv("AWS_DEFAULT_REGION", raising=False)
    sim = ["--nsm", "simulator", "--state", str(sim_state)]
    cases = [
        (["generate-random", "--number-of-bytes", "8", *sim], "--region is required"),
        (["generate-random", "--number-of-bytes", "8", "--region", REGION, *sim],
         "AWS_ACCESS_KEY_ID"),
        (["generate-random", "--number-of-bytes", "8", "--region", REGION, "--insecure-http",
          *sim], "needs --endpoint"),
        (["generate-random", "--number-of-bytes", "8", "--region", REGION, "--credentials-from",
          "imds", "--via", "vsock://3:8000", *sim], "--imds-via"),
        (["generate-random", "--number-of-bytes", "8", "--region", REGION, "--via", "nowhere",
          *sim], "expected direct"),
    ]
    for argv, words in cases:
        rc, _, err = _run(capsys, *argv)
        assert rc == 2 and words in err, (argv, err)


def test_help_teaches_the_enclave_setup(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["kms", "decrypt", "--help"]) == 0
    out = capsys.readouterr().out
    for words in ("vsock-proxy 8000 kms.REGION.amazonaws.com 443", "--via vsock://3:8000",
                  "TLS ends inside the enclave", "--ca-bundle", "AWS_ACCESS_KEY_ID"):
        assert words in out


# --- kms proxy: unmodified SDKs ------------------------------------------------------------------


def _boto(port: int) -> object:
    return boto3.client(
        "kms", endpoint_url=f"http://127.0.0.1:{port}", region_name=REGION,
        aws_access_key_id="anything", aws_secret_access_key="anything",
        config=Config(retries={"max_attempts": 1}),
    )


def test_boto3_through_the_kms_proxy_gets_plaintexts(
    kms: FakeKms, pki: Pki, sim_state: Path
) -> None:
    nsm = open_backend("simulator", state_dir=sim_state)
    client = KmsClient(region=REGION, nsm=nsm, credentials=CREDS, ca_bundle=pki.ca,
                       via=f"tcp://127.0.0.1:{kms.port}")
    proxy = KmsProxy(client, ("127.0.0.1", 0), pass_through=["Encrypt"])
    proxy.start()
    try:
        sdk = _boto(proxy.address[1])
        assert sdk.decrypt(CiphertextBlob=BLOB_PREFIX + b"hi")["Plaintext"] == b"hi"  # type: ignore[attr-defined]
        key = sdk.generate_data_key(KeyId="k", KeySpec="AES_256")  # type: ignore[attr-defined]
        assert len(key["Plaintext"]) == 32
        assert key["CiphertextBlob"] == BLOB_PREFIX + key["Plaintext"]
        pair = sdk.generate_data_key_pair(KeyId="k", KeyPairSpec="ECC_NIST_P256")  # type: ignore[attr-defined]
        assert serialization.load_der_private_key(pair["PrivateKeyPlaintext"], None)
        assert len(sdk.generate_random(NumberOfBytes=12)["Plaintext"]) == 12  # type: ignore[attr-defined]
        shared = sdk.derive_shared_secret(  # type: ignore[attr-defined]
            KeyId="k", KeyAgreementAlgorithm="ECDH", PublicKey=b"peer-public-key")
        assert shared["SharedSecret"] == b"shared:peer-pub"
        assert sdk.encrypt(KeyId="k", Plaintext=b"p")["CiphertextBlob"] == BLOB_PREFIX + b"p"  # type: ignore[attr-defined]
        with pytest.raises(ClientError) as refused:
            sdk.list_keys()  # type: ignore[attr-defined]
        assert refused.value.response["Error"]["Code"] == "UnsupportedOperationException"
        with pytest.raises(ClientError) as missing:
            sdk.generate_data_key(KeyId="missing", KeySpec="AES_256")  # type: ignore[attr-defined]
        assert missing.value.response["Error"]["Code"] == "NotFoundException"
    finally:
        proxy.close()
        client.close()
        nsm.close()
    ops = [seen["op"] for seen in kms.seen.requests]
    assert "ListKeys" not in ops
    signed = {seen["headers"]["Authorization"].split("Credential=")[1].split("/")[0]
              for seen in kms.seen.requests}
    assert signed == {CREDS.access_key_id}  # re-signed with the real credentials, every call
    recipient_ops = [s for s in kms.seen.requests if s["op"] != "Encrypt"]
    assert all("Recipient" in s["body"] for s in recipient_ops)
    assert all("Recipient" not in s["body"] for s in kms.seen.requests if s["op"] == "Encrypt")


@pytest.mark.parametrize("listen", ["0.0.0.0:8080", "10.0.0.1:1", "example.com:80", "8080"])
def test_the_kms_proxy_listens_on_loopback_only(listen: str) -> None:
    from nitro_attest.errors import ConfigurationError

    with pytest.raises(ConfigurationError, match=r"loopback|expected"):
        loopback_listen(listen)


def test_kms_proxy_command(pki: Pki, kms: FakeKms, sim_state: Path) -> None:
    proc = subprocess.Popen(
        [*ENTRY, "kms", "proxy", "--listen", "127.0.0.1:0", *_common(kms, pki, sim_state)],
        stderr=subprocess.PIPE, env={**os.environ, **ENV},
    )
    try:
        assert proc.stderr is not None
        line = proc.stderr.readline().decode()
        found = re.search(r"listening on http://127\.0\.0\.1:(\d+)", line)
        assert found, line
        sdk = _boto(int(found.group(1)))
        assert sdk.decrypt(CiphertextBlob=BLOB_PREFIX + b"cli")["Plaintext"] == b"cli"  # type: ignore[attr-defined]
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0
        log = proc.stderr.read().decode()
        assert "op=Decrypt status=200" in log
        assert base64.b64encode(b"cli").decode() not in log
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
