"""The KMS emulator in a child process (the real CLI) and what its tests need around it.

``running(...)`` starts ``nitro-attest kms emulator`` on a free 127.0.0.1 port and yields an
``Emulator`` (endpoint, process, log); ``client(...)`` is a real boto3 KMS client signed with one
of ``PRINCIPALS``; ``document(...)`` asks the software NSM for a document naming an RSA key;
``open_envelope(...)`` opens CiphertextForRecipient with asn1crypto + cryptography.
"""

from __future__ import annotations

import datetime as dt
import json
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
from asn1crypto import cms
from botocore.config import Config
from cryptography import x509
from cryptography.hazmat.primitives import hashes, padding, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.padding import MGF1, OAEP
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.x509.oid import NameOID

from nitro_attest.nsm.simulator import SimulatedNsm

ENTRY = [sys.executable, "-c", "from nitro_attest._cli import entrypoint; entrypoint()"]
ACCOUNT = "111122223333"
REGION = "us-east-1"
PARENT_ARN = f"arn:aws:iam::{ACCOUNT}:role/parent"
ENCLAVE_ARN = f"arn:aws:iam::{ACCOUNT}:role/enclave"
OTHER_ARN = "arn:aws:iam::444455556666:role/stranger"


@dataclass(frozen=True)
class Cred:
    access_key_id: str
    secret_access_key: str
    arn: str
    session_token: str | None = None

    def entry(self) -> dict[str, str]:
        out = {
            "AccessKeyId": self.access_key_id,
            "SecretAccessKey": self.secret_access_key,
            "Arn": self.arn,
        }
        if self.session_token:
            out["SessionToken"] = self.session_token
        return out


PARENT = Cred("AKIAPARENT0000000001", "parent-secret-key-0000000000000000000000", PARENT_ARN)
ENCLAVE = Cred(
    "ASIAENCLAVE000000001",
    "enclave-secret-key-000000000000000000000",
    f"arn:aws:sts::{ACCOUNT}:assumed-role/enclave/i-0123456789abcdef0",
    session_token="enclave-session-token",
)
STRANGER = Cred("AKIASTRANGER00000001", "stranger-secret-key-00000000000000000000", OTHER_ARN)
PRINCIPALS = (PARENT, ENCLAVE, STRANGER)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def write_credentials(path: Path, creds: Sequence[Cred] = PRINCIPALS) -> Path:
    path.write_text(json.dumps([c.entry() for c in creds]))
    return path


@dataclass
class Emulator:
    endpoint: str
    proc: subprocess.Popen[bytes]
    ca: Path | None
    log: str = ""  # what it printed, once stopped

    def client(self, cred: Cred = PARENT, **config: Any) -> Any:
        return client(self.endpoint, cred, verify=str(self.ca) if self.ca else None, **config)


def client(endpoint: str, cred: Cred, *, verify: str | None = None, **config: Any) -> Any:
    return boto3.client(
        "kms",
        endpoint_url=endpoint,
        region_name=REGION,
        aws_access_key_id=cred.access_key_id,
        aws_secret_access_key=cred.secret_access_key,
        aws_session_token=cred.session_token,
        verify=verify if verify is not None else False,
        config=Config(retries={"max_attempts": 1}, **config),
    )


def start(args: list[str], port: int) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [*ENTRY, "kms", "emulator", "--listen", f"127.0.0.1:{port}", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )


def wait_listening(proc: subprocess.Popen[bytes], port: int, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            out = proc.stdout.read().decode() if proc.stdout else ""
            raise AssertionError(f"emulator exited {proc.returncode}: {out}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise AssertionError("timed out waiting for the emulator")


def stop(proc: subprocess.Popen[bytes]) -> str:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return proc.stdout.read().decode() if proc.stdout else ""


@contextmanager
def running(
    state: Path,
    credentials: Path,
    roots: Sequence[Path] = (),
    *,
    tls: tuple[Path, Path, Path] | None = None,
) -> Iterator[Emulator]:
    """The emulator over ``state``; ``tls`` = (cert, key, ca) serves HTTPS."""
    port = free_port()
    args = ["--state", str(state), "--credentials", str(credentials)]
    for root in roots:
        args += ["--root", str(root)]
    if tls:
        args += ["--tls-cert", str(tls[0]), "--tls-key", str(tls[1])]
    proc = start(args, port)
    scheme = "https" if tls else "http"
    emulator = Emulator(f"{scheme}://127.0.0.1:{port}", proc, tls[2] if tls else None)
    try:
        wait_listening(proc, port)
        yield emulator
    finally:
        emulator.log = stop(proc)


def make_tls(folder: Path) -> tuple[Path, Path, Path]:
    """A test CA and a server certificate for 127.0.0.1 / localhost: (cert, key, ca)."""
    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "kms emulator test CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(1)
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    import ipaddress

    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(2)
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    paths = (folder / "cert.pem", folder / "key.pem", folder / "ca.pem")
    paths[0].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    paths[2].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    return paths


def rsa_key(bits: int = 2048) -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(65537, bits)


def spki(key: rsa.RSAPrivateKey) -> bytes:
    return key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def document(sim_state: Path, public_key: bytes | None) -> bytes:
    """A document from the software NSM naming ``public_key``."""
    return SimulatedNsm.open(sim_state).attestation(public_key=public_key)


def recipient(doc: bytes) -> dict[str, Any]:
    return {"KeyEncryptionAlgorithm": "RSAES_OAEP_SHA_256", "AttestationDocument": doc}


def open_envelope(envelope: bytes, key: rsa.RSAPrivateKey) -> bytes:
    """Open a CMS EnvelopedData (KeyTransRecipientInfo, RSA-OAEP-SHA256, AES-256-CBC)."""
    info = cms.ContentInfo.load(envelope)
    enveloped = info["content"]
    (recipient_info,) = list(enveloped["recipient_infos"])
    ktri = recipient_info.chosen
    content_key = key.decrypt(
        ktri["encrypted_key"].native,
        OAEP(mgf=MGF1(algorithm=hashes.SHA256()), algorithm=hashes.SHA256(), label=None),
    )
    eci = enveloped["encrypted_content_info"]
    iv = eci["content_encryption_algorithm"]["parameters"].native
    decryptor = Cipher(algorithms.AES(content_key), modes.CBC(iv)).decryptor()
    padded = decryptor.update(eci["encrypted_content"].native) + decryptor.finalize()
    unpadder = padding.PKCS7(128).unpadder()
    return unpadder.update(padded) + unpadder.finalize()


def pem(key: rsa.RSAPrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
