"""Enclave side of the attested channel: key pairs, channel documents, sealed-message receipt.

``ChannelReceiver`` works on plain values; the two ``handle_*`` functions take and return the
typed messages of ``channel.messages``; ``channel_routes`` binds them to the enclave server.

Flow: the client asks for a channel document with a fresh nonce and a suite; the enclave has the
NSM sign a document whose public_key names its key for that suite, remembers the nonce, and
returns the document (plus the full key for the hybrid suite). The client verifies, seals and sends
{nonce, sealed}; the enclave opens it against what it issued for that nonce, accepts it at most
once (only if signed by a pinned sender key, when the server pins any), hands the plaintext to the
handler and answers with a keyed acknowledgement.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Protocol

from nitro_attest.channel.keys import ALL_SUITES, KeyPair, SuiteId
from nitro_attest.channel.messages import (
    MAX_NONCE_BYTES,
    MIN_NONCE_BYTES,
    ChannelAttestRequest,
    ChannelOfferResponse,
    ChannelRefusedError,
    SealedAckResponse,
    SealedMessageRequest,
)
from nitro_attest.channel.replay import Issued, NonceLedger
from nitro_attest.channel.seal import (
    OpenError,
    acknowledgement,
    channel_info,
    document_digest,
    max_sealed_bytes,
    open_sealed,
    split_plaintext,
)
from nitro_attest.channel.signing import (
    SenderPublicKey,
    key_id,
    signed_bytes,
    verify,
)
from nitro_attest.errors import ChannelError, ChannelFailure
from nitro_attest.wire.protocol import (
    AttestationResponse,
    AttestRequest,
    RequestHandler,
    RequestRefused,
    Response,
)
from nitro_attest.wire.routes import (
    PcrRegisters,
    Route,
    Routes,
    check_caller_public_key,
    settle_caller_key_pcr,
)

log = logging.getLogger("nitro_attest.channel")

class Attester(Protocol):
    """The part of an NSM backend the channel needs."""

    def attestation(
        self,
        *,
        user_data: bytes | None = None,
        nonce: bytes | None = None,
        public_key: bytes | None = None,
    ) -> bytes: ...


class ServingNsm(Attester, PcrRegisters, Protocol):
    """What ``channel_handlers`` needs: documents, and PCR16 to mark them (wire.server)."""


@dataclass(frozen=True, slots=True)
class Delivery:
    """What the plaintext handler learns besides the plaintext.

    ``authenticated`` is true only when the server pins sender keys and the message carried a
    valid signature by one of them; ``signer`` is then that key's id (SHA-256 of its
    SubjectPublicKeyInfo, 32 bytes: the same value and name as the message's ``signer`` field and
    the sender's ``Receipt.signer``). Otherwise the secret may come from anyone who reaches the
    port, the parent instance included (docs/threat-model.md).
    """

    suite: SuiteId
    nonce: bytes
    sha256: bytes
    signer: bytes | None = None
    authenticated: bool = False


SecretHandler = Callable[[bytes, Delivery], None]

DEFAULT_SECRETS_PER_SENDER = 16
DEFAULT_BYTES_PER_SENDER = 256 * 1024


class InMemorySecretStore:
    """Default handler: keep delivered secrets in memory, with a quota per sender.

    Each sender (a pinned key id; all unauthenticated deliveries share one quota) may store at most
    ``per_sender`` secrets and ``bytes_per_sender`` bytes. A delivery over quota is refused with a
    ``ChannelError`` that the sender is told about; nothing stored is ever evicted, so junk from
    one sender cannot push out another's secret.
    """

    def __init__(
        self,
        *,
        per_sender: int = DEFAULT_SECRETS_PER_SENDER,
        bytes_per_sender: int = DEFAULT_BYTES_PER_SENDER,
    ) -> None:
        if per_sender < 1 or bytes_per_sender < 1:
            raise ValueError("a secret store needs room for at least one secret per sender")
        self._per_sender = per_sender
        self._bytes = bytes_per_sender
        self._items: list[tuple[Delivery, bytes]] = []
        self._used: dict[bytes | None, tuple[int, int]] = {}
        self._lock = threading.Lock()

    def __call__(self, plaintext: bytes, delivery: Delivery) -> None:
        with self._lock:
            count, size = self._used.get(delivery.signer, (0, 0))
            if count + 1 > self._per_sender or size + len(plaintext) > self._bytes:
                who = delivery.signer.hex()[:16] if delivery.signer else "unauthenticated senders"
                raise ChannelError(
                    f"the enclave's secret store is full for {who} ({count} secret(s), "
                    f"{size} bytes; limit {self._per_sender} and {self._bytes} bytes): "
                    "not stored",
                    reason=ChannelFailure.STORE_FULL,
                )
            self._used[delivery.signer] = (count + 1, size + len(plaintext))
            self._items.append((delivery, plaintext))

    @property
    def secrets(self) -> list[bytes]:
        with self._lock:
            return [p for _, p in self._items]

    @property
    def deliveries(self) -> list[Delivery]:
        with self._lock:
            return [d for d, _ in self._items]

    def __repr__(self) -> str:  # never show the secrets
        return f"InMemorySecretStore({len(self._items)} secret(s))"


class ChannelReceiver:
    """Holds one key pair per offered suite for the life of the server; memory only."""

    def __init__(
        self,
        *,
        suites: Iterable[SuiteId] = ALL_SUITES,
        handler: SecretHandler | None = None,
        ledger: NonceLedger | None = None,
        senders: Iterable[SenderPublicKey] = (),
    ) -> None:
        self._keys = {s: KeyPair.generate(s) for s in suites}
        if not self._keys:
            raise ValueError("a channel needs at least one suite")
        # attest_default runs on every plain attest request: its key and field, looked up once.
        self._default = next(iter(self._keys.values()))
        self._default_field = self._default.advertised.field
        # Pinned sender keys, by key id. Empty: every delivery is from an unauthenticated sender.
        self._senders = {key_id(k): k for k in senders}
        self.handler: SecretHandler = handler if handler is not None else InMemorySecretStore()
        self._ledger = ledger if ledger is not None else NonceLedger()

    @property
    def suites(self) -> tuple[SuiteId, ...]:
        return tuple(self._keys)

    def keys(self, suite: SuiteId) -> KeyPair:
        try:
            return self._keys[suite]
        except KeyError:
            offered = ", ".join(s.label for s in self._keys)
            raise ChannelError(
                f"suite {suite.label} is not offered by this enclave (offers: {offered})",
                reason="suite",
            ) from None

    def public_key_field(self, suite: SuiteId) -> bytes:
        """The bytes to put in an attestation document's public_key for ``suite``."""
        return self.keys(suite).advertised.field

    def attest(
        self, nsm: Attester, *, nonce: bytes, suite: SuiteId, user_data: bytes | None = None
    ) -> ChannelOfferResponse:
        keys = self.keys(suite)
        _check_nonce(nonce)
        document = nsm.attestation(
            user_data=user_data, nonce=nonce, public_key=keys.advertised.field
        )
        self._ledger.issue(nonce, Issued(keys.advertised, document_digest(document)))
        log.info("channel document issued: suite=%s nonce=%s...", suite.label, nonce[:4].hex())
        # The suite's full public key goes beside the document: the hybrid key is too long for
        # the NSM's public_key field, which holds its hash.
        return ChannelOfferResponse(document, keys.public_bytes)

    def attest_default(
        self, nsm: Attester, *, nonce: bytes | None, user_data: bytes | None = None
    ) -> bytes:
        """A standard attestation naming the default suite's key (the first offered).

        The nonce is remembered when it could carry a channel message (16..512 bytes, not seen
        before); otherwise the document is still returned, but no sealed message will open for it.
        """
        keys = self._default
        document = nsm.attestation(user_data=user_data, nonce=nonce, public_key=self._default_field)
        if nonce is not None and MIN_NONCE_BYTES <= len(nonce) <= MAX_NONCE_BYTES:
            try:
                self._ledger.issue(nonce, Issued(keys.advertised, document_digest(document)))
            except ChannelError:
                log.info("attest: nonce %s... already known; no channel for it", nonce[:4].hex())
        return document

    def receive(
        self,
        nonce: bytes,
        sealed: bytes,
        *,
        signer: bytes | None = None,
        signature: bytes | None = None,
    ) -> bytes:
        """Check the sender, open, accept once, hand over; return the keyed acknowledgement.

        Raises ChannelError; a refused message never consumes its nonce.
        """
        issued = self._ledger.pending(nonce)
        keys = self.keys(issued.advertised.suite)
        if len(sealed) > max_sealed_bytes(keys.suite):
            raise ChannelError(f"sealed message too long ({len(sealed)} bytes)", reason="size")
        pinned = self._check_sender(
            keys.suite, nonce, issued.document_sha384, sealed, signer, signature
        )
        try:
            info = channel_info(issued.advertised, nonce, issued.document_sha384)
            ack_key, plaintext = split_plaintext(open_sealed(keys, sealed, info))
        except OpenError as exc:
            log.warning("sealed message refused: nonce=%s...: %s", nonce[:4].hex(), exc)
            raise ChannelError(str(exc), reason="open") from None
        self._ledger.consume(nonce)  # raises if another delivery won the race
        digest = hashlib.sha256(plaintext).digest()
        delivery = Delivery(
            keys.suite, nonce, digest, signer=pinned, authenticated=pinned is not None
        )
        try:
            self.handler(plaintext, delivery)
        except ChannelError as exc:
            log.warning(
                "sealed message refused by the handler: nonce=%s...: %s", nonce[:4].hex(), exc
            )
            raise
        log.info(
            "sealed message accepted: suite=%s nonce=%s... %d bytes sender=%s",
            keys.suite.label,
            nonce[:4].hex(),
            len(plaintext),
            pinned.hex()[:16] if pinned else "unauthenticated",
        )
        return acknowledgement(ack_key, plaintext)

    def _check_sender(
        self,
        suite: SuiteId,
        nonce: bytes,
        document_sha384: bytes,
        sealed: bytes,
        signer: bytes | None,
        signature: bytes | None,
    ) -> bytes | None:
        """The pinned key id that signed this message; None when no keys are pinned."""
        if not self._senders:
            return None  # a signature, if any, proves nothing without a pinned key to check
        if signer is None or signature is None:
            reason = "unsigned, and this enclave accepts only messages signed by a pinned sender"
        elif (key := self._senders.get(signer)) is None:
            reason = "signed by a key this enclave does not pin"
        elif not verify(
            key, signature, signed_bytes(suite, nonce, document_sha384, signer, sealed)
        ):
            reason = "the sender signature does not verify for this message"
        else:
            return signer
        log.warning("sealed message refused: nonce=%s...: %s", nonce[:4].hex(), reason)
        raise ChannelError(f"sealed message refused: {reason}", reason=ChannelFailure.SENDER)


def handle_channel_attest(
    receiver: ChannelReceiver, nsm: Attester, request: ChannelAttestRequest
) -> ChannelOfferResponse:
    """``channel_attest`` -> ``channel_offer``; the request was checked when it was built."""
    try:
        suite = SuiteId.from_label(request.suite)
    except ValueError as exc:
        raise ChannelError(str(exc), reason=ChannelFailure.SUITE) from None
    return receiver.attest(nsm, nonce=request.nonce, suite=suite, user_data=request.user_data)


def handle_sealed_message(
    receiver: ChannelReceiver, request: SealedMessageRequest
) -> SealedAckResponse:
    """``sealed_message`` -> ``sealed_ack``, or a ChannelError saying why it was refused."""
    ack = receiver.receive(
        request.nonce, request.sealed, signer=request.signer, signature=request.signature
    )
    return SealedAckResponse(ack)


def _refusal(exc: ChannelError) -> RequestRefused:
    if exc.reason is ChannelFailure.REQUEST:  # a request the channel cannot take as asked
        return RequestRefused(exc.message, code="bad_request")
    return ChannelRefusedError(exc.message)


def channel_routes(
    receiver: ChannelReceiver,
    nsm: ServingNsm,
    *,
    key_in_attest: bool = True,
    allow_caller_public_key: bool = False,
) -> Routes:
    """The server's routes for the channel's request types.

    With ``key_in_attest`` the channel answers ``attest`` too (the table then takes the NSM's
    routes without theirs: ``channel.routes.enclave_routes``): a request that brings no
    public_key of its own gets a document naming the enclave's default channel key (and its
    nonce is remembered), so every document the enclave hands out carries its channel key. A
    request with its own public_key is refused unless ``allow_caller_public_key`` (and a
    channel-shaped one always is): see ``wire.routes.check_caller_public_key``. PCR16 is settled
    first, as ``nsm_routes`` does (``wire.routes.settle_caller_key_pcr``): with the opt-in every
    document, the channel's own included, carries the caller-key mark and senders refuse it.
    """
    settle_caller_key_pcr(nsm, allow=allow_caller_public_key)

    def channel_attest(request: ChannelAttestRequest) -> Response:
        try:
            return handle_channel_attest(receiver, nsm, request)
        except ChannelError as exc:
            raise _refusal(exc) from None

    def sealed_message(request: SealedMessageRequest) -> Response:
        try:
            return handle_sealed_message(receiver, request)
        except ChannelError as exc:
            raise _refusal(exc) from None

    def attest(request: AttestRequest) -> Response:
        check_caller_public_key(request.public_key, allow=allow_caller_public_key)
        if request.public_key is not None:
            document = nsm.attestation(
                user_data=request.user_data, nonce=request.nonce, public_key=request.public_key
            )
        else:
            document = receiver.attest_default(
                nsm, nonce=request.nonce, user_data=request.user_data
            )
        return AttestationResponse(document=document)

    routes: list[Route[Any]] = [
        Route(ChannelAttestRequest, channel_attest),
        Route(SealedMessageRequest, sealed_message),
    ]
    if key_in_attest:
        routes.insert(0, Route(AttestRequest, attest))
    return Routes(routes)


def channel_handlers(
    receiver: ChannelReceiver,
    nsm: ServingNsm,
    *,
    key_in_attest: bool = True,
    allow_caller_public_key: bool = False,
) -> dict[str, RequestHandler]:
    """``channel_routes`` as the older dict of handlers (merged over ``nsm_handlers``' dict,
    its ``attest`` replaces theirs; ``channel.routes.enclave_routes`` says so explicitly)."""
    return channel_routes(
        receiver, nsm, key_in_attest=key_in_attest, allow_caller_public_key=allow_caller_public_key
    ).handlers()


def _check_nonce(nonce: Any) -> None:
    if not isinstance(nonce, bytes) or not MIN_NONCE_BYTES <= len(nonce) <= MAX_NONCE_BYTES:
        raise ChannelError(
            f"a channel nonce must be {MIN_NONCE_BYTES}..{MAX_NONCE_BYTES} bytes", reason="request"
        )
