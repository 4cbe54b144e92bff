"""The software NSM's PCR semantics, errors, leaf reuse, state folder and thread safety."""

from __future__ import annotations

import datetime as dt
import hashlib
import itertools
import json
import os
import stat
import threading
from collections.abc import Callable
from pathlib import Path

import cbor2
import pytest
from cryptography import x509

from nitro_attest.nsm import NsmError, open_backend
from nitro_attest.nsm import device as device_mod
from nitro_attest.nsm import messages as m
from nitro_attest.nsm.api import NsmClient
from nitro_attest.nsm.simulator.measurements import MeasurementsError, parse_measurements
from nitro_attest.nsm.simulator.nsm import SimulatedNsm, package_measurements
from nitro_attest.nsm.simulator.state import (
    SimulatorConfig,
    SimulatorStateError,
    init_state,
    load_state,
)

ZERO = bytes(48)
INSTANCE = "i-0123456789abcdef0"
ROLE = "arn:aws:iam::123456789012:role/enclave-role"
MEAS = {0: b"\x10" * 48, 1: b"\x11" * 48, 2: b"\x12" * 48, 8: b"\x18" * 48}


def sha384(b: bytes) -> bytes:
    return hashlib.sha384(b).digest()


class Clock:
    def __init__(self, t: float) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def make_sim(
    tmp_path: Path, clock: Callable[[], float] | None = None, **cfg: object
) -> SimulatedNsm:
    config = SimulatorConfig(instance_id=INSTANCE, **cfg)  # type: ignore[arg-type]
    state = init_state(tmp_path / "state", config, clock=clock)
    return SimulatedNsm(state) if clock is None else SimulatedNsm(state, clock=clock)


@pytest.fixture
def sim(tmp_path: Path) -> SimulatedNsm:
    return make_sim(tmp_path, measurements=MEAS, role_arn=ROLE)


def payload(doc: bytes) -> dict[str, object]:
    p: dict[str, object] = cbor2.loads(cbor2.loads(doc)[2])
    return p


# ---------------------------------------------------------------- boot state


def test_boot_pcrs(sim: SimulatedNsm) -> None:
    values = [sim.describe_pcr(i) for i in range(32)]
    assert [v.data for v in values[:3]] == [MEAS[0], MEAS[1], MEAS[2]]
    assert values[8].data == MEAS[8]
    assert values[3].data == sha384(ZERO + ROLE.encode())
    assert values[4].data == sha384(ZERO + INSTANCE.encode())
    for i in (5, 6, 7, *range(9, 32)):
        assert values[i].data == ZERO
    assert [v.locked for v in values] == [True] * 16 + [False] * 16


def test_no_role_means_pcr3_zero(tmp_path: Path) -> None:
    sim = make_sim(tmp_path, measurements=MEAS)
    assert sim.describe_pcr(3).data == ZERO


def test_describe_nsm(sim: SimulatedNsm) -> None:
    d = sim.describe_nsm()
    assert (d.max_pcrs, d.digest, d.locked_pcrs) == (32, "SHA384", tuple(range(16)))
    assert d.module_id == sim.module_id and d.module_id.startswith(INSTANCE + "-enc")
    assert (d.version_major, d.version_minor, d.version_patch) == (1, 0, 0)


def test_debug_mode_zeroes_image_pcrs_keeps_platform(tmp_path: Path) -> None:
    sim = make_sim(tmp_path, measurements=MEAS, role_arn=ROLE, debug=True)
    pcrs = payload(sim.attestation())["pcrs"]
    assert isinstance(pcrs, dict)
    for i in (0, 1, 2, 8):
        assert pcrs[i] == ZERO
    assert pcrs[3] == sha384(ZERO + ROLE.encode())
    assert pcrs[4] == sha384(ZERO + INSTANCE.encode())


def test_default_pcrs_non_zero_and_stable(tmp_path: Path) -> None:
    a = make_sim(tmp_path / "a")
    b = make_sim(tmp_path / "b")
    for i in (0, 1, 2):
        assert a.describe_pcr(i).data != ZERO
        assert a.describe_pcr(i).data == b.describe_pcr(i).data == package_measurements()[i]
    assert len({a.describe_pcr(i).data for i in (0, 1, 2)}) == 3
    assert a.describe_pcr(8).data == ZERO


# ---------------------------------------------------------------- PCR operations and errors


def test_extend_is_sha384_of_old_and_data(sim: SimulatedNsm) -> None:
    v1 = sim.extend_pcr(16, b"abc")
    assert v1 == sha384(ZERO + b"abc")
    v2 = sim.extend_pcr(16, b"def")
    assert v2 == sha384(v1 + b"def") == sim.describe_pcr(16).data


def test_lock_then_extend_fails_and_document_carries_it(sim: SimulatedNsm) -> None:
    value = sim.extend_pcr(16, b"app")
    sim.lock_pcr(16)
    assert sim.describe_pcr(16).locked
    with pytest.raises(NsmError) as e:
        sim.extend_pcr(16, b"more")
    assert e.value.code == "ReadOnlyIndex"
    pcrs = payload(sim.attestation())["pcrs"]
    assert isinstance(pcrs, dict)
    assert sorted(pcrs) == list(range(17)) and pcrs[16] == value
    assert sim.describe_nsm().locked_pcrs == tuple(range(17))


ERROR_CASES: list[tuple[str, Callable[[SimulatedNsm], object], str]] = [
    ("extend boot-locked PCR0", lambda s: s.extend_pcr(0, b"x"), "ReadOnlyIndex"),
    ("extend boot-locked PCR15", lambda s: s.extend_pcr(15, b"x"), "ReadOnlyIndex"),
    ("extend out of range", lambda s: s.extend_pcr(32, b"x"), "InvalidIndex"),
    ("describe out of range", lambda s: s.describe_pcr(32), "InvalidIndex"),
    ("lock boot-locked PCR0", lambda s: s.lock_pcr(0), "ReadOnlyIndex"),
    ("lock boot-locked PCR15", lambda s: s.lock_pcr(15), "ReadOnlyIndex"),
    ("lock out of range", lambda s: s.lock_pcr(32), "InvalidIndex"),
    ("lock range above max_pcrs", lambda s: s.lock_pcrs(33), "InvalidIndex"),
    ("user_data too large", lambda s: s.attestation(user_data=b"u" * 1025), "InputTooLarge"),
    ("nonce too large", lambda s: s.attestation(nonce=b"n" * 1025), "InputTooLarge"),
    ("public_key too large", lambda s: s.attestation(public_key=b"k" * 1025), "InputTooLarge"),
]


@pytest.mark.parametrize(("what", "call", "code"), ERROR_CASES, ids=[c[0] for c in ERROR_CASES])
def test_errors(
    sim: SimulatedNsm, what: str, call: Callable[[SimulatedNsm], object], code: str
) -> None:
    with pytest.raises(NsmError) as e:
        call(sim)
    assert e.value.code == code


@pytest.mark.parametrize(("what", "call", "code"), ERROR_CASES, ids=[c[0] for c in ERROR_CASES])
def test_errors_through_the_wire(
    sim: SimulatedNsm, what: str, call: Callable[[SimulatedNsm], object], code: str
) -> None:
    """The same errors when driven as the NSM API over bytes (server decodes, client decodes)."""
    client = NsmClient(sim.process)
    with pytest.raises(NsmError) as e:
        call(client)  # type: ignore[arg-type]
    assert e.value.code == code


def test_relock_unlocked_pcr_twice(sim: SimulatedNsm) -> None:
    sim.lock_pcr(20)
    with pytest.raises(NsmError) as e:
        sim.lock_pcr(20)
    assert e.value.code == "ReadOnlyIndex"


def test_lock_pcrs_full_range_then_everything_read_only(sim: SimulatedNsm) -> None:
    sim.lock_pcrs(32)
    sim.lock_pcrs(32)  # locking an already locked range is accepted, as nsm-check expects
    assert sim.describe_nsm().locked_pcrs == tuple(range(32))
    for i in range(32):
        with pytest.raises(NsmError) as e:
            sim.extend_pcr(i, b"x")
        assert e.value.code == "ReadOnlyIndex"
    pcrs = payload(sim.attestation())["pcrs"]
    assert isinstance(pcrs, dict) and len(pcrs) == 32


def test_raw_bytes_api(sim: SimulatedNsm) -> None:
    resp = m.decode_response(sim.process(bytes.fromhex("6947657452616e646f6d")))
    assert isinstance(resp, m.GetRandomResponse) and len(resp.random) == 256
    assert sim.get_random() != sim.get_random()
    assert cbor2.loads(sim.process(b"\xff")) == {"Error": "InvalidArgument"}
    assert cbor2.loads(sim.process(cbor2.dumps("Reboot"))) == {"Error": "InvalidOperation"}
    doc = NsmClient(sim.process).attestation(nonce=b"\x01" * 1024, user_data=b"\x02" * 1024,
                                             public_key=b"\x03" * 1024)  # fmt: skip
    p = payload(doc)
    assert (p["nonce"], p["user_data"], p["public_key"]) == (b"\x01" * 1024, b"\x02" * 1024,
                                                              b"\x03" * 1024)  # fmt: skip


# ---------------------------------------------------------------- leaf and CA lifetimes


def leaf_of(doc: bytes) -> x509.Certificate:
    cert = payload(doc)["certificate"]
    assert isinstance(cert, bytes)
    return x509.load_der_x509_certificate(cert)


def test_leaf_reused_then_rotated(tmp_path: Path) -> None:
    clock = Clock(1_800_000_000.0)
    sim = make_sim(tmp_path, clock)
    first = leaf_of(sim.attestation())
    clock.t += 3600 * 2
    assert leaf_of(sim.attestation()).serial_number == first.serial_number  # reused at 2h
    clock.t += 3600  # 3h: the old leaf has expired
    doc = sim.attestation()
    second = leaf_of(doc)
    assert second.serial_number != first.serial_number
    ts = payload(doc)["timestamp"]
    assert isinstance(ts, int)
    t = dt.datetime.fromtimestamp(ts / 1000, dt.UTC)
    assert second.not_valid_before_utc <= t <= second.not_valid_after_utc


def test_intermediates_renewed_when_expiring(tmp_path: Path) -> None:
    clock = Clock(1_800_000_000.0)
    sim = make_sim(tmp_path, clock)
    bundle0 = payload(sim.attestation())["cabundle"]
    clock.t += 86400 * 3  # the instance CA (1 day) has expired; zonal (~6 days) has not
    doc = sim.attestation()
    bundle1 = payload(doc)["cabundle"]
    assert isinstance(bundle0, list) and isinstance(bundle1, list)
    assert bundle1[:3] == bundle0[:3] and bundle1[3] != bundle0[3]
    certs = [x509.load_der_x509_certificate(c) for c in bundle1] + [leaf_of(doc)]
    for issuer, subject in itertools.pairwise(certs):
        subject.verify_directly_issued_by(issuer)
    # persisted: a new boot loads the renewed instance CA
    assert load_state(tmp_path / "state").cabundle()[3] == bundle1[3]


# ---------------------------------------------------------------- state folder


def test_state_folder_modes_and_reuse(tmp_path: Path) -> None:
    sim = make_sim(tmp_path)
    state_dir = tmp_path / "state"
    assert stat.S_IMODE(state_dir.stat().st_mode) == 0o700
    for level in ("root", "regional", "zonal", "instance"):
        assert stat.S_IMODE((state_dir / f"{level}.key").stat().st_mode) == 0o600
    root = (state_dir / "root.pem").read_bytes()
    assert root == sim.root_pem
    again = SimulatedNsm.open(state_dir)
    assert again.root_pem == root
    assert again.module_id != sim.module_id  # a new boot is a new enclave
    assert again.module_id.split("-enc")[0] == INSTANCE


def test_init_refuses_to_overwrite_without_force(tmp_path: Path) -> None:
    make_sim(tmp_path)
    with pytest.raises(SimulatorStateError, match="--force"):
        init_state(tmp_path / "state", SimulatorConfig(instance_id=INSTANCE))
    old = (tmp_path / "state" / "root.pem").read_bytes()
    init_state(tmp_path / "state", SimulatorConfig(instance_id=INSTANCE), force=True)
    assert (tmp_path / "state" / "root.pem").read_bytes() != old


def test_corrupt_state_is_a_clear_error(tmp_path: Path) -> None:
    make_sim(tmp_path)
    (tmp_path / "state" / "zonal.key").write_bytes(b"garbage")
    with pytest.raises(SimulatorStateError, match="zonal"):
        SimulatedNsm.open(tmp_path / "state")
    (tmp_path / "state" / "config.json").write_text("{")
    with pytest.raises(SimulatorStateError, match=r"config\.json"):
        SimulatedNsm.open(tmp_path / "state")


@pytest.mark.parametrize(
    "cfg",
    [
        {"instance_id": "i-123"},
        {"instance_id": INSTANCE, "role_arn": "not-an-arn"},
        {"instance_id": INSTANCE, "region": "Mars"},
        {"instance_id": INSTANCE, "measurements": {0: ZERO}},
    ],
)
def test_bad_config_rejected(tmp_path: Path, cfg: dict[str, object]) -> None:
    with pytest.raises(SimulatorStateError):
        init_state(tmp_path / "s", SimulatorConfig(**cfg))  # type: ignore[arg-type]
    assert not (tmp_path / "s" / "config.json").exists()


# ---------------------------------------------------------------- threads


def test_thread_safety(sim: SimulatedNsm) -> None:
    errors: list[BaseException] = []
    docs: list[bytes] = []
    lock = threading.Lock()

    def work(n: int) -> None:
        try:
            for i in range(15):
                doc = sim.attestation(nonce=bytes([n, i]))
                sim.extend_pcr(16 + n, b"x")
                with lock:
                    docs.append(doc)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not errors and len(docs) == 60
    assert len({payload(d)["nonce"] for d in docs}) == 60  # type: ignore[misc]
    # each thread extended its own PCR 15 times
    expected = ZERO
    for _ in range(15):
        expected = sha384(expected + b"x")
    assert all(sim.describe_pcr(16 + n).data == expected for n in range(4))


# ---------------------------------------------------------------- factory and measurements


def test_open_backend(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(device_mod, "DEVICE_PATH", str(tmp_path / "no-nsm"))
    with pytest.raises(NsmError, match="--nsm simulator"):
        open_backend("auto")
    with pytest.raises(NsmError, match="--nsm simulator"):
        open_backend("device")
    with pytest.raises(ValueError, match="unknown NSM backend"):
        open_backend("hsm")
    backend = open_backend("simulator", state_dir=tmp_path / "s")
    assert isinstance(backend, SimulatedNsm)
    assert (tmp_path / "s" / "root.pem").is_file()
    assert backend.describe_pcr(0).data != ZERO


def test_default_state_dir_follows_xdg(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from nitro_attest.nsm.simulator.state import default_state_dir

    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path))
    assert default_state_dir() == tmp_path / "nitro-attest" / "simulator"
    monkeypatch.delenv("XDG_DATA_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_state_dir() == tmp_path / "home" / ".local/share/nitro-attest/simulator"


def test_parse_measurements() -> None:
    text = json.dumps(
        {
            "Measurements": {
                "HashAlgorithm": "Sha384 { ... }",
                "PCR0": "aa" * 48,
                "PCR1": "bb" * 48,
                "PCR2": "cc" * 48,
                "PCR8": "dd" * 48,
            }
        }
    )
    assert parse_measurements(text) == {0: b"\xaa" * 48, 1: b"\xbb" * 48, 2: b"\xcc" * 48,
                                        8: b"\xdd" * 48}  # fmt: skip


@pytest.mark.parametrize(
    "text",
    [
        "",
        "{",
        "[]",
        '{"Measurements": {}}',
        '{"Measurements": {"HashAlgorithm": "Sha384 { ... }"}}',
        json.dumps({"Measurements": {"PCR0": "aa" * 48, "PCR1": "bb" * 48}}),
        json.dumps({"Measurements": {"PCR0": "aa" * 47, "PCR1": "bb" * 48, "PCR2": "cc" * 48}}),
        json.dumps({"Measurements": {"PCR0": "zz" * 48, "PCR1": "bb" * 48, "PCR2": "cc" * 48}}),
        json.dumps(
            {
                "Measurements": {
                    "PCR0": "aa" * 48,
                    "PCR1": "bb" * 48,
                    "PCR2": "cc" * 48,
                    "PCR5": "dd" * 48,
                }
            }
        ),
        json.dumps({"Measurements": {"HashAlgorithm": "Sha256", "PCR0": "aa" * 48}}),
    ],
)
def test_bad_measurements(text: str) -> None:
    with pytest.raises(MeasurementsError):
        parse_measurements(text)


def test_key_files_not_world_readable_even_with_loose_umask(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        make_sim(tmp_path)
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "state" / "root.key").stat().st_mode) == 0o600


def test_concurrent_first_use_shares_one_hierarchy(tmp_path: Path) -> None:
    """Several boots racing to create the same fresh state folder end up on one root."""
    state_dir = tmp_path / "common"
    sims: list[SimulatedNsm] = []
    errors: list[BaseException] = []

    def boot() -> None:
        try:
            sims.append(SimulatedNsm.open(state_dir))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=boot) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not errors and len(sims) == 4
    on_disk = (state_dir / "root.pem").read_bytes()
    assert {s.root_pem for s in sims} == {on_disk}
    bundles = {tuple(payload(s.attestation())["cabundle"]) for s in sims}  # type: ignore[arg-type]
    assert len(bundles) == 1


def test_key_not_matching_certificate_is_rejected(tmp_path: Path) -> None:
    make_sim(tmp_path / "a")
    make_sim(tmp_path / "b")
    (tmp_path / "a" / "state" / "zonal.key").write_bytes(
        (tmp_path / "b" / "state" / "zonal.key").read_bytes()
    )
    with pytest.raises(SimulatorStateError, match="does not belong"):
        SimulatedNsm.open(tmp_path / "a" / "state")


def test_oversize_fields_sent_raw_are_refused_by_the_nsm(sim: SimulatedNsm) -> None:
    """A client that skips the limits still gets InputTooLarge from the NSM side."""
    raw = cbor2.dumps(
        {"Attestation": {"user_data": b"u" * 1025, "nonce": None, "public_key": None}}
    )
    assert cbor2.loads(sim.process(raw)) == {"Error": "InputTooLarge"}
    raw = cbor2.dumps({"ExtendPCR": {"index": 16, "data": b"x" * 4090}})
    assert cbor2.loads(sim.process(raw)) == {"Error": "InputTooLarge"}


def test_clock_stepped_back_reissues_the_leaf_and_heals_the_state(tmp_path: Path) -> None:
    """The host clock ran 23 h ahead (a leaf and an instance CA were issued then), then NTP set
    it right: documents verify at once, and no CA on disk stays dated in the future."""
    from nitro_attest.attestation.verifier import Verifier

    real = 1_800_000_000.0
    clock = Clock(real)
    sim = make_sim(tmp_path, clock)
    verifier = Verifier(root_pem=sim.root_pem)
    clock.t = real + 23 * 3600  # ahead: the instance CA (1 day) is renewed at the wrong time
    ahead = sim.attestation()
    assert leaf_of(ahead).not_valid_before_utc > dt.datetime.fromtimestamp(real + 3600, dt.UTC)
    clock.t = real + 600  # corrected
    now = dt.datetime.fromtimestamp(clock.t, dt.UTC)
    doc = sim.attestation()
    assert leaf_of(doc).not_valid_before_utc <= now
    verifier.verify(doc, at=now)  # not "not yet valid"
    state_dir = tmp_path / "state"
    for level in ("regional", "zonal", "instance"):
        cert = x509.load_pem_x509_certificate((state_dir / f"{level}.pem").read_bytes())
        assert cert.not_valid_before_utc <= now, level
    # a new boot on the corrected clock reads a usable state
    again = SimulatedNsm.open(state_dir, clock=clock)
    verifier.verify(again.attestation(), at=now)
