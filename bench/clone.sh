#!/usr/bin/env bash
# Benchmark: cloning a remote libSQL database into a local SQLite file.
#
#   (a) curl -s $URL/dump | sqlite3 new.db     sqld's SQL text dump, replayed by the sqlite3 CLI
#   (b) tursync init -q --url $URL             tursync's clone (working copy + .tursync/base.db)
#
# Starts its own sqld (no auth) on a free loopback port in a temp dir, seeds one table
# big(id, name, email, score, n, data) with $ROWS rows, and reports the best of $RUNS runs
# of each, their ratio, and peak RSS. Everything is removed on exit.
#
# Env: ROWS (default 300000), RUNS (default 5), SQLD_BIN (default: the cached sqld 0.24.32,
# installed via scripts/install-sqld.sh when missing), KEEP_TMP=1 to keep the temp dir.
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT=$PWD
ROWS="${ROWS:-300000}"
RUNS="${RUNS:-5}"
[[ "$ROWS" =~ ^[0-9]+$ && "$ROWS" -gt 0 ]] || { echo "ROWS must be a positive integer" >&2; exit 2; }
[[ "$RUNS" =~ ^[0-9]+$ && "$RUNS" -gt 0 ]] || { echo "RUNS must be a positive integer" >&2; exit 2; }

log() { echo "clone.sh: $*" >&2; }

# --- tools -------------------------------------------------------------------------------------
# shellcheck source=bench/common.sh
source bench/common.sh
need_tools "sqlite3:sqlite3" "curl:curl" "/usr/bin/time:time"

SQLD="$(find_sqld)"

log "building the release binary"
cargo build --release --quiet
TURSYNC="$ROOT/target/release/tursync"
BUILD="$(build_label)"

# --- temp dir and sqld -------------------------------------------------------------------------
bench_tmp clone

start_sqld "$TMP/sqld-data"
log "sqld $("$SQLD" --version | awk '{print $3}') on $URL, data in $TMP"

log "seeding $ROWS rows"
remote_exec "CREATE TABLE big(id INTEGER PRIMARY KEY, name TEXT, email TEXT, score REAL, n INT, data BLOB); \
WITH RECURSIVE c(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM c WHERE i < $ROWS) \
INSERT INTO big(id, name, email, score, n, data) \
SELECT i, 'name-' || i, 'user' || i || '@example.com', abs(random() % 1000000) / 100.0, \
i % 1000, randomblob(16) FROM c;"

DUMP_BYTES=$(curl -sf "$URL/dump" | wc -c)

# --- timing ------------------------------------------------------------------------------------
now() { echo "$EPOCHREALTIME"; }
elapsed() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.3f", b - a }'; }
min() { awk -v a="$1" -v b="$2" 'BEGIN { print (a == "" || b + 0 < a + 0) ? b : a }'; }
max() { awk -v a="$1" -v b="$2" 'BEGIN { print (a == "" || b + 0 > a + 0) ? b : a }'; }
count_rows() { sqlite3 "$1" 'SELECT count(*) FROM big;'; }

best_dump="" best_init="" best_fetch="" rss_dump="" rss_init=""
for run in $(seq 1 "$RUNS"); do
    # (context) the dump alone: sqld producing the text and curl discarding it
    t0=$(now)
    curl -sf "$URL/dump" >/dev/null
    t1=$(now)
    best_fetch=$(min "$best_fetch" "$(elapsed "$t0" "$t1")")

    # (a) /dump | sqlite3, into a fresh file
    rm -f "$TMP/new.db" "$TMP/new.db-journal"
    t0=$(now)
    /usr/bin/time -f %M -o "$TMP/rss" \
        bash -c 'set -o pipefail; curl -sf "$1/dump" | sqlite3 "$2"' _ "$URL" "$TMP/new.db"
    t1=$(now)
    [[ "$(count_rows "$TMP/new.db")" == "$ROWS" ]] || { echo "dump|sqlite3 produced a wrong row count" >&2; exit 1; }
    t=$(elapsed "$t0" "$t1")
    best_dump=$(min "$best_dump" "$t")
    rss_dump=$(max "$rss_dump" "$(tail -n1 "$TMP/rss")")

    # (b) tursync init, into a fresh directory
    rm -rf "$TMP/ws"
    mkdir "$TMP/ws"
    t0=$(now)
    (cd "$TMP/ws" && /usr/bin/time -f %M -o "$TMP/rss" "$TURSYNC" init -q --url "$URL" >/dev/null)
    t1=$(now)
    [[ "$(count_rows "$TMP/ws/working_copy.db")" == "$ROWS" ]] || { echo "tursync init produced a wrong row count" >&2; exit 1; }
    t2=$(elapsed "$t0" "$t1")
    best_init=$(min "$best_init" "$t2")
    rss_init=$(max "$rss_init" "$(tail -n1 "$TMP/rss")")

    log "run $run/$RUNS: dump|sqlite3 ${t}s, tursync init ${t2}s"
done

db_bytes=$(stat -c %s "$TMP/ws/working_copy.db")
ratio=$(awk -v a="$best_init" -v b="$best_dump" 'BEGIN { printf "%.2f", a / b }')
speed=$(awk -v a="$best_init" -v b="$best_dump" 'BEGIN { if (a <= b) printf "tursync %.2fx faster", b / a; else printf "tursync %.2fx slower", a / b }')

echo
echo "clone benchmark: $ROWS rows, best of $RUNS, sqld on loopback ($(nproc) cores)"
echo "  tursync at $BUILD"
echo "  dump text size:          $((DUMP_BYTES / 1024)) KiB; working copy: $((db_bytes / 1024)) KiB"
printf '  %-32s %8ss   peak RSS %7s KiB (largest of curl, sqlite3)\n' "curl /dump | sqlite3 new.db" "$best_dump" "$rss_dump"
printf '  %-32s %8ss   peak RSS %7s KiB (writes working copy + base.db)\n' "tursync init -q" "$best_init" "$rss_init"
printf '  %-32s %8ss   (context: sqld producing the dump, discarded)\n' "curl /dump > /dev/null" "$best_fetch"
echo "  ratio tursync/dump:      ${ratio} ($speed)"
