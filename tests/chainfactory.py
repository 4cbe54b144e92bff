"""Build certificate chains and signed documents with every knob a negative test needs.

Independent of nitro_attest's own encoder and simulator: plain cbor2 + cryptography, so the
verifier is tested against documents it did not produce itself.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Any

import cbor2
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.x509.oid import NameOID

T0 = dt.datetime(2025, 1, 1, 12, 0, tzinfo=dt.UTC)
_KEYS: dict[str, ec.EllipticCurvePrivateKey] = {}


def key(name: str, curve: ec.EllipticCurve | None = None) -> ec.EllipticCurvePrivateKey:
    """Keys are cached by name: generating P-384 keys is the slow part of building chains."""
    tag = f"{name}/{(curve or ec.SECP384R1()).name}"
    if tag not in _KEYS:
        _KEYS[tag] = ec.generate_private_key(curve or ec.SECP384R1())
    return _KEYS[tag]


def name(cn: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.COUNTRY_NAME, "US"),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Amazon"),
            x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, "AWS"),
            x509.NameAttribute(NameOID.COMMON_NAME, cn),
        ]
    )


@dataclass
class CertSpec:
    cn: str
    ca: bool = True
    path_len: int | None = None
    bc_critical: bool = True
    include_bc: bool = True
    key_cert_sign: bool = True
    digital_signature: bool = True
    not_before: dt.datetime = T0 - dt.timedelta(days=1)
    not_after: dt.datetime = T0 + dt.timedelta(days=1)
    extra_critical: bool = False
    curve: ec.EllipticCurve | None = None
    hash_alg: hashes.HashAlgorithm = field(default_factory=hashes.SHA384)
    issuer_name: str | None = None  # override the issuer name written in the certificate
    signing_key: str | None = None  # override the key that signs it


def make_cert(spec: CertSpec, issuer: CertSpec | None) -> bytes:
    subject_key = key(spec.cn, spec.curve)
    issuer_cn = spec.issuer_name or (issuer.cn if issuer else spec.cn)
    signer = key(
        spec.signing_key or (issuer.cn if issuer else spec.cn), None if issuer else spec.curve
    )
    builder = (
        x509.CertificateBuilder()
        .subject_name(name(spec.cn))
        .issuer_name(name(issuer_cn))
        .public_key(subject_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(spec.not_before)
        .not_valid_after(spec.not_after)
    )
    if spec.include_bc:
        builder = builder.add_extension(
            x509.BasicConstraints(ca=spec.ca, path_length=spec.path_len), critical=spec.bc_critical
        )
    builder = builder.add_extension(
        x509.KeyUsage(
            digital_signature=spec.digital_signature,
            content_commitment=not spec.ca,
            key_encipherment=False,
            data_encipherment=False,
            key_agreement=False,
            key_cert_sign=spec.ca and spec.key_cert_sign,
            crl_sign=spec.ca,
            encipher_only=False,
            decipher_only=False,
        ),
        critical=spec.ca,
    )
    if spec.extra_critical:
        builder = builder.add_extension(
            x509.UnrecognizedExtension(x509.ObjectIdentifier("1.3.6.1.4.1.99999.1"), b"\x05\x00"),
            critical=True,
        )
    cert = builder.sign(signer, spec.hash_alg)
    return cert.public_bytes(serialization.Encoding.DER)


def default_chain() -> list[CertSpec]:
    """[root, regional, zonal, instance, leaf] shaped like AWS's."""
    return [
        CertSpec(
            "test-root.nitro-enclaves",
            not_before=T0 - dt.timedelta(days=3650),
            not_after=T0 + dt.timedelta(days=3650),
        ),
        CertSpec("regional.test.aws.nitro-enclaves", path_len=2),
        CertSpec("zonal.test.aws.nitro-enclaves", path_len=1),
        CertSpec("i-0123456789abcdef0.test.aws.nitro-enclaves", path_len=0),
        CertSpec(
            "i-0123456789abcdef0-enc0123456789abcdef.test.aws",
            ca=False,
            not_before=T0 - dt.timedelta(minutes=1),
            not_after=T0 + dt.timedelta(hours=3),
        ),
    ]


def build_chain(specs: list[CertSpec]) -> list[bytes]:
    ders = []
    for i, spec in enumerate(specs):
        ders.append(make_cert(spec, specs[i - 1] if i else None))
    return ders


def root_pem(der: bytes) -> bytes:
    return x509.load_der_x509_certificate(der).public_bytes(serialization.Encoding.PEM)


def payload_map(ders: list[bytes], **overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "module_id": "i-0123456789abcdef0-enc0123456789abcdef",
        "digest": "SHA384",
        "timestamp": int(T0.timestamp() * 1000),
        "pcrs": {i: (bytes([i + 1]) * 48 if i < 3 else bytes(48)) for i in range(16)},
        "certificate": ders[-1],
        "cabundle": ders[:-1],
        "public_key": None,
        "user_data": None,
        "nonce": None,
    }
    for k, v in overrides.items():
        if v is _DROP:
            body.pop(k, None)
        else:
            body[k] = v
    return body


_DROP = object()
DROP: Any = _DROP


def sign_document(
    payload: bytes,
    leaf_key: ec.EllipticCurvePrivateKey,
    *,
    protected: bytes = b"\xa1\x01\x38\x22",
    unprotected: Any = None,
    tag: bool = False,
) -> bytes:
    tbs = cbor2.dumps(["Signature1", protected, b"", payload])
    r, s = decode_dss_signature(leaf_key.sign(tbs, ec.ECDSA(hashes.SHA384())))
    size = (leaf_key.curve.key_size + 7) // 8
    sig = r.to_bytes(size, "big") + s.to_bytes(size, "big")
    item = [protected, {} if unprotected is None else unprotected, payload, sig]
    data = cbor2.dumps(item)
    return b"\xd2" + data if tag else data


@dataclass
class Chain:
    specs: list[CertSpec]
    ders: list[bytes]

    @property
    def root_pem(self) -> bytes:
        return root_pem(self.ders[0])

    @property
    def leaf_key(self) -> ec.EllipticCurvePrivateKey:
        return key(self.specs[-1].cn, self.specs[-1].curve)

    def document(self, **overrides: Any) -> bytes:
        return sign_document(cbor2.dumps(payload_map(self.ders, **overrides)), self.leaf_key)


def chain(specs: list[CertSpec] | None = None) -> Chain:
    specs = specs or default_chain()
    return Chain(specs, build_chain(specs))
