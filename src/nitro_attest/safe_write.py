"""Writing an output file into a folder that someone else may reach: never through their links.

``attest --out-dir``, ``sim measurements --write-expected``, ``sim attest --out`` and
``eif measure --write-expected`` write where the user says, and the folder may be shared (a
checkout on a team host, /tmp). Opening ``folder/name`` for writing would follow a link another
user planted there, and overwrite whatever it points at with our privileges. So:

- the folder is opened once and judged on that descriptor: it must belong to us (or to root), and
  if other users may write in it, it must carry the sticky bit (as /tmp does), so no one else can
  rename or delete what we put there; otherwise ``UnsafeFolderError``. Group write counts as
  other users unless the group is our own private group (the user-private-group convention:
  same name as the user, our primary group, no other listed member), which umask 002 gives
  every folder on many distributions;
- the data goes to a fresh temporary name in that folder (``O_CREAT|O_EXCL|O_NOFOLLOW``: never an
  existing file, never a link), is flushed to disk, gets its mode, and is renamed over the final
  name. A rename replaces a planted link itself, never its target; readers never see half a file.

The path given by the user is followed as given up to the folder (their choice); only the folder
itself is judged. I/O failures are OSError, as from ``open``.
"""

from __future__ import annotations

import contextlib
import grp
import os
import pwd
import secrets
import stat
from pathlib import Path

from nitro_attest.errors import ConfigurationError

__all__ = ["UnsafeFolderError", "write_file"]


class UnsafeFolderError(ConfigurationError):
    """The folder to write in belongs to another user, or others may replace files in it."""


def check_folder(fd: int, folder: Path) -> None:
    """Refuse a folder another user controls (see the module docstring)."""
    st = os.fstat(fd)
    me = os.geteuid()
    if st.st_uid not in (me, 0):
        raise UnsafeFolderError(
            f"{folder}: belongs to another user (uid {st.st_uid}); they could replace what is "
            "written there: choose a folder of your own"
        )
    if st.st_mode & stat.S_ISVTX:
        return
    if st.st_mode & stat.S_IWOTH or (st.st_mode & stat.S_IWGRP and not _private_group(st.st_gid)):
        raise UnsafeFolderError(
            f"{folder}: others may write in it (mode {stat.S_IMODE(st.st_mode):04o}, no sticky "
            "bit), so they could replace what is written there: choose a folder of your own"
        )


def _private_group(gid: int) -> bool:
    """True when ``gid`` is the effective user's own private group (no one else's to write)."""
    try:
        user = pwd.getpwuid(os.geteuid())
        group = grp.getgrgid(gid)
    except KeyError:
        return False
    return (
        gid == user.pw_gid
        and group.gr_name == user.pw_name
        and all(member == user.pw_name for member in group.gr_mem)
    )


def write_file(path: str | os.PathLike[str], data: bytes, *, mode: int = 0o644) -> Path:
    """Write ``data`` to ``path`` safely (module docstring); return the path written."""
    target = Path(path)
    folder = target.parent
    name = target.name
    if not name or name in (".", ".."):
        raise IsADirectoryError(21, "not a file name", str(target))
    dir_fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        check_folder(dir_fd, folder)
        tmp = f".{name}.{secrets.token_hex(6)}.tmp"
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        fd = os.open(tmp, flags, 0o600, dir_fd=dir_fd)
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fchmod(fh.fileno(), mode)  # whatever the umask, and before it is visible
                os.fsync(fh.fileno())
            os.replace(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp, dir_fd=dir_fd)
            raise
        with contextlib.suppress(OSError):  # some filesystems cannot sync a folder
            os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
    return target
