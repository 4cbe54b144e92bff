"""`nitro-attest proxy` as a process: usage errors, bounded memory under a slow reader, 1,000
connections at once, and SIGTERM drain."""

from __future__ import annotations

import errno
import os
import signal
import socket
import time
from pathlib import Path

import pytest

from nitro_attest._cli import main
from nitro_attest.wire.transport import connect, listening_socket, parse_address

from .proxykit import EchoTarget, proxy_process, raise_fd_limit, wait_for

MIB = 1 << 20


@pytest.fixture
def allowlist_file(tmp_path: Path) -> Path:
    path = tmp_path / "allow.yaml"
    path.write_text("allowlist:\n- {address: kms.us-east-1.amazonaws.com, port: 443}\n")
    return path


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--listen", "vsock://any:8000", "--to", "tcp://10.0.0.1:443"], "outbound proxy needs"),
        (["--listen", "tcp://127.0.0.1:0", "--to", "connect"], "outbound proxy needs"),
        (
            [
                "--listen",
                "vsock://any:8000",
                "--to",
                "connect",
                "--allowlist",
                "ALLOW",
                "--unsafe-any-host",
            ],
            "contradict",
        ),
        (
            ["--listen", "tcp://127.0.0.1:0", "--to", "unix:///tmp/x.sock", "--allowlist", "ALLOW"],
            "applies to tcp targets",
        ),
        (
            [
                "--listen",
                "vsock://any:8000",
                "--to",
                "tcp://kms.us-east-1.amazonaws.com:80",
                "--allowlist",
                "ALLOW",
            ],
            "is not on the allowlist",
        ),
        (
            [
                "--listen",
                "vsock://any:8000",
                "--to",
                "tcp://10.0.0.1:443",
                "--allowlist",
                "MISSING",
            ],
            "cannot read",
        ),
        (["--listen", "tcp://127.0.0.1:0", "--to", "tcp://a_b.example:80"], "not an IP address"),
        (["--listen", "tcp://127.0.0.1:0", "--to", "vsock://2:5005"], "reserved"),
        (["--listen", "tcp://127.0.0.1", "--to", "vsock://16:5005"], "missing :PORT"),
        (["--listen", "tcp://127.0.0.1:0", "--to", "tcp://10.0.0.1:0"], "port 0"),
        (
            ["--listen", "tcp://127.0.0.1:0", "--to", "vsock://16:5005", "--max-connections", "0"],
            "at least 1",
        ),
        (
            ["--listen", "tcp://127.0.0.1:0", "--to", "vsock://16:5005", "--idle-timeout", "-1"],
            "positive",
        ),
        (
            [
                "--listen",
                "tcp://127.0.0.1:0",
                "--to",
                "vsock://16:5005",
                "--connect-timeout",
                "nan",
            ],
            "positive",
        ),
    ],
)
def test_usage_errors_before_any_socket(
    args: list[str],
    message: str,
    allowlist_file: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    args = [
        a.replace("ALLOW", str(allowlist_file)).replace("MISSING", str(tmp_path / "no"))
        for a in args
    ]
    assert main(["proxy", *args]) == 2
    err = capsys.readouterr().err
    assert message in err
    assert err.count("\n") == 1 and "Traceback" not in err


def test_slow_reader_memory_bounded() -> None:
    """The target stops reading: the proxy stops reading from the client, its memory stays flat,
    and once the target reads again every byte arrives."""
    listener = listening_socket(parse_address("tcp://127.0.0.1:0", role="listen"))
    listener.setblocking(True)
    target_port = listener.getsockname()[1]
    with proxy_process(
        "--listen", "tcp://127.0.0.1:0", "--to", f"tcp://127.0.0.1:{target_port}"
    ) as proxy:
        with connect(proxy.address, timeout=10) as warm:  # warm up the data path first
            peer, _ = listener.accept()
            warm.sendall(b"w" * MIB)
            got = 0
            while got < MIB:
                got += len(peer.recv(MIB))
            peer.close()
        rss_before = proxy.rss_kib()
        client = connect(proxy.address, timeout=10)
        slow, _ = listener.accept()  # never reads, for now
        client.setblocking(False)
        chunk = bytes(range(256)) * 4096  # 1 MiB
        sent, last_progress = 0, time.monotonic()
        while sent < 128 * MIB and time.monotonic() - last_progress < 0.5:
            try:
                sent += client.send(chunk[sent % len(chunk) :] if sent % len(chunk) else chunk)
                last_progress = time.monotonic()
            except BlockingIOError:
                time.sleep(0.01)
        rss_stalled = proxy.rss_kib()
        assert sent < 32 * MIB, f"{sent} bytes accepted: no backpressure"
        assert rss_stalled - rss_before < 8 * 1024, (rss_before, rss_stalled)
        client.shutdown(socket.SHUT_WR)
        received = bytearray()
        slow.settimeout(10)
        while data := slow.recv(MIB):
            received += data
        assert len(received) == sent
        assert received == (chunk * (sent // len(chunk) + 1))[:sent]
        slow.close()
        client.close()
    listener.close()


def test_thousand_concurrent_connections(tmp_path: Path) -> None:
    raise_fd_limit(4096)
    echo = EchoTarget(f"unix://{tmp_path}/echo.sock")
    count = 1000
    one_peer = ("--max-per-peer", "0")  # every client is 127.0.0.1
    with proxy_process("--listen", "tcp://127.0.0.1:0", "--to", echo.address, *one_peer) as proxy:
        clients = [connect(proxy.address, timeout=30) for _ in range(count)]
        try:
            for i, sock in enumerate(clients):
                sock.sendall(b"%06d" % i * 20)
            wait_for(lambda: echo.accepted == count, 30, "all connections at the target")
            for i, sock in enumerate(clients):
                want = b"%06d" % i * 20
                got = b""
                while len(got) < len(want):
                    got += sock.recv(len(want) - len(got))
                assert got == want
        finally:
            for sock in clients:
                sock.close()
        wait_for(lambda: len(proxy.connection_lines()) == count, 30, "1,000 log lines")
    assert all(" up=120 down=120 " in x and "end=closed" in x for x in proxy.connection_lines())
    echo.close()


def test_sigterm_drains_then_exits(tmp_path: Path) -> None:
    echo = EchoTarget(f"unix://{tmp_path}/echo.sock")
    listen = tmp_path / "proxy.sock"
    with proxy_process(
        "--listen", f"unix://{listen}", "--to", echo.address, "--drain-timeout", "10"
    ) as proxy:
        live = connect(proxy.address, timeout=10)
        live.sendall(b"before")
        assert live.recv(100) == b"before"
        proxy.proc.send_signal(signal.SIGTERM)
        wait_for(lambda: "stopping: 1 connection(s) open" in proxy.text(), what="drain start")
        assert not listen.exists()  # no new connections
        with pytest.raises(OSError) as refused:
            connect(proxy.address, timeout=2)
        assert refused.value.errno in (errno.ENOENT, errno.ECONNREFUSED)
        time.sleep(0.2)
        live.sendall(b"during the drain")  # the open tunnel still works both ways
        assert live.recv(100) == b"during the drain"
        assert proxy.proc.poll() is None
        started = time.monotonic()
        live.close()
        assert proxy.proc.wait(10) == 0
        assert time.monotonic() - started < 5  # exits when the last connection ends
    text = proxy.text()
    assert "up=22 down=22" in text and "end=closed" in text and "stopped" in text
    echo.close()


def test_sigterm_drain_timeout_cuts(tmp_path: Path) -> None:
    echo = EchoTarget(f"unix://{tmp_path}/echo.sock")
    with proxy_process(
        "--listen", "tcp://127.0.0.1:0", "--to", echo.address, "--drain-timeout", "0.5"
    ) as proxy:
        idle = connect(proxy.address, timeout=10)
        idle.sendall(b"x")
        assert idle.recv(10) == b"x"
        started = time.monotonic()
        os.kill(proxy.proc.pid, signal.SIGTERM)
        assert proxy.proc.wait(10) == 0
        assert 0.4 < time.monotonic() - started < 5
        with pytest.raises(ConnectionResetError):
            idle.recv(10)
        idle.close()
    assert "end=shutdown" in proxy.text()
    echo.close()


def test_listen_address_in_use_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    taken = listening_socket(parse_address("tcp://127.0.0.1:0", role="listen"))
    port = taken.getsockname()[1]
    taken.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 0)
    try:
        rc = main(["proxy", "--listen", f"tcp://127.0.0.1:{port}", "--to", "vsock://16:5005"])
    finally:
        taken.close()
    err = capsys.readouterr().err
    assert rc == 2
    assert f"tcp://127.0.0.1:{port}: cannot listen: Address already in use" in err
    assert "Traceback" not in err
