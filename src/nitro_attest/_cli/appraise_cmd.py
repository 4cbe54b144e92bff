"""`nitro-attest appraise`: the relying party's challenge-response against a verification service.

Nonce from the service, document from the enclave (the nonce passed through), EAR back and
verified with the service's pinned key (--ear-key or --ear-jwks; --trust-advertised-key takes the
key the service publishes, with a warning). Exit 0 only on ``affirming``.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from nitro_attest._cli.common import EXIT_OK, EXIT_REJECTED, CliError, print_error, read_bytes
from nitro_attest.attestation.untrusted_text import escape_untrusted
from nitro_attest.codec import strict_json

EPILOG = """\
Pin the service's EAR key: whoever answers for the service (a DNS, a proxy, the parent on the
path) could otherwise advertise a key of its own and affirm anything. Without --ear-key or
--ear-jwks, appraise refuses to run unless --trust-advertised-key says to take the key the
service publishes (for a first look or tests, never for production). Plain http:// is refused
to anything but loopback without --insecure-http; a redirect to another origin is never followed.

exit status: 0 affirming; 1 any other status (contraindicated, warning, none); 2 usage error,
service or enclave unreachable, or an EAR that does not verify (another key, another session).

example:
  nitro-attest appraise --service https://verifier.example:8443 --ear-key ear-key.pub.pem \\
      --connect vsock://16:5005
"""
MAX_KEY_FILE = 64 * 1024


def register(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser(
        "appraise",
        help="attest an enclave through a verification service and check the signed EAR",
        description="Run Veraison's challenge-response with a nitro-attest verification service: "
        "get a nonce from the service, the enclave's document for that nonce, and the EAR.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--service", metavar="URL", required=True, help="http(s)://HOST:PORT")
    p.add_argument("--connect", metavar="ADDR", required=True,
                   help="the enclave server: vsock://CID:PORT, tcp://HOST:PORT or unix://PATH")
    p.add_argument("--policy", metavar="NAME", help="appraisal policy (default: the service's)")
    p.add_argument("--nonce-size", metavar="N", type=int, default=32, help="8..64 bytes")
    p.add_argument("--timeout", metavar="SECONDS", type=float, default=10.0)
    p.add_argument("--json", action="store_true", help="print the EAR's claims as JSON")
    p.add_argument("--ear-key", metavar="PEM",
                   help="the service's EAR public key (EC P-256/P-384, PEM; or its certificate)")
    p.add_argument("--ear-jwks", metavar="FILE",
                   help="the service's EAR keys as a JWK set ({\"keys\": [...]}); any of them")
    p.add_argument("--trust-advertised-key", action="store_true",
                   help="take the key the service advertises (no pin: not for production)")
    p.add_argument("--insecure-http", action="store_true",
                   help="allow plain http:// to a host other than loopback")
    p.set_defaults(func=run, json_failure={})  # fmt: skip


def run(args: argparse.Namespace) -> int:
    try:
        from nitro_attest.relying_party.client import request_appraisal
        from nitro_attest.relying_party.errors import ServiceClientError
    except ImportError as exc:
        raise CliError(f"appraise needs the service extra ({exc.name} is missing): "
                       "pip install 'nitro-attest[service]'") from None  # fmt: skip
    from nitro_attest import TransportError, request_attestation

    if not 8 <= args.nonce_size <= 64:
        raise CliError(f"--nonce-size {args.nonce_size}: must be 8..64")
    if not (args.ear_key or args.ear_jwks or args.trust_advertised_key):
        raise CliError("pin the service's EAR key with --ear-key PEM or --ear-jwks FILE, or take "
                       "whatever key it advertises with --trust-advertised-key")  # fmt: skip
    ear_key = read_bytes(args.ear_key, limit=MAX_KEY_FILE, what="EAR key") if args.ear_key else None
    ear_jwks = None
    if args.ear_jwks:
        raw = read_bytes(args.ear_jwks, limit=MAX_KEY_FILE, what="EAR JWKS")
        try:  # strictly: a duplicate "keys" must not silently pick which keys are pinned
            ear_jwks = strict_json.loads(raw)
        except strict_json.JsonFormatError as exc:
            raise CliError(f"--ear-jwks {args.ear_jwks}: {exc.message}") from None
    if ear_key is None and ear_jwks is None:
        print("nitro-attest: warning: --trust-advertised-key: the EAR is checked with whatever "
              "key the service advertises; anyone who answers for it can affirm anything",
              file=sys.stderr)  # fmt: skip

    def document(nonce: bytes) -> bytes:
        return request_attestation(args.connect, nonce=nonce, timeout=args.timeout)

    try:
        result = request_appraisal(
            args.service, document, policy=args.policy, nonce_size=args.nonce_size,
            timeout=args.timeout, ear_key=ear_key, ear_jwks=ear_jwks,
            trust_advertised_key=args.trust_advertised_key,
            insecure_http=args.insecure_http)  # fmt: skip
    except (ServiceClientError, TransportError, ValueError) as exc:
        raise CliError(str(exc)) from None
    if args.json:
        print(json.dumps(result.claims, indent=2))
    else:
        failed = result.failed_check
        print(result.status + (f" (failed check: {escape_untrusted(failed)})" if failed else ""))
    if result.status != "affirming":
        why = f" (failed check: {result.failed_check})" if result.failed_check else ""
        print_error(f"{args.service}: the EAR says {result.status}{why}")
    return EXIT_OK if result.status == "affirming" else EXIT_REJECTED
