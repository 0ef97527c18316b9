#!/usr/bin/env bash
# Run the whole test suite against a real sqld.
# Extra arguments go to `cargo test` (e.g. `scripts/test.sh --test harness_selftest`).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

# The harness (tests/common) finds sqld through SQLD_BIN. install-sqld.sh
# prints $SQLD_BIN itself when that is a usable binary, else the one it
# installed. (Two steps: `export X="$(cmd)"` would hide cmd's failure.)
sqld_bin="$(bash scripts/install-sqld.sh)"
export SQLD_BIN="$sqld_bin"
echo "test.sh: using sqld at $SQLD_BIN" >&2

# --release: the tests push a lot of rows through the sync code and SQLite.
exec cargo test --release --locked "$@"
