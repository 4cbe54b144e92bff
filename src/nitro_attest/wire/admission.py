"""Connection admission for the enclave server: limits, deadlines, and shedding when full.

Every connection is in one of three waiting states, each with its own clock:

- ``idle``: between requests (or just connected); closed after ``idle_timeout``.
- ``frame``: a frame has started (its first byte arrived); it must be complete within
  ``frame_deadline``, however slowly the bytes trickle in. Late: a ``timeout`` answer, then close.
- ``stalled``: the client does not read our answers (the transport's write buffer is full);
  closed after ``write_timeout``.

Each state keeps its connections in an insertion-ordered dict, oldest first, so one periodic
sweep pops expired connections from the front, and when the table is full the least recently
active connection older than ``shed_grace`` is shed (answered ``busy``, then closed) to make room
for the new one. Only when every connection is younger than that grace is the newcomer refused
with ``busy``. A connection never waits while a request is being handled: handlers run inline.
"""

from __future__ import annotations

import resource
import socket
from collections.abc import Callable

from nitro_attest.server_limits import SERVE_LIMITS, Limits

IDLE = "idle"
FRAME = "frame"
STALLED = "stalled"
WAITING_STATES = (IDLE, FRAME, STALLED)

DEFAULT_IDLE_TIMEOUT = SERVE_LIMITS.idle_timeout
DEFAULT_FRAME_DEADLINE = SERVE_LIMITS.frame_deadline
DEFAULT_WRITE_TIMEOUT = SERVE_LIMITS.write_timeout
DEFAULT_SHED_GRACE = SERVE_LIMITS.shed_grace
LISTEN_BACKLOG = socket.SOMAXCONN
# Connections asyncio accepts per readiness event: reads of connected clients interleave with a
# connect flood instead of waiting behind thousands of accepts.
ACCEPT_BATCH = 128
# Descriptors beyond the connection cap: one accept batch, connections still flushing their last
# answer, the listening socket, the log, the NSM and the interpreter's own.
FD_HEADROOM = ACCEPT_BATCH + 128


def timeout_of(limits: Limits, state: str) -> float:
    """How long a connection may wait in ``state``."""
    if state == IDLE:
        return limits.idle_timeout
    if state == FRAME:
        return limits.frame_deadline
    return limits.write_timeout


def sweep_interval(limits: Limits) -> float:
    """How often deadlines are checked: a deadline is enforced at most this late."""
    return min(1.0, max(0.02, min(limits.frame_deadline, limits.idle_timeout) / 8))


class Member:
    """What the table needs of a connection: when it connected, and its waiting state."""

    __slots__ = ("connected_at", "since", "state")

    def __init__(self, now: float) -> None:
        self.connected_at = now
        self.state: str | None = None
        self.since = now


class ConnectionTable:
    """The open connections, by waiting state, least recently active first."""

    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        self._states: dict[str, dict[Member, None]] = {s: {} for s in WAITING_STATES}
        self._open: set[Member] = set()

    def __len__(self) -> int:
        return len(self._open)

    def add(self, member: Member, now: float) -> None:
        self._open.add(member)
        self.enter(member, IDLE, now)

    def enter(self, member: Member, state: str | None, now: float) -> None:
        """Move ``member`` to ``state`` (None: being handled, in no waiting list)."""
        if member.state is not None:
            self._states[member.state].pop(member, None)
        member.state = state
        member.since = now
        if state is not None:
            self._states[state][member] = None  # appended: the newest of its state

    def remove(self, member: Member) -> None:
        if member.state is not None:
            self._states[member.state].pop(member, None)
            member.state = None
        self._open.discard(member)

    def full(self) -> bool:
        return len(self._open) >= self.limits.max_connections

    def shed_candidate(self, now: float) -> Member | None:
        """The least recently active waiting connection that has been open for the grace."""
        best: Member | None = None
        for members in self._states.values():
            for member in members:  # oldest first; the first old enough is this state's pick
                if now - member.connected_at >= self.limits.shed_grace:
                    if best is None or member.since < best.since:
                        best = member
                    break
                if best is not None and member.since >= best.since:
                    break
        return best

    def expired(self, now: float) -> list[Member]:
        """Connections whose state's deadline has passed (each list is oldest first)."""
        out: list[Member] = []
        for state, members in self._states.items():
            limit = now - timeout_of(self.limits, state)
            for member in members:
                if member.since > limit:
                    break
                out.append(member)
        return out


class RateLimitedCount:
    """Count events, and say so in the log at most once per ``interval`` seconds."""

    def __init__(self, emit: Callable[[int], None], interval: float = 1.0) -> None:
        self.total = 0
        self._pending = 0
        self._emit = emit
        self._interval = interval
        self._last = float("-inf")

    def add(self, now: float) -> None:
        self.total += 1
        self._pending += 1
        self.flush(now)

    def flush(self, now: float) -> None:
        if self._pending and now - self._last >= self._interval:
            self._emit(self._pending)
            self._pending = 0
            self._last = now


def descriptor_budget(max_connections: int) -> tuple[int, int]:
    """Raise the open-file limit toward what ``max_connections`` needs; return (cap, limit).

    The cap comes back lowered when the hard limit is too small, so the server refuses with
    ``busy`` instead of failing accept() with EMFILE.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = max_connections + FD_HEADROOM
    if soft != resource.RLIM_INFINITY and soft < want:
        target = want if hard == resource.RLIM_INFINITY else min(want, hard)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):
            pass
    if soft == resource.RLIM_INFINITY:
        return max_connections, soft
    return max(1, min(max_connections, soft - FD_HEADROOM)), soft
