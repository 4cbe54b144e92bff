"""The enclave's nonce ledger: each issued nonce accepts one sealed message, memory bounded.

Threat model (docs/threat-model.md): the parent replays sealed messages and floods the ledger.
"""

from __future__ import annotations

import pytest

from nitro_attest.channel.keys import AdvertisedKey, SuiteId
from nitro_attest.channel.replay import Issued, NonceLedger
from nitro_attest.errors import ChannelError

ISSUED = Issued(AdvertisedKey(SuiteId.X25519, bytes(32)), bytes(48))


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_issue_pending_consume_then_replay() -> None:
    ledger = NonceLedger()
    ledger.issue(b"a" * 16, ISSUED)
    assert ledger.pending(b"a" * 16) is ISSUED
    ledger.consume(b"a" * 16)
    with pytest.raises(ChannelError, match="replay") as info:
        ledger.pending(b"a" * 16)
    assert info.value.reason == "replay"
    with pytest.raises(ChannelError, match="replay"):
        ledger.consume(b"a" * 16)


def test_unknown_nonce() -> None:
    with pytest.raises(ChannelError, match="no channel document") as info:
        NonceLedger().pending(b"x" * 16)
    assert info.value.reason == "unknown_nonce"


def test_reissue_refused_pending_or_used() -> None:
    ledger = NonceLedger()
    ledger.issue(b"a" * 16, ISSUED)
    with pytest.raises(ChannelError, match="already used"):
        ledger.issue(b"a" * 16, ISSUED)
    ledger.consume(b"a" * 16)
    with pytest.raises(ChannelError, match="already used"):
        ledger.issue(b"a" * 16, ISSUED)


def test_expiry() -> None:
    clock = Clock()
    ledger = NonceLedger(ttl=10, clock=clock)
    ledger.issue(b"a" * 16, ISSUED)
    clock.now += 9.9
    ledger.issue(b"b" * 16, ISSUED)
    assert ledger.pending(b"a" * 16) is ISSUED
    clock.now += 0.2
    with pytest.raises(ChannelError, match="unknown or expired"):
        ledger.pending(b"a" * 16)
    assert ledger.pending(b"b" * 16) is ISSUED
    assert len(ledger) == 1
    clock.now += 100
    assert len(ledger) == 0


def test_bounded_drops_oldest() -> None:
    ledger = NonceLedger(max_entries=3)
    nonces = [bytes([i]) * 16 for i in range(10)]
    for n in nonces:
        ledger.issue(n, ISSUED)
        assert len(ledger) <= 3
    assert len(ledger) == 3
    with pytest.raises(ChannelError, match="unknown"):
        ledger.pending(nonces[0])
    assert ledger.pending(nonces[-1]) is ISSUED


def test_bad_configuration() -> None:
    with pytest.raises(ValueError):
        NonceLedger(ttl=0)
    with pytest.raises(ValueError):
        NonceLedger(max_entries=0)
