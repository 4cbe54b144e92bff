"""The policies file: every mistake is one clear PolicyError, never "no constraint"."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from nitro_attest import PolicyError
from nitro_attest.service.policies import load_policies, parse_policies

from .servicekit import MEASUREMENTS, build_enclave_json

GOOD = {"expected": [build_enclave_json(MEASUREMENTS)]}


def _parse(data: Any) -> Any:
    return parse_policies(json.dumps(data).encode(), "p.json")


def test_good_file_with_defaults_and_options() -> None:
    ps = _parse({"default": "a", "policies": {
        "a": GOOD,
        "b-2": {**GOOD, "kind": "nitrotpm", "allow_debug": True, "max_age": 300},
    }})  # fmt: skip
    assert ps.default == "a" and ps.get(None) is ps.policies["a"]
    a, b = ps.policies["a"], ps.policies["b-2"]
    assert (a.kind, a.allow_debug, a.max_age) == ("enclave", False, None)
    assert (b.kind, b.allow_debug, b.max_age) == ("nitrotpm", True, 300.0)
    assert dict(a.pcr_sets[0]) == MEASUREMENTS
    assert a.with_nonce(b"n" * 8).nonce == b"n" * 8
    assert ps.get("missing") is None


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ([], "expected a JSON object"),
        ({"default": "a", "policies": {"a": GOOD}, "extra": 1}, "unknown field(s) extra"),
        ({"default": "b", "policies": {"a": GOOD}}, "'default' must name one"),
        ({"default": "a", "policies": {}}, "non-empty object"),
        ({"default": "a", "policies": {"a": {**GOOD, "allowDebug": True}}}, "unknown field"),
        ({"default": "a", "policies": {"a": {"expected": []}}}, "non-empty list"),
        ({"default": "a", "policies": {"a": {}}}, "non-empty list"),
        ({"default": "a", "policies": {"a": {"expected": [{"Measurements": {}}]}}},
         "no PCR values"),
        ({"default": "a", "policies": {"a": {"expected": [{"Measurements": {"PCR0": "zz"}}]}}},
         "not valid hex"),
        ({"default": "a", "policies": {"a": {**GOOD, "kind": "tpm"}}}, "'kind' must be"),
        ({"default": "a", "policies": {"a": {**GOOD, "allow_debug": "yes"}}}, "true or false"),
        ({"default": "a", "policies": {"a": {**GOOD, "max_age": 0}}}, "positive number"),
        ({"default": "a", "policies": {"a": {**GOOD, "max_age": True}}}, "positive number"),
        ({"default": "a b", "policies": {"a b": GOOD}}, "a name is"),
    ],
)
def test_invalid_files_are_refused(data: Any, message: str) -> None:
    with pytest.raises(PolicyError, match=message.replace("(", r"\(").replace(")", r"\)")):
        _parse(data)


def test_unreadable_and_not_json(tmp_path: Path) -> None:
    with pytest.raises(PolicyError, match="cannot read policies"):
        load_policies(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{")
    with pytest.raises(PolicyError, match="not valid JSON"):
        load_policies(bad)
