"""Sender authentication on the attested channel, and a secret store junk cannot flood.

Threat model (docs/threat-model.md): the parent can call channel_attest itself and seal a secret
of its own to the enclave's key, strip or copy signatures, and replay any message. With pinned
sender keys only a message signed by one of them is accepted; without them every delivery is
marked as from an unauthenticated sender. Exchanges run in-process (channel_helpers).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.hazmat.primitives.asymmetric.utils import (
    decode_dss_signature,
    encode_dss_signature,
)

from nitro_attest.attestation.verifier import Verifier
from nitro_attest.channel.keys import SuiteId
from nitro_attest.channel.messages import (
    ChannelAttestRequest,
    ChannelOfferResponse,
    SealedMessageRequest,
)
from nitro_attest.channel.receiver import (
    ChannelReceiver,
    Delivery,
    InMemorySecretStore,
)
from nitro_attest.channel.replay import NonceLedger
from nitro_attest.channel.seal import document_digest
from nitro_attest.channel.sender import deliver_secret, seal_for_document
from nitro_attest.channel.signing import (
    SenderPrivateKey,
    key_id,
    sign,
    signed_bytes,
    verify,
)
from nitro_attest.errors import ChannelError
from nitro_attest.wire.protocol import ProtocolError, Request, Response

from .channel_helpers import LocalExchange, attest_via_wire, seal_via_wire
from .fakes import EXPECTED, FakeNsm

SECRET = b"signing key for the payments service: 8c1d..."
JUNK = b"the parent's own secret"
SUITES = [s.label for s in SuiteId]


def _key(kind: str) -> SenderPrivateKey:
    if kind == "ed25519":
        return ed25519.Ed25519PrivateKey.generate()
    return ec.generate_private_key(ec.SECP256R1())


PINNED = {"ed25519": _key("ed25519"), "p256": _key("p256")}
UNPINNED = _key("ed25519")


def _enclave(
    *, pinned: bool = True, ledger: NonceLedger | None = None
) -> tuple[LocalExchange, Verifier, InMemorySecretStore]:
    store = InMemorySecretStore()
    senders = [k.public_key() for k in PINNED.values()] if pinned else []
    receiver = ChannelReceiver(handler=store, senders=senders, ledger=ledger)
    nsm = FakeNsm()
    return LocalExchange(receiver, nsm), Verifier(root_pem=nsm.chain.root_pem), store


def _deliver(ex: LocalExchange, verifier: Verifier, **kw: Any) -> Any:
    return deliver_secret(
        ex, SECRET, verifier=verifier, at="document", expected_pcrs=EXPECTED, **kw
    )


@pytest.mark.parametrize("suite", SUITES)
@pytest.mark.parametrize("kind", sorted(PINNED))
def test_signed_by_pinned_key_delivered(kind: str, suite: str) -> None:
    ex, verifier, store = _enclave()
    receipt = _deliver(ex, verifier, suite=suite, signing_key=PINNED[kind])
    signer = key_id(PINNED[kind].public_key())
    assert receipt.signer == signer
    assert store.secrets == [SECRET]
    assert store.deliveries[0].authenticated and store.deliveries[0].signer == signer


@pytest.mark.parametrize("signing_key", [None, UNPINNED], ids=["unsigned", "unpinned"])
def test_unsigned_or_unpinned_refused(signing_key: SenderPrivateKey | None) -> None:
    """Threat: the parent delivers a secret of its own (unsigned, or under its own key)."""
    ex, verifier, store = _enclave()
    with pytest.raises(ChannelError, match=r"unsigned|does not pin") as info:
        _deliver(ex, verifier, signing_key=signing_key)
    assert info.value.reason == "sender"
    assert store.secrets == []


def _forge(ex: RecordingExchange, verifier: Verifier, fields: Mapping[str, Any], **change: Any
           ) -> dict[str, Any]:  # fmt: skip
    """The parent's own message for the client's nonce and document, with the client's
    signature fields (or ``change``d ones)."""
    verified = verifier.verify(ex.last_document, at="document")
    junk = seal_for_document(verified, JUNK, nonce=fields["nonce"], suite=ex.suite,
                             offered_key=ex.last_key)  # fmt: skip
    return {**fields, "sealed": junk.sealed, **change}


class RecordingExchange(LocalExchange):
    """LocalExchange that keeps the last channel offer, as the relaying parent sees it."""

    last_document: bytes
    last_key: bytes
    suite: str

    def __call__(self, request: Request) -> Response:
        answer = super().__call__(request)
        if isinstance(request, ChannelAttestRequest) and isinstance(answer, ChannelOfferResponse):
            self.last_document, self.last_key = answer.document, answer.public_key
            self.suite = request.suite
        return answer


@pytest.mark.parametrize("suite", SUITES)
@pytest.mark.parametrize("attack", ["copied signature", "garbage signature", "other signer"])
def test_signature_copied_onto_the_parents_message_refused(suite: str, attack: str) -> None:
    """Threat: the parent lifts a genuine signature (or names a pinned signer) for its own sealed
    message on the same nonce. Refused, and the refusal does not burn the client's delivery."""
    ex0, verifier, store = _enclave()
    ex = RecordingExchange(ex0.receiver, ex0.nsm)
    refusals: list[str] = []

    def tamper(kind: str, fields: dict[str, Any]) -> dict[str, Any]:
        if kind == "sealed_message":
            change: dict[str, Any] = {}
            if attack == "garbage signature":
                change["signature"] = bytes(64)
            elif attack == "other signer":
                change["signer"] = key_id(PINNED["p256"].public_key())
            forged = _forge(ex, verifier, fields, **change)
            with pytest.raises(ChannelError) as info:
                seal_via_wire(ex.receiver, forged)
            refusals.append(info.value.reason)
        return fields

    ex.tamper = tamper
    _deliver(ex, verifier, suite=suite, signing_key=PINNED["ed25519"])
    assert refusals == ["sender"]
    assert store.secrets == [SECRET]  # the genuine delivery still went through


def test_replayed_signed_message_refused() -> None:
    """Threat: the parent replays a whole signed delivery: the nonce is spent."""
    ex, verifier, store = _enclave()
    _deliver(ex, verifier, signing_key=PINNED["ed25519"])
    _kind, fields = ex.requests[-1]
    with pytest.raises(ChannelError, match="replay"):
        seal_via_wire(ex.receiver, fields)
    assert store.secrets == [SECRET]


_P256_ORDER = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551


def test_malleated_signature_replay_refused() -> None:
    """Threat: the parent re-encodes a genuine ECDSA signature as (r, n - s), still valid but
    other bytes, and replays the message, which a defence keyed on signature bytes would let
    through. The nonce is spent, whatever the signature's encoding."""
    ex0, verifier, store = _enclave()
    ex = RecordingExchange(ex0.receiver, ex0.nsm)
    _deliver(ex, verifier, signing_key=PINNED["p256"])
    _kind, fields = ex.requests[-1]
    r, s = decode_dss_signature(fields["signature"])
    other = encode_dss_signature(r, _P256_ORDER - s)
    message = signed_bytes(
        SuiteId.MLKEM768_X25519, fields["nonce"], document_digest(ex.last_document),
        fields["signer"], fields["sealed"],
    )  # fmt: skip
    assert other != fields["signature"] and verify(PINNED["p256"].public_key(), other, message)
    with pytest.raises(ChannelError, match="replay"):
        seal_via_wire(ex.receiver, {**fields, "signature": other})
    assert store.secrets == [SECRET]


def test_replay_after_the_nonce_is_issued_again_refused() -> None:
    """Threat: after the nonce expires the parent has it issued again (a new document) and
    replays the signed message: the signature names the old document, so it is useless."""
    now = [1000.0]
    ex, verifier, store = _enclave(ledger=NonceLedger(ttl=10, clock=lambda: now[0]))
    _deliver(ex, verifier, suite="x25519", signing_key=PINNED["ed25519"])
    attest_fields, sealed_fields = ex.requests[0][1], ex.requests[1][1]
    now[0] += 11
    attest_via_wire(ex.receiver, ex.nsm, attest_fields)  # same nonce, new document
    with pytest.raises(ChannelError) as info:
        seal_via_wire(ex.receiver, sealed_fields)
    assert info.value.reason == "sender"
    assert store.secrets == [SECRET]


def test_signed_bytes_are_domain_separated_and_bound() -> None:
    key = PINNED["ed25519"]
    signer = key_id(key.public_key())
    base = (SuiteId.X25519, b"n" * 32, b"d" * 48, signer, b"sealed")
    sig = sign(key, signed_bytes(*base))
    assert verify(key.public_key(), sig, signed_bytes(*base))
    assert signed_bytes(*base).startswith(b"nitro-attest sender v1\x00")
    for i, other in enumerate(
        [SuiteId.MLKEM768_X25519, b"m" * 32, b"e" * 48, bytes(32), b"sealee"]
    ):
        changed = list(base)
        changed[i] = other
        assert not verify(key.public_key(), sig, signed_bytes(*changed))  # type: ignore[arg-type]
    assert not verify(key.public_key(), sig, b"nitro-attest sender v1\x00")


@pytest.mark.parametrize("signing_key", [None, PINNED["ed25519"]], ids=["unsigned", "signed"])
def test_without_pinned_keys_every_delivery_is_unauthenticated(
    signing_key: SenderPrivateKey | None,
) -> None:
    ex, verifier, store = _enclave(pinned=False)
    _deliver(ex, verifier, signing_key=signing_key)
    (delivery,) = store.deliveries
    assert delivery.authenticated is False and delivery.signer is None


def test_store_bounded_per_sender_never_evicts() -> None:
    """Threat: junk pushes a real secret out of the store. Now junk is refused, nothing evicted."""
    store = InMemorySecretStore(per_sender=2, bytes_per_sender=100)
    anon = Delivery(SuiteId.X25519, b"n" * 32, bytes(32))
    alice = Delivery(SuiteId.X25519, b"n" * 32, bytes(32), signer=b"\xaa" * 32, authenticated=True)
    store(b"real", anon)
    store(b"junk", anon)
    with pytest.raises(ChannelError, match="store is full for unauthenticated") as info:
        store(b"more junk", anon)
    assert info.value.reason == "store_full"
    store(b"alice's", alice)  # another sender's quota is untouched
    with pytest.raises(ChannelError, match="store is full for aaaa"):
        store(b"x" * 99, alice)  # over the byte quota
    assert store.secrets == [b"real", b"junk", b"alice's"]


def test_store_full_is_told_to_the_sender(fake_nsm: FakeNsm) -> None:
    store = InMemorySecretStore(per_sender=1)
    receiver = ChannelReceiver(handler=store)
    nsm = fake_nsm
    ex, verifier = LocalExchange(receiver, nsm), Verifier(root_pem=nsm.chain.root_pem)
    _deliver(ex, verifier)
    with pytest.raises(ChannelError, match="store is full") as info:
        _deliver(ex, verifier)
    assert info.value.reason == "store_full"
    assert store.secrets == [SECRET]


@pytest.mark.parametrize("where", ["restarted enclave", "another enclave, same nonce issued"])
def test_signed_message_replayed_elsewhere_refused(where: str) -> None:
    """Threat: the parent replays a signed delivery to a restarted enclave, or to another enclave
    pinning the same sender, after having that enclave issue the client's nonce itself."""
    ex, verifier, store = _enclave()
    _deliver(ex, verifier, signing_key=PINNED["ed25519"])
    attest_fields, sealed_fields = ex.requests[0][1], ex.requests[1][1]
    other, _, other_store = _enclave()  # same pinned senders, fresh keys and ledger
    if where == "restarted enclave":
        with pytest.raises(ChannelError) as info:
            seal_via_wire(other.receiver, sealed_fields)
        assert info.value.reason == "unknown_nonce"
    else:
        attest_via_wire(other.receiver, other.nsm, attest_fields)
        with pytest.raises(ChannelError) as info:
            seal_via_wire(other.receiver, sealed_fields)
        assert info.value.reason == "sender"
    assert other_store.secrets == [] and store.secrets == [SECRET]


@pytest.mark.parametrize(
    ("change", "needle"),
    [
        ({"signer": bytes(32)}, "go together"),
        ({"signature": bytes(64)}, "go together"),
        ({"signer": bytes(31), "signature": bytes(64)}, "must be 32 bytes"),
        ({"signer": bytes(32), "signature": bytes(81)}, r"81 bytes, expected 1\.\.80"),
        ({"signer": "text", "signature": bytes(64)}, "byte string"),
    ],
)
def test_sealed_message_signature_fields_checked_on_the_wire(
    change: dict[str, Any], needle: str
) -> None:
    """Untrusted fields are size-capped and typed before anything looks at them."""
    fields = {"v": 1, "type": "sealed_message", "nonce": b"n" * 32, "sealed": b"s" * 64, **change}
    with pytest.raises(ProtocolError, match=needle):
        SealedMessageRequest.from_fields(fields)
