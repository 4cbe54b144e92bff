"""The public surface: nitro_attest.__all__, docs/api.md and README agree, and it stays light."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

import nitro_attest

from .paths import REPO

API_DOC = (REPO / "docs" / "api.md").read_text()
README = (REPO / "README.md").read_text()


@pytest.mark.parametrize("name", sorted(nitro_attest.__all__))
def test_every_public_name_resolves_and_is_documented(name: str) -> None:
    assert getattr(nitro_attest, name) is not None
    if name != "__version__":
        assert f"`{name}" in API_DOC, f"docs/api.md does not mention {name}"


def test_unknown_attribute_is_an_attribute_error() -> None:
    with pytest.raises(AttributeError, match="no_such_name"):
        nitro_attest.no_such_name  # type: ignore[attr-defined]  # noqa: B018


def test_readme_examples_import_only_the_public_surface() -> None:
    blocks = re.findall(r"```python\n(.*?)```", README, re.S)
    assert blocks, "README has Python examples"
    imports = [
        line.strip()
        for block in blocks
        for line in block.splitlines()
        if re.match(r"\s*(from|import) nitro_attest", line)
    ]
    assert imports
    public = re.compile(r"(from nitro_attest import |import nitro_attest$)")
    internal = [line for line in imports if not public.match(line)]
    assert internal == []


def test_import_stays_light() -> None:
    """`import nitro_attest` loads only the error tree: no cryptography, verifier, asyncio, channel,
    wire, EIF or NSM code until a name is used."""
    code = (
        "import sys, nitro_attest\n"
        "heavy = [m for m in ('asyncio', 'cryptography', 'nitro_attest.attestation', "
        "'nitro_attest.channel', 'nitro_attest.wire', 'nitro_attest.eif', 'nitro_attest.nsm') "
        "if m in sys.modules]\n"
        "print(','.join(heavy))\n"
        "nitro_attest.send_secret\n"
        "print('nitro_attest.channel.sender' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.splitlines() == ["", "True"]


def test_dir_and_help_show_the_lazy_names() -> None:
    """The names loaded on first use are part of the API: dir() and help() list them too."""
    code = (
        "import nitro_attest, pydoc\n"
        "listed = set(dir(nitro_attest))\n"
        "text = pydoc.render_doc(nitro_attest, renderer=pydoc.plaintext)\n"
        "print(sorted(set(nitro_attest.__all__) - listed))\n"
        "print(sorted(n for n in nitro_attest.__all__ if n != '__version__' and n not in text))\n"
        "print('VERSION' in text and nitro_attest.__version__ in text)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.splitlines() == ["[]", "[]", "True"]
