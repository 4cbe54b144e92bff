"""Build the emulator from its settings and serve it with uvicorn (HTTPS, or HTTP on request)."""

from __future__ import annotations

import signal
import socket
import ssl
from dataclasses import dataclass
from pathlib import Path

from nitro_attest.errors import ConfigurationError
from nitro_attest.kms_emulator.app import KmsApp
from nitro_attest.kms_emulator.auth import Authenticator, Principal
from nitro_attest.kms_emulator.operations import Emulator
from nitro_attest.kms_emulator.recipient import RecipientVerifier
from nitro_attest.kms_emulator.store import StateStore
from nitro_attest.logs import uvicorn_log_config


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


def build(settings: EmulatorSettings, store: StateStore) -> KmsApp:
    emulator = Emulator(store, RecipientVerifier(settings.roots), settings.region)
    return KmsApp(emulator, Authenticator(settings.principals, settings.region))


class ListenError(ConfigurationError):
    """The address cannot be listened on, or the TLS certificate and key do not load."""


def check_tls(cert: Path, key: Path) -> None:
    try:
        ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(cert, key)
    except (ssl.SSLError, OSError) as exc:
        raise ListenError(
            f"--tls-cert {cert} / --tls-key {key}: not a PEM certificate chain and its private "
            f"key ({getattr(exc, 'reason', None) or exc})"
        ) from None


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


def serve(settings: EmulatorSettings) -> int:
    import uvicorn

    if settings.tls_cert is not None and settings.tls_key is not None:
        check_tls(settings.tls_cert, settings.tls_key)
    store = StateStore(settings.state_dir)  # locks the folder first: one emulator per state
    try:
        sock = _bind(settings.host, settings.port)
        config = uvicorn.Config(
            build(settings, store),
            host=settings.host,
            port=settings.port,
            lifespan="on",
            access_log=False,
            log_level="info",
            ssl_certfile=str(settings.tls_cert) if settings.tls_cert else None,
            ssl_keyfile=str(settings.tls_key) if settings.tls_key else None,
            timeout_graceful_shutdown=5,
            log_config=uvicorn_log_config(settings.log_format),
        )
        server = uvicorn.Server(config)
        # uvicorn drains on SIGTERM then re-raises it; a requested stop exits 0
        signal.signal(signal.SIGTERM, lambda signum, frame: None)
        server.run(sockets=[sock])
        return 0 if server.started else 2
    finally:
        store.close()
