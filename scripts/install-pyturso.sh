#!/usr/bin/env bash
# Make pyturso 0.8.3 (PyPI `pyturso`, a Turso Sync client: `turso.sync.connect`) available for
# the interop tests and print the path of a python that imports it on stdout (the only thing
# printed there; progress goes to stderr).
#
# Debian's python3 refuses `pip install` outside a virtual environment, so the package goes
# into a venv of its own, ~/.cache/tursync/pyturso/venv, installed with `--require-hashes`:
# the wheel and its one dependency are pinned by version and sha256.
#
# Idempotent: an executable $PYTURSO_PYTHON or an already installed venv is used as is.
set -euo pipefail

PYTURSO_VERSION=0.8.3
VENV="${HOME:?HOME must be set}/.cache/tursync/pyturso/venv"
REQUIREMENTS="pyturso==$PYTURSO_VERSION \
    --hash=sha256:8ad417fb991351daf9fd6fbd984f16504da3f398137653a2b89cefed03d18616
typing-extensions==4.16.0 \
    --hash=sha256:481caa481374e813c1b176ada14e97f1f67a4539ce9cfeb3f350d78d6370c2e8
"

log() { echo "install-pyturso: $*" >&2; }

python_works() {
    [[ -x "$1" ]] && "$1" -c "
import importlib.metadata, turso.sync
assert importlib.metadata.version('pyturso') == '$PYTURSO_VERSION'
" 2>/dev/null
}

if [[ -n "${PYTURSO_PYTHON:-}" ]]; then
    if [[ -x "$PYTURSO_PYTHON" ]]; then
        echo "$PYTURSO_PYTHON"
        exit 0
    fi
    log "PYTURSO_PYTHON=$PYTURSO_PYTHON is not an executable file; falling back to the cached venv"
fi

if python_works "$VENV/bin/python"; then
    echo "$VENV/bin/python"
    exit 0
fi

if [[ "$(uname -s)/$(uname -m)" != Linux/x86_64 ]]; then
    log "only linux x86_64 is pinned here (this is $(uname -s)/$(uname -m)); set PYTURSO_PYTHON to a python with pyturso $PYTURSO_VERSION"
    exit 1
fi
if ! python3 -c 'import venv, ensurepip' 2>/dev/null && command -v apt-get >/dev/null 2>&1; then
    log "python3's venv module is missing: installing the Debian package python3-venv"
    sudo=""
    [[ $(id -u) == 0 ]] || sudo="sudo"
    $sudo apt-get update -qq >&2
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq python3-venv >&2
fi

# Built aside and renamed into place, so an interrupted run never leaves a half venv there
# (its python finds its packages from where it lies; only pip's own scripts name the old path).
mkdir -p "$(dirname "$VENV")"
tmp="$(mktemp -d "$(dirname "$VENV")/.venv-XXXXXX")"
trap 'rm -rf "$tmp"' EXIT
log "creating a venv and installing pyturso $PYTURSO_VERSION (pinned by hash)"
python3 -m venv "$tmp" >&2
printf '%s' "$REQUIREMENTS" >"$tmp/requirements.txt"
"$tmp/bin/pip" install --quiet --disable-pip-version-check --no-input --require-hashes \
    --only-binary :all: -r "$tmp/requirements.txt" >&2
rm -rf "$VENV"
mv "$tmp" "$VENV"

if ! python_works "$VENV/bin/python"; then
    log "$VENV/bin/python does not import pyturso $PYTURSO_VERSION"
    exit 1
fi
log "pyturso is in $VENV"
echo "$VENV/bin/python"
