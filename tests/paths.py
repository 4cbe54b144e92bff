"""Where the repository and the shared test vectors are (../shared beside the repo).

Plain constants for tests that need a path at import time; conftest.py builds its fixtures on
them. Tests import this module, never conftest.
"""

from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SHARED = REPO.parent / "shared"
REAL = SHARED / "vectors" / "real"
EIF_VECTORS = SHARED / "vectors" / "eif"
