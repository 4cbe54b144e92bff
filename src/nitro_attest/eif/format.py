"""EIF on-disk structures: the 548-byte header and the 12-byte section header (all big-endian).

Only fixed-size parsing lives here; the reader decides what a whole file must look like.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from enum import IntEnum

from nitro_attest.errors import FormatError

MAGIC = b".eif"
HEADER_SIZE = 548
SECTION_HEADER_SIZE = 12
MAX_SECTIONS = 32
CRC_OFFSET = 544
CURRENT_VERSION = 4
SUPPORTED_VERSIONS = frozenset({2, 3, 4})
FLAG_ARCH_AARCH64 = 0x1
DEFAULT_MEM = 1 << 30
DEFAULT_CPUS = 2

# magic, version, flags, default_mem, default_cpus, reserved, num_sections,
# 32 section offsets, 32 section sizes, unused, crc32
_HEADER = struct.Struct(">4sHHQQHH32Q32QII")
_SECTION = struct.Struct(">HHQ")
assert _HEADER.size == HEADER_SIZE and _SECTION.size == SECTION_HEADER_SIZE


class EifError(FormatError):
    """The file is not a well-formed EIF, or a check on it failed. The message is one line."""


class SectionType(IntEnum):
    INVALID = 0
    KERNEL = 1
    CMDLINE = 2
    RAMDISK = 3
    SIGNATURE = 4
    METADATA = 5


@dataclass(frozen=True, slots=True)
class EifHeader:
    version: int
    flags: int
    default_mem: int
    default_cpus: int
    reserved: int
    num_sections: int
    section_offsets: tuple[int, ...]
    section_sizes: tuple[int, ...]
    unused: int
    crc32: int

    @property
    def arch(self) -> str:
        return "aarch64" if self.flags & FLAG_ARCH_AARCH64 else "x86_64"

    @classmethod
    def parse(cls, data: bytes) -> EifHeader:
        if len(data) != HEADER_SIZE:
            raise EifError(f"EIF header must be {HEADER_SIZE} bytes, got {len(data)}")
        fields = _HEADER.unpack(data)
        if fields[0] != MAGIC:
            raise EifError(f"bad magic {fields[0].hex()} (expected 2e656966 '.eif'): not an EIF")
        return cls(
            version=fields[1],
            flags=fields[2],
            default_mem=fields[3],
            default_cpus=fields[4],
            reserved=fields[5],
            num_sections=fields[6],
            section_offsets=tuple(fields[7:39]),
            section_sizes=tuple(fields[39:71]),
            unused=fields[71],
            crc32=fields[72],
        )

    def pack(self) -> bytes:
        if len(self.section_offsets) != MAX_SECTIONS or len(self.section_sizes) != MAX_SECTIONS:
            raise EifError(f"section tables must have {MAX_SECTIONS} entries")
        return _HEADER.pack(
            MAGIC,
            self.version,
            self.flags,
            self.default_mem,
            self.default_cpus,
            self.reserved,
            self.num_sections,
            *self.section_offsets,
            *self.section_sizes,
            self.unused,
            self.crc32,
        )


@dataclass(frozen=True, slots=True)
class SectionHeader:
    type: int
    flags: int
    size: int

    @classmethod
    def parse(cls, data: bytes) -> SectionHeader:
        if len(data) != SECTION_HEADER_SIZE:
            raise EifError(f"section header must be {SECTION_HEADER_SIZE} bytes, got {len(data)}")
        section_type, flags, size = _SECTION.unpack(data)
        return cls(section_type, flags, size)

    def pack(self) -> bytes:
        return _SECTION.pack(self.type, self.flags, self.size)


def type_name(value: int) -> str:
    try:
        return SectionType(value).name
    except ValueError:
        return f"unknown type {value}"
