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

from .fakes import MEASUREMENTS


@pytest.fixture(scope="module")
def sim(sim_state: Path) -> SimulatedNsm:
    return SimulatedNsm.open(sim_state)


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
        result = verifier.verify(doc, expected_pcrs=MEASUREMENTS, **kwargs)
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


def test_debug_document_flagged(sim_debug_state: Path) -> None:
    sim = SimulatedNsm.open(sim_debug_state)
    verifier = Verifier(root_pem=sim.root_pem)
    doc = sim.attestation()
    with pytest.raises(DebugModeError):
        verifier.verify(doc)
    assert verifier.verify(doc, allow_debug=True).document.raw == doc


def test_default_simulator_is_not_debug(tmp_path: Path) -> None:
    sim = SimulatedNsm.open(tmp_path / "default")
    verified = Verifier(root_pem=sim.root_pem).verify(sim.attestation())  # no allow_debug
    assert not verified.document.is_debug


def test_documents_after_leaf_and_ca_rotation_verify(tmp_path: Path) -> None:
    # A state of its own: rotation rewrites the state, which the shared sim_state must not see.
    t = [1_900_000_000.0]
    sim = SimulatedNsm.open(tmp_path / "s", clock=lambda: t[0])
    verifier = Verifier(root_pem=sim.root_pem)
    for step in (0, 3 * 3600, 2 * 86400, 7 * 86400, 30 * 86400):
        t[0] += step
        doc = sim.attestation()
        verified = verifier.verify(doc, at="document")
        assert verified.document.timestamp_ms == int(t[0] * 1000)  # issued after the rotation
