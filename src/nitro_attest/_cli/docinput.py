"""Finding and reading the documents named on the command line."""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

from nitro_attest._cli.common import CliError, read_bytes
from nitro_attest.attestation.encoding import MAX_INPUT_BYTES

DOC_SUFFIXES = (".cbor", ".dat", ".b64", ".bin", ".cose", ".txt", ".hex")


class DocInput(NamedTuple):  # not a dataclass: one costs about 1 ms to define on Python 3.11
    name: str
    data: bytes | None
    """The bytes read, or None when reading failed (``problem`` says why)."""
    problem: str | None = None


def expand_paths(paths: list[str]) -> list[str]:
    """Files as given; a directory contributes its document files (by suffix), sorted."""
    out: list[str] = []
    for path in paths:
        p = Path(path)
        if path != "-" and p.is_dir():
            found = sorted(
                str(c) for c in p.iterdir() if c.is_file() and c.suffix.lower() in DOC_SUFFIXES
            )
            if not found:
                raise CliError(f"{path}: directory holds no {'/'.join(DOC_SUFFIXES)} files")
            out.extend(found)
        else:
            out.append(path)
    if out.count("-") > 1:
        raise CliError("'-' (standard input) can be given only once")
    return out


def read_inputs(paths: list[str]) -> list[DocInput]:
    inputs = []
    for path in expand_paths(paths):
        name = "<stdin>" if path == "-" else path
        try:
            data = read_bytes(path, limit=MAX_INPUT_BYTES, what="document")
        except CliError as exc:
            inputs.append(DocInput(name, None, str(exc)))
            continue
        if not data:
            inputs.append(DocInput(name, None, f"{path}: file is empty"))
            continue
        inputs.append(DocInput(name, data))
    return inputs
