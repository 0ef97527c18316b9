#!/usr/bin/env bash
# Benchmark: pushing a local edit of a cloned table back to the remote libSQL server.
#
#   (a) tursync push -q --json                   one transaction, multi-row statements
#   (b) python3 bench/push_old.py URL base wc    the old scheme: sqldiff's statements, DELETEs
#                                                1000 and INSERTs 500 per Hrana batch request,
#                                                every other statement (UPDATE) its own request
#
# Seeds one table t(id, name, email, score, n, data) with $ROWS rows on its own sqld (no auth,
# loopback), stops it and keeps its data directory as the pristine remote state. Each run of each
# scheme restores that state, starts sqld on it, clones it with `tursync init`, makes the same
# edits in the working copy ($UPDATES updates, $DELETES deletes, $INSERTS inserts; deterministic)
# and times the push alone. After every push the remote must hold exactly the working copy's
# rows: the same count(*), sum(n), total(score), and (EXACT=1) no sqldiff difference between the
# working copy and a fresh clone of the remote. Reports the best of $RUNS runs, requests, the
# ratio, peak RSS, and the goal check requests <= changes/1000 + 5 for tursync (exit status 1
# when it fails, after the summary).
#
# Env: ROWS (300000), UPDATES (10000), DELETES (10000), INSERTS (100000), RUNS (3),
# EXACT (1), SQLD_BIN (default: the cached sqld 0.24.32, installed via scripts/install-sqld.sh
# when missing), KEEP_TMP=1 to keep the temp dir. Everything else is removed on exit.
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT=$PWD
ROWS="${ROWS:-300000}"
UPDATES="${UPDATES:-10000}"
DELETES="${DELETES:-10000}"
INSERTS="${INSERTS:-100000}"
RUNS="${RUNS:-3}"
EXACT="${EXACT:-1}"
for v in ROWS UPDATES DELETES INSERTS RUNS; do
    [[ "${!v}" =~ ^[0-9]+$ ]] || { echo "$v must be a non-negative integer" >&2; exit 2; }
done
((ROWS > 0 && RUNS > 0)) || { echo "ROWS and RUNS must be positive" >&2; exit 2; }
((UPDATES + DELETES <= ROWS)) || { echo "UPDATES + DELETES must not exceed ROWS" >&2; exit 2; }
CHANGES=$((UPDATES + DELETES + INSERTS))
((CHANGES > 0)) || { echo "nothing to push: UPDATES + DELETES + INSERTS is 0" >&2; exit 2; }
# The benchmark names its remote explicitly; a URL or token from the caller's env must not leak in.
unset TURSO_DATABASE_URL TURSO_AUTH_TOKEN

log() { echo "push.sh: $*" >&2; }

# --- tools -------------------------------------------------------------------------------------
# shellcheck source=bench/common.sh
source bench/common.sh
need_tools "sqlite3:sqlite3" "sqldiff:sqlite3-tools" "curl:curl" "python3:python3" "/usr/bin/time:time"

SQLD="$(find_sqld)"

log "building the release binary"
cargo build --release --quiet
TURSYNC="$ROOT/target/release/tursync"
PUSH_OLD="$ROOT/bench/push_old.py"
# The interpreter itself, not a version-manager shim in front of it, is what gets timed.
PYTHON=$(python3 -c 'import sys; print(sys.executable)')

# --- temp dir and sqld -------------------------------------------------------------------------
TMP="$(mktemp -d "${TMPDIR:-/tmp}/tursync-bench-push.XXXXXX")"
SQLD_PID=""
URL=""
stop_sqld() {
    if [[ -n "$SQLD_PID" ]]; then
        kill "$SQLD_PID" 2>/dev/null || true
        wait "$SQLD_PID" 2>/dev/null || true
        SQLD_PID=""
    fi
}
cleanup() {
    stop_sqld
    if [[ "${KEEP_TMP:-0}" == 1 ]]; then log "kept $TMP"; else rm -rf "$TMP"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM



# remote_query SQL: runs one statement on the remote; prints its rows, columns joined by '|'.
remote_query() {
    local body
    body=$(python3 -c 'import json, sys; print(json.dumps({"requests": [
        {"type": "execute", "stmt": {"sql": sys.argv[1]}}, {"type": "close"}]}))' "$1")
    curl -sS -XPOST "$URL/v3/pipeline" -H 'Content-Type: application/json' -d "$body" |
        python3 -c '
import json, sys
resp = json.load(sys.stdin)
r = resp.get("results", [{}])[0]
if r.get("type") != "ok":
    sys.exit("remote SQL failed: %s" % json.dumps(r.get("error", resp))[:500])
for row in r["response"]["result"]["rows"]:
    print("|".join("" if c["type"] == "null" else str(c.get("value", c.get("base64", ""))) for c in row))
'
}

# --- the pristine remote -----------------------------------------------------------------------
log "seeding $ROWS rows"
start_sqld "$TMP/pristine"
SQLD_VERSION=$("$SQLD" --version | awk '{print $3}')
remote_query "CREATE TABLE t(id INTEGER PRIMARY KEY, name TEXT, email TEXT, score REAL, n INT, data BLOB)" >/dev/null
remote_query "WITH RECURSIVE c(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM c WHERE i < $ROWS) \
INSERT INTO t(id, name, email, score, n, data) \
SELECT i, 'name-' || i, 'user' || i || '@example.com', abs(random() % 1000000) / 100.0, \
i % 1000, randomblob(16) FROM c" >/dev/null
got=$(remote_query "SELECT count(*) FROM t")
[[ "$got" == "$ROWS" ]] || { echo "seeding left $got rows, expected $ROWS" >&2; exit 1; }
stop_sqld

# fresh_remote: sqld on a copy of the pristine state (the previous run's copy is dropped).
fresh_remote() {
    stop_sqld
    rm -rf "$TMP/remote"
    cp -a "$TMP/pristine" "$TMP/remote"
    start_sqld "$TMP/remote"
}

# The edits, the same for every workspace: updates and deletes on disjoint rows spread over the
# table by a multiplicative hash, inserts after the largest id.
EDIT_SQL="BEGIN;
CREATE TEMP TABLE pick AS
    SELECT id, row_number() OVER (ORDER BY (id * 2654435761) % 4294967291, id) AS r FROM t;
UPDATE t SET name = name || '-upd', score = score + 0.5, n = n + 1
    WHERE id IN (SELECT id FROM pick WHERE r <= $UPDATES);
DELETE FROM t WHERE id IN (SELECT id FROM pick WHERE r > $UPDATES AND r <= $((UPDATES + DELETES)));"
if ((INSERTS > 0)); then
    EDIT_SQL+="
WITH RECURSIVE c(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM c WHERE i < $INSERTS)
INSERT INTO t(id, name, email, score, n, data)
    SELECT $ROWS + i, 'new-' || i, 'new' || i || '@example.com', (i % 100000) / 100.0, i % 1000,
           CAST(printf('%016x', i * 2654435761) AS BLOB) FROM c;"
fi
EDIT_SQL+="
COMMIT;"

# prepare_ws DIR: a fresh clone of the current remote in DIR, with the edits made.
prepare_ws() {
    rm -rf "$1"
    mkdir -p "$1"
    (cd "$1" && "$TURSYNC" init -q --url "$URL" >/dev/null)
    sqlite3 "$1/working_copy.db" <<<"$EDIT_SQL"
}

# verify DB WHAT: the remote must hold exactly the rows of DB.
# (Scores are multiples of 0.01: their total is compared in hundredths, as an integer, because
# sqld's printf('%.6f') shows fewer significant digits than the sqlite3 CLI's.)
AGG="SELECT count(*) || '|' || sum(n) || '|' || CAST(round(total(score) * 100) AS INTEGER) FROM t"
verify() {
    local db=$1 what=$2 local_agg remote_agg left
    local_agg=$(sqlite3 "$db" "$AGG")
    remote_agg=$(remote_query "$AGG")
    [[ "$local_agg" == "$remote_agg" ]] ||
        { echo "$what: remote ($remote_agg) differs from $db ($local_agg)" >&2; exit 1; }
    if [[ "$EXACT" == 1 ]]; then
        rm -rf "$TMP/check"
        mkdir "$TMP/check"
        (cd "$TMP/check" && "$TURSYNC" init -q --url "$URL" >/dev/null)
        sqldiff "$TMP/check/working_copy.db" "$db" >"$TMP/left.sql"
        if [[ -s "$TMP/left.sql" ]]; then
            echo "$what: a fresh clone of the remote differs from $db in $(wc -l <"$TMP/left.sql") rows, e.g." >&2
            head -n 3 "$TMP/left.sql" | cut -c 1-300 >&2
            exit 1
        fi
        rm -rf "$TMP/check"
    fi
}

# --- timing ------------------------------------------------------------------------------------
now() { echo "$EPOCHREALTIME"; }
elapsed() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.3f", b - a }'; }
min() { awk -v a="$1" -v b="$2" 'BEGIN { print (a == "" || b + 0 < a + 0) ? b : a }'; }
max() { awk -v a="$1" -v b="$2" 'BEGIN { print (a == "" || b + 0 > a + 0) ? b : a }'; }
json_field() { python3 -c 'import json, sys; v = json.loads(sys.argv[1]).get(sys.argv[2]); print("" if v is None else v)' "$1" "$2"; }

best_new="" best_remote="" best_old="" rss_new="" rss_old="" best_diff="" best_send=""
NEW_REQ="" NEW_TX="" OLD_REQ="" OLD_JSON="" OLD_LOSSY=""
for run in $(seq 1 "$RUNS"); do
    # (a) tursync push
    fresh_remote
    prepare_ws "$TMP/ws-new"
    t0=$(now)
    out=$(cd "$TMP/ws-new" && /usr/bin/time -f %M -o "$TMP/rss" "$TURSYNC" push -q --json)
    t1=$(now)
    t_new=$(elapsed "$t0" "$t1")
    [[ "$(json_field "$out" pushed)" == True ]] || { echo "tursync push did not push: $out" >&2; exit 1; }
    [[ "$(json_field "$out" changes)" == "$CHANGES" ]] ||
        { echo "tursync push reported $(json_field "$out" changes) changes, expected $CHANGES: $out" >&2; exit 1; }
    [[ "$(json_field "$out" applied)" == "$CHANGES" ]] ||
        { echo "tursync push applied $(json_field "$out" applied) of $CHANGES changes: $out" >&2; exit 1; }
    NEW_REQ=$(json_field "$out" requests)
    NEW_TX=$(json_field "$out" transactions)
    verify "$TMP/ws-new/working_copy.db" "tursync push"
    # The base moved by exactly what was pushed: nothing is left to push.
    left=$(sqldiff "$TMP/ws-new/.tursync/base.db" "$TMP/ws-new/working_copy.db" | wc -l)
    [[ "$left" == 0 ]] || { echo "tursync push: base.db differs from the working copy afterwards ($left lines)" >&2; exit 1; }
    # When the remote had committed: the SQL log under .tursync/pushes/ is written right after
    # the commit, before the base snapshot is updated.
    t_remote=$(python3 -c 'import os, sys; print("%.3f" % (os.path.getmtime(sys.argv[1]) - float(sys.argv[2])))' \
        "$(json_field "$out" log)" "$t0" 2>/dev/null || echo "")
    best_new=$(min "$best_new" "$t_new")
    [[ -z "$t_remote" ]] || best_remote=$(min "$best_remote" "$t_remote")
    rss_new=$(max "$rss_new" "$(tail -n1 "$TMP/rss")")

    # (b) the old scheme, on the same remote state and the same edits
    fresh_remote
    prepare_ws "$TMP/ws-old"
    t0=$(now)
    OLD_JSON=$(/usr/bin/time -f %M -o "$TMP/rss" "$PYTHON" "$PUSH_OLD" "$URL" \
        "$TMP/ws-old/.tursync/base.db" "$TMP/ws-old/working_copy.db")
    t1=$(now)
    t_old=$(elapsed "$t0" "$t1")
    [[ "$(json_field "$OLD_JSON" statements)" == "$CHANGES" ]] ||
        { echo "sqldiff gave $(json_field "$OLD_JSON" statements) statements, expected $CHANGES" >&2; exit 1; }
    OLD_REQ=$(json_field "$OLD_JSON" requests)
    # sqldiff writes REAL values with 15 significant digits, which does not round-trip every
    # double (1.89 + 0.5 becomes 2.39): the old scheme sends slightly different values for some
    # rows. So its remote must equal base.db + sqldiff's output replayed locally, and the rows
    # that differ from the working copy are counted.
    cp "$TMP/ws-old/.tursync/base.db" "$TMP/replayed.db"
    sqldiff "$TMP/ws-old/.tursync/base.db" "$TMP/ws-old/working_copy.db" | sqlite3 "$TMP/replayed.db"
    verify "$TMP/replayed.db" "old scheme"
    OLD_LOSSY=$(sqldiff "$TMP/replayed.db" "$TMP/ws-old/working_copy.db" | wc -l)
    rm -f "$TMP/replayed.db"
    best_old=$(min "$best_old" "$t_old")
    rss_old=$(max "$rss_old" "$(tail -n1 "$TMP/rss")")
    best_diff=$(min "$best_diff" "$(json_field "$OLD_JSON" diff_secs)")
    best_send=$(min "$best_send" "$(json_field "$OLD_JSON" send_secs)")

    log "run $run/$RUNS: tursync push ${t_new}s ($NEW_REQ requests; remote commit after ${t_remote:-?}s), old scheme ${t_old}s ($OLD_REQ requests)"
done
stop_sqld

ratio=$(awk -v a="$best_new" -v b="$best_old" 'BEGIN { printf "%.3f", a / b }')
speed=$(awk -v a="$best_new" -v b="$best_old" 'BEGIN { if (a <= b) printf "tursync %.1fx faster", b / a; else printf "tursync %.1fx slower", a / b }')
limit=$(awk -v c="$CHANGES" 'BEGIN { printf "%g", c / 1000 + 5 }')
goal=$(awk -v r="$NEW_REQ" -v l="$limit" 'BEGIN { print (r + 0 <= l + 0) ? "PASS" : "FAIL" }')

echo
echo "push benchmark: $ROWS-row table; $UPDATES updates, $DELETES deletes, $INSERTS inserts ($CHANGES changes)"
echo "  best of $RUNS, each from the same fresh remote state; sqld $SQLD_VERSION on loopback ($(nproc) cores)"
printf '  %-36s %8ss  %6s requests  %s transaction(s)  peak RSS %7s KiB\n' \
    "tursync push -q --json" "$best_new" "$NEW_REQ" "$NEW_TX" "$rss_new"
if [[ -n "$best_remote" ]]; then
    printf '  %-36s %8ss until the remote commit; the rest updates .tursync/base.db\n' "  of which" "$best_remote"
fi
printf '  %-36s %8ss  %6s requests  (%s deletes, %s inserts, %s others)  peak RSS %7s KiB\n' \
    "old scheme (bench/push_old.py)" "$best_old" "$OLD_REQ" "$(json_field "$OLD_JSON" deletes)" \
    "$(json_field "$OLD_JSON" inserts)" "$(json_field "$OLD_JSON" others)" "$rss_old"
printf '  %-36s %8ss sqldiff + %ss sending (best of each)\n' "  of which" "$best_diff" "$best_send"
echo "  old scheme's remote != working copy:  $OLD_LOSSY rows (REALs rounded to 15 digits by sqldiff); tursync's: 0"
echo "  ratio tursync/old:                   ${ratio} ($speed)"
echo "  requests ratio tursync/old:          $NEW_REQ / $OLD_REQ"
echo "  goal requests <= changes/1000 + 5:   $NEW_REQ <= $limit  $goal"
[[ "$goal" == PASS ]]
