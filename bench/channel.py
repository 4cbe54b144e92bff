"""Attested-channel costs per suite, in one run: key generation, seal, open, whole delivery.

- keygen:   one key pair (done once per server start)
- seal/open: HPKE single shot of a 4 KiB secret with the channel's info
- delivery: channel_attest + verify + seal + sealed_message, in-process over the software NSM
            (no socket), compared with one bare verify of a simulated document
- signed:   the same delivery signed by a pinned sender key (Ed25519, P-256), as a ratio of the
            unsigned delivery measured in the same run

Usage: python bench/channel.py [--rounds N]
"""

from __future__ import annotations

import _bootstrap  # noqa: F401  # first: runnable as python3 bench/NAME.py from a clone

# isort: split

import argparse
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from nitro_attest.attestation.verifier import Verifier
from nitro_attest.channel.keys import KeyPair, SuiteId, resolve_public_key
from nitro_attest.channel.messages import ChannelAttestRequest, SealedMessageRequest
from nitro_attest.channel.receiver import (
    ChannelReceiver,
    handle_channel_attest,
    handle_sealed_message,
)
from nitro_attest.channel.seal import channel_info, document_digest, open_sealed, seal
from nitro_attest.channel.sender import deliver_secret
from nitro_attest.channel.signing import SenderPrivateKey
from nitro_attest.nsm.simulator.nsm import SimulatedNsm, package_measurements
from nitro_attest.nsm.simulator.state import SimulatorConfig, init_state
from nitro_attest.wire.protocol import Request, Response
from nitro_attest.wire.routes import settle_caller_key_pcr


def timed(fn: Callable[[], Any], rounds: int) -> float:
    samples = []
    for _ in range(rounds):
        t = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - t)
    return min(samples) * 1000  # best of the rounds: the machine is shared and noisy


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=50)
    rounds = ap.parse_args().rounds
    secret = os.urandom(4096)
    nonce, doc = os.urandom(32), document_digest(os.urandom(4500))
    with tempfile.TemporaryDirectory() as tmp:
        config = SimulatorConfig(instance_id="i-0123456789abcdef0")
        nsm = SimulatedNsm(init_state(Path(tmp) / "state", config))
        settle_caller_key_pcr(nsm, allow=False)  # as serve does: PCR16 locked untouched
        verifier = Verifier(root_pem=nsm.root_pem)
        pcr0 = package_measurements()[0]
        bare = nsm.attestation(nonce=nonce)
        verifier.verify(bare)
        verify_ms = timed(lambda: verifier.verify(bare), rounds)
        print(f"{'verify (warm, simulated doc)':38} {verify_ms:8.3f} ms")
        signers: dict[str, SenderPrivateKey] = {
            "ed25519": ed25519.Ed25519PrivateKey.generate(),
            "p256": ec.generate_private_key(ec.SECP256R1()),
        }
        # Discarding handler: the default store's per-sender quota would refuse after 16 secrets.
        receiver = ChannelReceiver(
            handler=lambda plaintext, delivery: None,
            senders=[k.public_key() for k in signers.values()],
        )
        open_receiver = ChannelReceiver(handler=lambda plaintext, delivery: None)

        def exchange_with(r: ChannelReceiver) -> Callable[[Request], Response]:
            def exchange(request: Request) -> Response:
                if isinstance(request, ChannelAttestRequest):
                    return handle_channel_attest(r, nsm, request)
                assert isinstance(request, SealedMessageRequest)
                return handle_sealed_message(r, request)

            return exchange

        for suite in SuiteId:
            keys = KeyPair.generate(suite)
            pub = resolve_public_key(keys.advertised, keys.public_bytes)
            info = channel_info(keys.advertised, nonce, doc)
            sealed = seal(suite, pub, secret, info)
            gen_ms = timed(lambda s=suite: KeyPair.generate(s), rounds)
            seal_ms = timed(lambda s=suite, p=pub, i=info: seal(s, p, secret, i), rounds)
            open_ms = timed(lambda k=keys, c=sealed, i=info: open_sealed(k, c, i), rounds)

            def deliver(s: SuiteId = suite, key: SenderPrivateKey | None = None) -> None:
                target = open_receiver if key is None else receiver
                deliver_secret(exchange_with(target), secret, verifier=verifier,
                               expected_pcrs={0: pcr0}, suite=s, signing_key=key)

            total_ms = timed(deliver, rounds)
            signed_ms = {name: timed(lambda k=key: deliver(key=k), rounds)
                         for name, key in signers.items()}
            print(f"{suite.label + ' keygen':38} {gen_ms:8.3f} ms")
            print(f"{suite.label + ' seal 4 KiB':38} {seal_ms:8.3f} ms")
            print(f"{suite.label + ' open 4 KiB':38} {open_ms:8.3f} ms")
            print(f"{suite.label + ' delivery (in-process)':38} {total_ms:8.3f} ms"
                  f"  ({total_ms / verify_ms:.1f}x one verify)")
            for name, ms in signed_ms.items():
                print(f"{suite.label + ' delivery signed ' + name:38} {ms:8.3f} ms"
                      f"  ({ms / total_ms:.2f}x unsigned)")


if __name__ == "__main__":
    main()
