"""The attested channel's messages on the enclave protocol: typed requests and responses.

Both ends use these types end to end: the sender builds them, the wire carries their fields, the
receiver's handlers take them. Each validates its fields once, when it is built (from the wire or
in process), so no handler re-checks a dict. Importing this module registers two request types
with ``nitro_attest.wire.protocol``:

- ``channel_attest`` {nonce, suite, user_data} -> ``channel_offer`` {document, public_key}
- ``sealed_message`` {nonce, sealed, signer?, signature?} -> ``sealed_ack`` {ack}

An enclave refusal (replay, unknown nonce, a message that does not open) is an ``error`` answer
with code ``channel_refused``. See docs/channel.md.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from nitro_attest.channel.keys import HYBRID_KEY_BYTES, SuiteId
from nitro_attest.channel.seal import max_sealed_bytes
from nitro_attest.channel.signing import KEY_ID_BYTES, MAX_SIGNATURE_BYTES
from nitro_attest.limits import MAX_DOCUMENT_BYTES
from nitro_attest.wire.protocol import (
    ProtocolError,
    Request,
    RequestRefused,
    Response,
    register_request,
    register_response,
)

REQUEST_CHANNEL_ATTEST = "channel_attest"
REQUEST_SEALED_MESSAGE = "sealed_message"
CHANNEL_REFUSED = "channel_refused"
MIN_NONCE_BYTES = 16
MAX_NONCE_BYTES = 512
MAX_USER_DATA_BYTES = 512
MAX_ACK_BYTES = 64
_MAX_SEALED = max(max_sealed_bytes(s) for s in SuiteId)


class ChannelRefusedError(RequestRefused):
    """The enclave refused a channel request (sent back as an ``error`` with this code)."""

    code = CHANNEL_REFUSED


def _only(obj: Mapping[str, Any], allowed: set[str], what: str) -> None:
    extra = set(obj) - allowed - {"v", "type"}
    if extra:
        raise ProtocolError(f"{what}: unexpected field(s) {', '.join(sorted(extra))}")


def _field(obj: Mapping[str, Any], key: str) -> Any:
    return obj.get(key)  # absent is None; the type's own check says what was expected


def _check(value: Any, key: str, what: str, low: int, high: int, *, optional: bool = False
           ) -> None:
    if value is None and optional:
        return
    if not isinstance(value, bytes):
        raise ProtocolError(f"{what}: '{key}' must be a byte string")
    if not low <= len(value) <= high:
        want = f"must be {low} bytes" if low == high else f"expected {low}..{high}"
        raise ProtocolError(f"{what}: '{key}' is {len(value)} bytes, {want}")


@register_request
@dataclass(frozen=True, slots=True)
class ChannelAttestRequest(Request):
    """{nonce, suite, user_data?}: ask for a document naming the enclave's key for ``suite``."""

    TYPE: ClassVar[str] = REQUEST_CHANNEL_ATTEST
    nonce: bytes
    suite: str
    user_data: bytes | None = None

    def __post_init__(self) -> None:
        what = self.TYPE
        _check(self.nonce, "nonce", what, MIN_NONCE_BYTES, MAX_NONCE_BYTES)
        if not isinstance(self.suite, str) or not 0 < len(self.suite) <= 64:
            raise ProtocolError(f"{what}: 'suite' must be a short text string")
        _check(self.user_data, "user_data", what, 0, MAX_USER_DATA_BYTES, optional=True)

    def to_fields(self) -> dict[str, Any]:
        return {"nonce": self.nonce, "suite": self.suite, "user_data": self.user_data}

    @classmethod
    def from_fields(cls, obj: Mapping[str, Any]) -> ChannelAttestRequest:
        _only(obj, {"nonce", "suite", "user_data"}, cls.TYPE)
        nonce, suite = _field(obj, "nonce"), _field(obj, "suite")
        return cls(nonce=nonce, suite=suite, user_data=_field(obj, "user_data"))


@register_response
@dataclass(frozen=True, slots=True)
class ChannelOfferResponse(Response):
    """{document, public_key}: the channel document and the suite's full public key."""

    TYPE: ClassVar[str] = "channel_offer"
    document: bytes
    public_key: bytes

    def __post_init__(self) -> None:
        _check(self.document, "document", self.TYPE, 1, MAX_DOCUMENT_BYTES)
        _check(self.public_key, "public_key", self.TYPE, 1, HYBRID_KEY_BYTES)

    def to_fields(self) -> dict[str, Any]:
        return {"document": self.document, "public_key": self.public_key}

    @classmethod
    def from_fields(cls, obj: Mapping[str, Any]) -> ChannelOfferResponse:
        _only(obj, {"document", "public_key"}, cls.TYPE)
        return cls(document=_field(obj, "document"), public_key=_field(obj, "public_key"))


@register_request
@dataclass(frozen=True, slots=True)
class SealedMessageRequest(Request):
    """{nonce, sealed, signer?, signature?}: a secret sealed to the key issued for ``nonce``."""

    TYPE: ClassVar[str] = REQUEST_SEALED_MESSAGE
    nonce: bytes
    sealed: bytes
    signer: bytes | None = None  # the sender's key id (SHA-256 of its SubjectPublicKeyInfo)
    signature: bytes | None = None  # over channel.signing.signed_bytes

    def __post_init__(self) -> None:
        what = self.TYPE
        _check(self.nonce, "nonce", what, MIN_NONCE_BYTES, MAX_NONCE_BYTES)
        _check(self.sealed, "sealed", what, 1, _MAX_SEALED)
        if (self.signer is None) != (self.signature is None):
            raise ProtocolError(f"{what}: 'signer' and 'signature' go together")
        _check(self.signer, "signer", what, KEY_ID_BYTES, KEY_ID_BYTES, optional=True)
        _check(self.signature, "signature", what, 1, MAX_SIGNATURE_BYTES, optional=True)

    def to_fields(self) -> dict[str, Any]:
        fields: dict[str, Any] = {"nonce": self.nonce, "sealed": self.sealed}
        if self.signer is not None or self.signature is not None:
            fields.update(signer=self.signer, signature=self.signature)
        return fields

    @classmethod
    def from_fields(cls, obj: Mapping[str, Any]) -> SealedMessageRequest:
        _only(obj, {"nonce", "sealed", "signer", "signature"}, cls.TYPE)
        return cls(
            nonce=_field(obj, "nonce"),
            sealed=_field(obj, "sealed"),
            signer=_field(obj, "signer"),
            signature=_field(obj, "signature"),
        )


@register_response
@dataclass(frozen=True, slots=True)
class SealedAckResponse(Response):
    """{ack}: the keyed acknowledgement of the secret the enclave accepted."""

    TYPE: ClassVar[str] = "sealed_ack"
    ack: bytes

    def __post_init__(self) -> None:
        _check(self.ack, "ack", self.TYPE, 1, MAX_ACK_BYTES)

    def to_fields(self) -> dict[str, Any]:
        return {"ack": self.ack}

    @classmethod
    def from_fields(cls, obj: Mapping[str, Any]) -> SealedAckResponse:
        _only(obj, {"ack"}, cls.TYPE)
        return cls(ack=_field(obj, "ack"))
