"""Which nonces the enclave issued channel documents for, each accepted at most once.

Bounded memory: entries expire after ``ttl`` seconds and at most ``max_entries`` are kept (the
oldest is dropped first, which can only make a late delivery fail, never let a replay in). A used
nonce stays as a tombstone until it expires, so it cannot be issued again; and since each sealed
message is bound to the document's hash, a re-issued nonce would not reopen an old message either.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from nitro_attest.channel.keys import AdvertisedKey
from nitro_attest.errors import ChannelError

DEFAULT_TTL = 300.0
DEFAULT_MAX_ENTRIES = 4096


@dataclass(frozen=True, slots=True)
class Issued:
    """A document the enclave issued for a nonce: what a sealed message must be bound to."""

    advertised: AdvertisedKey
    document_sha384: bytes  # the digest, not the ~4.5 KiB document: memory stays small


@dataclass(slots=True)
class _Entry:
    issued: Issued
    expires: float
    used: bool = False


class NonceLedger:
    def __init__(
        self,
        *,
        ttl: float = DEFAULT_TTL,
        max_entries: int = DEFAULT_MAX_ENTRIES,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not ttl > 0:
            raise ValueError(f"ttl must be > 0 seconds, got {ttl}")
        if max_entries < 1:
            raise ValueError(f"max_entries must be >= 1, got {max_entries}")
        self._ttl = ttl
        self._max = max_entries
        self._clock = clock
        self._entries: OrderedDict[bytes, _Entry] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        with self._lock:
            self._expire(self._clock())
            return len(self._entries)

    def issue(self, nonce: bytes, issued: Issued) -> None:
        """Remember a nonce; refuse one already known (pending or used)."""
        with self._lock:
            now = self._clock()
            self._expire(now)
            if nonce in self._entries:
                raise ChannelError("nonce already used for a channel document", reason="replay")
            while len(self._entries) >= self._max:
                self._entries.popitem(last=False)
            self._entries[nonce] = _Entry(issued, now + self._ttl)

    def pending(self, nonce: bytes) -> Issued:
        """The issued record for a nonce that may still receive its sealed message."""
        with self._lock:
            entry = self._live(nonce)
            return entry.issued

    def consume(self, nonce: bytes) -> None:
        """Mark a nonce used; raise if it was used meanwhile (two deliveries racing)."""
        with self._lock:
            self._live(nonce).used = True

    def _live(self, nonce: bytes) -> _Entry:
        self._expire(self._clock())
        entry = self._entries.get(nonce)
        if entry is None:
            raise ChannelError(
                "no channel document was issued for this nonce (unknown or expired)",
                reason="unknown_nonce",
            )
        if entry.used:
            raise ChannelError(
                "a sealed message was already accepted for this nonce (replay)", reason="replay"
            )
        return entry

    def _expire(self, now: float) -> None:
        # Entries share one ttl, so insertion order is expiry order.
        while self._entries:
            nonce, entry = next(iter(self._entries.items()))
            if entry.expires > now:
                break
            del self._entries[nonce]
