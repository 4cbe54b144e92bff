"""The emulator's state folder: keys, their policies and aliases, persisted across restarts.

One JSON file (``state.json``, 0600) in a folder of mode 0700, rewritten atomically (temporary
file, fsync, rename, fsync of the folder) after every change, so a crash leaves the old or the
new state, never half of one. An exclusive ``flock`` on ``.lock``, held for the emulator's
lifetime, refuses a second emulator on the same folder: two writers would lose each other's keys.
Key material is stored unencrypted: the emulator is a test double, not a vault (docs/kms.md).
"""

from __future__ import annotations

import base64
import errno
import fcntl
import json
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nitro_attest.errors import ConfigurationError
from nitro_attest.safe_write import write_file

STATE_FILE = "state.json"
LOCK_FILE = ".lock"
FORMAT = 1
MAX_STATE_BYTES = 64 * 1024 * 1024


class StateError(ConfigurationError):
    """The state folder is unusable: wrong mode, locked by another emulator, unreadable."""


@dataclass(slots=True)
class KeyRecord:
    key_id: str
    account: str
    region: str
    created: float
    description: str
    key_spec: str  # SYMMETRIC_DEFAULT | ECC_NIST_P256
    key_usage: str  # ENCRYPT_DECRYPT | KEY_AGREEMENT
    policy: str
    material: bytes  # AES-256 key, or the ECC private key (PKCS#8 DER)

    @property
    def arn(self) -> str:
        return f"arn:aws:kms:{self.region}:{self.account}:key/{self.key_id}"

    def to_json(self) -> dict[str, Any]:
        return {
            "key_id": self.key_id,
            "account": self.account,
            "region": self.region,
            "created": self.created,
            "description": self.description,
            "key_spec": self.key_spec,
            "key_usage": self.key_usage,
            "policy": self.policy,
            "material": base64.b64encode(self.material).decode(),
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> KeyRecord:
        return cls(
            key_id=str(data["key_id"]),
            account=str(data["account"]),
            region=str(data["region"]),
            created=float(data["created"]),
            description=str(data["description"]),
            key_spec=str(data["key_spec"]),
            key_usage=str(data["key_usage"]),
            policy=str(data["policy"]),
            material=base64.b64decode(data["material"], validate=True),
        )


@dataclass(slots=True)
class AliasRecord:
    name: str  # alias/...
    account: str
    region: str
    target: str  # key id
    created: float

    @property
    def arn(self) -> str:
        return f"arn:aws:kms:{self.region}:{self.account}:{self.name}"


@dataclass(slots=True)
class State:
    keys: dict[str, KeyRecord] = field(default_factory=dict)
    aliases: dict[tuple[str, str, str], AliasRecord] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "keys": [k.to_json() for k in self.keys.values()],
            "aliases": [
                {
                    "name": a.name,
                    "account": a.account,
                    "region": a.region,
                    "target": a.target,
                    "created": a.created,
                }
                for a in self.aliases.values()
            ],
        }

    @classmethod
    def from_json(cls, data: Any) -> State:
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise StateError(f"{STATE_FILE}: not a state file of format {FORMAT}")
        state = cls()
        for item in data["keys"]:
            key = KeyRecord.from_json(item)
            state.keys[key.key_id] = key
        for item in data["aliases"]:
            alias = AliasRecord(
                str(item["name"]),
                str(item["account"]),
                str(item["region"]),
                str(item["target"]),
                float(item["created"]),
            )
            state.aliases[(alias.account, alias.region, alias.name)] = alias
        return state


class StateStore:
    """The folder, locked for this process; ``save`` after every change."""

    def __init__(self, path: Path) -> None:
        self.path = path
        _ensure_dir(path)
        self._lock_fd = _lock(path / LOCK_FILE)
        try:
            self.state = self._load()
        except BaseException:
            self.close()
            raise

    def _load(self) -> State:
        file = self.path / STATE_FILE
        try:
            # O_NONBLOCK: a FIFO in its place opens at once (and is refused) instead of hanging
            fd = os.open(file, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
        except FileNotFoundError:
            return State()
        except OSError as exc:
            raise StateError(f"{file}: cannot read: {exc.strerror or exc}") from None
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise StateError(f"{file}: not a regular file")
        with os.fdopen(fd, "rb") as fh:
            try:
                data = fh.read(MAX_STATE_BYTES + 1)
            except OSError as exc:
                raise StateError(f"{file}: cannot read: {exc.strerror or exc}") from None
        if len(data) > MAX_STATE_BYTES:
            raise StateError(f"{file}: larger than {MAX_STATE_BYTES} bytes")
        try:
            return State.from_json(json.loads(data))
        except StateError:
            raise
        except RecursionError:
            raise StateError(f"{file}: unreadable state (nested too deep)") from None
        except (ValueError, KeyError, TypeError) as exc:
            raise StateError(f"{file}: unreadable state ({type(exc).__name__}: {exc})") from None

    def save(self) -> None:
        """Write the state; an OSError when it cannot, or when the folder at ``path`` is no longer
        the one locked (moved aside, a new one made there, perhaps locked by another emulator)."""
        self._check_still_locked()
        data = json.dumps(self.state.to_json(), indent=1, sort_keys=True).encode()
        # O_EXCL|O_NOFOLLOW temporary name, fsync, rename, the folder checked on its descriptor.
        write_file(self.path / STATE_FILE, data, mode=0o600)

    def _check_still_locked(self) -> None:
        held = os.fstat(self._lock_fd)
        try:
            now = os.stat(self.path / LOCK_FILE, follow_symlinks=False)
        except OSError:
            now = None
        if now is None or (now.st_dev, now.st_ino) != (held.st_dev, held.st_ino):
            raise OSError(
                errno.ESTALE,
                f"the state folder {self.path} was moved or replaced since this emulator locked "
                "it; restart the emulator",
            )

    def close(self) -> None:
        if self._lock_fd >= 0:
            os.close(self._lock_fd)  # releases the flock
            self._lock_fd = -1


def _ensure_dir(path: Path) -> None:
    try:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
        info = os.lstat(path)
    except OSError as exc:
        raise StateError(f"--state {path}: cannot create: {exc.strerror or exc}") from None
    if stat.S_ISLNK(info.st_mode) or not stat.S_ISDIR(info.st_mode):
        raise StateError(f"--state {path}: not a directory (symbolic links are refused)")
    if info.st_uid != os.getuid():
        raise StateError(f"--state {path}: owned by another user")
    if info.st_mode & 0o077:
        raise StateError(
            f"--state {path}: mode {stat.S_IMODE(info.st_mode):o} lets others in; it holds key "
            "material: chmod 700"
        )


def _lock(path: Path) -> int:
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
    except OSError as exc:
        raise StateError(f"{path}: cannot open the lock file: {exc.strerror or exc}") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise StateError(
            f"--state {path.parent}: another emulator is using this state folder (it holds "
            f"{path.name}); two would overwrite each other's keys"
        ) from None
    return fd
