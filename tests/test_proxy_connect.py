"""HTTP CONNECT toward allowlisted hosts, attacked from the enclave side: refusals happen before
any dial (a listener that must see no accept), names resolve per connection, and DNS answers
pointing at loopback or metadata addresses are refused."""

from __future__ import annotations

import asyncio
import ipaddress
import select
import socket
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from nitro_attest.proxy import Allowlist, ProxyConfig, ProxyConfigError
from nitro_attest.proxy.dial import SockAddr, system_dial
from nitro_attest.proxy.hosts import IPAddress
from nitro_attest.wire.transport import Address, connect, listening_socket, parse_address

from .proxykit import ExchangeTarget, no_accept, proxy_kw, running_proxy, sha, wait_for

LISTEN = parse_address("tcp://127.0.0.1:0", role="listen")


@pytest.fixture
def silent() -> Iterator[tuple[socket.socket, int]]:
    """A listening socket that must never see a connection."""
    sock = listening_socket(parse_address("tcp://127.0.0.1:0", role="listen"))
    yield sock, sock.getsockname()[1]
    sock.close()


def _connect_config(*pairs: tuple[str, int], **kw: Any) -> ProxyConfig:
    return ProxyConfig(LISTEN, None, allowlist=Allowlist.of(pairs), **proxy_kw(kw))


def _ask(address: Address, request: bytes, *, timeout: float = 10) -> tuple[socket.socket, bytes]:
    """Send raw request bytes; return the socket and the proxy's answer head."""
    sock = connect(address, timeout=timeout)
    sock.sendall(request)
    answer = b""
    while b"\r\n\r\n" not in answer:
        chunk = sock.recv(4096)
        if not chunk:
            break
        answer += chunk
    return sock, answer


def _status(address: Address, request: bytes) -> int:
    sock, answer = _ask(address, request)
    sock.close()
    return int(answer.split(b" ", 2)[1])


def test_allowed_ip_literal_tunnels_byte_exact_with_early_data(tmp_path: Path) -> None:
    target = ExchangeTarget("tcp://127.0.0.1:0", reply=b"D" * 300_000, mode="after-eof")
    port = int(target.bound.rsplit(":", 1)[1])
    payload = b"early" + bytes(range(256)) * 4000
    with running_proxy(_connect_config(("127.0.0.1", port))) as (address, _, logs):
        head = f"CONNECT 127.0.0.1:{port} HTTP/1.1\r\nHost: x\r\n\r\n".encode()
        sock, answer = _ask(address, head + payload[:5])  # bytes before our 200 are kept
        assert answer == b"HTTP/1.1 200 Connection established\r\n\r\n"
        sock.sendall(payload[5:])
        sock.shutdown(socket.SHUT_WR)
        got = b""
        while chunk := sock.recv(65536):
            got += chunk
        sock.close()
        assert got == b"D" * 300_000
        wait_for(lambda: len(target.received) == 1 and len(logs.lines()) == 1)
    assert target.received[0].sha256 == sha(payload)
    line = logs.lines()[0]
    assert f"target=127.0.0.1:{port} " in line and "end=closed" in line
    target.close()


@pytest.mark.parametrize(
    ("listed", "asked"),
    [
        (("127.0.0.1", "PORT+1"), "127.0.0.1:PORT"),  # port not on the list
        (("127.0.0.2", "PORT"), "127.0.0.1:PORT"),  # host not on the list
        (("localhost", "PORT"), "127.0.0.1:PORT"),  # a listed name does not allow its address
        (("127.0.0.1", "PORT"), "localhost:PORT"),  # a listed address does not allow a name
        (("localhost", "PORT"), "localhost:PORT"),  # listed name, but it resolves to loopback
        (("127.0.0.1", "PORT"), "[::ffff:127.0.0.1]:PORT"),
    ],
)
def test_refused_with_403_and_no_dial(
    silent: tuple[socket.socket, int], listed: tuple[str, str], asked: str
) -> None:
    listener, port = silent

    def fill(text: str) -> str:
        return text.replace("PORT+1", str(port + 1)).replace("PORT", str(port))

    config = _connect_config((listed[0], int(fill(listed[1]))))
    with running_proxy(config) as (address, _, logs):
        request = f"CONNECT {fill(asked)} HTTP/1.1\r\n\r\n".encode()
        assert _status(address, request) == 403
        wait_for(lambda: len(logs.lines()) == 1)
        time.sleep(0.05)
        assert no_accept(listener)
    assert "end=refused 403" in logs.lines()[0]


@pytest.mark.parametrize(
    ("request_bytes", "status"),
    [
        (b"CONNECT 127.0.0.1 HTTP/1.1\r\n\r\n", 400),
        (b"CONNECT 127.0.0.1:PORT HTTP/1.1\r\nBad Header\r\n\r\n", 400),
        (b"CONNECT 127.0.0.1:PORT HTTP/1.1\r\nContent-Length: 4\r\n\r\nbody", 400),
        (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n", 400),  # TLS to the proxy
        (b"GET http://127.0.0.1:PORT/ HTTP/1.1\r\n\r\n", 405),
        (b"CONNECT 127.0.0.1:PORT HTTP/1.1\r\n" + b"X: " + b"y" * 9000, 431),
        (b"CONNECT 127.0.0.1:PORT HTTP/1.1\r\n" + b"X: y\r\n" * 100 + b"\r\n", 431),
    ],
)
def test_malformed_refused_no_dial(
    silent: tuple[socket.socket, int], request_bytes: bytes, status: int
) -> None:
    listener, port = silent
    with running_proxy(_connect_config(("127.0.0.1", port))) as (address, _, logs):
        assert _status(address, request_bytes.replace(b"PORT", str(port).encode())) == status
        wait_for(lambda: len(logs.lines()) == 1)
    assert no_accept(listener)
    assert f"end=refused {status}" in logs.lines()[0]
    assert "yyyy" not in logs.lines()[0]


def test_handshake_deadline(silent: tuple[socket.socket, int]) -> None:
    listener, port = silent
    config = _connect_config(("127.0.0.1", port), handshake_timeout=0.5)
    with running_proxy(config) as (address, _, logs):
        start = time.monotonic()
        quiet, answer = _ask(address, b"")  # says nothing
        assert answer.startswith(b"HTTP/1.1 408 ")
        assert 0.4 < time.monotonic() - start < 2.5
        quiet.close()
        slow = connect(address, timeout=10)  # slowloris: a byte every 0.1 s never finishes
        start = time.monotonic()
        for byte in f"CONNECT 127.0.0.1:{port} HTTP/1.1\r\nX: y".encode():
            if select.select([slow], [], [], 0)[0] or time.monotonic() - start > 3:
                break  # the proxy has answered
            slow.sendall(bytes([byte]))
            time.sleep(0.1)
        slow.settimeout(3)
        answer = slow.recv(100)
        assert answer.startswith(b"HTTP/1.1 408 ")
        assert time.monotonic() - start < 3
        slow.close()
        wait_for(lambda: len(logs.lines()) == 2)
    assert all("end=refused 408" in line for line in logs.lines())
    assert no_accept(listener)


class FakeNet:
    """A resolver with scripted answers and a dialer that records the address, then connects to
    a local target instead: so names can resolve to non-local addresses in a loopback-only test."""

    def __init__(self, answers: list[list[str]], real_target: tuple[str, int]) -> None:
        self.answers = answers
        self.real = real_target
        self.dialled: list[SockAddr] = []
        self.lookups: list[str] = []

    async def resolve(self, name: str, port: int) -> Sequence[IPAddress]:
        self.lookups.append(name)
        return [ipaddress.ip_address(a) for a in self.answers.pop(0)]

    async def dial(self, family: int, sockaddr: SockAddr) -> socket.socket:
        self.dialled.append(sockaddr)
        return await system_dial(socket.AF_INET, self.real)


def test_names_resolve_per_connection(tmp_path: Path) -> None:
    target = ExchangeTarget("tcp://127.0.0.1:0", reply=b"ok", mode="after-eof")
    real = ("127.0.0.1", int(target.bound.rsplit(":", 1)[1]))
    net = FakeNet([["203.0.113.7"], ["198.51.100.9", "203.0.113.7"]], real)
    config = _connect_config(("svc.example", 443))
    with running_proxy(config, resolver=net.resolve, dialer=net.dial) as (address, _, logs):
        for done in (1, 2):
            sock, answer = _ask(address, b"CONNECT SVC.example:443 HTTP/1.1\r\n\r\n")
            assert answer.startswith(b"HTTP/1.1 200 ")
            sock.shutdown(socket.SHUT_WR)
            assert sock.recv(10) == b"ok"
            sock.close()
            # one connection's log line before the next starts: the lines' order is then known
            wait_for(lambda n=done: len(logs.lines()) == n)
    assert net.lookups == ["svc.example", "svc.example"]
    assert net.dialled == [("203.0.113.7", 443), ("198.51.100.9", 443)]
    assert "address=203.0.113.7" in logs.lines()[0]
    assert "address=198.51.100.9" in logs.lines()[1]
    target.close()


@pytest.mark.parametrize(
    "answer",
    [["169.254.169.254"], ["127.0.0.1"], ["10.0.0.5", "::1"], ["fd00:ec2::254"], ["0.0.0.0"],
     ["64:ff9b:1::a9fe:a9fe"], ["64:ff9b:1:a9fe:a9:fe00::"]],  # local-use NAT64 (RFC 8215)
)
def test_name_resolving_to_special_address_refused_before_dial(answer: list[str]) -> None:
    net = FakeNet([answer], ("127.0.0.1", 9))
    config = _connect_config(("svc.example", 443))
    with running_proxy(config, resolver=net.resolve, dialer=net.dial) as (address, _, logs):
        assert _status(address, b"CONNECT svc.example:443 HTTP/1.1\r\n\r\n") == 403
        wait_for(lambda: len(logs.lines()) == 1)
    assert net.dialled == []
    assert "which is not on the allowlist" in logs.lines()[0]


def test_special_address_listed_explicitly_is_allowed() -> None:
    target = ExchangeTarget("tcp://127.0.0.1:0", reply=b"md")
    real = ("127.0.0.1", int(target.bound.rsplit(":", 1)[1]))
    net = FakeNet([["169.254.169.254"]], real)
    config = _connect_config(("imds.example", 80), ("169.254.169.254", 80))
    with running_proxy(config, resolver=net.resolve, dialer=net.dial) as (address, _, _):
        sock, answer = _ask(address, b"CONNECT imds.example:80 HTTP/1.1\r\n\r\n")
        assert answer.startswith(b"HTTP/1.1 200 ")
        sock.close()
    assert net.dialled == [("169.254.169.254", 80)]
    target.close()


def test_dial_failures() -> None:
    async def no_dns(name: str, port: int) -> Sequence[IPAddress]:
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    async def hang(family: int, sockaddr: SockAddr) -> socket.socket:
        await asyncio.sleep(30)
        raise AssertionError

    free = listening_socket(parse_address("tcp://127.0.0.1:0", role="listen"))
    closed_port = free.getsockname()[1]
    free.close()  # nothing listens there now
    config = _connect_config(("127.0.0.1", closed_port), ("nx.example", 443))
    with running_proxy(config, resolver=no_dns) as (address, _, logs):
        assert _status(address, f"CONNECT 127.0.0.1:{closed_port} HTTP/1.1\r\n\r\n".encode()) == 502
        assert _status(address, b"CONNECT nx.example:443 HTTP/1.1\r\n\r\n") == 502
        wait_for(lambda: len(logs.lines()) == 2)
    assert "ECONNREFUSED" in logs.lines()[0] and "cannot resolve nx.example" in logs.lines()[1]
    config = _connect_config(("127.0.0.1", 443), connect_timeout=0.3)
    with running_proxy(config, dialer=hang) as (address, _, logs):
        assert _status(address, b"CONNECT 127.0.0.1:443 HTTP/1.1\r\n\r\n") == 504


def test_connection_limit_answers_503(silent: tuple[socket.socket, int]) -> None:
    listener, port = silent
    config = _connect_config(("127.0.0.1", port), max_connections=1)
    with running_proxy(config) as (address, server, _):
        hold = connect(address, timeout=5)  # in its handshake, counted
        wait_for(lambda: server.active == 1)
        assert _status(address, f"CONNECT 127.0.0.1:{port} HTTP/1.1\r\n\r\n".encode()) == 503
        hold.close()
    assert no_accept(listener)


def test_unsafe_any_host_dials_anything(tmp_path: Path) -> None:
    target = ExchangeTarget("tcp://127.0.0.1:0", reply=b"hi", mode="after-eof")
    port = int(target.bound.rsplit(":", 1)[1])
    config = ProxyConfig(LISTEN, None, unsafe_any_host=True)
    with running_proxy(config) as (address, _, _):
        sock, answer = _ask(address, f"CONNECT localhost:{port} HTTP/1.1\r\n\r\n".encode())
        assert answer.startswith(b"HTTP/1.1 200 ")
        sock.shutdown(socket.SHUT_WR)
        assert sock.recv(10) == b"hi"
        sock.close()
    target.close()


def test_fixed_target_allowlist_refusals_make_no_connection(
    silent: tuple[socket.socket, int],
) -> None:
    """A fixed outbound target must be on the list (checked before listening); a listed name
    that resolves to loopback is refused per connection, before dialling."""
    listener, port = silent
    with pytest.raises(ProxyConfigError, match="is not on the allowlist"):
        ProxyConfig(
            LISTEN,
            parse_address(f"tcp://127.0.0.1:{port}"),
            allowlist=Allowlist.of([("127.0.0.1", port + 1)]),
        )
    config = ProxyConfig(
        LISTEN,
        parse_address(f"tcp://localhost:{port}"),
        allowlist=Allowlist.of([("localhost", port)]),
    )
    with running_proxy(config) as (address, _, logs):
        with connect(address, timeout=5) as sock:
            assert sock.recv(10) == b""  # closed, nothing forwarded
        wait_for(lambda: len(logs.lines()) == 1)
    assert "resolves to" in logs.lines()[0] and "(loopback)" in logs.lines()[0]
    assert no_accept(listener)
