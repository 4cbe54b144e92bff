"""JSON configuration read strictly: what a person wrote must mean one thing.

Python's ``json`` lets a duplicate key silently win, reads ``NaN``, ``Infinity`` and ``1e999``
(as inf), and ends a deeply nested document in a RecursionError. Configuration files
(``--expected``, the service's ``--policies``, ``appraise --ear-jwks``) are read here instead: a
duplicate key, a non-finite number or nesting deeper than ``MAX_DEPTH`` is a one-line
``JsonFormatError``.
"""

from __future__ import annotations

import json
import math
from typing import Any, NoReturn

from nitro_attest.errors import FormatError

MAX_DEPTH = 32  # far beyond any configuration of ours (the policies file nests 6 deep)


class JsonFormatError(FormatError):
    """The bytes are not strict JSON: malformed, a duplicate key, a non-finite number, too deep."""


def _object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise JsonFormatError(f"key {key[:60]!r} given twice")
        out[key] = value
    return out


def _constant(name: str) -> NoReturn:
    raise JsonFormatError(f"{name} is not a JSON number")


def _float(text: str) -> float:
    # 1e999 is valid JSON syntax but float() makes it inf: as non-finite as the word Infinity.
    value = float(text)
    if not math.isfinite(value):
        raise JsonFormatError(f"{text[:40]} is not a finite number (beyond a double's range)")
    return value


def loads(raw: bytes | str, *, max_depth: int = MAX_DEPTH) -> Any:
    """Parse ``raw`` (UTF-8 bytes or text) strictly; raise JsonFormatError naming the problem."""
    try:
        data = json.loads(
            raw, object_pairs_hook=_object, parse_constant=_constant, parse_float=_float
        )
    except RecursionError:
        raise JsonFormatError(f"nested more than {max_depth} levels deep") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise JsonFormatError(f"not valid JSON ({exc})") from None
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
            raise JsonFormatError(f"nested more than {max_depth} levels deep")
        stack.extend((child, depth + 1) for child in children)
