"""The whole channel exchange in-process: client checks, enclave receipt, refusals, logs.

Threat model (docs/threat-model.md): the parent tampers with, downgrades, re-binds and replays
what it relays (``LocalExchange.tamper``); each attempt fails closed.
"""

from __future__ import annotations

import hashlib
import logging
from typing import Any

import pytest

from nitro_attest.attestation.verifier import Verifier
from nitro_attest.channel.keys import SuiteId
from nitro_attest.channel.messages import (
    REQUEST_CHANNEL_ATTEST,
    REQUEST_SEALED_MESSAGE,
    SealedAckResponse,
)
from nitro_attest.channel.receiver import (
    ChannelReceiver,
    InMemorySecretStore,
)
from nitro_attest.channel.sender import deliver_secret, seal_for_document
from nitro_attest.errors import (
    ChainError,
    ChannelError,
    ChannelKeyError,
    DebugModeError,
    PcrMismatchError,
    PolicyError,
)
from nitro_attest.wire.protocol import ProtocolError, Request, Response

from . import chainfactory as cf
from .channel_helpers import LocalExchange, attest_via_wire, seal_via_wire
from .fakes import DEBUG_PCRS, EXPECTED, FakeNsm

SECRET = b"model-key: 7f3a9c0e5b1d2468ace13579bdf02468"
SUITES = [s.label for s in SuiteId]


@pytest.fixture(scope="module")
def receiver() -> ChannelReceiver:
    return ChannelReceiver()


def _setup(receiver: ChannelReceiver, **nsm_args: Any) -> tuple[LocalExchange, Verifier]:
    nsm = FakeNsm(**nsm_args)
    return LocalExchange(receiver, nsm), Verifier(root_pem=nsm.chain.root_pem)


def _deliver(ex: LocalExchange, verifier: Verifier, **kw: Any) -> Any:
    kw.setdefault("expected_pcrs", EXPECTED)
    return deliver_secret(ex, SECRET, verifier=verifier, at="document", **kw)


@pytest.mark.parametrize("suite", SUITES)
def test_delivered(suite: str) -> None:
    store = InMemorySecretStore()
    receiver = ChannelReceiver(handler=store)
    ex, verifier = _setup(receiver)
    receipt = _deliver(ex, verifier, suite=suite)
    assert store.secrets == [SECRET]
    assert receipt.suite.label == suite
    assert receipt.size == len(SECRET)
    assert ex.kinds() == [REQUEST_CHANNEL_ATTEST, REQUEST_SEALED_MESSAGE]
    assert SECRET not in ex.requests[1][1]["sealed"]
    # the NSM was asked for a document naming the enclave's key for that suite
    assert ex.nsm.calls[0]["public_key"] == receiver.public_key_field(SuiteId.from_label(suite))
    assert SECRET.hex() not in repr(store) and str(SECRET) not in repr(store)


def test_tampered_ciphertext_refused(receiver: ChannelReceiver) -> None:
    ex, verifier = _setup(receiver)

    def flip(kind: str, fields: dict[str, Any]) -> dict[str, Any]:
        if kind == REQUEST_SEALED_MESSAGE:
            sealed = bytearray(fields["sealed"])
            sealed[-5] ^= 0x80
            fields["sealed"] = bytes(sealed)
        return fields

    ex.tamper = flip
    with pytest.raises(ChannelError, match="does not open") as info:
        _deliver(ex, verifier)
    assert info.value.reason == "open"


@pytest.mark.parametrize("suite", SUITES)
def test_replay_refused(suite: str) -> None:
    store = InMemorySecretStore()
    receiver = ChannelReceiver(handler=store)
    ex, verifier = _setup(receiver)
    _deliver(ex, verifier, suite=suite)
    _kind, fields = ex.requests[-1]
    with pytest.raises(ChannelError, match="replay") as info:
        seal_via_wire(receiver, fields)
    assert info.value.reason == "replay"
    assert store.secrets == [SECRET]


def test_message_bound_to_another_nonce_refused(receiver: ChannelReceiver) -> None:
    ex, verifier = _setup(receiver)
    other = b"o" * 32
    attest_via_wire(receiver, ex.nsm, {"nonce": other, "suite": "x25519"})

    def renonce(kind: str, fields: dict[str, Any]) -> dict[str, Any]:
        if kind == REQUEST_SEALED_MESSAGE:
            fields["nonce"] = other
        return fields

    ex.tamper = renonce
    with pytest.raises(ChannelError, match="does not open"):
        _deliver(ex, verifier)


def test_message_sealed_to_another_key_refused(
    receiver: ChannelReceiver, fake_nsm: FakeNsm
) -> None:
    impostor = ChannelReceiver(suites=[SuiteId.X25519])
    nsm = fake_nsm
    verifier = Verifier(root_pem=nsm.chain.root_pem)
    nonce = b"k" * 32
    offer = attest_via_wire(impostor, nsm, {"nonce": nonce, "suite": "x25519"})
    verified = verifier.verify(offer["document"], at="document", nonce=nonce)
    sealed = seal_for_document(verified, SECRET, nonce=nonce, suite="x25519")
    # the real enclave issued the same nonce, but the message is sealed to the impostor's key
    attest_via_wire(receiver, nsm, {"nonce": nonce, "suite": "x25519"})
    with pytest.raises(ChannelError, match="does not open"):
        seal_via_wire(receiver, {"nonce": nonce, "sealed": sealed.sealed})


def test_sealed_message_for_unissued_nonce_refused(receiver: ChannelReceiver) -> None:
    with pytest.raises(ChannelError, match="no channel document"):
        seal_via_wire(receiver, {"nonce": b"u" * 32, "sealed": b"x" * 100})


@pytest.mark.parametrize(
    ("setup", "error"),
    [
        ({"pcrs": {**DEBUG_PCRS, 0: b"\x09" * 48}}, PcrMismatchError),
        ({"pcrs": DEBUG_PCRS}, DebugModeError),
        ({"drop_public_key": True}, ChannelKeyError),
    ],
    ids=["wrong-pcr0", "debug-enclave", "no-public-key"],
)
def test_refused_before_sending(
    receiver: ChannelReceiver, setup: dict[str, Any], error: type[Exception]
) -> None:
    ex, verifier = _setup(receiver, **setup)
    expected = EXPECTED if error is not DebugModeError else {1: EXPECTED[1]}
    with pytest.raises(error):
        _deliver(ex, verifier, expected_pcrs=expected)
    assert ex.kinds() == [REQUEST_CHANNEL_ATTEST]


def test_debug_enclave_allowed_only_when_asked(receiver: ChannelReceiver) -> None:
    ex, verifier = _setup(receiver, pcrs=DEBUG_PCRS)
    receipt = _deliver(ex, verifier, expected_pcrs={0: bytes(48)}, allow_debug=True)
    assert ex.kinds()[-1] == REQUEST_SEALED_MESSAGE
    assert receipt.verified.document.is_debug and receipt.size == len(SECRET)


def test_wrong_root_refused_before_sending(receiver: ChannelReceiver) -> None:
    ex, _ = _setup(receiver)
    other_root = cf.chain([cf.CertSpec("another-root.test")]).root_pem
    with pytest.raises(ChainError):
        _deliver(ex, Verifier(root_pem=other_root))
    assert ex.kinds() == [REQUEST_CHANNEL_ATTEST]


def test_no_pcr_expectation_refused_before_contact(receiver: ChannelReceiver) -> None:
    ex, verifier = _setup(receiver)
    with pytest.raises(PolicyError, match="without a PCR expectation"):
        deliver_secret(ex, SECRET, verifier=verifier, at="document")
    assert ex.requests == []
    deliver_secret(ex, SECRET, verifier=verifier, at="document", unsafe_any_enclave=True)
    assert ex.kinds() == [REQUEST_CHANNEL_ATTEST, REQUEST_SEALED_MESSAGE]


def test_suite_mismatch_refused(receiver: ChannelReceiver) -> None:
    ex, verifier = _setup(receiver)

    def downgrade(kind: str, fields: dict[str, Any]) -> dict[str, Any]:
        if kind == REQUEST_CHANNEL_ATTEST:
            fields["suite"] = "x25519"
        return fields

    ex.tamper = downgrade
    with pytest.raises(ChannelKeyError, match="expected mlkem768-x25519"):
        _deliver(ex, verifier, suite="mlkem768-x25519")
    assert ex.kinds() == [REQUEST_CHANNEL_ATTEST]


def test_wrong_acknowledgement_refused(receiver: ChannelReceiver) -> None:
    ex, verifier = _setup(receiver)

    def lying(request: Request) -> Response:
        response = ex(request)
        return SealedAckResponse(bytes(32)) if isinstance(response, SealedAckResponse) else response

    with pytest.raises(ChannelError, match="acknowledgement") as info:
        deliver_secret(lying, SECRET, verifier=verifier, at="document", expected_pcrs=EXPECTED)
    assert info.value.reason == "ack"


def test_unknown_or_unoffered_suite(receiver: ChannelReceiver) -> None:
    ex, verifier = _setup(receiver)
    with pytest.raises(PolicyError, match="unknown suite"):
        _deliver(ex, verifier, suite="p384")
    only_x = ChannelReceiver(suites=[SuiteId.X25519])
    ex2, _ = _setup(only_x)
    with pytest.raises(ChannelError, match="not offered"):
        _deliver(ex2, verifier, suite="mlkem768-x25519")


@pytest.mark.parametrize(
    "fields",
    [
        {"nonce": b"short", "suite": "x25519"},
        {"nonce": "text" * 8, "suite": "x25519"},
        {"nonce": b"n" * 513, "suite": "x25519"},
        {"nonce": b"n" * 32, "suite": 1},
        {"nonce": b"n" * 32, "suite": "x25519", "user_data": b"u" * 513},
    ],
)
def test_bad_channel_attest_requests(
    receiver: ChannelReceiver, fields: dict[str, Any], fake_nsm: FakeNsm
) -> None:
    with pytest.raises(ProtocolError):  # refused as it is decoded, before any handler runs
        attest_via_wire(receiver, fake_nsm, fields)
    assert fake_nsm.calls == []


def test_secret_never_logged(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    receiver = ChannelReceiver()
    ex, verifier = _setup(receiver)
    for suite in SUITES:
        _deliver(ex, verifier, suite=suite)
    ex.tamper = (
        lambda k, f: (  # flip a bit: overwriting with a constant may change nothing
            {**f, "sealed": f["sealed"][:-1] + bytes([f["sealed"][-1] ^ 1])} if "sealed" in f else f
        )
    )
    with pytest.raises(ChannelError):
        _deliver(ex, verifier)
    text = caplog.text
    assert "sealed message accepted" in text and "sealed message refused" in text

    for needle in (SECRET.decode(), SECRET.hex(), repr(SECRET), hashlib.sha256(SECRET).hexdigest()):
        assert needle not in text
    for record in caplog.records:
        assert SECRET not in repr(record.args).encode()


def test_standard_attestation_names_default_key_and_accepts_one_message(
    fake_nsm: FakeNsm,
) -> None:
    receiver = ChannelReceiver()
    nsm = fake_nsm
    verifier = Verifier(root_pem=nsm.chain.root_pem)
    nonce = b"s" * 32
    document = receiver.attest_default(nsm, nonce=nonce, user_data=b"u")
    verified = verifier.verify(document, at="document", nonce=nonce, user_data=b"u")
    assert verified.document.public_key == receiver.public_key_field(SuiteId.X25519)
    sealed = seal_for_document(verified, SECRET, nonce=nonce, suite="x25519")
    ack = seal_via_wire(receiver, {"nonce": nonce, "sealed": sealed.sealed})
    assert ack == {"ack": sealed.ack}
    # Keyed by a random key sealed with the secret: the relaying parent cannot test guesses.
    assert sealed.ack != hashlib.sha256(SECRET).digest()
    again = seal_for_document(verified, SECRET, nonce=nonce, suite="x25519")
    assert again.ack != sealed.ack
    # a second document for a known nonce is still served, but opens no second channel
    receiver.attest_default(nsm, nonce=nonce)
    with pytest.raises(ChannelError, match="replay"):
        seal_via_wire(receiver, {"nonce": nonce, "sealed": sealed.sealed})
    # no nonce, or one too short to be a channel nonce: a document, no channel
    assert receiver.attest_default(nsm, nonce=None)
    assert receiver.attest_default(nsm, nonce=b"x")
