#!/usr/bin/env bash
# Benchmark: pulls and clones through the replication log, against a fresh clone, the embedded
# replica (libsql's own client, bench/replica) and `curl /dump | sqlite3`.
#
# Starts its own sqld (no auth) on a free loopback port, seeds big(id, name, email, score, n,
# data) with $ROWS rows and an index on n, then times:
#   clones:  tursync init (log), tursync init over SQL (TURSYNC_NO_LOG=1), the replica's first
#            sync(), curl /dump | sqlite3 (best of $RUNS each);
#   pulls:   one tursync working copy and one replica, after each remote change: none, 100 rows
#            updated, 1000 rows appended, 100 one-row transactions, 1% of rows updated in one
#            transaction. After each step the working copy and the replica must hold what the
#            remote holds (a checksum over every column). Each pull's log is shown as frames
#            (pages) read over the database's pages: what any reader of the log downloads.
#
# Env: ROWS (default 1000000), RUNS (default 3), SQLD_BIN, KEEP_TMP=1 to keep the temp dir.
# The replica takes about two minutes to build the first time (target/bench-replica).
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT=$PWD
ROWS="${ROWS:-1000000}"
RUNS="${RUNS:-3}"
[[ "$ROWS" =~ ^[0-9]+$ && "$ROWS" -ge 10000 ]] || { echo "ROWS must be an integer of at least 10000" >&2; exit 2; }
[[ "$RUNS" =~ ^[0-9]+$ && "$RUNS" -gt 0 ]] || { echo "RUNS must be a positive integer" >&2; exit 2; }

log() { echo "replog.sh: $*" >&2; }

# shellcheck source=bench/common.sh
source bench/common.sh
need_tools "sqlite3:sqlite3" "curl:curl" "python3:python3"
SQLD="$(find_sqld)"

log "building tursync and the embedded replica"
cargo build --release --quiet
(cd bench/replica && CARGO_TARGET_DIR="$ROOT/target/bench-replica" cargo build --release --quiet)
TURSYNC="$ROOT/target/release/tursync"
REPLICA="$ROOT/target/bench-replica/release/replica"
BUILD="$(build_label)"

bench_tmp replog

# A checksum over every column of big, the same text on the remote and in a local file.
CHECK="SELECT count(*) || ' ' || sum(id) || ' ' || sum(n) || ' ' || printf('%.2f', total(score)) || ' ' || sum(length(name)) || ' ' || sum(unicode(substr(name, -1))) || ' ' || sum(length(email)) || ' ' || sum(length(data)) FROM big"
remote_check() {
    curl -sS -XPOST "$URL/v3/pipeline" -H 'Content-Type: application/json' \
        -d "{\"requests\":[{\"type\":\"execute\",\"stmt\":{\"sql\":\"$CHECK\"}},{\"type\":\"close\"}]}" |
        python3 -c 'import json,sys; print(json.load(sys.stdin)["results"][0]["response"]["result"]["rows"][0][0]["value"])'
}
same_as_remote() { # FILE WHAT
    local want got
    want=$(remote_check)
    got=$(sqlite3 "file:$1?immutable=1" "$CHECK")
    [[ "$want" == "$got" ]] || { echo "$2 differs from the remote: $got, remote $want" >&2; exit 1; }
}

start_sqld "$TMP/sqld-data"
log "sqld $("$SQLD" --version | awk '{print $3}') on $URL, data in $TMP"
log "seeding $ROWS rows"
remote_exec "CREATE TABLE big(id INTEGER PRIMARY KEY, name TEXT, email TEXT, score REAL, n INT, data BLOB); \
WITH RECURSIVE c(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM c WHERE i < $ROWS) \
INSERT INTO big(id, name, email, score, n, data) \
SELECT i, 'name-' || i, 'user' || i || '@example.com', abs(random() % 1000000) / 100.0, \
i % 1000, randomblob(16) FROM c; CREATE INDEX big_n ON big(n);"

now() { echo "$EPOCHREALTIME"; }
elapsed() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.3f", b - a }'; }
min() { awk -v a="$1" -v b="$2" 'BEGIN { print (a == "" || b + 0 < a + 0) ? b : a }'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", a / b }'; }

# --- clones ------------------------------------------------------------------------------------
best_init="" best_sql="" best_replica="" best_dump=""
for run in $(seq 1 "$RUNS"); do
    rm -rf "$TMP/ws" && mkdir "$TMP/ws"
    t0=$(now); (cd "$TMP/ws" && "$TURSYNC" init -q --url "$URL" >/dev/null); t=$(elapsed "$t0" "$(now)")
    best_init=$(min "$best_init" "$t")
    same_as_remote "$TMP/ws/working_copy.db" "init"

    rm -rf "$TMP/sql" && mkdir "$TMP/sql"
    t0=$(now); (cd "$TMP/sql" && TURSYNC_NO_LOG=1 "$TURSYNC" init -q --url "$URL" >/dev/null); t2=$(elapsed "$t0" "$(now)")
    best_sql=$(min "$best_sql" "$t2")

    rm -rf "$TMP/replica" && mkdir "$TMP/replica"
    t3=$("$REPLICA" "$TMP/replica/db" "$URL")
    best_replica=$(min "$best_replica" "$t3")
    same_as_remote "$TMP/replica/db" "the replica"

    rm -f "$TMP/dump.db"
    t0=$(now); curl -sf "$URL/dump" | sqlite3 "$TMP/dump.db"; t4=$(elapsed "$t0" "$(now)")
    best_dump=$(min "$best_dump" "$t4")
    log "clone run $run/$RUNS: init ${t}s, init over SQL ${t2}s, replica ${t3}s, dump|sqlite3 ${t4}s"
done

# What the workspace takes on disk (blocks, so a sparse file counts what it holds), over the
# working copy's.
on_disk() { du -sB1 "$1" | cut -f1; }
disk_ratio() { ratio "$(on_disk "$TMP/ws/.tursync")" "$(on_disk "$TMP/ws/working_copy.db")"; }
DISK_INIT=$(disk_ratio)

# --- pulls -------------------------------------------------------------------------------------
declare -a STEPS=() PULLS=() SYNCS=() FRAMES=()
# The mirror's last frame: how many frames (pages) of log a pull read is its difference.
frame_no() { python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["frame_no"])' "$TMP/ws/.tursync/mirror.json"; }
step() { # NAME, after the remote change was made
    local t0 t s f0
    f0=$(frame_no)
    t0=$(now); (cd "$TMP/ws" && "$TURSYNC" pull -q >/dev/null); t=$(elapsed "$t0" "$(now)")
    same_as_remote "$TMP/ws/working_copy.db" "the working copy after '$1'"
    s=$("$REPLICA" "$TMP/replica/db" "$URL")
    same_as_remote "$TMP/replica/db" "the replica after '$1'"
    STEPS+=("$1") PULLS+=("$t") SYNCS+=("$s") FRAMES+=($(($(frame_no) - f0)))
    log "$1: pull ${t}s, replica sync() ${s}s, ${FRAMES[-1]} frames of log"
}
step "no change"
remote_exec "UPDATE big SET name = name || '.u', score = score + 1 WHERE id % ($ROWS / 100) = 7;"
step "100 rows updated"
remote_exec "INSERT INTO big(name, email, score, n, data) SELECT 'new-' || value, 'new' || value || '@example.com', value, value % 1000, randomblob(16) FROM generate_series(1, 1000);"
step "1000 rows appended"
for i in $(seq 1 100); do
    remote_exec "UPDATE big SET name = name || '.t' WHERE id = $((i * (ROWS / 100) - 3));"
done
step "100 one-row transactions"
remote_exec "UPDATE big SET name = name || '.p', n = n + 1 WHERE id % 100 = 3;"
step "1% of rows updated in one transaction"

# --- report ------------------------------------------------------------------------------------
echo
echo "replication log benchmark: $ROWS rows with an index, best of $RUNS clones, sqld on loopback ($(nproc) cores)"
echo "  tursync at $BUILD"
PAGES=$(($(stat -c %s "$TMP/ws/.tursync/mirror.db") / 4096))
printf '  %-40s %8s %10s %22s %16s\n' "" "seconds" "/ clone" "embedded replica" "log / database"
printf '  %-40s %8s %10s %22s %16s\n' "tursync init (replication log)" "$best_init" "1.00" "$best_replica (first sync)" "$PAGES pages"
printf '  %-40s %8s %10s\n' "tursync init over SQL" "$best_sql" "$(ratio "$best_sql" "$best_init")"
printf '  %-40s %8s %10s\n' "curl /dump | sqlite3" "$best_dump" "$(ratio "$best_dump" "$best_init")"
for i in "${!STEPS[@]}"; do
    printf '  %-40s %8s %10s %22s %16s\n' "pull: ${STEPS[$i]}" "${PULLS[$i]}" "$(ratio "${PULLS[$i]}" "$best_init")" "${SYNCS[$i]} (sync)" "$(ratio "${FRAMES[$i]}" "$PAGES")"
done
echo "  init / replica first sync: $(ratio "$best_init" "$best_replica") (goal <= 0.5); init / dump|sqlite3: $(ratio "$best_init" "$best_dump") (goal <= 0.3)"
echo "  1% pull / replica sync(): $(ratio "${PULLS[4]}" "${SYNCS[4]}") (goal <= 2)"
echo "  .tursync/ on disk / the working copy: $DISK_INIT after init, $(disk_ratio) after the pulls (goal <= 1.05);" \
    "the replica's files: $(ratio "$(on_disk "$TMP/replica")" "$(on_disk "$TMP/ws/working_copy.db")")"
