"""parse_policy reads its JSON with codec.strict_json and words each refusal as a key policy's."""

from __future__ import annotations

import pytest

from nitro_attest.kms.keypolicy import KeyPolicyError, parse_policy

HEAD = '{"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Principal": "*", '
NUMERIC = HEAD + '"Action": "kms:Decrypt", "Resource": "*", "Condition": {"NumericLessThan": '


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('{"Version": "2012-10-17",\n "Statement": }',
         "key policy: invalid JSON: Expecting value at line 2 column 15"),
        ('{"Version": "2012-10-17", "Version": "2012-10-17"}',
         "key policy: duplicate JSON key 'Version'"),
        (HEAD + '"Action": Infinity}]}', "key policy: Infinity is not valid JSON"),
        ("[" * 40 + "]" * 40, "key policy: JSON nested too deeply"),
        # 1e999 would read as inf (json.loads); refused as JSON, before any condition reads it
        (NUMERIC + '{"kms:RecipientAttestation:PCR0": 1e999}}}]}',
         "key policy: invalid JSON: number 1e999 is out of range"),
        (NUMERIC + '{"kms:RecipientAttestation:PCR0": ' + "9" * 4301 + "}}}]}",
         "key policy: invalid JSON: a number of 4301 digits"),
    ],
)
def test_json_refusals_keep_the_key_policy_wording(text: str, message: str) -> None:
    with pytest.raises(KeyPolicyError) as info:
        parse_policy(text)
    assert info.value.message.startswith(message) and "\n" not in info.value.message
