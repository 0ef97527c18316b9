#!/usr/bin/env bash
# Pulls from a Turso Sync server (`tursodb DB --sync-server`) at ROWS rows (default 1M, a table
# with an index), by three clients of one server:
#   - tursync reading the server's pages (`/pull-updates` into .tursync/mirror.db),
#   - tursync over SQL only (TURSYNC_PROTOCOL=sql: a whole read of the remote per pull),
#   - pyturso 0.8.3, Turso's own sync client (`turso.sync`: bootstrap, then `pull()`),
# and, for comparison, tursync on sqld's gRPC log with the same data and the same changes.
#
# Each client is initialised (bootstrapped) once, then pulls after each change:
#   100 rows updated, 1,000 rows appended, 1% of the rows updated in one transaction.
# Then, on the first server, a checkpoint, 100 rows updated, a pull and a fresh bootstrap.
# Prints one table, then for each step what each client holds (rows/total of a column, the
# server's too after the checkpoint) and how tursync read it (`read` in `pull --json`).
#
# tursodb answers one request at a time, so it is seeded through /v2/pipeline in batches of
# SEED_BATCH rows. Its revision is its WAL's frame count: a checkpoint starts it again, and a
# bootstrap after one returns only the pages still in the WAL (turso#5971). The script prints
# the server's WAL and file sizes after seeding, so a checkpoint during the run shows.
#
# Env: ROWS, SEED_BATCH (default 20000), SQLD_BIN, TURSODB_BIN, PYTURSO_PYTHON, KEEP_TMP=1.
set -euo pipefail

cd "$(dirname "$0")/.."
ROWS="${ROWS:-1000000}"
SEED_BATCH="${SEED_BATCH:-20000}"

log() { echo "turso_sync.sh: $*" >&2; }

# shellcheck source=bench/common.sh
source bench/common.sh
need_tools curl:curl python3:python3
SQLD="$(find_sqld)"
TURSODB="${TURSODB_BIN:-$(scripts/install-tursodb.sh)}"
PYTHON="$(scripts/install-pyturso.sh)"
cargo build --release --quiet
TURSYNC="$PWD/target/release/tursync"
bench_tmp turso-sync
TS_PID=""
trap 'if [[ -n "$TS_PID" ]]; then kill "$TS_PID" 2>/dev/null || true; wait "$TS_PID" 2>/dev/null || true; fi; bench_cleanup' EXIT

now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.2f", b - a }'; }

# start_tursodb: a Turso Sync server on an empty file in $TMP/ts; sets TS_PID and TS_URL.
start_tursodb() {
    local port i
    mkdir -p "$TMP/ts"
    port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
    "$TURSODB" "$TMP/ts/server.db" --sync-server "127.0.0.1:$port" </dev/null >"$TMP/tursodb.log" 2>&1 &
    TS_PID=$!
    TS_URL="http://127.0.0.1:$port"
    for i in $(seq 1 200); do
        ts_exec "SELECT 1" 2>/dev/null && return 0
        kill -0 "$TS_PID" 2>/dev/null || break
        sleep 0.05
    done
    echo "tursodb did not start; log:" >&2
    cat "$TMP/tursodb.log" >&2
    exit 1
}

# ts_exec SQL...: the statements as one batch on the Turso Sync server (each step runs only
# if the one before succeeded); fails on any error.
ts_exec() {
    local body resp
    body=$(python3 -c '
import json, sys
steps = [{"stmt": {"sql": s}} if i == 0 else
         {"stmt": {"sql": s}, "condition": {"type": "ok", "step": i - 1}}
         for i, s in enumerate(sys.argv[1:])]
print(json.dumps({"requests": [{"type": "batch", "batch": {"steps": steps}}]}))' "$@")
    resp=$(curl -sS -XPOST "$TS_URL/v2/pipeline" -H 'Content-Type: application/json' -d "$body")
    if [[ "$resp" == *'"error"'* || "$resp" != *'"results"'* ]]; then
        echo "Turso Sync server: SQL failed: $resp" >&2
        return 1
    fi
}

# The same rows on both servers: id, two texts, a real, an indexed integer, a 16-byte blob.
SCHEMA="CREATE TABLE big(id INTEGER PRIMARY KEY, name TEXT, email TEXT, score REAL, n INT, data BLOB)"
INDEX="CREATE INDEX big_n ON big(n)"
# rows_from FROM TO: the INSERT of rows FROM..=TO, over tursodb's generate_series or (with a
# third argument) a recursive CTE for sqld.
rows_from() {
    local src="generate_series($1, $2)" with=""
    if [[ -n "${3:-}" ]]; then
        with="WITH RECURSIVE s(value) AS (SELECT $1 UNION ALL SELECT value + 1 FROM s WHERE value < $2) "
        src=s
    fi
    echo "${with}INSERT INTO big SELECT value, 'name ' || value, 'user' || value || '@example.com', \
value * 1.5, value * 7, randomblob(16) FROM $src"
}
# change I [cte]: the Ith change (1-based), for tursodb or (cte) sqld.
NAMES=("100 rows updated" "1,000 rows appended" "1% updated, one transaction")
change() {
    case $1 in
    1) echo "UPDATE big SET name = name || '.u', score = score + 1 WHERE id % $((ROWS / 100)) = 0" ;;
    2) rows_from $((ROWS + 1)) $((ROWS + 1000)) "${2:-}" ;;
    3) echo "UPDATE big SET name = name || '.p', score = score + 2 WHERE id % 100 = 0" ;;
    4) echo "UPDATE big SET score = score + 3 WHERE id % $((ROWS / 100)) = 1" ;;
    esac
}

# SUMMARY: what the rows hold, compared between a client and the server.
SUMMARY="SELECT count(*) || '/' || total(score) FROM big"
# pyturso ACTION DB: bootstrap (connect a new file) or pull (connect it, pull); prints the
# seconds and SUMMARY of what it then holds (or the error).
pyturso() {
    "$PYTHON" - "$TS_URL" "$1" "$2" "$SUMMARY" <<'PY'
import sys, time, turso.sync
url, action, path, summary = sys.argv[1:]
t0 = time.time()
conn = turso.sync.connect(path, remote_url=url)
if action == "pull":
    conn.pull()
took = time.time() - t0
try:
    n = conn.execute(summary).fetchone()[0]
except Exception as e:
    n = f"error:{type(e).__name__}"
conn.close()
print(f"{took:.2f} {n}")
PY
}
# ts_summary: SUMMARY on the Turso Sync server.
ts_summary() {
    curl -sS -XPOST "$TS_URL/v2/pipeline" -H 'Content-Type: application/json' \
        -d "{\"requests\":[{\"type\":\"execute\",\"stmt\":{\"sql\":\"$SUMMARY\",\"want_rows\":true}}]}" |
        python3 -c 'import json,sys; print(json.load(sys.stdin)["results"][0]["response"]["result"]["rows"][0][0]["value"])'
}

# tursync_init DIR URL [ENV...]: prints the seconds `tursync init` took.
tursync_init() {
    local dir=$1 url=$2 t0
    shift 2
    mkdir -p "$dir"
    t0=$(now)
    (cd "$dir" && env "$@" "$TURSYNC" init -q --url "$url" >/dev/null)
    since "$t0"
}
# tursync_pull DIR [ENV...]: prints the seconds `tursync pull` took, then the rows of the
# working copy and how the pull read theirs (`read` in `pull --json`).
tursync_pull() {
    local dir=$1 t0 out took
    shift
    t0=$(now)
    out=$(cd "$dir" && env "$@" "$TURSYNC" pull --json)
    took=$(since "$t0")
    echo "$took $(sqlite3 "$dir/working_copy.db" "$SUMMARY") \
$(python3 -c 'import json,sys; print(json.load(sys.stdin).get("read") or "nothing new")' <<<"$out")"
}

# pulls_after_changes KEY LABEL EXEC CTE DIR [ENV...]: each change run by EXEC (in the form for
# sqld when CTE is set), then a timed pull of the working copy in DIR, into T[I,KEY] and READS.
pulls_after_changes() {
    local key=$1 label=$2 exec=$3 cte=$4 dir=$5 i n r
    shift 5
    for i in 1 2 3; do
        "$exec" "$(change $i "$cte")"
        read -r T[$i,$key] n r <<<"$(tursync_pull "$dir" "$@")"
        READS+=("$label, ${NAMES[$((i - 1))]}: $n; read: $r")
    done
}

# row LABEL CELL...: one line of the table, also logged as it comes.
TABLE=()
row() {
    local line="| $1 |" c
    shift
    for c in "$@"; do line+=" $c |"; done
    TABLE+=("$line")
    log "$line"
}
# cell SECONDS: a table cell ("-" for a step that failed, nothing for one not run).
cell() {
    case $1 in
    -) echo "failed" ;;
    "") echo "—" ;;
    *) echo "$1 s" ;;
    esac
}
READS=()

log "tursync at $(build_label); $ROWS rows; load $(cut -d' ' -f1-3 /proc/loadavg) on $(nproc) cores"

# seed_tursodb: starts a Turso Sync server and seeds it with ROWS rows, in batches.
seed_tursodb() {
    local t0 from to
    start_tursodb
    t0=$(now)
    ts_exec "$SCHEMA" "$INDEX"
    for ((from = 1; from <= ROWS; from += SEED_BATCH)); do
        to=$((from + SEED_BATCH - 1))
        ((to <= ROWS)) || to=$ROWS
        ts_exec "$(rows_from "$from" "$to")"
    done
    log "tursodb seeded in $(since "$t0") s: $(server_files)"
}
server_files() {
    echo "server.db $(stat -c %s "$TMP/ts/server.db") bytes, WAL $(stat -c %s "$TMP/ts/server.db-wal" 2>/dev/null || echo 0) bytes"
}
stop_tursodb() {
    log "tursodb after the run: $(server_files)"
    kill "$TS_PID" && wait "$TS_PID" 2>/dev/null || true
    TS_PID=""
    rm -rf "$TMP/ts"
}

declare -A T
# --- tursodb --sync-server: tursync from its pages, and pyturso ---
seed_tursodb
T[i,p]=$(tursync_init "$TMP/pages" "$TS_URL")
read -r T[i,y] n <<<"$(pyturso bootstrap "$TMP/py.db")"
log "pyturso bootstrapped: $n rows"
# The first pull of each reads from where its init left off: nothing new.
read -r T[0,p] n r <<<"$(tursync_pull "$TMP/pages")"
READS+=("pages, nothing new: $n; read: $r")
read -r T[0,y] n <<<"$(pyturso pull "$TMP/py.db")"
for i in 1 2 3; do
    ts_exec "$(change $i)"
    read -r T[$i,p] n r <<<"$(tursync_pull "$TMP/pages")"
    READS+=("pages, ${NAMES[$((i - 1))]}: $n; read: $r")
    read -r T[$i,y] n <<<"$(pyturso pull "$TMP/py.db")"
    READS+=("pyturso, ${NAMES[$((i - 1))]}: $n")
done
# A checkpoint restarts tursodb's revision (its WAL's frame count), and a bootstrap after it
# gets only the pages still in the WAL (turso#5971). Then 100 rows updated, and each client
# pulls, then bootstraps afresh. pyturso goes first: tursync's fall back to SQL reads the
# schema over SQL, which (above) leaves tursodb's connection unable to commit.
ts_exec "PRAGMA wal_checkpoint(TRUNCATE)"
log "after a checkpoint: $(server_files)"
ts_exec "$(change 4)"
READS+=("server after the checkpoint and 100 rows updated: $(ts_summary) (rows/total score)")
read -r T[c,y] n <<<"$(pyturso pull "$TMP/py.db")"
READS+=("pyturso, pull after the checkpoint: $n")
read -r T[cb,y] n <<<"$(pyturso bootstrap "$TMP/py2.db" || echo "- failed")"
READS+=("pyturso, bootstrap after the checkpoint: $n")
read -r T[c,p] n r <<<"$(tursync_pull "$TMP/pages")"
READS+=("pages, pull after the checkpoint: $n; read: $r")
T[cb,p]=$(tursync_init "$TMP/pages2" "$TS_URL")
READS+=("pages, init after the checkpoint: $(sqlite3 "$TMP/pages2/working_copy.db" "$SUMMARY"); \
$(cd "$TMP/pages2" && "$TURSYNC" status --json | python3 -c 'import json,sys; print(json.load(sys.stdin).get("reads"))')")
stop_tursodb

# --- a second tursodb, seeded the same: tursync over SQL only ---
# Not the same server: tursodb 0.7.0 leaves its connection in a read transaction after a
# table-valued pragma (`SELECT ... FROM pragma_table_list`), which the SQL path's schema read
# sent when these numbers were first taken, and every write after it stays uncommitted (unseen
# by /pull-updates and pyturso). It now sends the plain pragmas; the two servers stay so that
# numbers compare with earlier runs.
seed_tursodb
T[i,s]=$(tursync_init "$TMP/sql" "$TS_URL" TURSYNC_PROTOCOL=sql)
read -r T[0,s] n r <<<"$(tursync_pull "$TMP/sql" TURSYNC_PROTOCOL=sql)"
pulls_after_changes s "SQL only" ts_exec "" "$TMP/sql" TURSYNC_PROTOCOL=sql
stop_tursodb

# --- sqld, the gRPC log ---
start_sqld "$TMP/sqld"
t0=$(now)
remote_exec "$SCHEMA; $(rows_from 1 "$ROWS" cte); $INDEX"
log "sqld seeded in $(since "$t0") s"
T[i,l]=$(tursync_init "$TMP/log" "$URL")
read -r T[0,l] n r <<<"$(tursync_pull "$TMP/log")"
pulls_after_changes l "sqld log" remote_exec cte "$TMP/log"

echo "$ROWS rows, tursync at $(build_label), load $(cut -d' ' -f1-3 /proc/loadavg) on $(nproc) cores"
echo
echo "| step | tursync, Turso Sync pages | tursync, SQL only | pyturso 0.8.3 | tursync, sqld gRPC log |"
echo "|---|---:|---:|---:|---:|"
row "init (bootstrap)" "$(cell "${T[i,p]}")" "$(cell "${T[i,s]}")" "$(cell "${T[i,y]}")" "$(cell "${T[i,l]}")" >/dev/null 2>&1
row "pull, nothing new" "$(cell "${T[0,p]}")" "$(cell "${T[0,s]}")" "$(cell "${T[0,y]}")" "$(cell "${T[0,l]}")" >/dev/null 2>&1
for i in 1 2 3; do
    row "pull, ${NAMES[$((i - 1))]}" "$(cell "${T[$i,p]}")" "$(cell "${T[$i,s]}")" \
        "$(cell "${T[$i,y]}")" "$(cell "${T[$i,l]}")" >/dev/null 2>&1
done
row "pull, 100 rows updated after a checkpoint" "$(cell "${T[c,p]}")" "$(cell "")" "$(cell "${T[c,y]}")" "$(cell "")" >/dev/null 2>&1
row "init (bootstrap) after a checkpoint" "$(cell "${T[cb,p]}")" "$(cell "")" "$(cell "${T[cb,y]}")" "$(cell "")" >/dev/null 2>&1
printf '%s\n' "${TABLE[@]}"
echo
awk -v p="${T[1,p]}" -v i="${T[i,p]}" \
    'BEGIN { printf "pull of 100 changed rows / init, Turso Sync pages: %.3f (goal: at most 0.10)\n", p / i }'
echo
printf -- '- %s\n' "${READS[@]}"
