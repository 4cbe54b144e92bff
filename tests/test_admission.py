"""Admission: the frame deadline, shedding when full, clients that stop reading, connect floods."""

from __future__ import annotations

import socket
import struct
import subprocess
import sys
import threading
import time
import tracemalloc
from pathlib import Path

import pytest

from nitro_attest.server_limits import LimitsError
from nitro_attest.wire import client, protocol
from nitro_attest.wire.admission import (
    FD_HEADROOM,
    IDLE,
    ConnectionTable,
    Limits,
    Member,
)
from nitro_attest.wire.protocol import AttestRequest, ErrorResponse
from tests.serverkit import read_response, running_server, wait_for


def _closed_by_server(sock: socket.socket) -> bool:
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True


def test_frame_deadline_is_separate_from_the_idle_timeout() -> None:
    with running_server("tcp://127.0.0.1:0", read_timeout=5, frame_deadline=0.3) as (
        addr,
        _server,
        logs,
    ):
        idle = socket.create_connection((addr.host, addr.port), timeout=5)
        half = socket.create_connection((addr.host, addr.port), timeout=5)
        with idle, half:
            started = time.monotonic()
            half.sendall(struct.pack(">I", 100) + b"abc")
            resp = read_response(half)
            took = time.monotonic() - started
            assert isinstance(resp, ErrorResponse) and resp.code == "timeout"
            assert 0.25 < took < 2, took
            assert _closed_by_server(half)
            # The idle connection outlived the frame deadline several times and still works.
            time.sleep(0.5)
            idle.sendall(AttestRequest(nonce=b"still here").encode())
            assert read_response(idle).TYPE == "attestation"
    assert any("went quiet" in line for line in logs.lines())


def test_a_trickled_frame_still_meets_the_deadline() -> None:
    """Bytes that keep coming do not extend the deadline: it runs from the frame's first byte."""
    with running_server("tcp://127.0.0.1:0", read_timeout=5, frame_deadline=0.4) as (addr, _, _l):
        frame = AttestRequest(nonce=b"t" * 200).encode()
        sock = socket.create_connection((addr.host, addr.port), timeout=5)
        with sock:
            started = time.monotonic()
            sent = 0
            with pytest.raises(OSError):  # the server hangs up while we are still trickling
                while sent < len(frame) and time.monotonic() - started < 3:
                    sock.sendall(frame[sent : sent + 1])
                    sent += 1
                    time.sleep(0.05)
                    sock.setblocking(False)
                    try:
                        data = sock.recv(4096)
                    except BlockingIOError:
                        data = b"-"
                    finally:
                        sock.setblocking(True)
                    if not data:
                        raise ConnectionResetError("closed")
                    if data != b"-":
                        head, body = data[:4], data[4:]
                        answer = protocol.decode_response(body[: protocol.decode_header(head)])
                        assert isinstance(answer, ErrorResponse) and answer.code == "timeout"
            assert time.monotonic() - started < 1.5
            assert sent < len(frame)


def test_full_server_sheds_the_least_recently_active_connection() -> None:
    with running_server(
        "tcp://127.0.0.1:0", max_connections=3, shed_grace=0.1, frame_deadline=30
    ) as (addr, server, logs):
        a, b, c = (socket.create_connection((addr.host, addr.port), timeout=5) for _ in range(3))
        f = socket.socket()
        with a, b, c, f:
            c.sendall(b"\x00\x00")  # c started a frame: stalled, not idle
            wait_for(lambda: server.active_connections == 3)
            time.sleep(0.2)
            a.sendall(AttestRequest(nonce=b"a").encode())  # a is now the most recently active
            assert read_response(a).TYPE == "attestation"

            # A newcomer: b (idle since it connected) is the least recently active.
            assert client.request_attestation(str(addr), nonce=b"d").startswith(b"FAKE|d")
            busy = read_response(b)
            assert isinstance(busy, ErrorResponse) and busy.code == "busy"
            assert _closed_by_server(b)
            f.connect((addr.host, addr.port))  # full again: a, c and f
            wait_for(lambda: server.active_connections == 3)
            time.sleep(0.15)  # past the grace: c (stalled since its first byte) is the oldest
            assert client.request_attestation(str(addr), nonce=b"e").startswith(b"FAKE|e")
            busy = read_response(c)
            assert isinstance(busy, ErrorResponse) and busy.code == "busy"
            # a and f were never shed: they still answer.
            f.sendall(AttestRequest(nonce=b"f").encode())
            assert read_response(f).TYPE == "attestation"
            a.sendall(AttestRequest(nonce=b"a2").encode())
            assert read_response(a).TYPE == "attestation"
        assert server.shed.total == 2
    assert any("shed 1 least recently active" in line for line in logs.lines())


def test_held_connections_cannot_lock_clients_out() -> None:
    """The issue's case: with --max-connections 4, four held connections locked everyone out."""
    with running_server("tcp://127.0.0.1:0", max_connections=4, shed_grace=0.1) as (
        addr,
        server,
        _logs,
    ):
        held = [socket.create_connection((addr.host, addr.port), timeout=5) for _ in range(4)]
        try:
            wait_for(lambda: server.active_connections == 4)
            time.sleep(0.15)
            for i in range(8):
                nonce = b"real%d" % i
                doc = client.request_attestation(str(addr), nonce=nonce)
                assert doc.startswith(b"FAKE|" + nonce)
        finally:
            for s in held:
                s.close()


def test_a_client_that_never_reads_is_dropped_after_the_write_timeout(tmp_path: Path) -> None:
    path = tmp_path / "s.sock"
    with running_server(f"unix://{path}", write_timeout=0.3) as (addr, server, logs):
        request = AttestRequest(nonce=b"n" * 1024, user_data=b"u" * 1024, public_key=b"k" * 1024)
        hog = socket.socket(socket.AF_UNIX)
        hog.connect(str(path))
        with hog:
            hog.settimeout(5)
            started = time.monotonic()
            with pytest.raises(OSError):  # reset once the server gives up on it
                for _ in range(5000):  # answers pile up: socket buffer, then transport buffer
                    hog.sendall(request.encode())
            assert time.monotonic() - started < 4
            wait_for(lambda: server.active_connections == 0)
            assert client.request_attestation(str(addr), nonce=b"x").startswith(b"FAKE|x")
    assert any("does not read its answers" in line for line in logs.lines())


def test_connect_flood_does_not_lock_out_real_clients() -> None:
    """A flood of held connections far above the cap: real requests still all succeed."""
    stop = threading.Event()
    flood: list[socket.socket] = []
    with running_server("tcp://127.0.0.1:0", max_connections=32, shed_grace=0.05) as (
        addr,
        server,
        _logs,
    ):

        def flooder() -> None:
            while not stop.is_set() and len(flood) < 600:
                try:
                    flood.append(socket.create_connection((addr.host, addr.port), timeout=5))
                except OSError:
                    time.sleep(0.01)

        thread = threading.Thread(target=flooder)
        thread.start()
        try:
            wait_for(lambda: len(flood) >= 64)  # twice the cap already, and more coming
            for i in range(30):
                nonce = b"n%d" % i
                doc = client.request_attestation(str(addr), nonce=nonce, timeout=10)
                assert doc.startswith(b"FAKE|" + nonce)
        finally:
            stop.set()
            thread.join(10)
            for s in flood:
                s.close()
        assert server.shed.total > 0
        assert len(flood) > 32


# --- the table itself ---------------------------------------------------------------------------


def test_table_picks_the_least_recently_active_member_past_the_grace() -> None:
    table = ConnectionTable(Limits(max_connections=3, shed_grace=1.0))
    old, busy_one, young = Member(0.0), Member(0.0), Member(9.5)
    table.add(old, 0.0)
    table.add(busy_one, 0.0)
    table.add(young, 9.5)
    table.enter(busy_one, None, 5.0)  # being answered: never shed
    table.enter(old, IDLE, 8.0)  # active at 8
    assert table.full()
    assert table.shed_candidate(10.0) is old
    assert table.shed_candidate(10.2) is old
    table.remove(old)
    assert table.shed_candidate(10.2) is None  # young is within its grace, busy_one is busy
    assert table.shed_candidate(10.6) is young


def test_table_expires_by_state_deadline() -> None:
    table = ConnectionTable(Limits(idle_timeout=10, frame_deadline=1, write_timeout=3))
    idle, framing = Member(0.0), Member(0.0)
    table.add(idle, 0.0)
    table.add(framing, 0.0)
    table.enter(framing, "frame", 2.0)
    assert table.expired(2.5) == []
    assert table.expired(3.5) == [framing]
    assert set(table.expired(11.0)) == {idle, framing}


def test_limits_refuse_nonsense() -> None:
    with pytest.raises(LimitsError, match=r"^frame_deadline "):
        Limits(frame_deadline=0)
    with pytest.raises(LimitsError, match=r"^max_connections "):
        Limits(max_connections=0)


_BUDGET = """
import resource, sys
from nitro_attest.wire.admission import descriptor_budget
resource.setrlimit(resource.RLIMIT_NOFILE, (int(sys.argv[1]), int(sys.argv[2])))
cap, limit = descriptor_budget(1024)
print(cap, limit, resource.getrlimit(resource.RLIMIT_NOFILE)[0])
"""


@pytest.mark.parametrize(
    ("soft", "hard", "expected"),
    [
        (300, 4000, [1024, 1024 + FD_HEADROOM, 1024 + FD_HEADROOM]),  # soft raised, cap kept
        (512, 512, [512 - FD_HEADROOM, 512, 512]),  # cannot raise: the cap comes down instead
    ],
)
def test_descriptor_budget_keeps_the_cap_under_the_open_file_limit(
    soft: int, hard: int, expected: list[int]
) -> None:
    # In a child: lowering the hard limit of the test process could not be undone.
    out = subprocess.run(
        [sys.executable, "-c", _BUDGET, str(soft), str(hard)],
        capture_output=True, text=True, check=True, timeout=30,
    )  # fmt: skip
    assert [int(x) for x in out.stdout.split()] == expected


# --- memory per connection ----------------------------------------------------------------------


def test_idle_connections_cost_little_memory(tmp_path: Path) -> None:
    """Measure the server's bytes per idle connection (docs/protocol.md quotes this figure)."""
    count = 300
    with running_server(f"unix://{tmp_path / 's.sock'}", max_connections=count + 8) as (
        _addr,
        server,
        _logs,
    ):
        path = str(tmp_path / "s.sock")
        tracemalloc.start()
        try:
            before = tracemalloc.get_traced_memory()[0]
            socks = []
            for _ in range(count):
                s = socket.socket(socket.AF_UNIX)
                s.connect(path)
                socks.append(s)
            wait_for(lambda: server.active_connections == count)
            # Everything the server allocated for them; our client sockets are in the figure
            # too (a few hundred bytes each), so it is an upper bound.
            per_connection = (tracemalloc.get_traced_memory()[0] - before) / count
        finally:
            tracemalloc.stop()
            for s in socks:
                s.close()
    print(f"server memory per idle connection: {per_connection:.0f} bytes")
    assert per_connection < 4096
