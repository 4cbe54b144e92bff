"""`eif build`: an image (docker save tarball, OCI layout, or rootfs directory) + nitro-cli's blobs
-> a reproducible EIF and its measurements, without Docker or nitro-cli.

Same inputs, same bytes: entries sorted, times clamped to SOURCE_DATE_EPOCH (default 0), inode
numbers assigned in output order, no compression, the metadata build time taken from the epoch.
Nothing depends on umask, locale, on-disk order or the machine.
"""

from __future__ import annotations

import datetime as dt
import os
import re
import secrets
import tempfile
from dataclasses import dataclass, field
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import Any, BinaryIO

from nitro_attest.eif.blobs import FileCache, ImageError, Spool, open_regular
from nitro_attest.eif.hostdir import scan_dir
from nitro_attest.eif.layer import Limits, Totals, apply_layer
from nitro_attest.eif.oci import Image, open_image
from nitro_attest.eif.ramdisk import bootstrap, customer
from nitro_attest.eif.rootfs import RootFs
from nitro_attest.eif.writer import write_eif

DEFAULT_BLOBS = Path("/usr/share/nitro_enclaves/blobs")
MAX_BLOB_FILE = 64 << 20
MAX_CMDLINE = 64 << 10
MAX_EPOCH = 0xFFFFFFFF


@dataclass(frozen=True, slots=True)
class Blobs:
    kernel: Path
    aarch64: bool
    cmdline: bytes
    init: bytes
    nsm_ko: bytes
    os_name: str = "Unknown"
    kernel_version: str = "Unknown"


@dataclass(frozen=True, slots=True)
class BuildOptions:
    image: Path
    blobs: Path
    output: Path
    cmd: list[str] | None = None
    env: list[str] = field(default_factory=list)
    """K=V entries that replace or add to the image's environment."""
    signing_certificate_pem: bytes | None = None
    signing_key_pem: bytes | None = None
    epoch: int = 0
    limits: Limits = field(default_factory=Limits)


@dataclass(frozen=True, slots=True)
class BuildResult:
    measurements: dict[str, str]
    cmd: list[str]
    env: list[str]
    entries: int
    dropped_xattrs: int


def source_date_epoch(environ: dict[str, str] | os._Environ[str]) -> int:
    raw = environ.get("SOURCE_DATE_EPOCH", "").strip()
    if not raw:
        return 0
    if not raw.isdigit() or int(raw) > MAX_EPOCH:
        raise ImageError(f"SOURCE_DATE_EPOCH={raw[:30]!r}: expected seconds, 0..{MAX_EPOCH}")
    return int(raw)


def default_blobs(environ: dict[str, str] | os._Environ[str]) -> Path | None:
    """nitro-cli's own lookup: $NITRO_CLI_BLOBS, else the package's blobs folder."""
    if environ.get("NITRO_CLI_BLOBS"):
        return Path(environ["NITRO_CLI_BLOBS"])
    return DEFAULT_BLOBS if DEFAULT_BLOBS.is_dir() else None


def _small(path: Path, limit: int) -> bytes:
    """A blob file read whole (init, nsm.ko, cmdline, the kernel config): regular files only."""
    if not os.path.lexists(path):
        raise ImageError(f"blobs: {path} is missing")
    fd = open_regular(str(path), follow=True)  # the blobs are the user's install: links are fine
    try:
        size = os.fstat(fd).st_size
        if size > limit:
            raise ImageError(f"blobs: {path} is larger than {limit} bytes")
        data = os.read(fd, size + 1) if size else b""  # not read(limit): it would allocate it
    except OSError as exc:
        raise ImageError(f"blobs: {path}: {exc.strerror or exc}") from None
    finally:
        os.close(fd)
    if len(data) != size:
        raise ImageError(f"blobs: {path} changed while being read")
    return data


# Rust's str::trim() removes Unicode White_Space; nitro-cli trims the cmdline with it
_RUST_WHITESPACE = "\t\n\x0b\x0c\r \x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006" + (
    "\u2007\u2008\u2009\u200a\u2028\u2029\u202f\u205f\u3000"
)
KERNELS = {"amd64": "bzImage", "arm64": "Image"}


def load_blobs(folder: Path, arch: str | None = None) -> Blobs:
    """nitro-cli's blobs: the kernel for ``arch`` (amd64 -> bzImage, arm64 -> Image; None: the
    one present), init, nsm.ko, cmdline (trimmed, as nitro-cli does), ``KERNEL.config``."""
    if not folder.is_dir():
        raise ImageError(f"blobs: {folder} is not a directory")
    names = [KERNELS[arch]] if arch is not None else ["bzImage", "Image"]
    found = [folder / n for n in names if (folder / n).is_file()]
    if not found:
        raise ImageError(f"blobs: {folder} holds no {' or '.join(names)}")
    kernel = found[0]
    os_name, version = "Unknown", "Unknown"
    config = kernel.with_name(kernel.name + ".config")
    if config.is_file():
        # nitro-cli: line 3, e.g. "# Linux/x86_64 4.14.177-104.253.amzn2.x86_64 Kernel
        # Configuration", split on ' ', '/' and '-'; words 1 and 3
        lines = _small(config, 1 << 20).decode("utf-8", "replace").split("\n")
        words = re.split("[ /-]", lines[2]) if len(lines) > 2 else []
        os_name = words[1] if len(words) > 1 else os_name
        version = words[3] if len(words) > 3 else version
    raw = _small(folder / "cmdline", MAX_CMDLINE)
    try:
        cmdline = raw.decode("utf-8").strip(_RUST_WHITESPACE).encode()
    except UnicodeDecodeError:
        raise ImageError(f"blobs: {folder / 'cmdline'} is not UTF-8") from None
    if b"\0" in cmdline:
        raise ImageError(f"blobs: {folder / 'cmdline'} contains a NUL byte")
    return Blobs(
        kernel,
        kernel.name == "Image",
        cmdline,
        _small(folder / "init", MAX_BLOB_FILE),
        _small(folder / "nsm.ko", MAX_BLOB_FILE),
        os_name,
        version,
    )


def _strings(inner: dict[str, Any], key: str) -> list[str] | None:
    value = inner.get(key)
    if value is None:
        return None
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ImageError(f"image config: {key} must be a list of strings")
    return value


def image_cmd_env(config: dict[str, Any]) -> tuple[list[str], list[str]]:
    """nitro-cli's choice (enclave_build/src/docker.rs, extract_image): Cmd and Env when the
    image has both; otherwise Entrypoint (with Env, or none); the other is ignored, not joined."""
    inner = config.get("config") or {}
    if not isinstance(inner, dict):
        raise ImageError("image config: 'config' must be an object")
    cmd, env, entrypoint = (_strings(inner, k) for k in ("Cmd", "Env", "Entrypoint"))
    if cmd is not None and env is not None:
        return cmd, env
    if entrypoint is not None:
        return entrypoint, env or []
    raise ImageError("the image has neither Cmd (with Env) nor Entrypoint; give --cmd")


def image_arch(config: dict[str, Any]) -> str | None:
    arch = config.get("architecture")
    if arch is None:
        return None
    if arch not in KERNELS:
        raise ImageError(f"image architecture {str(arch)[:20]!r}: nitro-cli builds amd64 or arm64")
    return str(arch)


def merge_env(image_env: list[str], overrides: list[str]) -> list[str]:
    env: dict[str, str] = {}
    for entry in image_env:
        key, _, value = entry.partition("=")
        env[key] = value
    for item in overrides:
        key, eq, value = item.partition("=")
        if not eq or not key:
            raise ImageError(f"--env {item[:60]!r}: expected KEY=VALUE")
        env[key] = value
    return [f"{k}={v}" for k, v in env.items()]


def _name_version(image: Image | None, source: Path) -> tuple[str, str]:
    if image is None:
        return source.name or "rootfs", "rootfs"
    version = image.config_digest.removeprefix("sha256:")
    if image.repo_tags:  # nitro-cli: the docker URI up to its first ':'
        return image.repo_tags[0].split(":")[0], version
    return source.name, version


def _metadata(opts: BuildOptions, blobs: Blobs, image: Image | None) -> dict[str, Any]:
    name, version = _name_version(image, opts.image)
    try:
        tool_version = importlib_metadata.version("nitro-attest")
    except importlib_metadata.PackageNotFoundError:
        tool_version = "unknown"
    docker_info: dict[str, Any] | None = None
    if image is not None:
        config = image.config
        docker_info = {
            "Id": image.config_digest,
            "RepoTags": image.repo_tags,
            "Created": config.get("created"),
            "Architecture": config.get("architecture"),
            "Os": config.get("os"),
            "Config": config.get("config"),
        }
    return {
        "ImageName": name,
        "ImageVersion": version,
        "BuildMetadata": {
            "BuildTime": dt.datetime.fromtimestamp(opts.epoch, dt.UTC).isoformat(),
            "BuildTool": "nitro-attest",
            "BuildToolVersion": tool_version,
            "OperatingSystem": blobs.os_name,
            "KernelVersion": blobs.kernel_version,
        },
        "DockerInfo": docker_info,
        "CustomMetadata": None,
    }


def is_image_dir(source: Path) -> bool:
    """An OCI layout, or an extracted docker save, rather than a root filesystem."""
    return any(os.path.lexists(source / name) for name in ("index.json", "manifest.json"))


def load_rootfs(
    source: Path, files: FileCache, spool_dir: Path, limits: Limits, totals: Totals
) -> tuple[RootFs, Image | None]:
    """The merged tree of any SOURCE kind, plus the image (None for a rootfs directory)."""
    if source.is_dir() and not is_image_dir(source):
        return scan_dir(source, limits, totals, files), None
    spool = Spool(spool_dir, limits.max_bytes)
    image = open_image(source, files, spool, limits, totals.budget(limits))
    fs = RootFs()
    for blob in image.layers:
        apply_layer(fs, blob, files, limits, totals)
    return fs, image


def _partial(output: Path) -> tuple[BinaryIO, Path]:
    """A new file beside the output, at a name nobody could plant a link at in advance:
    O_CREAT|O_EXCL never opens an existing name (a link there included) and O_NOFOLLOW says so
    twice. The mode is the one ``open()`` would give (0666 less the umask)."""
    flags = os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    for _ in range(8):
        path = output.with_name(f".{output.name}.partial-{os.getpid()}-{secrets.token_hex(8)}")
        try:
            fd = os.open(path, flags, 0o666)
        except FileExistsError:
            continue
        return os.fdopen(fd, "w+b"), path
    raise ImageError(f"{output.parent}: cannot create a temporary file for the output")


def build_eif(opts: BuildOptions) -> BuildResult:
    if not 0 <= opts.epoch <= MAX_EPOCH:
        raise ImageError(f"SOURCE_DATE_EPOCH {opts.epoch} out of range 0..{MAX_EPOCH}")
    load_blobs(opts.blobs)  # fail fast, before reading the image
    files = FileCache()
    partial: Path | None = None
    totals = Totals()
    try:
        with tempfile.TemporaryDirectory(prefix="nitro-attest-eif-") as spool:
            fs, image = load_rootfs(opts.image, files, Path(spool), opts.limits, totals)
            blobs = load_blobs(opts.blobs, image_arch(image.config) if image else None)
            if opts.cmd is not None:
                cmd, image_env = opts.cmd, (image_cmd_env(image.config)[1] if image else [])
            elif image is not None:
                cmd, image_env = image_cmd_env(image.config)
            else:
                raise ImageError("a root filesystem directory has no command; give --cmd")
            if not cmd:
                raise ImageError("empty command; give --cmd")
            env = merge_env(image_env, opts.env)
            ramdisks = [
                bootstrap(blobs.init, blobs.nsm_ko).stream(files),
                customer(fs, cmd, env, opts.epoch).stream(files),
            ]
            out, partial = _partial(opts.output)
            with out:
                pcrs = write_eif(
                    out,
                    kernel=blobs.kernel,
                    cmdline=blobs.cmdline,
                    ramdisks=ramdisks,
                    metadata=_metadata(opts, blobs, image),
                    signing_key_pem=opts.signing_key_pem,
                    signing_certificate_pem=opts.signing_certificate_pem,
                    aarch64=blobs.aarch64,
                )
            os.replace(partial, opts.output)
            partial = None
    finally:
        files.close()
        if partial is not None:
            partial.unlink(missing_ok=True)
    return BuildResult(pcrs, cmd, env, totals.entries, totals.xattrs)
