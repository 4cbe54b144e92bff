"""Shared fixtures: the real vectors (tests/vectors), simulator states, one fake NSM
and a running enclave server. Path constants live in tests/paths.py and the shared measurements
in tests/fakes.py: tests import those, never this module."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from nitro_attest.nsm.simulator.state import SimulatorConfig, init_state

from .channel_helpers import Enclave, serving
from .fakes import INSTANCE_ID, MEASUREMENTS, FakeNsm
from .paths import EIF_VECTORS, REAL


def _need(path: Path) -> Path:
    # The repo carries its vectors: a missing folder is a broken checkout, never a skip.
    if not path.exists():
        raise FileNotFoundError(f"test vectors missing at {path} (tests/vectors is in the repo)")
    return path


@pytest.fixture(scope="session")
def real_dir() -> Path:
    return _need(REAL)


@pytest.fixture(scope="session")
def real_index(real_dir: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((real_dir / "index.json").read_text())
    return data


@pytest.fixture(scope="session")
def eif_dir() -> Path:
    return _need(EIF_VECTORS)


def _sim(tmp_path_factory: pytest.TempPathFactory, name: str, *, debug: bool) -> Path:
    path = tmp_path_factory.mktemp(name) / "state"
    config = SimulatorConfig(instance_id=INSTANCE_ID, measurements=MEASUREMENTS, debug=debug)
    init_state(path, config)
    return path


@pytest.fixture(scope="session")
def sim_state(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A production-mode simulator state with MEASUREMENTS. Shared: treat it as read-only."""
    return _sim(tmp_path_factory, "sim", debug=False)


@pytest.fixture(scope="session")
def sim_debug_state(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A debug-mode simulator state (its own CA) with MEASUREMENTS. Shared: read-only."""
    return _sim(tmp_path_factory, "simdebug", debug=True)


@pytest.fixture
def fake_nsm() -> FakeNsm:
    """A fresh signing FakeNsm (set ``fake_nsm.echo = True`` for echoed answers)."""
    return FakeNsm()


@pytest.fixture
def sim_server(sim_state: Path, tmp_path: Path) -> Iterator[Enclave]:
    """A channel-enabled enclave server in a thread over the software NSM (``sim_state``), on a
    Unix socket in tmp_path; ``.address``, ``.store`` (secrets received), ``.logs``, ``.root``."""
    with serving(sim_state, f"unix://{tmp_path}/e.sock") as enclave:
        yield enclave
