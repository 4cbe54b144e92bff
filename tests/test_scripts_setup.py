"""setup-pvm.sh and setup-client.sh, driven by fake system commands and env-overridden paths."""

from __future__ import annotations

import os
import pwd
from pathlib import Path

import pytest

from .nitro_fakes import FakeBin, write_exe
from .script_env import ScriptEnv, make_env

UBUNTU = 'NAME="Ubuntu"\nVERSION_ID="24.04"\nID=ubuntu\nID_LIKE=debian\n'
AL2023 = 'NAME="Amazon Linux"\nVERSION_ID="2023"\nID="amzn"\nID_LIKE="fedora"\n'
DEBIAN = 'NAME="Debian GNU/Linux"\nVERSION_ID="12"\nID=debian\n'

# `make ... install` "installs" nitro-cli: it creates the marker the env script looks for.
_FAKE_MAKE = r"""
import json, sys
from pathlib import Path
HERE = Path(__file__).resolve().parent
with open(HERE / "calls.jsonl", "a") as fh:
    fh.write(json.dumps(["make", *sys.argv[1:]]) + "\n")
if "install" in sys.argv[1:]:
    (HERE.parent / "installed").touch()
"""

PINNED = "82501bb9637e4b41c87ce73f8ffc2ce51ca37a6a"  # v1.4.3

# `git clone` makes a checkout whose HEAD is $FAKE_GIT_HEAD (default: the pinned commit), as if
# the tag pointed there; `rev-parse HEAD` and `status --porcelain` read the checkout's files.
_FAKE_GIT = r"""
import json, os, sys
from pathlib import Path
HERE = Path(__file__).resolve().parent
args = sys.argv[1:]
with open(HERE / "calls.jsonl", "a") as fh:
    fh.write(json.dumps(["git", *args]) + "\n")
if args[:1] == ["clone"]:
    dot = Path(args[-1]) / ".git"
    dot.mkdir(parents=True)
    (dot / "fake-head").write_text(os.environ.get("FAKE_GIT_HEAD", "@PINNED@") + "\n")
elif args[:1] == ["-C"]:
    dot = Path(args[1]) / ".git"
    if args[2:] == ["rev-parse", "HEAD"]:
        sys.stdout.write((dot / "fake-head").read_text())
    elif args[2:4] == ["status", "--porcelain"]:
        if (dot / "fake-status").exists():
            sys.stdout.write((dot / "fake-status").read_text())
""".replace("@PINNED@", PINNED)


@pytest.fixture
def pvm(tmp_path: Path) -> ScriptEnv:
    se = make_env(tmp_path)
    nitro_bin = tmp_path / "nitro-bin"
    nitro_bin.mkdir()
    (se.bin.dir / "nitro-cli").rename(nitro_bin / "nitro-cli")  # not installed yet
    se.bin.recorder(
        "apt-get",
        "dnf",
        "yum",
        "amazon-linux-extras",
        "systemctl",
        "usermod",
        "groupadd",
        "modprobe",
        "nitro-cli-config",
        "chown",
    )
    write_exe(se.bin.dir / "make", _FAKE_MAKE)
    write_exe(se.bin.dir / "git", _FAKE_GIT)
    (se.bin.dir / "sudo").write_text('#!/bin/sh\nexec "$@"\n')
    (se.bin.dir / "sudo").chmod(0o755)
    env_script = tmp_path / "nitro-cli-env.sh"
    env_script.write_text(
        f'[ -f "{tmp_path}/installed" ] && export PATH="{nitro_bin}:$PATH"\ntrue\n'
    )
    (tmp_path / "os-release").write_text(UBUNTU)
    (tmp_path / "sys_vendor").write_text("Amazon EC2\n")
    (tmp_path / "nitro_enclaves").touch()
    se.env.update(
        USERNAME=pwd.getpwuid(os.getuid()).pw_name,
        NITRO_ATTEST_OS_RELEASE=str(tmp_path / "os-release"),
        NITRO_ATTEST_SYS_VENDOR=str(tmp_path / "sys_vendor"),
        NITRO_ATTEST_NE_DEVICE=str(tmp_path / "nitro_enclaves"),
        NITRO_ATTEST_NITRO_ENV=str(env_script),
        NITRO_ATTEST_USER_HOME=str(tmp_path / "home"),
        NITRO_CLI_SRC=str(tmp_path / "src/aws-nitro-enclaves-cli"),
    )
    return se


def _names(se: ScriptEnv) -> list[str]:
    return [" ".join(c[:2]) for c in se.bin.calls()]


def test_ubuntu_builds_from_source_and_is_idempotent(pvm: ScriptEnv) -> None:
    r = pvm.run("setup-pvm.sh")
    assert r.returncode == 0, r.stderr
    calls = pvm.bin.calls()
    install = next(c for c in calls if c[:2] == ["apt-get", "install"])
    assert {"docker.io", "build-essential", "git", "linux-modules-extra-aws"} <= set(install)
    src = str(pvm.tmp / "src/aws-nitro-enclaves-cli")
    assert [
        "git",
        "clone",
        "--depth",
        "1",
        "--branch",
        "v1.4.3",
        "https://github.com/aws/aws-nitro-enclaves-cli.git",
        src,
    ] in calls
    assert ["git", "-C", src, "rev-parse", "HEAD"] in calls  # the pinned commit, checked
    makes = [c[3:] for c in calls if c[0] == "make"]
    assert makes == [["nitro-cli"], ["vsock-proxy"], ["NITRO_CLI_INSTALL_DIR=/", "install"]]
    assert ["nitro-cli-config", "-i"] in calls
    user = pvm.env["USERNAME"]
    assert ["usermod", "-aG", "ne,docker", user] in calls
    assert ["systemctl", "enable", "nitro-enclaves-allocator.service"] in calls
    order = _names(pvm)
    assert (
        order.index("apt-get install")
        < order.index("git clone")
        < order.index("nitro-cli-config -i")
        < order.index("usermod -aG")
    )
    bashrc = pvm.tmp / "home/.bashrc"
    line = f"source {pvm.env['NITRO_ATTEST_NITRO_ENV']}"
    assert bashrc.read_text().splitlines() == [line]

    (pvm.tmp / "bin/calls.jsonl").unlink()
    again = pvm.run("setup-pvm.sh")
    assert again.returncode == 0, again.stderr
    assert "already installed" in again.stderr
    assert not any(c[0] in ("git", "make", "nitro-cli-config") for c in pvm.bin.calls())
    assert bashrc.read_text().splitlines() == [line]


def test_a_moved_tag_is_refused_before_anything_is_built(pvm: ScriptEnv) -> None:
    r = pvm.run("setup-pvm.sh", env={"FAKE_GIT_HEAD": "f" * 40})
    assert r.returncode == 1
    assert "f" * 40 in r.stderr and PINNED in r.stderr and "v1.4.3" in r.stderr
    assert not any(c[0] in ("make", "nitro-cli-config") for c in pvm.bin.calls())


def test_an_existing_checkout_is_reused_only_at_the_pinned_commit(pvm: ScriptEnv) -> None:
    src = pvm.tmp / "src/aws-nitro-enclaves-cli"
    (src / ".git").mkdir(parents=True)
    (src / ".git/fake-head").write_text("e" * 40 + "\n")  # someone else's checkout
    r = pvm.run("setup-pvm.sh")
    assert r.returncode == 1 and "e" * 40 in r.stderr and PINNED in r.stderr
    calls = pvm.bin.calls()
    assert not any(c[:2] == ["git", "clone"] or c[0] == "make" for c in calls)

    (src / ".git/fake-head").write_text(PINNED + "\n")
    (src / ".git/fake-status").write_text(" M Makefile\n")  # the right commit, edited
    r = pvm.run("setup-pvm.sh")
    assert r.returncode == 1 and "local changes" in r.stderr
    assert not any(c[0] == "make" for c in pvm.bin.calls())

    (src / ".git/fake-status").unlink()
    r = pvm.run("setup-pvm.sh")
    assert r.returncode == 0, r.stderr
    calls = pvm.bin.calls()
    assert not any(c[:2] == ["git", "clone"] for c in calls)
    assert next(c[3:] for c in calls if c[0] == "make") == ["nitro-cli"]


def test_another_ref_needs_its_commit(pvm: ScriptEnv) -> None:
    r = pvm.run("setup-pvm.sh", env={"NITRO_CLI_REF": "v9.9.9"})
    assert r.returncode == 2 and "NITRO_CLI_COMMIT" in r.stderr
    assert not any(c[0] in ("git", "make") for c in pvm.bin.calls())
    r = pvm.run("setup-pvm.sh", env={"NITRO_CLI_REF": "v9.9.9", "NITRO_CLI_COMMIT": PINNED})
    assert r.returncode == 0, r.stderr
    assert any(c[:2] == ["git", "clone"] and "v9.9.9" in c for c in pvm.bin.calls())


def test_amazon_linux_uses_packages(pvm: ScriptEnv) -> None:
    (pvm.tmp / "os-release").write_text(AL2023)
    (pvm.tmp / "installed").touch()  # the RPM puts nitro-cli on PATH
    r = pvm.run("setup-pvm.sh")
    assert r.returncode == 0, r.stderr
    calls = pvm.bin.calls()
    dnf = next(c for c in calls if c[0] == "dnf")
    assert {"aws-nitro-enclaves-cli", "aws-nitro-enclaves-cli-devel", "docker"} <= set(dnf)
    assert not any(c[0] in ("apt-get", "git", "make") for c in calls)
    assert ["usermod", "-aG", "ne,docker", pvm.env["USERNAME"]] in calls


@pytest.mark.parametrize("os_release", [DEBIAN, UBUNTU.replace("24.04", "20.04"), ""])
def test_unsupported_os_is_refused(pvm: ScriptEnv, os_release: str) -> None:
    (pvm.tmp / "os-release").write_text(os_release)
    r = pvm.run("setup-pvm.sh")
    assert r.returncode == 1 and "unsupported OS" in r.stderr
    assert pvm.bin.calls() == []


def test_not_an_ec2_instance_is_refused(pvm: ScriptEnv) -> None:
    (pvm.tmp / "sys_vendor").write_text("QEMU\n")
    r = pvm.run("setup-pvm.sh")
    assert r.returncode == 1 and "not an EC2 Nitro instance" in r.stderr
    assert pvm.bin.calls() == []


def test_enclaves_not_enabled_is_refused(pvm: ScriptEnv) -> None:
    (pvm.tmp / "nitro_enclaves").unlink()
    r = pvm.run("setup-pvm.sh")
    assert r.returncode == 1
    assert "Nitro Enclave: Enabled" in r.stderr
    assert not any(c[0] == "usermod" for c in pvm.bin.calls())


def test_username_is_required(pvm: ScriptEnv) -> None:
    r = pvm.run("setup-pvm.sh", env={"USERNAME": ""})
    assert r.returncode == 2 and "USERNAME" in r.stderr
    r = pvm.run("setup-pvm.sh", env={"USERNAME": "no-such-user-xyz"})
    assert r.returncode == 2 and "no such user" in r.stderr


def test_allocator_settings(pvm: ScriptEnv) -> None:
    pvm.allocator.write_text("---\nmemory_mib: 512\n# comment\ncpu_pool: 2,3\n")
    r = pvm.run("setup-pvm.sh", "--memory-mib", "1024", "--cpu-count", "4")
    assert r.returncode == 0, r.stderr
    text = pvm.allocator.read_text()
    assert "memory_mib: 1024\n" in text and "cpu_count: 4\n" in text
    assert "\ncpu_pool:" not in text and "# cpu_pool: 2,3" in text
    assert "memory_mib: 1024" in r.stderr  # the summary shows the settings
    bad = pvm.run("setup-pvm.sh", "--memory-mib", "lots")
    assert bad.returncode == 2


# --- setup-client.sh --------------------------------------------------------------------------


def test_setup_client_installs_project_into_venv(tmp_path: Path) -> None:
    se = make_env(tmp_path)
    # A stand-in venv interpreter that records the pip calls instead of installing.
    venv_bin = se.repo / ".venv/bin"
    venv_bin.mkdir(parents=True)
    write_exe(venv_bin / "python", (se.bin.dir / "docker").read_text().split("\n", 1)[1])
    r = se.run("setup-client.sh")
    assert r.returncode == 0, r.stderr
    recorded = FakeBin.__new__(FakeBin)
    recorded.dir = venv_bin  # the recorder logs beside itself
    pip_calls = [c[1:] for c in recorded.calls("python")]
    assert ["-m", "pip", "install", "-q", "--disable-pip-version-check", "-e", str(se.repo)] in (
        pip_calls
    )
    assert (se.repo / "client").is_dir()
    assert "client ready" in r.stdout
    # Second run: nothing to do (stamp newer than pyproject.toml).
    n = len(pip_calls)
    assert se.run("setup-client.sh").returncode == 0
    assert len(recorded.calls("python")) == n


def test_setup_client_without_python3(tmp_path: Path) -> None:
    se = make_env(tmp_path)
    bare = tmp_path / "bare"
    bare.mkdir()
    for tool in ("dirname", "bash", "mkdir"):
        for d in os.environ["PATH"].split(os.pathsep):
            if (Path(d) / tool).exists():
                (bare / tool).symlink_to(Path(d) / tool)
                break
    r = se.run("setup-client.sh", env={"PATH": str(bare)})
    assert r.returncode == 2 and "python3 not found" in r.stderr


# A python3 whose venv module lacks ensurepip (fresh Ubuntu without python3-venv) until the fake
# apt-get "installs" python3-venv; then `-m venv DIR` makes a DIR/bin/python that accepts pip.
_PY_NO_VENV = r"""
import os, sys
from pathlib import Path
HERE = Path(__file__).resolve().parent
with open(HERE / "python3.log", "a") as fh:
    fh.write(" ".join(sys.argv[1:]) + "\n")
if sys.argv[1:2] == ["-c"]:
    sys.exit(0)  # the version check passes
if sys.argv[1:3] == ["-m", "venv"]:
    if not (HERE / "venv-installed").exists():
        sys.stderr.write("The virtual environment was not created successfully because ensurepip "
                         "is not available.\n")
        sys.exit(1)
    target = Path(sys.argv[3]) / "bin"
    target.mkdir(parents=True)
    (target / "python").write_text("#!/bin/sh\nexit 0\n")
    (target / "python").chmod(0o755)
    sys.exit(0)
sys.exit(3)
"""
_APT = r"""
import sys
from pathlib import Path
HERE = Path(__file__).resolve().parent
with open(HERE / "apt.log", "a") as fh:
    fh.write(" ".join(sys.argv[1:]) + "\n")
if "install" in sys.argv:
    (HERE / "venv-installed").touch()
"""


@pytest.mark.parametrize("uid", ["0", "1000"])
def test_setup_client_without_python3_venv(tmp_path: Path, uid: str) -> None:
    se = make_env(tmp_path)
    write_exe(se.bin.dir / "python3", _PY_NO_VENV)
    write_exe(se.bin.dir / "apt-get", _APT)
    (se.bin.dir / "id").write_text(f"#!/bin/sh\necho {uid}\n")
    (se.bin.dir / "id").chmod(0o755)
    r = se.run("setup-client.sh")
    if uid == "0":
        assert r.returncode == 0, r.stderr
        assert "installing python3-venv" in r.stderr
        apt = (se.bin.dir / "apt.log").read_text().splitlines()
        assert apt[0] == "update -qq" and "install -y -qq python3-venv" in apt[1]
        assert (se.repo / ".venv/bin/python").exists()
    else:
        assert r.returncode == 2
        assert "sudo apt-get install -y python3-venv" in r.stderr
        assert "Traceback" not in r.stderr
        assert not (se.bin.dir / "apt.log").exists()
        assert not (se.repo / ".venv").exists()


@pytest.mark.parametrize("dangling", [False, True])
def test_bashrc_symlink_is_not_followed(pvm: ScriptEnv, dangling: bool) -> None:
    """~/.bashrc belongs to the user, who may point it at any file: root must not write there."""
    victim = pvm.tmp / "victim"
    if not dangling:
        victim.write_text("root:x:0:0::/root:/bin/bash\n")
        victim.chmod(0o600)
    (pvm.tmp / "home/.bashrc").symlink_to(victim)
    r = pvm.run("setup-pvm.sh")
    assert r.returncode == 0, r.stderr
    assert "is a symbolic link" in r.stderr and "add this line to it yourself" in r.stderr
    if dangling:
        assert not victim.exists()  # not created through the link either
    else:
        assert victim.read_text() == "root:x:0:0::/root:/bin/bash\n"
        assert victim.stat().st_mode & 0o777 == 0o600
    assert (pvm.tmp / "home/.bashrc").is_symlink()
    assert not any(c[0] == "chown" for c in pvm.bin.calls())


def test_bashrc_hard_link_is_not_written(pvm: ScriptEnv) -> None:
    victim = pvm.tmp / "victim"
    victim.write_text("precious\n")
    os.link(victim, pvm.tmp / "home/.bashrc")
    r = pvm.run("setup-pvm.sh")
    assert r.returncode == 0, r.stderr
    assert "single link" in r.stderr
    assert victim.read_text() == "precious\n"


def test_bashrc_existing_file_gets_the_line_once(pvm: ScriptEnv) -> None:
    bashrc = pvm.tmp / "home/.bashrc"
    bashrc.write_text("alias ll='ls -l'")  # no final newline
    assert pvm.run("setup-pvm.sh").returncode == 0
    assert pvm.run("setup-pvm.sh").returncode == 0
    line = f"source {pvm.env['NITRO_ATTEST_NITRO_ENV']}"
    assert bashrc.read_text().splitlines() == ["alias ll='ls -l'", line]
