"""The writer's output path: bytes go to the file in 1 MiB chunks and to the hashes, on two cores.

A full chunk is handed to a worker thread (application-ramdisk hash and CRC) while this thread
writes it, feeds the PCR0 hash and fills the other buffer; hashlib and zlib release the GIL on
large buffers. Chunks reach the worker in order, so the CRC runs over the file's byte order.
"""

from __future__ import annotations

import os
import zlib
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, BinaryIO

CHUNK = 1 << 20


class Crc:
    def __init__(self) -> None:
        self.value = 0

    def update(self, data: bytes | memoryview) -> None:
        self.value = zlib.crc32(data, self.value)


def _gf2_times(matrix: list[int], vector: int) -> int:
    total, i = 0, 0
    while vector:
        if vector & 1:
            total ^= matrix[i]
        vector >>= 1
        i += 1
    return total


def _gf2_square(matrix: list[int]) -> list[int]:
    return [_gf2_times(matrix, matrix[n]) for n in range(32)]


def crc32_combine(crc1: int, crc2: int, len2: int) -> int:
    """CRC32 of A||B from crc(A), crc(B) and len(B) (zlib's crc32_combine, which Python lacks):
    the header is known only once the signature is sized, after everything else is written."""
    if len2 <= 0:
        return crc1
    odd = [0xEDB88320] + [1 << n for n in range(31)]  # one zero bit
    even = _gf2_square(odd)  # two
    odd = _gf2_square(even)  # four
    while True:
        even = _gf2_square(odd)
        if len2 & 1:
            crc1 = _gf2_times(even, crc1)
        len2 >>= 1
        if not len2:
            break
        odd = _gf2_square(even)
        if len2 & 1:
            crc1 = _gf2_times(odd, crc1)
        len2 >>= 1
        if not len2:
            break
    return crc1 ^ crc2


class HashingSink:
    """Write-through buffer: ``write`` and ``fill`` (positioned read straight into the buffer)."""

    def __init__(self, fh: BinaryIO, pool: ThreadPoolExecutor, crc: Crc) -> None:
        self._fh = fh
        self._pool = pool
        self._crc = crc
        self._bufs = [bytearray(CHUNK), bytearray(CHUNK)]
        self._cur = 0
        self._used = 0
        self._pending: Future[None] | None = None
        self._here: list[Any] = []
        self._there: list[Any] = [crc]
        self.count = 0
        """Bytes written since the last ``begin``."""

    def begin(self, here: list[Any], there: list[Any]) -> None:
        """Start a section: ``here`` hashes run on this thread, ``there`` (plus the CRC) on the
        worker."""
        self._flush()
        self._here = here
        self._there = [*there, self._crc]
        self.count = 0

    def write(self, data: bytes | memoryview) -> None:
        view = memoryview(data)
        while view:
            buf = self._bufs[self._cur]
            n = min(len(view), CHUNK - self._used)
            buf[self._used : self._used + n] = view[:n]
            self._used += n
            self.count += n
            view = view[n:]
            if self._used == CHUNK:
                self._flush()

    def fill(self, fd: int, offset: int, size: int, what: str) -> None:
        """Copy ``size`` bytes of ``fd`` from ``offset`` without an intermediate bytes object."""
        while size:
            buf = memoryview(self._bufs[self._cur])
            n = min(size, CHUNK - self._used)
            got = os.preadv(fd, [buf[self._used : self._used + n]], offset)
            if got <= 0:
                raise OSError(f"{what}: file ended early (truncated or changed while reading)")
            self._used += got
            self.count += got
            offset += got
            size -= got
            if self._used == CHUNK:
                self._flush()

    def _flush(self) -> None:
        if not self._used:
            return
        chunk = memoryview(self._bufs[self._cur])[: self._used]
        self._wait()
        there = self._there
        self._pending = self._pool.submit(_feed, there, chunk)
        self._fh.write(chunk)
        for h in self._here:
            h.update(chunk)
        self._cur ^= 1
        self._used = 0

    def _wait(self) -> None:
        if self._pending is not None:
            self._pending.result()
            self._pending = None

    def close(self) -> None:
        self._flush()
        self._wait()


def _feed(sinks: list[Any], chunk: memoryview) -> None:
    for s in sinks:
        s.update(chunk)
