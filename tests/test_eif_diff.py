"""`eif diff` tells which section differs and, inside ramdisks, which paths and how."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from nitro_attest._cli import main

from .oci_helpers import E, config_json, f, layer_tar, oci_files, sym, write_blobs, write_dir


def _build(tmp: Path, name: str, entries: list[E], *extra: str) -> Path:
    blobs = write_blobs(tmp / "blobs")
    src = write_dir(tmp / f"src-{name}", oci_files([layer_tar(entries)], config_json(cmd=["/a"])))
    out = tmp / f"{name}.eif"
    assert main(["eif", "build", "--image", str(src), "--blobs", str(blobs),
                 "--output", str(out), *extra]) == 0  # fmt: skip
    return out


BASE = [
    f("app/main.py", b"print('hello')\n" * 100),
    f("app/other.py", b"x = 1\n"),
    f("bin/tool", b"tool", 0o755),
    sym("bin/link", "tool"),
]


def test_one_byte_change_names_the_path(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    changed = [f("app/main.py", b"print('hello')\n" * 99 + b"print('hellp')\n"), *BASE[1:]]
    a, b = _build(tmp_path, "a", BASE), _build(tmp_path, "b", changed)
    capsys.readouterr()
    assert main(["eif", "diff", str(a), str(b)]) == 1
    out = capsys.readouterr().out
    assert "(PCR0, PCR2 differ)" in out
    assert "RAMDISK (customer): content differs" in out
    assert "rootfs/app/main.py: content (sha256 " in out
    lines = [line.strip() for line in out.splitlines() if line.startswith("    ")]
    assert len(lines) == 1  # only that path; other.py, tool and the link are not listed


def test_mode_owner_link_and_added_paths(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    changed = [
        BASE[0], f("app/other.py", b"x = 1\n", 0o600, 1000, 1000), f("bin/tool", b"tool", 0o4755),
        sym("bin/link", "other"), f("new", b""),
    ]  # fmt: skip
    a, b = _build(tmp_path, "a", BASE), _build(tmp_path, "b", changed)
    capsys.readouterr()
    assert main(["eif", "diff", str(a), str(b), "--json"]) == 1
    report = json.loads(capsys.readouterr().out)
    assert report["Identical"] is False and report["PCRsDiffer"] == ["PCR0", "PCR2"]
    (section,) = report["Sections"]
    assert section["Type"] == "RAMDISK (customer)"
    assert section["Details"] == [
        "rootfs/app/other.py: mode 0644 -> 0600, owner 0:0 -> 1000:1000",
        "rootfs/bin/link: link target tool -> other",
        "rootfs/bin/tool: mode 0755 -> 4755",
        "rootfs/new: only in B",
    ]


def test_identical_and_cmd_and_metadata(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    a = _build(tmp_path, "a", BASE)
    b = _build(tmp_path, "b", BASE)
    capsys.readouterr()
    assert main(["eif", "diff", str(a), str(b)]) == 0
    assert "are identical" in capsys.readouterr().out
    c = _build(tmp_path, "c", BASE, "--cmd", "/other")
    capsys.readouterr()
    assert main(["eif", "diff", str(a), str(c)]) == 1
    out = capsys.readouterr().out
    assert "cmd: content" in out and "rootfs/" not in out


def test_metadata_only_difference_changes_no_pcr(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    entries = [E(e.name, e.kind, e.data, e.mode, link=e.link, mtime=0) for e in BASE]
    a = _build(tmp_path, "a", entries)
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "86400")  # image mtimes are 0: only BuildTime moves
    b = _build(tmp_path, "b", entries)
    capsys.readouterr()
    assert main(["eif", "diff", str(a), str(b)]) == 1
    out = capsys.readouterr().out
    assert out.splitlines()[0].endswith("differ")  # no PCR named
    assert "METADATA" in out and "BuildMetadata.BuildTime" in out and "RAMDISK" not in out


def test_not_an_eif_is_rejected_as_describe_does(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "x").write_bytes(b"nope" * 200)
    assert main(["eif", "diff", str(tmp_path / "x"), str(tmp_path / "x")]) == 1  # docs/cli.md
    assert "not an EIF" in capsys.readouterr().err
    assert main(["eif", "describe", str(tmp_path / "x")]) == 1


def test_hostile_metadata_does_not_crash_diff(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from nitro_attest.eif.writer import write_eif

    deep = b'{"ImageName": "a", "ImageVersion": "1", "BuildMetadata": {}, "x": ' + b"[" * 5000
    deep += b"]" * 5000 + b"}"
    for name, meta in (("a", deep), ("b", b'{"ImageName": "b"}')):
        write_eif(tmp_path / f"{name}.eif", kernel=b"k", cmdline=b"c", ramdisks=[b"r"],
                  metadata=meta)  # fmt: skip
    assert main(["eif", "diff", str(tmp_path / "a.eif"), str(tmp_path / "b.eif")]) == 1
    out = capsys.readouterr().out
    assert "METADATA" in out and "not comparable as JSON" in out
