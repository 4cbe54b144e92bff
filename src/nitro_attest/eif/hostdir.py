"""A plain root filesystem directory as the image, walked through directory descriptors.

Each folder is opened O_NOFOLLOW|O_DIRECTORY from the descriptor of its parent and must be the
inode its parent's listing showed; its entries are stat'ed, their links read and their xattrs
counted relative to that descriptor, so a folder swapped for a symlink during the walk is refused,
never followed. Regular files are opened again only when their bytes are written, the same way,
and must still be the inode and size seen here (eif/beneath.py). Hard links are recognised by
(device, inode). Sockets cannot be carried.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from nitro_attest.eif.beneath import DirChain, open_root
from nitro_attest.eif.blobs import FileCache, ImageError
from nitro_attest.eif.layer import Limits, Totals
from nitro_attest.eif.rootfs import Dir, HostFile, Inode, RootFs, check_symlink

_FILE_TYPES = (stat.S_IFREG, stat.S_IFLNK, stat.S_IFCHR, stat.S_IFBLK, stat.S_IFIFO)


def _xattrs(dir_fd: int, name: bytes) -> int:
    # listxattr has no dir_fd form; /proc/self/fd/N is the folder checked, name is not followed
    try:
        return len(os.listxattr(b"/proc/self/fd/%d/%s" % (dir_fd, name), follow_symlinks=False))
    except OSError:
        return 0


def scan_dir(root: Path, limits: Limits, totals: Totals, files: FileCache) -> RootFs:
    root_fd = files.keep(open_root(root))
    chain = DirChain(root_fd, str(root))
    files.on_close(chain.close)
    fs = RootFs(chain)
    st = os.fstat(root_fd)
    fs.root.mode, fs.root.uid, fs.root.gid = stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid
    fs.root.mtime = int(st.st_mtime)
    links: dict[tuple[int, int], Inode] = {}
    todo: list[tuple[list[bytes], Dir, tuple[int, int]]] = [([], fs.root, (st.st_dev, st.st_ino))]
    while todo:  # iterative: no recursion limit on deep trees
        parts, node, ident = todo.pop()
        with chain.folder(parts, ident) as fd:
            _scan(chain, fd, parts, node, links, limits, totals, todo)
    return fs


def _scan(
    chain: DirChain,
    fd: int,
    parts: list[bytes],
    node: Dir,
    links: dict[tuple[int, int], Inode],
    limits: Limits,
    totals: Totals,
    todo: list[tuple[list[bytes], Dir, tuple[int, int]]],
) -> None:
    try:
        with os.scandir(fd) as it:
            names = sorted(os.fsencode(e.name) for e in it)
    except OSError as exc:
        raise ImageError(f"{chain.where(parts)}: cannot list: {exc.strerror or exc}") from None
    subdirs: list[tuple[list[bytes], Dir, tuple[int, int]]] = []
    for name in names:
        child_parts = [*parts, name]
        try:
            st = os.stat(name, dir_fd=fd, follow_symlinks=False)
        except OSError as exc:
            raise ImageError(f"{chain.where(child_parts)}: {exc.strerror or exc}") from None
        totals.entries += 1
        if totals.entries > limits.max_entries:
            raise ImageError(f"{chain.root_name}: more than {limits.max_entries} entries")
        file_type = stat.S_IFMT(st.st_mode)
        xattrs = _xattrs(fd, name)
        totals.xattrs += xattrs
        mode, mtime = stat.S_IMODE(st.st_mode), int(st.st_mtime)
        if file_type == stat.S_IFDIR:
            child = Dir(mode, st.st_uid, st.st_gid, mtime, xattrs=xattrs)
            node.children[name] = child
            subdirs.append((child_parts, child, (st.st_dev, st.st_ino)))
            continue
        if file_type not in _FILE_TYPES:
            where = chain.where(child_parts)
            raise ImageError(f"{where}: socket or unknown file type; cannot be imaged")
        key = (st.st_dev, st.st_ino)
        if file_type == stat.S_IFREG and st.st_nlink > 1 and key in links:
            node.children[name] = links[key]
            continue
        inode = Inode(file_type, mode, st.st_uid, st.st_gid, mtime, xattrs=xattrs)
        if file_type == stat.S_IFREG:
            totals.bytes += st.st_size
            if totals.bytes > limits.max_bytes:
                raise ImageError(f"{chain.root_name}: more than {limits.max_bytes} bytes")
            inode.size, inode.host = st.st_size, HostFile(b"/".join(child_parts), *key)
            if st.st_nlink > 1:
                links[key] = inode
        elif file_type == stat.S_IFLNK:
            target = os.readlink(name, dir_fd=fd)
            check_symlink(child_parts, target, chain.root_name)
            inode.size, inode.target = len(target), target
        else:
            inode.rdev = (os.major(st.st_rdev), os.minor(st.st_rdev))
        node.children[name] = inode
    todo.extend(reversed(subdirs))  # popped in name order: the chain of open folders is reused
