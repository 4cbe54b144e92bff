"""The KMS client's per-call shortcuts (docs/kms.md, "Speed") against the general code they stand
for: the request head from a template checked once (``https.HeadTemplate``) against
``codec.http1.checked_request_head``, the answer taken whole from its first read against the
reader that collects it piece by piece, Decrypt's JSON written as bytes against the encoder,
the answer decoded as UTF-8 only. Each shortcut gives the same bytes, or the same refusal."""

from __future__ import annotations

import base64
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nitro_attest.codec.http import HandshakeError
from nitro_attest.codec.http1 import checked_request_head
from nitro_attest.errors import TransportError
from nitro_attest.kms.client import KmsClient, KmsError, KmsResponseError, _answer_fields, _json
from nitro_attest.kms.https import Answer, Connection, HeadTemplate
from nitro_attest.kms.sigv4 import Credentials
from nitro_attest.nsm import open_backend
from nitro_attest.nsm.backend import NsmBackend
from tests.test_kms_https import server

# Header parts: valid ones, and every kind checked_request_head refuses (control characters,
# CR/LF injection, separators in names, non-ASCII).
_PARTS = st.one_of(
    st.sampled_from(["Host", "X-Amz-Date", "Authorization", "a", "x!#$%&'*+-.^_`|~9",
                     "kms.us-east-1.amazonaws.com", "AWS4-HMAC-SHA256 Credential=A/b, S=c",
                     "", " padded ", "tab\there", "v\r\nX-Evil: 1", "a\nb", "a\rb", "nul\0",
                     "del\x7f", "Name: x", "a b", "a:b", "caf\u00e9", "x\x80", "(x)", "a,b"]),
    st.text(st.characters(codec="latin-1"), max_size=12),
)
_FIELDS = st.lists(st.tuples(_PARTS, _PARTS), max_size=4)


def _outcome(make: Any) -> bytes | str:
    """The bytes, or "refused 400" (the reason may differ when several parts are bad: the
    template checks its fixed part first)."""
    try:
        result: bytes = make()
    except HandshakeError as exc:
        return f"refused {exc.status}"
    return result


@settings(max_examples=400, deadline=None)
@given(fixed=_FIELDS, added=_FIELDS, length=st.one_of(st.none(), st.integers(0, 10**6)),
       method=st.sampled_from(["POST", "GET", "P OST", "POST\r\n"]),
       path=st.sampled_from(["/", "/a?b=c", "a", "/\r\n"]))
def test_a_template_gives_the_bytes_or_the_refusal_of_checked_request_head(
    fixed: list[tuple[str, str]], added: list[tuple[str, str]], length: int | None,
    method: str, path: str,
) -> None:
    expected = _outcome(lambda: checked_request_head(method, path, fixed + added, length=length))
    try:
        template = HeadTemplate(method, path, fixed)
    except HandshakeError as exc:  # the fixed part refused up front, as the whole would be
        assert expected == f"refused {exc.status}"
        return
    assert template.fields == tuple(fixed)
    assert _outcome(lambda: template.head(added, length=length)) == expected


_BAD_PARTS = ["", " padded", "v\r\nX-Evil: 1", "a\nb", "a\rb", "nul\0", "del\x7f", "Name: x",
              "a b", "a:b", "caf\u00e9", "(x)", "a,b", "x\u2028", "\t"]


@pytest.mark.parametrize("bad", _BAD_PARTS)
@pytest.mark.parametrize("where", ["name", "value"])
def test_each_bad_part_is_refused_where_checked_request_head_refuses_it(
    bad: str, where: str
) -> None:
    """One bad part among valid ones, in the per-request fields (the hypothesis test above
    seldom draws a single bad part alone)."""
    fixed = [("Host", "kms"), ("X-Amz-Target", "TrentService.Decrypt")]
    added = [("X-Amz-Date", "20261206T000000Z"),
             (bad, "v") if where == "name" else ("Authorization", bad)]
    expected = _outcome(lambda: checked_request_head("POST", "/", fixed + added, length=5))
    assert _outcome(lambda: HeadTemplate("POST", "/", fixed).head(added, length=5)) == expected
    # and in the fixed part, refused when the template is made
    expected_fixed = _outcome(lambda: checked_request_head("POST", "/", added, length=None))
    assert _outcome(lambda: HeadTemplate("POST", "/", added).head([], length=None)) == (
        expected_fixed)


@settings(max_examples=100, deadline=None)
@given(st.lists(_FIELDS, min_size=1, max_size=30))
def test_one_template_used_again_and_again_stays_exact(heads: list[list[tuple[str, str]]]) -> None:
    """The names a template remembers as checked (bounded) never let a bad one through later."""
    fixed = [("Host", "kms")]
    template = HeadTemplate("POST", "/", fixed)
    for added in heads:
        expected = _outcome(lambda a=added: checked_request_head("POST", "/", fixed + a, length=9))
        assert _outcome(lambda a=added: template.head(a, length=9)) == expected
    assert len(template._names) <= 16


def test_a_parent_chosen_credential_cannot_add_a_header() -> None:
    """IMDS is the parent's: a token or key id with CR LF must not become a header of its own."""
    template = HeadTemplate("POST", "/", [("Host", "kms")])
    for added in ([("X-Amz-Security-Token", "t\r\nX-Amz-Target: TrentService.Encrypt")],
                  [("Authorization", "AWS4 Credential=K\n/x")],
                  [("X-Amz-Security-Token", "t\u2028")], [("Bad Name", "v")]):
        with pytest.raises(HandshakeError) as caught:
            template.head(added, length=2)
        assert caught.value.status == 400
        assert "Evil" not in str(caught.value) and "TrentService" not in str(caught.value)


# --- the answer taken whole from the first read ------------------------------------------------

_ANSWERS = [
    b"HTTP/1.1 200 OK\r\nContent-Type: application/x-amz-json-1.1\r\n"
    b"x-amzn-RequestId: 1\r\nContent-Length: 2\r\n\r\n{}",
    b"HTTP/1.1 400 Bad Request\r\nContent-Length: 5\r\n\r\nerror",
    b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 3\r\n\r\nbye",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
    b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
    b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok",
]


def _exchange(data: bytes, *, whole: bool, spy: list[str]) -> tuple[Answer, bool]:
    """``data`` answered in one write (``whole``) or a byte per write; the answer and whether
    the connection stays open. ``spy`` records each use of the piecewise reader."""

    def answer(conn: socket.socket, n: int) -> None:
        if whole:
            conn.sendall(data)
        else:
            for i in range(len(data)):
                conn.sendall(data[i : i + 1])

    with server(answer) as connection:
        original = connection._head

        def head(*args: Any, **kw: Any) -> Any:
            spy.append("piecewise")
            return original(*args, **kw)

        connection._head = head  # type: ignore[method-assign]
        result = connection.request("POST", "/", [("Host", "kms")], b"{}")
        return result, connection._sock is not None


@pytest.mark.parametrize("data", _ANSWERS)
def test_an_answer_read_whole_or_a_byte_at_a_time_is_the_same(data: bytes) -> None:
    spy_whole: list[str] = []
    spy_pieces: list[str] = []
    assert _exchange(data, whole=True, spy=spy_whole) == _exchange(data, whole=False,
                                                                   spy=spy_pieces)
    assert spy_pieces  # a byte at a time: the piecewise reader, always
    # one write: the first read holds it all, taken whole when it is one final answer by length
    fast = data.startswith(b"HTTP/1.1 ") and b"Content-Length" in data and b"100 " not in data
    assert (not spy_whole) == (fast and b"Connection: close" not in data)


def test_an_answer_whole_in_one_read_is_taken_without_the_piecewise_reader() -> None:
    spy: list[str] = []
    answer, kept = _exchange(_ANSWERS[0], whole=True, spy=spy)
    assert (answer.status, answer.body, kept, spy) == (200, b"{}", True, [])
    assert answer.headers == ((b"content-type", b"application/x-amz-json-1.1"),
                              (b"x-amzn-requestid", b"1"), (b"content-length", b"2"))


def test_a_second_answer_injected_behind_the_first_is_refused_not_served() -> None:
    """The parent (or anyone on the TLS stream's far side) writes two answers at once: the
    second must not answer the next request."""
    one = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}"
    injected = b"HTTP/1.1 200 OK\r\nContent-Length: 7\r\n\r\ninjects"

    def answer(conn: socket.socket, n: int) -> None:
        conn.sendall(one + injected if n == 1 else one)

    with server(answer) as connection:
        assert connection.request("POST", "/", [("Host", "kms")], b"{}").body == b"{}"
        with pytest.raises(TransportError, match="unsolicited"):
            connection.request("POST", "/", [("Host", "kms")], b"{}")


@pytest.mark.parametrize(("data", "words"), [
    (b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 2\r\n\r\n{}", "Content-Length"),
    (b"HTTP/1.1 200 OK\r\nContent-Length: +2\r\n\r\n{}", "Content-Length"),
    (b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n{}", "both"),
    (b"HTTP/1.1 200 OK\r\nX: a\nContent-Length: 2\r\n\r\n{}", "malformed answer"),
    (b"HTTP/1.1 200 OK\r\nContent-Length: 999999999\r\n\r\n{}", "more than"),
    (b"HTTP/1.1 200 OK\r\nContent-Length : 2\r\n\r\n{}", "malformed answer"),
])
def test_a_whole_answer_gets_every_check(data: bytes, words: str) -> None:
    with server(lambda conn, n: conn.sendall(data)) as connection:
        with pytest.raises(TransportError, match=words):
            connection.request("POST", "/", [("Host", "kms")], b"{}")
        assert connection._sock is None


def test_send_takes_a_template_head() -> None:
    got: list[bytes] = []
    template = HeadTemplate("POST", "/", [("Host", "kms"), ("X-Amz-Target", "T.Op")])

    def answer(conn: socket.socket, n: int) -> None:
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")

    with server(answer) as connection:
        assert isinstance(connection, Connection)
        head = template.head([("X-Amz-Date", "20261206T000000Z")], length=2)
        assert head == checked_request_head(
            "POST", "/", [("Host", "kms"), ("X-Amz-Target", "T.Op"),
                          ("X-Amz-Date", "20261206T000000Z")], length=2)
        got.append(connection.send("POST", head, b"{}").body)
    assert got == [b"ok"]


# --- the client: Decrypt's JSON, the answer's decoding, the output order -----------------------


@pytest.fixture
def nsm(sim_state: Path) -> Iterator[NsmBackend]:
    backend = open_backend("simulator", state_dir=sim_state)
    yield backend
    backend.close()


def _captured(nsm: NsmBackend, monkeypatch: pytest.MonkeyPatch, call: Any) -> bytes:
    """The payload ``call(client)`` would send (a fixed document: the same bytes each time)."""
    client = KmsClient(region="us-east-1", nsm=nsm, credentials=Credentials("AK", "SK"),
                       endpoint="http://127.0.0.1:9", insecure_http=True)
    sent: list[bytes] = []

    def send(operation: str, payload: bytes) -> Answer:
        sent.append(payload)
        raise TransportError("captured")

    monkeypatch.setattr(client, "_document", lambda key: b"\x84the document\xff")
    monkeypatch.setattr(client, "_send", send)
    with pytest.raises(TransportError, match="captured"):
        call(client)
    return sent[0]


@pytest.mark.parametrize("blob", [b"", b"\x00", bytes(range(256)), b"\xff" * 181])
def test_decrypts_json_written_as_bytes_is_the_encoders(
    nsm: NsmBackend, monkeypatch: pytest.MonkeyPatch, blob: bytes
) -> None:
    fast = _captured(nsm, monkeypatch, lambda c: c.decrypt(blob))
    general = _captured(nsm, monkeypatch, lambda c: c.call(
        "Decrypt", {"CiphertextBlob": base64.b64encode(blob).decode(), "Recipient": "theirs"}))
    assert fast == general
    assert fast.startswith(_json({"CiphertextBlob": base64.b64encode(blob).decode()})[:-1])
    with_key = _captured(nsm, monkeypatch, lambda c: c.decrypt(blob, key_id="alias/a"))
    assert with_key.startswith(b'{"CiphertextBlob":"' + base64.b64encode(blob)
                               + b'","KeyId":"alias/a","Recipient":')


def test_decrypt_without_a_key_arn_is_still_refused_when_one_is_required(
    nsm: NsmBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    client = KmsClient(region="us-east-1", nsm=nsm, credentials=Credentials("AK", "SK"),
                       endpoint="http://127.0.0.1:9", insecure_http=True, require_key_arn=True)
    monkeypatch.setattr(client, "_send", lambda *a: pytest.fail("sent"))
    from nitro_attest.errors import UsageError
    with pytest.raises(UsageError, match="KeyId none is not a full key ARN"):
        client.decrypt(b"blob")


@pytest.mark.parametrize("body", [
    '{"KeyId":"k"}'.encode("utf-16"), '{"KeyId":"k"}'.encode("utf-16-le"),
    b"\xef\xbb\xbf" + b'{"KeyId":"k"}', b'{"KeyId":"\xff"}', b'{"KeyId":"k"} x',
    b'{"a":1,"a":NaN', b"[]",
])
def test_answers_that_are_not_utf8_json_objects_are_refused(body: bytes) -> None:
    with pytest.raises(KmsResponseError, match="not a JSON object"):
        _answer_fields(Answer(200, (), body))
    with pytest.raises(KmsError, match="HTTP400"):  # an error answer: no code read from it
        _answer_fields(Answer(400, (), body))


def test_answers_kms_writes_are_read() -> None:
    assert _answer_fields(Answer(200, (), b' {"KeyId": "k", "N": 1}\n')) == {"KeyId": "k", "N": 1}
    with pytest.raises(KmsError, match="AccessDeniedException: no"):
        _answer_fields(Answer(400, (), b'{"__type":"x#AccessDeniedException","message":"no"}'))
