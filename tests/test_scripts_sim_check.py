"""cleanup.sh --simulate recognises its server whatever the load (issue 21, item 16).

`na_is_sim_server` used to pipe `printf` into `grep -q` under `pipefail`: grep exits at its first
match, printf then dies of SIGPIPE and the check fails, orphaning the server. A command line
longer than a pipe buffer makes that happen every time.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from .paths import REPO

SCRIPT = """
set -euo pipefail
NA_ROOT="$1" NA_PROG=test
source "$1/scripts/aws-common.sh"
if na_is_sim_server "$2" "$3"; then echo yes; else echo no; fi
"""


@pytest.mark.parametrize(
    ("listen", "padding", "want"),
    [("SOCK", 300, "yes"), ("SOCK", 0, "yes"), ("OTHER", 300, "no")],
)
def test_recognises_a_long_command_line_under_pipefail(
    tmp_path: Path, listen: str, padding: int, want: str
) -> None:
    sock = tmp_path / "enclave.sock"
    other = tmp_path / "other.sock"
    served = sock if listen == "SOCK" else other
    # argv[0] ends in /nitro-attest, then `serve --listen unix://...`, then 300 KiB of padding:
    # far more than a pipe buffer, so any early-exiting reader would SIGPIPE its writer.
    argv = [str(tmp_path / "bin" / "nitro-attest"), "-c", "import time; time.sleep(60)",
            "serve", "--listen", f"unix://{served}", *(["x" * 1023] * padding)]  # fmt: skip
    proc = subprocess.Popen(argv, executable=sys.executable)
    try:
        pidfile = tmp_path / "server.pid"
        pidfile.write_text(f"{proc.pid}\n")
        for _ in range(20):
            out = subprocess.run(
                ["bash", "-c", SCRIPT, "test", str(REPO), str(pidfile), str(sock)],
                capture_output=True, text=True, timeout=30,
            )  # fmt: skip
            assert out.stdout.strip() == want, out.stderr
    finally:
        proc.kill()
        proc.wait()
