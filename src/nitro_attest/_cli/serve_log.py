"""The server's log on stderr: one line per request, cheap to format, written a turn at a time.

The per-request line is part of the server's own CPU per request (bench/server.py), so the time
stamp is formatted once per second rather than once per line, and the server's lines per request
(``request``, the server's RequestLog) are held until it ends its turn and calls ``flush``, before
the turn's answers are sent: one write per turn, not one per request, and the log never lags
behind what clients saw. Every other record (startup, warnings, the channel's lines) is written
at once. Times are UTC; ``log_format="json"`` writes one JSON object per line
(nitro_attest.logs).
"""

from __future__ import annotations

import logging
import time
from typing import TextIO

from nitro_attest.logs import json_line

_TIME_FORMAT = "%Y-%m-%dT%H:%M:%SZ"
_REQUEST_LOGGER = "nitro_attest.wire.server"


class ServerLogHandler(logging.Handler):
    def __init__(self, stream: TextIO, log_format: str = "text") -> None:
        super().__init__()
        self._stream = stream
        self._json = log_format == "json"
        self._stamp_second = -1
        self._stamp = ""
        self._held: list[str] = []

    def _stamp_for(self, created: float) -> str:
        second = int(created)
        if second != self._stamp_second:  # strftime once per second, not once per line
            self._stamp = time.strftime(_TIME_FORMAT, time.gmtime(second))
            self._stamp_second = second
        return self._stamp

    def format(self, record: logging.LogRecord) -> str:
        exc = logging.Formatter().formatException(record.exc_info) if record.exc_info else None
        if self._json:
            message = record.getMessage()
            return json_line(record.created, record.levelname, record.name, message, exc)
        line = f"{self._stamp_for(record.created)} {record.levelname} {record.getMessage()}"
        if exc:
            line += "\n" + exc
        return line

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = self.format(record) + "\n"
        except Exception:
            self.handleError(record)
            return
        self._write(line)

    def request(self, line: str) -> None:
        """The server's line per request (RequestLog): held until ``flush``."""
        if self._json:
            self._held.append(json_line(time.time(), "INFO", _REQUEST_LOGGER, line) + "\n")
        else:
            self._held.append(f"{self._stamp_for(time.time())} INFO {line}\n")

    def flush(self) -> None:
        if self._held:
            text = "".join(self._held)
            self._held.clear()
            self._write(text)

    def _write(self, text: str) -> None:
        try:
            self._stream.write(text)
            self._stream.flush()
        except (OSError, ValueError):  # stderr closed or gone: the server keeps serving
            pass
