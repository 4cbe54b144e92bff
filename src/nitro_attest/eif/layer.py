"""Apply an OCI layer (an uncompressed tar blob) to the merged root filesystem tree."""

from __future__ import annotations

import stat
from dataclasses import dataclass

from nitro_attest.eif.blobs import Blob, FileCache, ImageError
from nitro_attest.eif.rootfs import WHITEOUT, Inode, RootFs, check_symlink, split_name
from nitro_attest.eif.tar import (
    BLOCKDEV,
    CHAR,
    DIRECTORY,
    FIFO,
    HARDLINK,
    SYMLINK,
    TarMember,
    iter_members,
)

_KINDS = {CHAR: stat.S_IFCHR, BLOCKDEV: stat.S_IFBLK, FIFO: stat.S_IFIFO}


@dataclass(frozen=True, slots=True)
class Limits:
    max_bytes: int = 8 << 30
    """Cap on all decompressed blobs together, and separately on the sum of the layers' file
    sizes."""
    max_entries: int = 1_000_000


@dataclass(slots=True)
class Totals:
    entries: int = 0
    bytes: int = 0
    xattrs: int = 0


def apply_layer(fs: RootFs, blob: Blob, files: FileCache, limits: Limits, totals: Totals) -> None:
    """Whiteouts first (they hide only what lower layers hold), then entries in tar order.

    One read of the headers; the layer's members are kept (metadata only) until its whiteouts
    are known, as the tree keeps them anyway."""
    entries: list[tuple[list[bytes], TarMember]] = []
    for m in iter_members(blob, files, max_members=limits.max_entries):
        parts = split_name(m.name, blob.name)
        if parts and parts[-1].startswith(WHITEOUT):
            fs.whiteout(parts)
            continue
        totals.entries += 1
        totals.bytes += m.size
        totals.xattrs += len(m.xattrs)
        if totals.entries > limits.max_entries:
            raise ImageError(f"{blob.name}: the image has more than {limits.max_entries} entries")
        if totals.bytes > limits.max_bytes:
            raise ImageError(f"{blob.name}: the image holds more than {limits.max_bytes} bytes")
        entries.append((parts, m))
    where = blob.name  # the tree's messages add the path
    for parts, m in entries:
        if m.type == DIRECTORY:
            fs.add_dir(parts, m.mode, m.uid, m.gid, m.mtime, len(m.xattrs), where)
        elif m.type == HARDLINK:
            fs.hardlink(parts, m.linkname, where)
        else:
            fs.add_leaf(parts, _inode(parts, m, blob, where), where)


def _inode(parts: list[bytes], m: TarMember, blob: Blob, where: str) -> Inode:
    inode = Inode(0, m.mode, m.uid, m.gid, m.mtime, xattrs=len(m.xattrs))
    if m.is_regular:
        inode.kind, inode.size, inode.blob, inode.offset = stat.S_IFREG, m.size, blob, m.data_offset
    elif m.type == SYMLINK:
        check_symlink(parts, m.linkname, where)
        inode.kind, inode.size, inode.target = stat.S_IFLNK, len(m.linkname), m.linkname
    else:
        inode.kind, inode.rdev = _KINDS[m.type], (m.devmajor, m.devminor)
    return inode
