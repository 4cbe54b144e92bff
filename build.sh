#!/usr/bin/env bash
# Build the enclave: Docker image from enclave/Dockerfile, then the EIF with nitro-cli.
set -euo pipefail
NA_ROOT="$(cd "$(dirname "$0")" && pwd)"
NA_PROG="build.sh"
# shellcheck source=scripts/aws-common.sh
. "$NA_ROOT/scripts/aws-common.sh"

usage() {
    cat <<EOF
usage: ./build.sh [--write-expected] [--tag IMAGE] [--no-nitro-cli [--blobs DIR]]

Builds the Docker image (enclave/Dockerfile, context: the repo root) and turns it into an
enclave image file with 'nitro-cli build-enclave', or, with --no-nitro-cli, with
'docker save' and 'nitro-attest eif build' (reproducible: same sources, same EIF bytes). Writes:
  build/enclave.eif          the enclave image
  build/measurements.json    its PCRs as nitro-cli prints them (also printed on stdout)
  build/image.tar            with --no-nitro-cli: the saved image the EIF was built from
With --write-expected, also copies the measurements to client/expected-measurements.json,
the file ./attest.sh checks the enclave against.

Rebuilding from the same source gives the same PCRs (SOURCE_DATE_EPOCH, default $NA_EPOCH_DEFAULT).
nitro-cli refuses to run an enclave with less memory than 4x the EIF size (E26); the
script warns if the allocator's memory_mib ($NA_ALLOCATOR) is too small.

options:
  --write-expected   also write client/expected-measurements.json
  --tag IMAGE        Docker image name (default nitro-attest-enclave:latest)
  --no-nitro-cli     build the EIF with nitro-attest (no nitro-cli, no linuxkit)
  --blobs DIR        kernel, init, nsm.ko and cmdline for --no-nitro-cli (default:
                     \$NITRO_CLI_BLOBS, else /usr/share/nitro_enclaves/blobs)
  -h, --help         this help
EOF
}

NA_EPOCH_DEFAULT=1704067200 # 2024-01-01: fixed so rebuilds are byte-identical
tag="nitro-attest-enclave:latest"
write_expected=0
no_nitro_cli=0
blobs=""
while [ $# -gt 0 ]; do
    case "$1" in
        --write-expected) write_expected=1 ;;
        --tag) tag="${2:?--tag needs a value}"; shift ;;
        --no-nitro-cli) no_nitro_cli=1 ;;
        --blobs) blobs="${2:?--blobs needs a value}"; shift ;;
        -h | --help) usage; exit 0 ;;
        *) na_die "unknown option: $1 (see --help)" 2 ;;
    esac
    shift
done

[ -z "$blobs" ] || [ "$no_nitro_cli" -eq 1 ] || na_die "--blobs goes with --no-nitro-cli" 2
command -v docker >/dev/null 2>&1 || na_die "docker not found; run ./setup-pvm.sh first" 2
if [ "$no_nitro_cli" -eq 1 ]; then
    na="$(na_nitro_attest)"
else
    na_need_nitro_cli
fi
mkdir -p "$NA_ROOT/build"
out="$NA_ROOT/build"
epoch="${SOURCE_DATE_EPOCH:-$NA_EPOCH_DEFAULT}"

echo "== docker build ($tag)" >&2
docker build --build-arg "SOURCE_DATE_EPOCH=$epoch" \
    -f "$NA_ROOT/enclave/Dockerfile" -t "$tag" "$NA_ROOT" >&2 ||
    na_die "docker build failed (is the docker service running and your user in the 'docker' group?)"

rm -f "$out/enclave.eif" "$out/measurements.json.tmp"
if [ "$no_nitro_cli" -eq 1 ]; then
    echo "== docker save ($tag)" >&2
    rm -f "$out/image.tar"
    docker save -o "$out/image.tar" "$tag" >&2 || na_die "docker save failed"
    [ -s "$out/image.tar" ] || na_die "docker save wrote no image to build/image.tar"
    echo "== nitro-attest eif build (no nitro-cli; SOURCE_DATE_EPOCH=$epoch)" >&2
    set -- eif build --image "$out/image.tar" --output "$out/enclave.eif"
    [ -z "$blobs" ] || set -- "$@" --blobs="$blobs"
    rc=0
    SOURCE_DATE_EPOCH="$epoch" "$na" "$@" >"$out/measurements.json.tmp" || rc=$?
    if [ "$rc" -ne 0 ]; then
        rm -f "$out/measurements.json.tmp"
        na_die "nitro-attest eif build failed (exit status $rc)" "$rc"
    fi
else
    echo "== nitro-cli build-enclave (a few minutes)" >&2
    na_nitro_cli build-enclave --docker-uri="$tag" --output-file="$out/enclave.eif" >"$out/measurements.json.tmp"
fi
mv "$out/measurements.json.tmp" "$out/measurements.json"
cat "$out/measurements.json"

size="$(wc -c <"$out/enclave.eif")"
need="$(na_min_memory_mib "$out/enclave.eif")"
have="$(na_allocator_value memory_mib)"
echo "EIF: build/enclave.eif, $((size / 1048576)) MiB ($size bytes); an enclave needs at least $need MiB (4x)" >&2
if [ -n "$have" ] && [ "$have" -lt "$need" ]; then
    na_warn "the allocator reserves memory_mib: $have in $NA_ALLOCATOR but this EIF needs $need; ./run.sh would fail with E26. Raise memory_mib and restart nitro-enclaves-allocator.service"
fi

if [ "$write_expected" -eq 1 ]; then
    mkdir -p "$NA_ROOT/client"
    cp "$out/measurements.json" "$NA_ROOT/client/expected-measurements.json"
    echo "wrote client/expected-measurements.json" >&2
else
    echo "measurements kept in build/measurements.json; copy them to client/expected-measurements.json (or rerun with --write-expected)" >&2
fi
