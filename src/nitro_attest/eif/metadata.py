"""The EIF metadata section: JSON written by the builder (not measured)."""

from __future__ import annotations

from typing import Any

from nitro_attest.codec import strict_json
from nitro_attest.eif.format import EifError

MAX_DEPTH = 128
"""serde_json's default recursion limit (nitro-cli, which writes this section, reads its
--metadata file with serde_json); looser than a configuration file's 32 on purpose."""


def parse_metadata(data: bytes) -> dict[str, Any]:
    """Parse and shape-check: ImageName, ImageVersion (strings), BuildMetadata (object),
    DockerInfo (any), CustomMetadata (object or null)."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise EifError("metadata section: not UTF-8") from None
    try:  # strict: a duplicate key, NaN, a number Python would not convert, deep nesting
        value = strict_json.loads(text, max_depth=MAX_DEPTH)
    except strict_json.DuplicateKeyError as exc:
        raise EifError(f"metadata section: duplicate JSON key {exc.key[:40]!r}") from None
    except strict_json.ConstantError as exc:
        raise EifError(f"metadata section: {exc.name} is not valid JSON") from None
    except strict_json.TooDeepError:
        raise EifError("metadata section: JSON nested too deeply") from None
    except strict_json.JsonSyntaxError as exc:
        where = "" if exc.pos is None else f" at byte {exc.pos}"
        raise EifError(f"metadata section: invalid JSON: {exc.reason[:80]}{where}") from None
    except strict_json.JsonFormatError as exc:  # a number too long or out of range
        raise EifError(f"metadata section: {exc.message}") from None
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
