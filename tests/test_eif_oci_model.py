"""Random layer stacks against an independent model of OCI layer semantics (a flat path -> entry
dict, written from image-spec layer.md): the built root filesystem read back must equal the
model's, and whiteouts placed anywhere in their layer must give the same result."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import pytest

from nitro_attest.eif.build import BuildOptions, build_eif

from .oci_helpers import (
    E,
    chardev,
    config_json,
    d,
    f,
    hard,
    layer_tar,
    oci_files,
    opaque,
    ramdisks,
    summary,
    sym,
    whiteout,
    write_blobs,
    write_dir,
)

DIRS = ["a", "b", "a/c", "a/c/e", "b/d"]
LEAVES = ["x", "y", "z"]
MOUNTS = ["dev", "proc", "run", "sys", "tmp", "var"]

Model = dict[str, tuple[Any, ...]]


def _drop(model: Model, path: str) -> None:
    for p in [p for p in model if p == path or p.startswith(path + "/")]:
        del model[p]


def _parents_ok(model: Model, path: str) -> bool:
    parts = path.split("/")
    return all(model.get("/".join(parts[:i]), ("d",))[0] == "d" for i in range(1, len(parts)))


def _add_parents(model: Model, path: str) -> None:
    parts = path.split("/")
    for i in range(1, len(parts)):
        model.setdefault("/".join(parts[:i]), ("d", 0o755, 0, 0, None))


def _random_layer(rng: random.Random, model: Model, n: int) -> list[E]:
    whiteouts: list[E] = []
    for _ in range(rng.randrange(0, 3)):  # whiteouts hide only what lower layers hold
        target = rng.choice(sorted(model) or ["a"])
        if rng.random() < 0.4 and model.get(target, ("?",))[0] == "d":
            whiteouts.append(opaque(target))  # the directory stays, its lower contents go
            for p in [p for p in model if p.startswith(target + "/")]:
                del model[p]
        else:
            whiteouts.append(whiteout(target))
            _drop(model, target)
    entries: list[E] = []
    for i in range(n):
        path = rng.choice([*DIRS, *(f"{dd}/{leaf}" for dd in DIRS for leaf in LEAVES), "top"])
        if not _parents_ok(model, path):
            continue
        kind = rng.choice(["file", "file", "dir", "sym", "hard", "dev", "suid"])
        if kind == "dir":
            mode = rng.choice([0o755, 0o700, 0o1777])
            entries.append(d(path, mode, uid=i))
            if model.get(path, ("?",))[0] != "d":
                _drop(model, path)
            _add_parents(model, path)
            model[path] = ("d", mode, i, 0, None)
            continue
        if kind == "hard":
            files = sorted(p for p, v in model.items() if v[0] == "f" and p != path)
            if not files:
                continue
            target = rng.choice(files)
            if target.startswith(path + "/"):  # linking over its own parent would drop it
                continue
            entries.append(hard(path, target))
            value = model[target]
        elif kind == "sym":
            target = rng.choice(["x", "../y", "/a/c", "c/e/z"])
            if target.startswith("..") and "/" not in path:
                continue
            entries.append(sym(path, target))
            value = ("l", 0o777, 0, 0, target)
        elif kind == "dev":
            entries.append(chardev(path, 1, i))
            value = ("c", 0o666, 0, 0, (1, i))
        else:
            data = rng.randbytes(rng.randrange(0, 40))
            mode = 0o4755 if kind == "suid" else 0o644
            entries.append(f(path, data, mode, uid=i, gid=7))
            value = ("f", mode, i, 7, data)
        _drop(model, path)
        _add_parents(model, path)
        model[path] = value
    layer = entries[:]
    for w in whiteouts:  # anywhere in the layer: the result must not depend on it
        layer.insert(rng.randrange(len(layer) + 1), w)
    return layer


@pytest.mark.parametrize("seed", range(24))
def test_random_layers_match_the_model(seed: int, tmp_path: Path) -> None:
    rng = random.Random(seed)
    model: Model = {}
    layers = [layer_tar(_random_layer(rng, model, rng.randrange(3, 14))) for _ in range(4)]
    src = write_dir(tmp_path / "oci", oci_files(layers, config_json(cmd=["/x"])))
    out = tmp_path / "o.eif"
    build_eif(BuildOptions(src, write_blobs(tmp_path / "blobs"), out))
    for m in MOUNTS:
        model.setdefault(m, ("d", 0o755, 0, 0, None))
    assert summary(ramdisks(out.read_bytes())[1]) == model
