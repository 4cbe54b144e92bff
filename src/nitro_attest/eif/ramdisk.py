"""The two ramdisks of an EIF, as newc cpio streams of known size (docs/eif.md, "Building").

bootstrap: ``dev/`` (0755), ``init`` (0755), ``nsm.ko`` (0755), from nitro-cli's blobs.
customer:  ``cmd``, ``env`` (0644), ``rootfs/`` holding the image, with ``rootfs/{dev,proc,run,
           sys,tmp,var}`` ensured as directories (init mounts or uses them before chroot).

Entries are in byte order, depth first (parents before children). Inode numbers count from 1 in
that order; hard-linked files share one, and only the first of them carries the data. mtimes
are clamped to [0, SOURCE_DATE_EPOCH]; uid/gid and modes are the image's.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass

from nitro_attest.eif.blobs import FileCache, ImageError
from nitro_attest.eif.cpio import HEADER_SIZE, CpioHeader, pad4, trailer
from nitro_attest.eif.rootfs import Dir, Inode, RootFs, display, walk
from nitro_attest.eif.sink import HashingSink
from nitro_attest.eif.writer import Stream

MOUNT_DIRS = (b"dev", b"proc", b"run", b"sys", b"tmp", b"var")
MAX_CPIO_FILE = 0xFFFFFFFF

Content = bytes | Inode | None


@dataclass(frozen=True, slots=True)
class Entry:
    header: CpioHeader
    content: Content


class Ramdisk:
    """A cpio archive described by a replayable entry walk: sized first, then produced."""

    def __init__(self, entries: list[Entry] | None, fs: RootFs | None, epoch: int) -> None:
        self._top = entries or []
        self._fs = fs
        self._epoch = epoch
        self._links: dict[int, int] | None = None

    def entries(self) -> Iterator[Entry]:
        yield from self._top
        if self._fs is not None:
            if self._links is None:
                self._links = _link_counts(self._fs)
            yield from _tree_entries(self._fs, self._epoch, self._links)

    def size(self) -> int:
        """Computed, not packed: ``pack`` checks the fields while the archive is produced."""
        total = len(trailer())
        for e in self.entries():
            h = e.header
            total += _header_size(len(h.name)) + h.size + pad4(h.size)
        return total

    def stream(self, files: FileCache) -> Stream:
        return Stream(self.size(), lambda sink: self._produce(sink, files))

    def _produce(self, sink: HashingSink, files: FileCache) -> None:
        for e in self.entries():
            sink.write(e.header.pack())
            n = e.header.size
            if isinstance(e.content, bytes):
                sink.write(e.content)
            elif isinstance(e.content, Inode) and n:
                _copy(sink, e.content, files, e.header.name, self._fs)
            if pad4(n):
                sink.write(bytes(pad4(n)))
        sink.write(trailer())


def _copy(
    sink: HashingSink, inode: Inode, files: FileCache, name: bytes, fs: RootFs | None
) -> None:
    shown = name.decode("utf-8", "backslashreplace")
    if inode.blob is not None:
        blob = inode.blob
        if inode.offset + inode.size > blob.size:
            raise ImageError(f"{blob.name}: {shown}: data runs past the layer's end")
        try:
            sink.fill(files.fd(blob.path), blob.offset + inode.offset, inode.size, blob.name)
        except OSError as exc:
            raise ImageError(f"{blob.name}: {shown}: {exc}") from None
        return
    host = inode.host
    assert host is not None and fs is not None and fs.host is not None
    fd = fs.host.open_file(host.rel, (host.dev, host.ino), inode.size)
    where = fs.host.where(host.rel.split(b"/"))
    try:
        sink.fill(fd, 0, inode.size, where)
    except OSError as exc:
        raise ImageError(f"{where}: {exc}") from None
    finally:
        os.close(fd)


def clamp(mtime: int, epoch: int) -> int:
    return max(0, min(mtime, epoch))


def regular(name: bytes, data: bytes, mode: int, ino: int) -> Entry:
    """A file the builder makes (uid 0, gid 0, mtime 0)."""
    return Entry(CpioHeader(name, stat.S_IFREG | mode, size=len(data), ino=ino), data)


def directory(name: bytes, mode: int, ino: int) -> Entry:
    return Entry(CpioHeader(name, stat.S_IFDIR | mode, nlink=2, ino=ino), None)


def bootstrap(init: bytes, nsm_ko: bytes) -> Ramdisk:
    """nitro-cli's bootstrap ramfs: dev/ (init mounts devtmpfs on it), init, nsm.ko; mtime 0,
    so PCR1 depends on the blobs only."""
    return Ramdisk(
        [
            directory(b"dev", 0o755, 1),
            regular(b"init", init, 0o755, 2),
            regular(b"nsm.ko", nsm_ko, 0o755, 3),
        ],
        None,
        0,
    )


def lines(values: list[str], what: str) -> bytes:
    for v in values:
        if "\n" in v or "\0" in v:
            raise ImageError(f"{what}: {v[:60]!r} contains a newline or NUL (one entry per line)")
    return "".join(v + "\n" for v in values).encode()


def customer(fs: RootFs, cmd: list[str], env: list[str], epoch: int) -> Ramdisk:
    for name in MOUNT_DIRS:
        node = fs.root.children.get(name)
        if node is None:
            fs.root.children[name] = Dir()
        elif not isinstance(node, Dir):
            raise ImageError(
                f"the image's /{name.decode()} is not a directory; init mounts or uses it "
                "before switching to the image, so it must be one"
            )
    root = fs.root
    top = [
        regular(b"cmd", lines(cmd, "command"), 0o644, 1),
        regular(b"env", lines(env, "environment"), 0o644, 2),
        Entry(
            CpioHeader(
                b"rootfs",
                stat.S_IFDIR | root.mode,
                root.uid,
                root.gid,
                2,
                clamp(root.mtime, epoch),
                ino=3,
            ),
            None,
        ),
    ]
    return Ramdisk(top, fs, epoch)


def _header_size(name_len: int) -> int:
    n = HEADER_SIZE + name_len + 1
    return n + pad4(n)


def _link_counts(fs: RootFs) -> dict[int, int]:
    """Names per regular-file inode (only those with more than one)."""
    counts: dict[int, int] = {}
    for _, node in walk(fs.root):
        if isinstance(node, Inode) and node.file_type == stat.S_IFREG:
            counts[id(node)] = counts.get(id(node), 0) + 1
    return {k: v for k, v in counts.items() if v > 1}


def _tree_entries(fs: RootFs, epoch: int, links: dict[int, int]) -> Iterator[Entry]:
    seen: dict[int, int] = {}
    ino = 3  # cmd, env, rootfs
    for path, node in walk(fs.root):
        name = b"rootfs/" + b"/".join(path)
        ino += 1
        if isinstance(node, Dir):
            yield Entry(
                CpioHeader(
                    name,
                    stat.S_IFDIR | node.mode,
                    node.uid,
                    node.gid,
                    2,
                    clamp(node.mtime, epoch),
                    ino=ino,
                ),
                None,
            )
            continue
        nlink = links.get(id(node), 1)
        first = seen.get(id(node))
        if first is not None:  # a further name of a hard-linked file: same inode, no data
            yield Entry(_leaf_header(name, node, nlink, first, epoch, 0), None)
            continue
        if nlink > 1:
            seen[id(node)] = ino
        if node.file_type == stat.S_IFREG and node.size > MAX_CPIO_FILE:
            raise ImageError(f"/{display(list(path))}: {node.size} bytes; newc cpio holds < 4 GiB")
        if node.file_type == stat.S_IFLNK:
            yield Entry(_leaf_header(name, node, 1, ino, epoch, len(node.target)), node.target)
        elif node.file_type == stat.S_IFREG:
            yield Entry(_leaf_header(name, node, nlink, ino, epoch, node.size), node)
        else:
            yield Entry(_leaf_header(name, node, 1, ino, epoch, 0), None)


def _leaf_header(
    name: bytes, node: Inode, nlink: int, ino: int, epoch: int, size: int
) -> CpioHeader:
    return CpioHeader(
        name,
        node.file_type | node.mode,
        node.uid,
        node.gid,
        nlink,
        clamp(node.mtime, epoch),
        size,
        ino,
        node.rdev[0],
        node.rdev[1],
    )
