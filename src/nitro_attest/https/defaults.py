"""The front's defaults apart from its code, so the CLI can show them without asyncio.

Its connection limits are ``server_limits.HTTPS_LIMITS`` (one ``Limits`` type for every server).
"""

from __future__ import annotations

DEFAULT_APP_TIMEOUT = 60.0  # connect to the app and wait for its answer's head
