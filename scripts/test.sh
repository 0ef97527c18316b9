#!/usr/bin/env bash
# Run the whole test suite against a real sqld (and a real tursodb for the Turso Sync tests,
# with pyturso as a second Turso Sync client).
# Extra arguments go to `cargo test`. The integration tests are one binary, `tests`, with a module
# per file in tests/ (e.g. `scripts/test.sh --test tests harness_selftest::` runs one file's tests).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

# The harness (tests/common) finds sqld through SQLD_BIN. install-sqld.sh
# prints $SQLD_BIN itself when that is a usable binary, else the one it
# installed. (Two steps: `export X="$(cmd)"` would hide cmd's failure.)
sqld_bin="$(bash scripts/install-sqld.sh)"
export SQLD_BIN="$sqld_bin"
echo "test.sh: using sqld at $SQLD_BIN" >&2

# The Turso Sync tests find `tursodb --sync-server` through TURSODB_BIN, installed the same way.
tursodb_bin="$(bash scripts/install-tursodb.sh)"
export TURSODB_BIN="$tursodb_bin"
echo "test.sh: using tursodb at $TURSODB_BIN" >&2

# The interop tests run pyturso, Turso's own sync client, through PYTURSO_PYTHON: a python in
# a venv of its own with pyturso installed at a pinned version and hash.
pyturso_python="$(bash scripts/install-pyturso.sh)"
export PYTURSO_PYTHON="$pyturso_python"
echo "test.sh: using pyturso through $PYTURSO_PYTHON" >&2

# sqldiff (Debian's sqlite3-tools) is the outside oracle of the diff tests, and the sqlite3 shell
# (Debian's sqlite3) loads `dump` and `diff --sql` output as a user would. tursync itself
# never needs them.
packages=()
command -v sqldiff >/dev/null 2>&1 || packages+=(sqlite3-tools)
command -v sqlite3 >/dev/null 2>&1 || packages+=(sqlite3)
if ((${#packages[@]})); then
    echo "test.sh: installing ${packages[*]} (Debian)" >&2
    sudo=""
    [[ $(id -u) == 0 ]] || sudo="sudo"
    $sudo apt-get update -qq >&2
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${packages[@]}" >&2
fi

# --release: the tests push a lot of rows through the sync code and SQLite.
exec cargo test --release --locked "$@"
