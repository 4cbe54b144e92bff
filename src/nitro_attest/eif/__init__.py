"""EIF (Enclave Image Format): read, validate, measure and write enclave images without nitro-cli.

``inspect_eif(path)`` does one bounded-memory pass and returns everything describe-eif reports;
``measurements_from_eif(path)`` returns the PCRs as hex, refusing a file whose CRC or signature
does not check out.

Modules: ``format`` (header, section types, CRC), ``reader`` (strict layout), ``measure`` (the
one-pass PCR computation), ``metadata``, ``signature`` (PCR8 and the COSE signature) and
``writer``; the image builder ``build`` (``build_eif``: docker save / OCI layout / rootfs dir ->
reproducible EIF, over ``blobs``, ``tar``, ``oci``, ``layer``, ``rootfs``, ``hostdir``, ``cpio``,
``ramdisk``, ``sink``) and ``diff`` (``diff_eifs``). None of them needs nitro-cli.
"""

from __future__ import annotations

import datetime as dt
import os
from dataclasses import dataclass
from typing import Any

from cryptography import x509

from nitro_attest.eif.format import EifError, EifHeader, SectionType
from nitro_attest.eif.measure import CHUNK_SIZE, HASH_ALGORITHM, EifScan, scan
from nitro_attest.eif.metadata import parse_metadata
from nitro_attest.eif.reader import EifLayout, Section, open_eif, read_layout
from nitro_attest.eif.signature import (
    check_signature,
    parse_signature_section,
    pcr8,
    validity_problem,
)

__all__ = [
    "HASH_ALGORITHM",
    "EifError",
    "EifHeader",
    "EifInfo",
    "EifLayout",
    "Section",
    "SectionType",
    "inspect_eif",
    "measurements_from_eif",
]


@dataclass(frozen=True, slots=True)
class EifInfo:
    """What ``inspect_eif`` found: the file's layout, PCRs, metadata and signature checks."""

    scan: EifScan
    metadata: dict[str, Any] | None
    certificate: x509.Certificate | None
    pcr8: bytes | None
    signature_ok: bool | None
    """None when unsigned."""
    validity_problem: str | None
    """Why the signing certificate is not valid at the check time; None when valid or unsigned."""
    checked_at: dt.datetime

    @property
    def header(self) -> EifHeader:
        """The EIF's fixed header."""
        return self.scan.layout.header

    @property
    def signed(self) -> bool:
        """Whether the image carries a signing certificate (and so a PCR8)."""
        return self.certificate is not None

    @property
    def crc_ok(self) -> bool:
        """Whether the header's CRC32 matches the file."""
        return self.scan.crc_ok

    def pcrs(self) -> dict[str, bytes]:
        """PCR0, PCR1, PCR2 (and PCR8 when signed) by their nitro-cli names."""
        out = {"PCR0": self.scan.pcr0, "PCR1": self.scan.pcr1, "PCR2": self.scan.pcr2}
        if self.pcr8 is not None:
            out["PCR8"] = self.pcr8
        return out

    def pcrs_hex(self) -> dict[str, str]:
        """``pcrs()`` as hex, the shape of nitro-cli's "Measurements"."""
        return {name: value.hex() for name, value in self.pcrs().items()}

    def problems(self) -> list[str]:
        """Every reason to reject this file (empty when it checks out)."""
        found = []
        if not self.crc_ok:
            found.append(
                f"CRC mismatch: header says {self.header.crc32:08x}, "
                f"file gives {self.scan.crc_computed:08x}"
            )
        if self.signature_ok is False:
            found.append("signature check failed: the PCR0 signature does not verify")
        if self.validity_problem:
            found.append(self.validity_problem)
        return found


def inspect_eif(
    path: str | os.PathLike[str],
    *,
    at: dt.datetime | None = None,
    chunk_size: int = CHUNK_SIZE,
) -> EifInfo:
    """Validate, measure and check ``path`` in one pass. Raises EifError for a malformed file,
    FileNotFoundError/OSError for I/O problems. CRC and signature results are reported, not
    raised; the signing certificate's validity is judged at ``at`` (default: now)."""
    when = at if at is not None else dt.datetime.now(dt.UTC)
    fh, size = open_eif(path)
    with fh:
        layout = read_layout(fh, size)
        result = scan(fh, layout, chunk_size=chunk_size)
    metadata = parse_metadata(result.metadata) if result.metadata is not None else None
    certificate = None
    signature_ok = None
    problem = None
    register8 = None
    if result.signature is not None:
        entry = parse_signature_section(result.signature)
        certificate = entry.certificate()
        register8 = pcr8(certificate)
        signature_ok = check_signature(entry, result.pcr0)
        problem = validity_problem(certificate, when)
    return EifInfo(result, metadata, certificate, register8, signature_ok, problem, when)


def measurements_from_eif(path: str | os.PathLike[str]) -> dict[str, str]:
    """PCR0, PCR1, PCR2 (and PCR8 when signed) as lowercase hex.

    Fails closed: a CRC mismatch or a signature that does not verify raises EifError. The
    certificate's validity period is not a property of the measurements and is not checked here.
    """
    info = inspect_eif(path)
    if not info.crc_ok or info.signature_ok is False:
        raise EifError(f"{os.fspath(path)}: {info.problems()[0]}")
    return info.pcrs_hex()
