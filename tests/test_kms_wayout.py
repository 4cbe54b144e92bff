"""The way out of the enclave: the CONNECT client head and the proxy's answer (codec.connect),
--via routes, and credentials (environment, IMDSv2 answered by a parent that may lie)."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nitro_attest.codec.connect import (
    MAX_HEAD_BYTES,
    ConnectError,
    connect_request,
    find_head_end,
    parse_connect_response,
)
from nitro_attest.codec.http import find_head_end as server_head_end
from nitro_attest.codec.http import parse_connect
from nitro_attest.errors import NitroAttestError, TransportError
from nitro_attest.kms.credentials import CredentialsError, ImdsCredentials, from_environment
from nitro_attest.kms.route import Route, parse_route
from nitro_attest.wire.transport import AddressError

# --- codec.connect ------------------------------------------------------------------------------


@pytest.mark.parametrize(("host", "port"), [("kms.us-east-1.amazonaws.com", 443),
                                            ("127.0.0.1", 8443), ("::1", 443)])
def test_our_request_is_what_our_proxy_parses(host: str, port: int) -> None:
    head = connect_request(host, port)
    assert server_head_end(head) == len(head)
    parsed = parse_connect(head)
    assert (str(parsed.host).strip("[]"), parsed.port) == (host, port)


@pytest.mark.parametrize("host", ["a b", "x\r\nEvil: 1", "", "h/p"])
def test_no_injection_through_the_host(host: str) -> None:
    with pytest.raises(ConnectError):
        connect_request(host, 443)


def test_a_200_opens_the_tunnel() -> None:
    parse_connect_response(b"HTTP/1.1 200 Connection established\r\n\r\n")
    parse_connect_response(b"HTTP/1.0 200\r\nVia: x\r\nContent-Length: 0\r\n\r\n")


@pytest.mark.parametrize(
    ("head", "words"),
    [
        (b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n", "refused the tunnel: 403"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n", "with a body"),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", "with a body"),
        (b"SSH-2.0-OpenSSH\r\n\r\n", "not 'HTTP/1.x"),
        (b"HTTP/1.1 200 OK\r\nbad line\r\n\r\n", "malformed header"),
        (b"HTTP/1.1 200 OK\nX: y\r\n\r\n", "bare CR"),
        (b"HTTP/1.1 200 OK\r\n", "incomplete"),
        (b"HTTP/1.1 200 OK\r\n" + b"X: y\r\n" * 65 + b"\r\n", "more than 64"),
    ],
)
def test_other_answers_are_refused(head: bytes, words: str) -> None:
    with pytest.raises(ConnectError, match=words):
        parse_connect_response(head)


def test_refusal_keeps_its_status_and_escapes_nothing_dangerous() -> None:
    with pytest.raises(ConnectError) as caught:
        parse_connect_response(b"HTTP/1.1 502 Bad \x1b[31mGateway\r\n\r\n")
    assert caught.value.status is None  # an escape in the reason: malformed, not a refusal


def test_head_end_is_capped() -> None:
    assert find_head_end(b"HTTP/1.1 200 OK\r\n") == -1
    with pytest.raises(ConnectError, match="longer than"):
        find_head_end(b"x" * MAX_HEAD_BYTES)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_any_answer_is_accepted_or_a_connect_error(raw: bytes) -> None:
    try:
        parse_connect_response(raw + b"\r\n\r\n")
    except ConnectError:
        return
    assert raw[:9] in (b"HTTP/1.1 ", b"HTTP/1.0 ") and raw[9:12] == b"200"


# --- routes -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "mode", "shown"),
    [
        (None, "direct", "direct"),
        ("direct", "direct", "direct"),
        ("vsock://3:8000", "forward", "vsock://3:8000"),
        ("tcp://127.0.0.1:9", "forward", "tcp://127.0.0.1:9"),
        ("unix:///run/kms.sock", "forward", "unix:///run/kms.sock"),
        ("connect://127.0.0.1:3128", "connect", "connect://127.0.0.1:3128"),
        ("connect+vsock://3:8000", "connect", "connect+vsock://3:8000"),
        ("connect+unix:///run/p.sock", "connect", "connect+unix:///run/p.sock"),
    ],
)
def test_routes_parse(text: str | None, mode: str, shown: str) -> None:
    route = parse_route(text)
    assert route.mode == mode
    assert str(route) == shown


@pytest.mark.parametrize("text", ["vsock://2:8000", "connect+ftp://x:1", "kms.example:443",
                                  "connect://", "tcp://h:0"])
def test_bad_routes(text: str) -> None:
    with pytest.raises(AddressError):
        parse_route(text)


def test_a_proxy_that_speaks_first_is_refused() -> None:
    """Bytes after the proxy's 200 and before TLS began are the proxy's own: refused."""
    import socket

    listener = socket.create_server(("127.0.0.1", 0))

    def proxy() -> None:
        conn, _ = listener.accept()
        conn.recv(4096)
        conn.sendall(b"HTTP/1.1 200 OK\r\n\r\n\x16\x03\x03 forged server hello")
        conn.close()

    thread = threading.Thread(target=proxy, daemon=True)
    thread.start()
    route = Route("connect", parse_route(f"tcp://127.0.0.1:{listener.getsockname()[1]}").address)
    with pytest.raises(ConnectError, match="bytes after its CONNECT answer"):
        route.dial("kms.example", 443, timeout=5)
    thread.join(5)
    listener.close()


# --- credentials --------------------------------------------------------------------------------


def test_environment_credentials() -> None:
    creds = from_environment({"AWS_ACCESS_KEY_ID": "AKIAIOSFODNN7EXAMPLE",
                              "AWS_SECRET_ACCESS_KEY": "s/e+cret", "AWS_SESSION_TOKEN": "t0k=="})
    assert (creds.access_key_id, creds.secret_access_key, creds.session_token) == (
        "AKIAIOSFODNN7EXAMPLE", "s/e+cret", "t0k==")
    assert "s/e+cret" not in repr(creds)
    with pytest.raises(CredentialsError, match="AWS_ACCESS_KEY_ID"):
        from_environment({})
    with pytest.raises(CredentialsError, match="session token"):
        from_environment({"AWS_ACCESS_KEY_ID": "AKIAIOSFODNN7EXAMPLE",
                          "AWS_SECRET_ACCESS_KEY": "s", "AWS_SESSION_TOKEN": "a\r\nX-Evil: 1"})


class Imds:
    """A metadata service on loopback; ``answers`` maps a path to (status, body)."""

    def __init__(self, answers: dict[str, tuple[int, bytes]]) -> None:
        self.answers = answers
        self.seen: list[tuple[str, str, dict[str, str]]] = []
        imds = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def _serve(self) -> None:
                imds.seen.append((self.command, self.path, dict(self.headers)))
                length = int(self.headers.get("Content-Length") or 0)
                self.rfile.read(length)
                status, body = imds.answers.get(self.path, (404, b""))
                if self.path != "/latest/api/token" and \
                        self.headers.get("X-aws-ec2-metadata-token") != "TOKEN":
                    status, body = 401, b""
                self.send_response(status)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_GET = do_PUT = _serve

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


ROLE_PATH = "/latest/meta-data/iam/security-credentials/"
GOOD = {"Code": "Success", "AccessKeyId": "ASIAEXAMPLE000000001", "SecretAccessKey": "sec/ret+",
        "Token": "IQoJb3JpZ2luX2VjE==", "Expiration": "2999-01-01T00:00:00Z"}


@pytest.fixture
def imds_answers() -> Iterator[dict[str, tuple[int, bytes]]]:
    yield {"/latest/api/token": (200, b"TOKEN"), ROLE_PATH: (200, b"enclave-role"),
           ROLE_PATH + "enclave-role": (200, json.dumps(GOOD).encode())}


def test_imds_v2_token_then_role_then_credentials(
    imds_answers: dict[str, tuple[int, bytes]]
) -> None:
    imds = Imds(imds_answers)
    try:
        source = ImdsCredentials(parse_route("direct"), host="127.0.0.1", port=imds.port)
        creds = source()
        assert (creds.access_key_id, creds.secret_access_key, creds.session_token) == (
            GOOD["AccessKeyId"], GOOD["SecretAccessKey"], GOOD["Token"])
        assert source() is creds  # cached until shortly before Expiration
        put = imds.seen[0]
        assert put[0] == "PUT" and put[2]["X-aws-ec2-metadata-token-ttl-seconds"] == "21600"
        assert len(imds.seen) == 3
    finally:
        imds.close()


def test_imds_credentials_refresh_before_expiry(
    imds_answers: dict[str, tuple[int, bytes]]
) -> None:
    soon = {**GOOD, "Expiration": "2000-01-01T00:04:00Z"}
    imds_answers[ROLE_PATH + "enclave-role"] = (200, json.dumps(soon).encode())
    imds = Imds(imds_answers)
    try:
        source = ImdsCredentials(parse_route("direct"), host="127.0.0.1", port=imds.port,
                                 clock=lambda: 946684800.0)  # 2000-01-01T00:00:00Z
        source()
        source()  # within 5 minutes of expiry: fetched again
        assert len(imds.seen) == 6
    finally:
        imds.close()


def test_imds_credentials_kept_at_most_max_cache_by_the_monotonic_clock(
    imds_answers: dict[str, tuple[int, bytes]]
) -> None:
    """A wall clock stepped back keeps the expiry far away; the monotonic bound still refreshes,
    and invalidate() (KMS refused the token) forgets them at once."""
    from nitro_attest.kms.credentials import MAX_CACHE_SECONDS

    imds = Imds(imds_answers)
    ticks = [1000.0]
    try:
        source = ImdsCredentials(parse_route("direct"), host="127.0.0.1", port=imds.port,
                                 clock=lambda: 946684800.0, monotonic=lambda: ticks[0])
        source()
        ticks[0] += MAX_CACHE_SECONDS - 1
        source()
        assert len(imds.seen) == 3  # still cached
        ticks[0] += 2
        source()
        assert len(imds.seen) == 6  # past the monotonic bound: fetched again
        source.invalidate()
        source()
        assert len(imds.seen) == 9
    finally:
        imds.close()


@pytest.mark.parametrize(
    ("path", "answer", "words"),
    [
        ("/latest/api/token", (403, b""), "answered 403"),
        ("/latest/api/token", (200, b"bad token\r\n"), "token is malformed"),
        (ROLE_PATH, (200, b"a\nb"), "exactly one instance role"),
        (ROLE_PATH + "enclave-role", (200, b"{"), "not JSON"),
        (ROLE_PATH + "enclave-role", (200, json.dumps({**GOOD, "Token": 5}).encode()),
         "lack a field"),
        (ROLE_PATH + "enclave-role",
         (200, json.dumps({**GOOD, "SecretAccessKey": "a b"}).encode()), "secret access key"),
        (ROLE_PATH + "enclave-role", (200, json.dumps({**GOOD, "Expiration": "soon"}).encode()),
         "Expiration"),
        (ROLE_PATH + "enclave-role", (200, b"x" * 20000), "too long"),
    ],
)
def test_a_lying_metadata_service_gives_credentials_errors(
    imds_answers: dict[str, tuple[int, bytes]], path: str, answer: tuple[int, bytes], words: str
) -> None:
    imds_answers[path] = answer
    imds = Imds(imds_answers)
    try:
        source = ImdsCredentials(parse_route("direct"), host="127.0.0.1", port=imds.port)
        with pytest.raises(CredentialsError, match=words):
            source()
    finally:
        imds.close()


def test_imds_unreachable_is_a_credentials_error() -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    source = ImdsCredentials(parse_route("direct"), host="127.0.0.1", port=port, timeout=1)
    with pytest.raises(CredentialsError, match="instance metadata service") as caught:
        source()
    assert isinstance(caught.value, NitroAttestError)
    assert not isinstance(caught.value, TransportError)
