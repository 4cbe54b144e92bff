"""Imports point from the CLI down to the formats, never back (docs/architecture.md)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from .conftest import REPO

SRC = REPO / "src"
LAYERS = {
    "formats": 0,
    "trust": 1,
    "verifier": 2,
    "backends": 3,
    "services": 4,
    "front": 5,
}
MODULES = {
    "nitro_attest.errors": "formats",
    "nitro_attest.cbor_strict": "formats",
    "nitro_attest.cose": "formats",
    "nitro_attest.document": "formats",
    "nitro_attest.encoding": "formats",
    "nitro_attest.nsm.backend": "formats",
    "nitro_attest.nsm.messages": "formats",
    "nitro_attest.eif.format": "formats",
    "nitro_attest.eif.metadata": "formats",
    "nitro_attest.protocol": "formats",
    "nitro_attest.channel.keys": "formats",
    "nitro_attest.channel.seal": "formats",
    "nitro_attest.trust": "trust",
    "nitro_attest.policy": "trust",
    "nitro_attest.report": "verifier",
    "nitro_attest.verifier": "verifier",
    "nitro_attest.nsm.measurements": "backends",
    "nitro_attest.nsm.client": "backends",
    "nitro_attest.nsm.device": "backends",
    "nitro_attest.nsm.sim_state": "backends",
    "nitro_attest.nsm.simulator": "backends",
    "nitro_attest.eif.reader": "backends",
    "nitro_attest.eif.measure": "backends",
    "nitro_attest.eif.signature": "backends",
    "nitro_attest.eif.writer": "backends",
    "nitro_attest.nitro_cli": "backends",
    "nitro_attest.transport": "services",
    "nitro_attest.admission": "services",
    "nitro_attest.enclave": "services",
    "nitro_attest.client": "services",
    "nitro_attest.channel.replay": "services",
    "nitro_attest.channel.enclave": "services",
    "nitro_attest.channel.client": "services",
    "nitro_attest.channel.wire": "services",
}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _layer(module: str) -> str | None:
    if module == "nitro_attest.cli" or module.startswith("nitro_attest.cli."):
        return "front"
    return MODULES.get(module)


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
    return {m for m in found if m.startswith("nitro_attest")}


FILES = sorted(SRC.rglob("*.py"))


def test_every_module_has_a_layer() -> None:
    packages = {"nitro_attest", "nitro_attest.nsm", "nitro_attest.eif", "nitro_attest.channel"}
    unknown = [m for m in map(_module_name, FILES) if m not in packages and _layer(m) is None]
    assert unknown == [], "add new modules to MODULES (and docs/architecture.md)"


@pytest.mark.parametrize("path", FILES, ids=lambda p: _module_name(p))
def test_imports_point_downward(path: Path) -> None:
    layer = _layer(_module_name(path))
    if layer is None:
        return  # package __init__ files re-export; they are checked through their modules
    for imported in _imports(path):
        target = _layer(imported)
        if target is None:
            continue  # a package or a name inside a module (checked via its module)
        assert LAYERS[target] <= LAYERS[layer], (
            f"{_module_name(path)} ({layer}) imports {imported} ({target})"
        )
