"""A server playing the hostile parent instance: it answers every request with bytes it chose.

docs/threat-model.md: the parent relays every byte between client and enclave, so whatever the
client is handed as "the document" (or as the enclave's error message) may be forged or altered.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from nitro_attest.channel.messages import (
    ChannelAttestRequest,
    ChannelOfferResponse,
    SealedMessageRequest,
)
from nitro_attest.wire.protocol import (
    AttestationResponse,
    AttestRequest,
    Request,
    RequestHandler,
    RequestRefused,
    Response,
)

from .serverkit import running_server


@dataclass
class Parent:
    address: str
    seen: list[str] = field(default_factory=list)


@contextmanager
def parent_serving(
    listen: str, document: bytes, *, error: str | None = None
) -> Iterator[Parent]:
    """Serve ``document`` to attest and channel_attest; ``error`` answers with that message."""
    parent = Parent("")

    def answer(request: Request) -> Response:
        parent.seen.append(request.TYPE)
        if error is not None:
            # sent back verbatim as the "enclave's" error message
            raise RequestRefused(error, code="bad_request")
        if isinstance(request, ChannelAttestRequest):
            return ChannelOfferResponse(document, b"\x01" * 32)
        if isinstance(request, SealedMessageRequest):
            raise RequestRefused("the parent swallowed a sealed message")
        return AttestationResponse(document=document)

    handlers: dict[str, RequestHandler] = {
        AttestRequest.TYPE: answer,
        ChannelAttestRequest.TYPE: answer,
        SealedMessageRequest.TYPE: answer,
    }
    with running_server(listen, handlers) as (addr, _server, _logs):
        parent.address = str(addr)
        yield parent
