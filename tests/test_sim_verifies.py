"""Simulated documents verify with the project's verifier under the simulator's root only."""

from __future__ import annotations

from pathlib import Path

import pytest

from nitro_attest.attestation.verifier import Verifier
from nitro_attest.errors import (
    ChainError,
    DebugModeError,
    NonceMismatchError,
    PcrMismatchError,
    SignatureError,
)
from nitro_attest.nsm.simulator.nsm import SimulatedNsm
from nitro_attest.nsm.simulator.state import SimulatorConfig, init_state

MEAS = {0: b"\x10" * 48, 1: b"\x11" * 48, 2: b"\x12" * 48}
ROLE = "arn:aws:iam::123456789012:role/app"


@pytest.fixture(scope="module")
def sim(tmp_path_factory: pytest.TempPathFactory) -> SimulatedNsm:
    config = SimulatorConfig(instance_id="i-0fedcba9876543210", measurements=MEAS, role_arn=ROLE)
    return SimulatedNsm(init_state(tmp_path_factory.mktemp("v") / "state", config))


def test_every_simulated_document_verifies(sim: SimulatedNsm) -> None:
    verifier = Verifier(root_pem=(sim.state.path / "root.pem").read_bytes())
    cases = [
        {},
        {"nonce": b"\x01" * 32},
        {"nonce": b"n" * 1024, "user_data": b"u" * 1024, "public_key": b"k" * 1024},
        {"user_data": b"hello"},
    ]
    for kwargs in cases:
        doc = sim.attestation(**kwargs)
        result = verifier.verify(doc, expected_pcrs=MEAS, **kwargs)
        assert result.document.raw == doc
        assert result.document.module_id == sim.module_id


def test_rejected_under_default_aws_root(sim: SimulatedNsm) -> None:
    with pytest.raises(ChainError):
        Verifier().verify(sim.attestation(nonce=b"x"))
    with pytest.raises(ChainError):
        Verifier(root_pem=None).verify(sim.attestation(), at="document")


def test_policy_mismatches_are_caught(sim: SimulatedNsm) -> None:
    verifier = Verifier(root_pem=sim.root_pem)
    doc = sim.attestation(nonce=b"right")
    with pytest.raises(NonceMismatchError):
        verifier.verify(doc, nonce=b"wrong")
    with pytest.raises(PcrMismatchError):
        verifier.verify(doc, expected_pcrs={0: b"\x00" * 47 + b"\x01"})
    tampered = bytearray(doc)
    tampered[-1] ^= 1
    with pytest.raises(SignatureError):
        verifier.verify(bytes(tampered))


def test_debug_document_flagged(tmp_path: Path) -> None:
    config = SimulatorConfig(instance_id="i-0fedcba9876543210", measurements=MEAS, debug=True)
    sim = SimulatedNsm(init_state(tmp_path / "s", config))
    verifier = Verifier(root_pem=sim.root_pem)
    doc = sim.attestation()
    with pytest.raises(DebugModeError):
        verifier.verify(doc)
    assert verifier.verify(doc, allow_debug=True).document.raw == doc


def test_default_simulator_is_not_debug(tmp_path: Path) -> None:
    sim = SimulatedNsm.open(tmp_path / "default")
    Verifier(root_pem=sim.root_pem).verify(sim.attestation())  # no allow_debug needed


def test_documents_after_leaf_and_ca_rotation_verify(tmp_path: Path) -> None:
    t = [1_900_000_000.0]
    sim = SimulatedNsm.open(tmp_path / "s", clock=lambda: t[0])
    verifier = Verifier(root_pem=sim.root_pem)
    for step in (0, 3 * 3600, 2 * 86400, 7 * 86400, 30 * 86400):
        t[0] += step
        doc = sim.attestation()
        verifier.verify(doc, at="document")
