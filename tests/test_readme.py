"""The README stays true: its shell blocks run, in order, in a fresh copy of the repository.

Every ```bash block of README.md runs, in one bash session (so a variable set in one block is
seen by the next), from the root of a copy of the tracked files, with `nitro-attest` on PATH
(this checkout's sources), a HOME of its own and `set -euo pipefail`. A ```text block right
after a ```bash block is that block's output: each of its lines must appear, in order, in what the
block printed (stdout and stderr), `...` standing for any text.

A block that cannot run here carries, on the line before its fence, an explicit marker with the
reason: `<!-- readme-test: skip: REASON -->` (real nitro-cli, EC2, network installs). Services a
block starts in the background must be stopped by the README itself: the session fails if a job
is still running at the end. The README's fixed ports (8080, 5005) are replaced by free ones, so
the test never collides with another process on this machine; nothing else is rewritten.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
from pathlib import Path
from typing import NamedTuple

import pytest

from .paths import REPO

README = REPO / "README.md"
MAX_LINES = 400
QUICK_START_BY = 60
SKIP = re.compile(r"<!-- readme-test: skip: (?P<reason>\S.*?) -->")
FENCE = re.compile(r"^```(?P<lang>[\w-]*)\s*$")
SHELL_LANGS = {"sh", "shell", "console", "zsh", "bash"}
PORTS = ("8080", "5005")


class Block(NamedTuple):
    line: int  # 1-based line of the opening fence
    lang: str
    text: str
    skip: str | None  # the marker's reason, or None


def blocks(markdown: str) -> list[Block]:
    lines = markdown.splitlines()
    out: list[Block] = []
    i = 0
    while i < len(lines):
        match = FENCE.match(lines[i])
        if not match:
            i += 1
            continue
        start = i
        j = i + 1
        while j < len(lines) and not lines[j].startswith("```"):
            j += 1
        previous = next((lines[k] for k in range(start - 1, -1, -1) if lines[k].strip()), "")
        marker = SKIP.search(previous)
        out.append(
            Block(
                start + 1,
                match["lang"],
                "\n".join(lines[start + 1 : j]),
                marker["reason"] if marker else None,
            )
        )
        i = j + 1
    return out


def runnable_with_output(markdown: str) -> list[tuple[Block, Block | None]]:
    """Each bash block to run, with the text block that shows its output (if one follows)."""
    found = blocks(markdown)
    pairs: list[tuple[Block, Block | None]] = []
    for index, block in enumerate(found):
        if block.lang != "bash" or block.skip is not None:
            continue
        following = found[index + 1] if index + 1 < len(found) else None
        pairs.append((block, following if following and following.lang == "text" else None))
    return pairs


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _fresh_copy(dest: Path) -> None:
    """The tracked files only: no .venv, no .demo/.sim/client state, no caches."""
    listed = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True, check=True)
    for name in listed.stdout.decode().split("\0"):
        if not name or not (REPO / name).is_file():
            continue
        target = dest / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / name, target)


def _matches(expected: str, actual: str) -> list[str]:
    """The expected lines not found, in order, among the actual ones (`...` matches any text)."""
    lines = [line.rstrip() for line in actual.splitlines()]
    missing = []
    position = 0
    for want in (line.rstrip() for line in expected.splitlines() if line.strip()):
        pattern = re.compile(".*".join(re.escape(part) for part in want.split("...")))
        for k in range(position, len(lines)):
            if pattern.fullmatch(lines[k]):
                position = k + 1
                break
        else:
            missing.append(want)
    return missing


def test_readme_is_a_short_guide_with_the_quick_start_first() -> None:
    text = README.read_text()
    lines = text.splitlines()
    assert len(lines) <= MAX_LINES, f"README.md has {len(lines)} lines, at most {MAX_LINES}"
    quick = next(i for i, line in enumerate(lines) if line.startswith("## Quick start"))
    assert quick < QUICK_START_BY
    first_lines = "\n".join(lines[:QUICK_START_BY])
    assert "./demo.sh" in first_lines and "./test.sh" in first_lines


def test_every_shell_block_is_bash_and_every_skip_says_why() -> None:
    found = blocks(README.read_text())
    shells = [b for b in found if b.lang in SHELL_LANGS]
    assert shells and all(b.lang == "bash" for b in shells), [
        (b.line, b.lang) for b in shells if b.lang != "bash"
    ]
    skipped = [b for b in shells if b.skip is not None]
    assert all(len(b.skip or "") >= 15 for b in skipped)
    # The tour itself runs: most blocks are not skipped.
    assert len(shells) - len(skipped) >= 9


def test_readme_shell_blocks_run_in_order(tmp_path: Path) -> None:
    repo, home, bin_dir = tmp_path / "repo", tmp_path / "home", tmp_path / "bin"
    for d in (repo, home, bin_dir):
        d.mkdir()
    _fresh_copy(repo)
    wrapper = bin_dir / "nitro-attest"
    src = REPO / "src"
    wrapper.write_text(
        f'#!/bin/sh\nPYTHONPATH="{src}" exec "{sys.executable}" -m nitro_attest._cli "$@"\n'
    )
    wrapper.chmod(0o755)
    ports = {port: str(_free_port()) for port in PORTS}

    pairs = runnable_with_output(README.read_text())
    script = ["exec 2>&1", "set -euo pipefail", "trap 'kill $(jobs -p) 2>/dev/null || true' EXIT"]
    for number, (block, _) in enumerate(pairs):
        text = block.text
        for fixed, free in ports.items():
            text = text.replace(f"127.0.0.1:{fixed}", f"127.0.0.1:{free}")
        script += [f"printf '\\n@@block {number}@@\\n'", text]
    script += [
        "printf '\\n@@end@@\\n'",
        'if [ -n "$(jobs -rp)" ]; then echo "@@still running: $(jobs -rp)@@"; exit 99; fi',
    ]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "NITRO_ATTEST"))}
    env.update(HOME=str(home), PATH=f"{bin_dir}:{os.environ['PATH']}", XDG_DATA_HOME=str(home))
    env["PYTHONUNBUFFERED"] = "1"  # stdout and stderr interleave as on a terminal
    done = subprocess.run(
        ["bash", "-c", "\n".join(script)], cwd=repo, env=env, capture_output=True, text=True,
        timeout=240,
    )  # fmt: skip
    parts = re.split(r"\n?@@block (\d+)@@\n", done.stdout)
    outputs = {int(parts[k]): parts[k + 1] for k in range(1, len(parts) - 1, 2)}
    last = max(outputs, default=-1)
    if done.returncode != 0 or "@@end@@" not in done.stdout:
        block = pairs[last][0] if last >= 0 else None
        where = f"README.md line {block.line}" if block else "before the first block"
        pytest.fail(
            f"exit {done.returncode} in the block at {where}:\n{block.text if block else ''}\n"
            f"--- its output ---\n{outputs.get(last, done.stdout)[-3000:]}"
        )
    assert last == len(pairs) - 1
    for number, (block, expected) in enumerate(pairs):
        if expected is None:
            continue
        actual = outputs[number].split("@@end@@")[0]
        missing = _matches(expected.text, actual)
        assert missing == [], (
            f"README.md line {expected.line}: not printed by the block at line {block.line}:\n"
            + "\n".join(missing)
            + f"\n--- printed ---\n{actual}"
        )


def test_output_matching_is_strict_about_order_and_text() -> None:
    assert _matches("a\nc ... d", "a\nb\nc 1 2 d\n") == []
    assert _matches("c\na", "a\nc\n") == ["a"]
    assert _matches("VERIFIED", "REJECTED\n") == ["VERIFIED"]


def test_skip_marker_is_read_from_the_line_before_the_fence() -> None:
    text = "x\n<!-- readme-test: skip: needs real hardware here -->\n```bash\nfalse\n```\n"
    [block] = blocks(text)
    assert block.skip == "needs real hardware here"
    assert runnable_with_output(text) == []
    [block] = blocks("```bash\ntrue\n```\n")
    assert block.skip is None
