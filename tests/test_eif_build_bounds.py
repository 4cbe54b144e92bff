"""Threat model: image builder, resource bounds. Small hostile images must not buy large memory
or long work: many long-named members in one layer, whiteouts past the entry limit, a layer named
many times, header-only layers. The bombs are generated here and each test runs in seconds."""

from __future__ import annotations

import json
import subprocess
import sys
import tarfile
import zlib
from pathlib import Path

import pytest

from nitro_attest._cli import main
from nitro_attest.eif.blobs import ImageError
from nitro_attest.eif.build import BuildOptions, build_eif
from nitro_attest.eif.layer import Limits

from .oci_helpers import (
    config_json,
    docker_save_files,
    f,
    layer_tar,
    oci_files,
    ramdisks,
    summary,
    whiteout,
    write_blobs,
    write_dir,
    write_tar,
)

CONFIG = config_json(cmd=["/app"])
MIB = 1 << 20


@pytest.fixture
def blobs(tmp_path: Path) -> Path:
    return write_blobs(tmp_path / "blobs")


def long_name_bomb(members: int = 20_000) -> bytes:
    """``members`` empty files in one folder 2,040 levels down: GNU long names of 4,087 bytes,
    each split into 2,041 components. The tree it makes is small (2,040 folders and the files);
    a builder that keeps every member with its split path holds ~17 KB per member."""
    prefix = "d/" * 2040
    unit = tarfile.TarInfo(prefix + "0" * 7).tobuf(tarfile.GNU_FORMAT)
    at = unit.index(prefix.encode()) + len(prefix)
    # the long-name header and the member's own header are the same for every member (the
    # member header holds the name's first 100 bytes): only the name block differs
    head, tail = unit[:at], unit[at + 7 :]
    body = b"".join(head + b"%07d" % i + tail for i in range(members))
    deflate = zlib.compressobj(6, wbits=31)
    return deflate.compress(body + bytes(1024)) + deflate.flush()


_MEASURED = """
import sys
from nitro_attest._cli import main
rc = main(sys.argv[1:])
with open("/proc/self/status") as fh:
    hwm = next(line.split()[1] for line in fh if line.startswith("VmHWM:"))
sys.stderr.write(f"VmHWM {hwm}\\n")
sys.exit(rc)
"""


def _peak_rss_mib(args: list[str]) -> tuple[int, float, str]:
    """Run the CLI in a child process: its exit status, peak RSS (MiB, the child's own VmHWM:
    wait4's ru_maxrss would count the pytest process it was forked from) and stderr."""
    proc = subprocess.run([sys.executable, "-c", _MEASURED, *args], stdout=subprocess.DEVNULL,
                          stderr=subprocess.PIPE, text=True, timeout=120, check=False)  # fmt: skip
    *err, last = proc.stderr.strip().splitlines() or [""]
    assert last.startswith("VmHWM "), proc.stderr
    return proc.returncode, int(last.split()[1]) / 1024, "\n".join(err)


def test_many_long_named_members_stay_within_the_memory_bound(
    tmp_path: Path, blobs: Path
) -> None:
    bomb = long_name_bomb()
    assert len(bomb) < 512 << 10  # what the supplier sends
    src = write_dir(tmp_path / "oci", oci_files([bomb], CONFIG))
    out = tmp_path / "o.eif"
    rc, peak, err = _peak_rss_mib(["eif", "build", "--image", str(src), "--blobs", str(blobs),
                                   "--output", str(out)])  # fmt: skip
    assert rc == 0, err
    # the interpreter and imports (~40 MiB), at most 16 MiB of members kept while the layer's
    # whiteouts are unknown, the writer's 2 MiB ring and the tree (2,040 folders, 20,000 files);
    # keeping every member with its split path took ~500 MiB
    assert peak < 96, f"peak RSS {peak:.0f} MiB"
    got = summary(ramdisks(out.read_bytes())[1])
    assert ("d/" * 2040 + "0019999") in got and len(got) == 2040 + 20_000 + 6  # + mount dirs


def test_long_path_work_is_bounded(tmp_path: Path, blobs: Path) -> None:
    src = write_dir(tmp_path / "oci", oci_files([long_name_bomb(100)], CONFIG))
    few = Limits(max_components=150 * 2041)
    assert build_eif(BuildOptions(src, blobs, tmp_path / "o.eif", limits=few)).entries == 100
    fewer = Limits(max_components=50 * 2041)
    with pytest.raises(ImageError, match="path components"):
        build_eif(BuildOptions(src, blobs, tmp_path / "o.eif", limits=fewer))


def test_order_of_whiteouts_still_does_not_matter_past_the_keep_budget(
    tmp_path: Path, blobs: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Past the budget the layer's entries are applied in a second read; its whiteouts, wherever
    they sit, still hide only the layers below."""
    from nitro_attest.eif import layer

    monkeypatch.setattr(layer, "KEEP_BUDGET", 1)  # every layer goes the second-read way
    lower = layer_tar([f("a/old", b"old"), f("b", b"lower b")])
    upper = layer_tar([f("a/new", b"new"), f("b", b"upper b"), whiteout("b"), whiteout("a")])
    src = write_dir(tmp_path / "oci", oci_files([lower, upper], CONFIG))
    build_eif(BuildOptions(src, blobs, tmp_path / "o.eif"))
    got = summary(ramdisks((tmp_path / "o.eif").read_bytes())[1])
    assert got["b"][4] == b"upper b" and got["a/new"][4] == b"new" and "a/old" not in got


def test_whiteouts_count_towards_the_entry_limit(tmp_path: Path, blobs: Path) -> None:
    layers = [layer_tar([whiteout(f"w{i}") for i in range(40)]) for _ in range(3)]
    src = write_dir(tmp_path / "oci", oci_files(layers, CONFIG))
    with pytest.raises(ImageError, match="more than 100 entries"):
        build_eif(BuildOptions(src, blobs, tmp_path / "o.eif", limits=Limits(max_entries=100)))
    ok = Limits(max_entries=120)
    assert build_eif(BuildOptions(src, blobs, tmp_path / "o.eif", limits=ok)).entries == 120


def test_header_only_layers_are_bounded_by_the_work_limit(tmp_path: Path, blobs: Path) -> None:
    """Global PAX headers carry no member: 2,000 of them would be free without a header bound."""
    info = tarfile.TarInfo("pax_global_header")
    info.type = tarfile.XGLTYPE
    info.size = 10
    one = info.tobuf(tarfile.USTAR_FORMAT) + b"10 a=bcd\n\n".ljust(512, b"\0")
    layer = one * 2000 + layer_tar([f("app", b"x")])
    src = write_dir(tmp_path / "oci", oci_files([layer], CONFIG))
    with pytest.raises(ImageError, match="more than 1000 tar headers"):
        build_eif(BuildOptions(src, blobs, tmp_path / "o.eif", limits=Limits(max_headers=1000)))
    assert build_eif(BuildOptions(src, blobs, tmp_path / "o.eif")).entries == 1


def _big_layer() -> bytes:
    return layer_tar([f("app", b"x" * (80 << 10))])  # past the 64 KiB allowed to repeat


def test_docker_save_naming_a_layer_twice_is_refused(
    tmp_path: Path, blobs: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    files = docker_save_files([_big_layer()], CONFIG)
    manifest = json.loads(files["manifest.json"])
    manifest[0]["Layers"] = manifest[0]["Layers"] * 256
    files["manifest.json"] = json.dumps(manifest).encode()
    for src in (write_dir(tmp_path / "dir", files), write_tar(tmp_path / "save.tar", files)):
        rc = main(["eif", "build", "--image", str(src), "--blobs", str(blobs),
                   "--output", str(tmp_path / "o.eif")])  # fmt: skip
        err = capsys.readouterr().err
        assert rc == 1 and len(err.strip().splitlines()) == 1, err
        assert "layer 2" in err and "same as layer 1" in err


def test_docker_save_repeating_a_layer_through_links_is_refused(
    tmp_path: Path, blobs: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Old docker save links a repeated layer to the first: the same bytes under two names."""
    big = _big_layer()
    files = docker_save_files([big, big], CONFIG)
    img = write_dir(tmp_path / "img", files)
    names = json.loads(files["manifest.json"])[0]["Layers"]
    (img / names[1]).unlink()
    (img / names[1]).symlink_to(f"../{names[0]}")
    rc = main(["eif", "build", "--image", str(img), "--blobs", str(blobs),
               "--output", str(tmp_path / "o.eif")])  # fmt: skip
    err = capsys.readouterr().err
    assert rc == 1 and "same as layer 1" in err, err


def test_oci_manifest_naming_a_layer_twice_is_refused(tmp_path: Path, blobs: Path) -> None:
    files = oci_files([_big_layer()], CONFIG, gz=True)
    name = next(n for n, v in files.items() if b'"layers": [' in v)
    doc = json.loads(files[name])
    doc["layers"] = doc["layers"] * 3
    files[name] = json.dumps(doc).encode()
    index = json.loads(files["index.json"])
    index["manifests"][0]["size"] = len(files[name])
    files["index.json"] = json.dumps(index).encode()
    src = write_dir(tmp_path / "oci", files)
    with pytest.raises(ImageError, match=r"layer 2 .*same as layer 1"):
        build_eif(BuildOptions(src, blobs, tmp_path / "o.eif"))


def test_a_small_layer_may_repeat(tmp_path: Path, blobs: Path) -> None:
    """Identical empty layers (`RUN true`) repeat in real images; they cost nothing to apply."""
    empty = layer_tar([])
    src = write_dir(tmp_path / "oci", oci_files([layer_tar([f("app", b"x")]), empty, empty],
                                                CONFIG, gz=True))  # fmt: skip
    assert build_eif(BuildOptions(src, blobs, tmp_path / "o.eif")).entries == 1


def test_block_sum_is_the_byte_sum() -> None:
    import random

    from nitro_attest.eif.tar import block_sum

    rng = random.Random(5)
    blocks = [bytes(512), b"\xff" * 512, b"\xff" * 256 + bytes(256), bytes(256) + b"\xff" * 256]
    blocks += [rng.randbytes(512) for _ in range(200)]
    for block in blocks:
        assert block_sum(block) == sum(block)
