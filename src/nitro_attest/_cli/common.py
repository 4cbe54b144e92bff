"""Helpers shared by the subcommands: the output contract (docs/cli.md), hex parsing, files."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from nitro_attest.attestation.untrusted_text import escape_untrusted
from nitro_attest.errors import FormatError, NitroAttestError, UsageError, VerificationError

# docs/cli.md, "Exit status": one meaning in every command.
EXIT_OK = 0
EXIT_REJECTED = 1  # the input was read and checked, and the answer is no
EXIT_USAGE = 2  # the check could not be made: usage, I/O, connection, configuration
EXIT_UNCONFIRMED = 3  # send-secret: sent, not acknowledged; never retry blindly on it

ERROR_PREFIX = "nitro-attest: error: "


class CliError(UsageError):
    """A usage or I/O error: printed as one line, exit code 2."""


class CliRejection(FormatError):
    """An input that was read and checked and is refused (a malformed EIF, ...): exit code 1."""

    def __init__(self, message: str, check: str | None = None) -> None:
        super().__init__(message)
        self.check = check


def exit_code_for(exc: NitroAttestError) -> int:
    """The exit code for an error, read from the error tree (see nitro_attest.errors)."""
    if isinstance(exc, VerificationError | CliRejection):
        return EXIT_REJECTED
    return EXIT_USAGE


def print_error(message: str) -> None:
    """The contract's error line on stderr: every failing command prints at least one."""
    print(ERROR_PREFIX + escape_untrusted(message), file=sys.stderr)


def error_json(message: str, check: str | None = None) -> dict[str, Any]:
    """The ``error`` member every --json object carries when it reports a failure."""
    return {"check": None if check is None else str(check), "message": message}


def parse_listen(value: str) -> tuple[str, int]:
    """``--listen [HOST:]PORT`` (the service, the KMS emulator): host 127.0.0.1 unless given,
    IPv6 in brackets; a port outside 1..65535, or not ASCII digits, is a one-line CliError."""
    host, sep, port_text = value.rpartition(":")
    if not sep:
        host, port_text = "", value
    host = host.strip("[]") or "127.0.0.1"
    # isascii: str.isdigit() is true of "²", which int() then refuses with a ValueError
    if not (port_text.isascii() and port_text.isdigit()) or not 0 < int(port_text) < 65536:
        raise CliError(f"--listen {value!r}: expected HOST:PORT with a port in 1..65535")
    return host, int(port_text)


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
