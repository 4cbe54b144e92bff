"""Commands that write where the user says never write through another user's links
(issue 26, item 3).

Threat: another user of a shared host plants a link in the output folder (`client/` of a shared
checkout, /tmp): `client/attestation-document.dat -> /home/victim/.bashrc`. Writing must replace
the link, never its target; and a folder another user controls is refused, since they could swap
what we write after the fact.
"""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from nitro_attest import safe_write
from nitro_attest._cli import main
from nitro_attest.safe_write import UnsafeFolderError, write_file
from nitro_attest.wire.client import DOCUMENT_FILE, DOCUMENT_JSON_FILE

from .channel_helpers import Enclave

VICTIM = b"the victim's file: must never change\n"


@pytest.fixture
def planted(tmp_path: Path) -> Iterator[tuple[Path, Path]]:
    """An output folder and a victim file outside it."""
    out = tmp_path / "out"
    out.mkdir(mode=0o755)
    os.chmod(out, 0o755)
    victim = tmp_path / "victim"
    victim.write_bytes(VICTIM)
    yield out, victim


def _plant(out: Path, name: str, victim: Path) -> None:
    (out / name).symlink_to(victim)


def _other_owner(folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Make ``folder`` belong to someone else: chown as root, else pretend to be another uid."""
    if os.geteuid() == 0:
        os.chown(folder, 65534, 65534)
    else:
        monkeypatch.setattr(safe_write.os, "geteuid", lambda: os.getuid() + 4242)


def test_a_planted_link_is_replaced_never_followed(planted: tuple[Path, Path]) -> None:
    out, victim = planted
    _plant(out, "f.json", victim)
    write_file(out / "f.json", b"ours\n")
    assert victim.read_bytes() == VICTIM
    assert not (out / "f.json").is_symlink() and (out / "f.json").read_bytes() == b"ours\n"
    assert sorted(p.name for p in out.iterdir()) == ["f.json"]  # no temporary left behind


def test_a_dangling_link_does_not_create_its_target(planted: tuple[Path, Path]) -> None:
    out, victim = planted
    elsewhere = victim.parent / "created-by-planter"
    (out / "f.json").symlink_to(elsewhere)
    write_file(out / "f.json", b"ours\n")
    assert not elsewhere.exists() and (out / "f.json").read_bytes() == b"ours\n"


def test_mode_whatever_the_umask(planted: tuple[Path, Path]) -> None:
    out, _ = planted
    old = os.umask(0)
    try:
        write_file(out / "a", b"x")
        write_file(out / "b", b"x", mode=0o600)
    finally:
        os.umask(old)
    assert stat.S_IMODE((out / "a").stat().st_mode) == 0o644
    assert stat.S_IMODE((out / "b").stat().st_mode) == 0o600


def test_folder_writable_by_others_refused_unless_sticky(
    planted: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    out, victim = planted
    monkeypatch.setattr(safe_write, "_private_group", lambda gid: False)  # a team's group
    for mode in (0o777, 0o775, 0o757):
        os.chmod(out, mode)
        with pytest.raises(UnsafeFolderError, match="others may write in it"):
            write_file(out / "f", b"x")
        assert not (out / "f").exists()
    os.chmod(out, 0o1777)  # like /tmp: nobody can replace what we own there
    _plant(out, "f", victim)
    write_file(out / "f", b"x")
    assert victim.read_bytes() == VICTIM and (out / "f").read_bytes() == b"x"


def test_group_write_of_our_private_group_is_ours(
    planted: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """umask 002 on a user-private-group system makes every folder 0775: still only ours."""
    out, _ = planted
    os.chmod(out, 0o775)
    monkeypatch.setattr(safe_write, "_private_group", lambda gid: True)
    write_file(out / "f", b"x")
    os.chmod(out, 0o777)  # world-writable stays refused
    with pytest.raises(UnsafeFolderError):
        write_file(out / "g", b"x")


def test_private_group_rule() -> None:
    import grp
    import pwd

    user = pwd.getpwuid(os.geteuid())
    try:
        own = grp.getgrgid(user.pw_gid)
    except KeyError:
        own = None
    expected = (own is not None and own.gr_name == user.pw_name
                and all(m == user.pw_name for m in own.gr_mem))  # fmt: skip
    assert safe_write._private_group(user.pw_gid) is expected
    others = [g.gr_gid for g in grp.getgrall() if g.gr_gid != user.pw_gid]
    assert all(safe_write._private_group(gid) is False for gid in others[:5])


def test_folder_of_another_user_refused(
    planted: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    out, _ = planted
    _other_owner(out, monkeypatch)
    with pytest.raises(UnsafeFolderError, match="belongs to another user"):
        write_file(out / "f", b"x")
    assert not (out / "f").exists()


def test_attest_out_dir_with_planted_links(
    sim_server: Enclave, planted: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    out, victim = planted
    _plant(out, DOCUMENT_FILE, victim)
    _plant(out, DOCUMENT_JSON_FILE, victim)
    root = out.parent / "root.pem"
    root.write_bytes(sim_server.root)
    argv = ["attest", "--connect", sim_server.address, "--root", str(root), "--out-dir", str(out)]
    assert main(argv) == 0
    capsys.readouterr()
    assert victim.read_bytes() == VICTIM
    assert json.loads((out / DOCUMENT_JSON_FILE).read_text())["authenticated"] is True
    assert not (out / DOCUMENT_FILE).is_symlink()
    os.chmod(out, 0o777)
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "--out-dir" in err and "others may write in it" in err and len(err.splitlines()) == 1


def test_sim_measurements_and_attest_out(
    sim_state: Path, planted: tuple[Path, Path], capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    out, victim = planted
    _plant(out, "expected.json", victim)
    _plant(out, "doc.cbor", victim)
    state = ["--state", str(sim_state)]
    measure = ["sim", "measurements", *state, "--write-expected"]
    assert main([*measure, str(out / "expected.json")]) == 0
    assert main(["sim", "attest", *state, "--out", str(out / "doc.cbor")]) == 0
    capsys.readouterr()
    assert victim.read_bytes() == VICTIM
    assert "Measurements" in json.loads((out / "expected.json").read_text())
    _other_owner(out, monkeypatch)
    assert main([*measure, str(out / "e2.json")]) == 2
    assert "belongs to another user" in capsys.readouterr().err


def test_eif_measure_write_expected(
    eif_dir: Path, planted: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    out, victim = planted
    _plant(out, "expected.json", victim)
    vector = json.loads((eif_dir / "expected.json").read_text())["vectors"][3]
    argv = ["eif", "measure", str(eif_dir / vector["file"]), "--write-expected"]
    assert main([*argv, str(out / "expected.json")]) == 0
    capsys.readouterr()
    assert victim.read_bytes() == VICTIM
    assert json.loads((out / "expected.json").read_text())["Measurements"]["PCR0"]
    os.chmod(out, 0o777)
    assert main([*argv, str(out / "expected.json")]) == 2
    assert "others may write in it" in capsys.readouterr().err
