"""Build an EIF (version 4) the way nitro-cli's EifBuilder lays it out.

Section order: kernel, cmdline, metadata, ramdisks..., signature last. Inputs are bytes or paths;
paths are streamed, so a gigabyte ramdisk never sits in memory. The header (offsets, sizes) is
written last, then the CRC over the finished file.
"""

from __future__ import annotations

import hashlib
import json
import os
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any, BinaryIO

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from nitro_attest.attestation.pcr import extend_zero
from nitro_attest.eif.format import (
    CRC_OFFSET,
    CURRENT_VERSION,
    DEFAULT_CPUS,
    DEFAULT_MEM,
    FLAG_ARCH_AARCH64,
    HEADER_SIZE,
    MAX_SECTIONS,
    EifError,
    EifHeader,
    SectionHeader,
    SectionType,
)
from nitro_attest.eif.measure import CHUNK_SIZE
from nitro_attest.eif.signature import load_certificate, pcr8, sign_pcr0

Source = bytes | str | os.PathLike[str]


def default_metadata(
    image_name: str = "nitro-attest", image_version: str = "1.0"
) -> dict[str, Any]:
    return {
        "ImageName": image_name,
        "ImageVersion": image_version,
        "BuildMetadata": {
            "BuildTime": "1970-01-01T00:00:00+00:00",
            "BuildTool": "nitro-attest",
            "BuildToolVersion": "0.1.0",
            "OperatingSystem": "Generic Linux",
            "KernelVersion": "Unknown version",
        },
        "DockerInfo": None,
        "CustomMetadata": None,
    }


def write_eif(
    out_path: str | os.PathLike[str],
    *,
    kernel: Source,
    cmdline: str | bytes,
    ramdisks: Sequence[Source],
    metadata: dict[str, Any] | bytes | None = None,
    signing_key_pem: bytes | None = None,
    signing_certificate_pem: bytes | None = None,
    aarch64: bool = False,
) -> dict[str, str]:
    """Write an EIF and return its measurements (hex PCR0, PCR1, PCR2, and PCR8 when signed)."""
    if not ramdisks:
        raise EifError("an EIF needs at least one ramdisk")
    if (signing_key_pem is None) != (signing_certificate_pem is None):
        raise EifError("signing needs both a private key and a certificate")
    cmdline_bytes = cmdline.encode() if isinstance(cmdline, str) else cmdline
    if b"\0" in cmdline_bytes:
        raise EifError("cmdline must not contain NUL bytes")
    if metadata is None:
        metadata = default_metadata()
    meta_bytes = (
        metadata
        if isinstance(metadata, bytes)
        else json.dumps(metadata, separators=(",", ":")).encode()
    )
    n_sections = 3 + len(ramdisks) + (1 if signing_key_pem else 0)
    if n_sections > MAX_SECTIONS:
        raise EifError(f"{n_sections} sections; an EIF holds at most {MAX_SECTIONS}")

    prefix = hashlib.sha384()
    app = hashlib.sha384()
    pcr1_digest = b""
    offsets: list[int] = []
    sizes: list[int] = []
    with open(out_path, "w+b") as fh:
        fh.write(bytes(HEADER_SIZE))

        def section(kind: SectionType, source: Source, hashes: list[Any]) -> None:
            offsets.append(fh.tell())
            sizes.append(_write_section(fh, kind, source, hashes))

        section(SectionType.KERNEL, kernel, [prefix])
        section(SectionType.CMDLINE, cmdline_bytes, [prefix])
        section(SectionType.METADATA, meta_bytes, [])
        for i, ramdisk in enumerate(ramdisks):
            section(SectionType.RAMDISK, ramdisk, [prefix] if i == 0 else [prefix, app])
            if i == 0:
                pcr1_digest = prefix.copy().digest()
        pcr0 = extend_zero(prefix.digest())
        pcrs = {
            "PCR0": pcr0.hex(),
            "PCR1": extend_zero(pcr1_digest).hex(),
            "PCR2": extend_zero(app.digest()).hex(),
        }
        if signing_key_pem is not None and signing_certificate_pem is not None:
            key = serialization.load_pem_private_key(signing_key_pem, password=None)
            if not isinstance(key, ec.EllipticCurvePrivateKey):
                raise EifError("the signing key must be an EC private key")
            section(SectionType.SIGNATURE, sign_pcr0(key, signing_certificate_pem, pcr0), [])
            pcrs["PCR8"] = pcr8(load_certificate(signing_certificate_pem)).hex()

        pad = MAX_SECTIONS - len(offsets)
        header = EifHeader(
            version=CURRENT_VERSION,
            flags=FLAG_ARCH_AARCH64 if aarch64 else 0,
            default_mem=DEFAULT_MEM,
            default_cpus=DEFAULT_CPUS,
            reserved=0,
            num_sections=len(offsets),
            section_offsets=(*offsets, *([0] * pad)),
            section_sizes=(*sizes, *([0] * pad)),
            unused=0,
            crc32=0,
        ).pack()
        fh.seek(0)
        fh.write(header)
        crc = zlib.crc32(header[:CRC_OFFSET])
        fh.seek(HEADER_SIZE)
        while chunk := fh.read(CHUNK_SIZE):
            crc = zlib.crc32(chunk, crc)
        fh.seek(CRC_OFFSET)
        fh.write(crc.to_bytes(4, "big"))
    return pcrs


def _write_section(fh: BinaryIO, kind: SectionType, source: Source, hashes: list[Any]) -> int:
    if isinstance(source, bytes):
        fh.write(SectionHeader(int(kind), 0, len(source)).pack())
        fh.write(source)
        for h in hashes:
            h.update(source)
        return len(source)
    path = Path(source)
    size = path.stat().st_size
    fh.write(SectionHeader(int(kind), 0, size).pack())
    written = 0
    with path.open("rb") as src:
        while chunk := src.read(CHUNK_SIZE):
            fh.write(chunk)
            for h in hashes:
                h.update(chunk)
            written += len(chunk)
    if written != size:
        raise EifError(f"{path}: changed size while being written ({size} -> {written} bytes)")
    return size
