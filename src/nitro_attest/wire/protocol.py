"""The client <-> enclave wire protocol: length-prefixed CBOR frames (formats layer, no I/O).

A frame is a 4-byte big-endian unsigned length followed by that many bytes holding one CBOR map
with text keys. Every map carries ``"v"`` (protocol version) and ``"type"``. Requests and responses
are typed dataclasses; each request type registers itself in ``REQUEST_TYPES`` so a new request
(for example a sealed-secret delivery) is one dataclass plus one ``register_request`` call here or
in its own module, and one handler on the server side. See docs/protocol.md.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, TypeVar

import cbor2

from nitro_attest.codec.cbor import CborError, bstr_head, strict_loads
from nitro_attest.errors import TransportError
from nitro_attest.limits import MAX_FRAME_BYTES, NSM_FIELD_BYTES
from nitro_attest.nsm.backend import NsmDescription, PcrDescription

PROTOCOL_VERSION = 1
HEADER_SIZE = 4
_MAX_DEPTH = 8
_HEADER = struct.Struct(">I")


class ProtocolError(TransportError):
    """Bytes or a message that break the protocol. ``code`` is the error code sent back."""

    code = "bad_request"


class RequestRefused(TransportError):
    """A well-formed request its handler will not serve (the server answers an ``error`` with
    ``code``). Not a ProtocolError: the bytes were fine, the handler said no."""

    code = "refused"

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        if code is not None:
            self.code = code


class MalformedFrameError(ProtocolError):
    code = "bad_frame"


class FrameTooLargeError(ProtocolError):
    code = "frame_too_large"


class UnsupportedVersionError(ProtocolError):
    code = "unsupported_version"


class UnknownTypeError(ProtocolError):
    code = "unknown_type"


class PublicKeyRefusedError(RequestRefused):
    """An `attest` request named a public_key this server will not have the NSM attest."""

    code = "public_key_refused"


# A public_key starting with this names an attested-channel key (docs/channel.md). Only the
# enclave's own channel code may have such a document signed, never a caller: a caller-chosen
# channel key would make the NSM vouch for a key the enclave does not hold (docs/threat-model.md).
CHANNEL_KEY_PREFIX = b"NAHPKE"


# Error codes a server may send in an ErrorResponse.
ERROR_CODES = frozenset(
    {
        "bad_frame",  # not a CBOR map with text keys, or trailing bytes
        "frame_too_large",  # length prefix above MAX_FRAME_BYTES
        "unsupported_version",
        "unknown_type",
        "bad_request",  # a known type with missing, extra or mistyped fields
        "nsm_error",  # the NSM refused; message starts with its ErrorCode name
        "busy",  # too many connections
        "timeout",  # the client sent half a frame and went quiet
        "internal",
        "channel_refused",  # attested channel: replay, unknown nonce, message does not open
        "public_key_refused",  # attest naming a caller-chosen public_key
    }
)


# --- frames -------------------------------------------------------------------------------------


def encode_frame(payload: bytes, *, max_size: int = MAX_FRAME_BYTES) -> bytes:
    if len(payload) > max_size:
        raise FrameTooLargeError(f"frame of {len(payload)} bytes exceeds the {max_size}-byte limit")
    return _HEADER.pack(len(payload)) + payload


def decode_header(header: bytes, *, max_size: int = MAX_FRAME_BYTES) -> int:
    """Return the body length announced by a 4-byte header; refuse it before any body is read."""
    if len(header) != HEADER_SIZE:
        raise MalformedFrameError(f"frame header is {len(header)} bytes, expected {HEADER_SIZE}")
    (length,) = _HEADER.unpack(header)
    if length > max_size:
        raise FrameTooLargeError(f"frame announces {length} bytes, the limit is {max_size}")
    if length == 0:
        raise MalformedFrameError("empty frame")
    return int(length)


def split_frame(data: bytes, *, max_size: int = MAX_FRAME_BYTES) -> tuple[bytes, bytes]:
    """Split one whole frame off ``data``: (body, rest). Raises if ``data`` holds no whole frame."""
    length = decode_header(data[:HEADER_SIZE], max_size=max_size)
    end = HEADER_SIZE + length
    if len(data) < end:
        raise MalformedFrameError(f"truncated frame: {len(data) - HEADER_SIZE} of {length} bytes")
    return data[HEADER_SIZE:end], data[end:]


def decode_body(body: bytes) -> dict[str, Any]:
    """Decode a frame body into a map with text keys; the version is checked, the type is not."""
    if len(body) > MAX_FRAME_BYTES:
        raise FrameTooLargeError(f"frame of {len(body)} bytes exceeds the {MAX_FRAME_BYTES} limit")
    try:  # one item, no trailing bytes, no duplicate keys, no tags, bounded nesting
        obj = strict_loads(body, max_depth=_MAX_DEPTH)
    except CborError as exc:
        raise MalformedFrameError(f"frame is not valid CBOR: {exc}") from None
    if not isinstance(obj, dict) or not all(isinstance(k, str) for k in obj):
        raise MalformedFrameError("frame is not a CBOR map with text keys")
    version = obj.get("v")
    if type(version) is not int:
        raise MalformedFrameError("frame has no integer 'v' (protocol version)")
    if version != PROTOCOL_VERSION:
        raise UnsupportedVersionError(
            f"protocol version {version} is not supported (this side speaks {PROTOCOL_VERSION})"
        )
    if not isinstance(obj.get("type"), str):
        raise MalformedFrameError("frame has no text 'type'")
    return obj


def _encode_map(type_name: str, fields: Mapping[str, Any]) -> bytes:
    return encode_frame(cbor2.dumps({"v": PROTOCOL_VERSION, "type": type_name, **fields}))


# --- field checks -------------------------------------------------------------------------------


def _fields(obj: Mapping[str, Any], allowed: frozenset[str], what: str) -> None:
    extra = set(obj) - allowed - {"v", "type"}
    if extra:
        raise ProtocolError(f"{what}: unexpected field(s) {', '.join(sorted(extra))}")


def _opt_bytes(
    obj: Mapping[str, Any], key: str, what: str, limit: int = NSM_FIELD_BYTES
) -> bytes | None:
    value = obj.get(key)
    if value is None:
        return None
    if not isinstance(value, bytes):
        raise ProtocolError(f"{what}: '{key}' must be a byte string or null")
    if len(value) > limit:
        raise ProtocolError(f"{what}: '{key}' is {len(value)} bytes, at most {limit} allowed")
    return value


def _req_bytes(obj: Mapping[str, Any], key: str, what: str, limit: int) -> bytes:
    value = _opt_bytes(obj, key, what, limit)
    if value is None:
        raise ProtocolError(f"{what}: '{key}' is missing")
    return value


def _req_str(obj: Mapping[str, Any], key: str, what: str, limit: int = 4096) -> str:
    value = obj.get(key)
    if not isinstance(value, str):
        raise ProtocolError(f"{what}: '{key}' must be a text string")
    return value[:limit]


def _req_int(obj: Mapping[str, Any], key: str, what: str) -> int:
    value = obj.get(key)
    if type(value) is not int:
        raise ProtocolError(f"{what}: '{key}' must be an integer")
    return value


# --- requests -----------------------------------------------------------------------------------


class Request:
    """Base of every request. Subclasses set TYPE and implement to_fields/from_fields."""

    TYPE: ClassVar[str]

    def to_fields(self) -> dict[str, Any]:
        raise NotImplementedError

    @classmethod
    def from_fields(cls, obj: Mapping[str, Any]) -> Request:
        raise NotImplementedError

    def encode(self) -> bytes:
        return _encode_map(self.TYPE, self.to_fields())


REQUEST_TYPES: dict[str, type[Request]] = {}
_R = TypeVar("_R", bound=type[Request])


def register_request(cls: _R) -> _R:
    """Class decorator: make a request type decodable by ``decode_request``."""
    if cls.TYPE in REQUEST_TYPES:
        raise ValueError(f"request type {cls.TYPE!r} is already registered")
    REQUEST_TYPES[cls.TYPE] = cls
    return cls


_ATTEST_KEYS = frozenset({"v", "type", "nonce", "user_data", "public_key"})


@register_request
@dataclass(frozen=True, slots=True)
class AttestRequest(Request):
    """Ask the enclave's NSM for a signed document over these three optional fields."""

    TYPE: ClassVar[str] = "attest"
    nonce: bytes | None = None
    user_data: bytes | None = None
    public_key: bytes | None = None

    def to_fields(self) -> dict[str, Any]:
        return {"nonce": self.nonce, "user_data": self.user_data, "public_key": self.public_key}

    @classmethod
    def from_fields(cls, obj: Mapping[str, Any]) -> AttestRequest:
        if not obj.keys() <= _ATTEST_KEYS:  # the check on every request; _fields names the extra
            _fields(obj, _ATTEST_KEYS, "attest")
        return cls(
            nonce=_opt_bytes(obj, "nonce", "attest"),
            user_data=_opt_bytes(obj, "user_data", "attest"),
            public_key=_opt_bytes(obj, "public_key", "attest"),
        )


@register_request
@dataclass(frozen=True, slots=True)
class DescribeRequest(Request):
    """Ask for the NSM description and the current PCR values."""

    TYPE: ClassVar[str] = "describe"

    def to_fields(self) -> dict[str, Any]:
        return {}

    @classmethod
    def from_fields(cls, obj: Mapping[str, Any]) -> DescribeRequest:
        _fields(obj, frozenset(), "describe")
        return cls()


# The attest request as every nitro-attest client writes it (cbor2's encoding of the map
# AttestRequest.encode builds): map(5) "v" 1 "type" "attest", then "nonce", "user_data" and
# "public_key", each a byte string or null. Sliced without a CBOR decoder, like codec.cose's NSM
# layout: the server's request path then runs far less code per request, which a lone request pays
# on cold caches (bench/server.py, one client). Any other bytes, or another order, go through the
# strict decoder; what this accepts, the strict decoder accepts with the same result
# (tests/test_protocol.py), and the fields are checked by AttestRequest.from_fields either way.
_ATTEST_HEAD = b"\xa5\x61v" + cbor2.dumps(PROTOCOL_VERSION) + b"\x64type\x66attest"
_ATTEST_LAYOUT_KEYS = (("nonce", b"\x65nonce"), ("user_data", b"\x69user_data"),
                       ("public_key", b"\x6apublic_key"))  # fmt: skip


def decode_attest_layout(body: bytes) -> AttestRequest | None:
    """The attest request in the layout above, or None for any other bytes (then decode_body)."""
    if not body.startswith(_ATTEST_HEAD) or len(body) > MAX_FRAME_BYTES:
        return None
    size = len(body)
    at = len(_ATTEST_HEAD)
    obj: dict[str, Any] = {"v": PROTOCOL_VERSION, "type": AttestRequest.TYPE}
    for name, key in _ATTEST_LAYOUT_KEYS:
        if not body.startswith(key, at):
            return None
        at += len(key)
        if at >= size:
            return None
        head = body[at]
        if head == 0xF6:  # null
            obj[name] = None
            at += 1
            continue
        if 0x40 <= head <= 0x57:  # byte string, length in the head
            start, length = at + 1, head - 0x40
        elif head == 0x58:  # one length byte
            start, length = at + 2, int.from_bytes(body[at + 1 : at + 2], "big")
        elif head == 0x59:  # two length bytes
            start, length = at + 3, int.from_bytes(body[at + 1 : at + 3], "big")
        else:
            return None
        if start + length > size:
            return None
        obj[name] = body[start : start + length]
        at = start + length
    if at != size:
        return None
    return AttestRequest.from_fields(obj)


def decode_request(body: bytes) -> Request:
    obj = decode_body(body)
    cls = REQUEST_TYPES.get(obj["type"])
    if cls is None:
        raise UnknownTypeError(f"unknown request type {obj['type'][:64]!r}")
    return cls.from_fields(obj)


# --- responses ----------------------------------------------------------------------------------


class Response:
    TYPE: ClassVar[str]

    def to_fields(self) -> dict[str, Any]:
        raise NotImplementedError

    @classmethod
    def from_fields(cls, obj: Mapping[str, Any]) -> Response:
        raise NotImplementedError

    def encode(self) -> bytes:
        return _encode_map(self.TYPE, self.to_fields())


RESPONSE_TYPES: dict[str, type[Response]] = {}
_S = TypeVar("_S", bound=type[Response])


def register_response(cls: _S) -> _S:
    if cls.TYPE in RESPONSE_TYPES:
        raise ValueError(f"response type {cls.TYPE!r} is already registered")
    RESPONSE_TYPES[cls.TYPE] = cls
    return cls


@register_response
@dataclass(frozen=True, slots=True)
class AttestationResponse(Response):
    TYPE: ClassVar[str] = "attestation"
    document: bytes

    def to_fields(self) -> dict[str, Any]:
        return {"document": self.document}

    def encode(self) -> bytes:
        # The server's answer to nearly every request: a constant prefix (the bytes cbor2 writes
        # for this map's other keys) and one copy of the document, instead of a dict for cbor2.
        document = self.document
        head = bstr_head(len(document))
        size = len(_ATTESTATION_PREFIX) + len(head) + len(document)
        if size > MAX_FRAME_BYTES:
            raise FrameTooLargeError(
                f"frame of {size} bytes exceeds the {MAX_FRAME_BYTES}-byte limit"
            )
        return b"".join((_HEADER.pack(size), _ATTESTATION_PREFIX, head, document))

    @classmethod
    def from_fields(cls, obj: Mapping[str, Any]) -> AttestationResponse:
        _fields(obj, frozenset({"document"}), "attestation")
        return cls(document=_req_bytes(obj, "document", "attestation", MAX_FRAME_BYTES))


@register_response
@dataclass(frozen=True, slots=True)
class DescriptionResponse(Response):
    TYPE: ClassVar[str] = "description"
    nsm: NsmDescription
    pcrs: dict[int, PcrDescription] = field(default_factory=dict)

    def to_fields(self) -> dict[str, Any]:
        n = self.nsm
        return {
            "nsm": {
                "version_major": n.version_major,
                "version_minor": n.version_minor,
                "version_patch": n.version_patch,
                "module_id": n.module_id,
                "max_pcrs": n.max_pcrs,
                "locked_pcrs": list(n.locked_pcrs),
                "digest": n.digest,
            },
            "pcrs": [
                {"index": i, "locked": p.locked, "data": p.data}
                for i, p in sorted(self.pcrs.items())
            ],
        }

    @classmethod
    def from_fields(cls, obj: Mapping[str, Any]) -> DescriptionResponse:
        what = "description"
        _fields(obj, frozenset({"nsm", "pcrs"}), what)
        nsm = obj.get("nsm")
        pcrs = obj.get("pcrs")
        if not isinstance(nsm, dict) or not isinstance(pcrs, list):
            raise ProtocolError(f"{what}: 'nsm' must be a map and 'pcrs' a list")
        locked = nsm.get("locked_pcrs")
        if not isinstance(locked, list) or not all(type(i) is int for i in locked):
            raise ProtocolError(f"{what}: 'locked_pcrs' must be a list of integers")
        desc = NsmDescription(
            version_major=_req_int(nsm, "version_major", what),
            version_minor=_req_int(nsm, "version_minor", what),
            version_patch=_req_int(nsm, "version_patch", what),
            module_id=_req_str(nsm, "module_id", what),
            max_pcrs=_req_int(nsm, "max_pcrs", what),
            locked_pcrs=tuple(locked),
            digest=_req_str(nsm, "digest", what),
        )
        out: dict[int, PcrDescription] = {}
        for entry in pcrs:
            if not isinstance(entry, dict) or not isinstance(entry.get("locked"), bool):
                raise ProtocolError(f"{what}: each PCR must be a map with a boolean 'locked'")
            out[_req_int(entry, "index", what)] = PcrDescription(
                locked=entry["locked"], data=_req_bytes(entry, "data", what, 64)
            )
        return cls(nsm=desc, pcrs=out)


@register_response
@dataclass(frozen=True, slots=True)
class ErrorResponse(Response):
    TYPE: ClassVar[str] = "error"
    code: str
    message: str

    def to_fields(self) -> dict[str, Any]:
        return {"code": self.code, "message": self.message}

    @classmethod
    def from_fields(cls, obj: Mapping[str, Any]) -> ErrorResponse:
        _fields(obj, frozenset({"code", "message"}), "error")
        return cls(
            code=_req_str(obj, "code", "error", 64), message=_req_str(obj, "message", "error")
        )


_ATTESTATION_PREFIX = cbor2.dumps(
    {"v": PROTOCOL_VERSION, "type": AttestationResponse.TYPE, "document": b""}
)[:-1]  # without the empty document's head


def decode_response(body: bytes) -> Response:
    obj = decode_body(body)
    cls = RESPONSE_TYPES.get(obj["type"])
    if cls is None:
        raise UnknownTypeError(f"unknown response type {obj['type'][:64]!r}")
    return cls.from_fields(obj)


def error_for(exc: ProtocolError | RequestRefused) -> ErrorResponse:
    return ErrorResponse(code=exc.code, message=str(exc))


RequestHandler = Callable[[Request], Response]
