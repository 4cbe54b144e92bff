"""Log lines of the long-running commands (serve, service, proxy): text or JSON, UTC times.

Both formats stamp UTC (RFC 3339 with ``Z``), so lines from the enclave server, the proxy and the
service sort together whatever each host's zone. ``--log-format json`` prints one object per line:
``ts``, ``level``, ``logger``, ``msg`` (and ``exc`` for a traceback), for log shippers that parse
JSON. No payload, nonce or secret is ever logged, in either format (docs/cli.md).
"""

from __future__ import annotations

import json
import logging
import time

FORMATS = ("text", "json")
_SECOND = "%Y-%m-%dT%H:%M:%S"


def utc_stamp(created: float) -> str:
    """``created`` (seconds since the epoch) as 2026-01-31T12:00:00.123Z."""
    millis = int(created * 1000) % 1000
    return f"{time.strftime(_SECOND, time.gmtime(created))}.{millis:03d}Z"


def json_line(created: float, level: str, logger: str, message: str, exc: str | None = None) -> str:
    record = {"ts": utc_stamp(created), "level": level, "logger": logger, "msg": message}
    if exc:
        record["exc"] = exc
    return json.dumps(record, ensure_ascii=False)


class TextFormatter(logging.Formatter):
    """``2026-01-31T12:00:00.123Z INFO message``."""

    def format(self, record: logging.LogRecord) -> str:
        line = f"{utc_stamp(record.created)} {record.levelname} {record.getMessage()}"
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line."""

    def format(self, record: logging.LogRecord) -> str:
        exc = self.formatException(record.exc_info) if record.exc_info else None
        return json_line(record.created, record.levelname, record.name, record.getMessage(), exc)


def formatter(log_format: str) -> logging.Formatter:
    if log_format not in FORMATS:
        raise ValueError(f"log format {log_format!r}: expected one of {', '.join(FORMATS)}")
    return JsonFormatter() if log_format == "json" else TextFormatter()


def uvicorn_log_config(log_format: str) -> dict[str, object]:
    """uvicorn's logging settings in our format, for its loggers and nitro_attest's own."""
    name = "JsonFormatter" if log_format == "json" else "TextFormatter"
    handler = {"class": "logging.StreamHandler", "formatter": "ours", "stream": "ext://sys.stderr"}
    quiet = {"handlers": ["ours"], "level": "INFO", "propagate": False}
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"ours": {"()": f"nitro_attest.logs.{name}"}},
        "handlers": {"ours": handler},
        "loggers": {
            "uvicorn": quiet,
            "uvicorn.error": {"level": "INFO"},
            "uvicorn.access": quiet,
            "nitro_attest": quiet,
        },
    }
