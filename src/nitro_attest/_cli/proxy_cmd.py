"""`nitro-attest proxy`: forward connections between vsock, tcp and unix, or speak HTTP CONNECT."""

from __future__ import annotations

import argparse
import asyncio
import logging
import resource
import signal
import sys
from collections.abc import Callable
from typing import Any

from nitro_attest._cli import observe
from nitro_attest._cli.common import EXIT_OK, CliError
from nitro_attest._cli.limit_flags import limits_from_args
from nitro_attest.logs import formatter
from nitro_attest.proxy import (
    AllowlistError,
    ProxyConfig,
    ProxyConfigError,
    ProxyServer,
    load_allowlist,
)
from nitro_attest.proxy.allowlist import summarize_allowlist
from nitro_attest.proxy.server import DEFAULT_CONNECT_TIMEOUT
from nitro_attest.server_limits import PROXY_LIMITS as L
from nitro_attest.server_limits import default_max_per_peer
from nitro_attest.wire.transport import AddressError, parse_address

# The Limits fields the proxy's flags set; the CONNECT head's deadline keeps its own flag name.
_LIMIT_FIELDS = ("max_connections", "max_per_peer", "idle_timeout", "header_timeout",
                 "drain_timeout")
_RENAMED = {"header_timeout": "--handshake-timeout"}
_FDS_PER_CONNECTION = 6  # two sockets, and two pipes while both directions are busy

_EPILOG = """\
examples:
  inbound, on the parent: remote clients attest the enclave (CID 16) via tcp://PARENT:5005
    nitro-attest proxy --listen tcp://0.0.0.0:5005 --to vsock://16:5005
  outbound, on the parent: the enclave's HTTPS_PROXY, allowlisted hosts only
    nitro-attest proxy --listen vsock://any:8000 --to connect --allowlist allowlist.yaml
  inside the enclave: a local port for HTTPS_PROXY=http://127.0.0.1:3128
    nitro-attest proxy --listen tcp://127.0.0.1:3128 --to vsock://3:8000

The allowlist is AWS vsock-proxy's YAML: allowlist: [{address: HOST, port: N}, ...].
One log line per connection goes to stderr (peer, target, bytes, duration, why it ended).
SIGTERM stops accepting, lets connections finish for --drain-timeout, then closes.
"""


def register(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser(
        "proxy",
        help="forward connections to or from the enclave (vsock/tcp/unix), or serve HTTP CONNECT",
        description="Forward every connection on --listen to --to, or with '--to connect' speak "
        "HTTP CONNECT toward the hosts on --allowlist. Data moves with splice(2).",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--listen", required=True, metavar="ADDR", help="vsock://, tcp:// or unix://")
    p.add_argument(
        "--to",
        required=True,
        metavar="TARGET",
        help="an address every connection goes to, or 'connect' for HTTP CONNECT",
    )
    p.add_argument("--allowlist", metavar="FILE", help="AWS vsock-proxy YAML allowlist")
    p.add_argument(
        "--unsafe-any-host",
        action="store_true",
        help="outbound without an allowlist: the enclave may reach any host",
    )
    _number(
        p, "--max-connections", int, L.max_connections, "N", "open at once; more are refused"
    )
    p.add_argument(
        "--max-per-peer", type=int, default=None, metavar="N",
        help="open at once from one IP, CID or uid; 0: no limit (default a quarter of "
        f"--max-connections: {default_max_per_peer(L.max_connections)}; raise it behind a "
        "load balancer that hides client addresses)",
    )
    _number(
        p, "--idle-timeout", float, L.idle_timeout, "S", "close a tunnel silent this long"
    )
    _number(p, "--connect-timeout", float, DEFAULT_CONNECT_TIMEOUT, "S", "resolve and connect")
    _number(
        p, "--handshake-timeout", float, L.header_timeout, "S", "CONNECT request deadline"
    )
    _number(p, "--drain-timeout", float, L.drain_timeout, "S", "after SIGTERM")
    p.add_argument("--no-splice", action="store_true", help=argparse.SUPPRESS)
    observe.add_flags(p)
    p.set_defaults(func=run)


def _number(
    p: argparse.ArgumentParser, flag: str, convert: type, default: float, meta: str, what: str
) -> None:
    p.add_argument(
        flag, type=convert, default=default, metavar=meta, help=f"{what} (default {default:g})"
    )


def build_config(args: argparse.Namespace) -> ProxyConfig:
    """Flags to a checked configuration; every problem is a CliError before any socket opens."""
    try:
        listen = parse_address(args.listen, role="listen")
        target = None if args.to == "connect" else parse_address(args.to, role="connect")
    except AddressError as exc:
        raise CliError(str(exc)) from None
    allowlist = None
    if args.allowlist:
        try:
            allowlist = load_allowlist(args.allowlist)
        except AllowlistError as exc:
            raise CliError(f"--allowlist {exc}") from None
    limits = limits_from_args(args, L, _LIMIT_FIELDS, _RENAMED)
    try:
        return ProxyConfig(
            listen,
            target,
            allowlist=allowlist,
            unsafe_any_host=args.unsafe_any_host,
            limits=limits,
            connect_timeout=args.connect_timeout,
            splice=not args.no_splice,
        )
    except ProxyConfigError as exc:
        raise CliError(str(exc)) from None


def _configure_logging(log_format: str = "text") -> tuple[logging.Logger, logging.Handler]:
    logger = logging.getLogger("nitro_attest.proxy")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter(log_format))  # UTC times; json: one object per line
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    return logger, handler


def _raise_fd_limit(max_connections: int, logger: logging.Logger) -> None:
    want = max_connections * _FDS_PER_CONNECTION + 64
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft >= want:
        return
    new = want if hard == resource.RLIM_INFINITY else min(want, hard)
    resource.setrlimit(resource.RLIMIT_NOFILE, (new, hard))
    if new < want:
        logger.warning(
            "open-file limit %d is below the %d that --max-connections %d needs; "
            "raise LimitNOFILE or lower --max-connections",
            new,
            want,
            max_connections,
        )


async def _serve(
    config: ProxyConfig,
    drain_timeout: float,
    logger: logging.Logger,
    created: Callable[[ProxyServer], None] | None = None,
) -> None:
    loop = asyncio.get_running_loop()
    server = ProxyServer(config)
    if created is not None:
        created(server)
    bound = await server.start()
    where = "HTTP CONNECT" if config.target is None else str(config.target)
    if config.allowlist is not None:
        policy = f"allowlist: {summarize_allowlist(config.allowlist)}"
    elif config.unsafe_any_host:
        policy = "UNSAFE: any host (no allowlist)"
    else:
        policy = "fixed target"
    logger.info("proxy listening on %s -> %s (%s)", bound, where, policy)
    stop = asyncio.Event()
    signals = 0
    aborting: list[asyncio.Task[None]] = []

    def on_signal() -> None:
        nonlocal signals
        signals += 1
        stop.set()
        if signals > 1:  # a second signal: stop draining now
            aborting.append(loop.create_task(server.abort_all()))

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal)
    await stop.wait()
    logger.info(
        "stopping: %d connection(s) open, draining for up to %gs", server.active, drain_timeout
    )
    await server.shutdown(drain_timeout)
    logger.info("stopped")


def run(args: argparse.Namespace) -> int:
    config = build_config(args)
    if args.metrics:
        observe.parse_host_port(args.metrics)  # refused before anything starts
    logger, handler = _configure_logging(args.log_format)
    servers: list[ProxyServer] = []
    endpoint = None
    try:
        if args.metrics:
            endpoint = observe.start_metrics(args.metrics, "proxy", lambda: _families(servers))
        _raise_fd_limit(config.max_connections, logger)
        asyncio.run(_serve(config, config.limits.drain_timeout, logger, servers.append))
    except AddressError as exc:
        raise CliError(str(exc)) from None
    except OSError as exc:
        raise CliError(f"{config.listen}: cannot listen: {exc.strerror or exc}") from None
    finally:
        if endpoint is not None:
            endpoint.close()
        logger.removeHandler(handler)
    return EXIT_OK


def _families(servers: list[ProxyServer]) -> list[observe.Family]:
    """The proxy's counters, read at scrape time (prometheus-client is loaded by then)."""
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

    ended = CounterMetricFamily(
        "nitro_attest_proxy_connections", "connections finished, by how they ended",
        labels=["end"],
    )  # fmt: skip
    open_now = GaugeMetricFamily("nitro_attest_proxy_connections_open", "connections open")
    moved = CounterMetricFamily(
        "nitro_attest_proxy_bytes", "bytes forwarded, by direction", labels=["direction"]
    )
    for server in servers[-1:]:
        for end, count in dict(server.ended).items():
            ended.add_metric([end], count)
        open_now.add_metric([], server.active)
        moved.add_metric(["up"], server.bytes_up)
        moved.add_metric(["down"], server.bytes_down)
    return [ended, open_now, moved]
