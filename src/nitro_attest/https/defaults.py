"""The front's default limits, apart from its code so the CLI can show them without asyncio."""

from __future__ import annotations

DEFAULT_MAX_CONNECTIONS = 1024
DEFAULT_HEADER_TIMEOUT = 10.0  # the TLS handshake, and a request head from its first byte
DEFAULT_IDLE_TIMEOUT = 30.0  # between requests, and any silence inside a body
DEFAULT_MAX_HEADER_BYTES = 16 * 1024
DEFAULT_MAX_HEADER_LINES = 100
DEFAULT_APP_TIMEOUT = 60.0  # connect to the app and wait for its answer's head
DEFAULT_DRAIN_TIMEOUT = 10.0
