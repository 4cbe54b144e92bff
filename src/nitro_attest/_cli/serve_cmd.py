"""`nitro-attest serve`: the enclave side; answer attestation requests with the NSM."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from pathlib import Path
from typing import Any

from nitro_attest._cli import observe
from nitro_attest._cli.common import EXIT_OK, CliError, read_bytes
from nitro_attest._cli.limit_flags import limits_from_args
from nitro_attest._cli.serve_log import ServerLogHandler
from nitro_attest.channel.receiver import ChannelReceiver
from nitro_attest.channel.routes import enclave_routes
from nitro_attest.channel.signing import (
    MAX_KEY_FILE_BYTES,
    SenderKeyError,
    SenderPublicKey,
    key_id,
    load_public_key,
)
from nitro_attest.errors import ChannelKeyError, ConfigurationError
from nitro_attest.nsm import open_backend
from nitro_attest.nsm.backend import NsmBackend, NsmError
from nitro_attest.server_limits import SERVE_LIMITS
from nitro_attest.wire.server import EnclaveServer, serve
from nitro_attest.wire.transport import DEFAULT_SOCKET_MODE, AddressError, parse_address

DEVICE_PATH = Path("/dev/nsm")
# The Limits fields serve's flags set; idle_timeout keeps its older flag name.
_LIMIT_FIELDS = ("idle_timeout", "frame_deadline", "max_connections", "drain_timeout")
_RENAMED = {"idle_timeout": "--read-timeout"}

_EPILOG = """\
examples:
  inside an enclave:   nitro-attest serve --listen vsock://any:5005
  on any Linux box:    nitro-attest sim init --state .sim
                       nitro-attest serve --listen unix://.sim/enclave.sock --nsm simulator \\
                           --state .sim

An attest request naming its own public_key is refused (error public_key_refused) unless
--allow-caller-public-key is given: with it, ANYONE WHO REACHES THE PORT gets any key of their
choosing attested by this enclave's NSM, so such a document proves nothing about who holds the
key (docs/threat-model.md). A key in the attested-channel format (NAHPKE...) is refused even then.
To say so, serve first extends PCR16 with a fixed label and locks it: EVERY document of this
enclave boot then carries that mark, its channel's included, and nitro-attest's relying parties
(send-secret, the https client, the verification service, kms policy's PCR16 condition) refuse
it. Use the opt-in only for an enclave that nothing trusts for a key of its own. Without the
opt-in serve locks PCR16 untouched, the value those relying parties require; serve refuses to
start with the opt-in when PCR16 is already locked with another value.

With --sender-key PEM (repeatable; Ed25519 or P-256, baked into the image so PCR0 measures it)
a sealed message is accepted only when signed by one of those keys (send-secret --sign-with).
Without it, every delivery comes from an unauthenticated sender, possibly the parent instance.

One log line per request goes to stderr (sizes and hashes only, never the values).
SIGTERM or Ctrl-C stops the server cleanly: it accepts nothing more, answers the requests it
already received (up to --drain-timeout), then closes and removes its Unix socket file.
"""


def register(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser(
        "serve",
        help="run the enclave attestation server (real /dev/nsm or the software NSM)",
        description="Listen for attestation requests and answer each with a document signed by "
        "the NSM. Inside a Nitro Enclave listen on vsock; elsewhere use --nsm simulator.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--listen",
        required=True,
        metavar="ADDR",
        help="vsock://any:PORT, tcp://HOST:PORT or unix:///path",
    )
    p.add_argument(
        "--nsm",
        choices=("auto", "device", "simulator"),
        default="auto",
        help="auto: /dev/nsm when present, else refuse (default); simulator: the software NSM",
    )
    p.add_argument("--state", metavar="DIR", help="software NSM state folder (sim init --state)")
    p.add_argument(
        "--read-timeout",
        type=float,
        default=SERVE_LIMITS.idle_timeout,
        metavar="SECONDS",
        help="drop a client idle between requests for this long "
        f"(default {SERVE_LIMITS.idle_timeout:g})",
    )
    p.add_argument(
        "--frame-deadline",
        type=float,
        default=SERVE_LIMITS.frame_deadline,
        metavar="SECONDS",
        help="a request, once its first byte arrived, must be complete within this long, or "
        f"the client gets 'timeout' and is dropped (default {SERVE_LIMITS.frame_deadline:g})",
    )
    p.add_argument(
        "--max-connections",
        type=int,
        default=SERVE_LIMITS.max_connections,
        metavar="N",
        help="connections held open at once; when full the least recently active one is shed "
        f"for a newcomer (default {SERVE_LIMITS.max_connections})",
    )
    p.add_argument(
        "--drain-timeout",
        type=float,
        default=SERVE_LIMITS.drain_timeout,
        metavar="SECONDS",
        help="on SIGTERM, answer requests already received for up to this long before closing "
        f"(default {SERVE_LIMITS.drain_timeout:g}; 0 drops them at once)",
    )
    p.add_argument(
        "--socket-mode",
        default=f"{DEFAULT_SOCKET_MODE:04o}",
        metavar="OCTAL",
        help="permissions of a unix:// socket, whatever the umask (default "
        f"{DEFAULT_SOCKET_MODE:04o}: its owner only; 0660 lets the group connect)",
    )
    p.add_argument(
        "--no-channel",
        action="store_true",
        help="serve only attest/describe: no attested channel (no HPKE key, no sealed messages)",
    )
    p.add_argument(
        "--allow-caller-public-key",
        action="store_true",
        help="let attest requests name their own public_key: anyone who reaches the port then "
        "gets any key attested by this enclave (never a channel-shaped key). PCR16 is marked and "
        "locked first, so every document says so and our relying parties refuse them all",
    )
    p.add_argument(
        "--sender-key",
        action="append",
        default=[],
        metavar="PEM",
        help="accept sealed messages only when signed by this Ed25519 or P-256 public key "
        "(repeatable). Bake the file into the enclave image so PCR0 measures it. Without it every "
        "delivery is from an unauthenticated sender: anyone reaching the port, the parent included",
    )
    observe.add_flags(p)
    p.set_defaults(func=run)


def parse_socket_mode(text: str) -> int:
    """An octal mode for the Unix socket: owner read/write required, no special bits."""
    try:
        mode = int(text, 8)
    except ValueError:
        raise CliError(f"--socket-mode: {text[:20]!r} is not an octal mode like 0600") from None
    if mode & ~0o777 or mode & 0o600 != 0o600:
        raise CliError(
            f"--socket-mode: {text[:20]} must be 0600..0777 with owner read and write (rw-)"
        )
    return mode


def open_nsm(name: str, state: Path | None) -> NsmBackend:
    if name == "auto" and not DEVICE_PATH.exists():
        raise CliError(
            f"{DEVICE_PATH} not found: this is not a Nitro Enclave. To run with the software NSM "
            "use --nsm simulator --state DIR (after `nitro-attest sim init --state DIR`)"
        )
    try:
        backend = open_backend(name, state_dir=state)
    except NsmError as exc:
        raise CliError(f"cannot open the NSM ({name}): {exc}") from None
    except (OSError, ValueError) as exc:
        raise CliError(f"cannot open the NSM ({name}): {exc}") from None
    return backend


def _configure_logging(log_format: str = "text") -> ServerLogHandler:
    """One handler on stderr for the server's and the channel's loggers; returned for flushing."""
    # The log line per request is a good part of the server's own CPU per request; it names
    # neither thread, process nor source line, so logging need not look them up.
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    logging._srcfile = None  # skips findCaller's stack walk (documented in logging's source)
    handler = ServerLogHandler(sys.stderr, log_format)
    for name in ("nitro_attest.wire.server", "nitro_attest.channel"):
        logger = logging.getLogger(name)
        for old in [h for h in logger.handlers if isinstance(h, ServerLogHandler)]:
            logger.removeHandler(old)  # serve run twice in one process (tests)
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        logger.propagate = False
    return handler


def _sender_key(path: str) -> SenderPublicKey:
    try:
        return load_public_key(read_bytes(path, limit=MAX_KEY_FILE_BYTES, what="sender key"))
    except SenderKeyError as exc:
        raise CliError(f"--sender-key {path}: {exc}") from None


def _log_senders(senders: list[SenderPublicKey]) -> None:
    channel_log = logging.getLogger("nitro_attest.channel")
    if not senders:
        channel_log.warning(
            "no --sender-key: every sealed message is accepted from an unauthenticated sender"
        )
    for key in senders:
        channel_log.info("pinned sender key %s", key_id(key).hex()[:16])


def run(args: argparse.Namespace) -> int:
    try:
        address = parse_address(args.listen, role="listen")
    except AddressError as exc:
        raise CliError(str(exc)) from None
    limits = limits_from_args(args, SERVE_LIMITS, _LIMIT_FIELDS, _RENAMED)
    socket_mode = parse_socket_mode(args.socket_mode)
    if args.metrics:
        observe.parse_host_port(args.metrics)  # refused before anything starts
    if args.no_channel and args.sender_key:
        raise CliError("--sender-key pins senders of the attested channel; drop --no-channel")
    senders = [_sender_key(path) for path in args.sender_key]
    backend = open_nsm(args.nsm, Path(args.state) if args.state else None)
    log_handler = _configure_logging(args.log_format)
    allow_key = bool(args.allow_caller_public_key)
    receiver = None
    if not args.no_channel:  # a fresh HPKE key pair per start, in memory only (docs/channel.md)
        try:
            receiver = ChannelReceiver(senders=senders)
        except ChannelKeyError as exc:
            backend.close()
            raise CliError(f"attested channel: {exc.message}; serve with --no-channel") from None
    try:  # settles PCR16 (the caller-key mark) before anything is served
        routes = enclave_routes(backend, channel=receiver, allow_caller_public_key=allow_key)
    except (ConfigurationError, NsmError) as exc:
        backend.close()
        raise CliError(f"--allow-caller-public-key: {exc}" if allow_key else str(exc)) from None
    if receiver is not None:
        _log_senders(senders)
    if allow_key:
        logging.getLogger("nitro_attest.wire.server").warning(
            "--allow-caller-public-key: anyone who reaches this port gets any public key "
            "attested; PCR16 marked and locked, so relying parties refuse every document"
        )
    servers: list[EnclaveServer] = []
    endpoint = None
    try:
        if args.metrics:
            endpoint = observe.start_metrics(args.metrics, "serve", lambda: _families(servers))
        asyncio.run(
            serve(
                address,
                routes,
                limits=limits,
                socket_mode=socket_mode,
                request_log=log_handler,
                created=servers.append,
            )
        )
    except AddressError as exc:
        raise CliError(str(exc)) from None
    except OSError as exc:
        raise CliError(f"{address}: cannot listen: {exc.strerror or exc}") from None
    finally:
        if endpoint is not None:
            endpoint.close()
        log_handler.flush()
        backend.close()
    return EXIT_OK


def _families(servers: list[EnclaveServer]) -> list[observe.Family]:
    """The server's counters, read at scrape time (prometheus-client is loaded by then)."""
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

    answered = CounterMetricFamily(
        "nitro_attest_serve_requests", "requests answered, by type and outcome (ok or error code)",
        labels=["type", "outcome"],
    )  # fmt: skip
    open_now = GaugeMetricFamily("nitro_attest_serve_connections", "connections open")
    shed = CounterMetricFamily(
        "nitro_attest_serve_connections_shed", "least recently active connections shed"
    )
    refused = CounterMetricFamily(
        "nitro_attest_serve_connections_refused", "connections refused busy"
    )
    for server in servers[-1:]:
        for (request_type, outcome), count in dict(server.answered).items():
            answered.add_metric([request_type, outcome], count)
        open_now.add_metric([], server.active_connections)
        shed.add_metric([], server.shed.total)
        refused.add_metric([], server.refused.total)
    return [answered, open_now, shed, refused]
