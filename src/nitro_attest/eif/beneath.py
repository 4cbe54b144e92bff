"""Opening image-controlled paths beneath a folder without ever leaving it through a symlink.

Every component is opened relative to the descriptor of the folder checked before it, with
O_NOFOLLOW (folders also O_DIRECTORY), so a link planted or swapped in anywhere is seen, never
followed by the kernel. What is then read is read through the descriptor that was checked, never
reopened by name.

Two policies: an image folder (docker save, OCI layout) may hold relative links that stay inside
it (docker save before 25 writes a repeated layer as ``B/layer.tar -> ../A/layer.tar``); they are
resolved lexically here, each hop again beneath the root, and an absolute or climbing target is
refused. A rootfs folder's own links are image content and are never followed at all.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Iterator
from contextlib import contextmanager

from nitro_attest.eif.blobs import ImageError, regular_fd

DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
FILE_FLAGS = os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC
MAX_HOPS = 8


def open_root(path: str | os.PathLike[str]) -> int:
    """The folder the user named (a link there is the user's choice, so it is followed)."""
    try:
        return os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as exc:
        raise ImageError(f"{os.fsdecode(path)}: cannot open: {exc.strerror or exc}") from None


def _shown(parts: list[bytes] | tuple[bytes, ...]) -> str:
    return "/".join(p.decode("utf-8", "backslashreplace") for p in parts)


def _is_link(dir_fd: int, name: bytes) -> bool:
    try:
        return stat.S_ISLNK(os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_mode)
    except OSError:
        return False


def _open_at(dir_fd: int, name: bytes, flags: int, where: str) -> int | None:
    """One component, never followed; None when it is a symlink."""
    try:
        return os.open(name, flags, dir_fd=dir_fd)
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENOTDIR, errno.EMLINK) and _is_link(dir_fd, name):
            return None
        if isinstance(exc, FileNotFoundError):
            raise ImageError(f"{where}: no such file") from None
        raise ImageError(f"{where}: cannot open: {exc.strerror or exc}") from None


def open_in_image(root_fd: int, root_name: str, parts: list[bytes]) -> tuple[int, str]:
    """A regular file at ``parts`` beneath the image folder: its descriptor and its resolved
    relative name. Links inside the folder are followed lexically (at most MAX_HOPS), never by
    the kernel; a link that is absolute or climbs above the folder is refused."""
    hops = 0
    while True:
        opened: list[int] = []
        cur = root_fd
        try:
            for i, comp in enumerate(parts):
                last = i == len(parts) - 1
                where = f"{root_name}/{_shown(parts[: i + 1])}"
                fd = _open_at(cur, comp, FILE_FLAGS if last else DIR_FLAGS, where)
                if fd is None:
                    try:
                        target = os.readlink(comp, dir_fd=cur)
                    except OSError as exc:  # swapped again since: refuse, do not guess
                        raise ImageError(f"{where}: {exc.strerror or exc}") from None
                    hops += 1
                    parts = _inside(parts[:i], target, parts[i + 1 :], where, hops)
                    break
                if last:
                    return regular_fd(fd, where), _shown(parts)
                opened.append(fd)
                cur = fd
            else:
                raise ImageError(f"{root_name}: an empty name is not a file")
        finally:
            for fd in opened:
                os.close(fd)


def _inside(
    base: list[bytes], target: bytes, rest: list[bytes], where: str, hops: int
) -> list[bytes]:
    shown = target[:120].decode("utf-8", "backslashreplace")
    if hops > MAX_HOPS:
        raise ImageError(f"{where}: more than {MAX_HOPS} symlinks in a row")
    if target.startswith(b"/") or not target:
        raise ImageError(f"{where}: symlink to {shown!r} leads out of the image folder")
    out = list(base)
    for comp in target.split(b"/"):
        if comp == b"..":
            if not out:
                raise ImageError(f"{where}: symlink to {shown!r} climbs out of the image folder")
            out.pop()
        elif comp not in (b"", b"."):
            out.append(comp)
    return out + rest


MAX_CHAIN = 128
"""Folders kept open along the current path; deeper ones are opened for one use each."""


class DirChain:
    """Opens a rootfs folder's entries by their path below the root, each folder O_NOFOLLOW |
    O_DIRECTORY from the one before, and checks each is the inode the walk saw. Keeps the chain
    of the last path's folders open: the walk and the writer go in tree order, so neighbours
    share it and most folders are opened once."""

    def __init__(self, root_fd: int, root_name: str) -> None:
        self.root_fd = root_fd
        self.root_name = root_name
        self._chain: list[tuple[bytes, int]] = []

    def where(self, parts: list[bytes] | tuple[bytes, ...]) -> str:
        return f"{self.root_name}/{_shown(parts)}" if parts else self.root_name

    def _folder(self, dirs: list[bytes], where: str) -> tuple[int, bool]:
        """The folder at ``dirs`` and whether the caller must close it (past MAX_CHAIN)."""
        keep = 0
        limit = min(len(self._chain), len(dirs))
        while keep < limit and self._chain[keep][0] == dirs[keep]:
            keep += 1
        for _, fd in self._chain[keep:]:
            os.close(fd)
        del self._chain[keep:]
        for comp in dirs[keep:MAX_CHAIN]:
            self._chain.append((comp, self._step(self._top(), comp, where)))
        cur, own = self._top(), False
        for comp in dirs[MAX_CHAIN:]:
            nxt = self._step(cur, comp, where)
            if own:
                os.close(cur)
            cur, own = nxt, True
        return cur, own

    def _top(self) -> int:
        return self._chain[-1][1] if self._chain else self.root_fd

    @staticmethod
    def _step(cur: int, comp: bytes, where: str) -> int:
        fd = _open_at(cur, comp, DIR_FLAGS, where)
        if fd is None:
            raise ImageError(
                f"{where}: a folder on its path is now a symlink (changed during the build)"
            )
        return fd

    @contextmanager
    def folder(self, parts: list[bytes], ident: tuple[int, int]) -> Iterator[int]:
        """The folder at ``parts`` (root: []), which must still be inode ``ident``."""
        where = self.where(parts)
        fd, own = self._folder(parts, where)
        try:
            st = os.fstat(fd)
            if (st.st_dev, st.st_ino) != ident:
                raise ImageError(f"{where}: changed during the build (not the folder seen)")
            yield fd
        finally:
            if own:
                os.close(fd)

    def open_file(self, rel: bytes, ident: tuple[int, int], size: int) -> int:
        """The regular file at ``rel`` (b"a/b/c"); it must be the inode (dev, ino) the walk saw,
        with the size it saw, else the folder changed under the build and it is refused."""
        parts = rel.split(b"/")
        where = self.where(parts)
        cur, own = self._folder(parts[:-1], where)
        try:
            fd = _open_at(cur, parts[-1], FILE_FLAGS, where)
        finally:
            if own:
                os.close(cur)
        if fd is None:
            raise ImageError(f"{where}: is now a symlink (changed during the build)")
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or (st.st_dev, st.st_ino) != ident or st.st_size != size:
            os.close(fd)
            raise ImageError(f"{where}: changed during the build (not the file the walk saw)")
        return fd

    def close(self) -> None:
        for _, fd in self._chain:
            os.close(fd)
        self._chain.clear()
