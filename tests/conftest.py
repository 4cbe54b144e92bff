"""Shared fixtures: where the real vectors live (../shared beside the repo), and their index."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parent.parent
SHARED = REPO.parent / "shared"
REAL = SHARED / "vectors" / "real"
EIF_VECTORS = SHARED / "vectors" / "eif"


def _need(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"test vectors not found at {path} (../shared must sit beside the repo)")
    return path


@pytest.fixture(scope="session")
def real_dir() -> Path:
    return _need(REAL)


@pytest.fixture(scope="session")
def real_index(real_dir: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((real_dir / "index.json").read_text())
    return data


@pytest.fixture(scope="session")
def eif_dir() -> Path:
    return _need(EIF_VECTORS)
