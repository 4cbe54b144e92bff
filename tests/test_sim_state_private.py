"""The simulator's state folder stays private (issue 26, item 6).

Threat: another local user of the host. Under umask 000 the parents `sim init` created were
0777, and `load_state` took any folder, so another user could swap in a state whose CA keys they
know, and every document the simulator signs would be theirs to forge.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from nitro_attest.nsm.simulator import state as state_mod
from nitro_attest.nsm.simulator.state import (
    SimulatorConfig,
    SimulatorStateError,
    init_state,
    load_state,
    open_state,
)

CONFIG = SimulatorConfig(instance_id="i-0123456789abcdef0")


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_created_parents_are_private_under_umask_000(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        init_state(tmp_path / "a" / "b" / "state", CONFIG)
        open_state(tmp_path / "c" / "d")  # the default-state path creates its parents too
    finally:
        os.umask(old)
    for folder in ("a", "a/b", "a/b/state", "c", "c/d"):
        assert _mode(tmp_path / folder) == 0o700, folder
    assert load_state(tmp_path / "a" / "b" / "state").config == CONFIG


def test_existing_parent_left_alone(tmp_path: Path) -> None:
    existing = tmp_path / "existing"
    existing.mkdir()
    os.chmod(existing, 0o755)
    init_state(existing / "state", CONFIG)
    assert _mode(existing) == 0o755 and _mode(existing / "state") == 0o700


@pytest.mark.parametrize("mode", [0o750, 0o705, 0o777, 0o701])
def test_load_refuses_a_folder_others_may_enter(tmp_path: Path, mode: int) -> None:
    path = tmp_path / "state"
    init_state(path, CONFIG)
    os.chmod(path, mode)
    with pytest.raises(SimulatorStateError, match="must be 0700"):
        load_state(path)
    os.chmod(path, 0o700)
    assert load_state(path).config == CONFIG


def test_load_refuses_a_folder_of_another_user(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "state"
    init_state(path, CONFIG)
    if os.geteuid() == 0:
        os.chown(path, 65534, 65534)
    else:
        monkeypatch.setattr(state_mod.os, "geteuid", lambda: os.getuid() + 4242)
    with pytest.raises(SimulatorStateError, match="not to this user"):
        load_state(path)
    with pytest.raises(SimulatorStateError, match="not to this user"):
        open_state(path)
