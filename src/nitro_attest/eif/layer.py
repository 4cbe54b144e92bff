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
    HeaderBudget,
    TarMember,
    iter_members,
)

_DEVICE_TYPES = {CHAR: stat.S_IFCHR, BLOCKDEV: stat.S_IFBLK, FIFO: stat.S_IFIFO}


@dataclass(frozen=True, slots=True)
class Limits:
    max_bytes: int = 8 << 30
    """Cap on all decompressed blobs together, and separately on the sum of the layers' file
    sizes."""
    max_entries: int = 1_000_000
    """Members of all layers together, whiteouts included (and a rootfs folder's entries)."""
    max_headers: int = 4_000_000
    """Tar header blocks read in all: extended headers, the outer tar's, second reads."""
    max_components: int = 64_000_000
    """Path components of all member names together: placing a member walks its path."""


@dataclass(slots=True)
class Totals:
    entries: int = 0
    bytes: int = 0
    xattrs: int = 0
    components: int = 0
    headers: HeaderBudget | None = None

    def budget(self, limits: Limits) -> HeaderBudget:
        if self.headers is None:
            self.headers = HeaderBudget(limits.max_headers)
        return self.headers


KEEP_BUDGET = 16 << 20
"""Bytes (estimated) of one layer's members held while its whiteouts are not all known. Past it
the members are dropped and the layer's headers are read a second time, so memory stays bounded
by the tree, whatever the layer's names cost."""


def _kept_cost(m: TarMember, parts: list[bytes]) -> int:
    """A generous estimate of a kept member: the object, its name and link, the split path
    (a list slot and a bytes object per component) and its xattrs."""
    xattrs = sum(len(k) + len(v) + 100 for k, v in m.xattrs.items())
    return 400 + 2 * len(m.name) + len(m.linkname) + 48 * len(parts) + xattrs


def apply_layer(fs: RootFs, blob: Blob, files: FileCache, limits: Limits, totals: Totals) -> None:
    """Whiteouts first (they hide only what lower layers hold), then entries in tar order.

    The first read of the headers applies the whiteouts and keeps the entries (metadata only)
    up to KEEP_BUDGET; a layer past it is read a second time to apply its entries as they come."""
    budget = totals.budget(limits)
    kept: list[tuple[list[bytes], TarMember]] | None = []
    cost = 0
    for m in iter_members(blob, files, max_members=limits.max_entries, budget=budget):
        totals.entries += 1
        if totals.entries > limits.max_entries:
            raise ImageError(f"{blob.name}: the image has more than {limits.max_entries} entries")
        parts = split_name(m.name, blob.name)
        totals.components += len(parts)
        if totals.components > limits.max_components:
            raise ImageError(
                f"{blob.name}: member names hold more than {limits.max_components} path "
                "components in all (work bound)"
            )
        if parts and parts[-1].startswith(WHITEOUT):
            fs.whiteout(parts)
            continue
        totals.bytes += m.size
        totals.xattrs += len(m.xattrs)
        if totals.bytes > limits.max_bytes:
            raise ImageError(f"{blob.name}: the image holds more than {limits.max_bytes} bytes")
        if kept is not None:
            cost += _kept_cost(m, parts)
            kept.append((parts, m))
            if cost > KEEP_BUDGET:
                kept = None  # read again below
    if kept is not None:
        for parts, m in kept:
            _apply(fs, parts, m, blob)
        return
    for m in iter_members(blob, files, max_members=limits.max_entries, budget=budget):
        parts = split_name(m.name, blob.name)
        if not (parts and parts[-1].startswith(WHITEOUT)):
            _apply(fs, parts, m, blob)


def _apply(fs: RootFs, parts: list[bytes], m: TarMember, blob: Blob) -> None:
    where = blob.name  # the tree's messages add the path
    if m.type == DIRECTORY:
        fs.add_dir(parts, m.mode, m.uid, m.gid, m.mtime, len(m.xattrs), where)
    elif m.type == HARDLINK:
        fs.hardlink(parts, m.linkname, where)
    else:
        fs.add_leaf(parts, _inode(parts, m, blob, where), where)


def _inode(parts: list[bytes], m: TarMember, blob: Blob, where: str) -> Inode:
    inode = Inode(0, m.mode, m.uid, m.gid, m.mtime, xattrs=len(m.xattrs))
    if m.is_regular:
        inode.file_type, inode.size = stat.S_IFREG, m.size
        inode.blob, inode.offset = blob, m.data_offset
    elif m.type == SYMLINK:
        check_symlink(parts, m.linkname, where)
        inode.file_type, inode.size, inode.target = stat.S_IFLNK, len(m.linkname), m.linkname
    else:
        inode.file_type, inode.rdev = _DEVICE_TYPES[m.type], (m.devmajor, m.devminor)
    return inode
