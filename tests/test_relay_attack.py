"""The parent as a relay tries to turn the enclave into a signing oracle for its own channel key.

Threat model (docs/threat-model.md), the attack of issue 10: the parent relays `send-secret` to a
real `serve` process. It answers the client's `channel_attest` by sending the enclave a plain
`attest` with the client's nonce and a channel-shaped `public_key` naming the relay's own key; a
genuine document would make the client seal its secret to the relay. The enclave must refuse, the
relay must learn nothing, and `send-secret` must exit non-zero without printing a delivery. A
control run against a server that signs any key shows the relay does steal the secret there.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from nitro_attest._cli import main
from nitro_attest.channel.keys import KeyPair, SuiteId
from nitro_attest.channel.seal import (
    OpenError,
    acknowledgement,
    channel_info,
    document_digest,
    open_sealed,
    split_plaintext,
)
from nitro_attest.nsm import open_backend
from nitro_attest.wire.protocol import AttestationResponse, AttestRequest, Request, Response
from tests.fakes import MEASUREMENTS
from tests.relay import Frame, Relay, Upstream, relaying
from tests.serve_process import ServeProcess, serve_process
from tests.serverkit import running_server

SECRET = b"the model key: 5d41402abc4b2a76b9719d911017c592"
SUITES = ["x25519", "mlkem768-x25519"]
SERVERS = {
    "default": (),
    "no-channel": ("--no-channel",),
    "opted-in": ("--allow-caller-public-key",),
    "opted-in-no-channel": ("--allow-caller-public-key", "--no-channel"),
}


class OracleRelay(Relay):
    """Answers channel_attest with a document it had the enclave sign over its own key."""

    def __init__(self, upstream: str) -> None:
        super().__init__(upstream)
        self.own: dict[bytes, tuple[KeyPair, bytes]] = {}
        self.attempts: list[str] = []  # the enclave's answer type to each forged attest
        self.learned: list[bytes] = []

    def handle(self, request: Frame, upstream: Upstream) -> Frame:
        if request["type"] == "channel_attest":
            keys = KeyPair.generate(SuiteId.from_label(request["suite"]))
            answer = upstream.call(
                {"v": 1, "type": "attest", "nonce": request["nonce"],
                 "user_data": request.get("user_data"), "public_key": keys.advertised.field}
            )  # fmt: skip
            self.attempts.append(answer["type"])
            if answer["type"] != "attestation":
                return answer  # the enclave refused: pass its refusal on
            self.own[request["nonce"]] = (keys, answer["document"])
            return {"v": 1, "type": "channel_offer", "document": answer["document"],
                    "public_key": keys.public_bytes}  # fmt: skip
        if request["type"] == "sealed_message" and request["nonce"] in self.own:
            keys, document = self.own[request["nonce"]]
            info = channel_info(keys.advertised, request["nonce"], document_digest(document))
            try:
                ack_key, secret = split_plaintext(open_sealed(keys, request["sealed"], info))
            except OpenError:
                return upstream.call(request)
            self.learned.append(secret)
            return {"v": 1, "type": "sealed_ack", "ack": acknowledgement(ack_key, secret)}
        return upstream.call(request)


@pytest.fixture(scope="module", params=sorted(SERVERS))
def server(
    request: pytest.FixtureRequest, sim_state: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServeProcess]:
    sock = tmp_path_factory.mktemp("srv") / "e.sock"
    with serve_process(sim_state, sock, *SERVERS[request.param]) as proc:
        yield proc


def _send_secret(address: str, sim_state: Path, tmp_path: Path, suite: str) -> list[str]:
    secret = tmp_path / "secret"
    secret.write_bytes(SECRET)
    return ["send-secret", "--connect", address, "--file", str(secret), "--suite", suite,
            "--root", str(sim_state / "root.pem"),
            "--pcr", f"0={MEASUREMENTS[0].hex()}"]  # fmt: skip


@pytest.mark.parametrize("suite", SUITES)
def test_relay_oracle_attack_fails(
    server: ServeProcess,
    sim_state: Path,
    suite: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    relay = OracleRelay(server.address)
    with relaying(relay, tmp_path / "relay.sock") as address:
        rc = main(_send_secret(address, sim_state, tmp_path, suite))
    out, err = capsys.readouterr()
    assert relay.attempts == ["error"]  # the relay did try, and the enclave refused
    assert relay.learned == [] and relay.own == {}
    assert rc != 0
    assert "DELIVERED" not in out + err and SECRET.decode() not in out + err
    assert relay.seen == ["channel_attest"]  # nothing sealed ever left the client
    log = server.stderr()
    assert "public_key_refused" in log and "sealed message accepted" not in log


@pytest.mark.parametrize("suite", SUITES)
def test_control_relay_steals_from_a_signing_oracle(
    sim_state: Path, suite: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Control: against a server that has the NSM sign any caller key, the same relay wins.

    This one also locks PCR16 untouched without marking it, which nitro-attest's serve never
    does: the mark holds only for the server code PCR0 measures (test_caller_key_mark.py)."""
    backend = open_backend("simulator", state_dir=sim_state)
    backend.lock_pcr(16)

    def oracle(request: Request) -> Response:
        assert isinstance(request, AttestRequest)
        return AttestationResponse(
            backend.attestation(
                nonce=request.nonce, user_data=request.user_data, public_key=request.public_key
            )
        )

    try:
        with running_server(f"unix://{tmp_path}/oracle.sock", {"attest": oracle}) as (up, _, _l):
            relay = OracleRelay(str(up))
            with relaying(relay, tmp_path / "relay.sock") as address:
                rc = main(_send_secret(address, sim_state, tmp_path, suite))
    finally:
        backend.close()
    assert rc == 0 and "DELIVERED" in capsys.readouterr().out
    assert relay.learned == [SECRET]

