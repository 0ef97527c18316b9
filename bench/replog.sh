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
#   in watch: a second workspace, cloned at the start of the pulls, with `tursync watch --json
#            --interval 0.1` running in it: after each remote change, the `seconds` of the round
#            that pulled it (its synced event), and its working copy compared with the remote.
#   goals:   issue 22's, each "met" or "not met".
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
# The watcher (see the pulls), ended with the rest on any exit.
WATCH_PID=""
replog_cleanup() {
    if [[ -n "$WATCH_PID" ]]; then
        kill -TERM "$WATCH_PID" 2>/dev/null || true
        kill -CONT "$WATCH_PID" 2>/dev/null || true
        wait "$WATCH_PID" 2>/dev/null || true
    fi
    bench_cleanup
}
trap replog_cleanup EXIT

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
# sqld's own CPU time so far (user + system), in seconds: what serving a clone costs the server,
# whoever the client is.
CLK_TCK=$(getconf CLK_TCK)
server_cpu() { awk -v c="$CLK_TCK" '{ printf "%.2f", ($14 + $15) / c }' "/proc/$SQLD_PID/stat"; }
# cpu_since C0: sqld's CPU seconds since server_cpu said C0.
cpu_since() { awk -v a="$1" -v b="$(server_cpu)" 'BEGIN { printf "%.2f", b - a }'; }
best_init="" best_sql="" best_replica="" best_dump="" cpu_init="" cpu_replica=""
for run in $(seq 1 "$RUNS"); do
    rm -rf "$TMP/ws" && mkdir "$TMP/ws"
    c0=$(server_cpu)
    t0=$(now); (cd "$TMP/ws" && "$TURSYNC" init -q --url "$URL" >/dev/null); t=$(elapsed "$t0" "$(now)")
    cpu_init=$(min "$cpu_init" "$(cpu_since "$c0")")
    best_init=$(min "$best_init" "$t")
    same_as_remote "$TMP/ws/working_copy.db" "init"

    rm -rf "$TMP/sql" && mkdir "$TMP/sql"
    t0=$(now); (cd "$TMP/sql" && TURSYNC_NO_LOG=1 "$TURSYNC" init -q --url "$URL" >/dev/null); t2=$(elapsed "$t0" "$(now)")
    best_sql=$(min "$best_sql" "$t2")

    rm -rf "$TMP/replica" && mkdir "$TMP/replica"
    c0=$(server_cpu)
    t3=$("$REPLICA" "$TMP/replica/db" "$URL")
    cpu_replica=$(min "$cpu_replica" "$(cpu_since "$c0")")
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
declare -a STEPS=() PULLS=() SYNCS=() FRAMES=() WATCHED=()

# The watcher: a second workspace of the same remote, `tursync watch` running in it throughout.
# It is paused (SIGSTOP) from before each remote change until the timed pull and the replica's
# sync() are done, then resumed, and the round that pulls the change is timed by the watcher
# itself (its synced event's seconds). Why paused: the watcher, the timed pull and the replica
# must not run at the same time (2 cores); and a change made of many transactions (100 one-row
# transactions) must reach the watcher in one round, as it reaches the replica in one sync(),
# not in as many rounds as its requests happen to span. It is paused just after an idle round
# (`-v`: its checked event), so never in the middle of one; a round that began before the
# resume would count the pause, and is marked if it ever happens.
rm -rf "$TMP/watch" && mkdir "$TMP/watch"
(cd "$TMP/watch" && "$TURSYNC" init -q --url "$URL" >/dev/null)
WATCH_OUT="$TMP/watch.out"
: >"$WATCH_OUT"
(cd "$TMP/watch" && exec "$TURSYNC" watch --json -v --interval 0.1 >"$WATCH_OUT" 2>"$TMP/watch.err") &
WATCH_PID=$!
events() { grep -c "\"event\":\"$1\"" "$WATCH_OUT" || true; }
# wait_for_event KIND N WHAT: until the watcher has written more than N events of KIND (60 s).
wait_for_event() {
    local deadline=$((SECONDS + 60))
    while (($(events "$1") <= $2)); do
        kill -0 "$WATCH_PID" 2>/dev/null || { echo "the watcher stopped:" >&2; cat "$TMP/watch.err" >&2; exit 1; }
        ((SECONDS < deadline)) || { echo "the watcher: no $1 event $3 within 60 s" >&2; exit 1; }
        sleep 0.005
    done
}
wait_for_event checked 0 "at its start"
pause_watcher() {
    wait_for_event checked "$(events checked)" "to pause after"
    kill -STOP "$WATCH_PID"
}
resume_watcher() {
    RESUMED=$(now)
    kill -CONT "$WATCH_PID"
}
# watched N: the seconds of the watcher's synced event after its first N, marked '*' when its
# round began before the watcher was last resumed (the pause is in it).
watched() {
    python3 - "$WATCH_OUT" "$1" "$RESUMED" <<'PY'
import datetime, json, sys
lines = [l for l in open(sys.argv[1]) if l.endswith("\n")]
synced = [e for e in map(json.loads, lines) if e["event"] == "synced"]
e = synced[int(sys.argv[2])]
end = datetime.datetime.fromisoformat(e["time"].replace("Z", "+00:00")).timestamp()
began = end - e["seconds"]
print(f'{e["seconds"]:.3f}' + ("" if began >= float(sys.argv[3]) - 0.002 else "*"))
PY
}
# The mirror's last frame: how many frames (pages) of log a pull read is its difference.
frame_no() { python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["frame_no"])' "$TMP/ws/.tursync/mirror.json"; }
step() { # NAME, after the remote change was made with the watcher paused
    local t0 t s f0 n w="-"
    f0=$(frame_no)
    t0=$(now); (cd "$TMP/ws" && "$TURSYNC" pull -q >/dev/null); t=$(elapsed "$t0" "$(now)")
    same_as_remote "$TMP/ws/working_copy.db" "the working copy after '$1'"
    s=$("$REPLICA" "$TMP/replica/db" "$URL")
    same_as_remote "$TMP/replica/db" "the replica after '$1'"
    n=$(events synced)
    resume_watcher
    if [[ "$1" != "no change" ]]; then
        wait_for_event synced "$n" "after '$1'"
        w=$(watched "$n")
        same_as_remote "$TMP/watch/working_copy.db" "the watcher's working copy after '$1'"
    fi
    STEPS+=("$1") PULLS+=("$t") SYNCS+=("$s") FRAMES+=($(($(frame_no) - f0))) WATCHED+=("$w")
    log "$1: pull ${t}s, replica sync() ${s}s, ${FRAMES[-1]} frames of log$([[ $w == - ]] || echo ", in watch ${w}s")"
}
pause_watcher
step "no change"
pause_watcher
remote_exec "UPDATE big SET name = name || '.u', score = score + 1 WHERE id % ($ROWS / 100) = 7;"
step "100 rows updated"
pause_watcher
remote_exec "INSERT INTO big(name, email, score, n, data) SELECT 'new-' || value, 'new' || value || '@example.com', value, value % 1000, randomblob(16) FROM generate_series(1, 1000);"
step "1000 rows appended"
pause_watcher
for i in $(seq 1 100); do
    remote_exec "UPDATE big SET name = name || '.t' WHERE id = $((i * (ROWS / 100) - 3));"
done
step "100 one-row transactions"
pause_watcher
remote_exec "UPDATE big SET name = name || '.p', n = n + 1 WHERE id % 100 = 3;"
step "1% of rows updated in one transaction"

# SIGTERM ends the watcher with exit 0.
kill -TERM "$WATCH_PID"
watch_rc=0
wait "$WATCH_PID" || watch_rc=$?
WATCH_PID=""
((watch_rc == 0)) || { echo "the watcher exited $watch_rc on SIGTERM:" >&2; cat "$TMP/watch.err" >&2; exit 1; }

# --- report ------------------------------------------------------------------------------------
echo
echo "replication log benchmark: $ROWS rows with an index, best of $RUNS clones, sqld on loopback ($(nproc) cores)"
echo "  tursync at $BUILD"
PAGES=$(($(stat -c %s "$TMP/ws/.tursync/mirror.db") / 4096))
printf '  %-46s %8s %10s %22s %16s %9s\n' "" "seconds" "/ clone" "embedded replica" "log / database" "in watch"
printf '  %-46s %8s %10s %22s %16s\n' "tursync init (replication log)" "$best_init" "1.00" "$best_replica (first sync)" "$PAGES pages"
printf '  %-46s %8s %10s\n' "tursync init over SQL" "$best_sql" "$(ratio "$best_sql" "$best_init")"
printf '  %-46s %8s %10s\n' "curl /dump | sqlite3" "$best_dump" "$(ratio "$best_dump" "$best_init")"
for i in "${!STEPS[@]}"; do
    printf '  %-46s %8s %10s %22s %16s %9s\n' "pull: ${STEPS[$i]}" "${PULLS[$i]}" "$(ratio "${PULLS[$i]}" "$best_init")" "${SYNCS[$i]} (sync)" "$(ratio "${FRAMES[$i]}" "$PAGES")" "${WATCHED[$i]}"
done
grep -q '\*' <<<"${WATCHED[*]}" && echo "  * the watcher's round began before it was resumed: its time counts some of the pause"
DISK_PULLS=$(disk_ratio)
echo "  init / replica first sync: $(ratio "$best_init" "$best_replica"); init / dump|sqlite3: $(ratio "$best_init" "$best_dump")"
echo "  1% pull / replica sync(): $(ratio "${PULLS[4]}" "${SYNCS[4]}")"
echo "  sqld's CPU serving a clone (least of $RUNS): ${cpu_init} s for init, ${cpu_replica} s for the replica's first sync;" \
    "on $(nproc) cores the server alone takes at least $(ratio "$cpu_init" "$(nproc)") s of an init"
echo "  .tursync/ on disk / the working copy: $DISK_INIT after init, $DISK_PULLS after the pulls;" \
    "the replica's files: $(ratio "$(on_disk "$TMP/replica")" "$(on_disk "$TMP/ws/working_copy.db")")"

# goal VALUE LIMIT: met when VALUE <= LIMIT (both in seconds or both ratios; a '*' is ignored).
goal() { awk -v v="${1%\*}" -v l="$2" 'BEGIN { print (v + 0 <= l + 0) ? "met" : "not met" }'; }
# times A FACTOR [PLUS]: A * FACTOR + PLUS, in seconds.
times() { awk -v a="$1" -v f="$2" -v p="${3:-0}" 'BEGIN { printf "%.3f", a * f + p }'; }
echo
echo "issue 22 goals:"
for i in 1 2 3; do
    plus=$(times "${SYNCS[$i]}" 1 0.020) part=$(times "$best_init" 0.05)
    echo "  pull: ${STEPS[$i]}: ${PULLS[$i]} s <= replica ${SYNCS[$i]} s + 0.020 s: $(goal "${PULLS[$i]}" "$plus");" \
        "<= 0.05 x init = $part s: $(goal "${PULLS[$i]}" "$part")"
done
echo "  pull: ${STEPS[4]}: ${PULLS[4]} s <= 1.0 x replica ${SYNCS[4]} s: $(goal "${PULLS[4]}" "${SYNCS[4]}")"
echo "  init: $best_init s <= 0.2 x replica's first sync = $(times "$best_replica" 0.2) s:" \
    "$(goal "$best_init" "$(times "$best_replica" 0.2)")" \
    "(the server's own share, ${cpu_init} s of CPU over $(nproc) cores: $(goal "$(ratio "$cpu_init" "$(nproc)")" "$(times "$best_replica" 0.2)"))"
for i in 1 2 3 4; do
    echo "  pull in watch: ${STEPS[$i]}: ${WATCHED[$i]} s <= 1.0 x replica ${SYNCS[$i]} s: $(goal "${WATCHED[$i]}" "${SYNCS[$i]}")"
done
echo "  .tursync/ on disk / the working copy: $DISK_INIT after init: $(goal "$DISK_INIT" 1.05);" \
    "$DISK_PULLS after the pulls: $(goal "$DISK_PULLS" 1.05) (goal <= 1.05)"
