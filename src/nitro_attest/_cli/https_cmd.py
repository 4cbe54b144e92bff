"""`nitro-attest https serve|get`: attested HTTPS, the enclave's front and its client."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

from nitro_attest._cli import expectations
from nitro_attest._cli.common import EXIT_OK, CliError, read_bytes
from nitro_attest.event_loop import fast_loop_factory

if TYPE_CHECKING:
    from nitro_attest._cli.serve_log import ServerLogHandler

_SERVE_EPILOG = """\
examples:
  inside an enclave:   nitro-attest https serve --listen vsock://any:443 \\
                           --to tcp://127.0.0.1:8080 --name api.example.com
  on the parent:       nitro-attest proxy --listen tcp://0.0.0.0:443 --to vsock://16:443
  anywhere (software NSM):
                       nitro-attest https serve --listen tcp://127.0.0.1:8443 \\
                           --to tcp://127.0.0.1:8080 --nsm simulator --state .sim

A P-256 key is made at start and kept in memory only; its self-signed certificate is trusted
by clients because GET /.well-known/nitro-attestation?nonce=HEX answers with a fresh document
naming its key (docs/https.md). That path is answered here and never reaches the app.
One log line per request on stderr (path without the query). SIGTERM drains.
"""

_GET_EPILOG = """\
examples:
  nitro-attest https get https://api.example.com/status --expected expected-measurements.json
  nitro-attest https get https://127.0.0.1:8443/ --root .sim/root.pem --pcr 0=HEX

The request is sent only after the server's document verified (chain, kind, PCRs, debug rule,
the fresh nonce), names the TLS certificate's key and shows PCR16 pristine (an enclave that
attests caller-chosen keys marks PCR16: such a document could name the parent's key).
exit status: 0 answered (any HTTP status), 1 attestation refused (the check is named),
2 usage, I/O or connection error.
"""


def register(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser(
        "https",
        help="attested HTTPS: TLS ending in the enclave (serve) and a client that checks it (get)",
        description="Attested HTTPS: serve terminates TLS inside the enclave and proxies to an "
        "app; get trusts the server only after a fresh attestation document names its key.",
    )
    ops = p.add_subparsers(dest="operation", metavar="OPERATION")
    ops.required = True
    _add_serve(ops)
    _add_get(ops)


# The Limits fields https serve's flags set (_cli/limit_flags.py names their flags).
_LIMIT_FIELDS = ("max_connections", "header_timeout", "idle_timeout", "max_header_bytes",
                 "drain_timeout")


def _add_serve(ops: Any) -> None:
    from nitro_attest.server_limits import HTTPS_LIMITS as L

    p: argparse.ArgumentParser = ops.add_parser(
        "serve",
        help="terminate TLS in the enclave, answer attestation, proxy HTTP/1.1 to the app",
        description="Terminate TLS with a key made at start, answer the attestation path with "
        "NSM documents naming that key, and proxy every other request to --to.",
        epilog=_SERVE_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--listen", required=True, metavar="ADDR", help="vsock://, tcp:// or unix://")
    p.add_argument("--to", required=True, metavar="APP", help="the app: tcp://HOST:PORT or unix://")
    p.add_argument("--nsm", choices=("auto", "device", "simulator"), default="auto",
                   help="auto: /dev/nsm when present, else refuse (default)")
    p.add_argument("--state", metavar="DIR", help="software NSM state folder (sim init --state)")
    p.add_argument("--name", action="append", default=[], metavar="DNS",
                   help="a name (or IP) for the certificate; repeatable")
    p.add_argument("--tls12", action="store_true", help="also accept TLS 1.2 (default 1.3 only)")
    p.add_argument("--max-connections", type=int, default=L.max_connections, metavar="N",
                   help="open at once; a newcomer sheds the least recently active "
                   f"(default {L.max_connections})")
    p.add_argument("--header-timeout", type=float, default=L.header_timeout, metavar="S",
                   help="TLS handshake, and each request head once begun "
                   f"(default {L.header_timeout:g})")
    p.add_argument("--idle-timeout", type=float, default=L.idle_timeout, metavar="S",
                   help=f"between requests and within bodies (default {L.idle_timeout:g})")
    p.add_argument("--max-header-bytes", type=int, default=L.max_header_bytes,
                   metavar="N", help=f"request head size (default {L.max_header_bytes})")
    p.add_argument("--drain-timeout", type=float, default=L.drain_timeout, metavar="S",
                   help="after SIGTERM, requests in flight may finish this long "
                   f"(default {L.drain_timeout:g})")
    p.set_defaults(func=run_serve)


def _add_get(ops: Any) -> None:
    p: argparse.ArgumentParser = ops.add_parser(
        "get",
        help="fetch a URL once the server's attestation names its TLS key",
        description="Open TLS, ask the attestation path on the same connection with a fresh "
        "nonce, verify the document, and only then send the request and print the body.",
        epilog=_GET_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("url", metavar="URL", help="https://HOST[:PORT]/PATH")
    expectations.add_pcr_flags(p)
    expectations.add_trust_flags(p)
    p.add_argument("--header", "-H", action="append", default=[], metavar="K:V",
                   help="a request header; repeatable")
    p.add_argument("--request", "-X", default=None, metavar="METHOD",
                   help="method (default GET, or POST with --data)")
    p.add_argument("--data", "-d", metavar="TEXT|@FILE", help="request body")
    p.add_argument("--output", "-o", metavar="FILE", help="write the body here, not to stdout")
    p.add_argument("--timeout", type=float, default=10.0, metavar="SECONDS",
                   help="bound on connecting, on the TLS handshake and on the attestation "
                   "exchange, each as a whole; then on each read of the answer (default 10)")
    p.set_defaults(func=run_get)


# --- serve --------------------------------------------------------------------------------------


def _configure_logging() -> ServerLogHandler:
    from nitro_attest._cli.serve_log import ServerLogHandler

    logging.logThreads = False  # as serve: the log line is a good part of a request's CPU
    logging.logProcesses = False
    logging.logMultiprocessing = False
    handler = ServerLogHandler(sys.stderr)
    logger = logging.getLogger("nitro_attest.https")
    for old in [h for h in logger.handlers if isinstance(h, ServerLogHandler)]:
        logger.removeHandler(old)
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    return handler


def run_serve(args: argparse.Namespace) -> int:
    from nitro_attest._cli.limit_flags import limits_from_args
    from nitro_attest._cli.serve_cmd import open_nsm
    from nitro_attest.errors import ConfigurationError
    from nitro_attest.https.front import Attester, FrontConfig, HttpsFront, seal_caller_key_pcr
    from nitro_attest.https.identity import make_identity
    from nitro_attest.server_limits import HTTPS_LIMITS
    from nitro_attest.wire.transport import AddressError, parse_address

    try:
        listen = parse_address(args.listen, role="listen")
        app = parse_address(args.to, role="connect")
    except AddressError as exc:
        raise CliError(str(exc)) from None
    if app.scheme == "vsock":
        raise CliError("--to: the app is reached over tcp:// or unix:// inside the enclave")
    limits = limits_from_args(args, HTTPS_LIMITS, _LIMIT_FIELDS)
    try:
        identity = make_identity(args.name, allow_tls12=args.tls12)
    except ConfigurationError as exc:
        raise CliError(exc.message) from None
    backend = open_nsm(args.nsm, Path(args.state) if args.state else None)
    try:
        seal_caller_key_pcr(backend)
    except ConfigurationError as exc:
        backend.close()
        raise CliError(exc.message) from None
    # Off the loop for every backend: the simulator stands for /dev/nsm, so it must not stall
    # other connections (nor flatter the setup figures) in a way the enclave cannot.
    attester = Attester(backend, identity.spki_der)
    config = FrontConfig(app=app, limits=limits)
    handler = _configure_logging()
    log = logging.getLogger("nitro_attest.https")
    _raise_fd_limit(limits.max_connections, log)
    front = HttpsFront(config, identity, attester, request_log=handler)
    try:
        with asyncio.Runner(loop_factory=fast_loop_factory()) as runner:
            runner.run(_serve(front, listen, limits.drain_timeout, log))
    except AddressError as exc:
        raise CliError(str(exc)) from None
    except OSError as exc:
        raise CliError(f"{listen}: cannot listen: {exc.strerror or exc}") from None
    finally:
        handler.flush()
        backend.close()
    return EXIT_OK


def _raise_fd_limit(max_connections: int, log: logging.Logger) -> None:
    """Two descriptors per connection (client, app) and some spare, as far as the hard limit
    allows; below what --max-connections needs, accepting pauses on EMFILE instead."""
    import resource

    want = 2 * max_connections + 64
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft >= want:
        return
    new = want if hard == resource.RLIM_INFINITY else min(want, hard)
    resource.setrlimit(resource.RLIMIT_NOFILE, (new, hard))
    if new < want:
        log.warning("open-file limit %d is below the %d that --max-connections %d needs",
                    new, want, max_connections)


async def _serve(front: Any, listen: Any, drain: float, log: logging.Logger) -> None:
    import hashlib

    bound = await front.start(listen)
    key_id = hashlib.sha256(front._identity.spki_der).hexdigest()[:16]
    log.info("https listening on %s (key sha256 %s..., app %s)", bound, key_id, front.config.app)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(signum, stop.set)
    await stop.wait()
    log.info("https draining (%d connections)", front.active_connections)
    await front.shutdown(drain)
    log.info("https stopped")


# --- get ----------------------------------------------------------------------------------------


def _headers(values: list[str]) -> list[tuple[bytes, bytes]]:
    from nitro_attest.codec.http import HandshakeError, header_field

    out = []
    for value in values:
        try:
            name, field = header_field(value.encode("utf-8"))
        except (HandshakeError, UnicodeError):
            raise CliError(f"--header {value[:60]!r}: expected NAME: VALUE") from None
        if name in (b"host", b"content-length", b"transfer-encoding", b"connection"):
            raise CliError(f"--header {name.decode()}: set by the client itself")
        out.append((name, field))
    return out


def _data(value: str | None) -> bytes | None:
    if value is None:
        return None
    if value.startswith("@"):
        return read_bytes(value[1:], limit=1 << 30, what="request body")
    return value.encode("utf-8")


def run_get(args: argparse.Namespace) -> int:
    from nitro_attest.https.client import NotListeningError, fetch

    if not args.timeout > 0:
        raise CliError("--timeout must be a positive number of seconds")
    if not args.pcr and not args.expected:
        raise CliError("give --expected FILE or --pcr N=HEX: without them any enclave is trusted")
    policy = expectations.build_policy(args, nonce=None, public_key=None)
    verifier = expectations.build_verifier(args)
    headers = _headers(args.header)
    body = _data(args.data)
    method = args.request or ("POST" if body is not None else "GET")
    from nitro_attest.codec.http import is_token

    if not is_token(method.encode("utf-8")):
        raise CliError(f"-X {method[:40]!r}: a method is one token (GET, POST, PUT...)")
    out: BinaryIO
    with contextlib.ExitStack() as stack:
        if args.output:
            try:
                out = stack.enter_context(open(args.output, "wb"))
            except OSError as exc:
                raise CliError(f"{args.output}: {exc.strerror or exc}") from None
        else:
            out = sys.stdout.buffer
        deadline = time.monotonic() + args.timeout
        while True:  # a server still starting: wait for it within --timeout, as attest does
            try:
                response, verified = fetch(
                    args.url,
                    verifier=verifier,
                    policy=policy,
                    sink=out.write,
                    method=method,
                    headers=headers,
                    body=body,
                    timeout=args.timeout,
                )
                break
            except NotListeningError:
                if time.monotonic() + 0.1 >= deadline:
                    raise
                time.sleep(0.1)
        out.flush()
    from nitro_attest.attestation.untrusted_text import escape_untrusted

    pcr0 = verified.document.pcrs.get(0, b"").hex()
    module = escape_untrusted(verified.document.module_id)
    print(f"attested: PCR0 {pcr0[:16]}..., module {module}; HTTP {response.status}",
          file=sys.stderr)
    return EXIT_OK
