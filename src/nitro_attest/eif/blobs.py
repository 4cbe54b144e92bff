"""Random-access views of the image's bytes: a file, or a byte range inside a file (a member of an
outer tar). Compressed blobs are decompressed once into a private spool file, with a size cap, so
that every later read is a positioned read and nothing is held in memory."""

from __future__ import annotations

import os
import stat
import zlib
from dataclasses import dataclass
from pathlib import Path

from nitro_attest.eif.format import EifError

GZIP_MAGIC = b"\x1f\x8b"
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
CHUNK = 1 << 20


class ImageError(EifError):
    """The image source is unusable or hostile. The message is one line."""


class FileCache:
    """Open file descriptors by path, closed together (a build reads many blobs of few files)."""

    def __init__(self) -> None:
        self._fds: dict[str, int] = {}

    def fd(self, path: str) -> int:
        fd = self._fds.get(path)
        if fd is None:
            fd = open_regular(path)
            self._fds[path] = fd
        return fd

    def close(self) -> None:
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()


def open_regular(path: str, *, follow: bool = False) -> int:
    """Open a regular file, never a FIFO or device; a final symlink only when ``follow``."""
    flags = os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | (0 if follow else os.O_NOFOLLOW)
    try:
        fd = os.open(path, flags)
    except FileNotFoundError:
        raise ImageError(f"{path}: no such file") from None
    except OSError as exc:
        raise ImageError(f"{path}: cannot open: {exc.strerror or exc}") from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise ImageError(f"{path}: not a regular file")
    return fd


@dataclass(frozen=True, slots=True)
class Blob:
    """``size`` bytes of ``path`` starting at ``offset``."""

    path: str
    offset: int
    size: int
    name: str
    """How errors name it (e.g. 'layer 2 (blobs/sha256/ab12...)')."""

    def pread(self, files: FileCache, n: int, at: int) -> bytes:
        if at < 0 or at + n > self.size:
            raise ImageError(f"{self.name}: read past its end (truncated?)")
        data = os.pread(files.fd(self.path), n, self.offset + at)
        if len(data) != n:
            raise ImageError(f"{self.name}: file ended early (truncated or changed while reading)")
        return data

    def head(self, files: FileCache, n: int) -> bytes:
        return self.pread(files, min(n, self.size), 0)


def whole_file(path: str | os.PathLike[str], name: str) -> Blob:
    p = os.fspath(path)
    fd = open_regular(p)
    try:
        size = os.fstat(fd).st_size
    finally:
        os.close(fd)
    return Blob(p, 0, size, name)


class Spool:
    """A private directory for decompressed blobs, with one budget for all of them: many small
    bombs cannot fill the disk any more than one large one."""

    def __init__(self, directory: Path, budget: int) -> None:
        self.dir = directory
        self.budget = budget
        self.cap = budget
        self.count = 0


def uncompressed(blob: Blob, files: FileCache, spool: Spool) -> Blob:
    """The blob itself when it is not compressed; else a gzip-decompressed spool copy.

    The spool's budget bounds the decompressed bytes (decompression bombs); zstd is refused by
    name.
    """
    magic = blob.head(files, 4)
    if magic.startswith(ZSTD_MAGIC):
        raise ImageError(
            f"{blob.name}: zstd-compressed layer; not supported here (re-save the image with "
            "gzip or uncompressed layers, e.g. docker save or skopeo copy --dest-compress-format "
            "gzip)"
        )
    if not magic.startswith(GZIP_MAGIC):
        return blob
    fd, path = _spool_file(spool)
    written = 0
    inflater = zlib.decompressobj(wbits=31)
    fed = False  # the current gzip member has had input but not yet ended

    def feed(data: bytes) -> None:
        nonlocal inflater, fed, written
        while True:
            out = inflater.decompress(data, CHUNK)
            fed = fed or bool(data)
            written += len(out)
            if written > spool.budget:
                raise ImageError(
                    f"{blob.name}: decompressed layers exceed the {spool.cap}-byte cap "
                    "(decompression bomb?)"
                )
            _write_all(fd, out)
            if inflater.eof:  # a gzip file may hold several members
                data = inflater.unused_data
                inflater, fed = zlib.decompressobj(wbits=31), False
                if not data:
                    return
                continue
            data = inflater.unconsumed_tail
            if not data and len(out) < CHUNK:
                return

    try:
        pos = 0
        while pos < blob.size:
            chunk = blob.pread(files, min(CHUNK, blob.size - pos), pos)
            pos += len(chunk)
            feed(chunk)
        if fed:
            raise ImageError(f"{blob.name}: gzip stream truncated")
    except zlib.error as exc:
        raise ImageError(f"{blob.name}: corrupt gzip data ({exc})") from None
    finally:
        os.close(fd)
    spool.budget -= written
    return Blob(path, 0, written, blob.name)


def _spool_file(spool: Spool) -> tuple[int, str]:
    spool.count += 1
    path = str(spool.dir / f"blob-{spool.count}")
    return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600), path


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]
