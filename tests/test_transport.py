"""Address parsing and socket choice. No test here opens an AF_VSOCK socket."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from nitro_attest.errors import ConfigurationError
from nitro_attest.wire import transport
from nitro_attest.wire.transport import Address, AddressError, parse_address


def test_vsock_constants() -> None:
    assert transport.VMADDR_CID_ANY == 0xFFFFFFFF
    assert transport.VMADDR_CID_PARENT == 3
    assert transport.AF_VSOCK == 40
    if hasattr(socket, "AF_VSOCK"):
        assert socket.AF_VSOCK == transport.AF_VSOCK
        assert socket.VMADDR_CID_ANY == transport.VMADDR_CID_ANY


def test_vsock_listen_any() -> None:
    addr = parse_address("vsock://any:5005", role="listen")
    assert addr == Address("vsock", cid=transport.VMADDR_CID_ANY, port=5005)
    assert addr.sockaddr == (0xFFFFFFFF, 5005)
    assert addr.family == transport.AF_VSOCK
    assert str(addr) == "vsock://any:5005"
    assert parse_address("VSOCK://ANY:5005", role="listen") == addr


def test_vsock_connect_enclave_and_parent() -> None:
    addr = parse_address("vsock://16:5005")
    assert (addr.cid, addr.port, addr.sockaddr, str(addr)) == (
        16,
        5005,
        (16, 5005),
        "vsock://16:5005",
    )
    assert parse_address("vsock://3:8000").cid == 3  # the parent, reached from an enclave
    assert parse_address("vsock://4294967294:1").cid == 0xFFFFFFFE
    assert parse_address("vsock://16:4294967294").port == 0xFFFFFFFE


@pytest.mark.parametrize("cid", ["0", "1", "2", "any"])
def test_vsock_connect_rejects_reserved_cids(cid: str) -> None:
    with pytest.raises(AddressError, match=r"CID|any"):
        parse_address(f"vsock://{cid}:5005", role="connect")


@pytest.mark.parametrize("cid", ["0", "1", "2", "3", "16"])
def test_vsock_listen_accepts_numeric_cids(cid: str) -> None:
    assert parse_address(f"vsock://{cid}:5005", role="listen").cid == int(cid)


@pytest.mark.parametrize(
    "text",
    [
        "vsock://16",
        "vsock://16:",
        "vsock://:5005",
        "vsock://-1:5005",
        "vsock://16:-5",
        "vsock://16:4294967296",
        "vsock://4294967296:5005",
        "vsock://0x10:5005",
        "vsock://16:5005:7",
        "vsock://١٦:5005",  # non-ASCII digits
        "vsock://16:4294967295",  # wildcard port, connect
    ],
)
def test_vsock_malformed(text: str) -> None:
    with pytest.raises(AddressError) as info:
        parse_address(text)
    assert "\n" not in str(info.value)
    assert isinstance(info.value, ConfigurationError)
    assert not isinstance(info.value, ValueError)  # untrusted input never raises ValueError


def test_tcp_addresses() -> None:
    addr = parse_address("tcp://127.0.0.1:5005")
    assert (addr.host, addr.port, addr.family, addr.sockaddr) == (
        "127.0.0.1",
        5005,
        socket.AF_INET,
        ("127.0.0.1", 5005),
    )
    v6 = parse_address("tcp://[::1]:80")
    assert (v6.host, v6.family, str(v6)) == ("::1", socket.AF_INET6, "tcp://[::1]:80")
    assert parse_address("tcp://127.0.0.1:0", role="listen").port == 0
    assert parse_address("tcp://localhost:1").host == "localhost"


@pytest.mark.parametrize(
    "text",
    [
        "tcp://127.0.0.1",
        "tcp://:5005",
        "tcp://::1:5005",
        "tcp://[::1]5005",
        "tcp://h:65536",
        "tcp://127.0.0.1:0",
        "tcp://h:port",
    ],
)
def test_tcp_malformed(text: str) -> None:
    with pytest.raises(AddressError):
        parse_address(text)


def test_unix_addresses() -> None:
    addr = parse_address("unix:///run/enclave.sock")
    assert (addr.path, addr.family, addr.sockaddr) == (
        "/run/enclave.sock",
        socket.AF_UNIX,
        "/run/enclave.sock",
    )
    assert str(addr) == "unix:///run/enclave.sock"
    assert parse_address("unix://.demo/enclave.sock").path == ".demo/enclave.sock"


@pytest.mark.parametrize("text", ["unix://", "unix:///" + "a" * 200, "unix:///a\0b"])
def test_unix_malformed(text: str) -> None:
    with pytest.raises(AddressError):
        parse_address(text)


@pytest.mark.parametrize("text", ["", "127.0.0.1:5005", "http://x:1", "vsock:16:5005"])
def test_unknown_forms(text: str) -> None:
    with pytest.raises(AddressError, match=r"vsock|scheme"):
        parse_address(text)


def test_listening_socket_replaces_stale_unix_socket(tmp_path: Path) -> None:
    path = tmp_path / "s.sock"
    dead = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    dead.bind(str(path))
    dead.close()  # leaves the file behind, nobody listening
    sock = transport.listening_socket(Address("unix", path=str(path)))
    try:
        with pytest.raises(AddressError, match="already listening"):
            transport.listening_socket(Address("unix", path=str(path)))
    finally:
        sock.close()


def test_listening_socket_refuses_regular_file(tmp_path: Path) -> None:
    path = tmp_path / "file"
    path.write_text("keep me")
    with pytest.raises(AddressError, match="not a socket"):
        transport.listening_socket(Address("unix", path=str(path)))
    assert path.read_text() == "keep me"


def test_tcp_port_zero_resolves_to_bound_port() -> None:
    addr = parse_address("tcp://127.0.0.1:0", role="listen")
    sock = transport.listening_socket(addr)
    try:
        bound = transport.bound_address(addr, sock)
        assert bound.port == sock.getsockname()[1] != 0
    finally:
        sock.close()


def test_connect_uses_the_address_family(monkeypatch: pytest.MonkeyPatch) -> None:
    """A vsock address makes a socket of the vsock family with (cid, port): a fake, never real."""
    made: list[tuple[int, int]] = []
    connected: list[object] = []

    class FakeSocket:
        def __init__(self, family: int, kind: int) -> None:
            made.append((family, kind))

        def settimeout(self, t: float) -> None:
            pass

        def connect(self, addr: object) -> None:
            connected.append(addr)

        def close(self) -> None:
            pass

    monkeypatch.setattr(transport.socket, "socket", FakeSocket)
    transport.connect(parse_address("vsock://16:5005"), timeout=1.0)
    assert made == [(transport.AF_VSOCK, socket.SOCK_STREAM)]
    assert connected == [(16, 5005)]
