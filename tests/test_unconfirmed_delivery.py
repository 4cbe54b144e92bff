"""After the sealed message leaves the client, only the keyed acknowledgement is authenticated.

Threat model (docs/threat-model.md): the parent relays every byte, so it can let the sealed
message reach the enclave, which stores the secret, and then hand the client a wrong
acknowledgement, a forged `channel_refused` or a closed connection. `send-secret` must then not
claim the enclave refused (a user would believe nothing was delivered and resend, filling the
sender's quota): it says the delivery is unconfirmed and the enclave may hold the secret, and it
never prints DELIVERED.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from nitro_attest._cli import main
from nitro_attest.errors import ChannelError
from nitro_attest.nsm.simulator.state import SimulatorConfig, init_state
from tests.channel_helpers import Enclave, serving
from tests.relay import Frame, Relay, Upstream, relaying

MEAS = {0: b"\x30" * 48, 1: b"\x31" * 48, 2: b"\x32" * 48}
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


@pytest.fixture(scope="module")
def state(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("unconfirmed") / "state"
    init_state(path, SimulatorConfig(instance_id="i-0c0c0c0c0c0c0c0c0", measurements=MEAS))
    return path


@pytest.fixture()
def enclave(state: Path, tmp_path: Path) -> Iterator[Enclave]:
    with serving(state, f"unix://{tmp_path}/e.sock") as served:
        yield served


@pytest.mark.parametrize(("lie", "code"), [("ack", 1), ("refusal", 1), ("garbled", 2)])
def test_forged_answer_after_delivery_is_reported_unconfirmed(
    enclave: Enclave, state: Path, lie: str, code: int, tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    secret = tmp_path / "secret"
    secret.write_bytes(SECRET)
    relay = LyingRelay(enclave.address, lie)
    with relaying(relay, tmp_path / "relay.sock") as address:
        rc = main(["send-secret", "--connect", address, "--file", str(secret),
                   "--suite", "x25519", "--root", str(state / "root.pem"),
                   "--pcr", f"0={MEAS[0].hex()}"])  # fmt: skip
    out = capsys.readouterr().out
    assert relay.enclave_answer == "sealed_ack" and enclave.store.secrets == [SECRET]
    assert rc == code and "DELIVERED" not in out and len(out.splitlines()) == 1
    assert out.startswith("NOT CONFIRMED") and "may hold the secret" in out


def test_refusal_before_anything_was_sent_stays_a_refusal() -> None:
    assert ChannelError("x").sent is False
    assert ChannelError("x", sent=True).sent is True
