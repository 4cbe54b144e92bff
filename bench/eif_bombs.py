"""Benchmark: what hostile images cost `nitro-attest eif build` (docs/eif.md, "Memory and work
bounds"). Each bomb is generated in a temp dir (deleted afterwards) and built by the CLI in a
fresh process; its exit status, wall time, peak RSS (the child's own VmHWM) and first error line
are printed, best and spread over the rounds.

    python bench/eif_bombs.py                 # every bomb, 3 rounds
    python bench/eif_bombs.py --only long-names --rounds 1

Bombs:
  long-names    20,000 empty files with 4 KB GNU long names (2,041 components) in one gzip layer
  long-names-5x the same with 100,000 members (past the 64,000,000-component work bound)
  whiteouts     4 gzip layers of 300,000 whiteouts each (past the 1,000,000-entry bound)
  headers       one gzip layer of 4,100,000 global PAX headers, no member (past the header bound)
  repeat        a docker save naming one 1 MiB layer 256 times
"""

from __future__ import annotations

import _bootstrap  # noqa: F401  # first: runnable as python3 bench/NAME.py from a clone

# isort: split

import argparse
import hashlib
import io
import json
import os
import random
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
import zlib
from collections.abc import Callable
from pathlib import Path

MEASURED = """
import sys
from nitro_attest._cli import main
rc = main(sys.argv[1:])
with open("/proc/self/status") as fh:
    hwm = next(line.split()[1] for line in fh if line.startswith("VmHWM:"))
sys.stderr.write(f"VmHWM {hwm}\\n")
sys.exit(rc)
"""


def gz(chunks: Callable[[], list[bytes]]) -> bytes:
    deflate = zlib.compressobj(6, wbits=31)
    return b"".join([*(deflate.compress(c) for c in chunks()), deflate.flush()])


def long_names(members: int) -> bytes:
    prefix = "d/" * 2040
    unit = tarfile.TarInfo(prefix + "0" * 7).tobuf(tarfile.GNU_FORMAT)
    at = unit.index(prefix.encode()) + len(prefix)
    head, tail = unit[:at], unit[at + 7 :]
    return gz(lambda: [head + b"%07d" % i + tail for i in range(members)] + [bytes(1024)])


def whiteouts(layer: int, count: int) -> bytes:
    def chunks() -> list[bytes]:
        out = []
        for i in range(count):
            info = tarfile.TarInfo(f"l{layer}/.wh.f{i:07d}")
            out.append(info.tobuf(tarfile.USTAR_FORMAT))
        return [b"".join(out), bytes(1024)]

    return gz(chunks)


def global_headers(count: int) -> bytes:
    info = tarfile.TarInfo("pax_global_header")
    info.type = tarfile.XGLTYPE
    one = info.tobuf(tarfile.USTAR_FORMAT)  # size 0: a header block and nothing else
    block = one * 10_000
    return gz(lambda: [block] * (count // 10_000) + [bytes(1024)])


def config() -> bytes:
    cfg = {"Cmd": ["/app"], "Env": ["PATH=/bin"]}
    return json.dumps({"architecture": "amd64", "os": "linux", "config": cfg}).encode()


def oci(root: Path, layers: list[bytes]) -> Path:
    def put(data: bytes) -> dict[str, object]:
        digest = hashlib.sha256(data).hexdigest()
        path = root / "blobs" / "sha256" / digest
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        return {"mediaType": "application/octet-stream", "digest": f"sha256:{digest}",
                "size": len(data)}  # fmt: skip

    manifest = json.dumps({"schemaVersion": 2, "config": put(config()),
                           "layers": [put(x) for x in layers]}).encode()  # fmt: skip
    (root / "index.json").write_text(json.dumps({"schemaVersion": 2,
                                                 "manifests": [put(manifest)]}))  # fmt: skip
    return root


def repeat(root: Path) -> Path:
    rng = random.Random(1)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        info = tarfile.TarInfo("app")
        info.size = 1 << 20
        tar.addfile(info, io.BytesIO(rng.randbytes(1 << 20)))
    cfg = config()
    manifest = [{"Config": "c.json", "RepoTags": ["bomb:1"], "Layers": ["l/layer.tar"] * 256}]
    out = root / "save.tar"
    with tarfile.open(out, "w") as tar:
        for name, data in (("c.json", cfg), ("manifest.json", json.dumps(manifest).encode()),
                           ("l/layer.tar", buf.getvalue())):  # fmt: skip
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return out


def blobs(root: Path) -> Path:
    root.mkdir()
    (root / "bzImage").write_bytes(os.urandom(1 << 20))
    (root / "init").write_bytes(b"\x7fELF init")
    (root / "nsm.ko").write_bytes(b"\x7fELF nsm")
    (root / "cmdline").write_text("console=ttyS0")
    return root


BOMBS: dict[str, Callable[[Path], Path]] = {
    "long-names": lambda d: oci(d, [long_names(20_000)]),
    "long-names-5x": lambda d: oci(d, [long_names(100_000)]),
    "whiteouts": lambda d: oci(d, [whiteouts(i, 300_000) for i in range(4)]),
    "headers": lambda d: oci(d, [global_headers(4_100_000)]),
    "repeat": repeat,
}


def input_size(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def run(image: Path, blob_dir: Path, out: Path) -> tuple[int, float, float, str]:
    t0 = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-c", MEASURED, "eif", "build", "--image", str(image),
         "--blobs", str(blob_dir), "--output", str(out)],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, check=False,
    )  # fmt: skip
    wall = time.perf_counter() - t0
    lines = proc.stderr.strip().splitlines()
    hwm = int(lines[-1].split()[1]) / 1024 if lines and lines[-1].startswith("VmHWM") else -1.0
    return proc.returncode, wall, hwm, (lines[0] if len(lines) > 1 else "")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--only", action="append", choices=sorted(BOMBS))
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="eif-bombs-") as tmp:
        base = Path(tmp)
        blob_dir = blobs(base / "blobs")
        for name in args.only or list(BOMBS):
            folder = base / name
            folder.mkdir()
            image = BOMBS[name](folder)
            walls, peaks = [], []
            rc, first = 0, ""
            for _ in range(args.rounds):
                rc, wall, hwm, first = run(image, blob_dir, base / "out.eif")
                walls.append(wall)
                peaks.append(hwm)
            spread = f"{min(walls):.2f}-{max(walls):.2f}s" if len(walls) > 1 else ""
            print(f"{name}: input {input_size(image) / 1024:.0f} KiB, exit {rc}, "
                  f"wall best {min(walls):.2f}s median {statistics.median(walls):.2f}s "
                  f"({spread}), peak RSS {max(peaks):.0f} MiB")  # fmt: skip
            if first:
                print(f"    {first[:160]}")


if __name__ == "__main__":
    main()
