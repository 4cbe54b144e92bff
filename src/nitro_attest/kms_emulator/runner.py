"""Build the emulator from its settings and serve it (HTTPS, or HTTP on request) with front.py."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import signal
import socket
import ssl
from dataclasses import dataclass, field
from pathlib import Path

from nitro_attest.errors import ConfigurationError
from nitro_attest.event_loop import fast_loop_factory
from nitro_attest.kms_emulator.app import KmsApp
from nitro_attest.kms_emulator.auth import Authenticator, Principal
from nitro_attest.kms_emulator.front import EmulatorFront
from nitro_attest.kms_emulator.operations import Emulator
from nitro_attest.kms_emulator.recipient import RecipientVerifier
from nitro_attest.kms_emulator.store import StateStore
from nitro_attest.logs import formatter
from nitro_attest.server_limits import EMULATOR_LIMITS, Limits
from nitro_attest.wire.admission import descriptor_budget

log = logging.getLogger("nitro_attest.kms_emulator")


@dataclass(frozen=True, slots=True)
class EmulatorSettings:
    host: str
    port: int
    state_dir: Path
    principals: dict[str, Principal]
    roots: tuple[bytes | None, ...]  # None: the AWS root
    region: str = "us-east-1"
    tls_cert: Path | None = None
    tls_key: Path | None = None
    log_format: str = "text"  # or "json" (nitro_attest.logs)
    limits: Limits = field(default=EMULATOR_LIMITS)


def build(settings: EmulatorSettings, store: StateStore) -> KmsApp:
    emulator = Emulator(store, RecipientVerifier(settings.roots), settings.region)
    return KmsApp(emulator, Authenticator(settings.principals, settings.region))


class ListenError(ConfigurationError):
    """The address cannot be listened on, or the TLS certificate and key do not load."""


def check_tls(cert: Path, key: Path) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        context.load_cert_chain(cert, key)
    except (ssl.SSLError, OSError) as exc:
        raise ListenError(
            f"--tls-cert {cert} / --tls-key {key}: not a PEM certificate chain and its private "
            f"key ({getattr(exc, 'reason', None) or exc})"
        ) from None
    return context


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise ListenError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    sock.listen(1024)
    return sock


def _fit_descriptors(limits: Limits) -> Limits:
    """Raise the open-file limit toward what ``max_connections`` needs, else lower the cap to
    fit it: with descriptors gone before the table is full, accept fails and every newcomer is
    reset while idle connections hold theirs (shedding never runs)."""
    cap, fd_limit = descriptor_budget(limits.max_connections)
    if cap >= limits.max_connections:
        return limits
    log.warning(
        "--max-connections lowered to %d to fit the open-file limit of %d (raise it: ulimit -n)",
        cap, fd_limit,
    )
    return dataclasses.replace(limits, max_connections=cap)


def _configure_logging(log_format: str) -> None:
    handler = logging.StreamHandler()
    handler.setFormatter(formatter(log_format))
    logger = logging.getLogger("nitro_attest")
    logger.handlers[:] = [handler]
    logger.setLevel(logging.INFO)
    logger.propagate = False


async def _run(front: EmulatorFront, sock: socket.socket, tls: ssl.SSLContext | None) -> None:
    await front.start(sock, tls)
    host, port = sock.getsockname()[:2]
    log.info("KMS emulator listening on %s://%s:%d", "https" if tls else "http", host, port)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    try:
        await stop.wait()
    finally:
        for signum in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(Exception):
                loop.remove_signal_handler(signum)
        await front.stop()
        log.info("KMS emulator stopped")


def serve(settings: EmulatorSettings) -> int:
    """Serve until SIGTERM or SIGINT (then 0)."""
    tls = None
    if settings.tls_cert is not None and settings.tls_key is not None:
        tls = check_tls(settings.tls_cert, settings.tls_key)
    store = StateStore(settings.state_dir)  # locks the folder first: one emulator per state
    try:
        sock = _bind(settings.host, settings.port)
        _configure_logging(settings.log_format)
        front = EmulatorFront(build(settings, store), _fit_descriptors(settings.limits))
        with asyncio.Runner(loop_factory=fast_loop_factory()) as runner:
            runner.run(_run(front, sock, tls))
        return 0
    finally:
        store.close()
