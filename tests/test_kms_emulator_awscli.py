"""The AWS CLI (v1, from the dev extra) against the local KMS, unchanged: `--endpoint-url`, a
CA bundle, credentials from the environment, KMS's error names and exit codes.

The Recipient is boto3's job in these tests (tests/test_kms_emulator.py): AWS CLI v1 sends a
blob inside a JSON structure as the bytes of its text, so `--recipient` cannot carry a binary
AttestationDocument with it (CLI v2's `--cli-binary-format raw-in-base64-out` can; not installed
here). That is asserted below so a future CLI that changes it is noticed.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests import kmsemukit as kit

AWS = shutil.which("aws", path=str(Path(sys.executable).parent))


@pytest.fixture(scope="module")
def emu(tmp_path_factory: pytest.TempPathFactory, sim_state: Path) -> Iterator[kit.Emulator]:
    folder = tmp_path_factory.mktemp("awscli")
    tls = kit.make_tls(folder)
    creds = kit.write_credentials(folder / "creds.json")
    with kit.running(folder / "state", creds, [sim_state / "root.pem"], tls=tls) as emulator:
        yield emulator


def _aws(emu: kit.Emulator, *args: str, cred: kit.Cred = kit.PARENT
         ) -> subprocess.CompletedProcess[str]:  # fmt: skip
    assert AWS, "the dev extra installs awscli"
    env = {
        "PATH": os.environ.get("PATH", ""),
        "HOME": os.environ.get("HOME", "/tmp"),
        "AWS_ACCESS_KEY_ID": cred.access_key_id,
        "AWS_SECRET_ACCESS_KEY": cred.secret_access_key,
        "AWS_DEFAULT_REGION": kit.REGION,
        "AWS_CA_BUNDLE": str(emu.ca),
        "AWS_CONFIG_FILE": os.devnull,
        "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
        "AWS_MAX_ATTEMPTS": "1",
    }
    if cred.session_token:
        env["AWS_SESSION_TOKEN"] = cred.session_token
    return subprocess.run(
        [AWS, "kms", *args, "--endpoint-url", emu.endpoint, "--output", "json"],
        env=env, capture_output=True, text=True, timeout=60,
    )


def _ok(done: subprocess.CompletedProcess[str]) -> Any:
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout) if done.stdout.strip() else None


def test_keys_aliases_and_policies(emu: kit.Emulator, tmp_path: Path) -> None:
    meta = _ok(_aws(emu, "create-key", "--description", "from the cli"))["KeyMetadata"]
    assert meta["Description"] == "from the cli" and meta["KeySpec"] == "SYMMETRIC_DEFAULT"
    key_id = meta["KeyId"]
    _ok(_aws(emu, "create-alias", "--alias-name", "alias/cli", "--target-key-id", key_id))
    assert any(a["AliasName"] == "alias/cli" for a in _ok(_aws(emu, "list-aliases"))["Aliases"])
    assert key_id in {k["KeyId"] for k in _ok(_aws(emu, "list-keys"))["Keys"]}
    assert _ok(_aws(emu, "describe-key", "--key-id", "alias/cli"))["KeyMetadata"]["KeyId"] == key_id
    policy = json.loads(_ok(_aws(emu, "get-key-policy", "--key-id", key_id,
                                 "--policy-name", "default"))["Policy"])  # fmt: skip
    policy["Statement"].append({"Sid": "cli", "Effect": "Deny", "Principal": {"AWS": kit.OTHER_ARN},
                                "Action": "kms:*", "Resource": "*"})  # fmt: skip
    (tmp_path / "policy.json").write_text(json.dumps(policy))
    _ok(_aws(emu, "put-key-policy", "--key-id", key_id, "--policy-name", "default",
             "--policy", f"file://{tmp_path / 'policy.json'}"))  # fmt: skip
    again = _aws(emu, "get-key-policy", "--key-id", key_id, "--policy-name", "default")
    assert json.loads(_ok(again)["Policy"])["Statement"][-1]["Sid"] == "cli"


def test_encrypt_decrypt_with_encryption_context(emu: kit.Emulator, tmp_path: Path) -> None:
    key_id = _ok(_aws(emu, "create-key"))["KeyMetadata"]["KeyId"]
    (tmp_path / "plain").write_bytes(b"the cli's secret")
    sealed = _ok(_aws(emu, "encrypt", "--key-id", key_id, "--plaintext",
                      f"fileb://{tmp_path / 'plain'}", "--encryption-context", "app=demo"))
    (tmp_path / "blob").write_bytes(base64.b64decode(sealed["CiphertextBlob"]))
    blob = f"fileb://{tmp_path / 'blob'}"
    opened = _ok(_aws(emu, "decrypt", "--ciphertext-blob", blob, "--encryption-context",
                      "app=demo"))  # fmt: skip
    assert base64.b64decode(opened["Plaintext"]) == b"the cli's secret"
    assert opened["KeyId"].endswith(key_id)
    other = _aws(emu, "decrypt", "--ciphertext-blob", blob, "--encryption-context", "app=other")
    assert other.returncode == 255 and "InvalidCiphertextException" in other.stderr


def test_data_keys_and_random(emu: kit.Emulator) -> None:
    key_id = _ok(_aws(emu, "create-key"))["KeyMetadata"]["KeyId"]
    data_key = _ok(_aws(emu, "generate-data-key", "--key-id", key_id, "--key-spec", "AES_256"))
    assert len(base64.b64decode(data_key["Plaintext"])) == 32
    bare = _ok(_aws(emu, "generate-data-key-without-plaintext", "--key-id", key_id,
                    "--number-of-bytes", "16"))  # fmt: skip
    assert "Plaintext" not in bare and bare["CiphertextBlob"]
    random = _ok(_aws(emu, "generate-random", "--number-of-bytes", "24"))
    assert len(base64.b64decode(random["Plaintext"])) == 24


def test_errors_as_the_cli_reports_kms_errors(emu: kit.Emulator) -> None:
    stranger = kit.Cred("AKIAUNKNOWN000000001", "x" * 40, kit.OTHER_ARN)
    refused = _aws(emu, "list-keys", cred=stranger)
    assert refused.returncode == 255 and "UnrecognizedClientException" in refused.stderr
    forged = kit.Cred(kit.PARENT.access_key_id, "not-the-secret" * 3, kit.PARENT_ARN)
    bad = _aws(emu, "list-keys", cred=forged)
    assert bad.returncode == 255 and "InvalidSignatureException" in bad.stderr
    missing = _aws(emu, "describe-key", "--key-id", "alias/none")
    assert missing.returncode == 255 and "NotFoundException" in missing.stderr


def test_cli_v1_cannot_carry_a_binary_attestation_document(
    emu: kit.Emulator, sim_state: Path, tmp_path: Path
) -> None:
    """CLI v1 sends a nested blob as its text's bytes: the emulator receives base64 text where
    the document should be and says the document is not valid (nothing decrypted)."""
    key_id = _ok(_aws(emu, "create-key"))["KeyMetadata"]["KeyId"]
    (tmp_path / "plain").write_bytes(b"s")
    sealed = _ok(_aws(emu, "encrypt", "--key-id", key_id, "--plaintext",
                      f"fileb://{tmp_path / 'plain'}"))  # fmt: skip
    (tmp_path / "blob").write_bytes(base64.b64decode(sealed["CiphertextBlob"]))
    document = kit.document(sim_state, kit.spki(kit.rsa_key()))
    recipient = {"KeyEncryptionAlgorithm": "RSAES_OAEP_SHA_256",
                 "AttestationDocument": base64.b64encode(document).decode()}
    done = _aws(emu, "decrypt", "--ciphertext-blob", f"fileb://{tmp_path / 'blob'}",
                "--recipient", json.dumps(recipient), cred=kit.PARENT)
    assert done.returncode == 255 and "AttestationDocument is not valid" in done.stderr
    assert "Plaintext" not in done.stdout


def test_nitro_attest_kms_prints_what_the_aws_cli_prints(
    emu: kit.Emulator, sim_state: Path, tmp_path: Path
) -> None:
    """`nitro-attest kms decrypt` (Recipient, envelope opened in the enclave) prints the very text
    `aws kms decrypt` prints for the same blob without one: same fields, order and layout."""
    key_id = _ok(_aws(emu, "create-key"))["KeyMetadata"]["KeyId"]
    (tmp_path / "plain").write_bytes(b"same text either way")
    sealed = _ok(_aws(emu, "encrypt", "--key-id", key_id, "--plaintext",
                      f"fileb://{tmp_path / 'plain'}"))  # fmt: skip
    blob = tmp_path / "blob"
    blob.write_bytes(base64.b64decode(sealed["CiphertextBlob"]))
    theirs = _aws(emu, "decrypt", "--ciphertext-blob", f"fileb://{blob}")
    assert theirs.returncode == 0, theirs.stderr
    env = {**os.environ, "AWS_ACCESS_KEY_ID": kit.ENCLAVE.access_key_id,
           "AWS_SECRET_ACCESS_KEY": kit.ENCLAVE.secret_access_key,
           "AWS_SESSION_TOKEN": kit.ENCLAVE.session_token or ""}
    ours = subprocess.run(
        [*kit.ENTRY, "kms", "decrypt", "--ciphertext-blob", str(blob), "--region", kit.REGION,
         "--endpoint", emu.endpoint, "--ca-bundle", str(emu.ca), "--nsm", "simulator",
         "--state", str(sim_state)],
        env=env, capture_output=True, text=True, timeout=60,
    )
    assert ours.returncode == 0, ours.stderr
    assert ours.stdout == theirs.stdout


def test_output_order_is_kms_api_models() -> None:
    """Our field order per operation is the output shape's in botocore's copy of KMS's model."""
    import botocore.session

    from nitro_attest.kms.client import OUTPUT_ORDER, RECIPIENT_OPERATIONS

    model = botocore.session.get_session().get_service_model("kms")
    assert set(OUTPUT_ORDER) == set(RECIPIENT_OPERATIONS)
    for operation, order in OUTPUT_ORDER.items():
        members = [m for m in model.operation_model(operation).output_shape.members
                   if m != "CiphertextForRecipient"]  # fmt: skip
        assert list(order) == members, operation
