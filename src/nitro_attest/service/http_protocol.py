"""uvicorn's httptools protocol, writing each response to the socket once instead of twice.

uvicorn writes a response's head as soon as the app starts it and the body when it comes, and
uvloop sends each write at once: two loopback sends per response, about 50 us of CPU each here,
the largest cost of a session after the verification itself (bench/service.py). This protocol
hands uvicorn a transport that gathers the writes of one loop iteration and sends them together
when the loop next runs its callbacks; close() sends what is pending first, so a response is
never cut, and a ``100 Continue`` goes out before the loop waits for the body.
"""

from __future__ import annotations

import asyncio
from typing import Any, cast

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol


class _GatheringTransport:
    """Forwards everything to the real transport, except that writes wait for the loop's next
    round of callbacks and then go out as one."""

    def __init__(self, transport: asyncio.Transport) -> None:
        self._transport = transport
        self._pending: list[bytes] = []

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if not data:
            return
        if not self._pending:
            asyncio.get_running_loop().call_soon(self._flush)
        self._pending.append(bytes(data))

    def _flush(self) -> None:
        pending, self._pending = self._pending, []
        if pending and not self._transport.is_closing():
            self._transport.write(pending[0] if len(pending) == 1 else b"".join(pending))

    def close(self) -> None:
        self._flush()
        self._transport.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


class GatheringHttpToolsProtocol(HttpToolsProtocol):
    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(cast(asyncio.Transport, _GatheringTransport(transport)))
