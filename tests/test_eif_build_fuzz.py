"""Threat model: image builder. Mutated image tarballs (bit flips, truncations, spliced bytes)
either build or are refused with an EifError; no other exception, no hang."""

from __future__ import annotations

import random
from pathlib import Path

from nitro_attest.eif.build import BuildOptions, build_eif
from nitro_attest.eif.format import EifError

from .oci_helpers import (
    chardev,
    config_json,
    d,
    docker_save_files,
    f,
    hard,
    layer_tar,
    sym,
    whiteout,
    write_blobs,
    write_tar,
)

LAYERS = [
    layer_tar(
        [
            d("etc"),
            f("etc/a", b"a" * 700),
            sym("etc/l", "a"),
            hard("etc/h", "etc/a"),
            chardev("null", 1, 3),
            f("x/" + "n" * 150, b"long"),
        ]
    ),
    layer_tar([whiteout("etc/a"), f("etc/b", b"b")]),
]


def _mutate(rng: random.Random, data: bytes) -> bytes:
    buf = bytearray(data)
    kind = rng.randrange(4)
    if kind == 0:
        for _ in range(rng.randrange(1, 8)):
            buf[rng.randrange(len(buf))] ^= 1 << rng.randrange(8)
    elif kind == 1:
        del buf[rng.randrange(len(buf)) :]
    elif kind == 2:
        at = rng.randrange(len(buf))
        buf[at:at] = rng.randbytes(rng.randrange(1, 600))
    else:
        at = rng.randrange(len(buf) - 16)
        buf[at : at + 12] = rng.choice([b"999999999999", b"\x80" + b"\xff" * 11, b"0" * 12])
    return bytes(buf)


def test_mutated_images_are_built_or_refused(tmp_path: Path) -> None:
    rng = random.Random(15)
    blobs = write_blobs(tmp_path / "blobs")
    clean = write_tar(tmp_path / "clean.tar", docker_save_files(LAYERS, config_json(cmd=["/x"])))
    raw = clean.read_bytes()
    outcomes = {"built": 0, "refused": 0}
    for i in range(150):
        src = tmp_path / f"m{i}.tar"
        src.write_bytes(_mutate(rng, raw))
        try:
            build_eif(BuildOptions(src, blobs, tmp_path / "o.eif"))
            outcomes["built"] += 1
        except EifError as exc:
            assert "\n" not in str(exc)
            outcomes["refused"] += 1
        src.unlink()
    assert outcomes["built"] and outcomes["refused"]
