"""JSON read strictly: what a person (or a peer) wrote must mean one thing.

Python's ``json`` lets a duplicate key silently win, reads ``NaN`` and ``Infinity``, turns
``1e999`` into ``inf``, converts numbers only up to a process-wide digit limit, and ends a deeply
nested document in a RecursionError. Configuration files (``--expected``, the service's
``--policies``, ``appraise --ear-jwks``), key policies, the KMS emulator's request bodies and EIF
metadata are read here instead: each of those is a one-line ``JsonFormatError``, of a subclass
that says which (and carries what a caller needs to word it its own way: the key, the constant,
the position).
"""

from __future__ import annotations

import json
import math
from typing import Any, NoReturn

from nitro_attest.errors import FormatError

MAX_DEPTH = 32  # far beyond any configuration of ours (the policies file nests 6 deep)
MAX_DIGITS = 4300
"""Python's default limit for int(str) (sys.int_info.default_max_str_digits): past it json.loads
raises a ValueError of its own, or not, as the process set it; refused here before, alike for
floats, so the answer does not depend on that setting."""


class JsonFormatError(FormatError):
    """The bytes are not strict JSON: malformed, a duplicate key, a non-finite number, too deep."""


class JsonSyntaxError(JsonFormatError):
    """Not JSON at all. ``reason`` is the decoder's complaint; ``line``, ``column`` and ``pos``
    (0-based character offset) say where, when the decoder said (else None)."""

    def __init__(
        self, detail: str, reason: str, line: int | None, column: int | None, pos: int | None
    ) -> None:
        super().__init__(f"not valid JSON ({detail})")
        self.detail = detail  # the decoder's whole message, position included
        self.reason = reason
        self.line = line
        self.column = column
        self.pos = pos


class DuplicateKeyError(JsonFormatError):
    """An object names ``key`` twice (which value counts would be a guess)."""

    def __init__(self, key: str) -> None:
        super().__init__(f"key {key[:60]!r} given twice")
        self.key = key


class ConstantError(JsonFormatError):
    """``NaN``, ``Infinity`` or ``-Infinity`` (``name``), which JSON does not have."""

    def __init__(self, name: str) -> None:
        super().__init__(f"{name} is not a JSON number")
        self.name = name


class NumberError(JsonFormatError):
    """A number written with more than MAX_DIGITS characters, or a float out of range."""

    def __init__(self, text: str) -> None:
        self.too_long = len(text) > MAX_DIGITS
        super().__init__(
            f"a number of {len(text)} digits (at most {MAX_DIGITS})"
            if self.too_long
            else f"number {text[:40]} is out of range"
        )
        self.text = text


class TooDeepError(JsonFormatError):
    """Arrays and objects nested more than ``max_depth`` levels."""

    def __init__(self, max_depth: int) -> None:
        super().__init__(f"nested more than {max_depth} levels deep")
        self.max_depth = max_depth


def _object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise DuplicateKeyError(key)
        out[key] = value
    return out


def _constant(name: str) -> NoReturn:
    raise ConstantError(name)


def _int(text: str) -> int:
    if len(text) > MAX_DIGITS:
        raise NumberError(text)
    return int(text)


def _float(text: str) -> float:
    if len(text) > MAX_DIGITS:
        raise NumberError(text)
    value = float(text)
    if math.isinf(value):
        raise NumberError(text)
    return value


def loads(raw: bytes | str, *, max_depth: int = MAX_DEPTH) -> Any:
    """Parse ``raw`` (UTF-8 bytes or text) strictly; raise a JsonFormatError naming the problem."""
    try:
        data = json.loads(
            raw,
            object_pairs_hook=_object,
            parse_constant=_constant,
            parse_int=_int,
            parse_float=_float,
        )
    except RecursionError:
        raise TooDeepError(max_depth) from None
    except json.JSONDecodeError as exc:
        raise JsonSyntaxError(str(exc), exc.msg, exc.lineno, exc.colno, exc.pos) from None
    except (ValueError, UnicodeDecodeError) as exc:  # not from the decoder: no position
        raise JsonSyntaxError(str(exc), str(exc), None, None, None) from None
    _check_depth(data, max_depth)
    return data


def _check_depth(data: Any, max_depth: int) -> None:
    stack: list[tuple[Any, int]] = [(data, 1)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, dict):
            children: Any = node.values()
        elif isinstance(node, list):
            children = node
        else:
            continue
        if depth > max_depth:
            raise TooDeepError(max_depth)
        stack.extend((child, depth + 1) for child in children)
