"""Synthetic OCI images for the EIF builder tests, written with Python's tarfile (not the project's
tar reader), and a newc cpio reader written from the format description, so the tests never check
the builder against its own code.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import random
import stat
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

EPOCH_MTIME = 1_700_000_000


@dataclass
class E:
    """One layer entry."""

    name: str
    kind: bytes = tarfile.REGTYPE
    data: bytes = b""
    mode: int = 0o644
    uid: int = 0
    gid: int = 0
    link: str = ""
    dev: tuple[int, int] = (0, 0)
    xattrs: dict[str, str] | None = None
    mtime: int = EPOCH_MTIME


def f(name: str, data: bytes, mode: int = 0o644, uid: int = 0, gid: int = 0) -> E:
    return E(name, tarfile.REGTYPE, data, mode, uid, gid)


def d(name: str, mode: int = 0o755, uid: int = 0, gid: int = 0) -> E:
    return E(name, tarfile.DIRTYPE, mode=mode, uid=uid, gid=gid)


def sym(name: str, target: str) -> E:
    return E(name, tarfile.SYMTYPE, mode=0o777, link=target)


def hard(name: str, target: str) -> E:
    return E(name, tarfile.LNKTYPE, link=target)


def chardev(name: str, major: int, minor: int, mode: int = 0o666) -> E:
    return E(name, tarfile.CHRTYPE, mode=mode, dev=(major, minor))


def whiteout(path: str) -> E:
    parent, _, base = path.rpartition("/")
    return f(f"{parent}/.wh.{base}" if parent else f".wh.{base}", b"", 0o600)


def opaque(directory: str) -> E:
    return f(f"{directory}/.wh..wh..opq", b"", 0o600)


def layer_tar(entries: list[E], fmt: int = tarfile.PAX_FORMAT) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt) as tar:
        for e in entries:
            info = tarfile.TarInfo(e.name)
            info.type = e.kind
            info.mode = e.mode
            info.uid, info.gid = e.uid, e.gid
            info.uname = info.gname = ""
            info.mtime = e.mtime
            info.linkname = e.link
            info.devmajor, info.devminor = e.dev
            if e.xattrs:
                info.pax_headers = {f"SCHILY.xattr.{k}": v for k, v in e.xattrs.items()}
            if e.kind == tarfile.REGTYPE:
                info.size = len(e.data)
                tar.addfile(info, io.BytesIO(e.data))
            else:
                tar.addfile(info)
    return buf.getvalue()


def config_json(cmd: list[str] | None = None, env: list[str] | None = None,
                entrypoint: list[str] | None = None) -> bytes:  # fmt: skip
    cfg: dict[str, Any] = {"Env": env if env is not None else ["PATH=/usr/bin:/bin"]}
    if cmd is not None:
        cfg["Cmd"] = cmd
    if entrypoint is not None:
        cfg["Entrypoint"] = entrypoint
    doc = {"architecture": "amd64", "os": "linux", "config": cfg,
           "rootfs": {"type": "layers", "diff_ids": []}}  # fmt: skip
    return json.dumps(doc).encode()


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _write_files(root: Path, files: dict[str, bytes], shuffle: random.Random | None) -> None:
    names = list(files)
    if shuffle is not None:
        shuffle.shuffle(names)
    for name in names:
        p = root / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(files[name])


def oci_files(layers: list[bytes], config: bytes, *, gz: bool = False) -> dict[str, bytes]:
    blobs = [gzip.compress(x, mtime=0) if gz else x for x in layers]
    media = "application/vnd.oci.image.layer.v1.tar" + ("+gzip" if gz else "")
    manifest = json.dumps({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": "sha256:" + _digest(config), "size": len(config)},
        "layers": [{"mediaType": media, "digest": "sha256:" + _digest(b), "size": len(b)}
                   for b in blobs],
    }).encode()  # fmt: skip
    index = json.dumps({
        "schemaVersion": 2,
        "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json",
                       "digest": "sha256:" + _digest(manifest), "size": len(manifest),
                       "annotations": {"org.opencontainers.image.ref.name": "test:1"}}],
    }).encode()  # fmt: skip
    files = {"oci-layout": b'{"imageLayoutVersion": "1.0.0"}', "index.json": index}
    for blob in [config, manifest, *blobs]:
        files[f"blobs/sha256/{_digest(blob)}"] = blob
    return files


def docker_save_files(layers: list[bytes], config: bytes) -> dict[str, bytes]:
    files = {f"{_digest(config)}.json": config}
    names = []
    for i, layer in enumerate(layers):
        name = f"{i:02d}{_digest(layer)[:20]}/layer.tar"
        files[name] = layer
        names.append(name)
    files["manifest.json"] = json.dumps(
        [{"Config": f"{_digest(config)}.json", "RepoTags": ["myapp:latest"], "Layers": names}]
    ).encode()
    return files


def write_dir(root: Path, files: dict[str, bytes], shuffle: random.Random | None = None) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    _write_files(root, files, shuffle)
    return root


def write_tar(path: Path, files: dict[str, bytes], shuffle: random.Random | None = None) -> Path:
    names = sorted(files)
    if shuffle is not None:
        shuffle.shuffle(names)
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tar:
        for name in names:
            info = tarfile.TarInfo(name)
            info.size = len(files[name])
            info.mtime = shuffle.randrange(1 << 30) if shuffle else 0
            tar.addfile(info, io.BytesIO(files[name]))
    return path


def write_blobs(root: Path) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    rng = random.Random(7)
    (root / "bzImage").write_bytes(rng.randbytes(64 * 1024))
    (root / "bzImage.config").write_text("#\n# Automatically generated\n# Linux/x86 6.1.0 Kernel"
                                         " Configuration\n")  # fmt: skip
    (root / "init").write_bytes(b"\x7fELF-init" + rng.randbytes(5000))
    (root / "nsm.ko").write_bytes(b"\x7fELF-nsm" + rng.randbytes(3001))
    (root / "cmdline").write_bytes(b"reboot=k panic=30 pci=off nomodules console=ttyS0\n")
    return root


# --- reading back -------------------------------------------------------------------------------


@dataclass(frozen=True)
class CpioFile:
    mode: int
    uid: int
    gid: int
    nlink: int
    mtime: int
    ino: int
    rdev: tuple[int, int]
    data: bytes


def read_cpio(blob: bytes) -> dict[str, CpioFile]:
    """newc: '070701', 13 x 8 hex digits, name + NUL padded to 4, data padded to 4."""
    out: dict[str, CpioFile] = {}
    pos = 0
    while True:
        assert blob[pos : pos + 6] == b"070701", f"bad magic at {pos}"
        v = [int(blob[pos + 6 + 8 * i : pos + 14 + 8 * i], 16) for i in range(13)]
        namesize, size = v[11], v[6]
        name = blob[pos + 110 : pos + 110 + namesize - 1].decode()
        data_at = pos + 110 + namesize
        data_at += -data_at % 4
        if name == "TRAILER!!!":
            assert not blob[data_at:].strip(b"\0")
            return out
        assert name not in out, f"{name} twice"
        out[name] = CpioFile(v[1], v[2], v[3], v[4], v[5], v[0], (v[9], v[10]),
                             blob[data_at : data_at + size])  # fmt: skip
        pos = data_at + size
        pos += -pos % 4


def sections(eif: bytes) -> list[tuple[int, bytes]]:
    import struct

    n = struct.unpack(">H", eif[26:28])[0]
    offsets = struct.unpack(">32Q", eif[28:284])[:n]
    out = []
    for off in offsets:
        kind, _, size = struct.unpack(">HHQ", eif[off : off + 12])
        out.append((kind, eif[off + 12 : off + 12 + size]))
    return out


def ramdisks(eif: bytes) -> list[dict[str, CpioFile]]:
    return [read_cpio(data) for kind, data in sections(eif) if kind == 3]


def summary(files: dict[str, CpioFile], prefix: str = "rootfs/") -> dict[str, tuple[Any, ...]]:
    """path -> (type, perm bits, uid, gid, content or link target or device)."""
    out: dict[str, tuple[Any, ...]] = {}
    by_ino: dict[int, bytes] = {}
    for name, e in files.items():
        if not name.startswith(prefix):
            continue
        kind = stat.S_IFMT(e.mode)
        perm = e.mode & 0o7777
        if kind == stat.S_IFREG:
            data = e.data if e.data or e.nlink < 2 else by_ino[e.ino]
            if e.nlink > 1:
                by_ino.setdefault(e.ino, e.data)
            out[name[len(prefix) :]] = ("f", perm, e.uid, e.gid, data)
        elif kind == stat.S_IFDIR:
            out[name[len(prefix) :]] = ("d", perm, e.uid, e.gid, None)
        elif kind == stat.S_IFLNK:
            out[name[len(prefix) :]] = ("l", perm, e.uid, e.gid, e.data.decode())
        elif kind == stat.S_IFCHR:
            out[name[len(prefix) :]] = ("c", perm, e.uid, e.gid, e.rdev)
        else:
            out[name[len(prefix) :]] = (oct(kind), perm, e.uid, e.gid, e.rdev)
    return out


def set_mtimes(root: Path, when: int) -> None:
    for p in root.rglob("*"):
        os.utime(p, (when, when), follow_symlinks=False)
