"""The outbound allowlist, in AWS vsock-proxy's YAML format, read unchanged::

    allowlist:
    - {address: kms.us-east-1.amazonaws.com, port: 443}
    - {address: 169.254.169.254, port: 80}

Matching is exact: a name allows that name (case-insensitive) and an IP literal that address; a
name never allows the addresses it resolves to, nor an address a name. PyYAML is imported only
here, when a file is read (the ``proxy`` extra), so the enclave image does not need it.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from nitro_attest.codec.hosts import Host, HostSyntaxError, parse_host
from nitro_attest.errors import ConfigurationError

MAX_FILE_BYTES = 1 << 20


class AllowlistError(ConfigurationError):
    """The allowlist file is unreadable, empty or malformed; one line naming the file and entry."""


@dataclass(frozen=True, slots=True)
class Allowlist:
    entries: frozenset[tuple[Host, int]]

    def __post_init__(self) -> None:
        if not self.entries:
            raise AllowlistError("the allowlist is empty: it would refuse every target")

    @classmethod
    def of(cls, pairs: Iterable[tuple[str, int]]) -> Allowlist:
        """Build from (address, port) pairs, with the same checks as the file."""
        return cls(frozenset(_entry({"address": a, "port": p}, "entry") for a, p in pairs))

    def allows(self, host: Host, port: int) -> bool:
        return (host, port) in self.entries

    def __len__(self) -> int:
        return len(self.entries)


def load_allowlist(path: str) -> Allowlist:
    """Read and check an AWS vsock-proxy allowlist file."""
    try:
        with open(path, "rb") as fh:
            data = fh.read(MAX_FILE_BYTES + 1)
    except OSError as exc:
        raise AllowlistError(f"{path}: cannot read: {exc.strerror or exc}") from None
    if len(data) > MAX_FILE_BYTES:
        raise AllowlistError(f"{path}: larger than {MAX_FILE_BYTES} bytes")
    try:
        return parse_allowlist(data)
    except AllowlistError as exc:
        raise AllowlistError(f"{path}: {exc}") from None


def parse_allowlist(data: bytes) -> Allowlist:
    try:
        import yaml
    except ImportError:  # pragma: no cover - the dev extra installs it
        raise AllowlistError(
            "reading an allowlist needs PyYAML: pip install 'nitro-attest[proxy]'"
        ) from None
    try:
        document = yaml.load(data, Loader=_strict_loader())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or "invalid YAML"
        raise AllowlistError(f"not valid YAML{where}: {problem}") from None
    except RecursionError:  # PyYAML composes nested nodes recursively
        raise AllowlistError("not a usable allowlist: YAML nested too deeply") from None
    if not isinstance(document, dict) or set(document) != {"allowlist"}:
        raise AllowlistError("expected one top-level key, 'allowlist: [{address:, port:}, ...]'")
    items = document["allowlist"]
    if not isinstance(items, list):
        raise AllowlistError("'allowlist' must be a list of {address:, port:} entries")
    return Allowlist(frozenset(_entry(item, f"entry {i + 1}") for i, item in enumerate(items)))


def _entry(item: Any, where: str) -> tuple[Host, int]:
    if not isinstance(item, dict) or set(item) != {"address", "port"}:
        raise AllowlistError(f"{where}: expected exactly the keys 'address' and 'port'")
    address, port = item["address"], item["port"]
    if not isinstance(address, str):
        raise AllowlistError(f"{where}: address must be a host name or an IP address")
    if type(port) is not int or not 1 <= port <= 0xFFFF:
        raise AllowlistError(f"{where}: port must be an integer from 1 to 65535")
    try:
        host = parse_host(address)
    except HostSyntaxError as exc:
        raise AllowlistError(f"{where}: address {address[:80]!r}: {exc}") from None
    return host, port


def _strict_loader() -> Any:
    """yaml.SafeLoader that refuses duplicate keys (PyYAML keeps the last one silently)."""
    import yaml

    class StrictLoader(yaml.SafeLoader):
        def construct_mapping(self, node: Any, deep: bool = False) -> Any:
            seen: set[Any] = set()
            for key_node, _ in node.value:
                key = self.construct_object(key_node, deep=deep)
                if not isinstance(key, str | int | float | bool | None):
                    continue  # unhashable keys: SafeLoader's own check refuses them
                if key in seen:
                    raise yaml.constructor.ConstructorError(
                        None, None, f"duplicate key {key!r:.40}", key_node.start_mark
                    )
                seen.add(key)
            return super().construct_mapping(node, deep=deep)

    return StrictLoader


def summarize_allowlist(allowlist: Allowlist) -> str:
    """One line listing the entries, for the start-up log."""
    return ", ".join(sorted(f"{h}:{p}" for h, p in allowlist.entries)) or "(none)"
