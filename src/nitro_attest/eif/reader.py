"""Validate an EIF's layout with small reads only, before any section data is read.

The header's offset table and a sequential walk of the section headers (what nitro-cli's reader
does) must describe the same file: sections back to back from byte 548 to EOF, in table order.
A file where the two could disagree is refused rather than measured one way or the other.
"""

from __future__ import annotations

import io
import os
import stat
from dataclasses import dataclass
from typing import BinaryIO

from nitro_attest.eif.format import (
    HEADER_SIZE,
    MAX_SECTIONS,
    SECTION_HEADER_SIZE,
    SUPPORTED_VERSIONS,
    EifError,
    EifHeader,
    SectionHeader,
    SectionType,
    type_name,
)

MAX_SIGNATURE_SIZE = 32768
"""nitro-cli's limit for the signature section."""
MAX_METADATA_SIZE = 1 << 20
"""Metadata is parsed in memory; real ones (docker inspect + build info) are a few KiB."""


@dataclass(frozen=True, slots=True)
class Section:
    index: int
    type: SectionType
    header_offset: int
    size: int

    @property
    def data_offset(self) -> int:
        return self.header_offset + SECTION_HEADER_SIZE

    @property
    def end(self) -> int:
        return self.data_offset + self.size


@dataclass(frozen=True, slots=True)
class EifLayout:
    header: EifHeader
    sections: tuple[Section, ...]
    file_size: int

    def of_type(self, section_type: SectionType) -> list[Section]:
        return [s for s in self.sections if s.type == section_type]

    @property
    def ramdisks(self) -> list[Section]:
        return self.of_type(SectionType.RAMDISK)

    @property
    def signature(self) -> Section | None:
        found = self.of_type(SectionType.SIGNATURE)
        return found[0] if found else None

    @property
    def metadata(self) -> Section | None:
        found = self.of_type(SectionType.METADATA)
        return found[0] if found else None


def read_exact(fh: BinaryIO, offset: int, size: int, what: str) -> bytes:
    fh.seek(offset)
    data = fh.read(size)
    if len(data) != size:
        raise EifError(f"{what}: file ended after {len(data)} of {size} bytes (file changed?)")
    return data


def open_eif(path: str | os.PathLike[str]) -> tuple[io.BufferedReader, int]:
    """Open a regular file for reading; returns the handle and its size.

    The type is checked before opening, so a FIFO or device is refused instead of blocking.
    """
    name = os.fspath(path)
    try:
        if not stat.S_ISREG(os.stat(name).st_mode):
            raise EifError(f"{name}: not a regular file")
        fh = open(name, "rb")  # noqa: SIM115 - returned to the caller, who closes it
    except FileNotFoundError:
        raise FileNotFoundError(f"{name}: no such file") from None
    try:
        st = os.fstat(fh.fileno())
        if not stat.S_ISREG(st.st_mode):
            raise EifError(f"{name}: not a regular file")
    except BaseException:
        fh.close()
        raise
    return fh, st.st_size


def read_layout(fh: BinaryIO, file_size: int) -> EifLayout:
    """Parse the header and every section header; check they describe the whole file."""
    if file_size < HEADER_SIZE:
        raise EifError(f"file is {file_size} bytes, shorter than the {HEADER_SIZE}-byte EIF header")
    header = EifHeader.parse(read_exact(fh, 0, HEADER_SIZE, "EIF header"))
    if header.version not in SUPPORTED_VERSIONS:
        raise EifError(
            f"unsupported EIF version {header.version} (supported: "
            f"{', '.join(map(str, sorted(SUPPORTED_VERSIONS)))})"
        )
    count = header.num_sections
    if not 2 <= count <= MAX_SECTIONS:
        raise EifError(f"section count {count} out of range (2..{MAX_SECTIONS})")
    for i in range(count, MAX_SECTIONS):
        if header.section_offsets[i] or header.section_sizes[i]:
            raise EifError(f"section table entry {i} is set but the header declares {count}")

    sections: list[Section] = []
    expected_offset = HEADER_SIZE
    for i in range(count):
        offset, size = header.section_offsets[i], header.section_sizes[i]
        where = f"section {i} (header at {offset}, {size} data bytes)"
        if offset + SECTION_HEADER_SIZE + size > file_size:
            raise EifError(f"{where} ends past the end of the {file_size}-byte file")
        if offset < expected_offset:
            raise EifError(
                f"{where} overlaps the previous section or header ending at {expected_offset}"
            )
        if offset > expected_offset:
            raise EifError(
                f"{where} leaves {offset - expected_offset} unaccounted byte(s) after "
                f"offset {expected_offset}"
            )
        raw = SectionHeader.parse(read_exact(fh, offset, SECTION_HEADER_SIZE, where))
        if raw.size != size:
            raise EifError(f"{where}: its section header says {raw.size} bytes")
        if raw.flags != 0:
            raise EifError(f"{where}: section flags {raw.flags:#x}, expected 0")
        if not SectionType.KERNEL <= raw.type <= SectionType.METADATA:
            raise EifError(f"{where}: invalid section type {raw.type}")
        sections.append(Section(i, SectionType(raw.type), offset, size))
        expected_offset = offset + SECTION_HEADER_SIZE + size
    if expected_offset != file_size:
        raise EifError(f"{file_size - expected_offset} trailing byte(s) after the last section")

    layout = EifLayout(header, tuple(sections), file_size)
    _check_structure(layout)
    return layout


def _check_structure(layout: EifLayout) -> None:
    """The order the builder writes: kernel, cmdline, metadata, ramdisks..., signature last.

    Measurements are order-dependent, so anything else is refused instead of guessed at.
    """
    types = [s.type for s in layout.sections]
    names = ", ".join(type_name(t) for t in types)
    if types[0] != SectionType.KERNEL or types.count(SectionType.KERNEL) != 1:
        raise EifError(f"the first and only KERNEL section must come first (sections: {names})")
    if types[1] != SectionType.CMDLINE or types.count(SectionType.CMDLINE) != 1:
        raise EifError(f"exactly one CMDLINE section must follow the kernel (sections: {names})")
    if SectionType.RAMDISK not in types:
        raise EifError(f"no RAMDISK section (sections: {names})")
    if types.count(SectionType.SIGNATURE) > 1 or (
        SectionType.SIGNATURE in types and types[-1] != SectionType.SIGNATURE
    ):
        raise EifError(f"at most one SIGNATURE section, and it must be last (sections: {names})")
    meta = types.count(SectionType.METADATA)
    if meta > 1:
        raise EifError(f"more than one METADATA section (sections: {names})")
    if meta == 0 and layout.header.version >= 4:
        raise EifError(f"EIF version {layout.header.version} requires a METADATA section")
    signature = layout.signature
    if signature is not None and not 0 < signature.size <= MAX_SIGNATURE_SIZE:
        raise EifError(
            f"signature section is {signature.size} bytes (allowed 1..{MAX_SIGNATURE_SIZE})"
        )
    metadata = layout.metadata
    if metadata is not None and metadata.size > MAX_METADATA_SIZE:
        raise EifError(f"metadata section is {metadata.size} bytes (at most {MAX_METADATA_SIZE})")
