"""Build an EIF (version 4) the way nitro-cli's EifBuilder lays it out.

Section order: kernel, cmdline, metadata, ramdisks..., signature last. Inputs are bytes, paths or
Streams; paths and Streams are streamed, so a gigabyte ramdisk never sits in memory. The header
(offsets, sizes, CRC) is written last; the CRC is computed while writing, never by re-reading.
"""

from __future__ import annotations

import hashlib
import json
import os
import zlib
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from nitro_attest.attestation.pcr import extend_zero
from nitro_attest.eif.format import (
    CRC_OFFSET,
    CURRENT_VERSION,
    DEFAULT_CPUS,
    DEFAULT_MEM,
    FLAG_ARCH_AARCH64,
    HEADER_SIZE,
    MAX_SECTIONS,
    SECTION_HEADER_SIZE,
    EifError,
    EifHeader,
    SectionHeader,
    SectionType,
)
from nitro_attest.eif.sink import Crc, HashingSink, crc32_combine


@dataclass(frozen=True, slots=True)
class Stream:
    """Section data produced on the fly: exactly ``size`` bytes written by ``produce(sink)``."""

    size: int
    produce: Callable[[HashingSink], None]


Source = bytes | str | os.PathLike[str] | Stream


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
    out_path: str | os.PathLike[str] | BinaryIO,
    *,
    kernel: Source,
    cmdline: str | bytes,
    ramdisks: Sequence[Source],
    metadata: dict[str, Any] | bytes | None = None,
    signing_key_pem: bytes | None = None,
    signing_certificate_pem: bytes | None = None,
    aarch64: bool = False,
) -> dict[str, str]:
    """Write an EIF and return its measurements (hex PCR0, PCR1, PCR2, and PCR8 when signed).

    ``out_path`` is a path, or a file object opened for writing and seeking (left open).

    Sizes are known before any byte is written (a Stream declares its own), so the file is
    written once, front to back; only the header is rewritten at the end, once the signature
    section (whose CBOR length depends on the signature bytes) is sized.
    """
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
    key = None
    if signing_key_pem is not None:
        # imported here: an unsigned build never needs cryptography (~0.05 s of startup)
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import ec

        loaded = serialization.load_pem_private_key(signing_key_pem, password=None)
        if not isinstance(loaded, ec.EllipticCurvePrivateKey):
            raise EifError("the signing key must be an EC private key")
        key = loaded

    prefix = hashlib.sha384()
    app = hashlib.sha384()
    pcr1_digest = b""
    offsets: list[int] = []
    sizes: list[int] = []
    crc = Crc()  # of everything after the header
    opened: AbstractContextManager[BinaryIO] = (
        open(out_path, "w+b")  # noqa: SIM115
        if isinstance(out_path, (str, os.PathLike))
        else nullcontext(out_path)
    )
    with opened as fh, HashingSink(fh, crc) as sink:
        fh.write(bytes(HEADER_SIZE))

        def section(
            section_type: SectionType, source: Source, here: list[Any], there: list[Any]
        ) -> None:
            offsets.append(HEADER_SIZE + sum(SECTION_HEADER_SIZE + n for n in sizes))
            size = _size_of(source)
            sink.begin([], [])
            sink.write(SectionHeader(int(section_type), 0, size).pack())
            sink.begin(here, there)
            _produce(sink, source)
            produced = sink.count
            sink.begin([], [])
            if produced != size:
                raise EifError(
                    f"{section_type.name} section: {produced} bytes produced, {size} declared "
                    "(input changed while being written?)"
                )
            sizes.append(size)

        try:
            section(SectionType.KERNEL, kernel, [prefix], [])
            section(SectionType.CMDLINE, cmdline_bytes, [prefix], [])
            section(SectionType.METADATA, meta_bytes, [], [])
            for i, ramdisk in enumerate(ramdisks):
                section(SectionType.RAMDISK, ramdisk, [prefix], [] if i == 0 else [app])
                if i == 0:
                    sink.close()
                    pcr1_digest = prefix.copy().digest()
            sink.close()
            pcr0 = extend_zero(prefix.digest())
            pcrs = {
                "PCR0": pcr0.hex(),
                "PCR1": extend_zero(pcr1_digest).hex(),
                "PCR2": extend_zero(app.digest()).hex(),
            }
            if key is not None and signing_certificate_pem is not None:
                from nitro_attest.eif.signature import load_certificate, pcr8, sign_pcr0

                signature = sign_pcr0(key, signing_certificate_pem, pcr0)
                section(SectionType.SIGNATURE, signature, [], [])
                pcrs["PCR8"] = pcr8(load_certificate(signing_certificate_pem)).hex()
        finally:
            sink.close()

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
        body = fh.tell() - HEADER_SIZE
        total = crc32_combine(zlib.crc32(header[:CRC_OFFSET]), crc.value, body)
        fh.seek(0)
        fh.write(header[:CRC_OFFSET] + total.to_bytes(4, "big"))
    return pcrs


def _size_of(source: Source) -> int:
    if isinstance(source, bytes):
        return len(source)
    if isinstance(source, Stream):
        return source.size
    return Path(source).stat().st_size


def _produce(sink: HashingSink, source: Source) -> None:
    if isinstance(source, bytes):
        sink.write(source)
    elif isinstance(source, Stream):
        source.produce(sink)
    else:
        fd = os.open(os.fspath(source), os.O_RDONLY | os.O_CLOEXEC)
        try:
            sink.fill(fd, 0, os.fstat(fd).st_size, os.fspath(source))
        finally:
            os.close(fd)
