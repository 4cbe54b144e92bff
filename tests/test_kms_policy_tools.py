"""`nitro-attest kms policy` and `kms lint-policy`: the generated policy binds the key to the
image (and lints clean), and the linter finds the grants that bypass attestation."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from nitro_attest._cli import main
from nitro_attest.attestation.caller_keys import MARKED_PCR_VALUE
from nitro_attest.kms.keypolicy import RequestContext, evaluate, parse_policy
from nitro_attest.kms.keypolicy.lint import lint_policy

from .paths import EIF_VECTORS

ACCOUNT = "111122223333"
ROLE = f"arn:aws:iam::{ACCOUNT}:role/enclave-instance"
ADMIN = f"arn:aws:iam::{ACCOUNT}:role/KMSAdmin"
KEY = f"arn:aws:kms:us-east-1:{ACCOUNT}:key/00000000-0000-0000-0000-000000000001"
PCR0, PCR1, PCR2 = "a0" * 48, "a1" * 48, "a2" * 48
ZEROS = "0" * 96
V4_PCR0 = ("88e811605d8c06fd6588d868e74636c34ef997abf5a551a55705247a42b35f62"
           "5177a6da886e9037d205e0509f0bfe56")
V4_PCR8 = ("ef692aa8e9d9f7c039f42b8ae78111c5747e43df6d26020ebd4190cc4990c804"
           "2d16ae69ee856e0e371530d720440b13")


@pytest.fixture
def build_json(tmp_path: Path) -> Path:
    path = tmp_path / "build.json"
    path.write_text(json.dumps({"Measurements": {
        "HashAlgorithm": "Sha384 { ... }", "PCR0": PCR0, "PCR1": PCR1, "PCR2": PCR2}}))
    return path


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    rc = main(argv)
    out, err = capsys.readouterr()
    return rc, out, err


def generate(capsys: pytest.CaptureFixture[str], *argv: str) -> dict[str, Any]:
    rc, out, err = run(["kms", "policy", *argv], capsys)
    assert rc == 0, err
    policy: dict[str, Any] = json.loads(out)
    return policy


def attested(action: str = "kms:Decrypt", principal: str = ROLE, *, image: str = PCR0,
             pcr16: str | None = ZEROS, **pcrs: str) -> RequestContext:
    keys = {"kms:recipientattestation:imagesha384": (image,)}
    if pcr16 is not None:
        keys["kms:recipientattestation:pcr16"] = (pcr16,)
    keys.update({f"kms:recipientattestation:{k}": (v,) for k, v in pcrs.items()})
    return RequestContext(action, principal, KEY, keys)


def test_generated_policy_binds_the_key_to_the_image(
    build_json: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    doc = generate(capsys, "--measurements", str(build_json), "--principal", ROLE,
                   "--admin", ADMIN, "--pcr", "1")
    admin, enclave = doc["Statement"]
    assert admin["Principal"] == {"AWS": [ADMIN]}
    assert not [a for a in admin["Action"] if a in ("kms:Decrypt", "kms:CreateGrant", "kms:*")]
    assert enclave["Principal"] == {"AWS": ROLE}
    assert "PCR16" in enclave["Sid"] and "caller-chosen keys" in enclave["Sid"]
    assert enclave["Condition"] == {"StringEqualsIgnoreCase": {
        "kms:RecipientAttestation:ImageSha384": PCR0,
        "kms:RecipientAttestation:PCR1": PCR1,
        "kms:RecipientAttestation:PCR16": ZEROS,
    }}
    policy = parse_policy(json.dumps(doc))
    ok = evaluate(policy, attested(pcr1=PCR1))
    assert ok.allowed and "Enclave use only" in ok.reason
    assert evaluate(policy, attested("kms:GenerateDataKey", pcr1=PCR1.upper())).allowed
    refused = {
        "no Recipient": RequestContext("kms:Decrypt", ROLE, KEY, {}),
        "other image": attested(image=PCR2, pcr1=PCR1),
        "other PCR1": attested(pcr1=PCR2),
        "PCR16 marked (enclave signs caller keys)": attested(pcr16=MARKED_PCR_VALUE.hex(),
                                                             pcr1=PCR1),
        "PCR16 absent": attested(pcr16=None, pcr1=PCR1),
        "Encrypt ignores attestation": attested("kms:Encrypt", pcr1=PCR1),
        "CreateGrant": attested("kms:CreateGrant", pcr1=PCR1),
        "PutKeyPolicy by the enclave role": attested("kms:PutKeyPolicy", pcr1=PCR1),
        "admin decrypting": attested(principal=ADMIN, pcr1=PCR1),
        "another account's role": attested(principal=ROLE.replace(ACCOUNT, "444455556666"),
                                           pcr1=PCR1),
    }
    for name, req in refused.items():
        assert not evaluate(policy, req).allowed, name
    assert evaluate(policy, RequestContext("kms:PutKeyPolicy", ADMIN, KEY, {})).allowed


def test_generated_policy_lints_clean(build_json: Path, tmp_path: Path,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    for extra in ([], ["--admin", ADMIN, "--pcr", "2", "--operations", "Decrypt,GenerateRandom"],
                  ["--encryptor", ADMIN, "--encryptor", f"arn:aws:iam::{ACCOUNT}:root"],
                  ["--operations", "DeriveSharedSecret"], ["--pcr", f"3={'ab' * 48}"]):
        doc = generate(capsys, "--measurements", str(build_json), "--principal", ROLE, *extra)
        path = tmp_path / "policy.json"
        path.write_text(json.dumps(doc))
        rc, out, _ = run(["kms", "lint-policy", str(path)], capsys)
        assert (rc, out) == (0, f"{path}: no findings\n"), extra
        assert lint_policy(parse_policy(path.read_text())) == []


def test_default_admin_is_the_account_root_and_default_operations(
    build_json: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    doc = generate(capsys, "--measurements", str(build_json), "--principal", ROLE)
    admin, enclave = doc["Statement"]
    assert admin["Principal"] == {"AWS": f"arn:aws:iam::{ACCOUNT}:root"}
    assert enclave["Action"] == ["kms:Decrypt", "kms:GenerateDataKey", "kms:GenerateDataKeyPair",
                                 "kms:GenerateRandom"]
    policy = parse_policy(json.dumps(doc))
    # the account's principals administer the key but never decrypt through it
    assert not evaluate(policy, RequestContext("kms:Decrypt", ADMIN, KEY, {})).allowed


def test_encryptors_encrypt_and_never_decrypt(build_json: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    parent = f"arn:aws:iam::{ACCOUNT}:role/parent"
    doc = generate(capsys, "--measurements", str(build_json), "--principal", ROLE,
                   "--encryptor", parent)
    assert doc["Statement"][2]["Principal"] == {"AWS": [parent]}
    policy = parse_policy(json.dumps(doc))
    assert evaluate(policy, RequestContext("kms:Encrypt", parent, KEY, {})).allowed
    for action in ("kms:Decrypt", "kms:GenerateDataKey", "kms:ReEncryptFrom", "kms:CreateGrant"):
        assert not evaluate(policy, attested(action, parent)).allowed, action


def test_policy_from_an_eif_measures_it(tmp_path: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    eif = str(EIF_VECTORS / "v4_signed_2rd.eif")
    doc = generate(capsys, "--eif", eif, "--principal", ROLE, "--pcr", "8")
    values = doc["Statement"][1]["Condition"]["StringEqualsIgnoreCase"]
    assert values["kms:RecipientAttestation:ImageSha384"] == V4_PCR0
    assert values["kms:RecipientAttestation:PCR8"] == V4_PCR8
    # the same policy from describe-eif's JSON (what nitro-cli describe-eif prints)
    rc, described, _ = run(["eif", "describe", "--json", "--at", "2030-01-01T00:00:00Z", eif],
                           capsys)
    assert rc == 0
    path = tmp_path / "describe.json"
    path.write_text(described)
    assert generate(capsys, "--measurements", str(path), "--principal", ROLE, "--pcr", "8") == doc


@pytest.mark.parametrize(("argv", "message"), [
    (["--pcr", "8"], "--pcr 8: the image measures PCR 0, 1, 2 only"),
    (["--pcr", "16"], "PCR16 is always pinned"),
    (["--pcr", "32"], "expected N or N=HEX"),
    (["--pcr", "1", "--pcr", "1"], "--pcr 1 given twice"),
    (["--pcr", "4=abcd"], "PCR4: expected 96 hex digits"),
    (["--pcr", "4=zz"], "not valid hex"),
    (["--operations", "Encrypt"], "operation 'Encrypt': only the operations that take a Recipient"),
    (["--admin", ROLE], "cannot also be an administrator"),
    (["--admin", "arn:aws:iam::1:role/x"], "expected an IAM role, user or account root ARN"),
    (["--encryptor", "*"], "encryptor '*': expected an IAM role, user or account root ARN"),
])
def test_policy_usage_errors(build_json: Path, capsys: pytest.CaptureFixture[str],
                             argv: list[str], message: str) -> None:
    rc, out, err = run(["kms", "policy", "--measurements", str(build_json), "--principal", ROLE,
                        *argv], capsys)
    assert rc == 2 and out == ""
    assert message in err and err.count("\n") == 1


@pytest.mark.parametrize(("principal", "message"), [
    (f"arn:aws:iam::{ACCOUNT}:root", "expected an IAM role or user ARN"),
    (ACCOUNT, "expected an IAM role or user ARN"),
    ("*", "expected an IAM role or user ARN"),
])
def test_principal_must_be_a_role_or_user(build_json: Path, capsys: pytest.CaptureFixture[str],
                                          principal: str, message: str) -> None:
    rc, _, err = run(["kms", "policy", "--measurements", str(build_json), "--principal",
                      principal], capsys)
    assert rc == 2 and message in err


def test_debug_image_and_bad_measurements_refused(tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    debug = tmp_path / "debug.json"
    debug.write_text(json.dumps({"Measurements": {"PCR0": ZEROS, "PCR1": PCR1, "PCR2": PCR2}}))
    rc, _, err = run(["kms", "policy", "--measurements", str(debug), "--principal", ROLE], capsys)
    assert rc == 2 and "debug-mode" in err
    broken = tmp_path / "broken.json"
    broken.write_text('{"Measurements": {"PCR0": "zz"}}')
    rc, _, err = run(["kms", "policy", "--measurements", str(broken), "--principal", ROLE], capsys)
    assert rc == 2 and str(broken) in err and err.count("\n") == 1
    rc, _, err = run(["kms", "policy", "--eif", str(tmp_path / "none.eif"), "--principal", ROLE],
                     capsys)
    assert rc == 2 and "no such file" in err
    not_eif = tmp_path / "x.eif"
    not_eif.write_bytes(b"not an eif at all")
    rc, _, err = run(["kms", "policy", "--eif", str(not_eif), "--principal", ROLE], capsys)
    assert rc == 2 and err.startswith("nitro-attest: error: ") and err.count("\n") == 1


# -- lint-policy ---------------------------------------------------------------------------------

def doc(*statements: dict[str, Any]) -> str:
    return json.dumps({"Version": "2012-10-17", "Statement": list(statements)})


ATTESTED = {"StringEqualsIgnoreCase": {"kms:RecipientAttestation:ImageSha384": PCR0,
                                       "kms:RecipientAttestation:PCR16": ZEROS}}


def enclave(**extra: Any) -> dict[str, Any]:
    statement: dict[str, Any] = {"Sid": "Enclave", "Effect": "Allow", "Principal": {"AWS": ROLE},
                                 "Action": ["kms:Decrypt"], "Resource": "*",
                                 "Condition": ATTESTED}
    statement.update(extra)
    return statement


SDK_C_157 = {  # the sample that granted the instance role Decrypt with no condition at all
    "Sid": "Allow use of the key", "Effect": "Allow", "Principal": {"AWS": ROLE},
    "Action": ["kms:Decrypt", "kms:GenerateDataKey*", "kms:GenerateRandom"], "Resource": "*"}

LINTS: list[tuple[str, str, list[str]]] = [
    ("sdk-c#157", doc(SDK_C_157), ["unattested-grant"]),
    ("GenerateDataKey* wildcard", doc(enclave(Condition={}, Action="kms:GenerateDataKey*")),
     ["unattested-grant"]),
    ("NotAction grants Decrypt", doc(enclave(Condition={}, Action=None, NotAction="kms:Encrypt")
                                     | {"Action": "kms:Sign"}), []),  # replaced below
    ("only Encrypt is fine", doc(enclave(Condition={}, Action="kms:Encrypt")), []),
    ("default root statement", doc({"Sid": "Enable IAM User Permissions", "Effect": "Allow",
                                    "Principal": {"AWS": f"arn:aws:iam::{ACCOUNT}:root"},
                                    "Action": "kms:*", "Resource": "*"}), ["root-delegation"]),
    ("principal * without condition", doc(enclave(Principal="*", Condition={},
                                                  Action="kms:Encrypt")), ["principal-star"]),
    ("principal * Decrypt", doc(enclave(Principal={"AWS": "*"}, Condition={})),
     ["principal-star", "unattested-grant"]),
    ("principal * attested is fine", doc(enclave(Principal="*")), []),
    ("wildcard PCR", doc(enclave(Condition={"StringLike": {
        "kms:RecipientAttestation:ImageSha384": "a0a0*",
        "kms:RecipientAttestation:PCR16": ZEROS}})),
     ["pcr-wildcard", "pcr-case-sensitive", "pcr-case-sensitive"]),
    ("case-sensitive lower-case", doc(enclave(Condition={"StringEquals": {
        "kms:RecipientAttestation:ImageSha384": PCR0, "kms:RecipientAttestation:PCR16": ZEROS}})),
     ["pcr-case-sensitive", "pcr-case-sensitive"]),
    ("case-sensitive upper-case never matches", doc(enclave(Condition={
        "StringEquals": {"kms:RecipientAttestation:ImageSha384": PCR0.upper()},
        "StringEqualsIgnoreCase": {"kms:RecipientAttestation:PCR16": ZEROS}})),
     ["never-matches"]),
    ("typo in key", doc(enclave(Condition={"StringEqualsIgnoreCase": {
        "kms:RecipientAttestation:ImageSha348": PCR0, "kms:RecipientAttestation:PCR16": ZEROS}})),
     ["unknown-key", "unattested-grant"]),
    ("short PCR value", doc(enclave(Condition={"StringEqualsIgnoreCase": {
        "kms:RecipientAttestation:ImageSha384": PCR0[:64],
        "kms:RecipientAttestation:PCR16": ZEROS}})), ["never-matches"]),
    ("PCR index out of range", doc(enclave(Condition={"StringEqualsIgnoreCase": {
        "kms:RecipientAttestation:ImageSha384": PCR0, "kms:RecipientAttestation:PCR16": ZEROS,
        "kms:RecipientAttestation:PCR32": ZEROS}})), ["unknown-key"]),
    ("contradicting equalities", doc(enclave(Condition={
        "StringEqualsIgnoreCase": {"kms:RecipientAttestation:ImageSha384": PCR0,
                                   "kms:RecipientAttestation:PCR16": ZEROS},
        "StringEquals": {"kms:RecipientAttestation:ImageSha384": PCR1}})),
     ["never-matches", "pcr-case-sensitive"]),
    ("Bool on a string key", doc(enclave(Condition={**ATTESTED, "Bool": {"kms:ViaService": True}})),
     ["never-matches"]),
    ("ForAllValues on ImageSha384", doc(enclave(Condition={
        "ForAllValues:StringEqualsIgnoreCase": {"kms:RecipientAttestation:ImageSha384": PCR0},
        "StringEqualsIgnoreCase": {"kms:RecipientAttestation:PCR16": ZEROS}})),
     ["set-operator", "unattested-grant"]),
    ("IfExists on ImageSha384", doc(enclave(Condition={
        "StringEqualsIgnoreCaseIfExists": {"kms:RecipientAttestation:ImageSha384": PCR0},
        "StringEqualsIgnoreCase": {"kms:RecipientAttestation:PCR16": ZEROS}})),
     ["attestation-optional", "unattested-grant"]),
    ("multivalued without qualifier", doc(enclave(Condition={
        **ATTESTED, "StringEquals": {"kms:EncryptionContextKeys": "Purpose"}})),
     ["set-operator"]),
    ("enclave granted kms:*", doc(enclave(Action="kms:*")), ["enclave-all-actions"]),
    ("no PCR16 pin", doc(enclave(Condition={"StringEqualsIgnoreCase": {
        "kms:RecipientAttestation:ImageSha384": PCR0}})), ["pcr16-pin"]),
    ("PCR16 pinned to the marked value", doc(enclave(Condition={"StringEqualsIgnoreCase": {
        "kms:RecipientAttestation:ImageSha384": PCR0,
        "kms:RecipientAttestation:PCR16": MARKED_PCR_VALUE.hex()}})), ["pcr16-pin"]),
    ("PCR16 alone does not bind an image", doc(enclave(Condition={"StringEqualsIgnoreCase": {
        "kms:RecipientAttestation:PCR16": ZEROS}})), ["unattested-grant"]),
    ("parent's role PCR3 does not bind an image", doc(enclave(Condition={
        "StringEqualsIgnoreCase": {"kms:RecipientAttestation:PCR3": PCR1,
                                   "kms:RecipientAttestation:PCR16": ZEROS}})),
     ["unattested-grant"]),
    ("signer PCR8 binds", doc(enclave(Condition={"StringEqualsIgnoreCase": {
        "kms:RecipientAttestation:PCR8": PCR1, "kms:RecipientAttestation:PCR16": ZEROS}})), []),
    ("debug image", doc(enclave(Condition={"StringEqualsIgnoreCase": {
        "kms:RecipientAttestation:ImageSha384": ZEROS,
        "kms:RecipientAttestation:PCR16": ZEROS}})), ["debug-image"]),
    ("NitroTPM PCR binds", doc(enclave(Condition={"StringEqualsIgnoreCase": {
        "kms:RecipientAttestation:NitroTPMPCR4": PCR1}})), []),
    ("Null true and StringEquals on one key", doc(enclave(Condition={
        **ATTESTED, "Null": {"kms:EncryptionContext:Purpose": "true"},
        "StringEquals": {"kms:EncryptionContext:Purpose": "backup"}})), ["never-matches"]),
    ("attested Encrypt never allowed", doc(enclave(Action=["kms:Decrypt", "kms:Encrypt"])),
     ["never-matches"]),
    ("ReEncryptFrom and CreateGrant to the enclave role", doc(enclave(
        Condition={}, Action=["kms:Encrypt", "kms:ReEncrypt*", "kms:CreateGrant"])),
     ["decrypt-equivalent"]),
    ("attested CreateGrant never applies", doc(enclave(Action=["kms:Decrypt", "kms:CreateGrant"])),
     ["never-matches"]),
    ("ReEncrypt* to anyone", doc(enclave(Principal="*", Condition={}, Action="kms:ReEncrypt*")),
     ["principal-star", "decrypt-equivalent"]),
    ("CreateGrant to an admin is its business", doc(enclave(
        Principal={"AWS": f"arn:aws:iam::{ACCOUNT}:root"}, Condition={},
        Action="kms:CreateGrant")), []),
    ("Encrypt to a data producer is fine", doc(enclave(
        Principal={"AWS": ADMIN}, Condition={}, Action=["kms:Encrypt",
                                                      "kms:GenerateDataKeyWithoutPlaintext"])),
     []),
    ("StringLike on an ARN key is fine", doc(enclave(Condition={
        **ATTESTED, "StringLike": {"aws:PrincipalArn": f"arn:aws:iam::{ACCOUNT}:role/enc*"}})),
     []),
    ("Deny statements are not grants", doc(enclave(), {
        "Sid": "DenyUnattested", "Effect": "Deny", "Principal": "*", "Action": "kms:Decrypt",
        "Resource": "*", "Condition": {"Null": {"kms:RecipientAttestation:ImageSha384": "true"}}}),
     []),
]
LINTS[2] = ("NotAction grants Decrypt", doc({
    "Sid": "Enclave", "Effect": "Allow", "Principal": {"AWS": ROLE}, "NotAction": "kms:Encrypt",
    "Resource": "*"}), ["unattested-grant", "decrypt-equivalent"])


@pytest.mark.parametrize(("name", "text", "codes"), LINTS, ids=[c[0] for c in LINTS])
def test_lint_findings(name: str, text: str, codes: list[str]) -> None:
    findings = lint_policy(parse_policy(text))
    assert sorted(f.code for f in findings) == sorted(codes), [f.line() for f in findings]
    for f in findings:
        assert "\n" not in f.line() and f.statement in f.line()


def test_lint_suggests_the_close_key() -> None:
    text = LINTS[[c[0] for c in LINTS].index("typo in key")][1]
    (typo,) = [f for f in lint_policy(parse_policy(text)) if f.code == "unknown-key"]
    assert "did you mean kms:RecipientAttestation:ImageSha384?" in typo.message
    assert typo.statement == 'Sid "Enclave"'


def test_lint_admin_flag_trusts_a_principal(tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "p.json"
    path.write_text(doc(enclave(), {"Sid": "Admin decrypts", "Effect": "Allow",
                                    "Principal": {"AWS": ADMIN}, "Action": "kms:Decrypt",
                                    "Resource": "*"}))
    rc, out, _ = run(["kms", "lint-policy", str(path)], capsys)
    assert rc == 1 and out.startswith('Sid "Admin decrypts": error unattested-grant: grants '
                                      f"Decrypt to {ADMIN} without")
    rc, out, _ = run(["kms", "lint-policy", "--admin", ADMIN, str(path)], capsys)
    assert rc == 0


def test_lint_json_and_exit_codes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text(doc(SDK_C_157 | {"Sid": ""}))
    rc, out, err = run(["kms", "lint-policy", "--json", str(bad)], capsys)
    report = json.loads(out)
    assert rc == 1 and err == ""
    assert report["clean"] is False
    assert report["findings"][0]["statement"] == "Statement[0]"
    assert report["findings"][0]["index"] == 0
    assert report["findings"][0]["code"] == "unattested-grant"
    good = tmp_path / "good.json"
    good.write_text(doc(enclave()))
    rc, out, _ = run(["kms", "lint-policy", "--json", str(good)], capsys)
    assert rc == 0 and json.loads(out) == {"file": str(good), "clean": True, "findings": []}
    for path, content, message in [
        (tmp_path / "missing.json", None, "no such file"),
        (tmp_path / "dup.json", '{"Version":"2012-10-17","Version":"2012-10-17"}',
         "duplicate JSON key 'Version'"),
        (tmp_path / "latin1.json", b"\xff\xfe", "not UTF-8"),
        (tmp_path / "big.json", " " * (32 * 1024 + 1), "larger than 32768 bytes"),
        (tmp_path / "notpolicy.json", "[]", "expected a JSON object"),
    ]:
        if isinstance(content, bytes):
            path.write_bytes(content)
        elif content is not None:
            path.write_text(content)
        rc, out, err = run(["kms", "lint-policy", "--json", str(path)], capsys)
        assert rc == 2 and err == "", path
        answer = json.loads(out)
        assert answer["file"] == str(path) and message in answer["error"]
        rc, out, err = run(["kms", "lint-policy", str(path)], capsys)
        assert rc == 2 and out == "" and message in err and err.count("\n") == 1


def test_lint_text_escapes_what_the_file_says(tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "p.json"
    path.write_text(doc(enclave(Condition={**ATTESTED,
                                           "StringEquals": {"kms:Via\u001b[2JService": "x"}})))
    rc, out, _ = run(["kms", "lint-policy", str(path)], capsys)
    assert rc == 1 and "unknown-key" in out and "\x1b" not in out


def test_help_teaches_with_examples(capsys: pytest.CaptureFixture[str]) -> None:
    for command, example in (("policy", "nitro-attest kms policy --measurements build.json"),
                             ("lint-policy", "nitro-attest kms lint-policy policy.json")):
        assert main(["kms", command, "--help"]) == 0
        assert example in capsys.readouterr().out
