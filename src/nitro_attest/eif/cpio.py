"""The newc ("070701") cpio format the Linux kernel unpacks as an initramfs: write and read.

Header: magic + 13 fields of 8 uppercase hex digits (ino, mode, uid, gid, nlink, mtime, filesize,
devmajor, devminor, rdevmajor, rdevminor, namesize, check), then the NUL-terminated name padded
to 4 bytes, then the data padded to 4 bytes. The archive ends with a ``TRAILER!!!`` entry.
Every field is 32 bits, so a file of 4 GiB or more cannot be carried.
"""

from __future__ import annotations

import stat
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import BinaryIO

from nitro_attest.eif.format import EifError

MAGIC = b"070701"
HEADER_SIZE = 110
TRAILER = b"TRAILER!!!"
MAX_FIELD = 0xFFFFFFFF
_HEAD = MAGIC + b"%08X" * 13
MAX_NAME = 4096
"""PATH_MAX: the kernel refuses longer names (N_ALIGN(name_len) > PATH_MAX)."""


class CpioError(EifError):
    """A cpio archive cannot be written or read. The message is one line."""


def pad4(n: int) -> int:
    return -n & 3


@dataclass(frozen=True, slots=True)
class CpioHeader:
    name: bytes
    mode: int
    """st_mode: type bits and permission bits (setuid/setgid/sticky included)."""
    uid: int = 0
    gid: int = 0
    nlink: int = 1
    mtime: int = 0
    size: int = 0
    ino: int = 0
    rdevmajor: int = 0
    rdevminor: int = 0

    @property
    def file_type(self) -> int:
        return stat.S_IFMT(self.mode)

    def pack(self) -> bytes:
        name = self.name + b"\0"
        if b"\0" in self.name or not self.name:
            raise CpioError(f"cpio: invalid entry name {self.name[:60]!r}")
        if len(name) > MAX_NAME:
            raise CpioError(f"cpio: name longer than {MAX_NAME} bytes: {self.name[:60]!r}...")
        fields = (
            self.ino,
            self.mode,
            self.uid,
            self.gid,
            self.nlink,
            self.mtime,
            self.size,
            0,
            0,
            self.rdevmajor,
            self.rdevminor,
            len(name),
            0,
        )
        for value in fields:
            if not 0 <= value <= MAX_FIELD:
                raise CpioError(
                    f"cpio: {self.name[:60]!r}: value {value} does not fit newc's 32-bit fields"
                )
        return _HEAD % fields + name + bytes(pad4(HEADER_SIZE + len(name)))


def trailer() -> bytes:
    return CpioHeader(TRAILER, 0, nlink=1).pack()


# --- reading ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CpioEntry:
    header: CpioHeader
    data_offset: int
    """Offset of the entry's data from the start of the archive."""


def iter_cpio(
    fh: BinaryIO,
    length: int,
    on_data: Callable[[CpioEntry, bytes], None] | None = None,
    *,
    chunk: int = 1 << 20,
) -> Iterator[CpioEntry]:
    """Walk a newc archive of ``length`` bytes starting at ``fh``'s position, streaming.

    Each entry's data is passed to ``on_data`` in chunks (or skipped) before the entry is yielded.
    Stops at the trailer; what follows it must be zero padding.
    """
    pos = 0
    while True:
        if pos + HEADER_SIZE > length:
            raise CpioError(f"cpio: truncated header at offset {pos} (no TRAILER!!!)")
        head = _read(fh, HEADER_SIZE, pos)
        if head[:6] != MAGIC:
            raise CpioError(f"cpio: bad magic {head[:6]!r} at offset {pos} (expected newc 070701)")
        try:
            v = [int(head[6 + 8 * i : 14 + 8 * i], 16) for i in range(13)]
        except ValueError:
            raise CpioError(f"cpio: non-hex header field at offset {pos}") from None
        ino, mode, uid, gid, nlink, mtime, size, _, _, rmaj, rmin, namesize, _ = v
        if not 1 <= namesize <= MAX_NAME:
            raise CpioError(f"cpio: name size {namesize} out of range at offset {pos}")
        name_end = pos + HEADER_SIZE + namesize
        data_offset = name_end + pad4(HEADER_SIZE + namesize)
        if data_offset + size > length:
            raise CpioError(f"cpio: entry at offset {pos} runs past the end of the archive")
        raw = _read(fh, data_offset - pos - HEADER_SIZE, pos)
        name = raw[: namesize - 1]
        if raw[namesize - 1 : namesize] != b"\0" or b"\0" in name:
            raise CpioError(f"cpio: name at offset {pos} is not NUL-terminated")
        header = CpioHeader(name, mode, uid, gid, nlink, mtime, size, ino, rmaj, rmin)
        entry = CpioEntry(header, data_offset)
        if name == TRAILER:
            rest = length - data_offset
            while rest:
                block = fh.read(min(rest, chunk))
                if not block or block.count(0) != len(block):
                    raise CpioError("cpio: non-zero bytes after TRAILER!!!")
                rest -= len(block)
            return
        left = size
        while left:
            block = fh.read(min(left, chunk))
            if not block:
                raise CpioError(f"cpio: {name[:60]!r}: data ended early")
            if on_data is not None:
                on_data(entry, block)
            left -= len(block)
        _read(fh, pad4(size), data_offset + size)
        pos = data_offset + size + pad4(size)
        yield entry


def _read(fh: BinaryIO, n: int, where: int) -> bytes:
    data = fh.read(n)
    if len(data) != n:
        raise CpioError(f"cpio: archive ended early near offset {where}")
    return data
