"""The proxy under one greedy client and honest accounting (issue 21, item 12).

One peer must not hold every slot by default, and the bytes an enclave pipelines behind its
CONNECT head are part of what it sent (`up=`), so a log reader sees every byte that left.
"""

from __future__ import annotations

import argparse
import ipaddress
import socket

import pytest

from nitro_attest._cli.proxy_cmd import build_config, register
from nitro_attest.proxy import Allowlist, ProxyConfig
from nitro_attest.proxy.hosts import refused_for_names
from nitro_attest.server_limits import PROXY_IDLE_TIMEOUT, Limits
from nitro_attest.wire.transport import connect, parse_address

from .proxykit import ExchangeTarget, running_proxy, sha, wait_for

LISTEN = parse_address("tcp://127.0.0.1:0", role="listen")


def test_default_per_peer_limit_is_a_quarter_of_the_connections() -> None:
    config = ProxyConfig(LISTEN, None, unsafe_any_host=True)
    assert config.max_per_peer == 256 and config.max_connections == 1024
    three = Limits(max_connections=3)
    assert ProxyConfig(LISTEN, None, unsafe_any_host=True, limits=three).max_per_peer == 1
    unlimited = Limits(max_per_peer=0)
    assert ProxyConfig(LISTEN, None, unsafe_any_host=True, limits=unlimited).max_per_peer == 0
    assert config.idle_timeout == PROXY_IDLE_TIMEOUT == 300  # opaque tunnels (server_limits)


def test_cli_default_per_peer_limit() -> None:
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers())
    args = parser.parse_args(["proxy", "--listen", "tcp://127.0.0.1:0", "--to", "connect",
                              "--unsafe-any-host", "--max-connections", "40"])  # fmt: skip
    assert build_config(args).max_per_peer == 10
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    text = " ".join(sub.choices["proxy"].format_help().split())
    assert "a quarter of --max-connections: 256" in text


def test_one_peer_cannot_hold_every_slot() -> None:
    """The greedy enclave side opens connections and holds them: past its share it gets 503
    while slots remain for everyone else."""
    config = ProxyConfig(LISTEN, None, allowlist=Allowlist.of([("127.0.0.1", 9)]),
                         limits=Limits(max_connections=8))  # fmt: skip
    held = []
    with running_proxy(config) as (address, server, logs):
        for _ in range(2):
            held.append(connect(address, timeout=5))
        wait_for(lambda: server.active == 2)
        extra = connect(address, timeout=5)
        assert extra.recv(100).startswith(b"HTTP/1.1 503 ")
        extra.close()
        wait_for(lambda: any("connections open from this peer" in line for line in logs.lines()))
        assert server.active == 2
        for sock in held:
            sock.close()


@pytest.mark.parametrize(
    "ip", ["64:ff9b:1::7f00:1", "64:ff9b:1:ffff::1", "64:ff9b:1:7f:0:100::"]
)
def test_local_use_nat64_is_refused_for_names(ip: str) -> None:
    assert refused_for_names(ipaddress.ip_address(ip)) is not None
    # the well-known prefix is still judged by the IPv4 address it carries
    assert refused_for_names(ipaddress.ip_address("64:ff9b::7f00:1")) == "loopback"
    assert refused_for_names(ipaddress.ip_address("64:ff9b::cb00:7107")) is None


def test_bytes_pipelined_with_the_head_are_counted_up() -> None:
    target = ExchangeTarget("tcp://127.0.0.1:0", reply=b"R" * 10, mode="after-eof")
    port = int(target.bound.rsplit(":", 1)[1])
    early, late = b"E" * 1000, b"L" * 234
    config = ProxyConfig(LISTEN, None, allowlist=Allowlist.of([("127.0.0.1", port)]))
    with running_proxy(config) as (address, _, logs):
        sock = connect(address, timeout=10)
        sock.sendall(f"CONNECT 127.0.0.1:{port} HTTP/1.1\r\n\r\n".encode() + early)
        answer = b""
        while b"\r\n\r\n" not in answer:
            answer += sock.recv(4096)
        sock.sendall(late)
        sock.shutdown(socket.SHUT_WR)
        while sock.recv(65536):
            pass
        sock.close()
        wait_for(lambda: len(logs.lines()) == 1)
    assert target.received[0].sha256 == sha(early + late)
    line = logs.lines()[0]
    assert f" up={len(early) + len(late)} down=10 " in line, line
    target.close()
