"""The proxy's data path over loopback TCP and Unix sockets: byte-exact both ways, half-close,
reset propagation, the buffered fallback, idle timeout and the connection limit."""

from __future__ import annotations

import errno
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from nitro_attest.proxy import ProxyConfig
from nitro_attest.proxy import pump as pump_module
from nitro_attest.wire.transport import connect, listening_socket, parse_address

from .proxykit import ExchangeTarget, exchange, proxy_kw, running_proxy, sha, wait_for

MIB = 1 << 20
SIZES = [0, 1, 4099, 65536, 65537, MIB + 7, 64 * MIB]


@pytest.fixture(scope="module")
def blob() -> bytes:
    return os.urandom(64 * MIB + 1)


def _listen(kind: str, tmp_path: Path, name: str) -> str:
    return "tcp://127.0.0.1:0" if kind == "tcp" else f"unix://{tmp_path}/{name}.sock"


@pytest.fixture(params=["tcp->unix", "unix->tcp", "tcp->tcp"])
def pair(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[str, ExchangeTarget]]:
    inbound, outbound = request.param.split("->")
    target = ExchangeTarget(_listen(outbound, tmp_path, "target"))
    yield _listen(inbound, tmp_path, "proxy"), target
    target.close()


def _config(listen: str, to: str, **kw: object) -> ProxyConfig:
    listening = parse_address(listen, role="listen")
    return ProxyConfig(listening, parse_address(to), **proxy_kw(dict(kw)))


def test_byte_exact_both_ways(pair: tuple[str, ExchangeTarget], blob: bytes) -> None:
    listen, target = pair
    with running_proxy(_config(listen, target.bound)) as (address, _, logs):
        for i, size in enumerate(SIZES):
            up = blob[:size]
            target.reply = blob[1 : 1 + size // 2 + (i % 3)]  # different bytes and size down
            digest, got = exchange(address, up)
            assert (digest, got) == (sha(target.reply), len(target.reply)), size
            wait_for(lambda i=i: len(target.received) == i + 1, what="target done")
            assert target.received[i].sha256 == sha(up) and target.received[i].size == size
        wait_for(lambda: len(logs.lines()) == len(SIZES), what="log lines")
    lines = logs.lines()
    for size, line in zip(SIZES, lines, strict=True):
        assert f" up={size} " in line and "end=closed" in line


def test_buffered_copy_byte_exact(tmp_path: Path, blob: bytes) -> None:
    target = ExchangeTarget(f"unix://{tmp_path}/t.sock", reply=blob[7 : 7 + 3 * MIB])
    config = _config("tcp://127.0.0.1:0", target.bound, splice=False)
    with running_proxy(config) as (address, _, _):
        assert exchange(address, blob[: 16 * MIB]) == (sha(target.reply), 3 * MIB)
        wait_for(lambda: len(target.received) == 1)
        assert target.received[0].sha256 == sha(blob[: 16 * MIB])
    target.close()


def test_splice_einval_falls_back(
    tmp_path: Path, blob: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A socket that cannot splice (vsock on some kernels) is copied through the buffer instead,
    including bytes already in the pipe when splicing out fails."""
    real = os.splice
    calls = {"in": 0, "out": 0}

    def fussy(src: int, dst: int, count: int, *args: object, **kw: object) -> int:
        if os.stat(src).st_mode & 0o170000 == 0o010000:  # from a pipe: splicing out
            calls["out"] += 1
            if calls["out"] == 2:
                raise OSError(errno.EINVAL, "splice out refused")
        else:
            calls["in"] += 1
            if calls["in"] >= 4:
                raise OSError(errno.EINVAL, "splice in refused")
        return real(src, dst, count, *args, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(pump_module.os, "splice", fussy)
    target = ExchangeTarget(f"unix://{tmp_path}/t.sock", reply=blob[: 2 * MIB], mode="after-eof")
    with running_proxy(_config("tcp://127.0.0.1:0", target.bound)) as (address, _, _):
        assert exchange(address, blob[3 : 3 + 5 * MIB]) == (sha(target.reply), 2 * MIB)
        wait_for(lambda: len(target.received) == 1)
        assert target.received[0].sha256 == sha(blob[3 : 3 + 5 * MIB])
    assert calls["out"] >= 2 and calls["in"] >= 4
    target.close()


@pytest.mark.parametrize("first", ["client", "target"])
def test_half_close_each_direction(tmp_path: Path, first: str) -> None:
    """One side finishes sending; the other still sends afterwards and everything arrives."""
    mode = "after-eof" if first == "client" else "first"
    target = ExchangeTarget(f"unix://{tmp_path}/t.sock", reply=b"R" * 100_000, mode=mode)
    with running_proxy(_config("tcp://127.0.0.1:0", target.bound)) as (address, _, logs):
        with connect(address, timeout=10) as sock:
            if first == "client":
                sock.sendall(b"Q" * 70_000)
                sock.shutdown(socket.SHUT_WR)  # the target replies only once it sees this EOF
                got = _read_all(sock)
            else:
                got = _read_all(sock)  # the target sent and shut down first
                sock.sendall(b"Q" * 70_000)  # our direction is still open
                sock.shutdown(socket.SHUT_WR)
        assert got == b"R" * 100_000
        wait_for(lambda: len(target.received) == 1)
        assert target.received[0].size == 70_000
        wait_for(lambda: len(logs.lines()) == 1)
    assert "up=70000 down=100000" in logs.lines()[0] and "end=closed" in logs.lines()[0]
    target.close()


def _read_all(sock: socket.socket) -> bytes:
    chunks = []
    while chunk := sock.recv(65536):
        chunks.append(chunk)
    return b"".join(chunks)


def test_target_reset_reaches_client_as_reset() -> None:
    listener = listening_socket(parse_address("tcp://127.0.0.1:0", role="listen"))
    listener.setblocking(True)
    port = listener.getsockname()[1]
    with running_proxy(_config("tcp://127.0.0.1:0", f"tcp://127.0.0.1:{port}")) as (
        address,
        _,
        logs,
    ):
        client = connect(address, timeout=10)
        conn, _ = listener.accept()
        client.sendall(b"partial")
        assert conn.recv(100) == b"partial"
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        conn.close()  # RST
        with pytest.raises(ConnectionResetError):
            while client.recv(100):
                pass
        client.close()
        wait_for(lambda: len(logs.lines()) == 1)
    assert "end=target read error ECONNRESET" in logs.lines()[0]
    listener.close()


def test_idle_timeout(tmp_path: Path) -> None:
    target = ExchangeTarget(f"unix://{tmp_path}/t.sock", mode="after-eof")
    config = _config("tcp://127.0.0.1:0", target.bound, idle_timeout=0.3)
    with running_proxy(config) as (address, _, logs):
        with connect(address, timeout=10) as sock:
            start = time.monotonic()
            for _ in range(4):  # activity keeps it open past the timeout
                sock.sendall(b"x")
                time.sleep(0.15)
            with pytest.raises(ConnectionResetError):
                sock.recv(1)  # then silence: the proxy cuts it
            elapsed = time.monotonic() - start
        assert 0.75 < elapsed < 3
        wait_for(lambda: len(logs.lines()) == 1)
    assert "up=4 down=0" in logs.lines()[0] and "end=idle for 0.3s" in logs.lines()[0]
    target.close()


def test_connection_limit(tmp_path: Path) -> None:
    target = ExchangeTarget(f"unix://{tmp_path}/t.sock", mode="after-eof")
    config = _config("tcp://127.0.0.1:0", target.bound, max_connections=2, max_per_peer=0)
    with running_proxy(config) as (address, server, logs):
        first, second = connect(address, timeout=5), connect(address, timeout=5)
        wait_for(lambda: server.active == 2)
        with connect(address, timeout=5) as third:
            assert third.recv(10) == b""  # closed at once, never forwarded
        wait_for(lambda: any("refused: 2 connections open" in x for x in logs.lines()))
        first.close()
        wait_for(lambda: server.active == 1)
        with connect(address, timeout=5) as fourth:  # room again
            fourth.sendall(b"ok")
            fourth.shutdown(socket.SHUT_WR)
            assert fourth.recv(10) == b""
        second.close()
        wait_for(lambda: len(target.received) == 3)
    target.close()


def test_unreachable_target_logged(tmp_path: Path) -> None:
    config = _config("tcp://127.0.0.1:0", f"unix://{tmp_path}/nobody.sock")
    with running_proxy(config) as (address, _, logs):
        with connect(address, timeout=5) as sock:
            assert sock.recv(10) == b""
        wait_for(lambda: len(logs.lines()) == 1)
    assert "end=refused 502: connect failed: ENOENT" in logs.lines()[0]


def test_payload_never_logged(tmp_path: Path) -> None:
    marker = b"SECRET-PAYLOAD-7f3a"
    target = ExchangeTarget(f"unix://{tmp_path}/t.sock", reply=marker * 3)
    with running_proxy(_config("tcp://127.0.0.1:0", target.bound)) as (address, _, logs):
        exchange(address, marker * 5)
        wait_for(lambda: len(logs.lines()) == 1)
    line = logs.lines()[0]
    assert "SECRET" not in line and marker.hex() not in line
    assert "peer=tcp://127.0.0.1:" in line and f"target=unix://{tmp_path}/t.sock" in line
    assert f"up={5 * len(marker)} down={3 * len(marker)} duration=" in line
    target.close()


def test_per_peer_limit(tmp_path: Path) -> None:
    """One internet client cannot take every slot: --max-per-peer counts by source address."""
    target = ExchangeTarget(f"unix://{tmp_path}/t.sock", mode="after-eof")
    config = _config("tcp://127.0.0.1:0", target.bound, max_per_peer=1)
    with running_proxy(config) as (address, server, logs):
        first = connect(address, timeout=5)
        wait_for(lambda: server.active == 1)
        with connect(address, timeout=5) as second:  # same source address: refused
            assert second.recv(10) == b""
        other = socket.create_connection((address.host, address.port), 5, ("127.0.0.2", 0))
        wait_for(lambda: server.active == 2)  # another source still gets in
        other.close()
        first.close()
        wait_for(lambda: server.active == 0)
        with connect(address, timeout=5) as again:  # the slot is free again
            again.shutdown(socket.SHUT_WR)
            assert again.recv(10) == b""
        wait_for(lambda: len(logs.lines()) == 4)
    assert sum("refused: 1 connections open from this peer" in x for x in logs.lines()) == 1
    target.close()
