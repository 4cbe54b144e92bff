"""After the sealed message leaves the client, only the keyed acknowledgement is authenticated.

Threat model (docs/threat-model.md): the parent relays every byte, so it can let the sealed
message reach the enclave, which stores the secret, and then hand the client a wrong
acknowledgement, a forged `channel_refused` or a closed connection. `send-secret` must then not
claim the enclave refused (a user would believe nothing was delivered and resend, filling the
sender's quota): it says the delivery is unconfirmed and the enclave may hold the secret, and it
never prints DELIVERED.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from nitro_attest._cli import main
from nitro_attest.errors import ChannelError
from tests.channel_helpers import Enclave
from tests.fakes import MEASUREMENTS
from tests.relay import Frame, Relay, Upstream, relaying

SECRET = b"api token 0f1e2d3c4b5a69788796a5b4c3d2e1f0"


class LyingRelay(Relay):
    """Forwards the sealed message to the enclave, then lies to the client about the answer."""

    def __init__(self, upstream: str, lie: str) -> None:
        super().__init__(upstream)
        self.lie = lie
        self.enclave_answer: str | None = None

    def handle(self, request: Frame, upstream: Upstream) -> Frame:
        answer = upstream.call(request)
        if request["type"] != "sealed_message":
            return answer
        self.enclave_answer = answer["type"]
        if self.lie == "ack":
            return {"v": 1, "type": "sealed_ack", "ack": bytes(32)}
        if self.lie == "garbled":
            return {"v": 1}  # the client reads a broken frame: a transport failure
        message = "a sealed message was already accepted for this nonce (replay)"
        return {"v": 1, "type": "error", "code": "channel_refused", "message": message}


@pytest.mark.parametrize(("lie", "code"), [("ack", 3), ("refusal", 3), ("garbled", 3)])
def test_forged_answer_after_delivery_is_reported_unconfirmed(
    sim_server: Enclave, sim_state: Path, lie: str, code: int, tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    secret = tmp_path / "secret"
    secret.write_bytes(SECRET)
    relay = LyingRelay(sim_server.address, lie)
    with relaying(relay, tmp_path / "relay.sock") as address:
        rc = main(["send-secret", "--connect", address, "--file", str(secret),
                   "--suite", "x25519", "--root", str(sim_state / "root.pem"),
                   "--pcr", f"0={MEASUREMENTS[0].hex()}"])  # fmt: skip
    out = capsys.readouterr().out
    assert relay.enclave_answer == "sealed_ack" and sim_server.store.secrets == [SECRET]
    assert rc == code and "DELIVERED" not in out and len(out.splitlines()) == 1
    assert out.startswith("NOT CONFIRMED") and "may hold the secret" in out


def test_refusal_before_anything_was_sent_stays_a_refusal() -> None:
    assert ChannelError("x").sent is False
    assert ChannelError("x", sent=True).sent is True


def test_unconfirmed_has_its_own_exit_code_in_help(capsys: pytest.CaptureFixture[str]) -> None:
    """A wrapper that retries on 2 (a connection error before sending) must never resend on
    NOT CONFIRMED: the help says which code is which, and that the store is memory only."""
    assert main(["send-secret", "--help"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "3 NOT CONFIRMED" in text and "(safe to retry)" in text
    assert "memory only" in text and "Deliver again" in text and "KMS" in text
