"""`nitro-attest service`: the verification service (Veraison challenge-response API, EAR)."""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from nitro_attest._cli import observe
from nitro_attest._cli.common import CliError, parse_listen, read_bytes
from nitro_attest._cli.expectations import load_root
from nitro_attest.errors import PolicyError, TrustRootError

EPILOG = """\
SIGHUP reloads the policies file (a file that fails to load keeps the old policies);
SIGTERM finishes the requests in flight and stops.

Redis credentials never go on the command line (every local user reads it with ps): give the
URL with its password in --sessions-file or in NITRO_ATTEST_REDIS_URL, or a URL without one in
--sessions and the password in REDIS_PASSWORD. A --sessions URL carrying a password is refused.
Precedence: --sessions-file, --sessions, NITRO_ATTEST_REDIS_URL, then memory.

examples:
  nitro-attest service --listen 127.0.0.1:8080 --policies policies.json --root sim/root.pem
  nitro-attest service --listen 0.0.0.0:8080 --policies /etc/nitro/policies.json \\
      --signing-key /etc/nitro/ear-key.pem --sessions redis://redis:6379/0 --workers 4
"""
URL_ENV = "NITRO_ATTEST_REDIS_URL"
PASSWORD_ENV = "REDIS_PASSWORD"
MAX_SESSIONS_FILE = 4096


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
    p.add_argument("--sessions", metavar="memory|redis://HOST:PORT/DB",
                   help="session store (default memory, one worker only, unless "
                   f"{URL_ENV} is set); no password here: see below")
    p.add_argument("--sessions-file", metavar="FILE",
                   help="read the Redis URL (with its credentials) from this file")
    p.add_argument("--workers", metavar="N", type=int, default=1, help="worker processes")
    p.add_argument("--session-ttl", metavar="SECONDS", type=float, default=300.0,
                   help="how long a session waits for its evidence (default %(default)g)")
    p.add_argument("--clock-skew", metavar="SECONDS", type=float, default=60.0,
                   help="how far an enclave's clock may lag the service's: a document made "
                   "before its session began, less this, is contraindicated (default %(default)g)")
    observe.add_flags(p, metrics=False)  # the service's metrics are its own /metrics
    p.set_defaults(func=run)  # fmt: skip


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
    if not 0 <= args.clock_skew <= 3600:
        raise CliError("--clock-skew: between 0 and 3600 seconds")
    url = _sessions_url(args, check_redis_url)
    if url is None and args.workers > 1:
        raise CliError("--sessions memory keeps sessions in one process: with --workers "
                       f"{args.workers} use --sessions redis://HOST:PORT/DB")  # fmt: skip
    password = os.environ.get(PASSWORD_ENV) or None
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
        return MemoryStore() if url is None else RedisStore(url, password=password)

    config = ServiceConfig(Path(args.policies), signer, store, root_pem=root,
                           session_ttl=args.session_ttl, clock_skew=args.clock_skew)  # fmt: skip
    config.log_format = args.log_format
    return serve(config, host, port, args.workers)


def _sessions_url(args: argparse.Namespace, check: Callable[[str], str]) -> str | None:
    """The Redis URL from the file, the flag or the environment; None for memory. A password
    is accepted from the file or the environment only, never from the command line."""
    if args.sessions_file:
        if args.sessions:
            raise CliError("give --sessions or --sessions-file, not both")
        raw = read_bytes(args.sessions_file, limit=MAX_SESSIONS_FILE, what="sessions file")
        text = raw.decode("utf-8", "replace").strip()
        source = f"--sessions-file {args.sessions_file}"
    elif args.sessions:
        if args.sessions == "memory":
            return None
        if urlsplit(args.sessions).password is not None:
            raise CliError("--sessions: a password on the command line is visible to every "
                           f"local user; put the URL in --sessions-file or {URL_ENV}, or the "
                           f"password in {PASSWORD_ENV}")  # fmt: skip
        text, source = args.sessions, "--sessions"
    elif os.environ.get(URL_ENV):
        text, source = os.environ[URL_ENV].strip(), URL_ENV
    else:
        return None
    try:
        url = check(text)
    except ValueError as exc:
        if source == "--sessions":
            raise CliError(f"{source}: {exc}") from None
        # A file or variable may hold anything secret (the wrong file, a key): not echoed.
        raise CliError(f"{source}: not a redis://[USER:PASSWORD@]HOST:PORT/DB URL "
                       "(its content is not shown)") from None  # fmt: skip
    if args.sessions_file:
        with contextlib.suppress(OSError):
            if os.stat(args.sessions_file).st_mode & 0o077:
                print(f"nitro-attest: warning: --sessions-file {args.sessions_file} is readable "
                      "by other users; chmod 600 it", file=sys.stderr)  # fmt: skip
    return url
