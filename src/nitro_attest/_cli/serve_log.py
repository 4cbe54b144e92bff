"""The server's log on stderr: one line per request, written in batches.

A write() per request cost the server about a third of its own CPU per request beside the NSM
(bench/server.py). Lines are gathered and written at most ``delay`` seconds late; a warning or
worse, a full buffer, or the end of the process writes at once.
"""

from __future__ import annotations

import atexit
import logging
import threading
import time
from typing import TextIO

_TIME_FORMAT = "%Y-%m-%dT%H:%M:%S"


class BatchedStreamHandler(logging.Handler):
    def __init__(self, stream: TextIO, *, delay: float = 0.2, max_lines: int = 256) -> None:
        super().__init__()
        self._stream = stream
        self._delay = delay
        self._max_lines = max_lines
        self._lines: list[str] = []
        self._timer: threading.Timer | None = None
        self._stamp_second = -1
        self._stamp = ""
        atexit.register(self.flush)

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
            line = self.format(record)
        except Exception:
            self.handleError(record)
            return
        self._lines.append(line)  # emit() runs under the handler's lock
        if record.levelno >= logging.WARNING or len(self._lines) >= self._max_lines:
            self._write()
        elif self._timer is None:
            self._timer = threading.Timer(self._delay, self.flush)
            self._timer.daemon = True
            self._timer.start()

    def flush(self) -> None:
        self.acquire()
        try:
            self._write()
        finally:
            self.release()

    def _write(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if not self._lines:
            return
        text = "\n".join(self._lines) + "\n"
        self._lines.clear()
        try:
            self._stream.write(text)
            self._stream.flush()
        except (OSError, ValueError):  # stderr closed or gone: the server keeps serving
            pass

    def close(self) -> None:
        self.flush()
        super().close()
