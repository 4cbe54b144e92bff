"""One Limits type: checked in the library with the field's name, mapped to flags by the CLI."""

from __future__ import annotations

import argparse
import dataclasses
import math

import pytest

from nitro_attest._cli.common import CliError
from nitro_attest._cli.limit_flags import limits_from_args
from nitro_attest.errors import ConfigurationError
from nitro_attest.https.front import FrontConfig
from nitro_attest.proxy import ProxyConfig
from nitro_attest.server_limits import (
    DEFAULT_MAX_CONNECTIONS,
    HTTPS_LIMITS,
    PROXY_LIMITS,
    SERVE_LIMITS,
    Limits,
    LimitsError,
)
from nitro_attest.wire.server import EnclaveServer, nsm_handlers
from nitro_attest.wire.transport import parse_address

from .fakes import FakeNsm


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("max_connections", 0),
        ("max_connections", True),
        ("max_connections", 2.5),
        ("max_per_peer", -1),
        ("idle_timeout", 0),
        ("idle_timeout", math.nan),
        ("header_timeout", -1.0),
        ("frame_deadline", 0.0),
        ("write_timeout", "10"),
        ("max_header_bytes", 100),
        ("max_header_lines", 0),
        ("max_frame_bytes", 0),
        ("max_frame_bytes", 10**9),
        ("shed_grace", -0.1),
        ("drain_timeout", math.inf),
        ("drain_timeout", -1),
    ],
)
def test_a_bad_limit_names_its_field(field: str, value: object) -> None:
    with pytest.raises(LimitsError) as caught:
        Limits(**{field: value})  # type: ignore[arg-type]
    assert caught.value.field == field
    assert str(caught.value).startswith(field + " ")
    assert isinstance(caught.value, ConfigurationError)


def test_every_server_starts_from_one_connection_default() -> None:
    for limits in (SERVE_LIMITS, PROXY_LIMITS, HTTPS_LIMITS):
        assert limits.max_connections == DEFAULT_MAX_CONNECTIONS == 1024
    assert PROXY_LIMITS.idle_timeout == 300 and SERVE_LIMITS.idle_timeout == 30
    assert Limits(max_connections=40).per_peer == 10 and Limits(max_per_peer=0).per_peer == 0


def test_servers_read_their_limits() -> None:
    listen = parse_address("tcp://127.0.0.1:0", role="listen")
    proxy = ProxyConfig(listen, None, unsafe_any_host=True,
                        limits=Limits(max_connections=8, header_timeout=2.0))  # fmt: skip
    assert (proxy.max_connections, proxy.max_per_peer, proxy.handshake_timeout) == (8, 2, 2.0)
    front = FrontConfig(app=listen, limits=Limits(max_header_bytes=4096))
    assert front.max_header_bytes == 4096 and front.idle_timeout == HTTPS_LIMITS.idle_timeout
    server = EnclaveServer(nsm_handlers(FakeNsm(echo=True)), limits=Limits(frame_deadline=1.0),
                           read_timeout=7.0)  # fmt: skip
    assert server.limits == dataclasses.replace(SERVE_LIMITS, frame_deadline=1.0, idle_timeout=7.0)
    with pytest.raises(LimitsError, match=r"^write_timeout "):
        EnclaveServer(nsm_handlers(FakeNsm(echo=True)), write_timeout=0)
    with pytest.raises(TypeError, match="unknown limit"):
        EnclaveServer(nsm_handlers(FakeNsm(echo=True)), read_timout=1.0)


def test_the_cli_names_the_flag_the_user_typed() -> None:
    args = argparse.Namespace(read_timeout=0.0, frame_deadline=5.0)
    with pytest.raises(CliError, match=r"^--read-timeout must be a positive number of seconds$"):
        limits_from_args(args, SERVE_LIMITS, ("idle_timeout", "frame_deadline"),
                         {"idle_timeout": "--read-timeout"})  # fmt: skip
    args = argparse.Namespace(max_header_bytes=10)
    with pytest.raises(CliError, match=r"^--max-header-bytes must be 1024\.\.1048576$"):
        limits_from_args(args, HTTPS_LIMITS, ("max_header_bytes",))
    args = argparse.Namespace(max_connections=3)
    assert limits_from_args(args, PROXY_LIMITS, ("max_connections",)).idle_timeout == 300
