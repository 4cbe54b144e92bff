"""Every name of the public API, and every public method and property of its classes, says what it
is in a docstring (ruff's D1 rules enforce the same on the modules it is built from)."""

from __future__ import annotations

import inspect

import pytest

import nitro_attest


def _public_members(obj: object) -> list[tuple[str, object]]:
    members = []
    for name, value in vars(obj).items():
        if name.startswith("_"):
            continue
        if isinstance(value, property):
            members.append((name, value.fget))
        elif inspect.isfunction(value) or isinstance(value, classmethod | staticmethod):
            members.append((name, getattr(value, "__func__", value)))
    return members


NAMES = [name for name in nitro_attest.__all__ if name != "__version__"]


@pytest.mark.parametrize("name", NAMES)
def test_public_name_has_a_docstring(name: str) -> None:
    value = getattr(nitro_attest, name)
    assert (value.__doc__ or "").strip(), f"nitro_attest.{name} has no docstring"
    if inspect.isclass(value) and value.__module__.startswith("nitro_attest"):
        missing = [m for m, fn in _public_members(value) if not (fn.__doc__ or "").strip()]
        assert not missing, f"nitro_attest.{name}: no docstring on {missing}"
