"""The writer's output path: bytes go to the file in 512 KiB chunks and to the hashes, on two cores.

The calling thread fills a ring of buffers (positioned reads straight into them, or small
writes), writes each full one to the file and hands it to two hashing threads: one for the
hashes of the whole image (PCR0), one for the application ramdisk's (PCR2) and the CRC. hashlib
and zlib release the GIL on large buffers, so reading, writing and the two SHA-384 passes (the
bulk of a build's CPU) run side by side. A buffer is reused once both threads are done with it;
each thread takes chunks in order, so every hash and the CRC run over the file's byte order.
"""

from __future__ import annotations

import os
import threading
import zlib
from collections import deque
from queue import SimpleQueue
from types import TracebackType
from typing import Any, BinaryIO

CHUNK = 1 << 19
RING = 4
"""Buffers in flight (2 MiB in all): the threads drift apart by up to three chunks."""


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


_Job = tuple[list[Any], memoryview, int] | None


class _Hasher:
    """A thread that feeds chunks to its hashes, in order, and reports each chunk's index back."""

    def __init__(self, name: str) -> None:
        self.jobs: SimpleQueue[_Job] = SimpleQueue()
        self.done: SimpleQueue[int] = SimpleQueue()
        self.error: BaseException | None = None
        self.busy: deque[int] = deque()
        """Indices of the buffers handed over and not yet reported done."""
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while (job := self.jobs.get()) is not None:
            sinks, chunk, index = job
            try:
                if self.error is None:
                    for s in sinks:
                        s.update(chunk)
            except BaseException as exc:  # re-raised on the writing thread
                self.error = exc
            self.done.put(index)

    def submit(self, sinks: list[Any], chunk: memoryview, index: int) -> None:
        if sinks:
            self.busy.append(index)
            self.jobs.put((sinks, chunk, index))

    def release(self, index: int) -> None:
        """Wait until buffer ``index`` is no longer read by this thread."""
        while index in self.busy:
            self.busy.remove(self.done.get())
        if self.error is not None:
            raise self.error

    def drain(self) -> None:
        while self.busy:
            self.busy.remove(self.done.get())
        if self.error is not None:
            raise self.error

    def stop(self) -> None:
        self.jobs.put(None)
        self._thread.join()


class HashingSink:
    """Write-through buffer: ``write`` and ``fill`` (positioned read straight into the buffer).

    A context manager: the hashing threads stop on exit."""

    def __init__(self, fh: BinaryIO, crc: Crc) -> None:
        self._fh = fh
        self._crc = crc
        self._bufs = [bytearray(CHUNK) for _ in range(RING)]
        self._views = [memoryview(b) for b in self._bufs]
        self._cur = 0
        self._used = 0
        self._workers = (_Hasher("eif-hash-image"), _Hasher("eif-hash-app"))
        self._here: list[Any] = []
        self._there: list[Any] = [crc]
        self.count = 0
        """Bytes written since the last ``begin``."""

    def __enter__(self) -> HashingSink:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        for w in self._workers:
            w.stop()

    def begin(self, here: list[Any], there: list[Any]) -> None:
        """Start a section: ``here`` hashes run on one thread, ``there`` (plus the CRC) on the
        other."""
        self._flush()
        self._here = here
        self._there = [*there, self._crc]
        self.count = 0

    def write(self, data: bytes | memoryview) -> None:
        n = len(data)
        if n <= CHUNK - self._used:  # the common case: a cpio header, a name, padding
            self._bufs[self._cur][self._used : self._used + n] = data
            self._used += n
            self.count += n
            if self._used == CHUNK:
                self._flush()
            return
        view = memoryview(data)
        while view:
            n = min(len(view), CHUNK - self._used)
            self._bufs[self._cur][self._used : self._used + n] = view[:n]
            self._used += n
            self.count += n
            view = view[n:]
            if self._used == CHUNK:
                self._flush()

    def fill(self, fd: int, offset: int, size: int, what: str) -> None:
        """Copy ``size`` bytes of ``fd`` from ``offset`` without an intermediate bytes object."""
        while size:
            n = min(size, CHUNK - self._used)
            got = os.preadv(fd, [self._views[self._cur][self._used : self._used + n]], offset)
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
        index = self._cur
        chunk = self._views[index][: self._used]
        image, app = self._workers
        image.submit(self._here, chunk, index)
        app.submit(self._there, chunk, index)
        self._fh.write(chunk)
        self._cur = (index + 1) % RING
        self._used = 0
        for w in self._workers:  # the next buffer must be free before it is refilled
            w.release(self._cur)

    def close(self) -> None:
        """Flush and wait for both hashing threads: every hash is then up to date."""
        self._flush()
        for w in self._workers:
            w.drain()
