"""Threat model: image builder. Image tarballs are untrusted: path escapes, symlink-then-write,
hard links out of the image, truncation, oversized headers, decompression bombs. Each is refused
with one line and exit 1."""

from __future__ import annotations

import gzip
import io
import json
import tarfile
from pathlib import Path

import pytest

from nitro_attest._cli import main
from nitro_attest.eif.blobs import ImageError
from nitro_attest.eif.build import BuildOptions, build_eif
from nitro_attest.eif.layer import Limits

from .oci_helpers import (
    config_json,
    d,
    docker_save_files,
    f,
    hard,
    layer_tar,
    oci_files,
    ramdisks,
    summary,
    sym,
    write_blobs,
    write_dir,
    write_tar,
)

CONFIG = config_json(cmd=["/app"])


@pytest.fixture
def blobs(tmp_path: Path) -> Path:
    return write_blobs(tmp_path / "blobs")


def refused(tmp_path: Path, blobs: Path, capsys: pytest.CaptureFixture[str],
            layers: list[bytes], *, files: dict[str, bytes] | None = None) -> str:  # fmt: skip
    src = write_dir(tmp_path / "oci", files or oci_files(layers, CONFIG))
    out = tmp_path / "out.eif"
    rc = main(["eif", "build", "--image", str(src), "--blobs", str(blobs), "--output", str(out)])
    err = capsys.readouterr().err
    assert rc == 1, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert not out.exists() and not list(tmp_path.glob(".out.eif.partial*"))
    return err


@pytest.mark.parametrize(
    ("entries", "needle"),
    [
        ([f("../../etc/passwd", b"x")], "path escape"),
        ([f("app/../../x", b"x")], "path escape"),
        ([sym("a/b", "../../etc")], "climbs above the image root"),
        ([sym("x", "/../etc/shadow")], "climbs above the image root"),
        ([hard("h", "../../etc/shadow")], "path escape"),
        ([hard("h", "etc/shadow")], "target is not in the image"),
        ([d("dir"), hard("h", "dir")], "names a directory"),
        ([sym("x", "/etc"), f("x/passwd", b"pwned")], "is a symlink, not a directory"),
        ([f("proc", b"not a dir")], "/proc is not a directory"),
    ],
    ids=["dotdot", "inner-dotdot", "symlink-climbs", "abs-symlink-climbs", "hardlink-escape",
         "hardlink-missing", "hardlink-dir", "symlink-then-write", "proc-file"],
)  # fmt: skip
def test_hostile_entries_refused(
    entries: list[object], needle: str, tmp_path: Path, blobs: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    err = refused(tmp_path, blobs, capsys, [layer_tar(entries)])  # type: ignore[arg-type]
    assert needle in err


def test_symlink_then_write_across_layers(
    tmp_path: Path, blobs: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    layers = [layer_tar([sym("etc", "/")]), layer_tar([f("etc/init", b"evil")])]
    err = refused(tmp_path, blobs, capsys, layers)
    assert "parent etc is a symlink" in err


def test_absolute_names_stay_inside(
    tmp_path: Path, blobs: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src = write_dir(tmp_path / "oci", oci_files([layer_tar([f("/etc/motd", b"hi")])], CONFIG))
    rc = main(["eif", "build", "--image", str(src), "--blobs", str(blobs),
               "--output", str(tmp_path / "o.eif")])  # fmt: skip
    assert rc == 0, capsys.readouterr().err
    got = summary(ramdisks((tmp_path / "o.eif").read_bytes())[1])
    assert got["etc/motd"][4] == b"hi"


def test_truncated_layer_refused(
    tmp_path: Path, blobs: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    whole = layer_tar([f("big", b"x" * 5000), f("small", b"y")])
    cut_in_data = whole[:1500]
    err = refused(tmp_path, blobs, capsys, [cut_in_data])
    assert "truncated" in err and "layer 1" in err
    no_end = whole[: whole.rindex(b"y") + 512 - (whole.rindex(b"y") % 512)]
    assert len(no_end) % 512 == 0
    err = refused(tmp_path / "b", blobs, capsys, [no_end])
    assert "truncated" in err


def test_truncated_gzip_layer_refused(
    tmp_path: Path, blobs: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    files = oci_files([layer_tar([f("a", bytes(range(256)) * 64)])], CONFIG, gz=True)
    manifest_name = next(n for n, v in files.items() if b'"layers": [' in v)
    layer_desc = json.loads(files[manifest_name])["layers"][0]
    name = "blobs/sha256/" + layer_desc["digest"].split(":")[1]
    files[name] = files[name][:-20]
    err = refused(tmp_path, blobs, capsys, [], files=files)
    assert "blob is" in err  # its size no longer matches its descriptor
    layer_desc_fixed = dict(layer_desc, size=len(files[name]))
    doc = json.loads(files[manifest_name])
    doc["layers"][0] = layer_desc_fixed
    files[manifest_name] = json.dumps(doc).encode()
    # the manifest digest no longer matches its name, which we do not rely on: content is measured
    err = refused(tmp_path / "b", blobs, capsys, [], files=files)
    assert "gzip stream truncated" in err


def test_oversized_pax_header_refused_before_reading(
    tmp_path: Path, blobs: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    info = tarfile.TarInfo("././@PaxHeader")
    info.type = tarfile.XHDTYPE
    info.size = 2 << 20
    header = info.tobuf(tarfile.USTAR_FORMAT)
    layer = header + b"9 a=bcde\n" * ((2 << 20) // 9) + bytes(2 << 20) + bytes(1024)
    err = refused(tmp_path, blobs, capsys, [layer])
    assert "extended header" in err


def test_garbage_and_unsupported_members(
    tmp_path: Path, blobs: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert "checksum" in refused(tmp_path / "a", blobs, capsys, [b"\x01" * 2048])
    info = tarfile.TarInfo("sparse")
    info.type = tarfile.GNUTYPE_SPARSE
    err = refused(tmp_path / "b", blobs, capsys, [info.tobuf(tarfile.GNU_FORMAT) + bytes(1024)])
    assert "GNU sparse" in err
    zstd = b"\x28\xb5\x2f\xfd" + bytes(100)
    assert "zstd" in refused(tmp_path / "c", blobs, capsys, [zstd])


def test_decompression_bomb_capped(tmp_path: Path, blobs: Path) -> None:
    bomb = gzip.compress(layer_tar([f("zeros", bytes(4 << 20))]), mtime=0)
    src = write_dir(tmp_path / "oci", oci_files([bomb], CONFIG))
    opts = BuildOptions(src, blobs, tmp_path / "o.eif", limits=Limits(max_bytes=1 << 20))
    with pytest.raises(ImageError, match="decompression bomb"):
        build_eif(opts)
    # many small ones share one budget: three 600 KiB layers under a 1 MiB cap
    small = [gzip.compress(layer_tar([f(f"z{i}", bytes(600 << 10))]), mtime=0) for i in range(3)]
    src3 = write_dir(tmp_path / "oci3", oci_files(small, CONFIG))
    opts3 = BuildOptions(src3, blobs, tmp_path / "o.eif", limits=Limits(max_bytes=1 << 20))
    with pytest.raises(ImageError, match=r"layer 2 .*decompressed layers exceed"):
        build_eif(opts3)
    few = BuildOptions(src, blobs, tmp_path / "o.eif", limits=Limits(max_entries=0))
    with pytest.raises(ImageError, match="more than 0"):
        build_eif(few)


def test_hostile_layouts(tmp_path: Path, blobs: Path, capsys: pytest.CaptureFixture[str]) -> None:
    layer = layer_tar([f("a", b"a")])
    files = oci_files([layer], CONFIG)
    index = json.loads(files["index.json"])
    index["manifests"][0]["digest"] = "sha256:../../../../etc/passwd"
    files["index.json"] = json.dumps(index).encode()
    assert "is not sha256:<64 hex>" in refused(tmp_path / "a", blobs, capsys, [], files=files)

    two = json.loads(docker_save_files([layer], CONFIG)["manifest.json"]) * 2
    save = docker_save_files([layer], CONFIG) | {"manifest.json": json.dumps(two).encode()}
    src = write_tar(tmp_path / "two.tar", save)
    rc = main(["eif", "build", "--image", str(src), "--blobs", str(blobs),
               "--output", str(tmp_path / "o.eif")])  # fmt: skip
    assert rc == 1 and "exactly one image" in capsys.readouterr().err

    dup = io.BytesIO()
    with tarfile.open(fileobj=dup, mode="w") as tar:
        for _ in range(2):
            info = tarfile.TarInfo("manifest.json")
            tar.addfile(info, io.BytesIO(b""))
    (tmp_path / "dup.tar").write_bytes(dup.getvalue())
    rc = main(["eif", "build", "--image", str(tmp_path / "dup.tar"), "--blobs", str(blobs),
               "--output", str(tmp_path / "o.eif")])  # fmt: skip
    assert rc == 1 and "appears twice" in capsys.readouterr().err


def test_usage_errors_exit_2(
    tmp_path: Path, blobs: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rc = main(["eif", "build", "--image", str(tmp_path / "nope.tar"), "--blobs", str(blobs),
               "--output", str(tmp_path / "o.eif")])  # fmt: skip
    assert rc == 2 and "no such file" in capsys.readouterr().err
    src = write_dir(tmp_path / "oci", oci_files([layer_tar([f("a", b"a")])], config_json()))
    rc = main(["eif", "build", "--image", str(src), "--blobs", str(blobs),
               "--output", str(tmp_path / "o.eif")])  # fmt: skip
    assert rc == 1 and "give --cmd" in capsys.readouterr().err
    rc = main(["eif", "build", "--image", str(src), "--blobs", str(tmp_path),
               "--output", str(tmp_path / "o.eif"), "--cmd", "/a"])  # fmt: skip
    assert rc == 1 and "holds no bzImage or Image" in capsys.readouterr().err


def test_control_characters_in_names_are_escaped(
    tmp_path: Path, blobs: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    err = refused(tmp_path, blobs, capsys, [layer_tar([sym("\x1b[2Jx", "../../..")])])
    assert "\x1b" not in err and "\\x1b" in err


def test_deep_nesting_builds_without_recursion_errors(
    tmp_path: Path, blobs: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    deep = "a/" * 1500 + "leaf"
    src = write_dir(tmp_path / "oci", oci_files([layer_tar([f(deep, b"x")])], CONFIG))
    rc = main(["eif", "build", "--image", str(src), "--blobs", str(blobs),
               "--output", str(tmp_path / "o.eif")])  # fmt: skip
    assert rc == 0, capsys.readouterr().err
    got = summary(ramdisks((tmp_path / "o.eif").read_bytes())[1])
    assert got[deep][4] == b"x" and got["a/" * 1499 + "a"][0] == "d"


def test_values_newc_cannot_hold_are_refused(
    tmp_path: Path, blobs: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    err = refused(tmp_path, blobs, capsys, [layer_tar([f("big-uid", b"x", uid=1 << 33)])])
    assert "big-uid" in err and "32-bit" in err


@pytest.mark.parametrize("which", ["index.json", "OCI config", "docker save config"])
def test_json_documents_past_the_cap_are_refused_unread(
    which: str, tmp_path: Path, blobs: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    layer = layer_tar([f("a", b"a")])
    big = json.dumps({"pad": "x" * (4 << 20)}).encode()  # just past MAX_JSON (4 MiB)
    if which == "docker save config":
        src = write_tar(tmp_path / "save.tar", docker_save_files([layer], big))
        rc = main(["eif", "build", "--image", str(src), "--blobs", str(blobs),
                   "--output", str(tmp_path / "o.eif")])  # fmt: skip
        err = capsys.readouterr().err
        assert rc == 1 and len(err.strip().splitlines()) == 1
    else:
        files = oci_files([layer], big if which == "OCI config" else CONFIG)
        if which == "index.json":
            files["index.json"] = big
        err = refused(tmp_path, blobs, capsys, [], files=files)
    assert f"{len(big)} bytes, at most {4 << 20}" in err
