"""Proxy policy without sockets: host syntax, the AWS allowlist file, addresses names may reach."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest

from nitro_attest.proxy.allowlist import Allowlist, AllowlistError, load_allowlist, parse_allowlist
from nitro_attest.proxy.hosts import Host, HostSyntaxError, parse_host, refused_for_names

# The shape of AWS's /etc/nitro_enclaves/vsock-proxy.yaml, shortened.
AWS_FILE = b"""\
allowlist:
- {address: kms.us-east-1.amazonaws.com, port: 443}
- {address: kms-fips.us-east-1.amazonaws.com, port: 443}
- {address: 169.254.169.254, port: 80}
- address: 2600:1f18::1
  port: 443
"""


def test_aws_file_read_unchanged() -> None:
    allow = parse_allowlist(AWS_FILE)
    assert len(allow) == 4
    assert allow.allows(parse_host("kms.us-east-1.amazonaws.com"), 443)
    assert allow.allows(parse_host("KMS.us-east-1.AmazonAWS.com"), 443)  # names are case-blind
    assert allow.allows(parse_host("169.254.169.254"), 80)
    assert allow.allows(parse_host("2600:1f18:0::1"), 443)  # IPv6 compared as addresses


@pytest.mark.parametrize(
    ("host", "port"),
    [
        ("kms.us-east-1.amazonaws.com", 80),  # right host, wrong port
        ("kms.us-east-2.amazonaws.com", 443),
        ("us-east-1.amazonaws.com", 443),  # no suffix matching
        ("evil.kms.us-east-1.amazonaws.com", 443),
        ("169.254.169.254", 443),
        ("::ffff:169.254.169.254", 80),  # a mapped form of a listed address is another literal
    ],
)
def test_not_on_the_list(host: str, port: int) -> None:
    assert not parse_allowlist(AWS_FILE).allows(parse_host(host), port)


def test_name_does_not_allow_its_address_nor_the_reverse() -> None:
    by_name = Allowlist.of([("localhost", 8080)])
    assert by_name.allows(parse_host("localhost"), 8080)
    assert not by_name.allows(parse_host("127.0.0.1"), 8080)
    by_ip = Allowlist.of([("127.0.0.1", 8080)])
    assert by_ip.allows(parse_host("127.0.0.1"), 8080)
    assert not by_ip.allows(parse_host("localhost"), 8080)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (b"", "expected one top-level key"),
        (b"allowlist: []\n", "empty"),
        (b"allowlist:\n", "must be a list"),
        (b"- {address: a.com, port: 443}\n", "expected one top-level key"),
        (b"allowlist: [{address: a.com, port: 443}]\nextra: 1\n", "expected one top-level key"),
        (b"allowlist: [{address: a.com}]\n", "entry 1: expected exactly the keys"),
        (b"allowlist: [{address: a.com, port: 443, ports: 80}]\n", "expected exactly the keys"),
        (b"allowlist: [{address: a.com, port: '443'}]\n", "port must be an integer"),
        (b"allowlist: [{address: a.com, port: 0}]\n", "port must be an integer"),
        (b"allowlist: [{address: a.com, port: 65536}]\n", "port must be an integer"),
        (b"allowlist: [{address: a.com, port: true}]\n", "port must be an integer"),
        (b"allowlist: [{address: 443, port: 443}]\n", "address must be"),
        (b"allowlist: [{address: a.com, address: b.com, port: 443}]\n", "duplicate key"),
        (b"allowlist: [{address: a.com, port: 443}\n", "not valid YAML"),
        (b"allowlist: [{address: '010.0.0.1', port: 443}]\n", "numeric host"),
        (b"allowlist: [{address: '2130706433', port: 443}]\n", "numeric host"),
        (b"allowlist: [{address: 'a_b.com', port: 443}]\n", "not an IP address nor a host name"),
        (b"allowlist: [{address: 'fe80::1%eth0', port: 443}]\n", "zone"),
        (b"allowlist: !!python/object:os.system {}\n", "not valid YAML"),
    ],
)
def test_bad_files_refused_in_one_line(text: bytes, message: str) -> None:
    with pytest.raises(AllowlistError, match=message) as e:
        parse_allowlist(text)
    assert "\n" not in str(e.value)


def test_file_errors_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(AllowlistError, match=r"nope\.yaml: cannot read"):
        load_allowlist(str(tmp_path / "nope.yaml"))
    big = tmp_path / "big.yaml"
    big.write_bytes(b"#" * (1 << 20) + b"\n")
    with pytest.raises(AllowlistError, match="larger than"):
        load_allowlist(str(big))
    good = tmp_path / "vsock-proxy.yaml"
    good.write_bytes(AWS_FILE)
    assert len(load_allowlist(str(good))) == 4


@pytest.mark.parametrize(
    "text",
    [
        "",
        "a..b",
        "-a.com",
        "a-.com",
        "a.com.",  # trailing dot: not the same string as the listed name, refused
        "a b",
        "a\x00b",
        "é.com",
        "127.1",
        "0x7f.1",
        "1.0x7f",
        "127.0.0.01",
        "1.2.3",
        "x" * 64 + ".com",
        ("a" * 60 + ".") * 5 + "com",
        "fe80::1%1",
    ],
)
def test_host_syntax_refused(text: str) -> None:
    with pytest.raises(HostSyntaxError):
        parse_host(text)


def test_host_forms() -> None:
    assert parse_host("Example.COM") == Host(name="example.com")
    assert parse_host("10.0.0.1").ip == ipaddress.ip_address("10.0.0.1")
    assert str(parse_host("::1")) == "[::1]"
    assert parse_host("a-1.b2.c") == Host(name="a-1.b2.c")


@pytest.mark.parametrize(
    "ip",
    [
        "127.0.0.1",
        "127.8.9.10",
        "::1",
        "169.254.169.254",
        "fd00:ec2::254",
        "fe80::1",
        "0.0.0.0",
        "0.1.2.3",
        "::",
        "::ffff:127.0.0.1",
        "::ffff:169.254.169.254",
        "64:ff9b::a9fe:a9fe",  # DNS64 for 169.254.169.254
        "64:ff9b::7f00:1",
        "224.0.0.1",
        "ff02::1",
        "240.0.0.1",
        "255.255.255.255",
    ],
)
def test_names_may_not_resolve_to(ip: str) -> None:
    assert refused_for_names(ipaddress.ip_address(ip)) is not None


@pytest.mark.parametrize(
    "ip", ["10.0.0.5", "172.31.2.3", "52.94.1.1", "2600:1f18::1", "100.64.0.1"]
)
def test_names_may_resolve_to(ip: str) -> None:  # private ranges: VPC endpoints live there
    assert refused_for_names(ipaddress.ip_address(ip)) is None
