"""Random-access views of the image's bytes: a file, or a byte range inside a file (a member of an
outer tar). Compressed blobs are decompressed once into a private spool file, with a size cap, so
that every later read is a positioned read and nothing is held in memory."""

from __future__ import annotations

import os
import stat
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from nitro_attest.eif.format import EifError

GZIP_MAGIC = b"\x1f\x8b"
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
CHUNK = 1 << 20


class ImageError(EifError):
    """The image source is unusable or hostile. The message is one line."""


class FileCache:
    """Open file descriptors by name, closed together (a build reads many blobs of few files).

    A blob's file is opened once, when the blob is made, under the checks of whoever made it
    (image folder: beneath its root; spool: created here), and every later read goes through that
    descriptor: nothing is reopened by name, so a name swapped afterwards changes nothing."""

    def __init__(self) -> None:
        self._fds: dict[str, int] = {}
        self._others: list[int] = []
        self._closers: list[Callable[[], None]] = []

    def fd(self, path: str) -> int:
        fd = self._fds.get(path)
        if fd is None:
            fd = open_regular(path)
            self._fds[path] = fd
        return fd

    def adopt(self, path: str, fd: int) -> None:
        """Read ``path`` through ``fd`` from now on (the first descriptor for a name stays)."""
        if path in self._fds:
            os.close(fd)
        else:
            self._fds[path] = fd

    def keep(self, fd: int) -> int:
        """Close ``fd`` (e.g. a folder's) with the others."""
        self._others.append(fd)
        return fd

    def on_close(self, closer: Callable[[], None]) -> None:
        self._closers.append(closer)

    def close(self) -> None:
        for closer in self._closers:
            closer()
        self._closers.clear()
        for fd in [*self._fds.values(), *self._others]:
            os.close(fd)
        self._fds.clear()
        self._others.clear()


def open_regular(path: str, *, follow: bool = False) -> int:
    """Open a regular file, never a FIFO or device; a final symlink only when ``follow``."""
    flags = os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | (0 if follow else os.O_NOFOLLOW)
    try:
        fd = os.open(path, flags)
    except FileNotFoundError:
        raise ImageError(f"{path}: no such file") from None
    except OSError as exc:
        raise ImageError(f"{path}: cannot open: {exc.strerror or exc}") from None
    return regular_fd(fd, path)


def regular_fd(fd: int, where: str) -> int:
    """``fd`` if it is a regular file; else it is closed and refused."""
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise ImageError(f"{where}: not a regular file")
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


def whole_file(path: str | os.PathLike[str], name: str, files: FileCache) -> Blob:
    """A whole file, opened now (no final symlink) and read through that descriptor."""
    p = os.fspath(path)
    return Blob(p, 0, os.fstat(files.fd(p)).st_size, name)


def opened_file(fd: int, path: str, name: str, files: FileCache) -> Blob:
    """A whole file already opened under the caller's checks, read through ``fd``."""
    files.adopt(path, fd)
    return Blob(path, 0, os.fstat(files.fd(path)).st_size, name)


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
    fd, path = _spool_file(spool, files)
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
    spool.budget -= written
    return Blob(path, 0, written, blob.name)


def _spool_file(spool: Spool, files: FileCache) -> tuple[int, str]:
    """A new 0600 file in the private spool folder, later read through the same descriptor."""
    spool.count += 1
    path = str(spool.dir / f"blob-{spool.count}")
    flags = os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    fd = os.open(path, flags, 0o600)
    files.adopt(path, fd)
    return fd, path


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]
