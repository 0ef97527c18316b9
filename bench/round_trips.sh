#!/usr/bin/env bash
# How many requests each command makes, and how long it takes, against a server $RTT_MS ms
# away: tests/round_trips.rs run through its counting proxy (which holds every request one
# round-trip time, and every new connection one more) against a real sqld and a real Turso Sync server, printed as a table.
#
# Env: RTT_MS (default 100), SQLD_BIN, TURSODB_BIN.
set -euo pipefail

cd "$(dirname "$0")/.."
RTT_MS="${RTT_MS:-100}"

log() { echo "round_trips.sh: $*" >&2; }

# shellcheck source=bench/common.sh
source bench/common.sh
SQLD_BIN="$(find_sqld)"
TURSODB_BIN="${TURSODB_BIN:-$(scripts/install-tursodb.sh)}"
export SQLD_BIN TURSODB_BIN
log "tursync at $(build_label), $RTT_MS ms per request"
out="$(ROUND_TRIPS_RTT_MS="$RTT_MS" cargo test --release --quiet --test tests -- round_trips:: \
    --nocapture --test-threads 1 2>&1)" || { echo "$out" >&2; exit 1; }
echo "| command | requests | connections | time at $RTT_MS ms RTT |"
echo "|---|---:|---:|---:|"
# Lines look like: ROUND TRIPS | push, 1 row (sqld) | 2 | 0.21 s | rtt 100 ms | 1 connection(s)
grep -o 'ROUND TRIPS |.*' <<<"$out" |
    awk -F' [|] ' '{ sub(/ connection.*/, "", $6); printf "| %s | %s | %s | %s |\n", $2, $3, $6, $4 }'
