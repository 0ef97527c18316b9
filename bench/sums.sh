#!/usr/bin/env bash
# A pull from the log by this build against one by $BEFORE (a tursync binary built from an
# earlier commit), side by side: $CHANGED rows updated in one transaction in a table of $ROWS
# rows (big, as in replog.sh), then each pulls it, alternating which goes first, $RUNS rounds.
# Prints the best and the median of each. First written for what checking the mirror's pages
# against their sums (src/page_sums.rs) costs; used since for any change to the pull's path.
#
# Env: BEFORE (required), ROWS (default 1000000), CHANGED (default 100), RUNS (default 9),
# SQLD_BIN.
set -euo pipefail

cd "$(dirname "$0")/.."
ROWS="${ROWS:-1000000}"
RUNS="${RUNS:-9}"
CHANGED="${CHANGED:-100}"
[[ -x "${BEFORE:-}" ]] || { echo "BEFORE must name a tursync binary built before the change" >&2; exit 2; }

log() { echo "sums.sh: $*" >&2; }

# shellcheck source=bench/common.sh
source bench/common.sh
need_tools "curl:curl" "python3:python3"
SQLD="$(find_sqld)"
cargo build --release --quiet
AFTER="$PWD/target/release/tursync"
bench_tmp sums

start_sqld "$TMP/sqld-data"
log "seeding $ROWS rows"
remote_exec "CREATE TABLE big(id INTEGER PRIMARY KEY, name TEXT, email TEXT, score REAL, n INT, data BLOB); \
WITH RECURSIVE c(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM c WHERE i < $ROWS) \
INSERT INTO big(id, name, email, score, n, data) \
SELECT i, 'name-' || i, 'user' || i || '@example.com', abs(random() % 1000000) / 100.0, \
i % 1000, randomblob(16) FROM c; CREATE INDEX big_n ON big(n);"

for side in before after; do
    mkdir "$TMP/$side"
    bin=$BEFORE; [[ $side == after ]] && bin=$AFTER
    (cd "$TMP/$side" && "$bin" init -q --url "$URL" >/dev/null)
done

pull() { # SIDE -> seconds
    local bin=$BEFORE t0 t1 out read
    [[ $1 == after ]] && bin=$AFTER
    # Only the pull is timed: its report is read after the clock stops.
    t0=$EPOCHREALTIME
    out=$(cd "$TMP/$1" && "$bin" pull --json)
    t1=$EPOCHREALTIME
    read=$(python3 -c 'import json,sys; print(json.loads(sys.argv[1])["read"])' "$out")
    [[ "$read" == "the pages the log changed" ]] || { echo "$1 read $read" >&2; exit 1; }
    awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.4f\n", b - a }'
}

: >"$TMP/before.txt"; : >"$TMP/after.txt"
for run in $(seq 1 "$RUNS"); do
    remote_exec "UPDATE big SET n = n + 1 WHERE id % ($ROWS / $CHANGED) = $run"
    if (( run % 2 )); then order="before after"; else order="after before"; fi
    for side in $order; do pull "$side" >>"$TMP/$side.txt"; done
done
for side in before after; do
    sort -n "$TMP/$side.txt" | awk -v s="$side" '{ v[NR] = $1 } END { printf "%-6s best %.3f s  median %.3f s  (%d pulls)\n", s, v[1], v[int((NR + 1) / 2)], NR }'
done
