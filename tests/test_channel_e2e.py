"""End to end over real sockets: enclave server + software NSM + channel, client send_secret.

Both suites, TCP and Unix. Refusals before sending are checked on the server's own request log:
no ``sealed_message`` request may reach it. Threat model (docs/threat-model.md): a document that
does not verify (wrong PCRs, root, debug, no key) gets nothing sealed; replays are refused.
"""

from __future__ import annotations

import hashlib
import logging
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from nitro_attest._cli import main
from nitro_attest.attestation.verifier import Verifier
from nitro_attest.channel.messages import ChannelOfferResponse, SealedMessageRequest
from nitro_attest.channel.sender import ConnectionExchange, deliver_secret, send_secret
from nitro_attest.errors import (
    ChainError,
    ChannelError,
    ChannelKeyError,
    DebugModeError,
    PcrMismatchError,
    PolicyError,
)
from nitro_attest.nsm import open_backend
from nitro_attest.nsm.backend import NsmBackend
from nitro_attest.wire import client
from nitro_attest.wire.protocol import Request, Response
from nitro_attest.wire.server import nsm_handlers
from tests.serve_process import ENTRY, serve_process
from tests.serverkit import LogCollector, running_server

from .channel_helpers import Enclave, serving
from .fakes import MEASUREMENTS

EXPECTED = {0: MEASUREMENTS[0]}
SECRET = b"api-token: 0f1e2d3c4b5a69788796a5b4c3d2e1f0"
SUITES = ["x25519", "mlkem768-x25519"]


@pytest.fixture(params=["tcp", "unix"])
def enclave(
    request: pytest.FixtureRequest, sim_state: Path, tmp_path: Path
) -> Iterator[Enclave]:
    listen = "tcp://127.0.0.1:0" if request.param == "tcp" else f"unix://{tmp_path}/e.sock"
    with serving(sim_state, listen) as e:
        yield e


@pytest.mark.parametrize("suite", SUITES)
def test_delivered(enclave: Enclave, suite: str) -> None:
    receipt = send_secret(
        enclave.address, SECRET, root_pem=enclave.root, expected_pcrs=EXPECTED, suite=suite
    )
    assert receipt.sha256 == hashlib.sha256(SECRET).digest()
    assert receipt.suite.label == suite
    assert enclave.store.secrets == [SECRET]
    assert enclave.requests("sealed_message") == 1


class Recording:
    """A ConnectionExchange that can alter what it sends and keeps what it sent."""

    def __init__(self, inner: ConnectionExchange, alter: Any = None) -> None:
        self.inner, self.alter, self.sent = inner, alter, []

    def __call__(self, request: Request) -> Response:
        kind, fields = request.TYPE, request.to_fields()
        if self.alter is not None:
            fields = self.alter(kind, fields)
        self.sent.append((kind, fields))
        return self.inner(type(request).from_fields(fields))


def _deliver_recorded(enclave: Enclave, suite: str, alter: Any = None) -> Recording:
    with client.Connection(enclave.address, timeout=10) as conn:
        rec = Recording(ConnectionExchange(conn), alter)
        deliver_secret(
            rec,
            SECRET,
            verifier=Verifier(root_pem=enclave.root),
            expected_pcrs=EXPECTED,
            suite=suite,
        )
    return rec


@pytest.mark.parametrize("suite", SUITES)
def test_tampered_ciphertext_refused(enclave: Enclave, suite: str) -> None:
    def flip(kind: str, fields: dict[str, Any]) -> dict[str, Any]:
        if "sealed" in fields:
            sealed = bytearray(fields["sealed"])
            sealed[len(sealed) // 2] ^= 0x04
            fields["sealed"] = bytes(sealed)
        return fields

    with pytest.raises(ChannelError, match="channel_refused: sealed message does not open") as e:
        _deliver_recorded(enclave, suite, flip)
    assert e.value.reason == "refused"
    assert enclave.store.secrets == []


@pytest.mark.parametrize("suite", SUITES)
def test_replay_refused(enclave: Enclave, suite: str) -> None:
    rec = _deliver_recorded(enclave, suite)
    assert enclave.store.secrets == [SECRET]
    _, fields = rec.sent[-1]
    with (
        client.Connection(enclave.address, timeout=10) as conn,
        pytest.raises(client.EnclaveError, match="replay") as e,
    ):
        conn.request(SealedMessageRequest(nonce=fields["nonce"], sealed=fields["sealed"]))
    assert e.value.code == "channel_refused"
    assert enclave.store.secrets == [SECRET]
    assert enclave.requests("sealed_message") == 2


@pytest.mark.parametrize("suite", SUITES)
def test_wrong_pcr0_refused_nothing_sent(enclave: Enclave, suite: str) -> None:
    with pytest.raises(PcrMismatchError):
        send_secret(
            enclave.address,
            SECRET,
            root_pem=enclave.root,
            expected_pcrs={0: b"\x01" * 48},
            suite=suite,
        )
    assert enclave.requests("channel_attest") == 1
    assert enclave.requests("sealed_message") == 0


@pytest.mark.parametrize("suite", SUITES)
def test_wrong_root_refused_nothing_sent(enclave: Enclave, suite: str) -> None:
    with pytest.raises(ChainError):  # the embedded AWS root never vouches for the simulator
        send_secret(enclave.address, SECRET, expected_pcrs=EXPECTED, suite=suite)
    assert enclave.requests("channel_attest") == 1
    assert enclave.requests("sealed_message") == 0


@pytest.mark.parametrize("suite", SUITES)
def test_debug_enclave_refused_nothing_sent(
    sim_debug_state: Path, tmp_path: Path, suite: str
) -> None:
    with serving(sim_debug_state, f"unix://{tmp_path}/d.sock") as debug:
        with pytest.raises(DebugModeError):
            send_secret(
                debug.address,
                SECRET,
                root_pem=debug.root,
                expected_pcrs={1: bytes(48)},
                suite=suite,
            )
        assert debug.requests("channel_attest") == 1
        assert debug.requests("sealed_message") == 0
        assert debug.store.secrets == []


def test_document_without_public_key_refused_nothing_sent(
    sim_state: Path, tmp_path: Path
) -> None:
    def keyless(backend: NsmBackend) -> dict[str, Any]:
        def channel_attest(request: Request) -> Response:  # an enclave that names no key
            nonce = request.to_fields()["nonce"]
            return ChannelOfferResponse(backend.attestation(nonce=nonce), b"k" * 32)

        return {"channel_attest": channel_attest}

    with serving(sim_state, f"unix://{tmp_path}/k.sock", override=keyless) as e:
        with pytest.raises(ChannelKeyError, match="no public_key"):
            send_secret(e.address, SECRET, root_pem=e.root, expected_pcrs=EXPECTED)
        assert e.requests("channel_attest") == 1
        assert e.requests("sealed_message") == 0


def test_no_expectation_refused_before_connecting(enclave: Enclave) -> None:
    with pytest.raises(PolicyError, match="PCR expectation"):
        send_secret(enclave.address, SECRET, root_pem=enclave.root)
    assert enclave.logs.lines() == []
    send_secret(enclave.address, SECRET, root_pem=enclave.root, unsafe_any_enclave=True)
    assert enclave.store.secrets == [SECRET]


def test_unreachable_is_transport_error(tmp_path: Path) -> None:
    with pytest.raises(ChannelError) as e:
        send_secret(f"unix://{tmp_path}/none.sock", SECRET, expected_pcrs=EXPECTED)
    assert e.value.reason == "transport"


def test_standard_attest_carries_channel_key(enclave: Enclave) -> None:
    nonce = bytes(range(32))
    doc = client.request_attestation(enclave.address, nonce=nonce)
    verified = Verifier(root_pem=enclave.root).verify(doc, nonce=nonce, expected_pcrs=EXPECTED)
    assert verified.document.public_key is not None
    assert verified.document.public_key.startswith(b"NAHPKE1\x01")
    own = b"client-chosen key (the KMS pattern)"
    with pytest.raises(client.EnclaveError, match="public_key_refused"):
        client.request_attestation(enclave.address, nonce=nonce, public_key=own)


def test_secret_never_logged(enclave: Enclave) -> None:
    channel_log = LogCollector()
    logger = logging.getLogger("nitro_attest.channel")
    logger.addHandler(channel_log)
    old = logger.level
    logger.setLevel(logging.DEBUG)
    try:
        for suite in SUITES:
            send_secret(
                enclave.address, SECRET, root_pem=enclave.root, expected_pcrs=EXPECTED, suite=suite
            )

        def flip_first_bit(kind: str, f: dict[str, Any]) -> dict[str, Any]:
            # Flip a bit: overwriting with a constant may leave the byte unchanged.
            return (
                {**f, "sealed": bytes([f["sealed"][0] ^ 1]) + f["sealed"][1:]}
                if "sealed" in f
                else f
            )

        with pytest.raises(ChannelError):
            _deliver_recorded(enclave, "x25519", flip_first_bit)
    finally:
        logger.removeHandler(channel_log)
        logger.setLevel(old)
    text = "\n".join(enclave.logs.lines() + channel_log.lines())
    assert "sealed message accepted" in text and "sealed message refused" in text
    for needle in (SECRET.decode(), SECRET.hex(), hashlib.sha256(SECRET).hexdigest()):
        assert needle not in text


@pytest.mark.parametrize("suite", SUITES)
def test_cli_send_secret(
    enclave: Enclave, tmp_path: Path, suite: str, capsys: pytest.CaptureFixture[str]
) -> None:
    secret_file = tmp_path / "s"
    secret_file.write_bytes(SECRET)
    root = tmp_path / "root.pem"
    root.write_bytes(enclave.root)
    base = [
        "send-secret",
        "--connect",
        enclave.address,
        "--file",
        str(secret_file),
        "--root",
        str(root),
        "--suite",
        suite,
    ]
    assert main([*base, "--pcr", f"0={MEASUREMENTS[0].hex()}"]) == 0
    assert "DELIVERED" in capsys.readouterr().out
    assert main([*base, "--pcr", "0=" + "00" * 48]) == 1
    assert "REFUSED (nothing sent): pcrs" in capsys.readouterr().out
    assert enclave.requests("sealed_message") == 1
    assert enclave.store.secrets == [SECRET]


def test_cli_unreachable_is_usage_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    secret_file = tmp_path / "s"
    secret_file.write_bytes(SECRET)
    rc = main(
        [
            "send-secret",
            "--connect",
            f"unix://{tmp_path}/none.sock",
            "--file",
            str(secret_file),
            "--pcr",
            f"0={MEASUREMENTS[0].hex()}",
        ]
    )
    assert rc == 2
    assert "is the server running?" in capsys.readouterr().err


def test_serve_process_and_send_secret_cli(sim_state: Path, tmp_path: Path) -> None:
    secret_file = tmp_path / "s"
    secret_file.write_bytes(SECRET)
    with serve_process(sim_state, tmp_path / "served.sock") as served:
        send = [*ENTRY, "send-secret", "--connect", served.address, "--file", str(secret_file),
                "--root", str(sim_state / "root.pem"), "--pcr", f"0={MEASUREMENTS[0].hex()}",
                "--suite", "mlkem768-x25519"]  # fmt: skip
        done = subprocess.run(send, capture_output=True, timeout=60)
        assert done.returncode == 0, done.stderr.decode()
        out = done.stdout.decode()
        assert out.startswith("DELIVERED 43 bytes") and "acknowledged" in out
        assert hashlib.sha256(SECRET).hexdigest()[:8] not in out  # no digest to test guesses on
    text = served.stderr()
    assert served.proc.returncode == 0
    assert "sealed message accepted: suite=mlkem768-x25519" in text
    assert SECRET.decode() not in text and "Traceback" not in text


def test_server_without_channel_refuses_cleanly(sim_state: Path, tmp_path: Path) -> None:
    backend = open_backend("simulator", state_dir=sim_state)
    try:
        with running_server(f"unix://{tmp_path}/n.sock", nsm_handlers(backend)) as (addr, _, logs):
            with pytest.raises(ChannelError, match="unknown_type") as e:
                send_secret(
                    str(addr),
                    SECRET,
                    root_pem=(sim_state / "root.pem").read_bytes(),
                    expected_pcrs=EXPECTED,
                )
            assert e.value.reason == "enclave"
            assert not any(" sealed_message " in line for line in logs.lines())
    finally:
        backend.close()
