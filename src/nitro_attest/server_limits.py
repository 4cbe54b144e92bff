"""``Limits``: the one description of what a server admits, shared by every server we run.

`serve` (wire.server), `proxy` (proxy.server), `https serve` (https.front) and the verification
service (service.runner) each take a ``Limits``; each reads the fields that apply to it (the table
below) and starts from its own ``*_LIMITS`` default, which differs from the class defaults only
where that server's traffic differs. Every value is checked here, once, and a bad one raises
``LimitsError`` naming the field (the CLI turns the field into its flag: _cli/limit_flags.py).

| field             | serve | proxy | https | service |
|-------------------|-------|-------|-------|---------|
| max_connections   | yes   | yes   | yes   | yes     |
| max_per_peer      |       | yes   |       |         |
| idle_timeout      | yes   | yes   | yes   | yes     |
| header_timeout    |       | yes   | yes   | yes     |
| frame_deadline    | yes   |       |       |         |
| write_timeout     | yes   |       |       |         |
| max_header_bytes  |       |       | yes   |         |
| max_header_lines  |       |       | yes   |         |
| max_frame_bytes   | yes   |       |       |         |
| shed_grace        | yes   |       |       |         |
| drain_timeout     | yes   | yes   | yes   | yes     |

The local KMS (kms_emulator.front, ``EMULATOR_LIMITS``) reads what https serve reads, plus
max_header_lines; its header_timeout bounds a whole request (head and body) once begun.

``header_timeout`` bounds a head once begun: the proxy's CONNECT request, the front's TLS
handshake and request head, the service's evidence body; ``max_connections`` is uvicorn's
``limit_concurrency`` in the service.

Why the idle timeouts differ: `serve`, `https serve` and the service see every request, so
``idle_timeout`` only bounds the silence *between* requests (30 s: a client that wants more
reconnects, cheaply; the service keeps uvicorn's 5 s keep-alive, its clients being HTTP libraries
that reconnect on their own). The proxy sees opaque bytes: a tunnel may carry a TLS session
(the enclave's keep-alive to KMS or to an HTTPS API) whose silence between its own requests we
cannot tell from a dead peer, so it waits 300 s, the order of the load balancers' own idle
timeouts (AWS NLB: 350 s).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

from nitro_attest.errors import UsageError
from nitro_attest.limits import MAX_FRAME_BYTES

# An idle connection costs a few KB in any of our servers (docs/protocol.md); 1024 bounds the
# worst case of serve, every slot mid-frame holding up to 64 KiB, to 64 MiB.
DEFAULT_MAX_CONNECTIONS = 1024
DEFAULT_IDLE_TIMEOUT = 30.0
PROXY_IDLE_TIMEOUT = 300.0  # opaque tunnels: see the module docstring
MIN_HEADER_BYTES = 1024
MAX_HEADER_BYTES = 1024 * 1024


class LimitsError(UsageError):
    """A limit is unusable; ``field`` names it (the CLI maps it to its flag)."""

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field} {problem}")
        self.field = field
        self.problem = problem


_SECONDS = ("idle_timeout", "header_timeout", "frame_deadline", "write_timeout")
_COUNTS = ("max_connections", "max_header_lines")


@dataclass(frozen=True, slots=True)
class Limits:
    """What a server admits and how long it waits; immutable, checked on construction."""

    max_connections: int = DEFAULT_MAX_CONNECTIONS
    max_per_peer: int | None = None  # None: a quarter of max_connections; 0: no limit
    idle_timeout: float = DEFAULT_IDLE_TIMEOUT
    header_timeout: float = 10.0
    frame_deadline: float = 5.0
    write_timeout: float = 10.0
    max_header_bytes: int = 16 * 1024
    max_header_lines: int = 100
    max_frame_bytes: int = MAX_FRAME_BYTES
    shed_grace: float = 0.5
    drain_timeout: float = 5.0

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name == "max_per_peer" and value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise LimitsError(f.name, f"must be a number, not {type(value).__name__}")
            if f.type in ("int", "int | None") and not isinstance(value, int):
                raise LimitsError(f.name, "must be a whole number")
        for name in _SECONDS:
            if not getattr(self, name) > 0:
                raise LimitsError(name, "must be a positive number of seconds")
        for name in _COUNTS:
            if getattr(self, name) < 1:
                raise LimitsError(name, "must be at least 1")
        if self.max_per_peer is not None and self.max_per_peer < 0:
            raise LimitsError("max_per_peer", "must be 0 (no limit) or more")
        if not MIN_HEADER_BYTES <= self.max_header_bytes <= MAX_HEADER_BYTES:
            raise LimitsError("max_header_bytes", f"must be {MIN_HEADER_BYTES}..{MAX_HEADER_BYTES}")
        if not 1 <= self.max_frame_bytes <= MAX_FRAME_BYTES:
            raise LimitsError("max_frame_bytes", f"must be 1..{MAX_FRAME_BYTES}")
        if not 0 <= self.shed_grace < math.inf:
            raise LimitsError("shed_grace", "must be zero or more seconds")
        if not 0 <= self.drain_timeout < math.inf:
            raise LimitsError("drain_timeout", "must be zero or more seconds")

    @property
    def per_peer(self) -> int:
        """``max_per_peer`` resolved: a quarter of the connections by default (one client, one
        IP, CID or uid, cannot hold every slot), 0 for no limit."""
        if self.max_per_peer is None:
            return default_max_per_peer(self.max_connections)
        return self.max_per_peer


def default_max_per_peer(max_connections: int) -> int:
    """A quarter of the connections: one client cannot hold every slot, and an enclave's own
    outbound connections (one CID) still get hundreds at the default."""
    return max(1, max_connections // 4)


SERVE_LIMITS = Limits()
PROXY_LIMITS = Limits(idle_timeout=PROXY_IDLE_TIMEOUT, drain_timeout=10.0)
HTTPS_LIMITS = Limits(drain_timeout=10.0)
SERVICE_LIMITS = Limits(header_timeout=10.0, idle_timeout=5.0, drain_timeout=10.0)
# The local KMS (kms_emulator.front): uvicorn's keep-alive of 5 s, which it had before, and
# boto3's pool reconnects after; the other fields as every HTTP server here.
EMULATOR_LIMITS = Limits(idle_timeout=5.0, drain_timeout=5.0)
