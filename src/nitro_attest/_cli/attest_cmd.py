"""`nitro-attest attest`: ask an enclave for a document, save it, verify it, show the checks."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from nitro_attest._cli import expectations
from nitro_attest._cli.common import (
    EXIT_OK,
    EXIT_REJECTED,
    CliError,
    parse_hex,
    print_error,
    read_bytes,
)
from nitro_attest.attestation.report import document_to_json, render_text
from nitro_attest.attestation.untrusted_text import escape_untrusted
from nitro_attest.limits import NSM_FIELD_BYTES
from nitro_attest.wire.client import (
    DOCUMENT_JSON_FILE,
    ClientError,
    EnclaveError,
    request_attestation,
    save_attestation,
)
from nitro_attest.wire.protocol import CHANNEL_KEY_PREFIX, PublicKeyRefusedError
from nitro_attest.wire.transport import AddressError, parse_address

DEFAULT_USER_DATA = b"nitro-attest client"

_EPILOG = """\
examples:
  nitro-attest attest --connect vsock://16:5005 --expected client/expected-measurements.json \\
      --root client/root.pem
  nitro-attest attest --connect unix://.demo/enclave.sock --root .demo/sim/root.pem --pcr 0=HEX

The enclave CID is shown by `nitro-cli describe-enclaves`. A fresh random 32-byte nonce is sent
unless --nonce is given; the document must echo it (and the user data) to verify.
Files written: OUT_DIR/attestation-document.dat (base64 CBOR) and
OUT_DIR/attestation-document-json.json (decoded fields; "authenticated": false when the
signature or the chain failed, so nothing in it is verified).
exit status: 0 verified, 1 received but rejected, 2 usage, I/O or connection error.
"""


def register(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser(
        "attest",
        help="request an attestation document from an enclave and verify it",
        description="Connect to an enclave server, request an attestation document over a fresh "
        "nonce and your user data, save it as the tutorial does, and verify it: COSE signature, "
        "certificate chain, PCR values, user data, nonce.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--connect",
        required=True,
        metavar="ADDR",
        help="enclave address: vsock://CID:PORT, tcp://HOST:PORT or unix:///path",
    )
    p.add_argument(
        "--nonce", default="random", metavar="HEX|random", help="nonce to send (default: random)"
    )
    p.add_argument(
        "--user-data",
        metavar="HEX|@FILE|none",
        help=f"user data to send (default: the text {DEFAULT_USER_DATA.decode()!r})",
    )
    p.add_argument(
        "--public-key",
        metavar="HEX",
        help="public key to have the enclave embed; served only by an enclave started with "
        "serve --allow-caller-public-key",
    )
    expectations.add_pcr_flags(p)
    expectations.add_trust_flags(p)
    p.add_argument("--out-dir", default="client", metavar="DIR", help="where to save the document")
    p.add_argument("--timeout", type=float, default=10.0, metavar="SECONDS")
    p.add_argument("--json", action="store_true", help="print the report as one JSON object")
    p.set_defaults(func=run, json_failure=JSON_FAILURE)


def _nonce(value: str) -> bytes:
    if value == "random":
        return os.urandom(32)
    return parse_hex(value, "--nonce", max_bytes=NSM_FIELD_BYTES)


def _user_data(value: str | None) -> bytes | None:
    if value is None:
        return DEFAULT_USER_DATA
    if value == "none":
        return None
    if value.startswith("@"):
        data = read_bytes(value[1:], limit=NSM_FIELD_BYTES, what="user data")
        if not data:
            raise CliError(f"{value[1:]}: empty user data file (use --user-data none)")
        return data
    return parse_hex(value, "--user-data", max_bytes=NSM_FIELD_BYTES)


def _refused_key_message(address: object, public_key: bytes | None) -> str:
    # Our own words, not the enclave's: its message is untrusted text relayed by the parent.
    if public_key is not None and public_key.startswith(CHANNEL_KEY_PREFIX):
        return (
            f"{address}: the enclave refuses to attest a channel-shaped public key for a caller "
            "(only its own channel code may; use send-secret)"
        )
    return (
        f"{address}: the enclave refuses caller-chosen public keys; its operator must start "
        "serve with --allow-caller-public-key (anyone reaching the port then gets any key attested)"
    )


# docs/cli.md: a failure before any document (usage, connection) keeps the report's shape.
JSON_FAILURE: dict[str, object] = {
    "verified": False, "checks": [], "document": None, "verified_at": None,
    "address": None, "files": [],
}  # fmt: skip


def run(args: argparse.Namespace) -> int:
    try:
        address = parse_address(args.connect, role="connect")
    except AddressError as exc:
        raise CliError(str(exc)) from None
    if not args.timeout > 0:
        raise CliError("--timeout must be a positive number of seconds")
    nonce = _nonce(args.nonce)
    user_data = _user_data(args.user_data)
    public_key = (
        parse_hex(args.public_key, "--public-key", max_bytes=NSM_FIELD_BYTES)
        if args.public_key
        else None
    )
    policy = expectations.build_policy(
        args, nonce=nonce, user_data=user_data, public_key=public_key
    )
    verifier = expectations.build_verifier(args)

    try:
        document = request_attestation(
            str(address),
            nonce=nonce,
            user_data=user_data,
            public_key=public_key,
            timeout=args.timeout,
        )
    except EnclaveError as exc:
        if exc.code == PublicKeyRefusedError.code:
            raise CliError(_refused_key_message(address, public_key)) from None
        raise CliError(str(exc)) from None
    except ClientError as exc:
        raise CliError(str(exc)) from None

    report = verifier.evaluate(document, policy=policy)

    out_dir = Path(args.out_dir)
    decoded = report.document or report.claimed  # the tutorial saves the decode, verified or not
    try:
        if decoded is not None:
            # Marked, so a later step reading the file cannot take a payload whose signature or
            # chain failed for the enclave's (docs/threat-model.md).
            fields = {**document_to_json(decoded), "authenticated": report.document is not None}
            saved = save_attestation(out_dir, document, fields)
        else:  # unreadable: keep the raw bytes for inspection, drop a stale decoded file
            saved = save_attestation(out_dir, document, {"error": "document could not be decoded"})
            (out_dir / DOCUMENT_JSON_FILE).unlink(missing_ok=True)
            saved = saved[:1]
    except OSError as exc:
        raise CliError(f"{out_dir}: cannot save the document: {exc.strerror or exc}") from None

    if args.json:
        out = report.to_json()
        out["address"] = str(address)
        out["files"] = [str(p) for p in saved]
        print(json.dumps(out, indent=2))
    else:
        print(
            escape_untrusted(
                f"Requested an attestation document from {address} "
                f"(nonce {len(nonce)} bytes, user data {len(user_data or b'')} bytes)"
            )
        )
        for path in saved:
            print(escape_untrusted(f"Saved {path}"))
        if not policy.pcr_sets:
            print(
                "Note: no --expected/--pcr given, so PCR values are not compared", file=sys.stderr
            )
        print(render_text(report))
    if not report.verified:
        error = report.error
        print_error(f"{address}: rejected: {error.check}: {error.message}" if error else
                    f"{address}: rejected")  # fmt: skip
    return EXIT_OK if report.verified else EXIT_REJECTED
