"""A plain root filesystem directory as the image: walked with lstat, never following symlinks.

Hard links are recognised by (device, inode). Regular files are opened only when their bytes are
written, with O_NOFOLLOW, and must still have the size seen here. Sockets cannot be carried.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from nitro_attest.eif.blobs import ImageError
from nitro_attest.eif.layer import Limits, Totals
from nitro_attest.eif.rootfs import Dir, Inode, RootFs, check_symlink

_KINDS = (stat.S_IFREG, stat.S_IFLNK, stat.S_IFCHR, stat.S_IFBLK, stat.S_IFIFO)


def _xattrs(path: bytes) -> int:
    try:
        return len(os.listxattr(path, follow_symlinks=False))
    except OSError:
        return 0


def scan_dir(root: Path, limits: Limits, totals: Totals) -> RootFs:
    fs = RootFs()
    st = os.lstat(root)
    fs.root.mode, fs.root.uid, fs.root.gid = stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid
    fs.root.mtime = int(st.st_mtime)
    links: dict[tuple[int, int], Inode] = {}
    base = os.fsencode(root)
    todo: list[tuple[list[bytes], Dir]] = [([], fs.root)]
    while todo:  # iterative: no recursion limit on deep trees
        parts, node = todo.pop()
        _scan(base, parts, node, links, limits, totals, todo)
    return fs


def _scan(
    base: bytes,
    parts: list[bytes],
    node: Dir,
    links: dict[tuple[int, int], Inode],
    limits: Limits,
    totals: Totals,
    todo: list[tuple[list[bytes], Dir]],
) -> None:
    here = os.path.join(base, *parts) if parts else base
    try:
        names = sorted(os.listdir(here))
    except OSError as exc:
        raise ImageError(f"{os.fsdecode(here)}: cannot list: {exc.strerror or exc}") from None
    for name in names:
        path = os.path.join(here, name)
        st = os.lstat(path)
        totals.entries += 1
        if totals.entries > limits.max_entries:
            raise ImageError(f"{os.fsdecode(base)}: more than {limits.max_entries} entries")
        kind = stat.S_IFMT(st.st_mode)
        xattrs = _xattrs(path)
        totals.xattrs += xattrs
        mode, mtime = stat.S_IMODE(st.st_mode), int(st.st_mtime)
        child_parts = [*parts, name]
        if kind == stat.S_IFDIR:
            child = Dir(mode, st.st_uid, st.st_gid, mtime, xattrs=xattrs)
            node.children[name] = child
            todo.append((child_parts, child))
            continue
        if kind not in _KINDS:
            raise ImageError(f"{os.fsdecode(path)}: socket or unknown file type; cannot be imaged")
        key = (st.st_dev, st.st_ino)
        if kind == stat.S_IFREG and st.st_nlink > 1 and key in links:
            node.children[name] = links[key]
            continue
        inode = Inode(kind, mode, st.st_uid, st.st_gid, mtime, xattrs=xattrs)
        if kind == stat.S_IFREG:
            totals.bytes += st.st_size
            if totals.bytes > limits.max_bytes:
                raise ImageError(f"{os.fsdecode(base)}: more than {limits.max_bytes} bytes")
            inode.size, inode.path = st.st_size, os.fsdecode(path)
            if st.st_nlink > 1:
                links[key] = inode
        elif kind == stat.S_IFLNK:
            target = os.readlink(path)
            check_symlink(child_parts, target, os.fsdecode(base))
            inode.size, inode.target = len(target), target
        else:
            inode.rdev = (os.major(st.st_rdev), os.minor(st.st_rdev))
        node.children[name] = inode
