#!/usr/bin/env bash
# What a small push costs as the database grows: 1 row and 100 rows inserted into a table of
# $ROWS rows (with an index), pushed by this build and by $BEFORE (a tursync binary built from
# an earlier commit), alternating which goes first, $RUNS rounds. Each side has its own working
# copy and inserts its own ids, so the two never conflict. Prints the best and the median of
# each, per size of push, in wall-clock seconds and in CPU seconds (user + system, which other
# work on the machine disturbs less), and the load average.
#
# Env: BEFORE (required), ROWS (default 3000000), RUNS (default 5), SQLD_BIN.
set -euo pipefail

cd "$(dirname "$0")/.."
ROWS="${ROWS:-3000000}"
RUNS="${RUNS:-5}"
[[ -x "${BEFORE:-}" ]] || { echo "BEFORE must name a tursync binary built before the change" >&2; exit 2; }

log() { echo "push_cost.sh: $*" >&2; }

# shellcheck source=bench/common.sh
source bench/common.sh
need_tools "curl:curl" "python3:python3" "sqlite3:sqlite3"
SQLD="$(find_sqld)"
cargo build --release --quiet
AFTER="$PWD/target/release/tursync"
bench_tmp push_cost

start_sqld "$TMP/sqld-data"
log "seeding $ROWS rows"
for ((from = 0; from < ROWS; from += 500000)); do
    to=$((from + 500000 < ROWS ? from + 500000 : ROWS))
    remote_exec "CREATE TABLE IF NOT EXISTS big(id INTEGER PRIMARY KEY, name TEXT, email TEXT, score REAL, n INT, data BLOB); \
WITH RECURSIVE c(i) AS (SELECT $from + 1 UNION ALL SELECT i + 1 FROM c WHERE i < $to) \
INSERT INTO big(id, name, email, score, n, data) \
SELECT i, 'name-' || i, 'user' || i || '@example.com', abs(random() % 1000000) / 100.0, \
i % 1000, randomblob(16) FROM c;"
done
remote_exec "CREATE INDEX big_n ON big(n);"

for side in before after; do
    mkdir "$TMP/$side"
    bin=$BEFORE; [[ $side == after ]] && bin=$AFTER
    (cd "$TMP/$side" && "$bin" init -q --url "$URL" >/dev/null)
done
log "working copy: $(du -h "$TMP/after/working_copy.db" | cut -f1)"

push() { # SIDE ROWS RUN -> "wall cpu" seconds of the push alone
    local bin=$BEFORE first sign=1 TIMEFORMAT='%R %U %S' times
    [[ $1 == after ]] && bin=$AFTER
    [[ $1 == before ]] && sign=-1
    first=$(( sign * (ROWS + 1000 * $3 + ($2 == 1 ? 0 : 500)) ))
    sqlite3 "$TMP/$1/working_copy.db" "WITH RECURSIVE c(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM c WHERE i < $2 - 1) \
INSERT INTO big(id, name, n) SELECT $first + $sign * i, 'pushed', 1 FROM c;"
    times=$( { time (cd "$TMP/$1" && "$bin" push -q >/dev/null); } 2>&1 )
    awk '{ printf "%.4f %.4f\n", $1, $2 + $3 }' <<<"$times"
}

for n in 1 100; do
    : >"$TMP/before-$n.txt"; : >"$TMP/after-$n.txt"
    for run in $(seq 1 "$RUNS"); do
        if (( run % 2 )); then order="before after"; else order="after before"; fi
        for side in $order; do push "$side" "$n" "$run" >>"$TMP/$side-$n.txt"; done
    done
    for side in before after; do
        wall=$(cut -d' ' -f1 "$TMP/$side-$n.txt" | sort -n | tr '\n' ' ')
        cpu=$(cut -d' ' -f2 "$TMP/$side-$n.txt" | sort -n | tr '\n' ' ')
        awk -v s="$side" -v n="$n" -v wall="$wall" -v cpu="$cpu" 'BEGIN {
            k = split(wall, w, " "); split(cpu, c, " "); m = int((k + 1) / 2)
            printf "push of %3d rows, %-6s wall best %.3f s median %.3f s, cpu best %.3f s median %.3f s  (%d pushes)\n", n, s, w[1], w[m], c[1], c[m], k }'
    done
done
log "load average: $(cut -d' ' -f1-3 /proc/loadavg)"
