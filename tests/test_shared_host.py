"""Hygiene on a shared host: socket permissions, symlinks in the simulator state, PCR indexes."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from nitro_attest._cli import main
from nitro_attest.nsm.simulator.state import (
    SimulatorConfig,
    SimulatorStateError,
    init_state,
    load_state,
    open_state,
)
from nitro_attest.wire import client
from tests.serverkit import running_server


@contextmanager
def _umask(mask: int) -> Iterator[None]:
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


def _mode(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


# --- the server's Unix socket -------------------------------------------------------------------


def test_unix_socket_is_owner_only_whatever_the_umask(tmp_path: Path) -> None:
    path = tmp_path / "s.sock"
    with _umask(0o000), running_server(f"unix://{path}") as (addr, _server, _logs):
        assert _mode(path) == 0o600
        assert client.request_attestation(str(addr), nonce=b"x").startswith(b"FAKE|x")


def test_socket_mode_widens_on_request(tmp_path: Path) -> None:
    path = tmp_path / "s.sock"
    with _umask(0o077), running_server(f"unix://{path}", socket_mode=0o660):
        assert _mode(path) == 0o660


def _serve(tmp_path: Path, *extra: str) -> subprocess.Popen[bytes]:
    state = tmp_path / "sim"
    return subprocess.Popen(
        [sys.executable, "-c", "from nitro_attest._cli import entrypoint; entrypoint()", "serve",
         "--listen", f"unix://{tmp_path / 's.sock'}", "--nsm", "simulator", "--state", str(state),
         *extra],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, preexec_fn=lambda: os.umask(0),
    )  # fmt: skip


@pytest.mark.parametrize(("extra", "mode"), [((), 0o600), (("--socket-mode", "0660"), 0o660)])
def test_serve_cli_socket_mode_under_umask_000(
    tmp_path: Path, extra: tuple[str, ...], mode: int
) -> None:
    proc = _serve(tmp_path, *extra)
    try:
        deadline = time.monotonic() + 20
        while not (tmp_path / "s.sock").exists():
            assert proc.poll() is None and time.monotonic() < deadline
            time.sleep(0.05)
        assert _mode(tmp_path / "s.sock") == mode
        # The state folder the server created under umask 000 is still private too.
        assert _mode(tmp_path / "sim") == 0o700
    finally:
        proc.terminate()
        proc.wait(10)


@pytest.mark.parametrize("value", ["0060", "0400", "01777", "rw", "9"])
def test_serve_refuses_odd_socket_modes(value: str, capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(["serve", "--listen", "unix:///tmp/x.sock", "--nsm", "simulator",
               "--socket-mode", value])  # fmt: skip
    err = capsys.readouterr().err
    assert rc == 2 and "--socket-mode" in err and len(err.strip().splitlines()) == 1


# --- the simulator's state folder ---------------------------------------------------------------


def _config() -> SimulatorConfig:
    return SimulatorConfig(instance_id="i-0123456789abcdef0")


def test_symlinked_state_folder_is_refused(tmp_path: Path) -> None:
    target = tmp_path / "elsewhere"
    target.mkdir(mode=0o755)
    link = tmp_path / "state"
    link.symlink_to(target)
    for action in (
        lambda: init_state(link, _config()),
        lambda: open_state(link),
        lambda: load_state(link),
    ):
        with pytest.raises(SimulatorStateError, match="symbolic link"):
            action()
    assert list(target.iterdir()) == []  # nothing created through the link
    assert _mode(target) == 0o755  # and its mode was not touched


def test_symlinked_state_folder_cli_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    real = tmp_path / "real"
    init_state(real, _config())
    link = tmp_path / "link"
    link.symlink_to(real)
    assert main(["sim", "attest", "--state", str(link)]) == 2
    err = capsys.readouterr().err
    assert "symbolic link" in err and str(real) in err and "Traceback" not in err


def test_symlinked_lock_file_is_refused_and_its_target_untouched(tmp_path: Path) -> None:
    state = tmp_path / "state"
    init_state(state, _config())
    victim = tmp_path / "victim"
    victim.write_text("keep me")
    (state / ".lock").unlink()
    (state / ".lock").symlink_to(victim)
    with pytest.raises(SimulatorStateError, match=r"\.lock: is a symbolic link"):
        load_state(state)
    dangling = tmp_path / "would-be-created"
    (state / ".lock").unlink()
    (state / ".lock").symlink_to(dangling)
    with pytest.raises(SimulatorStateError, match="symbolic link"):
        init_state(state, _config(), force=True)
    assert victim.read_text() == "keep me"
    assert not dangling.exists()


# --- PCR indexes in the simulator's measurements ------------------------------------------------


@pytest.mark.parametrize(
    ("key", "needle"),
    [("-1", "'-1' is not a PCR index"), ("99", "PCR99 is not an image PCR"),
     ("31", "PCR31 is not an image PCR"), ("x", "'x' is not a PCR index")],
)  # fmt: skip
def test_out_of_range_pcr_in_state_measurements_is_a_clear_error(
    tmp_path: Path, key: str, needle: str, capsys: pytest.CaptureFixture[str]
) -> None:
    state = tmp_path / "state"
    init_state(state, _config())
    config = json.loads((state / "config.json").read_text())
    value = "ab" * 48
    config["measurements"] = {"0": value, "1": value, "2": value, key: value}
    (state / "config.json").write_text(json.dumps(config))
    assert main(["sim", "describe", "--state", str(state)]) == 2
    err = capsys.readouterr().err
    assert needle in err and "config.json" in err
    assert "IndexError" not in err and "internal error" not in err


def test_out_of_range_pcr_in_measurements_file_is_a_clear_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    value = "ab" * 48
    for key, needle in (("PCR32", "PCR index 32 outside 0..31"), ("PCR-1", "unexpected key")):
        meas = tmp_path / "m.json"
        pcrs = {"PCR0": value, "PCR1": value, "PCR2": value, key: value}
        meas.write_text(json.dumps({"Measurements": pcrs}))
        rc = main(["sim", "init", "--state", str(tmp_path / "s"), "--measurements", str(meas)])
        err = capsys.readouterr().err
        assert rc == 2 and needle in err, err
