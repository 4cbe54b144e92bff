"""Threat model: image builder, as whoever supplies the image or shares the build host. The image
folder, a rootfs folder and the output folder may hold planted symlinks, and a folder may be
swapped while the build runs: the builder must never read or write a host file through them."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from nitro_attest._cli import main
from nitro_attest.eif import build as build_module
from nitro_attest.eif.layer import Limits, Totals
from nitro_attest.eif.rootfs import RootFs

from .oci_helpers import (
    config_json,
    docker_save_files,
    f,
    layer_tar,
    oci_files,
    ramdisks,
    summary,
    write_blobs,
    write_dir,
)

CONFIG = config_json(cmd=["/app"])
SECRET = b"host secret: never in an image\n"


@pytest.fixture
def blobs(tmp_path: Path) -> Path:
    return write_blobs(tmp_path / "blobs")


def build(image: Path, blobs: Path, out: Path, *extra: str) -> int:
    return main(["eif", "build", "--image", str(image), "--blobs", str(blobs),
                 "--output", str(out), *extra])  # fmt: skip


def one_line_refusal(rc: int, capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err
    assert rc == 1, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    return err


# 21.8: the temporary output


def test_planted_link_at_the_temporary_name_is_not_followed(
    tmp_path: Path, blobs: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    victim = tmp_path / "victim"
    victim.write_bytes(SECRET)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    # every name the old builder used, for this process; and a dangling one (creates a file)
    os.symlink(victim, out_dir / f".app.eif.partial-{os.getpid()}")
    src = write_dir(tmp_path / "oci", oci_files([layer_tar([f("app", b"x")])], CONFIG))
    assert build(src, blobs, out_dir / "app.eif") == 0, capsys.readouterr().err
    assert victim.read_bytes() == SECRET
    assert (out_dir / "app.eif").read_bytes()[:4] == b".eif"
    leftovers = sorted(p.name for p in out_dir.iterdir())
    assert leftovers == [f".app.eif.partial-{os.getpid()}", "app.eif"]  # the link, untouched
    assert (out_dir / leftovers[0]).is_symlink()


def test_temporary_output_is_not_left_behind_on_failure(
    tmp_path: Path, blobs: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src = write_dir(tmp_path / "oci", oci_files([layer_tar([f("proc", b"x")])], CONFIG))
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    one_line_refusal(build(src, blobs, out_dir / "app.eif"), capsys)
    assert list(out_dir.iterdir()) == []


# 21.9: image-controlled paths in an image folder


def _host_layer(tmp_path: Path) -> Path:
    host = tmp_path / "host" / "backups"
    host.mkdir(parents=True)
    (host / "x.tar").write_bytes(layer_tar([f("stolen", SECRET)]))
    return host.parent


def test_docker_save_folder_layer_through_a_symlinked_folder(
    tmp_path: Path, blobs: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    host = _host_layer(tmp_path)
    files = docker_save_files([layer_tar([f("app", b"x")])], CONFIG)
    manifest = json.loads(files["manifest.json"])
    manifest[0]["Layers"] = ["h/backups/x.tar"]
    files["manifest.json"] = json.dumps(manifest).encode()
    for target in (str(host), "../host", "/"):
        img = write_dir(tmp_path / f"img-{len(target)}", files)
        os.symlink(target, img / "h")
        out = tmp_path / "o.eif"
        err = one_line_refusal(build(img, blobs, out), capsys)
        assert "symlink" in err and "h" in err, err
        assert not out.exists()


def test_oci_folder_whose_blobs_is_a_link_to_another_store(
    tmp_path: Path, blobs: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    files = oci_files([layer_tar([f("app", b"x")])], CONFIG)
    in_blobs = {k: v for k, v in files.items() if k.startswith("blobs/")}
    store = write_dir(tmp_path / "store", in_blobs)
    img = write_dir(tmp_path / "img", {k: v for k, v in files.items() if k not in in_blobs})
    os.symlink(store / "blobs", img / "blobs")
    err = one_line_refusal(build(img, blobs, tmp_path / "o.eif"), capsys)
    assert "symlink" in err and "blobs" in err


def test_final_component_link_out_of_the_image_folder(
    tmp_path: Path, blobs: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    host = _host_layer(tmp_path)
    files = docker_save_files([layer_tar([f("app", b"x")])], CONFIG)
    img = write_dir(tmp_path / "img", files)
    layer_name = json.loads(files["manifest.json"])[0]["Layers"][0]
    (img / layer_name).unlink()
    os.symlink(host / "backups" / "x.tar", img / layer_name)
    err = one_line_refusal(build(img, blobs, tmp_path / "o.eif"), capsys)
    assert "symlink" in err


def test_legacy_duplicate_layer_links_inside_the_folder_still_work(
    tmp_path: Path, blobs: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """docker save (before 25) writes a repeated layer as `B/layer.tar -> ../A/layer.tar`."""
    first, second = layer_tar([f("app", b"one")]), layer_tar([f("b", b"two")])
    files = docker_save_files([first, second, first], CONFIG)
    img = write_dir(tmp_path / "img", files)
    names = json.loads(files["manifest.json"])[0]["Layers"]
    (img / names[2]).unlink()
    os.symlink(f"../{names[0]}", img / names[2])
    assert build(img, blobs, tmp_path / "o.eif") == 0, capsys.readouterr().err
    got = summary(ramdisks((tmp_path / "o.eif").read_bytes())[1])
    assert got["app"][4] == b"one" and got["b"][4] == b"two"


# 21.10: a rootfs folder swapped while the build runs


def _rootfs(tmp_path: Path) -> Path:
    root = tmp_path / "rootfs"
    (root / "app").mkdir(parents=True)
    (root / "app" / "data").write_bytes(b"image data, same size as the secret!"[: len(SECRET)])
    (root / "zz").mkdir()  # walked last: the builder holds no descriptor of app/ when it swaps
    (root / "zz" / "f").write_bytes(b"z")
    return root


def _swap_after_scan(monkeypatch: pytest.MonkeyPatch, swap: object) -> None:
    real = build_module.scan_dir

    def scan_then_swap(root: Path, limits: Limits, totals: Totals, *rest: object) -> RootFs:
        fs = real(root, limits, totals, *rest)  # type: ignore[call-arg]
        swap()  # type: ignore[operator]
        return fs

    monkeypatch.setattr(build_module, "scan_dir", scan_then_swap)


def test_rootfs_folder_swapped_for_a_symlink_after_the_walk(
    tmp_path: Path, blobs: Path, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    root = _rootfs(tmp_path)
    host = tmp_path / "host"
    host.mkdir()
    (host / "data").write_bytes(SECRET)

    def swap() -> None:
        os.rename(root / "app", root / "app.old")
        os.symlink(host, root / "app")

    _swap_after_scan(monkeypatch, swap)
    out = tmp_path / "o.eif"
    err = one_line_refusal(build(root, blobs, out, "--cmd", "/app/run"), capsys)
    assert "app" in err
    assert not out.exists()


def test_rootfs_file_replaced_by_another_of_the_same_size(
    tmp_path: Path, blobs: Path, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    root = _rootfs(tmp_path)

    def swap() -> None:
        (root / "other").write_bytes(SECRET)
        os.rename(root / "other", root / "app" / "data")

    _swap_after_scan(monkeypatch, swap)
    err = one_line_refusal(build(root, blobs, tmp_path / "o.eif", "--cmd", "/app/run"), capsys)
    assert "changed" in err


def test_rootfs_with_symlinks_inside_still_builds(
    tmp_path: Path, blobs: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = _rootfs(tmp_path)
    os.symlink("app/data", root / "link")
    (root / "deep" / "er").mkdir(parents=True)
    (root / "deep" / "er" / "f").write_bytes(b"deep")
    os.link(root / "deep" / "er" / "f", root / "hard")
    assert build(root, blobs, tmp_path / "o.eif", "--cmd", "/app/run") == 0, (
        capsys.readouterr().err
    )
    got = summary(ramdisks((tmp_path / "o.eif").read_bytes())[1])
    assert got["link"][0] == "l" and got["deep/er/f"][4] == b"deep"


def test_rootfs_deeper_than_the_open_folder_chain(
    tmp_path: Path, blobs: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = tmp_path / "rootfs"
    deep = root.joinpath(*["d"] * 300)  # past MAX_CHAIN (128): folders opened for one use
    deep.mkdir(parents=True)
    (deep / "leaf").write_bytes(b"deep leaf")
    (root / "d" / "top").write_bytes(b"top")
    assert build(root, blobs, tmp_path / "o.eif", "--cmd", "/x") == 0, capsys.readouterr().err
    got = summary(ramdisks((tmp_path / "o.eif").read_bytes())[1])
    assert got["d/" * 300 + "leaf"][4] == b"deep leaf" and got["d/top"][4] == b"top"


def test_rootfs_folder_swapped_for_a_symlink_during_the_walk(
    tmp_path: Path, blobs: Path, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    """Between the parent's listing (app is a folder) and app's own listing."""
    from nitro_attest.eif.beneath import DirChain

    root = _rootfs(tmp_path)
    host = tmp_path / "host"
    host.mkdir()
    (host / "data").write_bytes(SECRET)
    real = DirChain.folder

    def swap_first(self: DirChain, parts: list[bytes], ident: tuple[int, int]) -> object:
        if parts == [b"app"] and not (root / "app.old").exists():
            os.rename(root / "app", root / "app.old")
            os.symlink(host, root / "app")
        return real(self, parts, ident)

    monkeypatch.setattr(DirChain, "folder", swap_first)
    out = tmp_path / "o.eif"
    err = one_line_refusal(build(root, blobs, out, "--cmd", "/x"), capsys)
    assert "app" in err and "symlink" in err
    assert not out.exists()


def test_rootfs_folder_replaced_by_another_folder_during_the_walk(
    tmp_path: Path, blobs: Path, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    from nitro_attest.eif.beneath import DirChain

    root = _rootfs(tmp_path)
    real = DirChain.folder

    def swap_first(self: DirChain, parts: list[bytes], ident: tuple[int, int]) -> object:
        if parts == [b"app"] and not (root / "app.old").exists():
            os.rename(root / "app", root / "app.old")
            (root / "app").mkdir()
        return real(self, parts, ident)

    monkeypatch.setattr(DirChain, "folder", swap_first)
    err = one_line_refusal(build(root, blobs, tmp_path / "o.eif", "--cmd", "/x"), capsys)
    assert "changed during the build" in err


def test_link_loops_inside_the_image_folder_end(
    tmp_path: Path, blobs: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    files = docker_save_files([layer_tar([f("app", b"x")])], CONFIG)
    manifest = json.loads(files["manifest.json"])
    manifest[0]["Layers"] = ["a/layer.tar"]
    files["manifest.json"] = json.dumps(manifest).encode()
    img = write_dir(tmp_path / "img", files)
    os.symlink("b", img / "a")
    os.symlink("a", img / "b")
    err = one_line_refusal(build(img, blobs, tmp_path / "o.eif"), capsys)
    assert "more than 8 symlinks" in err
