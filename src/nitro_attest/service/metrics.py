"""Prometheus metrics, one registry per app (so several apps in one process do not collide)."""

from __future__ import annotations

from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Histogram

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
        self.appraisal = Histogram(
            "nitro_attest_appraisal_seconds", "verification and EAR signing time",
            buckets=_BUCKETS, registry=r,
        )  # fmt: skip
