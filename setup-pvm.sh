#!/usr/bin/env bash
# Prepare the parent instance: Docker, the Nitro Enclaves driver, nitro-cli and the allocator.
set -euo pipefail
NA_ROOT="$(cd "$(dirname "$0")" && pwd)"
NA_PROG="setup-pvm.sh"
# shellcheck source=scripts/aws-common.sh
. "$NA_ROOT/scripts/aws-common.sh"

OS_RELEASE="${NITRO_ATTEST_OS_RELEASE:-/etc/os-release}"
SYS_VENDOR="${NITRO_ATTEST_SYS_VENDOR:-/sys/devices/virtual/dmi/id/sys_vendor}"
NE_DEVICE="${NITRO_ATTEST_NE_DEVICE:-/dev/nitro_enclaves}"
ENV_SCRIPT="$NA_NITRO_ENV"
CLI_REPO="${NITRO_CLI_REPO:-https://github.com/aws/aws-nitro-enclaves-cli.git}"
# The tag is what a person reads; the commit is what is built (a tag can be moved upstream).
CLI_REF="${NITRO_CLI_REF:-v1.4.3}"
CLI_COMMIT="${NITRO_CLI_COMMIT:-}"
if [ -z "$CLI_COMMIT" ] && [ "$CLI_REF" = v1.4.3 ]; then
    CLI_COMMIT=82501bb9637e4b41c87ce73f8ffc2ce51ca37a6a
fi
CLI_SRC="${NITRO_CLI_SRC:-/usr/local/src/aws-nitro-enclaves-cli}"

usage() {
    cat <<EOF
usage: USERNAME=<user> ./setup-pvm.sh [--memory-mib MIB] [--cpu-count N]

Sets up an EC2 parent instance launched with "Nitro Enclave: Enabled":
  Ubuntu 24.04:   docker.io, build tools and kernel headers from apt; clones
                  $CLI_REPO ($CLI_REF) and builds the Nitro Enclaves driver,
                  nitro-cli and vsock-proxy from source ('make nitro-cli', 'make vsock-proxy',
                  'make install'), then 'nitro-cli-config -i'.
  Amazon Linux:   the aws-nitro-enclaves-cli and aws-nitro-enclaves-cli-devel packages.
Then adds USERNAME to the 'ne' and 'docker' groups, sources $ENV_SCRIPT and adds it
to USERNAME's ~/.bashrc (once), and enables nitro-enclaves-allocator.service.
Safe to run again. Reboot afterwards (sudo reboot) and log in again for the groups to apply.

options:
  --memory-mib MIB   set memory_mib in $NA_ALLOCATOR (default left as is: 512)
  --cpu-count N      set cpu_count in the allocator settings (default left as is: 2)
  -h, --help         this help
environment: USERNAME (required), NITRO_CLI_REF (git tag to build, default $CLI_REF) and
  NITRO_CLI_COMMIT (the commit that tag must be at; required with another NITRO_CLI_REF).
  The checkout is built only at that commit and without local changes: a tag moved upstream,
  or an existing $CLI_SRC at another revision, is refused.
EOF
}

mem=""
cpus=""
while [ $# -gt 0 ]; do
    case "$1" in
        --memory-mib) mem="${2:?--memory-mib needs a value}"; shift ;;
        --cpu-count) cpus="${2:?--cpu-count needs a value}"; shift ;;
        -h | --help) usage; exit 0 ;;
        *) na_die "unknown option: $1 (see --help)" 2 ;;
    esac
    shift
done
for v in "$mem" "$cpus"; do
    case "$v" in *[!0-9]*) na_die "--memory-mib and --cpu-count take whole numbers" 2 ;; esac
done

[ -n "${USERNAME:-}" ] || na_die "set USERNAME to the user who will run enclaves: USERNAME=\$USER ./setup-pvm.sh" 2
id -u "$USERNAME" >/dev/null 2>&1 || na_die "no such user: $USERNAME" 2
[ -n "$CLI_COMMIT" ] || na_die "NITRO_CLI_REF=$CLI_REF: also set NITRO_CLI_COMMIT to the commit that tag must be at (it is built only there)" 2
case "$CLI_COMMIT" in
    *[!0-9a-f]* | "") na_die "NITRO_CLI_COMMIT must be a full commit id (40 hex digits)" 2 ;;
esac
[ "${#CLI_COMMIT}" -eq 40 ] || na_die "NITRO_CLI_COMMIT must be a full commit id (40 hex digits)" 2
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"

# --- what are we running on? -----------------------------------------------------------------
[ -r "$OS_RELEASE" ] || na_die "cannot read $OS_RELEASE; supported: Ubuntu 24.04, Amazon Linux 2023 / 2"
os_id="$(sed -n 's/^ID=//p' "$OS_RELEASE" | tr -d '"')"
os_ver="$(sed -n 's/^VERSION_ID=//p' "$OS_RELEASE" | tr -d '"')"
case "$os_id:$os_ver" in
    ubuntu:24.04) flavour=ubuntu ;;
    amzn:2023 | amzn:2) flavour="amzn$os_ver" ;;
    *) na_die "unsupported OS '${os_id:-?} ${os_ver:-?}' (from $OS_RELEASE); supported: Ubuntu 24.04, Amazon Linux 2023, Amazon Linux 2" ;;
esac
vendor="$(cat "$SYS_VENDOR" 2>/dev/null || true)"
case "$vendor" in
    "Amazon EC2"*) ;;
    *) na_die "this is not an EC2 Nitro instance (sys_vendor: '${vendor:-unknown}'); Nitro Enclaves need a Nitro-based instance launched with 'Nitro Enclave: Enabled'" ;;
esac
echo "== $flavour on EC2; setting up for user $USERNAME" >&2

# --- packages, driver, nitro-cli -------------------------------------------------------------
# The checkout at $CLI_SRC is built only at the pinned commit and unmodified.
check_cli_checkout() {
    local have dirty
    have="$($SUDO git -C "$CLI_SRC" rev-parse HEAD 2>/dev/null || true)"
    if [ "$have" != "$CLI_COMMIT" ]; then
        na_die "$CLI_SRC is at ${have:-an unreadable revision}, not $CLI_COMMIT ($CLI_REF, pinned): the tag was moved upstream or the folder holds another checkout; inspect it, remove it and run again, or set NITRO_CLI_COMMIT"
    fi
    dirty="$($SUDO git -C "$CLI_SRC" status --porcelain --untracked-files=no 2>/dev/null || echo unreadable)"
    [ -z "$dirty" ] || na_die "$CLI_SRC has local changes at $CLI_COMMIT; refusing to build it (git -C $CLI_SRC status)"
}

have_nitro_cli() {
    # shellcheck source=/dev/null
    [ -f "$ENV_SCRIPT" ] && . "$ENV_SCRIPT" >/dev/null 2>&1
    command -v nitro-cli >/dev/null 2>&1
}

if [ "$flavour" = ubuntu ]; then
    $SUDO apt-get update -qq
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq docker.io build-essential git \
        linux-modules-extra-aws "linux-headers-$(uname -r)"
    $SUDO systemctl enable --now docker
    if have_nitro_cli; then
        echo "nitro-cli already installed; not rebuilding" >&2
    else
        [ -d "$CLI_SRC/.git" ] || $SUDO git clone --depth 1 --branch "$CLI_REF" "$CLI_REPO" "$CLI_SRC"
        check_cli_checkout
        # The Makefile builds nitro-cli and vsock-proxy inside Docker containers.
        $SUDO make -C "$CLI_SRC" nitro-cli
        $SUDO make -C "$CLI_SRC" vsock-proxy
        $SUDO make -C "$CLI_SRC" NITRO_CLI_INSTALL_DIR=/ install
        have_nitro_cli || na_die "nitro-cli is not on PATH after 'make install' (looked in $ENV_SCRIPT)"
        # Builds/inserts the driver, creates the 'ne' group and the device node's permissions.
        nitro-cli-config -i || na_die "nitro-cli-config -i failed (see above)"
    fi
elif [ "$flavour" = amzn2023 ]; then
    $SUDO dnf install -y -q docker aws-nitro-enclaves-cli aws-nitro-enclaves-cli-devel
    $SUDO systemctl enable --now docker
else
    $SUDO amazon-linux-extras install -y aws-nitro-enclaves-cli
    $SUDO yum install -y -q docker aws-nitro-enclaves-cli-devel
    $SUDO systemctl enable --now docker
fi
have_nitro_cli || na_die "nitro-cli not found after installation"

# The driver must have created the device; without it the instance has enclaves disabled.
$SUDO modprobe nitro_enclaves 2>/dev/null || true
[ -e "$NE_DEVICE" ] || na_die "$NE_DEVICE does not exist after loading the driver: this instance was not launched with 'Nitro Enclave: Enabled' (stop it, enable it under Advanced details, start it again)"

# --- the user -------------------------------------------------------------------------------
$SUDO groupadd -f ne
$SUDO groupadd -f docker
$SUDO usermod -aG ne,docker "$USERNAME"
home="${NITRO_ATTEST_USER_HOME:-$(getent passwd "$USERNAME" | cut -d: -f6)}"
line="source $ENV_SCRIPT"
# The user owns ~/.bashrc and may have made it a link to any file: it is opened without following
# a symlink (O_NOFOLLOW), must be a plain file with one link, and is chowned through that open
# descriptor, so root never writes to or hands over another file.
append_once_nofollow() { # FILE LINE USER
    $SUDO "$NA_PYTHON" -c '
import errno, os, pwd, stat, sys
path, line, user = sys.argv[1:4]
flags = os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
try:
    fd = os.open(path, flags, 0o644)
except OSError as exc:
    if exc.errno == errno.ELOOP:
        print(f"{path} is a symbolic link", file=sys.stderr)
        sys.exit(3)
    print(f"{path}: {exc.strerror}", file=sys.stderr)
    sys.exit(3)
st = os.fstat(fd)
if not stat.S_ISREG(st.st_mode) or st.st_nlink != 1:
    print(f"{path} is not a plain file with a single link", file=sys.stderr)
    sys.exit(3)
data = os.read(fd, 1 << 20) if st.st_size <= 1 << 20 else b""
if line.encode() in data.splitlines():
    sys.exit(0)
os.write(fd, (b"\n" if data and not data.endswith(b"\n") else b"") + line.encode() + b"\n")
pw = pwd.getpwnam(user)
if st.st_uid != pw.pw_uid:  # created by us just now
    os.fchown(fd, pw.pw_uid, pw.pw_gid)
print("added")
' "$1" "$2" "$3"
}

if [ -f "$ENV_SCRIPT" ] && [ -n "$home" ]; then
    if added="$(append_once_nofollow "$home/.bashrc" "$line" "$USERNAME")"; then
        [ "$added" = added ] && echo "added '$line' to $home/.bashrc" >&2
    else
        echo "$NA_PROG: warning: left $home/.bashrc alone (see above); add this line to it" \
            "yourself: $line" >&2
    fi
fi

# --- the allocator --------------------------------------------------------------------------
set_alloc() {
    if grep -q "^$1:" "$NA_ALLOCATOR"; then
        $SUDO sed -i "s/^$1:.*/$1: $2/" "$NA_ALLOCATOR"
    else
        echo "$1: $2" | $SUDO tee -a "$NA_ALLOCATOR" >/dev/null
    fi
}
if [ -n "$mem$cpus" ]; then
    [ -f "$NA_ALLOCATOR" ] || na_die "$NA_ALLOCATOR missing; nitro-cli's installation should have created it"
    [ -z "$mem" ] || set_alloc memory_mib "$mem"
    if [ -n "$cpus" ]; then
        $SUDO sed -i 's/^cpu_pool:/# cpu_pool:/' "$NA_ALLOCATOR" # conflicts with cpu_count
        set_alloc cpu_count "$cpus"
    fi
fi
$SUDO systemctl enable nitro-enclaves-allocator.service
$SUDO systemctl start nitro-enclaves-allocator.service ||
    na_warn "the allocator did not start yet; after the reboot run: sudo systemctl start nitro-enclaves-allocator.service"

cat >&2 <<EOF
== done. Allocator settings ($NA_ALLOCATOR):
$(grep -E '^(memory_mib|cpu_count|cpu_pool):' "$NA_ALLOCATOR" 2>/dev/null | sed 's/^/   /')
Next: sudo reboot, log in again (for the ne/docker groups), then ./setup-client.sh and ./build.sh
EOF
