"""The NSM API wire codec: requests and responses as the Rust nsm-api's serde CBOR encodes them.

serde's externally tagged enums: a unit variant is a bare text string (``"DescribeNSM"``), a struct
variant a one-entry map ``{"ExtendPCR": {"index": 16, "data": h'..'}}`` whose inner keys follow the
Rust field order; byte fields are bstr, ``None`` is null. Both sides live here: the client side
(``encode_request`` / ``decode_response``, used with /dev/nsm) and the NSM side
(``decode_request`` / ``encode_response``, used by the simulator so it can be driven through the
same bytes).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, TypeVar

import cbor2

from nitro_attest.codec.cbor import CborError, strict_loads
from nitro_attest.errors import FormatError
from nitro_attest.limits import NSM_FIELD_BYTES
from nitro_attest.nsm.backend import NsmDescription, NsmError

MAX_REQUEST_SIZE = 0x1000  # the kernel driver refuses longer requests (EMSGSIZE)
MAX_RESPONSE_SIZE = 0x3000  # the response buffer the driver is given
U16_MAX = 0xFFFF

ERROR_CODES = (
    "Success",
    "InvalidArgument",
    "InvalidIndex",
    "InvalidResponse",
    "ReadOnlyIndex",
    "InvalidOperation",
    "BufferTooSmall",
    "InputTooLarge",
    "InternalError",
)
DIGESTS = ("SHA256", "SHA384", "SHA512")


# ---------------------------------------------------------------- requests


@dataclass(frozen=True, slots=True)
class DescribePcr:
    index: int


@dataclass(frozen=True, slots=True)
class ExtendPcr:
    index: int
    data: bytes


@dataclass(frozen=True, slots=True)
class LockPcr:
    index: int


@dataclass(frozen=True, slots=True)
class LockPcrs:
    range: int


@dataclass(frozen=True, slots=True)
class DescribeNsm:
    pass


@dataclass(frozen=True, slots=True)
class Attestation:
    user_data: bytes | None = None
    nonce: bytes | None = None
    public_key: bytes | None = None


@dataclass(frozen=True, slots=True)
class GetRandom:
    pass


Request = DescribePcr | ExtendPcr | LockPcr | LockPcrs | DescribeNsm | Attestation | GetRandom


# ---------------------------------------------------------------- responses


@dataclass(frozen=True, slots=True)
class DescribePcrResponse:
    lock: bool
    data: bytes


@dataclass(frozen=True, slots=True)
class ExtendPcrResponse:
    data: bytes


@dataclass(frozen=True, slots=True)
class LockPcrResponse:
    pass


@dataclass(frozen=True, slots=True)
class LockPcrsResponse:
    pass


@dataclass(frozen=True, slots=True)
class DescribeNsmResponse:
    description: NsmDescription


@dataclass(frozen=True, slots=True)
class AttestationResponse:
    document: bytes


@dataclass(frozen=True, slots=True)
class GetRandomResponse:
    random: bytes


@dataclass(frozen=True, slots=True)
class ErrorResponse:
    code: str


Response = (
    DescribePcrResponse
    | ExtendPcrResponse
    | LockPcrResponse
    | LockPcrsResponse
    | DescribeNsmResponse
    | AttestationResponse
    | GetRandomResponse
    | ErrorResponse
)


# ---------------------------------------------------------------- helpers


class _Malformed(FormatError):
    """Internal: the CBOR is well formed but is not the expected message shape."""


def _loads_exact(data: bytes) -> Any:
    """Decode exactly one CBOR item with the verifier's strict rules (no trailing bytes, no
    duplicate keys, no tags, bounded depth): NSM messages use none of those."""
    try:
        return strict_loads(data)
    except CborError as exc:
        raise _Malformed(f"undecodable CBOR: {exc}") from None


def _u16(value: Any, name: str) -> int:
    if type(value) is not int or not 0 <= value <= U16_MAX:
        raise _Malformed(f"{name} must be an unsigned 16-bit integer, got {value!r:.40}")
    return value


def _bstr(value: Any, name: str) -> bytes:
    if type(value) is not bytes:
        raise _Malformed(f"{name} must be a byte string, got {type(value).__name__}")
    return value


def _opt_bstr(value: Any, name: str) -> bytes | None:
    return None if value is None else _bstr(value, name)


def _fields(body: Any, variant: str, names: tuple[str, ...]) -> dict[str, Any]:
    """The inner map of a struct variant, with exactly the expected keys."""
    if not isinstance(body, dict):
        raise _Malformed(f"{variant} body must be a map, got {type(body).__name__}")
    if set(body) != set(names):
        raise _Malformed(f"{variant} fields are {sorted(map(str, body))}, expected {list(names)}")
    return body


def _variant(value: Any) -> tuple[str, Any]:
    """Split an externally tagged enum value into (variant name, body or None for unit)."""
    if isinstance(value, str):
        return value, None
    if isinstance(value, dict) and len(value) == 1:
        ((name, body),) = value.items()
        if isinstance(name, str):
            return name, body
    raise _Malformed(f"not an externally tagged variant: {value!r:.60}")


def _check_len(value: bytes | None, name: str, limit: int) -> None:
    if value is not None and len(value) > limit:
        raise NsmError("InputTooLarge", f"{name} is {len(value)} bytes, at most {limit} allowed")


# ---------------------------------------------------------------- client side


def request_to_cbor(request: Request) -> Any:
    """The serde value (before CBOR) of a request."""
    if isinstance(request, DescribePcr):
        return {"DescribePCR": {"index": request.index}}
    if isinstance(request, ExtendPcr):
        return {"ExtendPCR": {"index": request.index, "data": bytes(request.data)}}
    if isinstance(request, LockPcr):
        return {"LockPCR": {"index": request.index}}
    if isinstance(request, LockPcrs):
        return {"LockPCRs": {"range": request.range}}
    if isinstance(request, DescribeNsm):
        return "DescribeNSM"
    if isinstance(request, Attestation):
        # All three keys, in the Rust field order, null when absent (as nsm-api and pyif send).
        return {
            "Attestation": {
                "user_data": request.user_data,
                "nonce": request.nonce,
                "public_key": request.public_key,
            }
        }
    if isinstance(request, GetRandom):
        return "GetRandom"
    raise TypeError(f"not an NSM request: {request!r}")


def encode_request(request: Request) -> bytes:
    """Encode a request, enforcing the NSM's input limits before anything is sent."""
    for name in ("index", "range"):
        value = getattr(request, name, None)
        if value is not None and (type(value) is not int or not 0 <= value <= U16_MAX):
            raise NsmError("InvalidArgument", f"{name} must be in 0..{U16_MAX}, got {value!r}")
    if isinstance(request, Attestation):
        _check_len(request.user_data, "user_data", NSM_FIELD_BYTES)
        _check_len(request.nonce, "nonce", NSM_FIELD_BYTES)
        _check_len(request.public_key, "public_key", NSM_FIELD_BYTES)
    data = cbor2.dumps(request_to_cbor(request))
    if len(data) > MAX_REQUEST_SIZE:
        raise NsmError(
            "InputTooLarge", f"request is {len(data)} bytes, at most {MAX_REQUEST_SIZE} allowed"
        )
    return data


def _decode_description(body: Any) -> NsmDescription:
    names = (
        "version_major",
        "version_minor",
        "version_patch",
        "module_id",
        "max_pcrs",
        "locked_pcrs",
        "digest",
    )
    f = _fields(body, "DescribeNSM", names)
    if not isinstance(f["module_id"], str):
        raise _Malformed("module_id must be text")
    if not isinstance(f["locked_pcrs"], list):
        raise _Malformed("locked_pcrs must be an array")
    locked = tuple(_u16(i, "locked_pcrs entry") for i in f["locked_pcrs"])
    if f["digest"] not in DIGESTS:
        raise _Malformed(f"digest must be one of {DIGESTS}, got {f['digest']!r:.20}")
    return NsmDescription(
        version_major=_u16(f["version_major"], "version_major"),
        version_minor=_u16(f["version_minor"], "version_minor"),
        version_patch=_u16(f["version_patch"], "version_patch"),
        module_id=f["module_id"],
        max_pcrs=_u16(f["max_pcrs"], "max_pcrs"),
        locked_pcrs=locked,
        digest=f["digest"],
    )


def _response_from_cbor(value: Any) -> Response:
    name, body = _variant(value)
    if body is None:
        if name == "LockPCR":
            return LockPcrResponse()
        if name == "LockPCRs":
            return LockPcrsResponse()
        raise _Malformed(f"unknown unit response {name!r:.40}")
    if name == "DescribePCR":
        f = _fields(body, name, ("lock", "data"))
        if type(f["lock"]) is not bool:
            raise _Malformed("DescribePCR lock must be a bool")
        return DescribePcrResponse(lock=f["lock"], data=_bstr(f["data"], "data"))
    if name == "ExtendPCR":
        return ExtendPcrResponse(_bstr(_fields(body, name, ("data",))["data"], "data"))
    if name == "DescribeNSM":
        return DescribeNsmResponse(_decode_description(body))
    if name == "Attestation":
        return AttestationResponse(
            _bstr(_fields(body, name, ("document",))["document"], "document")
        )
    if name == "GetRandom":
        return GetRandomResponse(_bstr(_fields(body, name, ("random",))["random"], "random"))
    if name == "Error":
        if body not in ERROR_CODES:
            raise _Malformed(f"unknown error code {body!r:.40}")
        return ErrorResponse(str(body))
    raise _Malformed(f"unknown response {name!r:.40}")


def decode_response(data: bytes) -> Response:
    """Decode a response from the NSM; anything undecodable is an ``InternalError`` NsmError.

    An ``Error`` response is returned as ``ErrorResponse`` (see ``expect`` to raise it).
    """
    if len(data) > MAX_RESPONSE_SIZE:
        raise NsmError("InternalError", f"response of {len(data)} bytes exceeds the buffer size")
    try:
        return _response_from_cbor(_loads_exact(data))
    except _Malformed as exc:
        raise NsmError("InternalError", f"undecodable NSM response: {exc}") from None


R = TypeVar("R")


def expect(response: Response, expected: type[R]) -> R:
    """Return ``response`` if it is an ``expected``; raise the NSM's error, or InvalidResponse."""
    if isinstance(response, expected):
        return response
    if isinstance(response, ErrorResponse):
        raise NsmError(response.code, "the NSM refused the request")
    raise NsmError(
        "InvalidResponse",
        f"expected a {expected.__name__}, the NSM answered {type(response).__name__}",
    )


# ---------------------------------------------------------------- NSM side


def decode_request(data: bytes) -> Request:
    """Decode a request as the NSM receives it.

    Raises NsmError: ``InputTooLarge`` over 4096 bytes, ``InvalidOperation`` for an unknown request,
    ``InvalidArgument`` for a malformed one. (The real NSM's choice of code for garbage input is not
    documented; these are ours.)
    """
    if len(data) > MAX_REQUEST_SIZE:
        raise NsmError("InputTooLarge", f"request is {len(data)} bytes")
    try:
        value = _loads_exact(data)
        name, body = _variant(value)
    except _Malformed as exc:
        raise NsmError("InvalidArgument", f"undecodable request: {exc}") from None
    try:
        return _request_from_variant(name, body)
    except _Malformed as exc:
        raise NsmError("InvalidArgument", str(exc)) from None


def _request_from_variant(name: str, body: Any) -> Request:
    if body is None:
        if name == "DescribeNSM":
            return DescribeNsm()
        if name == "GetRandom":
            return GetRandom()
    elif name == "DescribePCR":
        return DescribePcr(_u16(_fields(body, name, ("index",))["index"], "index"))
    elif name == "ExtendPCR":
        f = _fields(body, name, ("index", "data"))
        return ExtendPcr(_u16(f["index"], "index"), _bstr(f["data"], "data"))
    elif name == "LockPCR":
        return LockPcr(_u16(_fields(body, name, ("index",))["index"], "index"))
    elif name == "LockPCRs":
        return LockPcrs(_u16(_fields(body, name, ("range",))["range"], "range"))
    elif name == "Attestation":
        f = _fields(body, name, ("user_data", "nonce", "public_key"))
        return Attestation(
            user_data=_opt_bstr(f["user_data"], "user_data"),
            nonce=_opt_bstr(f["nonce"], "nonce"),
            public_key=_opt_bstr(f["public_key"], "public_key"),
        )
    raise NsmError("InvalidOperation", f"unknown request {name!r:.40}")


def response_to_cbor(response: Response) -> Any:
    """The serde value (before CBOR) of a response."""
    if isinstance(response, DescribePcrResponse):
        return {"DescribePCR": {"lock": response.lock, "data": bytes(response.data)}}
    if isinstance(response, ExtendPcrResponse):
        return {"ExtendPCR": {"data": bytes(response.data)}}
    if isinstance(response, LockPcrResponse):
        return "LockPCR"
    if isinstance(response, LockPcrsResponse):
        return "LockPCRs"
    if isinstance(response, DescribeNsmResponse):
        d = response.description
        return {
            "DescribeNSM": {
                "version_major": d.version_major,
                "version_minor": d.version_minor,
                "version_patch": d.version_patch,
                "module_id": d.module_id,
                "max_pcrs": d.max_pcrs,
                "locked_pcrs": sorted(d.locked_pcrs),  # a BTreeSet: ascending
                "digest": d.digest,
            }
        }
    if isinstance(response, AttestationResponse):
        return {"Attestation": {"document": bytes(response.document)}}
    if isinstance(response, GetRandomResponse):
        return {"GetRandom": {"random": bytes(response.random)}}
    if isinstance(response, ErrorResponse):
        return {"Error": response.code}
    raise TypeError(f"not an NSM response: {response!r}")


def encode_response(response: Response) -> bytes:
    return cbor2.dumps(response_to_cbor(response))


def decode_request_or_error(data: bytes) -> Request | ErrorResponse:
    """Server helper: a decoded request, or the Error response the NSM sends back instead."""
    try:
        return decode_request(data)
    except NsmError as exc:
        return ErrorResponse(exc.code)
