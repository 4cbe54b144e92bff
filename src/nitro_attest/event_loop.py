"""The event loop our own asyncio servers run on: uvloop's when it is installed (the `https` and
`kms-emulator` extras bring it; some 5% less CPU per relayed request, bench/https.py), asyncio's
otherwise. `serve` stays on asyncio's: uvloop is not in the enclave image."""

from __future__ import annotations

import asyncio
from collections.abc import Callable


def fast_loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """``asyncio.Runner``'s ``loop_factory``: uvloop's when installed, else None (asyncio's)."""
    try:
        import uvloop
    except ImportError:
        return None
    factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
    return factory


__all__ = ["fast_loop_factory"]
