"""The EIF metadata section: JSON written by the builder (not measured)."""

from __future__ import annotations

import json
import math
from typing import Any

from nitro_attest.eif.format import EifError


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise EifError(f"metadata section: duplicate JSON key {key[:40]!r}")
        out[key] = value
    return out


def _no_constants(name: str) -> Any:
    raise EifError(f"metadata section: {name} is not valid JSON")


MAX_DIGITS = 4300
"""Python's own limit for int(str) (sys.int_info.str_digits_check_threshold's default): past it
json.loads raises a ValueError of its own; refuse before, and alike for floats."""


def _number_text(text: str) -> None:
    if len(text) > MAX_DIGITS:
        raise EifError(f"metadata section: a number of {len(text)} digits (at most {MAX_DIGITS})")


def _int(text: str) -> int:
    _number_text(text)
    return int(text)


def _float(text: str) -> float:
    _number_text(text)
    value = float(text)
    if math.isinf(value):
        raise EifError(f"metadata section: number {text[:40]} is out of range")
    return value


def parse_metadata(data: bytes) -> dict[str, Any]:
    """Parse and shape-check: ImageName, ImageVersion (strings), BuildMetadata (object),
    DockerInfo (any), CustomMetadata (object or null)."""
    try:
        value = json.loads(
            data.decode("utf-8"),
            object_pairs_hook=_no_duplicates,
            parse_constant=_no_constants,
            parse_int=_int,
            parse_float=_float,
        )
    except UnicodeDecodeError:
        raise EifError("metadata section: not UTF-8") from None
    except RecursionError:
        raise EifError("metadata section: JSON nested too deeply") from None
    except json.JSONDecodeError as exc:
        raise EifError(f"metadata section: invalid JSON: {exc.msg} at byte {exc.pos}") from None
    if not isinstance(value, dict):
        raise EifError("metadata section: expected a JSON object")
    for key in ("ImageName", "ImageVersion"):
        if not isinstance(value.get(key), str):
            raise EifError(f"metadata section: {key} must be a string")
    if not isinstance(value.get("BuildMetadata"), dict):
        raise EifError("metadata section: BuildMetadata must be an object")
    custom = value.get("CustomMetadata")
    if custom is not None and not isinstance(custom, dict):
        raise EifError("metadata section: CustomMetadata must be an object or null")
    return value


def describe_metadata(metadata: dict[str, Any]) -> dict[str, Any]:
    """describe-eif's Metadata object: build info, DockerInfo, then custom keys flattened."""
    out: dict[str, Any] = dict(metadata["BuildMetadata"])
    out["DockerInfo"] = metadata.get("DockerInfo")
    custom = metadata.get("CustomMetadata")
    if isinstance(custom, dict):
        out.update(custom)
    return out
