"""Simulated documents have the layout of real ones.

Independent of the project's parsers: plain cbor2 + cryptography, compared field by field with real
AWS documents from tests/vectors/real.
"""

from __future__ import annotations

import datetime as dt
import itertools
import re
from pathlib import Path
from typing import Any

import cbor2
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from nitro_attest.nsm.simulator.nsm import SimulatedNsm
from nitro_attest.nsm.simulator.state import SimulatorConfig, init_state

AWS_KEYS = [
    "module_id",
    "digest",
    "timestamp",
    "pcrs",
    "certificate",
    "cabundle",
    "public_key",
    "user_data",
    "nonce",
]
# A recent real document: its instance CA carries SKI/AKI, the profile the simulator copies.
MODERN = "marlin_20241213_late_in_leaf_window.cbor"
INDEFINITE = "worldcoin_20250829_indef_map.cbor"  # the payload map form since 2025-08
REAL_FILES = [
    MODERN,
    "base_20241130_pcr3.cbor",
    "blocky_20240907_max_size_fields_1024B.cbor",
]


# Not conftest's sim_state: the layout is compared with real documents, which carry no
# measurements of ours, and the certificate names are checked for this region.
@pytest.fixture(scope="module")
def sim(tmp_path_factory: pytest.TempPathFactory) -> SimulatedNsm:
    state = init_state(
        tmp_path_factory.mktemp("sim") / "state",
        SimulatorConfig(instance_id="i-0123456789abcdef0", region="eu-west-1"),
    )
    return SimulatedNsm(state)


def split(doc: bytes) -> tuple[list[Any], dict[str, Any]]:
    envelope = cbor2.loads(doc)
    return envelope, cbor2.loads(envelope[2])


def certs_of(payload: dict[str, Any]) -> list[x509.Certificate]:
    return [
        x509.load_der_x509_certificate(c) for c in [*payload["cabundle"], payload["certificate"]]
    ]


def profile(cert: x509.Certificate) -> dict[str, Any]:
    """Everything about a certificate's profile that does not depend on names, keys or dates."""
    exts = {e.oid.dotted_string: e for e in cert.extensions}
    bc = cert.extensions.get_extension_for_class(x509.BasicConstraints)
    ku = cert.extensions.get_extension_for_class(x509.KeyUsage)
    key = cert.public_key()
    assert isinstance(key, ec.EllipticCurvePublicKey)
    hash_alg = cert.signature_hash_algorithm
    return {
        "version": cert.version,
        "curve": key.curve.name,
        "hash": hash_alg.name if hash_alg else None,
        "bc": (bc.value.ca, bc.value.path_length, bc.critical),
        "ku": (ku.value, ku.critical),
        "extensions": sorted(exts),
        "subject_attrs": [a.oid.dotted_string for a in cert.subject],
    }


def real_doc(real_dir: Path, name: str) -> bytes:
    return (real_dir / name).read_bytes()


def test_envelope_bytes(sim: SimulatedNsm, real_dir: Path) -> None:
    doc = sim.attestation()
    real = real_doc(real_dir, MODERN)
    assert doc[:6] == real[:6] == bytes.fromhex("8444a1013822")
    envelope, _ = split(doc)
    assert isinstance(envelope, list) and len(envelope) == 4  # untagged: no CBORTag
    assert envelope[0] == b"\xa1\x01\x38\x22"
    assert envelope[1] == {}
    assert doc[6] == 0xA0  # the unprotected map is the empty map, encoded as a0
    assert isinstance(envelope[2], bytes)
    assert isinstance(envelope[3], bytes) and len(envelope[3]) == 96
    # Indefinite-length payload map, like every real document since 2025-08.
    real_indefinite, _ = split(real_doc(real_dir, INDEFINITE))
    assert envelope[2][0] == real_indefinite[2][0] == 0xBF
    assert envelope[2][-1] == 0xFF
    assert cbor2.dumps(envelope) == doc  # nothing trailing, canonical lengths


def test_payload_keys_order_and_types(sim: SimulatedNsm, real_dir: Path) -> None:
    _, real_payload = split(real_doc(real_dir, MODERN))
    assert list(real_payload) == AWS_KEYS
    for kwargs in ({}, {"nonce": b"n" * 32, "user_data": b"u", "public_key": b"k" * 1024}):
        _, p = split(sim.attestation(**kwargs))
        assert list(p.keys()) == AWS_KEYS
        assert re.fullmatch(r"i-[0-9a-f]{17}-enc[0-9a-f]{16}", p["module_id"])
        assert p["digest"] == "SHA384"
        assert type(p["timestamp"]) is int
        assert abs(p["timestamp"] / 1000 - dt.datetime.now(dt.UTC).timestamp()) < 60
        assert sorted(p["pcrs"]) == list(range(16)) == sorted(real_payload["pcrs"])
        assert all(type(v) is bytes and len(v) == 48 for v in p["pcrs"].values())
        assert len(p["cabundle"]) == 4 == len(real_payload["cabundle"])
        for name in ("public_key", "user_data", "nonce"):
            assert p[name] == kwargs.get(name)  # None when absent: encoded as null, key present


def test_absent_fields_are_null_bytes(sim: SimulatedNsm) -> None:
    _, p = split(sim.attestation())
    envelope = cbor2.loads(sim.attestation())
    raw = envelope[2]
    tail = b"\x6apublic_key\xf6\x69user_data\xf6\x65nonce\xf6\xff"  # then the map's break
    assert raw.endswith(tail)
    assert p["nonce"] is None


def test_signature_and_chain_verify_independently(sim: SimulatedNsm) -> None:
    doc = sim.attestation(nonce=b"abc")
    envelope, p = split(doc)
    certs = certs_of(p)
    leaf_key = certs[-1].public_key()
    assert isinstance(leaf_key, ec.EllipticCurvePublicKey)
    sig = envelope[3]
    der = encode_dss_signature(int.from_bytes(sig[:48], "big"), int.from_bytes(sig[48:], "big"))
    tbs = cbor2.dumps(["Signature1", envelope[0], b"", envelope[2]])
    leaf_key.verify(der, tbs, ec.ECDSA(hashes.SHA384()))
    for issuer, subject in itertools.pairwise(certs):
        subject.verify_directly_issued_by(issuer)
    certs[0].verify_directly_issued_by(certs[0])
    assert (
        certs[0]
        .subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)[0]
        .value.endswith("SIMULATED")
    )
    t = dt.datetime.fromtimestamp(p["timestamp"] / 1000, dt.UTC)
    for c in certs:
        assert c.not_valid_before_utc <= t <= c.not_valid_after_utc


@pytest.mark.parametrize("real_name", REAL_FILES)
def test_certificate_profiles_match_real(sim: SimulatedNsm, real_dir: Path, real_name: str) -> None:
    _, p = split(sim.attestation())
    _, rp = split(real_doc(real_dir, real_name))
    ours, theirs = certs_of(p), certs_of(rp)
    assert len(ours) == len(theirs) == 5
    for level, (a, b) in enumerate(zip(ours, theirs, strict=True)):
        pa, pb = profile(a), profile(b)
        for key in pa:
            assert pa[key] == pb[key], f"cert {level} {key}: ours {pa[key]} real {pb[key]}"


def test_level_details(sim: SimulatedNsm) -> None:
    _, p = split(sim.attestation())
    root, regional, zonal, instance, leaf = certs_of(p)
    path_lens = [c.extensions.get_extension_for_class(x509.BasicConstraints).value.path_length
                 for c in (root, regional, zonal, instance)]  # fmt: skip
    assert path_lens == [None, 2, 1, 0]
    assert leaf.not_valid_after_utc - leaf.not_valid_before_utc == dt.timedelta(hours=3)
    leaf_oids = {e.oid for e in leaf.extensions}
    assert x509.ExtensionOID.SUBJECT_KEY_IDENTIFIER not in leaf_oids
    assert x509.ExtensionOID.AUTHORITY_KEY_IDENTIFIER not in leaf_oids
    ku = leaf.extensions.get_extension_for_class(x509.KeyUsage).value
    assert ku.digital_signature and ku.content_commitment and not ku.key_cert_sign
    cn = leaf.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)[0].value
    assert cn == f"{p['module_id']}.eu-west-1.aws"
    # Real leaf serials: enclave id (high 64 bits) and notBefore seconds (low 64 bits).
    enc = int(p["module_id"].split("-enc")[1], 16)
    assert leaf.serial_number == (enc << 64) | int(leaf.not_valid_before_utc.timestamp())


def test_sizes_in_real_range(sim: SimulatedNsm, real_index: dict[str, Any]) -> None:
    sizes = [e["size"] for e in real_index["positive"]]
    small = len(sim.attestation())
    big = len(sim.attestation(user_data=b"u" * 1024, nonce=b"n" * 1024, public_key=b"k" * 1024))
    assert min(sizes) - 300 <= small <= max(sizes)
    assert big <= max(sizes) + 300
