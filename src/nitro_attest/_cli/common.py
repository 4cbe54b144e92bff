"""Helpers shared by the subcommands: errors, hex parsing, reading document files."""

from __future__ import annotations

import sys
from pathlib import Path

from nitro_attest.errors import NitroAttestError, UsageError, VerificationError

EXIT_OK = 0
EXIT_REJECTED = 1
EXIT_USAGE = 2
EXIT_UNCONFIRMED = 3  # send-secret: sent, not acknowledged; never retry blindly on it


class CliError(UsageError):
    """A usage or I/O error: printed as one line, exit code 2."""


def exit_code_for(exc: NitroAttestError) -> int:
    """The exit code for an error, read from the error tree (see nitro_attest.errors)."""
    return EXIT_REJECTED if isinstance(exc, VerificationError) else EXIT_USAGE


def parse_hex(value: str, what: str, *, max_bytes: int | None = None) -> bytes:
    """Parse a hex flag value; '0x' prefix, ':' and whitespace separators are tolerated."""
    text = value.strip()
    if text[:2].lower() == "0x":
        text = text[2:]
    text = text.replace(":", "").replace(" ", "")
    if not text:
        raise CliError(f"{what}: empty value (an empty expectation is not allowed)")
    try:
        data = bytes.fromhex(text)
    except ValueError:
        raise CliError(f"{what}: not valid hex: {value[:40]!r}") from None
    if max_bytes is not None and len(data) > max_bytes:
        raise CliError(f"{what}: {len(data)} bytes, at most {max_bytes} allowed")
    return data


def read_bytes(path: str, *, limit: int, what: str = "file") -> bytes:
    """Read a file (or stdin for '-') refusing more than ``limit`` bytes."""
    data = peek_bytes(path, limit + 1, what=what)
    if len(data) > limit:
        raise CliError(f"{path}: {what} larger than {limit} bytes")
    return data


def peek_bytes(path: str, count: int, *, what: str = "file") -> bytes:
    """The first ``count`` bytes of a file (or stdin for '-'), with one-line errors."""
    try:
        if path == "-":
            data = sys.stdin.buffer.read(count)
        else:
            p = Path(path)
            if p.is_dir():
                raise CliError(f"{path}: is a directory")
            with p.open("rb") as fh:
                data = fh.read(count)
    except OSError as exc:
        raise file_error(path, exc, what) from None
    return data


def file_error(path: str, exc: OSError, what: str = "") -> CliError:
    """The one-line error for a file that could not be opened or read."""
    if isinstance(exc, FileNotFoundError):
        return CliError(f"{path}: no such file")
    if isinstance(exc, PermissionError):
        return CliError(f"{path}: permission denied")
    return CliError(f"{path}: cannot read{' ' + what if what else ''}: {exc.strerror or exc}")
