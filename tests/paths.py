"""Where the repository and its test vectors are (tests/vectors, each folder with its MANIFEST).

Plain constants for tests that need a path at import time; conftest.py builds its fixtures on
them. Tests import this module, never conftest.
"""

from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
VECTORS = REPO / "tests" / "vectors"
REAL = VECTORS / "real"
EIF_VECTORS = VECTORS / "eif"
KMS_VECTORS = VECTORS / "kms"
SIGV4_VECTORS = VECTORS / "sigv4"
PEER_VECTORS = VECTORS / "peer"
