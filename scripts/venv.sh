#!/usr/bin/env bash
# Shared by test.sh, demo.sh and setup-client.sh: make sure .venv exists and holds the project.
# Sourced, not run. Fresh Ubuntu has python3 but not python3-venv (no ensurepip): detect that and
# install it when we are root, or say exactly what to install.

nitro_attest_ensure_venv() {
    local root="$1" extras="${2:-}"
    local venv="$root/.venv"
    if ! command -v python3 >/dev/null 2>&1; then
        echo "error: python3 not found; install Python 3.11 or newer first" >&2
        return 2
    fi
    if ! python3 -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
        echo "error: nitro-attest needs Python >= 3.11, found $(python3 --version 2>&1)" >&2
        return 2
    fi
    if [ ! -x "$venv/bin/python" ]; then
        if ! python3 -m venv "$venv" >/dev/null 2>&1; then
            rm -rf "$venv"
            local pkg
            pkg="python3-venv"
            if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
                echo "python3 cannot create a venv; installing $pkg with apt-get" >&2
                apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$pkg" >/dev/null
                python3 -m venv "$venv"
            else
                echo "error: python3 cannot create a virtual environment (ensurepip missing)." >&2
                echo "       run: sudo apt-get install -y $pkg   and then run this script again" >&2
                return 2
            fi
        fi
    fi
    local stamp="$venv/.nitro-attest-installed${extras:+-$extras}"
    if [ ! -f "$stamp" ] || [ "$root/pyproject.toml" -nt "$stamp" ]; then
        "$venv/bin/python" -m pip install -q --disable-pip-version-check --upgrade pip >/dev/null
        local spec="$root"
        [ -n "$extras" ] && spec="${root}[$extras]"
        "$venv/bin/python" -m pip install -q --disable-pip-version-check -e "$spec"
        touch "$stamp"
    fi
}
