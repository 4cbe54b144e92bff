"""`eif build`: synthetic OCI images (add, replace, whiteout, opaque whiteout, hard links, symlinks,
setuid/setgid, a device node) built from every SOURCE kind; the root filesystem read back equals
the OCI result written out by hand; rebuilds are byte-identical; printed PCRs equal the reader's
and the formula's."""

from __future__ import annotations

import json
import os
import random
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from nitro_attest._cli import main
from nitro_attest.eif import inspect_eif

from .eif_helpers import cert_pcr8, formula_pcrs, make_signer
from .oci_helpers import (
    EPOCH_MTIME,
    E,
    chardev,
    config_json,
    d,
    docker_save_files,
    f,
    hard,
    layer_tar,
    oci_files,
    opaque,
    ramdisks,
    set_mtimes,
    summary,
    sym,
    whiteout,
    write_blobs,
    write_dir,
    write_tar,
)

LAYER1 = [
    d("etc"), f("etc/passwd", b"root:x:0:0\n"), f("etc/shadow", b"s", 0o640, 0, 42),
    sym("etc/localtime", "/usr/share/zoneinfo/UTC"),
    d("app"), f("app/old.txt", b"old"), f("app/keep.txt", b"keep"),
    d("data"), f("data/a.txt", b"a"), d("data/sub"), f("data/sub/b.txt", b"b"),
    d("bin"), f("bin/tool", b"tool-v1", 0o755), hard("bin/tool-link", "bin/tool"),
    d("usr"), d("usr/bin"), f("usr/bin/su", b"su", 0o4755),
    f("usr/bin/wall", b"wall", 0o2755, 0, 5),
    d("usr/lib"), sym("lib", "usr/lib"),
    d("dev"), chardev("dev/null", 1, 3),
    d("srv"), f("srv/site/index.html", b"<html>"),
    f("home/user/.profile", b"x", 0o644, 1000, 1000),
]  # fmt: skip
LAYER2 = [
    whiteout("app/old.txt"),
    f("data/new.txt", b"new"), opaque("data"),  # the marker after a sibling: still applies below
    f("bin/tool", b"tool-v2", 0o755),
    f("etc/passwd", b"root:x:0:0:new\n", 0o600),
    hard("app/keep-link", "app/keep.txt"),
    f("opt/x/y.txt", b"y"),
    E("usr/bin/ping", data=b"ping", mode=0o755, xattrs={"security.capability": "cap"}),
]  # fmt: skip
LAYER3 = [whiteout("usr/bin/wall"), sym("srv", "app"), d("etc", 0o750)]

D = ("d", 0o755, 0, 0, None)
EXPECTED: dict[str, tuple[Any, ...]] = {
    "app": D,
    "app/keep-link": ("f", 0o644, 0, 0, b"keep"),
    "app/keep.txt": ("f", 0o644, 0, 0, b"keep"),
    "bin": D,
    "bin/tool": ("f", 0o755, 0, 0, b"tool-v2"),
    "bin/tool-link": ("f", 0o755, 0, 0, b"tool-v1"),  # still the inode layer 1 linked
    "data": D,
    "data/new.txt": ("f", 0o644, 0, 0, b"new"),
    "dev": D,
    "dev/null": ("c", 0o666, 0, 0, (1, 3)),
    "etc": ("d", 0o750, 0, 0, None),
    "etc/localtime": ("l", 0o777, 0, 0, "/usr/share/zoneinfo/UTC"),
    "etc/passwd": ("f", 0o600, 0, 0, b"root:x:0:0:new\n"),
    "etc/shadow": ("f", 0o640, 0, 42, b"s"),
    "home": D,
    "home/user": D,
    "home/user/.profile": ("f", 0o644, 1000, 1000, b"x"),
    "lib": ("l", 0o777, 0, 0, "usr/lib"),
    "opt": D,
    "opt/x": D,
    "opt/x/y.txt": ("f", 0o644, 0, 0, b"y"),
    "proc": D,
    "run": D,
    "srv": ("l", 0o777, 0, 0, "app"),
    "sys": D,
    "tmp": D,
    "usr": D,
    "usr/bin": D,
    "usr/bin/ping": ("f", 0o755, 0, 0, b"ping"),
    "usr/bin/su": ("f", 0o4755, 0, 0, b"su"),
    "usr/lib": D,
    "var": D,
}
CONFIG = config_json(cmd=["/bin/tool", "--port", "5005"], env=["PATH=/bin", "A=1"])


def _layers() -> list[bytes]:
    return [layer_tar(LAYER1), layer_tar(LAYER2), layer_tar(LAYER3)]


def make_source(kind: str, root: Path, rng: random.Random | None = None) -> Path:
    layers = _layers()
    if kind == "docker-save":
        return write_tar(root / "image.tar", docker_save_files(layers, CONFIG), rng)
    if kind == "oci-dir":
        return write_dir(root / "oci", oci_files(layers, CONFIG), rng)
    if kind == "oci-dir-gzip":
        return write_dir(root / "oci", oci_files(layers, CONFIG, gz=True), rng)
    if kind == "oci-tar":
        return write_tar(root / "oci.tar", oci_files(layers, CONFIG), rng)
    raise AssertionError(kind)


SOURCES = ["docker-save", "oci-dir", "oci-dir-gzip", "oci-tar"]


def build(capsys: pytest.CaptureFixture[str], source: Path, blobs: Path, out: Path,
          *extra: str) -> tuple[int, dict[str, Any], str]:  # fmt: skip
    rc = main(["eif", "build", "--image", str(source), "--blobs", str(blobs),
               "--output", str(out), *extra])  # fmt: skip
    captured = capsys.readouterr()
    return rc, (json.loads(captured.out) if rc == 0 else {}), captured.err


@pytest.fixture
def blobs(tmp_path: Path) -> Path:
    return write_blobs(tmp_path / "blobs")


@pytest.mark.parametrize("kind", SOURCES)
def test_rootfs_read_back_equals_oci_semantics(
    kind: str, tmp_path: Path, blobs: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = make_source(kind, tmp_path)
    rc, printed, err = build(capsys, source, blobs, tmp_path / "out.eif")
    assert rc == 0, err
    eif = (tmp_path / "out.eif").read_bytes()
    _, customer = ramdisks(eif)
    assert summary(customer) == EXPECTED
    # one xattr (security.capability) cannot be carried by newc: said, not hidden
    assert "1 extended attribute(s) dropped" in err
    # printed PCRs = the project's reader = the formula
    pcrs = {k: v for k, v in printed["Measurements"].items() if k.startswith("PCR")}
    assert pcrs == inspect_eif(tmp_path / "out.eif").pcrs_hex() == formula_pcrs(eif)
    assert printed["Measurements"]["HashAlgorithm"] == "Sha384 { ... }"


def test_layout_top_level_bootstrap_cmd_env(
    tmp_path: Path, blobs: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rc, _, err = build(capsys, make_source("oci-dir", tmp_path), blobs, tmp_path / "o.eif")
    assert rc == 0, err
    boot, customer = ramdisks((tmp_path / "o.eif").read_bytes())
    assert list(boot) == ["dev", "init", "nsm.ko"]
    assert boot["init"].data == (blobs / "init").read_bytes()
    assert boot["nsm.ko"].data == (blobs / "nsm.ko").read_bytes()
    assert {n: (e.mode, e.uid, e.mtime) for n, e in boot.items()} == {
        "dev": (stat.S_IFDIR | 0o755, 0, 0),
        "init": (stat.S_IFREG | 0o755, 0, 0),
        "nsm.ko": (stat.S_IFREG | 0o755, 0, 0),
    }
    names = list(customer)
    assert names[:3] == ["cmd", "env", "rootfs"]
    assert customer["cmd"].data == b"/bin/tool\n--port\n5005\n"  # one word per line
    assert customer["env"].data == b"PATH=/bin\nA=1\n"
    assert customer["cmd"].mode == stat.S_IFREG | 0o644
    # depth first, byte order within each directory, parents first
    rootfs = [n for n in names if n.startswith("rootfs/")]
    assert rootfs == ["rootfs/" + p for p in sorted(EXPECTED, key=lambda p: p.split("/"))]
    # hard links share an inode; the data travels once; mtimes clamped to 0 (default epoch)
    keep, link = customer["rootfs/app/keep-link"], customer["rootfs/app/keep.txt"]
    assert keep.ino == link.ino and keep.nlink == link.nlink == 2
    assert sorted([keep.data, link.data]) == [b"", b"keep"]
    assert {e.mtime for e in customer.values()} == {0}
    inos = [e.ino for n, e in customer.items() if n not in ("rootfs/app/keep.txt",)]
    assert len(set(inos)) == len(inos)


def test_cmd_and_env_flags_override(
    tmp_path: Path, blobs: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src = make_source("oci-dir", tmp_path)
    rc, _, err = build(capsys, src, blobs, tmp_path / "o.eif", "--cmd", "/app/run --x 'a b'",
                       "--env", "A=2", "--env", "NEW=x=y")  # fmt: skip
    assert rc == 0, err
    _, customer = ramdisks((tmp_path / "o.eif").read_bytes())
    assert customer["cmd"].data == b"/app/run\n--x\na b\n"
    assert customer["env"].data == b"PATH=/bin\nA=2\nNEW=x=y\n"
    rc, _, _ = build(capsys, src, blobs, tmp_path / "p.eif", "--cmd", '["/a", "b c"]')
    assert rc == 0
    assert ramdisks((tmp_path / "p.eif").read_bytes())[1]["cmd"].data == b"/a\nb c\n"


def test_source_date_epoch_clamps_mtimes_and_sets_build_time(
    tmp_path: Path, blobs: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SOURCE_DATE_EPOCH", str(EPOCH_MTIME - 100))
    rc, _, err = build(capsys, make_source("oci-dir", tmp_path), blobs, tmp_path / "o.eif")
    assert rc == 0, err
    _, customer = ramdisks((tmp_path / "o.eif").read_bytes())
    mtimes = {n: e.mtime for n, e in customer.items()}
    assert mtimes["rootfs/etc/passwd"] == EPOCH_MTIME - 100  # clamped from EPOCH_MTIME
    assert mtimes["rootfs/proc"] == 0 and mtimes["cmd"] == 0  # made by the builder
    info = inspect_eif(tmp_path / "o.eif")
    assert info.metadata is not None
    assert info.metadata["BuildMetadata"]["BuildTime"] == "2023-11-14T22:11:40+00:00"
    assert info.metadata["ImageName"] == "test"  # the reference before its tag
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "yesterday")
    rc, _, err = build(capsys, make_source("oci-dir", tmp_path / "b"), blobs, tmp_path / "p.eif")
    assert rc == 1 and "SOURCE_DATE_EPOCH" in err and len(err.strip().splitlines()) == 1


def _build_in(
    kind: str, root: Path, blobs: Path, capsys: pytest.CaptureFixture[str], seed: int,
    umask: int, mtime: int,
) -> bytes:  # fmt: skip
    old = os.umask(umask)
    try:
        root.mkdir()
        source = make_source(kind, root, random.Random(seed))
        if source.is_dir():
            set_mtimes(source, mtime)
        os.utime(source, (mtime, mtime))
        rc, _, err = build(capsys, source, blobs, root / "out.eif")
    finally:
        os.umask(old)
    assert rc == 0, err
    return (root / "out.eif").read_bytes()


@pytest.mark.parametrize("kind", SOURCES)
def test_two_builds_are_byte_identical(
    kind: str, tmp_path: Path, blobs: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    one = _build_in(kind, tmp_path / "first", blobs, capsys, 1, 0o022, 1_000_000)
    two = _build_in(kind, tmp_path / "second-elsewhere", blobs, capsys, 2, 0o077, 2_000_000_000)
    assert one == two


def test_rootfs_directory_source(
    tmp_path: Path, blobs: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    def make(root: Path, order: list[int], umask: int, mtime: int) -> Path:
        old = os.umask(umask)
        try:
            tree = root / "tree"
            steps: list[Callable[[], None]] = [
                lambda: (tree / "bin").mkdir(parents=True, exist_ok=True),
                lambda: (tree / "etc").mkdir(parents=True, exist_ok=True),
                lambda: (tree / "etc/conf").write_bytes(b"conf"),
            ]
            for i in order:
                steps[i]()
            (tree / "bin/app").write_bytes(b"app")
            os.link(tree / "bin/app", tree / "bin/app2")
            (tree / "bin/sudo").write_bytes(b"sudo")
            os.symlink("../etc/conf", tree / "bin/conf")
            os.mkfifo(tree / "etc/fifo")
            for p, mode in (("bin", 0o755), ("etc", 0o755), ("etc/conf", 0o644), ("bin/app", 0o755),
                            ("bin/sudo", 0o4755), ("etc/fifo", 0o600)):  # fmt: skip
                os.chmod(tree / p, mode)
            os.chmod(tree, 0o755)
            set_mtimes(tree, mtime)
            return tree
        finally:
            os.umask(old)

    a = make(tmp_path / "a", [0, 1, 2], 0o022, 1_000_000)
    b = make(tmp_path / "bb", [1, 2, 0], 0o077, 1_900_000_000)
    uid, gid = os.getuid(), os.getgid()
    outs = []
    for tree, name in ((a, "a.eif"), (b, "b.eif")):
        rc, _, err = build(capsys, tree, blobs, tmp_path / name, "--cmd", "/bin/app")
        assert rc == 0, err
        outs.append((tmp_path / name).read_bytes())
    assert outs[0] == outs[1]
    got = summary(ramdisks(outs[0])[1])
    assert got["bin/app"] == got["bin/app2"] == ("f", 0o755, uid, gid, b"app")
    assert got["bin/sudo"] == ("f", 0o4755, uid, gid, b"sudo")
    assert got["bin/conf"][0::4] == ("l", "../etc/conf")
    assert got["etc/fifo"][:2] == (oct(stat.S_IFIFO), 0o600)


def test_signed_build_prints_pcr8_and_is_reproducible(
    tmp_path: Path, blobs: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from cryptography.hazmat.primitives.asymmetric import ec

    key_pem, cert_pem = make_signer(ec.SECP384R1())
    (tmp_path / "key.pem").write_bytes(key_pem)
    (tmp_path / "cert.pem").write_bytes(cert_pem)
    src = make_source("oci-dir", tmp_path)
    sign = ["--signing-cert", str(tmp_path / "cert.pem"),
            "--signing-key", str(tmp_path / "key.pem")]  # fmt: skip
    rc, printed, err = build(capsys, src, blobs, tmp_path / "s1.eif", *sign)
    assert rc == 0, err
    assert printed["Measurements"]["PCR8"] == cert_pcr8(cert_pem)
    info = inspect_eif(tmp_path / "s1.eif")
    assert info.signature_ok is True
    assert {k: v for k, v in printed["Measurements"].items() if k != "HashAlgorithm"} == (
        info.pcrs_hex()
    )
    rc, _, _ = build(capsys, src, blobs, tmp_path / "s2.eif", *sign)
    assert rc == 0
    assert (tmp_path / "s1.eif").read_bytes() == (tmp_path / "s2.eif").read_bytes()


def test_blobs_default_from_nitro_cli_env(
    tmp_path: Path, blobs: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NITRO_CLI_BLOBS", str(blobs))
    src = make_source("oci-dir", tmp_path)
    assert main(["eif", "build", "--image", str(src), "--output", str(tmp_path / "o.eif")]) == 0
    first = (tmp_path / "o.eif").read_bytes()
    capsys.readouterr()
    rc, _, _ = build(capsys, src, blobs, tmp_path / "p.eif")
    assert rc == 0 and (tmp_path / "p.eif").read_bytes() == first


def test_same_pcrs_from_every_source_kind(
    tmp_path: Path, blobs: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The image, not its packaging, is measured: all four SOURCE forms give the same ramdisks."""
    seen = []
    for kind in SOURCES:
        (tmp_path / kind).mkdir()
        rc, printed, err = build(capsys, make_source(kind, tmp_path / kind), blobs,
                                 tmp_path / kind / "o.eif")  # fmt: skip
        assert rc == 0, err
        seen.append(printed["Measurements"])
    assert all(m == seen[0] for m in seen)


def test_locale_timezone_and_umask_of_the_builder_do_not_matter(
    tmp_path: Path, blobs: Path
) -> None:
    import subprocess
    import sys

    src = make_source("docker-save", tmp_path)
    outs = []
    for i, (locale, tz, umask) in enumerate((("C", "UTC", "022"),
                                             ("C.UTF-8", "Asia/Kolkata", "077"))):  # fmt: skip
        out = tmp_path / f"o{i}.eif"
        env = {**os.environ, "LC_ALL": locale, "LANG": locale, "TZ": tz}
        code = "from nitro_attest._cli import entrypoint; entrypoint()"
        argv = [sys.executable, "-c", code, "eif", "build", "--image", str(src),
                "--blobs", str(blobs), "--output", str(out)]  # fmt: skip
        r = subprocess.run(["sh", "-c", f'umask {umask}; exec "$@"', "sh", *argv], env=env,
                           capture_output=True, text=True, timeout=60, check=False)  # fmt: skip
        assert r.returncode == 0, r.stderr
        outs.append(out.read_bytes())
    assert outs[0] == outs[1]


def test_extracted_docker_save_directory_is_an_image(
    tmp_path: Path, blobs: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src = write_dir(tmp_path / "saved", docker_save_files(_layers(), CONFIG))
    rc, _, err = build(capsys, src, blobs, tmp_path / "o.eif")
    assert rc == 0, err
    assert summary(ramdisks((tmp_path / "o.eif").read_bytes())[1]) == EXPECTED


def test_build_streams_the_image(tmp_path: Path, blobs: Path) -> None:
    """A 24 MiB image (one gzip layer, one plain) is built with a few MiB of Python memory."""
    import gzip
    import tracemalloc

    from nitro_attest.eif.build import BuildOptions, build_eif

    big = os.urandom(1 << 20) * 12
    layers = [layer_tar([f("a/big1", big)]), gzip.compress(layer_tar([f("b/big2", big)]), 1)]
    src = write_dir(tmp_path / "oci", oci_files(layers, CONFIG))
    del big, layers
    tracemalloc.start()
    try:
        result = build_eif(BuildOptions(src, blobs, tmp_path / "o.eif"))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert (tmp_path / "o.eif").stat().st_size > 24 << 20
    assert result.measurements == inspect_eif(tmp_path / "o.eif").pcrs_hex()
    assert peak < 6 << 20, f"peak {peak >> 20} MiB"


@pytest.mark.parametrize(
    ("entrypoint", "cmd", "env", "want_cmd", "want_env"),
    [
        (None, ["/c"], ["A=1"], b"/c\n", b"A=1\n"),
        (["/e"], ["/c"], ["A=1"], b"/c\n", b"A=1\n"),  # Cmd and Env: Entrypoint ignored
        (["/e"], ["/c"], None, b"/e\n", b""),  # no Env: Entrypoint, Cmd ignored
        (["/e", "x"], None, ["A=1"], b"/e\nx\n", b"A=1\n"),
    ],
)
def test_command_chosen_as_nitro_cli_does(
    entrypoint: list[str] | None, cmd: list[str] | None, env: list[str] | None,
    want_cmd: bytes, want_env: bytes, tmp_path: Path, blobs: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    """enclave_build/src/docker.rs extract_image: Cmd when Cmd and Env exist, else Entrypoint."""
    import json as _json

    doc = {"architecture": "amd64", "os": "linux", "config": {}}
    for key, value in (("Entrypoint", entrypoint), ("Cmd", cmd), ("Env", env)):
        if value is not None:
            doc["config"][key] = value  # type: ignore[index]
    src = write_dir(tmp_path / "oci", oci_files(_layers(), _json.dumps(doc).encode()))
    rc, _, err = build(capsys, src, blobs, tmp_path / "o.eif")
    assert rc == 0, err
    _, customer = ramdisks((tmp_path / "o.eif").read_bytes())
    assert (customer["cmd"].data, customer["env"].data) == (want_cmd, want_env)


def test_blobs_as_nitro_cli_reads_them(
    tmp_path: Path, blobs: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """cmdline trimmed (nitro-cli: cmdline.trim()), OS and kernel version from line 3 of
    bzImage.config split on ' ', '/' and '-', ImageName up to the tag's first ':', and the
    kernel and arch flag from the image's architecture."""
    import json as _json

    from .eif_helpers import parse

    (blobs / "cmdline").write_bytes(b"  console=ttyS0 reboot=k \n\n")
    (blobs / "bzImage.config").write_text(
        "#\n# Automatically generated\n# Linux/x86_64 4.14.177-104.253.amzn2.x86_64 Kernel\n"
    )
    src = make_source("docker-save", tmp_path)
    rc, _, err = build(capsys, src, blobs, tmp_path / "o.eif")
    assert rc == 0, err
    eif = (tmp_path / "o.eif").read_bytes()
    _, sections = parse(eif)
    cmdline = next(eif[o + 12 : o + 12 + n] for (t, o, n) in sections if t == 2)
    assert cmdline == b"console=ttyS0 reboot=k"
    info = inspect_eif(tmp_path / "o.eif")
    assert info.metadata is not None and info.header.flags == 0
    assert info.metadata["ImageName"] == "myapp"
    build_meta = info.metadata["BuildMetadata"]
    assert (build_meta["OperatingSystem"], build_meta["KernelVersion"]) == ("Linux", "4.14.177")
    # an arm64 image needs blobs/Image and sets the aarch64 flag
    arm = _json.loads(CONFIG)
    arm["architecture"] = "arm64"
    src = write_dir(tmp_path / "arm", oci_files(_layers(), _json.dumps(arm).encode()))
    rc, _, err = build(capsys, src, blobs, tmp_path / "a.eif")
    assert rc == 1 and "holds no Image" in err
    (blobs / "Image").write_bytes(b"arm64 kernel")
    rc, _, err = build(capsys, src, blobs, tmp_path / "a.eif")
    assert rc == 0, err
    assert inspect_eif(tmp_path / "a.eif").header.flags == 1
