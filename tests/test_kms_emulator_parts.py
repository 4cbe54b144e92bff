"""The emulator's parts without a server: the envelope's shape against real KMS output, the
ciphertext blob, the state folder, the credentials file and the Recipient checks."""

from __future__ import annotations

import datetime as dt
import json
import os
import stat
import subprocess
from pathlib import Path

import pytest
from asn1crypto import cms

from nitro_attest.errors import FormatError
from nitro_attest.kms_emulator import blob
from nitro_attest.kms_emulator.auth import CredentialsError, load_credentials
from nitro_attest.kms_emulator.envelope import seal_for_recipient, subject_key_identifier
from nitro_attest.kms_emulator.errors import KmsApiError
from nitro_attest.kms_emulator.recipient import RecipientVerifier
from nitro_attest.kms_emulator.store import KeyRecord, StateError, StateStore

from . import chainfactory as cf
from . import kmsemukit as kit
from .fakes import MEASUREMENTS
from .paths import KMS_VECTORS

# Where the parts that vary sit in the real primitive response (openssl asn1parse offsets):
# the 32-byte SKI, the 256-byte encrypted key, the 16-byte IV and the 16-byte content.
_VARIABLE = ((33, 65), (131, 387), (415, 431), (433, 449))


def _mask(data: bytes) -> bytes:
    out = bytearray(data)
    for start, end in _VARIABLE:
        out[start:end] = bytes(end - start)
    return bytes(out)


def test_envelope_has_real_kms_shape_byte_for_byte() -> None:
    real = (KMS_VECTORS / "kms-response-primitive.ber").read_bytes()
    key = kit.rsa_key()
    ours = seal_for_recipient(b"0123456789", key.public_key())  # pads to 16 bytes, as the real one
    assert len(ours) == len(real)
    assert _mask(ours) == _mask(real)
    assert ours[33:65] == subject_key_identifier(key.public_key())
    assert kit.open_envelope(ours, key) == b"0123456789"


def test_envelope_parsed_by_asn1crypto_and_opened_by_openssl(tmp_path: Path) -> None:
    key = kit.rsa_key(3072)
    plaintext = os.urandom(1000)
    envelope = seal_for_recipient(plaintext, key.public_key())
    enveloped = cms.ContentInfo.load(envelope)["content"]
    assert enveloped["version"].native == "v2"
    (ri,) = list(enveloped["recipient_infos"])
    assert ri.chosen["version"].native == "v2" and len(ri.chosen["rid"].chosen.native) == 32
    assert ri.chosen["key_encryption_algorithm"]["algorithm"].native == "rsaes_oaep"
    eci = enveloped["encrypted_content_info"]
    assert eci["content_encryption_algorithm"]["algorithm"].native == "aes256_cbc"
    (tmp_path / "env.ber").write_bytes(envelope)
    (tmp_path / "key.pem").write_bytes(kit.pem(key))
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
    assert out.stdout == plaintext


def test_blob_binds_key_and_context() -> None:
    key = os.urandom(32)
    sealed = blob.seal(key, "k1", b"data", {"b": "2", "a": "1"})
    header = blob.read_header(sealed)
    assert header.key_id == "k1"
    assert blob.open_blob(key, header, {"a": "1", "b": "2"}) == b"data"  # order-independent
    for context in ({}, {"a": "1"}, {"a": "1", "b": "3"}):
        with pytest.raises(blob.BlobError):
            blob.open_blob(key, header, context)
    with pytest.raises(blob.BlobError):
        blob.open_blob(os.urandom(32), header, {"a": "1", "b": "2"})
    for index in range(len(sealed)):  # every byte is authenticated
        altered = bytearray(sealed)
        altered[index] ^= 0x40
        with pytest.raises(FormatError):
            blob.open_blob(key, blob.read_header(bytes(altered)), {"a": "1", "b": "2"})
    for bad in (b"", b"nakb", sealed[:20], b"x" * (blob.MAX_BLOB_BYTES + 1)):
        with pytest.raises(blob.BlobError):
            blob.read_header(bad)


def _record(key_id: str = "11111111-2222-3333-4444-555555555555") -> KeyRecord:
    return KeyRecord(
        key_id,
        kit.ACCOUNT,
        kit.REGION,
        1.0,
        "d",
        "SYMMETRIC_DEFAULT",
        "ENCRYPT_DECRYPT",
        "{}",
        os.urandom(32),
    )


def test_store_persists_locks_and_keeps_modes(tmp_path: Path) -> None:
    path = tmp_path / "state"
    store = StateStore(path)
    record = _record()
    store.state.keys[record.key_id] = record
    store.save()
    with pytest.raises(StateError, match="another emulator"):
        StateStore(path)
    store.close()
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o700
    assert stat.S_IMODE(os.stat(path / "state.json").st_mode) == 0o600
    assert not [p for p in path.iterdir() if p.name.endswith(".tmp")]
    again = StateStore(path)
    assert again.state.keys[record.key_id].material == record.material
    again.close()


def test_store_refuses_damaged_state(tmp_path: Path) -> None:
    path = tmp_path / "state"
    path.mkdir(mode=0o700)
    (path / "state.json").write_text("{not json")
    with pytest.raises(StateError, match="unreadable state"):
        StateStore(path)
    (path / "state.json").write_text(json.dumps({"format": 99}))
    with pytest.raises(StateError, match="format"):
        StateStore(path)
    link = tmp_path / "link"
    link.symlink_to(path)
    with pytest.raises(StateError, match="symbolic"):
        StateStore(link)


def test_credentials_file_checked() -> None:
    good = [c.entry() for c in kit.PRINCIPALS]
    principals = load_credentials(json.dumps(good))
    assert principals[kit.ENCLAVE.access_key_id].principal_arn == kit.ENCLAVE_ARN
    assert principals[kit.ENCLAVE.access_key_id].account == kit.ACCOUNT
    for bad in (
        [*good, good[0]],
        [{**good[0], "Extra": 1}],
        [{**good[0], "SessionToken": ""}],
        [{**good[0], "AccessKeyId": "lower"}],
    ):
        with pytest.raises(CredentialsError):
            load_credentials(json.dumps(bad))


def test_recipient_condition_keys_come_from_the_verified_document(sim_state: Path) -> None:
    verifier = RecipientVerifier([(sim_state / "root.pem").read_bytes()])
    recipient = verifier.verify(kit.document(sim_state, kit.spki(kit.rsa_key())))
    keys = recipient.condition_keys
    assert keys["kms:recipientattestation:imagesha384"] == (MEASUREMENTS[0].hex(),)
    assert keys["kms:recipientattestation:pcr0"] == (MEASUREMENTS[0].hex(),)
    assert keys["kms:recipientattestation:pcr2"] == (MEASUREMENTS[2].hex(),)
    assert all(v[0] == v[0].lower() for v in keys.values())
    with pytest.raises(KmsApiError) as exc:  # the AWS root is not the simulator's
        RecipientVerifier([None]).verify(kit.document(sim_state, kit.spki(kit.rsa_key())))
    assert exc.value.type_name == "ValidationException"
    assert "certificate_chain" in exc.value.message


def test_nitrotpm_document_gives_its_own_condition_keys() -> None:
    now = dt.datetime.now(dt.UTC)
    specs = cf.default_chain()
    for spec in specs:
        spec.not_before, spec.not_after = now - dt.timedelta(hours=1), now + dt.timedelta(hours=3)
    chain = cf.chain(specs)
    pcrs = {i: bytes([0xC0 + i]) * 48 for i in range(8)}
    doc = chain.document(
        pcrs=cf.DROP,
        nitrotpm_pcrs=pcrs,
        public_key=kit.spki(kit.rsa_key()),
        timestamp=int(now.timestamp() * 1000),
    )
    keys = RecipientVerifier([chain.root_pem]).verify(doc).condition_keys
    assert keys["kms:recipientattestation:nitrotpmpcr7"] == (pcrs[7].hex(),)
    assert not any(k.startswith("kms:recipientattestation:pcr") for k in keys)
    assert "kms:recipientattestation:imagesha384" not in keys


def test_expired_chain_named_as_such(sim_state: Path) -> None:
    expired = cf.chain()  # valid around 2025-01-01 only
    doc = expired.document(public_key=kit.spki(kit.rsa_key()))
    for roots in ([expired.root_pem], [(sim_state / "root.pem").read_bytes(), expired.root_pem]):
        with pytest.raises(KmsApiError) as exc:
            RecipientVerifier(roots).verify(doc)
        assert exc.value.type_name == "ValidationException"
        assert "certificate_chain" in exc.value.message and "is not valid at" in exc.value.message
        assert "does not chain" not in exc.value.message
    with pytest.raises(KmsApiError) as exc:  # a root it does not chain to at all
        RecipientVerifier([(sim_state / "root.pem").read_bytes()]).verify(doc)
    assert "certificate_chain" in exc.value.message


def test_a_full_disk_answers_500_and_keeps_no_half_made_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Operator fault: the state cannot be saved (ENOSPC). The caller gets KMSInternalException
    (HTTP 500), the key does not exist in memory either, and the state on disk is unchanged."""
    import errno

    from nitro_attest.kms_emulator.auth import Principal
    from nitro_attest.kms_emulator.operations import Emulator

    store = StateStore(tmp_path / "state")
    kms = Emulator(store, RecipientVerifier([None]), "us-east-1")
    admin = Principal("AKIDADMIN", "secret", "arn:aws:iam::111122223333:root", None)
    kept = kms.call("CreateKey", admin, {})["KeyMetadata"]["KeyId"]
    on_disk = (tmp_path / "state" / "state.json").read_bytes()

    def full(*_args: object, **_kw: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr("nitro_attest.kms_emulator.store.write_file", full)
    with pytest.raises(KmsApiError) as info:
        kms.call("CreateKey", admin, {})
    assert info.value.type_name == "KMSInternalException" and info.value.status == 500
    assert "No space left on device" in info.value.message
    assert [k for k in store.state.keys] == [kept]
    assert (tmp_path / "state" / "state.json").read_bytes() == on_disk
    assert not [p for p in (tmp_path / "state").iterdir() if p.name.endswith(".tmp")]
    store.close()
