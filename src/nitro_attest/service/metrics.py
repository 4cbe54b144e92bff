"""Prometheus metrics, one registry per app (so several apps in one process do not collide).

Besides the service's own series: process metrics (CPU, memory, descriptors, start time), the
platform, a build-info gauge, and every HTTP answer by endpoint and status code. No ``*_created``
series: a counter's start is the process's (``process_start_time_seconds``).
"""

from __future__ import annotations

import platform
from dataclasses import dataclass, field

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    disable_created_metrics,
)

from nitro_attest import __version__

disable_created_metrics()  # type: ignore[no-untyped-call]  # untyped upstream

_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


@dataclass
class Metrics:
    registry: CollectorRegistry = field(default_factory=CollectorRegistry)

    def __post_init__(self) -> None:
        r = self.registry
        self.results = Counter("nitro_attest_results", "EAR results by status", ["status"],
                               registry=r)  # fmt: skip
        self.sessions = Counter("nitro_attest_sessions_created", "sessions created", registry=r)
        self.store_errors = Counter(
            "nitro_attest_store_errors", "session store calls that failed", registry=r
        )
        self.reloads = Counter(
            "nitro_attest_policy_reloads", "policies file reloads", ["outcome"], registry=r
        )
        self.latency = Histogram(
            "nitro_attest_request_seconds", "request latency by endpoint", ["endpoint"],
            buckets=_BUCKETS, registry=r,
        )  # fmt: skip
        self.responses = Counter(
            "nitro_attest_http_responses", "HTTP answers by endpoint and status code",
            ["endpoint", "code"], registry=r,
        )  # fmt: skip
        self.build = Gauge(
            "nitro_attest_build_info", "the running nitro-attest: version, Python, command",
            ["version", "python", "component"], registry=r,
        )  # fmt: skip
        self.build.labels(__version__, platform.python_version(), "service").set(1)
        ProcessCollector(registry=r)
        PlatformCollector(registry=r)
        self.appraisal = Histogram(
            "nitro_attest_appraisal_seconds", "verification and EAR signing time",
            buckets=_BUCKETS, registry=r,
        )  # fmt: skip
