"""EIF metadata is read by codec.strict_json, worded as the metadata section's own errors."""

from __future__ import annotations

import pytest

from nitro_attest.eif import EifError
from nitro_attest.eif.metadata import MAX_DEPTH, parse_metadata

HEAD = '"ImageName": "x", "ImageVersion": "1", "BuildMetadata": {}'


def _doc(extra: str) -> bytes:
    return f"{{{HEAD}, {extra}}}".encode()


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (_doc('"ImageName": "y"'), "metadata section: duplicate JSON key 'ImageName'"),
        (_doc('"N": NaN'), "metadata section: NaN is not valid JSON"),
        (_doc('"N": }'), "metadata section: invalid JSON: Expecting value at byte "),
        (b"\xff{}", "metadata section: not UTF-8"),
        (_doc('"D": ' + "[" * (MAX_DEPTH + 1) + "]" * (MAX_DEPTH + 1)),
         "metadata section: JSON nested too deeply"),
        (_doc('"D": ' + "[" * 50_000 + "]" * 50_000), "metadata section: JSON nested too deeply"),
    ],
)
def test_metadata_refusals_keep_their_wording(raw: bytes, message: str) -> None:
    with pytest.raises(EifError) as info:
        parse_metadata(raw)
    assert info.value.message.startswith(message) and "\n" not in info.value.message


def test_docker_info_deeper_than_a_config_file_still_reads() -> None:
    """nitro-cli's own limit is serde_json's 128 levels, not a configuration file's 32."""
    deep = "[" * (MAX_DEPTH - 1) + "]" * (MAX_DEPTH - 1)
    assert parse_metadata(_doc(f'"DockerInfo": {deep}'))["ImageName"] == "x"
