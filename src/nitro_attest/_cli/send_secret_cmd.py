"""`nitro-attest send-secret`: deliver a file's bytes to an enclave only if it attests correctly."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
from collections.abc import Callable
from typing import Any

from nitro_attest._cli.common import (
    EXIT_OK,
    EXIT_REJECTED,
    EXIT_UNCONFIRMED,
    CliError,
    error_json,
    print_error,
    read_bytes,
)
from nitro_attest._cli.expectations import add_pcr_flags, add_trust_flags, load_root, pcr_sets
from nitro_attest.attestation.policy import Policy, document_kind
from nitro_attest.attestation.untrusted_text import escape_untrusted
from nitro_attest.channel import sender as channel_client
from nitro_attest.channel.keys import SUITE_LABELS
from nitro_attest.channel.seal import MAX_SECRET_BYTES
from nitro_attest.channel.signing import MAX_KEY_FILE_BYTES, SenderKeyError, load_private_key
from nitro_attest.errors import ChannelError, PolicyError, TrustRootError, VerificationError

EPILOG = f"""\
The enclave answers with a fresh attestation document whose public_key names its HPKE key
(made at its start, kept in memory). The secret is sealed to that key only after the document
verifies: chain to the root, every PCR expectation, the nonce, the debug rule. Nothing is sent
when any check fails. At most {MAX_SECRET_BYTES} bytes.

exit status: 0 delivered and acknowledged; 1 refused (the enclave did not verify, or refused
before anything was sent: nothing sent); 2 usage, I/O or connection error before anything was
sent (safe to retry); 3 NOT CONFIRMED: the sealed message was sent, then the answer was a
refusal, a wrong acknowledgement, a broken answer or none, or an interrupt while waiting (only
a matching acknowledgement is authenticated, so the enclave may hold the secret: check before
sending it again). Once the message has left, a stdout that is gone never changes 0 or 3.

The enclave's default secret store (InMemorySecretStore) lives in its memory only: when the
parent restarts the enclave, every delivered secret is gone and the enclave comes back with new
channel keys. Deliver again after each start (a wrapper that watches the enclave), or have the
enclave fetch what it needs itself from AWS KMS with its attestation (docs/channel.md).

examples:
  nitro-attest send-secret --connect vsock://16:5005 --file model.key \\
      --expected client/expected-measurements.json
  nitro-attest send-secret --connect tcp://127.0.0.1:5005 --file token.txt \\
      --root ~/.local/share/nitro-attest/simulator/root.pem --pcr 0=$PCR0 --suite x25519
"""


def register(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser(
        "send-secret",
        help="deliver a secret to an enclave whose attestation verifies (HPKE)",
        description="Seal a file's bytes with HPKE (RFC 9180) to the key an enclave attests in "
        "its document, and send it. The enclave acknowledges with an HMAC of the secret under a "
        "key sealed with it, so whoever relays the answer learns nothing about the secret.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--connect", metavar="ADDR", required=True,
        help="the enclave server: vsock://CID:PORT, tcp://HOST:PORT or unix://PATH",
    )
    p.add_argument("--file", metavar="F", required=True, help="the secret ('-' for stdin)")
    add_trust_flags(p)
    add_pcr_flags(p)
    p.add_argument(
        "--suite", choices=SUITE_LABELS, default="mlkem768-x25519",
        help="HPKE suite: mlkem768-x25519 (default: post-quantum hybrid ML-KEM-768 + X25519) or "
        "x25519 (DHKEM X25519 alone, only when asked); both HKDF-SHA256 and ChaCha20-Poly1305. "
        "Where this OpenSSL lacks ML-KEM the default refuses, saying so, rather than fall back",
    )
    p.add_argument(
        "--sign-with", metavar="KEY",
        help="sign the message with this Ed25519 or P-256 private key (unencrypted PEM), for an "
        "enclave that pins its public key (serve --sender-key)",
    )
    p.add_argument(
        "--unsafe-any-enclave", action="store_true",
        help="send without any PCR expectation: to ANY enclave the root vouches for",
    )
    p.add_argument(
        "--timeout", metavar="SECONDS", type=float, default=10.0,
        help="give up on the enclave after this long (default 10)",
    )
    p.add_argument(
        "--json", action="store_true",
        help="print the outcome as one JSON object (delivered, sent, enclave, error)",
    )
    p.set_defaults(func=run, json_failure=JSON_FAILURE)


# docs/cli.md: one shape for every outcome. ``sent`` says whether the sealed message left (a
# failure after it may leave the secret with the enclave: NOT CONFIRMED).
JSON_FAILURE: dict[str, Any] = {
    "delivered": False, "sent": False, "size": None, "suite": None, "kind": None,
    "module_id": None, "pcr0": None, "signer": None, "sha256": None,
}  # fmt: skip


def _outcome(args: argparse.Namespace, text: str, *, sent: bool, error: dict[str, Any]) -> None:
    """A failure: its text line (or JSON object) on stdout, the contract's line on stderr."""

    def write() -> None:
        if args.json:
            print(json.dumps({**JSON_FAILURE, "sent": sent, "error": error}, indent=2))
        else:
            print(escape_untrusted(text))
        print_error(error["message"])

    if sent:
        _say(write)
    else:
        write()


def _say(write: Callable[[], None]) -> None:
    """Output once the sealed message has left: the exit code (0 or 3) is the answer that
    matters, and must survive a stdout that is gone (a closed pipe read as "usage error, 2"
    would tell a wrapper nothing was sent; a failed flush at exit would make it 120)."""
    try:
        write()
        sys.stdout.flush()
    except OSError:
        with contextlib.suppress(OSError, ValueError):  # later writes and the exit flush: nowhere
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
            os.close(devnull)


def _not_confirmed(args: argparse.Namespace, why: str) -> int:
    text = (
        "NOT CONFIRMED (the sealed message was sent; the enclave may hold the secret, "
        f"as any answer but its acknowledgement may be forged in transit): {why}"
    )
    message = f"{args.connect}: not confirmed (sent): {why}"
    _outcome(args, text, sent=True, error=error_json(message, "acknowledgement"))
    return EXIT_UNCONFIRMED


def run(args: argparse.Namespace) -> int:
    sets = pcr_sets(args)
    if not sets and not args.unsafe_any_enclave:
        raise CliError(
            "no PCR expectation: give --expected FILE or --pcr N=HEX (or --unsafe-any-enclave "
            "to send to any enclave the root vouches for)"
        )
    if not args.timeout > 0:
        raise CliError(f"--timeout must be > 0, got {args.timeout}")
    secret = read_bytes(args.file, limit=MAX_SECRET_BYTES, what="secret")
    if not secret:
        raise CliError(f"{args.file}: empty secret")
    root = load_root(args.root)
    signing_key = None
    if args.sign_with:
        raw = read_bytes(args.sign_with, limit=MAX_KEY_FILE_BYTES, what="signing key")
        try:
            signing_key = load_private_key(raw)
        except SenderKeyError as exc:
            raise CliError(f"--sign-with {args.sign_with}: {exc}") from None
    sent = False

    def sending() -> None:
        nonlocal sent
        sent = True

    try:
        policy = Policy(pcr_sets=tuple(sets), allow_debug=args.allow_debug,
                        kind=document_kind(args.kind))  # fmt: skip
        receipt = channel_client.send_secret(
            args.connect,
            secret,
            root_pem=root,
            suite=args.suite,
            timeout=args.timeout,
            unsafe_any_enclave=args.unsafe_any_enclave,
            signing_key=signing_key,
            policy=policy,
            on_send=sending,
        )
    except (TrustRootError, PolicyError) as exc:
        raise CliError(str(exc)) from None
    except VerificationError as exc:
        text = f"REFUSED (nothing sent): {exc.check}: {exc.message}"
        message = f"{args.connect}: refused, nothing sent: {exc.check}: {exc.message}"
        _outcome(args, text, sent=False, error=error_json(message, exc.check))
        return EXIT_REJECTED
    except ChannelError as exc:
        if exc.sent:  # only a matching acknowledgement is authenticated (docs/threat-model.md)
            return _not_confirmed(args, exc.message)
        if exc.reason == "transport":
            raise CliError(f"{args.connect}: {exc.message}") from None
        message = f"{args.connect}: refused: {exc.message}"
        _outcome(args, f"REFUSED: {exc.message}", sent=False, error=error_json(message, "channel"))
        return EXIT_REJECTED
    except BaseException as exc:
        if not sent:
            raise
        # An interrupt (or a bug) once the sealed message had left: not "nothing was sent".
        interrupted = isinstance(exc, KeyboardInterrupt)
        return _not_confirmed(args, "interrupted" if interrupted else f"internal error: {exc!r}")
    # Delivered: nothing after it may fail it, a stdout that is gone included.
    if args.json:
        _say(lambda: print(json.dumps(delivered_json(receipt), indent=2)))
    else:
        _say(lambda: print(escape_untrusted(delivered_line(receipt))))
    return EXIT_OK


def delivered_json(receipt: channel_client.Receipt) -> dict[str, Any]:
    doc = receipt.verified.document
    pcr0 = doc.pcrs.get(0)
    return {
        "delivered": True, "sent": True, "size": receipt.size, "suite": receipt.suite.label,
        "kind": doc.kind.value, "module_id": doc.module_id,
        "pcr0": pcr0.hex() if pcr0 is not None else None,
        "signer": receipt.signer.hex() if receipt.signer else None,
        "sha256": receipt.sha256.hex(), "error": None,
    }  # fmt: skip


def delivered_line(receipt: channel_client.Receipt) -> str:
    """The success line; reads only what every document kind has (a NitroTPM one has no PCR0)."""
    doc = receipt.verified.document
    pcr0 = doc.pcrs.get(0)
    measured = f"PCR0 {pcr0.hex()[:16]}..." if pcr0 is not None else f"{len(doc.pcrs)} PCRs"
    signed = f"signed by {receipt.signer.hex()[:16]}" if receipt.signer else "unsigned"
    return (
        f"DELIVERED {receipt.size} bytes to {doc.kind.value} {doc.module_id} "
        f"(suite {receipt.suite.label}, {measured}); acknowledged; {signed}"
    )
