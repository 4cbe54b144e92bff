"""Make a bench runnable as `python3 bench/NAME.py` from a plain clone. Imported first by each one.

If nitro-attest and what the bench needs import already (an installed copy, an active venv, or
the clone's `.venv`), nothing happens. If only nitro-attest itself is missing but its dependencies
import, the clone's `src/` is put on the path. Otherwise the bench says what it is going to
install, and where, then installs it into the clone's `.venv` the way ./test.sh does
(scripts/venv.sh: `python3 -m venv .venv`, `pip install -e '.[EXTRAS]'`) and runs again under that
interpreter. Set NITRO_ATTEST_BENCH_NO_INSTALL=1 to get the one-line error instead.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VENV_PYTHON = ROOT / ".venv" / "bin" / "python"
_REEXEC = "NITRO_ATTEST_BENCH_REEXEC"

# What each bench imports beyond cbor2 + cryptography, and the extra that brings it.
NEEDS: dict[str, tuple[tuple[str, ...], str]] = {
    "service.py": (("fastapi", "uvicorn", "redis", "jwt", "httpx"), "dev"),
    "service_workers.py": (("fastapi", "uvicorn", "redis", "jwt", "httpx"), "dev"),
    "service_soak.py": (("fastapi", "uvicorn", "redis", "jwt", "httpx"), "dev"),
}
BASE = ("cbor2", "cryptography")


def _missing(modules: tuple[str, ...]) -> list[str]:
    return [m for m in modules if importlib.util.find_spec(m) is None]


def fail(message: str) -> None:
    """The bench's one-line error, exit status 2 (a missing file, a missing tool)."""
    print(f"{Path(sys.argv[0]).name}: error: {message}", file=sys.stderr)
    raise SystemExit(2)


def ensure() -> None:
    name = Path(sys.argv[0]).name
    extra_modules, extra = NEEDS.get(name, ((), ""))
    needed = (*BASE, *extra_modules)
    if not _missing(needed) and importlib.util.find_spec("nitro_attest") is not None:
        return
    if not _missing(needed):  # the dependencies are here: use the clone's sources (children too)
        src = str(ROOT / "src")
        sys.path.insert(0, src)
        paths = [src, os.environ.get("PYTHONPATH", "")]
        os.environ["PYTHONPATH"] = os.pathsep.join(p for p in paths if p)
        return
    missing = _missing(needed)
    what = f"nitro-attest[{extra}]" if extra else "nitro-attest"
    if os.environ.get(_REEXEC) or os.environ.get("NITRO_ATTEST_BENCH_NO_INSTALL"):
        fail(f"{', '.join(missing)} not importable; install {what} (pip install -e '.[{extra}]')")
    print(
        f"{name}: {', '.join(missing)} not importable: installing {what} and its dependencies "
        f"into {ROOT / '.venv'} (python3 -m venv, then pip install -e, as ./test.sh does)",
        file=sys.stderr,
    )
    done = subprocess.run(
        ["bash", "-c", '. "$1/scripts/venv.sh" && nitro_attest_ensure_venv "$1" "$2"', "bench",
         str(ROOT), extra],
        check=False,
    )  # fmt: skip
    if done.returncode != 0 or not VENV_PYTHON.exists():
        fail(f"could not install {what} into {ROOT / '.venv'} (see above)")
    os.execve(VENV_PYTHON, [str(VENV_PYTHON), *sys.argv], {**os.environ, _REEXEC: "1"})


def need_file(path: Path, what: str) -> Path:
    """``path`` if it exists, else the one-line error naming it (never a traceback)."""
    if not path.exists():
        fail(f"{path}: no such file ({what})")
    return path


ensure()
