"""`nitro-attest kms emulator`: a local AWS KMS that checks SigV4, key policies and attestation."""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path
from typing import Any

from nitro_attest._cli.common import CliError, parse_listen, read_bytes
from nitro_attest._cli.observe import add_flags

EPILOG = """\
The real AWS SDKs work against it unchanged (boto3 endpoint_url=..., aws --endpoint-url ...).
Every request must be SigV4-signed by a credential of --credentials, a JSON list of
  [{"AccessKeyId": "AKIA...", "SecretAccessKey": "...",
    "Arn": "arn:aws:iam::111122223333:role/parent"},
   {"AccessKeyId": "ASIA...", "SecretAccessKey": "...", "Arn": "...", "SessionToken": "..."}]
whose Arn is the principal key policies are evaluated for. A Recipient attestation document must
chain to a --root (default the AWS Nitro root; pass the simulator's STATE/root.pem to test with
the software NSM). Ciphertext blobs are the emulator's own format, not AWS's (docs/kms.md).

examples:
  nitro-attest kms emulator --listen 127.0.0.1:4566 --state ./kms-state \\
      --credentials creds.json --root sim/root.pem --tls-cert cert.pem --tls-key key.pem
  aws kms create-key --endpoint-url https://127.0.0.1:4566 --ca-bundle ca.pem
"""

MAX_CREDENTIALS_BYTES = 1024 * 1024
MAX_PEM_BYTES = 64 * 1024
_REGION = re.compile(r"^[a-z]{2}(-[a-z]+)+-\d{1,2}$")


def add_operations(kms_sub: Any) -> None:
    """Add this group's operations to ``nitro-attest kms``."""
    p: argparse.ArgumentParser = kms_sub.add_parser(
        "emulator",
        help="run a local AWS KMS (JSON API, SigV4, key policies, Recipient attestation)",
        description="A local AWS KMS for tests and demos: KMS's JSON 1.1 API with SigV4 "
        "authentication, key policies with kms:RecipientAttestation conditions, and the "
        "Recipient flow (CiphertextForRecipient shaped like real KMS output).",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--listen",
        metavar="HOST:PORT",
        default="127.0.0.1:4566",
        help="address to listen on (default %(default)s)",
    )
    p.add_argument(
        "--state",
        metavar="DIR",
        required=True,
        help="folder for keys, policies and aliases (created 0700; one emulator each)",
    )
    p.add_argument(
        "--credentials",
        metavar="FILE",
        required=True,
        help="JSON list of {AccessKeyId, SecretAccessKey, Arn[, SessionToken]}",
    )
    p.add_argument(
        "--root",
        metavar="PEM",
        action="append",
        default=[],
        help="a root Recipient documents may chain to (repeatable; default the AWS Nitro root G1)",
    )
    p.add_argument(
        "--region",
        default="us-east-1",
        help="the region requests must be signed for and key ARNs name (default %(default)s)",
    )
    p.add_argument("--tls-cert", metavar="PEM", help="serve HTTPS with this certificate chain")
    p.add_argument("--tls-key", metavar="PEM", help="the private key of --tls-cert")
    _add_limit_flags(p)
    add_flags(p, metrics=False)
    p.set_defaults(func=run)


# The Limits fields the emulator's flags set (_cli/limit_flags.py names their flags).
_LIMIT_FIELDS = ("max_connections", "header_timeout", "idle_timeout", "max_header_bytes",
                 "max_header_lines", "drain_timeout")


def _add_limit_flags(p: argparse.ArgumentParser) -> None:
    from nitro_attest.server_limits import EMULATOR_LIMITS as L

    p.add_argument("--max-connections", type=int, default=L.max_connections, metavar="N",
                   help="open at once; a newcomer closes the least recently active "
                   f"(default {L.max_connections})")
    p.add_argument("--header-timeout", type=float, default=L.header_timeout, metavar="S",
                   help="TLS handshake, and each request (head and body) once begun "
                   f"(default {L.header_timeout:g})")
    p.add_argument("--idle-timeout", type=float, default=L.idle_timeout, metavar="S",
                   help=f"between requests on a kept-alive connection (default {L.idle_timeout:g})")
    p.add_argument("--max-header-bytes", type=int, default=L.max_header_bytes, metavar="N",
                   help=f"request head size (default {L.max_header_bytes})")
    p.add_argument("--max-header-lines", type=int, default=L.max_header_lines, metavar="N",
                   help=f"request header lines (default {L.max_header_lines})")
    p.add_argument("--drain-timeout", type=float, default=L.drain_timeout, metavar="S",
                   help="after SIGTERM, answers may be written this long "
                   f"(default {L.drain_timeout:g})")


def run(args: argparse.Namespace) -> int:
    from nitro_attest._cli.limit_flags import limits_from_args
    from nitro_attest.errors import ConfigurationError, TrustRootError
    from nitro_attest.kms_emulator.auth import CredentialsError, load_credentials
    from nitro_attest.kms_emulator.recipient import RecipientVerifier
    from nitro_attest.kms_emulator.runner import EmulatorSettings, serve
    from nitro_attest.server_limits import EMULATOR_LIMITS

    limits = limits_from_args(args, EMULATOR_LIMITS, _LIMIT_FIELDS)
    host, port = parse_listen(args.listen)
    if not _REGION.match(args.region):
        raise CliError(f"--region {args.region!r}: not a region name (e.g. us-east-1)")
    if (args.tls_cert is None) != (args.tls_key is None):
        raise CliError("--tls-cert and --tls-key go together")
    for flag, path in (("--tls-cert", args.tls_cert), ("--tls-key", args.tls_key)):
        if path is not None:
            read_bytes(path, limit=MAX_PEM_BYTES, what=flag[2:])
    text = read_bytes(args.credentials, limit=MAX_CREDENTIALS_BYTES, what="credentials")
    try:
        principals = load_credentials(text.decode("utf-8", "replace"))
    except CredentialsError as exc:
        raise CliError(f"--credentials {args.credentials}: {exc}") from None
    roots: tuple[bytes | None, ...] = tuple(
        read_bytes(path, limit=MAX_PEM_BYTES, what="root certificate") for path in args.root
    ) or (None,)
    try:
        RecipientVerifier(roots)
    except TrustRootError as exc:
        raise CliError(f"--root: {exc}") from None
    if args.tls_cert is None:
        print(
            "nitro-attest: warning: no --tls-cert: serving plain HTTP; requests and answers "
            "(plaintexts included) cross the network unencrypted; use it on loopback only",
            file=sys.stderr,
        )
    settings = EmulatorSettings(
        host=host,
        port=port,
        state_dir=Path(args.state),
        principals=principals,
        roots=roots,
        region=args.region,
        tls_cert=Path(args.tls_cert) if args.tls_cert else None,
        tls_key=Path(args.tls_key) if args.tls_key else None,
        log_format=args.log_format,
        limits=limits,
    )
    try:
        return serve(settings)
    except ConfigurationError as exc:
        raise CliError(str(exc)) from None
