"""The enclave server's routes: one typed table, a duplicate type an error, decoded by its route."""

from __future__ import annotations

import pytest

from nitro_attest.channel.keys import CHANNEL_KEY_PREFIX
from nitro_attest.channel.messages import SealedMessageRequest
from nitro_attest.channel.receiver import ChannelReceiver, channel_handlers
from nitro_attest.channel.routes import enclave_routes
from nitro_attest.errors import ConfigurationError
from nitro_attest.wire.protocol import (
    HEADER_SIZE,
    AttestationResponse,
    AttestRequest,
    DescribeRequest,
    ErrorResponse,
    Request,
    Response,
    UnknownTypeError,
)
from nitro_attest.wire.routes import Route, Routes, nsm_handlers, nsm_routes
from nitro_attest.wire.server import EnclaveServer

from .fakes import FakeNsm


def _answer(_: AttestRequest) -> Response:
    return AttestationResponse(document=b"first")


def test_a_second_route_for_a_type_is_an_error_not_an_override() -> None:
    with pytest.raises(ConfigurationError, match="two routes for request type 'attest'"):
        Routes([Route(AttestRequest, _answer), Route(AttestRequest, _answer)])
    nsm = FakeNsm(echo=True)
    with pytest.raises(ConfigurationError, match="'attest'"):
        nsm_routes(nsm) + nsm_routes(nsm)
    with pytest.raises(ConfigurationError, match="no request type 'nope'"):
        Routes.from_handlers({"nope": lambda r: ErrorResponse("x", "y")})


def test_enclave_routes_has_one_attest_route_and_it_is_the_channels() -> None:
    nsm = FakeNsm(echo=True)
    assert enclave_routes(nsm).types == ("attest", "describe")
    receiver = ChannelReceiver()
    routes = enclave_routes(nsm, channel=receiver)
    assert sorted(routes.types) == ["attest", "channel_attest", "describe", "sealed_message"]
    server = EnclaveServer(routes)
    answer = server.dispatch(AttestRequest(nonce=b"n" * 8).encode()[HEADER_SIZE:], "#1")
    assert isinstance(answer, AttestationResponse)
    # The channel's attest names the enclave's channel key; the NSM's would name none.
    named = nsm.calls[-1]["public_key"]
    assert named is not None and named.startswith(CHANNEL_KEY_PREFIX)
    plain = enclave_routes(nsm, channel=receiver, key_in_attest=False)
    EnclaveServer(plain).dispatch(AttestRequest(nonce=b"m" * 8).encode()[HEADER_SIZE:], "#2")
    assert nsm.calls[-1]["public_key"] is None


def _body(request: Request) -> bytes:
    return request.encode()[HEADER_SIZE:]


def test_requests_are_decoded_by_their_routes_class() -> None:
    routes = nsm_routes(FakeNsm(echo=True))
    assert isinstance(routes.decode(_body(AttestRequest(nonce=b"x"))), AttestRequest)
    assert isinstance(routes.decode(_body(DescribeRequest())), DescribeRequest)
    # A known type without a route decodes (and is answered unknown_type); an unknown one raises.
    sealed = _body(SealedMessageRequest(b"e" * 16, b"c" * 32))
    assert isinstance(routes.decode(sealed), SealedMessageRequest)
    answer = EnclaveServer(routes).dispatch(sealed, "#3")
    assert isinstance(answer, ErrorResponse) and answer.code == "unknown_type"
    with pytest.raises(UnknownTypeError):
        routes.decode(_body(DescribeRequest()).replace(b"describe", b"describE"))


def test_the_older_dicts_still_serve() -> None:
    nsm = FakeNsm(echo=True)
    handlers = {**nsm_handlers(nsm), **channel_handlers(ChannelReceiver(), nsm)}
    server = EnclaveServer(handlers)
    answer = server.dispatch(DescribeRequest().encode()[HEADER_SIZE:], "#4")
    assert answer.TYPE == "description"


def test_the_parent_cannot_get_its_key_attested_through_the_table() -> None:
    """As the parent: through serve's table (channel on), an attest naming a key of its own,
    channel-shaped or plain, is refused without the opt-in; the NSM is never asked."""
    nsm = FakeNsm(echo=True)
    server = EnclaveServer(enclave_routes(nsm, channel=ChannelReceiver()))
    asked = len(nsm.calls)
    for key in (CHANNEL_KEY_PREFIX + b"1" + b"k" * 32, b"0Y0\x13" + b"p" * 60):
        answer = server.dispatch(_body(AttestRequest(nonce=b"n" * 8, public_key=key)), "#p")
        assert isinstance(answer, ErrorResponse) and answer.code == "public_key_refused"
    assert len(nsm.calls) == asked


def test_routes_read_the_attest_layout_only_for_the_class_it_decodes_to() -> None:
    from dataclasses import dataclass

    from nitro_attest.wire import protocol
    from nitro_attest.wire.protocol import AttestRequest

    body = AttestRequest(nonce=b"n" * 16, user_data=b"u").encode()[protocol.HEADER_SIZE :]

    def answer(request: AttestRequest) -> ErrorResponse:
        return ErrorResponse("internal", "unused")

    plain = Routes([Route(AttestRequest, answer)])
    assert plain._attest_layout  # the path under test
    assert plain.decode(body) == AttestRequest(nonce=b"n" * 16, user_data=b"u")

    @dataclass(frozen=True, slots=True)
    class Stricter(AttestRequest):  # a route's own class decodes its own requests
        @classmethod
        def from_fields(cls, obj: object) -> AttestRequest:
            raise protocol.ProtocolError("refused by the route's class")

    custom = Routes([Route(Stricter, answer)])
    assert not custom._attest_layout
    with pytest.raises(protocol.ProtocolError, match="route's class"):
        custom.decode(body)
