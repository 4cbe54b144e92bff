"""The image's root filesystem as a tree of metadata, built by applying OCI layers in order.

Nothing is extracted: regular files point at their bytes inside a layer blob (or a file of a rootfs
directory), so the tree costs memory per entry, never per byte. OCI layer semantics
(image-spec layer.md): ``.wh.NAME`` removes NAME from the layers below, ``.wh..wh..opq`` empties
its directory of what the layers below put there, a non-directory replaces whatever was at its
path (a whole subtree included), a directory over a directory only updates its metadata, and a
hard link shares the inode of the file it names.

Security (the layers are untrusted): member names with ``..`` are refused, nothing is ever placed
below a symlink or any other non-directory (the kernel would follow it while unpacking), hard links
must name a non-directory already in the image, symlink targets must not climb above the root.
"""

from __future__ import annotations

import re
import stat
from collections.abc import Iterator
from dataclasses import dataclass, field

from nitro_attest.eif.beneath import DirChain
from nitro_attest.eif.blobs import Blob, ImageError

WHITEOUT = b".wh."
OPAQUE = b".wh..wh..opq"
MAX_COMPONENT = 255
_LONG_COMPONENT = re.compile(rb"[^/]{%d}" % (MAX_COMPONENT + 1))


@dataclass(frozen=True, slots=True)
class HostFile:
    """A regular file of a rootfs folder: its path below the folder and the inode seen there."""

    rel: bytes
    dev: int
    ino: int


@dataclass(slots=True, eq=False)
class Inode:
    """One file's metadata and where its bytes are; hard links share one Inode."""

    file_type: int
    """stat.S_IFREG, S_IFLNK, S_IFCHR, S_IFBLK or S_IFIFO."""
    mode: int
    """Permission bits including setuid, setgid and sticky (0o7777)."""
    uid: int
    gid: int
    mtime: int
    size: int = 0
    blob: Blob | None = None
    """Regular files from a layer: the uncompressed layer and the data offset in it."""
    offset: int = 0
    host: HostFile | None = None
    """Regular files from a rootfs directory: where the walk saw it."""
    target: bytes = b""
    """Symlink target."""
    rdev: tuple[int, int] = (0, 0)
    xattrs: int = 0
    """How many extended attributes the image gave (newc cpio cannot carry them)."""


@dataclass(slots=True, eq=False)
class Dir:
    mode: int = 0o755
    uid: int = 0
    gid: int = 0
    mtime: int = 0
    children: dict[bytes, Node] = field(default_factory=dict)
    xattrs: int = 0


Node = Dir | Inode


def split_name(raw: bytes, where: str) -> list[bytes]:
    """Member name -> path components. Leading '/' and './' are dropped (tar and Docker join
    names under the root); '..' anywhere is refused."""
    if b"\0" in raw:
        raise ImageError(f"{where}: NUL byte in path {raw[:80]!r}")
    # substring searches first (C speed): a 4 KiB name may have 2,048 components
    parts = raw.split(b"/")
    if b"//" in raw or b"." in raw or raw.startswith(b"/") or raw.endswith(b"/"):
        parts = [p for p in parts if p not in (b"", b".")]
        if b".." in parts:
            raise ImageError(f"{where}: path escape: {raw[:120]!r} contains '..'")
    if len(raw) > MAX_COMPONENT and _LONG_COMPONENT.search(raw):
        raise ImageError(f"{where}: path component longer than {MAX_COMPONENT} bytes")
    return parts


def check_symlink(parts: list[bytes], target: bytes, where: str) -> None:
    """Refuse empty targets and targets that climb above the image root when resolved
    lexically from the link's directory (absolute targets from the root)."""
    if not target or b"\0" in target:
        raise ImageError(f"{where}: {display(parts)}: empty or NUL-containing symlink target")
    depth = 0 if target.startswith(b"/") else len(parts) - 1
    for comp in target.split(b"/"):
        if comp == b"..":
            depth -= 1
            if depth < 0:
                shown = b"/".join(parts).decode("utf-8", "replace")
                raise ImageError(
                    f"{where}: path escape: symlink {shown} -> "
                    f"{target[:120].decode('utf-8', 'replace')} climbs above the image root"
                )
        elif comp not in (b"", b"."):
            depth += 1


def display(parts: list[bytes] | tuple[bytes, ...]) -> str:
    return "/".join(p.decode("utf-8", "backslashreplace") for p in parts) or "/"


class RootFs:
    """The merged tree. ``root`` is the image's '/', emitted as ``rootfs/``.

    A layer's whiteouts are applied before its entries (they only ever hide what the layers below
    hold), so the result does not depend on where a whiteout sits in the layer's tar.
    """

    def __init__(self, host: DirChain | None = None) -> None:
        self.root = Dir()
        self.host = host
        """A rootfs folder SOURCE: how its files are opened again to be written."""
        self._last: tuple[list[bytes], Dir] | None = None
        """The folder the last entry went into: tars list a folder's entries together, so
        most entries skip the walk from the root. Dropped whenever a folder may leave the
        tree."""

    def _parent(self, parts: list[bytes], where: str) -> Dir:
        dirs = parts[:-1]
        if self._last is not None and self._last[0] == dirs:
            return self._last[1]
        node: Dir = self.root
        for i, comp in enumerate(parts[:-1]):
            child = node.children.get(comp)
            if child is None:
                child = Dir()  # implicit parent, as Docker creates it: 0755, root, mtime 0
                node.children[comp] = child
            if not isinstance(child, Dir):
                raise ImageError(
                    f"{where}: {display(parts)}: parent {display(parts[: i + 1])} is a "
                    f"{_file_type_name(child.file_type)}, not a directory "
                    "(refusing to write through it)"
                )
            node = child
        self._last = (dirs, node)
        return node

    def lookup(self, parts: list[bytes]) -> Node | None:
        """The node at ``parts`` without following symlinks; None if any component is missing
        or not a directory."""
        node: Node = self.root
        for comp in parts:
            if not isinstance(node, Dir):
                return None
            found = node.children.get(comp)
            if found is None:
                return None
            node = found
        return node

    def whiteout(self, parts: list[bytes]) -> None:
        """``parts`` is the whiteout member's own path (.../.wh.NAME or .../.wh..wh..opq)."""
        name = parts[-1]
        self._last = None
        parent = self.lookup(parts[:-1])
        if not isinstance(parent, Dir):
            return  # nothing below to hide
        if name == OPAQUE:
            parent.children.clear()
        elif not name.startswith(WHITEOUT + WHITEOUT):  # AUFS bookkeeping: .wh..wh.plnk, ...
            parent.children.pop(name[len(WHITEOUT) :], None)

    def add_dir(
        self, parts: list[bytes], mode: int, uid: int, gid: int, mtime: int, xattrs: int, where: str
    ) -> None:
        if not parts:
            d = self.root
        else:
            parent = self._parent(parts, where)
            existing = parent.children.get(parts[-1])
            if isinstance(existing, Dir):
                d = existing  # a directory over a directory keeps its contents
            else:
                d = Dir()
                parent.children[parts[-1]] = d
        d.mode, d.uid, d.gid, d.mtime, d.xattrs = mode & 0o7777, uid, gid, mtime, xattrs

    def add_leaf(self, parts: list[bytes], inode: Inode, where: str) -> None:
        if not parts:
            raise ImageError(f"{where}: the image root must be a directory")
        parent = self._parent(parts, where)
        if isinstance(parent.children.get(parts[-1]), Dir):
            self._last = None  # a subtree leaves the tree
        parent.children[parts[-1]] = inode  # replaces a file or a subtree

    def hardlink(self, parts: list[bytes], target: bytes, where: str) -> None:
        target_parts = split_name(target, where)
        node = self.lookup(target_parts)
        if node is None:
            raise ImageError(
                f"{where}: hard link {display(parts)} -> {display(target_parts)}: "
                "target is not in the image"
            )
        if isinstance(node, Dir):
            raise ImageError(f"{where}: hard link {display(parts)} names a directory")
        self.add_leaf(parts, node, where)

    def count(self) -> int:
        return sum(1 for _ in walk(self.root))


def walk(d: Dir) -> Iterator[tuple[tuple[bytes, ...], Node]]:
    """Depth first, children in byte order: the cpio order (parents before children).

    Iterative: a hostile layer may nest thousands of directories (4096-byte names allow 2048)."""
    stack: list[tuple[tuple[bytes, ...], Dir, list[bytes]]] = [
        ((), d, sorted(d.children, reverse=True))
    ]
    while stack:
        prefix, node, names = stack[-1]
        if not names:
            stack.pop()
            continue
        name = names.pop()
        child = node.children[name]
        path = (*prefix, name)
        yield path, child
        if isinstance(child, Dir):
            stack.append((path, child, sorted(child.children, reverse=True)))


def _file_type_name(file_type: int) -> str:
    return {
        stat.S_IFLNK: "symlink",
        stat.S_IFREG: "regular file",
        stat.S_IFCHR: "character device",
        stat.S_IFBLK: "block device",
        stat.S_IFIFO: "FIFO",
    }.get(file_type, "non-directory")
