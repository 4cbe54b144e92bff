"""--listen of the service and the KMS emulator: one parser (_cli.common.parse_listen)."""

from __future__ import annotations

import pytest

from nitro_attest._cli.common import CliError, parse_listen


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("8080", ("127.0.0.1", 8080)),
        (":8080", ("127.0.0.1", 8080)),
        ("0.0.0.0:443", ("0.0.0.0", 443)),
        ("[::1]:65535", ("::1", 65535)),
    ],
)
def test_listen_values(value: str, expected: tuple[str, int]) -> None:
    assert parse_listen(value) == expected


@pytest.mark.parametrize("value", ["127.0.0.1:0", "127.0.0.1:65536", "x", "1:", "1:\u00b2",
                                   "1:\u0663", "1:-1", "1: 80"])
def test_bad_listen_is_one_line_cli_error(value: str) -> None:
    with pytest.raises(CliError, match=r"expected HOST:PORT with a port in 1\.\.65535"):
        parse_listen(value)
