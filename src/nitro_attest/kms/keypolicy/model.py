"""What a parsed key policy holds: statements, principals and conditions, already checked."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from nitro_attest.errors import FormatError


class KeyPolicyError(FormatError):
    """A key policy document that is not valid JSON, or not a key policy AWS would accept."""


Effect = Literal["Allow", "Deny"]
Qualifier = Literal["ForAnyValue", "ForAllValues"]


@dataclass(frozen=True)
class Condition:
    """One key under one operator: ``{"StringEquals": {"kms:CallerAccount": [...]}}``.

    ``operator`` is the operator as written (``ForAnyValue:StringLikeIfExists``); ``base`` is
    the operator family without qualifier or ``IfExists`` (``StringLike``); ``key`` is the
    condition key lower-cased (AWS compares key names case-insensitively), ``key_as_written``
    the same key as the policy spells it.
    """

    operator: str
    base: str
    qualifier: Qualifier | None
    if_exists: bool
    key: str
    key_as_written: str
    values: tuple[str, ...]


@dataclass(frozen=True)
class Principal:
    """``Principal``: ``"*"`` (``any``), or AWS principals (ARNs, account ids) and services."""

    any: bool
    aws: tuple[str, ...] = ()
    services: tuple[str, ...] = ()


@dataclass(frozen=True)
class Statement:
    index: int
    sid: str | None
    effect: Effect
    principal: Principal
    actions: tuple[str, ...]
    not_action: bool  # actions came from NotAction
    resources: tuple[str, ...]
    not_resource: bool  # resources came from NotResource
    conditions: tuple[Condition, ...]

    @property
    def label(self) -> str:
        """How reasons and lint findings name this statement: its Sid, else its index."""
        return f'Sid "{self.sid}"' if self.sid else f"Statement[{self.index}]"


@dataclass(frozen=True)
class KeyPolicy:
    version: str
    id: str | None
    statements: tuple[Statement, ...]
