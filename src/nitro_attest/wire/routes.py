"""The enclave server's routes: one typed table, built once, from request type to handler.

A ``Route`` pairs a request class with a handler that takes exactly that class, so no handler
checks what it was given; ``Routes`` refuses a second route for a type (ConfigurationError)
instead of silently replacing the first, and decodes each request with its route's own class.
``nsm_routes`` answers ``attest`` and ``describe`` with the NSM; the channel adds its routes in
``channel.routes.enclave_routes``, which builds the whole table of `serve`.

Also here: the caller-key rules every ``attest`` route applies (``check_caller_public_key``, and
``settle_caller_key_pcr``, PCR16's mark, run once before any route answers).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar

from nitro_attest.attestation.caller_keys import (
    CALLER_KEY_LABEL,
    CALLER_KEY_PCR,
    MARKED_PCR_VALUE,
    PRISTINE_PCR_VALUE,
)
from nitro_attest.errors import ConfigurationError
from nitro_attest.nsm.backend import NsmBackend, PcrDescription
from nitro_attest.wire import protocol
from nitro_attest.wire.protocol import (
    REQUEST_TYPES,
    AttestationResponse,
    AttestRequest,
    DescribeRequest,
    DescriptionResponse,
    PublicKeyRefusedError,
    Request,
    RequestHandler,
    Response,
    UnknownTypeError,
)

# serve's log handler is attached to the server's logger: the PCR16 warning goes there too.
log = logging.getLogger("nitro_attest.wire.server")

_MAX_DESCRIBED_PCRS = 32
Req = TypeVar("Req", bound=Request)


@dataclass(frozen=True, slots=True)
class Route(Generic[Req]):
    """Requests of class ``request`` (its TYPE) are answered by ``handle``."""

    request: type[Req]
    handle: Callable[[Req], Response]

    @property
    def type(self) -> str:
        return self.request.TYPE


class Routes:
    """The server's table: at most one route per request type, fixed once built."""

    __slots__ = ("_attest_layout", "_by_type")

    def __init__(self, routes: Iterable[Route[Any]]) -> None:
        by_type: dict[str, Route[Any]] = {}
        for route in routes:
            if route.type in by_type:
                raise ConfigurationError(
                    f"two routes for request type {route.type!r}: a server answers each type "
                    "with one handler (leave one out where the table is built)"
                )
            by_type[route.type] = route
        self._by_type = by_type
        # attest requests in the clients' own layout skip the CBOR decoder when the route takes
        # exactly the class that layout decodes to (protocol.decode_attest_layout)
        attest = by_type.get(AttestRequest.TYPE)
        self._attest_layout = attest is not None and attest.request is AttestRequest

    @classmethod
    def from_handlers(cls, handlers: Mapping[str, RequestHandler]) -> Routes:
        """Routes from the older form, a dict of untyped handlers by registered type name."""
        routes: list[Route[Any]] = []
        for name, handler in handlers.items():
            request = REQUEST_TYPES.get(name)
            if request is None:
                raise ConfigurationError(f"no request type {name!r} is defined")
            routes.append(Route(request, handler))
        return cls(routes)

    def __add__(self, other: Routes) -> Routes:
        return Routes([*self, *other])

    def __iter__(self) -> Iterator[Route[Any]]:
        return iter(self._by_type.values())

    def __len__(self) -> int:
        return len(self._by_type)

    def __contains__(self, name: object) -> bool:
        return name in self._by_type

    @property
    def types(self) -> tuple[str, ...]:
        return tuple(self._by_type)

    def get(self, name: str) -> Route[Any] | None:
        return self._by_type.get(name)

    def handlers(self) -> dict[str, RequestHandler]:
        """The table as the older dict of handlers (each still takes only its own class)."""
        return {route.type: route.handle for route in self}

    def decode(self, body: bytes) -> Request:
        """A request body decoded by its route's class. A type with no route decodes by the
        protocol's own table (the server answers it ``unknown_type``); an unknown one raises
        UnknownTypeError."""
        if self._attest_layout:
            attest = protocol.decode_attest_layout(body)
            if attest is not None:
                return attest
        obj = protocol.decode_body(body)
        route = self._by_type.get(obj["type"])
        request = route.request if route is not None else REQUEST_TYPES.get(obj["type"])
        if request is None:
            raise UnknownTypeError(f"unknown request type {obj['type'][:64]!r}")
        return request.from_fields(obj)


def check_caller_public_key(public_key: bytes | None, *, allow: bool) -> None:
    """Refuse a caller-chosen public_key unless allowed; refuse a channel-shaped one always.

    The NSM signs whatever key it is given, so a caller choosing the key turns the enclave into a
    signing oracle for whoever reaches the port (docs/threat-model.md).
    """
    if public_key is None:
        return
    if public_key.startswith(protocol.CHANNEL_KEY_PREFIX):
        raise PublicKeyRefusedError(
            "a public_key in the attested-channel format is attested only by the enclave's own "
            "channel code (use channel_attest), never for a caller"
        )
    if not allow:
        raise PublicKeyRefusedError(
            "this enclave does not attest caller-chosen public keys (its operator can allow them "
            "with serve --allow-caller-public-key)"
        )


class PcrRegisters(Protocol):
    """The part of an NSM backend that marks documents (``settle_caller_key_pcr``)."""

    def describe_pcr(self, index: int) -> PcrDescription: ...

    def extend_pcr(self, index: int, data: bytes) -> bytes: ...

    def lock_pcr(self, index: int) -> None: ...


def settle_caller_key_pcr(nsm: PcrRegisters, *, allow: bool) -> None:
    """Lock PCR16 so every document says whether this enclave attests caller-chosen keys.

    ``allow``: extend it with the caller-key label, then lock it (attestation.caller_keys); if
    it is already locked with any other value, raise ConfigurationError: the enclave could not
    say so. Otherwise lock it untouched, so documents carry the value relying parties require;
    a PCR16 already marked or holding another value is left alone with a warning (our relying
    parties refuse those documents). Idempotent; the NSM's own errors pass as NsmError.
    """
    pcr = f"PCR{CALLER_KEY_PCR}"
    want = MARKED_PCR_VALUE if allow else PRISTINE_PCR_VALUE
    now = nsm.describe_pcr(CALLER_KEY_PCR)
    if now.locked and now.data == want:
        return
    if not allow:
        if now.locked or now.data != PRISTINE_PCR_VALUE:
            what = "the caller-key mark" if now.data == MARKED_PCR_VALUE else "another value"
            log.warning(
                "%s holds %s (%s): nitro-attest's relying parties refuse this enclave's "
                "documents until it restarts", pcr, what, "locked" if now.locked else "unlocked",
            )  # fmt: skip
            return
        nsm.lock_pcr(CALLER_KEY_PCR)
    else:
        if now.locked or now.data not in (PRISTINE_PCR_VALUE, MARKED_PCR_VALUE):
            raise ConfigurationError(
                f"{pcr} is {'locked' if now.locked else 'already extended'} with a value other "
                f"than the caller-key mark ({now.data.hex()[:16]}...): this enclave cannot mark "
                "its documents, so it will not attest caller-chosen keys"
            )
        if now.data == PRISTINE_PCR_VALUE:
            nsm.extend_pcr(CALLER_KEY_PCR, CALLER_KEY_LABEL)
        nsm.lock_pcr(CALLER_KEY_PCR)
    done = nsm.describe_pcr(CALLER_KEY_PCR)  # another extend may have raced ours
    if not (done.locked and done.data == want):
        raise ConfigurationError(
            f"{pcr} ended {'locked' if done.locked else 'unlocked'} at {done.data.hex()[:16]}..., "
            f"not the expected {'caller-key mark' if allow else 'untouched value'}"
        )


def nsm_routes(
    backend: NsmBackend, *, allow_caller_public_key: bool = False, attest: bool = True
) -> Routes:
    """The NSM's routes: attestation (unless ``attest=False``: another route answers it, the
    channel's) and description, both answered by ``backend``.

    ``allow_caller_public_key`` lets an `attest` request name its own public_key: anyone who
    reaches the server then gets any key attested, so such a document proves nothing about who
    holds the key. Channel-shaped keys are refused regardless. Either way PCR16 is settled
    first (``settle_caller_key_pcr``): marked and locked with the opt-in, locked untouched
    without, so no document of an oracle enclave passes for one naming the enclave's own key.
    """
    settle_caller_key_pcr(backend, allow=allow_caller_public_key)

    def answer_attest(request: AttestRequest) -> Response:
        check_caller_public_key(request.public_key, allow=allow_caller_public_key)
        document = backend.attestation(
            user_data=request.user_data, nonce=request.nonce, public_key=request.public_key
        )
        return AttestationResponse(document=document)

    def answer_describe(request: DescribeRequest) -> Response:
        nsm = backend.describe_nsm()
        count = min(nsm.max_pcrs, _MAX_DESCRIBED_PCRS)
        pcrs: dict[int, PcrDescription] = {i: backend.describe_pcr(i) for i in range(count)}
        return DescriptionResponse(nsm=nsm, pcrs=pcrs)

    routes: list[Route[Any]] = [Route(DescribeRequest, answer_describe)]
    if attest:
        routes.insert(0, Route(AttestRequest, answer_attest))
    return Routes(routes)


def nsm_handlers(
    backend: NsmBackend, *, allow_caller_public_key: bool = False
) -> dict[str, RequestHandler]:
    """``nsm_routes`` as the older dict of handlers (the server takes either)."""
    return nsm_routes(backend, allow_caller_public_key=allow_caller_public_key).handlers()
