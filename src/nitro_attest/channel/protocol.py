"""The attested channel on the enclave protocol: its request/response types and handlers.

Importing this module registers two request types with ``nitro_attest.wire.protocol``:

- ``channel_attest`` {nonce, suite, user_data} -> ``channel_offer`` {document, public_key}
- ``sealed_message`` {nonce, sealed, signer?, signature?} -> ``sealed_ack`` {ack}

An enclave refusal (replay, unknown nonce, a message that does not open) is an ``error`` answer
with code ``channel_refused``. See docs/channel.md.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from nitro_attest.channel.keys import HYBRID_KEY_BYTES, SuiteId
from nitro_attest.channel.receiver import (
    MAX_NONCE_BYTES,
    MAX_USER_DATA_BYTES,
    REQUEST_CHANNEL_ATTEST,
    REQUEST_SEALED_MESSAGE,
    Attester,
    ChannelReceiver,
    handle_channel_attest,
    handle_sealed_message,
)
from nitro_attest.channel.seal import max_sealed_bytes
from nitro_attest.channel.signing import KEY_ID_BYTES, MAX_SIGNATURE_BYTES
from nitro_attest.errors import ChannelError
from nitro_attest.limits import MAX_FRAME_BYTES
from nitro_attest.wire.protocol import (
    AttestationResponse,
    AttestRequest,
    ProtocolError,
    Request,
    RequestHandler,
    Response,
    register_request,
    register_response,
)
from nitro_attest.wire.server import check_caller_public_key

if TYPE_CHECKING:
    from nitro_attest.wire.client import Connection

CHANNEL_REFUSED = "channel_refused"
_MAX_SEALED = max(max_sealed_bytes(s) for s in SuiteId)


class ChannelRefusedError(ProtocolError):
    """The enclave refused a channel request (sent back as an ``error`` with this code)."""

    code = CHANNEL_REFUSED


def _only(obj: Mapping[str, Any], allowed: set[str], what: str) -> None:
    extra = set(obj) - allowed - {"v", "type"}
    if extra:
        raise ProtocolError(f"{what}: unexpected field(s) {', '.join(sorted(extra))}")


def _bytes(obj: Mapping[str, Any], key: str, what: str, limit: int, *, optional: bool = False
           ) -> bytes | None:
    value = obj.get(key)
    if value is None and optional:
        return None
    if not isinstance(value, bytes):
        raise ProtocolError(f"{what}: '{key}' must be a byte string")
    if len(value) > limit:
        raise ProtocolError(f"{what}: '{key}' is {len(value)} bytes, at most {limit} allowed")
    return value


def _need(obj: Mapping[str, Any], key: str, what: str, limit: int) -> bytes:
    value = _bytes(obj, key, what, limit)
    assert value is not None
    return value


@register_request
@dataclass(frozen=True, slots=True)
class ChannelAttestRequest(Request):
    TYPE: ClassVar[str] = REQUEST_CHANNEL_ATTEST
    nonce: bytes
    suite: str
    user_data: bytes | None = None

    def to_fields(self) -> dict[str, Any]:
        return {"nonce": self.nonce, "suite": self.suite, "user_data": self.user_data}

    @classmethod
    def from_fields(cls, obj: Mapping[str, Any]) -> ChannelAttestRequest:
        what = REQUEST_CHANNEL_ATTEST
        _only(obj, {"nonce", "suite", "user_data"}, what)
        suite = obj.get("suite")
        if not isinstance(suite, str) or len(suite) > 64:
            raise ProtocolError(f"{what}: 'suite' must be a short text string")
        return cls(
            nonce=_need(obj, "nonce", what, MAX_NONCE_BYTES),
            suite=suite,
            user_data=_bytes(obj, "user_data", what, MAX_USER_DATA_BYTES, optional=True),
        )


@register_response
@dataclass(frozen=True, slots=True)
class ChannelOfferResponse(Response):
    TYPE: ClassVar[str] = "channel_offer"
    document: bytes
    public_key: bytes

    def to_fields(self) -> dict[str, Any]:
        return {"document": self.document, "public_key": self.public_key}

    @classmethod
    def from_fields(cls, obj: Mapping[str, Any]) -> ChannelOfferResponse:
        _only(obj, {"document", "public_key"}, cls.TYPE)
        return cls(
            document=_need(obj, "document", cls.TYPE, MAX_FRAME_BYTES),
            public_key=_need(obj, "public_key", cls.TYPE, HYBRID_KEY_BYTES),
        )


@register_request
@dataclass(frozen=True, slots=True)
class SealedMessageRequest(Request):
    TYPE: ClassVar[str] = REQUEST_SEALED_MESSAGE
    nonce: bytes
    sealed: bytes
    signer: bytes | None = None  # the sender's key id (SHA-256 of its SubjectPublicKeyInfo)
    signature: bytes | None = None  # over channel.signing.signed_bytes

    def to_fields(self) -> dict[str, Any]:
        fields: dict[str, Any] = {"nonce": self.nonce, "sealed": self.sealed}
        if self.signer is not None or self.signature is not None:
            fields.update(signer=self.signer, signature=self.signature)
        return fields

    @classmethod
    def from_fields(cls, obj: Mapping[str, Any]) -> SealedMessageRequest:
        what = REQUEST_SEALED_MESSAGE
        _only(obj, {"nonce", "sealed", "signer", "signature"}, what)
        signer = _bytes(obj, "signer", what, KEY_ID_BYTES, optional=True)
        signature = _bytes(obj, "signature", what, MAX_SIGNATURE_BYTES, optional=True)
        if (signer is None) != (signature is None):
            raise ProtocolError(f"{what}: 'signer' and 'signature' go together")
        if signer is not None and len(signer) != KEY_ID_BYTES:
            raise ProtocolError(f"{what}: 'signer' must be {KEY_ID_BYTES} bytes")
        return cls(
            nonce=_need(obj, "nonce", what, MAX_NONCE_BYTES),
            sealed=_need(obj, "sealed", what, _MAX_SEALED),
            signer=signer,
            signature=signature,
        )


@register_response
@dataclass(frozen=True, slots=True)
class SealedAckResponse(Response):
    TYPE: ClassVar[str] = "sealed_ack"
    ack: bytes

    def to_fields(self) -> dict[str, Any]:
        return {"ack": self.ack}

    @classmethod
    def from_fields(cls, obj: Mapping[str, Any]) -> SealedAckResponse:
        _only(obj, {"ack"}, cls.TYPE)
        return cls(ack=_need(obj, "ack", cls.TYPE, 64))


def _refusal(exc: ChannelError) -> ProtocolError:
    if exc.reason == "request":
        return ProtocolError(f"{exc.message}")
    return ChannelRefusedError(exc.message)


def channel_handlers(
    receiver: ChannelReceiver,
    nsm: Attester,
    *,
    key_in_attest: bool = True,
    allow_caller_public_key: bool = False,
) -> dict[str, RequestHandler]:
    """Server handlers for the channel's request types.

    With ``key_in_attest`` the standard ``attest`` handler is replaced too: a request that brings
    no public_key of its own gets a document naming the enclave's default channel key (and its
    nonce is remembered), so every document the enclave hands out carries its channel key. A
    request with its own public_key is refused unless ``allow_caller_public_key`` (and a
    channel-shaped one always is): see ``wire.server.check_caller_public_key``.
    """

    def channel_attest(request: Request) -> Response:
        assert isinstance(request, ChannelAttestRequest)
        try:
            fields = handle_channel_attest(receiver, nsm, request.to_fields())
        except ChannelError as exc:
            raise _refusal(exc) from None
        return ChannelOfferResponse(fields["document"], fields["public_key"])

    def sealed_message(request: Request) -> Response:
        assert isinstance(request, SealedMessageRequest)
        try:
            fields = handle_sealed_message(receiver, request.to_fields())
        except ChannelError as exc:
            raise _refusal(exc) from None
        return SealedAckResponse(fields["ack"])

    def attest(request: Request) -> Response:
        assert isinstance(request, AttestRequest)
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

    handlers: dict[str, RequestHandler] = {
        ChannelAttestRequest.TYPE: channel_attest,
        SealedMessageRequest.TYPE: sealed_message,
    }
    if key_in_attest:
        handlers[AttestRequest.TYPE] = attest
    return handlers


class ConnectionExchange:
    """The client's side: the channel's request types over one protocol connection."""

    def __init__(self, connection: Connection) -> None:
        self._conn = connection

    def __call__(self, kind: str, fields: Mapping[str, Any]) -> Mapping[str, Any]:
        # Imported here so the enclave side (serve) does not load the client module.
        from nitro_attest.wire.client import ClientError, EnclaveError

        request: Request
        if kind == REQUEST_CHANNEL_ATTEST:
            request = ChannelAttestRequest(
                nonce=fields["nonce"], suite=fields["suite"], user_data=fields.get("user_data")
            )
        elif kind == REQUEST_SEALED_MESSAGE:
            request = SealedMessageRequest(
                nonce=fields["nonce"],
                sealed=fields["sealed"],
                signer=fields.get("signer"),
                signature=fields.get("signature"),
            )
        else:
            raise ValueError(f"not a channel request type: {kind!r}")
        try:
            response = self._conn.request(request)
        except EnclaveError as exc:
            reason = "refused" if exc.code == CHANNEL_REFUSED else "enclave"
            raise ChannelError(
                f"the enclave refused: {exc.code}: {exc.remote_message}", reason=reason
            ) from None
        except ClientError as exc:
            raise ChannelError(str(exc), reason="transport") from None
        if not isinstance(response, ChannelOfferResponse | SealedAckResponse):
            raise ChannelError(f"unexpected answer {response.TYPE!r}", reason="response")
        return response.to_fields()
