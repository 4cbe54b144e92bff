"""Test-side EIF helpers written from the spec, independent of nitro_attest.eif.

They parse and patch the header with their own struct code, so the tests do not check the module
against itself.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import struct
import zlib
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

HEADER = struct.Struct(">4sHHQQHH32Q32QII")
SECTION = struct.Struct(">HHQ")


def formula_pcr(data: bytes) -> str:
    """PCR = SHA-384(48 zero bytes || SHA-384(data)), straight from the spec."""
    return hashlib.sha384(b"\0" * 48 + hashlib.sha384(data).digest()).hexdigest()


def parse(blob: bytes) -> tuple[list[int], list[tuple[int, int, int]]]:
    """Header fields and [(type, header_offset, size)] via the offset table."""
    fields = list(HEADER.unpack(blob[:548]))
    n = fields[6]
    sections = []
    for i in range(n):
        off = fields[7 + i]
        stype, _flags, size = SECTION.unpack(blob[off : off + 12])
        sections.append((stype, off, size))
    return fields, sections


def formula_pcrs(blob: bytes) -> dict[str, str]:
    _, sections = parse(blob)
    data = {t: [blob[o + 12 : o + 12 + s] for (tt, o, s) in sections if tt == t] for t in (1, 2, 3)}
    kernel, cmdline, ramdisks = data[1][0], data[2][0], data[3]
    return {
        "PCR0": formula_pcr(kernel + cmdline + b"".join(ramdisks)),
        "PCR1": formula_pcr(kernel + cmdline + ramdisks[0]),
        "PCR2": formula_pcr(b"".join(ramdisks[1:])),
    }


def crc_of(blob: bytes) -> int:
    return zlib.crc32(blob[:544] + blob[548:])


def with_fixed_crc(blob: bytes) -> bytes:
    return blob[:544] + crc_of(blob).to_bytes(4, "big") + blob[548:]


def set_header_field(blob: bytes, index: int, value: int, *, fix_crc: bool = True) -> bytes:
    fields = list(HEADER.unpack(blob[:548]))
    fields[index] = value
    out = HEADER.pack(*fields) + blob[548:]
    return with_fixed_crc(out) if fix_crc else out


# HEADER field indexes
VERSION, FLAGS, NUM_SECTIONS, OFFSETS, SIZES = 1, 2, 6, 7, 39


def replace_last_section(blob: bytes, data: bytes) -> bytes:
    """Swap the last section's data, fixing its header, the size table and the CRC."""
    fields, sections = parse(blob)
    stype, off, _ = sections[-1]
    n = len(sections)
    fields[SIZES + n - 1] = len(data)
    out = HEADER.pack(*fields) + blob[548:off] + SECTION.pack(stype, 0, len(data)) + data
    return with_fixed_crc(out)


def make_signer(
    curve: ec.EllipticCurve,
    *,
    not_before: dt.datetime | None = None,
    not_after: dt.datetime | None = None,
) -> tuple[bytes, bytes]:
    """A self-signed EC certificate; returns (private key PEM, certificate PEM)."""
    key = ec.generate_private_key(curve)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "eif-test-signer")])
    start = not_before or dt.datetime(2020, 1, 1, tzinfo=dt.UTC)
    end = not_after or dt.datetime(2120, 1, 1, tzinfo=dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(start)
        .not_valid_after(end)
        .sign(key, hashes.SHA384())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return key_pem, cert.public_bytes(serialization.Encoding.PEM)


def cert_pcr8(cert_pem: bytes) -> str:
    der = x509.load_pem_x509_certificate(cert_pem).public_bytes(serialization.Encoding.DER)
    return formula_pcr(der)


def write(path: Path, blob: bytes) -> Path:
    path.write_bytes(blob)
    return path
