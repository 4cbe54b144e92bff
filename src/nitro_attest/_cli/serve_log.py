"""The server's log on stderr: one line per request, cheap to format.

The per-request line is part of the server's own CPU per request (bench/server.py), so the time
stamp is formatted once per second rather than once per line. Each line is written before the
answer it describes is sent, so the log never lags behind what clients saw.
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

    def format(self, record: logging.LogRecord) -> str:
        second = int(record.created)
        if second != self._stamp_second:  # strftime once per second, not once per line
            self._stamp = time.strftime(_TIME_FORMAT, time.localtime(second))
            self._stamp_second = second
        line = f"{self._stamp} {record.levelname} {record.getMessage()}"
        if record.exc_info:
            line += "\n" + logging.Formatter().formatException(record.exc_info)
        return line

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self._stream.write(self.format(record) + "\n")
            self._stream.flush()
        except (OSError, ValueError):  # stderr closed or gone: the server keeps serving
            pass
        except Exception:
            self.handleError(record)
