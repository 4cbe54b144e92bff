"""Flags every long-running command shares: ``--log-format`` and ``--metrics HOST:PORT``.

The metrics endpoint is prometheus-client's own HTTP server in a thread, on a registry of its own:
process metrics (CPU, memory, descriptors), a build-info gauge, and the command's counters read
at scrape time from the objects that keep them (no per-request cost beyond an integer add). No
``*_created`` series. prometheus-client is imported only when --metrics is given: the enclave
image does not carry it (the ``metrics`` extra does).
"""

from __future__ import annotations

import argparse
import logging
import platform
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from nitro_attest import __version__
from nitro_attest._cli.common import CliError
from nitro_attest.logs import FORMATS, formatter

Family = Any  # a prometheus_client metric family (the package is imported lazily)
Collect = Callable[[], Iterable[Family]]


def add_flags(p: argparse.ArgumentParser, *, metrics: bool = True) -> None:
    p.add_argument(
        "--log-format",
        choices=FORMATS,
        default="text",
        help="text (default) or json: one JSON object per line (ts in UTC, level, logger, msg)",
    )
    if metrics:
        p.add_argument(
            "--metrics",
            metavar="HOST:PORT",
            help="serve Prometheus metrics at http://HOST:PORT/metrics (needs prometheus-client: "
            "pip install 'nitro-attest[metrics]')",
        )


def log_formatter(args: argparse.Namespace) -> logging.Formatter:
    return formatter(args.log_format)


def parse_host_port(text: str, flag: str = "--metrics") -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise CliError(f"{flag} {text!r}: expected HOST:PORT, e.g. 127.0.0.1:9100")
    return host, int(port)


class MetricsEndpoint:
    """A running metrics server; ``port`` is the one bound (useful with port 0)."""

    def __init__(self, server: Any, thread: threading.Thread) -> None:
        self._server = server
        self._thread = thread
        self.port: int = server.server_address[1]

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)


def start_metrics(spec: str, component: str, collect: Collect) -> MetricsEndpoint:
    """Serve ``collect``'s families, process metrics and build info at ``spec`` (HOST:PORT)."""
    host, port = parse_host_port(spec)
    try:
        import prometheus_client as prom
        from prometheus_client.core import GaugeMetricFamily
        from prometheus_client.registry import Collector
    except ImportError:
        raise CliError(
            "--metrics needs prometheus-client: pip install 'nitro-attest[metrics]'"
        ) from None

    class Command(Collector):
        def collect(self) -> Iterator[Family]:
            info = GaugeMetricFamily(
                "nitro_attest_build_info", "the running nitro-attest: version, Python, command",
                labels=["version", "python", "component"],
            )  # fmt: skip
            info.add_metric([__version__, platform.python_version(), component], 1)
            yield info
            yield from collect()

    registry = prom.CollectorRegistry()
    prom.ProcessCollector(registry=registry)
    prom.PlatformCollector(registry=registry)
    registry.register(Command())
    try:
        server, thread = prom.start_http_server(port, addr=host, registry=registry)
    except OSError as exc:
        raise CliError(f"--metrics {spec}: cannot listen: {exc.strerror or exc}") from None
    return MetricsEndpoint(server, thread)
