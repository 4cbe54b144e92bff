"""`nitro-attest appraise`: the relying party's challenge-response against a verification service.

Nonce from the service, document from the enclave (the nonce passed through), EAR back and
verified with the key the service publishes. Exit 0 only on ``affirming``.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from nitro_attest._cli.common import EXIT_OK, EXIT_REJECTED, CliError, print_error
from nitro_attest.attestation.untrusted_text import escape_untrusted

EPILOG = """\
exit status: 0 affirming; 1 any other status (contraindicated, warning, none); 2 usage error,
service or enclave unreachable, or an EAR that does not verify.

example:
  nitro-attest appraise --service http://127.0.0.1:8080 --connect vsock://16:5005
"""


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
    p.set_defaults(func=run, json_failure={})  # fmt: skip


def run(args: argparse.Namespace) -> int:
    try:
        from nitro_attest.service.relying_party import ServiceClientError, appraise
    except ImportError as exc:
        raise CliError(f"appraise needs the service extra ({exc.name} is missing): "
                       "pip install 'nitro-attest[service]'") from None  # fmt: skip
    from nitro_attest import TransportError, request_attestation

    if not 8 <= args.nonce_size <= 64:
        raise CliError(f"--nonce-size {args.nonce_size}: must be 8..64")

    def document(nonce: bytes) -> bytes:
        return request_attestation(args.connect, nonce=nonce, timeout=args.timeout)

    try:
        result = appraise(args.service, document, policy=args.policy,
                          nonce_size=args.nonce_size, timeout=args.timeout)  # fmt: skip
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
