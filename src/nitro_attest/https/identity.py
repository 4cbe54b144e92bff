"""The front's TLS identity: a P-256 key made at start, its certificate, and the server context.

The private key exists only in this process. Python's ``ssl`` loads a key only from a path, so
the PEM goes through an anonymous memory file (``memfd_create``: RAM, no name in any file
system) that is closed as soon as OpenSSL has read it; it never touches a disk. The certificate
is self-signed: clients trust it because an attestation document names its key, not because a
CA signed it (docs/https.md).
"""

from __future__ import annotations

import datetime
import os
import ssl
from collections.abc import Sequence
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from nitro_attest.codec.hosts import HostSyntaxError, parse_host
from nitro_attest.errors import ConfigurationError

DEFAULT_NAME = "nitro-enclave"
VALIDITY = datetime.timedelta(days=365)


@dataclass(frozen=True, slots=True)
class TlsIdentity:
    certificate_der: bytes
    spki_der: bytes  # what the attestation document's public_key holds
    context: ssl.SSLContext


def spki_of(certificate_der: bytes) -> bytes:
    """The SubjectPublicKeyInfo (DER) of a certificate."""
    cert = x509.load_der_x509_certificate(certificate_der)
    return cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _subject_names(names: Sequence[str]) -> list[x509.GeneralName]:
    out: list[x509.GeneralName] = []
    for name in names:
        try:
            host = parse_host(name)
        except HostSyntaxError as exc:
            raise ConfigurationError(f"--name {name[:60]!r}: {exc}") from None
        if host.ip is not None:
            out.append(x509.IPAddress(host.ip))
        else:
            out.append(x509.DNSName(host.name))
    return out


def _certificate(key: ec.EllipticCurvePrivateKey, names: Sequence[str]) -> x509.Certificate:
    now = datetime.datetime.now(datetime.UTC)
    common_name = names[0] if names else DEFAULT_NAME
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + VALIDITY)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
    )
    if names:
        builder = builder.add_extension(
            x509.SubjectAlternativeName(_subject_names(names)), critical=False
        )
    return builder.sign(key, hashes.SHA256())


def _load_in_memory(context: ssl.SSLContext, pem: bytes) -> None:
    if not hasattr(os, "memfd_create"):
        raise ConfigurationError("https serve needs Linux (memfd_create) to keep its key in RAM")
    fd = os.memfd_create("nitro-attest-tls", os.MFD_CLOEXEC)
    try:
        os.write(fd, pem)
        context.load_cert_chain(f"/proc/self/fd/{fd}")
    finally:
        os.close(fd)


def make_identity(names: Sequence[str] = (), *, allow_tls12: bool = False) -> TlsIdentity:
    """A fresh key and certificate, and a server context holding them (TLS 1.3 unless 1.2 is
    allowed; HTTP/1.1 by ALPN)."""
    key = ec.generate_private_key(ec.SECP256R1())
    cert = _certificate(key, names)
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2 if allow_tls12 else ssl.TLSVersion.TLSv1_3
    context.set_alpn_protocols(["http/1.1"])
    # No resumption: every connection is a full handshake with the certificate the client
    # attests (and no tickets to make: TLS 1.3 sends two per handshake by default).
    context.options |= ssl.OP_NO_TICKET
    context.num_tickets = 0
    # With --tls12: no renegotiation, a full handshake's CPU a client could ask for at will (off
    # by default since OpenSSL 3.0, not in the 1.1.1 an enclave image may carry).
    context.options |= ssl.OP_NO_RENEGOTIATION
    _load_in_memory(context, key_pem + cert.public_bytes(serialization.Encoding.PEM))
    der = cert.public_bytes(serialization.Encoding.DER)
    return TlsIdentity(der, spki_of(der), context)
