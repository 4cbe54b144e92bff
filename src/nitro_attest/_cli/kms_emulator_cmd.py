"""Placeholder until its operations land (this wave's KMS work); registers nothing yet."""

from __future__ import annotations

from typing import Any


def add_operations(kms_sub: Any) -> None:
    """Add this group's operations to ``nitro-attest kms``."""
