"""The one map from ``Limits`` fields to command-line flags, and flags back to a ``Limits``.

The library checks every limit (server_limits.Limits) and names the field; the commands only say
which flag sets which field, so an error reads with the flag the user typed.
"""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Mapping

from nitro_attest._cli.common import CliError
from nitro_attest.server_limits import Limits, LimitsError

# The flag of each field, where a command does not name it otherwise (serve: --read-timeout).
FLAGS: Mapping[str, str] = {
    "max_connections": "--max-connections",
    "max_per_peer": "--max-per-peer",
    "idle_timeout": "--idle-timeout",
    "header_timeout": "--header-timeout",
    "frame_deadline": "--frame-deadline",
    "write_timeout": "--write-timeout",
    "max_header_bytes": "--max-header-bytes",
    "max_header_lines": "--max-header-lines",
    "max_frame_bytes": "--max-frame-bytes",
    "shed_grace": "--shed-grace",
    "drain_timeout": "--drain-timeout",
}


def flag_of(field: str, renamed: Mapping[str, str] | None = None) -> str:
    """The flag that sets ``field`` for a command (``renamed``: its own names)."""
    return (renamed or {}).get(field) or FLAGS.get(field, field)


def _dest(flag: str) -> str:
    return flag.lstrip("-").replace("-", "_")


def limits_from_args(
    args: argparse.Namespace,
    defaults: Limits,
    fields: tuple[str, ...],
    renamed: Mapping[str, str] | None = None,
) -> Limits:
    """``defaults`` with each of ``fields`` taken from its flag; a bad value is a CliError
    naming the flag."""
    values = {name: getattr(args, _dest(flag_of(name, renamed))) for name in fields}
    try:
        return dataclasses.replace(defaults, **values)
    except LimitsError as exc:
        raise CliError(f"{flag_of(exc.field, renamed)} {exc.problem}") from None
