"""Red team of attested HTTPS: what a hostile client of the front, or the parent standing between
client and enclave, tried and what it found (docs/https.md, "Red team").

Each test here first failed against the code it names, then passed with the fix.
"""

from __future__ import annotations

import contextlib
import datetime
import re
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from nitro_attest._cli import main
from nitro_attest.attestation.verifier import Verifier
from nitro_attest.codec.http import HandshakeError
from nitro_attest.codec.http1 import forward_request_head, parse_request_head, simple_response
from nitro_attest.errors import NitroAttestError, UsageError
from nitro_attest.https import AttestedTransport
from nitro_attest.https.attest import AttestationRefused
from nitro_attest.https.client import fetch, parse_url
from nitro_attest.https.front import (
    Attester,
    FrontConfig,
    HttpsFront,
    is_attestation_path,
    seal_caller_key_pcr,
)
from nitro_attest.https.identity import make_identity
from nitro_attest.https.well_known import DOCUMENT_TYPE
from nitro_attest.wire.transport import parse_address

from .httpskit import POLICY, pcr_flags, relaying_parent, running_front, sim, tls_connect
from .serverkit import loop_in_thread, wait_for

LIMIT = dict(limit=16384, max_lines=100)


def _req(text: str) -> bytes:
    return text.replace("\n", "\r\n").encode() + b"\r\n"


def _forwarded(text: str) -> bytes:
    head = parse_request_head(_req(text), **LIMIT)
    return forward_request_head(head, client="203.0.113.7", host_fallback=b"enclave").lower()


# --- the front's forwarded head ----------------------------------------------------------------


def test_forwarded_fields_cannot_be_spoofed_with_underscores_or_other_x_forwarded_names() -> None:
    """Finding: the front replaced X-Forwarded-For but passed ``X_Forwarded_For`` (CGI and WSGI
    servers map both to HTTP_X_FORWARDED_FOR, which is why nginx and Apache drop names with
    underscores) and the X-Forwarded-* names it does not set (Port, Prefix, Ssl: Werkzeug's
    ProxyFix and others read them). A client could thus tell the app a false address or origin."""
    out = _forwarded(
        "GET / HTTP/1.1\nHost: api\nX_Forwarded_For: 6.6.6.6\nX-Real_IP: 6.6.6.7\n"
        "X-Forwarded-Port: 80\nX-Forwarded-Prefix: /admin\nX_Forwarded_Proto: http\n"
        "X-Forwarded-Ssl: off\nFORWARDED: for=6.6.6.8\n"
    )
    for spoofed in (b"6.6.6.", b"x-forwarded-port", b"/admin", b"proto: http\r", b"ssl"):
        assert spoofed not in out, spoofed
    assert b"x-forwarded-for: 203.0.113.7\r\n" in out
    assert out.count(b"x-forwarded-for") == 1


def test_connection_cannot_strip_the_host_the_app_routes_by() -> None:
    """Finding: ``Connection: host`` made the front drop Host as hop-by-hop and not put it back,
    so the app got an HTTP/1.1 request without Host (while X-Forwarded-Host still named one)."""
    out = _forwarded("GET / HTTP/1.1\nHost: api\nConnection: host, x-forwarded-host\n")
    assert out.startswith(b"get / http/1.1\r\nhost: api\r\n")
    assert out.count(b"\r\nhost: ") == 1
    assert b"x-forwarded-host: api\r\n" in out


@pytest.mark.parametrize(
    "host",
    ["evil.example/x?", "a b", "a@b", "a,b", "[::1", "x:99999", "x:", "x:1:2", "\xe9.example"],
)
def test_invalid_host_is_refused(host: str) -> None:
    """Finding: any field value passed as Host, and from it into X-Forwarded-Host and Forwarded
    (RFC 9112 3.2: a server MUST answer 400 to an invalid Host)."""
    with pytest.raises(HandshakeError) as caught:
        parse_request_head(f"GET / HTTP/1.1\r\nHost: {host}\r\n\r\n".encode("latin-1"), **LIMIT)
    assert caught.value.status == 400


@pytest.mark.parametrize(
    "host", ["api", "api:8443", "127.0.0.1", "127.0.0.1:443", "[::1]:443", "[::1]", "a-b.c_d"]
)
def test_valid_hosts_still_pass(host: str) -> None:
    head = parse_request_head(f"GET / HTTP/1.1\r\nHost: {host}\r\n\r\n".encode(), **LIMIT)
    assert head.get(b"host") == host.encode()


@pytest.mark.parametrize(
    "path",
    [
        "/./.well-known/nitro-attestation",
        "/.well-known/./nitro-attestation",
        "/x/../.well-known/nitro-attestation",
        "/%2e/.well-known/nitro-attestation",
        "/.well-known/nitro-attestation/.",
        "/.well-known/nitro-attestation;x",
        "/.WELL-KNOWN/Nitro-Attestation",
        "/.well-known\\nitro-attestation",
        "/.well-known/%6eitro-attestation/./",
    ],
)
def test_dot_segments_and_other_spellings_of_the_attestation_path_stay_at_the_front(
    path: str,
) -> None:
    """Finding: dot segments, path parameters, case and backslashes, which servers and frameworks
    commonly normalize away, took the attestation path past the front to the app."""
    assert is_attestation_path(path)


def test_paths_near_the_attestation_path_still_go_to_the_app() -> None:
    for path in ("/.well-known/nitro-attestation-x", "/.well-known/nitro-attestation/x",
                 "/.well-known", "/", "/x/.well-known/nitro-attestation"):
        assert not is_attestation_path(path), path


# --- the front end to end, against a raw app that records the exact head --------------------


class RawApp:
    """An app that records each request head it receives and answers ``answer``."""

    def __init__(self, answer: bytes) -> None:
        self.answer = answer
        self.heads: list[bytes] = []
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.address = f"tcp://127.0.0.1:{self.listener.getsockname()[1]}"
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            try:
                sock, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(sock,), daemon=True).start()

    def _serve(self, sock: socket.socket) -> None:
        buffer = b""
        with sock:
            while True:
                end = buffer.find(b"\r\n\r\n")
                if end >= 0:
                    self.heads.append(buffer[: end + 4])
                    buffer = buffer[end + 4 :]
                    sock.sendall(self.answer)
                    continue
                try:
                    data = sock.recv(65536)
                except OSError:
                    return
                if not data:
                    return
                buffer += data

    def close(self) -> None:
        self.listener.close()


@contextmanager
def raw_app(answer: bytes) -> Iterator[RawApp]:
    app = RawApp(answer)
    try:
        yield app
    finally:
        app.close()


def _read_all(sock: ssl.SSLSocket, timeout: float = 5.0) -> bytes:
    sock.settimeout(timeout)
    out = b""
    with contextlib.suppress(OSError):
        while data := sock.recv(65536):
            out += data
    return out


CHUNKED_ANSWER = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"


def test_http10_client_never_gets_a_chunked_body(sim_state: Path) -> None:
    """Finding: the app's chunked answer went to an HTTP/1.0 client chunked (RFC 9112 7.1: a
    client that did not announce 1.1 cannot decode it; it reads chunk sizes as data)."""
    with raw_app(CHUNKED_ANSWER) as app, running_front(sim(sim_state), app.address) as front:
        sock = tls_connect(front.address)
        sock.sendall(b"GET /c HTTP/1.0\r\nHost: api\r\n\r\n")
        answer = _read_all(sock)
        sock.close()
        head, _, body = answer.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200 ")
        assert b"transfer-encoding" not in head.lower()
        assert body == b"hello"


def test_spoofed_forwarded_fields_and_connection_host_end_to_end(sim_state: Path) -> None:
    with raw_app(b"HTTP/1.1 204 No Content\r\n\r\n") as app, \
            running_front(sim(sim_state), app.address) as front:
        sock = tls_connect(front.address)
        sock.sendall(b"GET /a HTTP/1.1\r\nHost: api\r\nConnection: host\r\n"
                     b"X_Forwarded_For: 6.6.6.6\r\nX-Forwarded-Port: 80\r\n\r\n")
        sock.settimeout(5)
        assert sock.recv(65536).startswith(b"HTTP/1.1 204 ")
        sock.close()
        (head,) = app.heads
        lowered = head.lower()
        assert b"\r\nhost: api\r\n" in lowered
        assert b"6.6.6.6" not in lowered and b"x-forwarded-port" not in lowered


# --- the client against a parent's malformed certificate -------------------------------------


def _tlv(tag: int, body: bytes) -> bytes:
    n = len(body)
    if n < 0x80:
        return bytes([tag, n]) + body
    size = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes([tag, 0x80 | len(size)]) + size + body


def _ber_certificate() -> bytes:
    """A key and a self-signed certificate whose serial has a non-minimal (BER) length: OpenSSL
    takes it, the strict DER parser of ``cryptography`` does not. PEM, key first."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "parent")])
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name)
        .public_key(key.public_key()).serial_number(0x1234)
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    tbs = cert.tbs_certificate_bytes
    header = 2 + (tbs[1] & 0x7F if tbs[1] & 0x80 else 0)
    body = tbs[header:]
    assert body.count(b"\x02\x02\x12\x34") == 1
    new_tbs = _tlv(0x30, body.replace(b"\x02\x02\x12\x34", b"\x02\x81\x02\x12\x34"))
    signature = key.sign(new_tbs, ec.ECDSA(hashes.SHA256()))
    algorithm = _tlv(0x30, _tlv(0x06, bytes.fromhex("2a8648ce3d040302")))  # ecdsa-with-SHA256
    der = _tlv(0x30, new_tbs + algorithm + _tlv(0x03, b"\x00" + signature))
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return key_pem + ssl.DER_cert_to_PEM_cert(der).encode()


@contextmanager
def parent_with_certificate(
    pem: bytes, tmp_path: Path, state: Path
) -> Iterator[tuple[str, list[bytes]]]:
    """A TLS server (the parent) with ``pem`` that answers the attestation path with a genuine
    document for the caller's nonce (from the software NSM); records what else it was sent."""
    path = tmp_path / "parent.pem"
    path.write_bytes(pem)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(str(path))
    listener = socket.create_server(("127.0.0.1", 0))
    received: list[bytes] = []

    def serve() -> None:
        while True:
            try:
                raw, _ = listener.accept()
            except OSError:
                return
            try:
                with context.wrap_socket(raw, server_side=True) as tls:
                    tls.settimeout(5)
                    with contextlib.suppress(OSError):
                        while data := tls.recv(65536):
                            found = re.search(rb"nonce=([0-9a-f]+) ", data)
                            if found is None:
                                received.append(data)
                                continue
                            document = sim(state).attestation(
                                nonce=bytes.fromhex(found.group(1).decode())
                            )
                            tls.sendall(simple_response(200, document, content_type=DOCUMENT_TYPE))
            except (OSError, ssl.SSLError):
                pass

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield f"https://127.0.0.1:{listener.getsockname()[1]}", received
    finally:
        listener.close()


def test_parents_unparsable_certificate_is_a_refusal_not_a_crash(
    sim_state: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Finding: a certificate OpenSSL accepts but ``cryptography`` cannot parse (a BER length)
    made the client's key extraction raise ValueError: a traceback-class error out of the
    library (the httpx transport raised it to the caller) instead of a refusal."""
    root = (sim_state / "root.pem").read_bytes()
    with parent_with_certificate(_ber_certificate(), tmp_path, sim_state) as (url, received):
        with pytest.raises(AttestationRefused) as caught:
            fetch(url + "/secret", verifier=Verifier(root_pem=root), policy=POLICY,
                  sink=lambda _: None)
        assert caught.value.check == "public_key"
        transport = AttestedTransport(policy=POLICY, root=root)
        with httpx.Client(transport=transport) as client, \
                pytest.raises(NitroAttestError):
            client.get(url + "/secret")
        rc = main(["https", "get", url + "/secret", "--root", str(sim_state / "root.pem"),
                   *pcr_flags()])
        err = capsys.readouterr().err
        assert rc == 1, err
        assert "attestation refused (public_key)" in err
        assert not any(b"/secret" in data for data in received)


# --- TLS -----------------------------------------------------------------------------------------


def test_tls12_front_refuses_client_renegotiation() -> None:
    """Hardening: with ``--tls12`` the front left renegotiation to OpenSSL's default. OpenSSL 3.0
    refuses client-initiated renegotiation by itself (checked with ``openssl s_client -tls1_2``
    and ``R``: "no renegotiation"), 1.1.1 does not: a full handshake's CPU a client could ask
    for at will. The option is now set whatever OpenSSL the enclave image carries."""
    identity = make_identity(allow_tls12=True)
    assert identity.context.options & ssl.OP_NO_RENEGOTIATION


def test_client_requires_tls13() -> None:
    """Hardening: our front always speaks TLS 1.3, so a client that settles for 1.2 can only be
    talking to something else; the client no longer offers 1.2."""
    from nitro_attest.https.client import client_context

    assert client_context().minimum_version == ssl.TLSVersion.TLSv1_3


# --- the parent dripping the attestation answer --------------------------------------------------


@contextmanager
def dripping_parent() -> Iterator[str]:
    """The parent answering the attestation path one byte every 0.2 s, forever: each read gets
    something well within any per-read timeout."""
    own = make_identity()
    listener = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                raw, _ = listener.accept()
            except OSError:
                return
            threading.Thread(target=drip, args=(raw,), daemon=True).start()

    def drip(raw: socket.socket) -> None:
        with contextlib.suppress(OSError, ssl.SSLError):
            raw.settimeout(5)
            with own.context.wrap_socket(raw, server_side=True) as tls:
                tls.recv(65536)
                for byte in b"HTTP/1.1 200 OK\r\nX-Pad: " + b"a" * 5000:
                    if stop.wait(0.2):
                        return
                    tls.sendall(bytes([byte]))

    threading.Thread(target=serve, daemon=True).start()
    try:
        yield f"https://127.0.0.1:{listener.getsockname()[1]}"
    finally:
        stop.set()
        listener.close()


def _within(seconds: float, call: Callable[[], object]) -> BaseException | None:
    """Run ``call`` in a thread; the exception it raised, or AssertionError if still running."""
    outcome: list[BaseException | None] = []

    def run() -> None:
        try:
            call()
            outcome.append(None)
        except BaseException as exc:
            outcome.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(seconds)
    if not outcome:
        raise AssertionError(f"still waiting after {seconds} s")
    return outcome[0]


def test_dripped_attestation_answer_is_cut_at_the_timeout(sim_state: Path) -> None:
    """Finding: ``timeout`` bounded each read, not the attestation exchange: a parent sending the
    answer a byte at a time held ``https get`` and the httpx transport for as long as it liked
    (8 KiB of head at one byte per read). Now the exchange as a whole ends at the timeout."""
    root = (sim_state / "root.pem").read_bytes()
    with dripping_parent() as url:
        error = _within(8, lambda: fetch(url + "/x", verifier=Verifier(root_pem=root),
                                         policy=POLICY, sink=lambda _: None, timeout=1.5))
        assert isinstance(error, NitroAttestError) and "timed out" in str(error), error
        transport = AttestedTransport(policy=POLICY, root=root)
        client = httpx.Client(transport=transport, timeout=1.5)
        error = _within(8, lambda: client.get(url + "/x"))
        assert isinstance(error, NitroAttestError) and "timed out" in str(error), error
        client.close()


# --- what held: the httpx transport's pool and redirects ----------------------------------------


def test_redirect_to_the_parent_is_attested_and_refused(sim_state: Path) -> None:
    """Held: an app (or anyone who can make it answer) redirecting the client to a host the
    parent runs gets a new connection, attested like any other, and refused; a redirect to
    http:// is refused before connecting. The request body never reaches the parent."""
    root = (sim_state / "root.pem").read_bytes()
    with raw_app(b"") as app, running_front(sim(sim_state), app.address) as front, \
            relaying_parent(front.address) as (evil, _own, relayed):
        app.answer = (b"HTTP/1.1 307 Temporary Redirect\r\nLocation: " + evil.encode()
                      + b"/steal\r\nContent-Length: 0\r\n\r\n")
        transport = AttestedTransport(policy=POLICY, root=root)
        with httpx.Client(transport=transport, follow_redirects=True) as client:
            with pytest.raises(AttestationRefused) as caught:
                client.post(front.url + "/pay", content=b"card=4111")
            assert caught.value.check == "public_key"
            assert len(app.heads) == 1  # the original request only
            relayed_before = relayed[0]
            app.answer = (b"HTTP/1.1 302 Found\r\nLocation: http://127.0.0.1:1/x\r\n"
                          b"Content-Length: 0\r\n\r\n")
            with pytest.raises(UsageError, match="not attested"):
                client.get(front.url + "/again")
            assert relayed[0] == relayed_before


def test_pool_never_reuses_an_attested_connection_for_another_server(sim_state: Path) -> None:
    """Held: a refused connection leaves nothing in the pool, the attested one serves its own
    origin only, and a second refusal is a fresh attestation, not a cached verdict."""
    root = (sim_state / "root.pem").read_bytes()
    with raw_app(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok") as app, \
            running_front(sim(sim_state), app.address) as front, \
            relaying_parent(front.address) as (evil, _own, _relayed):
        transport = AttestedTransport(policy=POLICY, root=root)
        with httpx.Client(transport=transport) as client:
            with pytest.raises(AttestationRefused):
                client.get(evil + "/a")
            assert client.get(front.url + "/b").text == "ok"
            with pytest.raises(AttestationRefused):
                client.get(evil + "/c")
            assert client.get(front.url + "/d").text == "ok"
        assert [h.split(b" ")[1] for h in app.heads] == [b"/b", b"/d"]
        assert len(front.attestation_lines()) == 3  # /b once (pooled), twice for the relay


def test_get_refuses_a_method_that_is_not_a_token_and_a_non_ascii_host(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Finding (usage): ``-X "GET /x HTTP/1.1"`` went into the request line as given (a line of
    the caller's own making, but a malformed request all the same), and a non-ASCII host name
    failed with a UnicodeEncodeError after the handshake. Both are now usage errors, before any
    connection."""
    rc = main(["https", "get", "https://127.0.0.1:1/", "-X", "GET /x HTTP/1.1", *pcr_flags()])
    assert rc == 2
    assert "-X" in capsys.readouterr().err
    with pytest.raises(UsageError, match="ASCII"):
        parse_url("https://b\u00fccher.example/")


def test_transport_to_an_ipv6_front_sends_a_bracketed_host(sim_state: Path) -> None:
    """Regression guard for the Host check above: httpcore names an IPv6 origin without brackets,
    and the transport put that in the attestation request's Host (``::1``), which is not a
    valid Host; it now brackets it."""
    identity = make_identity()
    backend = sim(sim_state)
    seal_caller_key_pcr(backend)
    with raw_app(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok") as app:
        front = HttpsFront(FrontConfig(app=parse_address(app.address)), identity,
                           Attester(backend, identity.spki_der))
        listen = parse_address("tcp://[::1]:0", role="listen")
        with loop_in_thread(lambda: front.start(listen), lambda: front.shutdown(1.0),
                            "nitro_attest.https") as (bound, _logs):
            transport = AttestedTransport(policy=POLICY,
                                          root=(sim_state / "root.pem").read_bytes())
            with httpx.Client(transport=transport) as client:
                assert client.get(f"https://[::1]:{bound.port}/v6").text == "ok"
        assert app.heads[0].startswith(b"GET /v6 HTTP/1.1\r\nhost: [::1]:")


# --- the front's deadlines ---------------------------------------------------------------


class SlowNsm:
    """Takes ``delay`` seconds per document, as a queue of other clients' requests would."""

    def __init__(self, inner: object, delay: float) -> None:
        self._inner = inner
        self._delay = delay

    def attestation(self, **fields: object) -> bytes:
        threading.Event().wait(self._delay)
        return self._inner.attestation(**fields)  # type: ignore[attr-defined, no-any-return]

    def __getattr__(self, name: str) -> object:
        return getattr(self._inner, name)


def test_a_deadline_passing_during_the_nsm_call_does_not_exempt_the_connection(
    sim_state: Path,
) -> None:
    """Finding: the header deadline passing while the attestation answer waited for the NSM (a
    queue a client can build with other connections) marked the connection expired with nothing
    to interrupt; the sweep skips expired connections, so from then on it never expired again
    and could sit idle for good, immune to the idle timeout."""
    with raw_app(b"") as app, running_front(
        SlowNsm(sim(sim_state), 1.0), app.address, header_timeout=0.5, idle_timeout=1.0
    ) as front:
        sock = tls_connect(front.address)
        # The head in two pieces: the front is then under the header deadline (0.5 s from the
        # first byte), which passes while the NSM works.
        sock.sendall(b"GET /.well-known/nitro-attestation?nonce=")
        threading.Event().wait(0.1)
        sock.sendall(b"ab" * 16 + b" HTTP/1.1\r\nHost: x\r\n\r\n")
        sock.settimeout(5)
        answer = b""
        while b"\r\n\r\n" not in answer and (data := sock.recv(65536)):
            answer += data
        assert answer.startswith(b"HTTP/1.1 200 ")
        # Now idle: closed within the idle timeout (1 s) and a sweep or two, not left open.
        sock.settimeout(6)
        started = time.monotonic()
        with contextlib.suppress(OSError):
            while sock.recv(65536):
                pass
        assert time.monotonic() - started < 5.0
        wait_for(lambda: front.front.active_connections == 0, 3, "the idle connection dropped")
        sock.close()


def test_dripped_tls_handshake_is_cut_at_the_timeout(sim_state: Path) -> None:
    """Held: the parent relaying the real front's handshake a byte every 0.2 s. CPython bounds
    a handshake as a whole by the socket's timeout, so ``https get`` stops at its timeout."""
    root = (sim_state / "root.pem").read_bytes()
    with raw_app(b"") as app, running_front(sim(sim_state), app.address) as front:
        listener = socket.create_server(("127.0.0.1", 0))
        stop = threading.Event()

        def relay() -> None:
            with contextlib.suppress(OSError):
                client, _ = listener.accept()
                upstream = socket.create_connection((front.address.host, front.address.port))
                client.settimeout(0.05)
                while not stop.is_set():
                    with contextlib.suppress(TimeoutError):
                        if data := client.recv(65536):
                            upstream.sendall(data)
                    upstream.settimeout(0.05)
                    with contextlib.suppress(TimeoutError):
                        for byte in upstream.recv(1):
                            client.sendall(bytes([byte]))
                            stop.wait(0.2)

        threading.Thread(target=relay, daemon=True).start()
        url = f"https://127.0.0.1:{listener.getsockname()[1]}/x"
        try:
            error = _within(8, lambda: fetch(url, verifier=Verifier(root_pem=root),
                                             policy=POLICY, sink=lambda _: None, timeout=1.5))
        finally:
            stop.set()
            listener.close()
        assert isinstance(error, NitroAttestError) and "timed out" in str(error), error
        assert app.heads == []


def test_a_nitrotpm_policy_is_refused_before_connecting() -> None:
    """https serve answers from an enclave's NSM; a NitroTPM document's PCR16 means nothing."""
    from nitro_attest.attestation.document import DocumentKind
    from nitro_attest.attestation.policy import Policy
    from nitro_attest.errors import UsageError
    from nitro_attest.https.attest import check_policy

    policy = Policy(pcr_sets=({0: b"\x01" * 48},), kind=DocumentKind.NITROTPM)
    with pytest.raises(UsageError, match="enclave documents only"):
        check_policy(policy)
    assert check_policy(Policy(pcr_sets=({0: b"\x01" * 48},))).kind is DocumentKind.ENCLAVE
