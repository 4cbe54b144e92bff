"""One version: the package's (nitro_attest.version) is the one pyproject.toml declares."""

from __future__ import annotations

import tomllib

import nitro_attest
from nitro_attest.version import __version__

from .paths import REPO


def test_version_matches_pyproject() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert __version__ == project["version"] == nitro_attest.__version__
