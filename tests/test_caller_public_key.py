"""The enclave server is no signing oracle: a caller cannot have a key of its choosing attested.

Threat model (docs/threat-model.md): the parent calls every endpoint with every field of its
choosing. A document naming a key the enclave does not hold would let it impersonate the enclave
(to send-secret, to KMS), so `attest` with a `public_key` is refused unless the operator opted in,
and a channel-shaped key is refused even then.
"""

from __future__ import annotations

import base64
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from nitro_attest._cli import main
from nitro_attest.attestation.verifier import Verifier
from nitro_attest.channel.receiver import ChannelReceiver, channel_handlers
from nitro_attest.wire import client
from nitro_attest.wire.server import nsm_handlers
from tests.fakes import MEASUREMENTS, FakeNsm, payload
from tests.serve_process import ServeProcess, serve_process
from tests.serverkit import running_server

RSA_SPKI = (
    rsa.generate_private_key(public_exponent=65537, key_size=2048)
    .public_key()
    .public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
)
CHANNEL_SHAPED = {
    "x25519": b"NAHPKE1\x01" + os.urandom(32),
    "mlkem768-x25519": b"NAHPKE1\x02" + os.urandom(32),
    "future version": b"NAHPKE2\x01" + os.urandom(32),
    "bare prefix": b"NAHPKE",
}


def _refused(address: str, public_key: bytes) -> client.EnclaveError:
    with pytest.raises(client.EnclaveError) as info:
        client.request_attestation(address, nonce=os.urandom(32), public_key=public_key)
    return info.value


@pytest.mark.parametrize("name", ["rsa", *sorted(CHANNEL_SHAPED)])
def test_default_server_refuses_any_caller_key(name: str, fake_nsm: FakeNsm) -> None:
    """Threat: the parent asks `attest` for a document naming its own key: refused, NSM unused."""
    key = RSA_SPKI if name == "rsa" else CHANNEL_SHAPED[name]
    with running_server("tcp://127.0.0.1:0", nsm_handlers(fake_nsm)) as (addr, _, logs):
        error = _refused(str(addr), key)
        assert error.code == "public_key_refused"
        hint = "--allow-caller-public-key" if name == "rsa" else "channel"
        assert hint in error.remote_message
        assert fake_nsm.calls == []
        # the connection-level service goes on: an attest without a key is answered
        doc = client.request_attestation(str(addr), nonce=b"n" * 32)
        assert payload(doc)["nonce"] == b"n" * 32 and payload(doc)["public_key"] is None
    refusals = [line for line in logs.lines() if "public_key_refused" in line]
    assert len(refusals) == 1 and f"public_key={len(key)}B" in refusals[0]


def test_opted_in_server_serves_rsa_key(fake_nsm: FakeNsm) -> None:
    handlers = nsm_handlers(fake_nsm, allow_caller_public_key=True)
    with running_server("tcp://127.0.0.1:0", handlers) as (addr, _, _logs):
        doc = client.request_attestation(str(addr), nonce=b"n" * 32, public_key=RSA_SPKI)
    verified = Verifier(root_pem=fake_nsm.chain.root_pem).verify(
        doc, at="document", nonce=b"n" * 32
    )
    assert verified.document.public_key == RSA_SPKI


@pytest.mark.parametrize("name", sorted(CHANNEL_SHAPED))
def test_opted_in_server_still_refuses_channel_shaped_keys(name: str, fake_nsm: FakeNsm) -> None:
    """Threat: the parent names its own X25519 key in the channel format (send-secret would seal
    to it). Only the enclave's channel code may produce such a document, opt-in or not."""
    handlers = nsm_handlers(fake_nsm, allow_caller_public_key=True)
    with running_server("tcp://127.0.0.1:0", handlers) as (addr, _, _logs):
        error = _refused(str(addr), CHANNEL_SHAPED[name])
    assert error.code == "public_key_refused" and "channel" in error.remote_message
    assert fake_nsm.calls == []


@pytest.mark.parametrize("allow", [False, True])
@pytest.mark.parametrize("name", sorted(CHANNEL_SHAPED))
def test_channel_attest_handler_applies_the_same_rule(
    allow: bool, name: str, fake_nsm: FakeNsm
) -> None:
    """The channel's own `attest` handler (key in every document) follows the same rule."""
    nsm = fake_nsm
    handlers = channel_handlers(ChannelReceiver(), nsm, allow_caller_public_key=allow)
    with running_server("tcp://127.0.0.1:0", handlers) as (addr, _, _logs):
        assert _refused(str(addr), CHANNEL_SHAPED[name]).code == "public_key_refused"
        if allow:
            doc = client.request_attestation(str(addr), nonce=b"n" * 32, public_key=RSA_SPKI)
            assert nsm.calls[-1]["public_key"] == RSA_SPKI
            assert payload(doc)["public_key"] == RSA_SPKI
        else:
            assert _refused(str(addr), RSA_SPKI).code == "public_key_refused"
    assert all(call["public_key"] in (None, RSA_SPKI) or call["public_key"][:6] == b"NAHPKE"
               for call in nsm.calls)  # fmt: skip
    assert not any(call["public_key"] == CHANNEL_SHAPED[name] for call in nsm.calls)


# --- the real `serve` process ----------------------------------------------------------------


@pytest.fixture(scope="module", params=[(), ("--no-channel",)], ids=["channel", "no-channel"])
def default_server(
    request: pytest.FixtureRequest, sim_state: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServeProcess]:
    sock = tmp_path_factory.mktemp("srv") / "default.sock"
    with serve_process(sim_state, sock, *request.param) as proc:
        yield proc


@pytest.fixture(scope="module")
def opted_in_server(
    sim_state: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServeProcess]:
    sock = tmp_path_factory.mktemp("srv") / "optin.sock"
    with serve_process(sim_state, sock, "--allow-caller-public-key") as proc:
        yield proc


@pytest.mark.parametrize("key", [RSA_SPKI, CHANNEL_SHAPED["x25519"]], ids=["rsa", "channel"])
def test_serve_refuses_caller_keys_by_default(default_server: ServeProcess, key: bytes) -> None:
    """Threat: the parent calls `attest` on the real server with a key of its choosing."""
    assert _refused(default_server.address, key).code == "public_key_refused"
    assert "public_key_refused" in default_server.stderr()


def test_serve_opted_in_serves_rsa_and_refuses_channel_keys(
    opted_in_server: ServeProcess, sim_state: Path
) -> None:
    nonce = os.urandom(32)
    doc = client.request_attestation(opted_in_server.address, nonce=nonce, public_key=RSA_SPKI)
    verified = Verifier(root_pem=(sim_state / "root.pem").read_bytes()).verify(
        doc, nonce=nonce, public_key=RSA_SPKI, expected_pcrs={0: MEASUREMENTS[0]}
    )
    assert verified.document.public_key == RSA_SPKI
    for key in CHANNEL_SHAPED.values():
        assert _refused(opted_in_server.address, key).code == "public_key_refused"


def test_attest_cli_public_key(
    default_server: ServeProcess,
    opted_in_server: ServeProcess,
    sim_state: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """`attest --public-key` works against an opted-in server and says why another refuses."""
    base = ["attest", "--root", str(sim_state / "root.pem"), "--pcr", f"0={MEASUREMENTS[0].hex()}",
            "--public-key", RSA_SPKI.hex(), "--out-dir", str(tmp_path)]  # fmt: skip
    assert main([*base, "--connect", opted_in_server.address]) == 0
    assert "✅ COSE Signature" in capsys.readouterr().out
    saved = base64.b64decode((tmp_path / "attestation-document.dat").read_text())
    assert payload(saved)["public_key"] == RSA_SPKI
    assert main([*base, "--connect", default_server.address]) == 2
    err = capsys.readouterr().err
    assert "refuses caller-chosen public keys" in err and "--allow-caller-public-key" in err
    assert len(err.strip().splitlines()) == 1


def test_serve_help_warns_about_the_opt_in(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["serve", "--help"]) == 0
    out = " ".join(capsys.readouterr().out.split()).lower()
    assert "--allow-caller-public-key" in out
    assert "anyone who reaches" in out and "channel" in out


def test_serve_opted_in_warns_at_start(opted_in_server: ServeProcess) -> None:
    assert "anyone who reaches this port gets any public key attested" in opted_in_server.stderr()
