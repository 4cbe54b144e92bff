"""The enclave server and the client against a fake NSM, over TCP and Unix sockets."""

from __future__ import annotations

import asyncio
import socket
import struct
import threading
import time
from pathlib import Path

import cbor2
import pytest

from nitro_attest.attestation.verifier import Verifier
from nitro_attest.wire import client, protocol
from nitro_attest.wire.protocol import AttestRequest, DescribeRequest
from nitro_attest.wire.server import EnclaveServer, nsm_handlers, serve
from nitro_attest.wire.transport import parse_address
from tests.fakes import FakeNsm, payload
from tests.serverkit import read_response, running_server, wait_for


@pytest.fixture(params=["tcp", "unix"])
def listen(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "tcp":
        return "tcp://127.0.0.1:0"
    return f"unix://{tmp_path / 'enclave.sock'}"


def test_attest_round_trip(listen: str, fake_nsm: FakeNsm) -> None:
    with running_server(listen, nsm_handlers(fake_nsm)) as (addr, _, logs):
        doc = client.request_attestation(str(addr), nonce=b"N" * 32, user_data=b"ud")
    verified = Verifier(root_pem=fake_nsm.chain.root_pem).verify(
        doc, at="document", nonce=b"N" * 32, user_data=b"ud"
    )
    assert verified.document.public_key is None
    assert fake_nsm.calls == [{"nonce": b"N" * 32, "user_data": b"ud", "public_key": None}]
    lines = [line for line in logs.lines() if " attest " in line]
    assert len(lines) == 1
    assert "nonce=32B user_data=2B public_key=-" in lines[0]
    assert "NNNN" not in lines[0] and "ud|" not in lines[0]  # sizes only, never values


def test_several_requests_on_one_connection(listen: str, fake_nsm: FakeNsm) -> None:
    with (
        running_server(listen, nsm_handlers(fake_nsm)) as (addr, server, _),
        client.Connection(str(addr)) as conn,
    ):
        for i in range(5):
            assert payload(conn.attest(nonce=bytes([i]) * 8))["nonce"] == bytes([i]) * 8
        desc = conn.describe()
        assert desc.nsm.max_pcrs == 32
        assert len(desc.pcrs) == 32 and desc.pcrs[3].data == b"\x03" * 48
        assert server.requests_served == 6


def test_nsm_error_is_typed_and_connection_survives() -> None:
    with (
        running_server("tcp://127.0.0.1:0") as (addr, _, logs),
        client.Connection(str(addr)) as conn,
    ):
        with pytest.raises(client.EnclaveError) as info:
            conn.attest(nonce=b"refuse")
        assert info.value.code == "nsm_error" and "InputTooLarge" in info.value.remote_message
        with pytest.raises(client.EnclaveError) as crash:
            conn.attest(nonce=b"crash")
        assert crash.value.code == "internal"
        assert "secret-internal-detail" not in str(crash.value)
        assert conn.attest(nonce=b"ok").startswith(b"FAKE|ok")
    assert not any("secret-internal-detail" in line for line in logs.lines())


def test_unknown_type_and_version_mismatch_keep_the_connection() -> None:
    with running_server("tcp://127.0.0.1:0") as (addr, _, _logs):
        sock = socket.create_connection((addr.host, addr.port), timeout=5)
        with sock:
            for obj, code in (
                ({"v": 1, "type": "nope"}, "unknown_type"),
                ({"v": 9, "type": "attest"}, "unsupported_version"),
                ({"v": 1, "type": "attest", "extra": 1}, "bad_request"),
            ):
                sock.sendall(protocol.encode_frame(cbor2.dumps(obj)))
                resp = read_response(sock)
                assert isinstance(resp, protocol.ErrorResponse) and resp.code == code
            sock.sendall(AttestRequest(nonce=b"after").encode())
            resp = read_response(sock)
            assert isinstance(resp, protocol.AttestationResponse)


def test_handler_not_served_is_unknown_type(fake_nsm: FakeNsm) -> None:
    handlers = {k: v for k, v in nsm_handlers(fake_nsm).items() if k == "attest"}
    with running_server("tcp://127.0.0.1:0", handlers) as (addr, _, _logs):
        with pytest.raises(client.EnclaveError) as info:
            client.describe_enclave(str(addr))
        assert info.value.code == "unknown_type"


def test_oversized_frame_gets_error_then_close() -> None:
    with running_server("tcp://127.0.0.1:0") as (addr, _, _logs):
        sock = socket.create_connection((addr.host, addr.port), timeout=5)
        with sock:
            sock.sendall(struct.pack(">I", 1 << 30))
            resp = read_response(sock)
            assert isinstance(resp, protocol.ErrorResponse) and resp.code == "frame_too_large"
            assert sock.recv(1) == b""  # the server closed the connection


def test_half_frame_times_out() -> None:
    with running_server("tcp://127.0.0.1:0", frame_deadline=0.2) as (addr, server, _logs):
        sock = socket.create_connection((addr.host, addr.port), timeout=5)
        with sock:
            sock.sendall(struct.pack(">I", 100) + b"abc")
            resp = read_response(sock)
            assert isinstance(resp, protocol.ErrorResponse) and resp.code == "timeout"
            assert sock.recv(1) == b""
        wait_for(lambda: server.active_connections == 0)


def test_connection_cap_refuses_busy_when_nothing_can_be_shed() -> None:
    """Every held connection is younger than the shed grace: the newcomer gets a typed busy.

    The client's timeout leaves a loaded machine room for two refusals (it once failed with 0.5 s:
    the last attempt, cut short by the deadline, was reported as a timeout; now the refusal is).
    """
    with running_server("tcp://127.0.0.1:0", max_connections=2, shed_grace=60) as (
        addr,
        server,
        _logs,
    ):
        held = [socket.create_connection((addr.host, addr.port), timeout=5) for _ in range(2)]
        wait_for(lambda: server.active_connections == 2)
        with pytest.raises(client.EnclaveError) as info:
            client.request_attestation(str(addr), nonce=b"x", timeout=2.0)
        assert info.value.code == "busy"
        assert str(addr) in str(info.value) and "attempts over" in str(info.value)
        assert server.refused.total >= 2  # retried, refused again
        for s in held:
            s.close()
        wait_for(lambda: server.active_connections == 0)
        assert client.request_attestation(str(addr), nonce=b"x").startswith(b"FAKE|x")


def test_concurrent_clients_all_answered(listen: str) -> None:
    results: dict[int, bytes] = {}

    def worker(i: int, address: str) -> None:
        results[i] = client.request_attestation(address, nonce=i.to_bytes(4, "big"))

    with running_server(listen) as (addr, _, _logs):
        threads = [threading.Thread(target=worker, args=(i, str(addr))) for i in range(20)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(10)
    assert {i: d[5:9] for i, d in results.items()} == {i: i.to_bytes(4, "big") for i in range(20)}


def test_unix_socket_file_removed_on_close(tmp_path: Path) -> None:
    path = tmp_path / "e.sock"
    with running_server(f"unix://{path}"):
        assert path.exists()
    assert not path.exists()


def test_client_unreachable_gives_hint(tmp_path: Path) -> None:
    with pytest.raises(client.EnclaveUnreachableError, match="nitro-attest serve"):
        client.request_attestation(f"unix://{tmp_path / 'none.sock'}", nonce=b"x")
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    with pytest.raises(client.EnclaveUnreachableError, match="refused"):
        client.request_attestation(f"tcp://127.0.0.1:{port}", nonce=b"x", timeout=0.3)
    hint = client.unreachable_hint(parse_address("vsock://16:5005"))
    assert "nitro-cli describe-enclaves" in hint and "./run.sh" in hint


def test_client_times_out_on_silent_server() -> None:
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen()
    port = silent.getsockname()[1]
    try:
        started = time.monotonic()
        with pytest.raises(client.ClientError, match="no answer within"):
            client.request_attestation(f"tcp://127.0.0.1:{port}", nonce=b"x", timeout=0.3)
        assert time.monotonic() - started < 3
    finally:
        silent.close()


def test_client_rejects_empty_nonce() -> None:
    with pytest.raises(ValueError, match="nonce"):
        client.request_attestation("tcp://127.0.0.1:1", nonce=b"")


def test_serve_stops_on_event_and_cleans_up(tmp_path: Path, fake_nsm: FakeNsm) -> None:
    path = tmp_path / "s.sock"

    async def main() -> list[str]:
        stop = asyncio.Event()
        seen: list[str] = []

        def ready(addr: object) -> None:
            seen.append(str(addr))

        task = asyncio.create_task(
            serve(
                parse_address(f"unix://{path}", role="listen"),
                nsm_handlers(fake_nsm),
                ready=ready,
                stop=stop,
            )
        )
        for _ in range(100):
            if seen:
                break
            await asyncio.sleep(0.01)
        doc = await asyncio.to_thread(client.request_attestation, f"unix://{path}", nonce=b"q")
        assert payload(doc)["nonce"] == b"q"
        stop.set()
        await asyncio.wait_for(task, 5)
        return seen

    assert asyncio.run(main()) == [f"unix://{path}"]
    assert not path.exists()


def test_server_needs_handlers() -> None:
    with pytest.raises(ValueError):
        EnclaveServer({})


def test_describe_request_log_has_no_values() -> None:
    with (
        running_server("tcp://127.0.0.1:0") as (addr, _, logs),
        client.Connection(str(addr)) as conn,
    ):
        conn.request(DescribeRequest())
    assert any(" describe - -> description" in line for line in logs.lines())


