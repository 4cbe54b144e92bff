"""`nitro-attest service`: the verification service (Veraison challenge-response API, EAR)."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any

from nitro_attest._cli.common import CliError, read_bytes
from nitro_attest._cli.expectations import load_root
from nitro_attest.errors import PolicyError, TrustRootError

EPILOG = """\
SIGHUP reloads the policies file (a file that fails to load keeps the old policies);
SIGTERM finishes the requests in flight and stops.

examples:
  nitro-attest service --listen 127.0.0.1:8080 --policies policies.json --root sim/root.pem
  nitro-attest service --listen 0.0.0.0:8080 --policies /etc/nitro/policies.json \\
      --signing-key /etc/nitro/ear-key.pem --sessions redis://redis:6379/0 --workers 4
"""


def register(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser(
        "service",
        help="run the verification service (Veraison challenge-response API, signed EAR results)",
        description="Serve Veraison's challenge-response and discovery APIs for AWS Nitro "
        "attestation documents; each result is an EAR (draft-ietf-rats-ear) signed JWT.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--listen", metavar="HOST:PORT", default="127.0.0.1:8080",
                   help="address to listen on (HOST defaults to 127.0.0.1; default %(default)s)")
    p.add_argument("--policies", metavar="FILE", required=True, help="the policies file (JSON)")
    p.add_argument("--root", metavar="PEM",
                   help="trust this root instead of the embedded AWS Nitro root G1")
    p.add_argument("--signing-key", metavar="PEM",
                   help="EC P-256 (ES256) or P-384 (ES384) private key that signs the EARs")
    p.add_argument("--sessions", metavar="memory|redis://HOST:PORT/DB", default="memory",
                   help="session store (default memory: one worker only)")
    p.add_argument("--workers", metavar="N", type=int, default=1, help="worker processes")
    p.add_argument("--session-ttl", metavar="SECONDS", type=float, default=300.0,
                   help="how long a session waits for its evidence (default %(default)g)")
    p.set_defaults(func=run)  # fmt: skip


def parse_listen(value: str) -> tuple[str, int]:
    host, sep, port_text = value.rpartition(":")
    if not sep:
        host, port_text = "", value
    host = host.strip("[]") or "127.0.0.1"
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise CliError(f"--listen {value!r}: expected HOST:PORT with a port in 1..65535")
    return host, int(port_text)


def run(args: argparse.Namespace) -> int:
    try:
        from nitro_attest.service.app import ServiceConfig
        from nitro_attest.service.ear import EarSigner, SigningKeyError
        from nitro_attest.service.policies import load_policies
        from nitro_attest.service.redis_store import RedisStore, check_redis_url
        from nitro_attest.service.runner import serve
        from nitro_attest.service.sessions import MemoryStore, SessionStore
    except ImportError as exc:
        raise CliError(f"the service needs its extra packages ({exc.name} is missing): "
                       "pip install 'nitro-attest[service]'") from None  # fmt: skip
    host, port = parse_listen(args.listen)
    if args.workers < 1:
        raise CliError(f"--workers {args.workers}: must be at least 1")
    if not 0 < args.session_ttl <= 86400:
        raise CliError("--session-ttl: between 0 and 86400 seconds")
    if args.sessions == "memory":
        if args.workers > 1:
            raise CliError("--sessions memory keeps sessions in one process: with --workers "
                           f"{args.workers} use --sessions redis://HOST:PORT/DB")  # fmt: skip
        url = None
    else:
        try:
            url = check_redis_url(args.sessions)
        except ValueError as exc:
            raise CliError(f"--sessions: {exc}") from None
    try:
        load_policies(args.policies)
    except PolicyError as exc:
        raise CliError(f"--policies: {exc}") from None
    root = load_root(args.root)
    try:
        from nitro_attest import Verifier

        Verifier(root_pem=root)
    except TrustRootError as exc:
        raise CliError(f"--root {args.root}: {exc}") from None
    if args.signing_key:
        pem = read_bytes(args.signing_key, limit=64 * 1024, what="signing key")
        try:
            signer = EarSigner.from_pem(pem, args.signing_key)
        except SigningKeyError as exc:
            raise CliError(f"--signing-key {exc}") from None
    else:
        signer = EarSigner.generate()  # before forking: every worker signs with this one key
        print("nitro-attest: warning: no --signing-key: EARs are signed with a key generated in "
              "memory; they will not verify after a restart or across replicas", file=sys.stderr)

    def store() -> SessionStore:
        return MemoryStore() if url is None else RedisStore(url)

    config = ServiceConfig(Path(args.policies), signer, store, root_pem=root,
                           session_ttl=args.session_ttl)  # fmt: skip
    _log_to_stderr()
    return serve(config, host, port, args.workers)


def _log_to_stderr() -> None:
    """The service's own lines (reloads, workers) at INFO on stderr, beside uvicorn's: without a
    handler only warnings reached the terminal, so a successful reload said nothing."""
    logger = logging.getLogger("nitro_attest.service")
    if not any(getattr(h, "_nitro_attest", False) for h in logger.handlers):
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(levelname)s:     %(message)s"))
        handler._nitro_attest = True  # type: ignore[attr-defined]  # ours: added once per process
        logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
