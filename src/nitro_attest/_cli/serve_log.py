"""The server's log on stderr: one line per request, cheap to format, written a turn at a time.

The per-request line is part of the server's own CPU per request (bench/server.py), so the time
stamp is formatted once per second rather than once per line, and the server's lines per request
(``request``, the server's RequestLog) are held until it ends its turn and calls ``flush``, before
the turn's answers are sent: one write per turn, not one per request, and the log never lags
behind what clients saw. Every other record (startup, warnings, the channel's lines) is written
at once.
"""

from __future__ import annotations

import logging
import time
from typing import TextIO

_TIME_FORMAT = "%Y-%m-%dT%H:%M:%S"


class ServerLogHandler(logging.Handler):
    def __init__(self, stream: TextIO) -> None:
        super().__init__()
        self._stream = stream
        self._stamp_second = -1
        self._stamp = ""
        self._held: list[str] = []

    def _stamp_for(self, created: float) -> str:
        second = int(created)
        if second != self._stamp_second:  # strftime once per second, not once per line
            self._stamp = time.strftime(_TIME_FORMAT, time.localtime(second))
            self._stamp_second = second
        return self._stamp

    def format(self, record: logging.LogRecord) -> str:
        line = f"{self._stamp_for(record.created)} {record.levelname} {record.getMessage()}"
        if record.exc_info:
            line += "\n" + logging.Formatter().formatException(record.exc_info)
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
