#!/usr/bin/env bash
# Benchmark: `tursync diff` against SQLite's own `sqldiff`, on a local workspace.
#
# Builds (with the sqlite3 CLI) a base database with one table
#   items(id INTEGER PRIMARY KEY, name TEXT, price REAL, payload BLOB, note TEXT NULL, qty INT)
# of $ROWS rows plus an index on name, copies it as the working copy, and edits $CHANGE_PCT %
# of the rows there: 5/14 of the changes are updates spread over the whole table, 5/14 deletes
# (also spread out), 4/14 inserts of new rows (so the default 7 % is 2.5 % / 2.5 % / 2 %).
# The files are laid out as a tursync workspace (working_copy.db, .tursync/base.db,
# .tursync/config.json), so no server is needed. Then, best of $RUNS, with warm page cache:
#   sqldiff .tursync/base.db working_copy.db > /dev/null
#   tursync diff -q > /dev/null
#   tursync diff --sql -q > /dev/null
# and the peak RSS of each.
#
# Env: ROWS (default 1000000), CHANGE_PCT (default 7), RUNS (default 3), KEEP_TMP=1 to keep
# the temp dir. UPDATES_ONLY=1 makes every change an update (CHANGE_PCT=0.01 is 100 rows at 1M),
# the case of a working copy that is still mostly a page-identical copy of the base. WAL=1 makes the edits in WAL mode and leaves them in working_copy.db-wal
# (not checkpointed), as an app using WAL would, and keeps a sqlite3 connection open on the
# working copy meanwhile (like a running app; otherwise the first reader to close would
# checkpoint and remove the WAL). `tursync diff` reads the pages through SQLite's pager, WAL
# frames included. SCALING=1 also reports how the times grow with the table size
# (SIZES, default "250000 500000 1000000", at CHANGE_PCT) and with the share of changed rows
# (PCTS, default "1 7 20", at ROWS).
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT=$PWD
ROWS="${ROWS:-1000000}"
CHANGE_PCT="${CHANGE_PCT:-7}"
RUNS="${RUNS:-3}"
SCALING="${SCALING:-0}"
WAL="${WAL:-0}"
UPDATES_ONLY="${UPDATES_ONLY:-0}"
SIZES="${SIZES:-250000 500000 1000000}"
PCTS="${PCTS:-1 7 20}"

is_int() { [[ "$1" =~ ^[0-9]+$ && "$1" -gt 0 ]]; }
is_pct() { [[ "$1" =~ ^[0-9]+(\.[0-9]+)?$ ]] && awk -v p="$1" 'BEGIN { exit !(p > 0 && p <= 50) }'; }
is_int "$ROWS" || { echo "ROWS must be a positive integer" >&2; exit 2; }
is_int "$RUNS" || { echo "RUNS must be a positive integer" >&2; exit 2; }
is_pct "$CHANGE_PCT" || { echo "CHANGE_PCT must be a number in (0, 50]" >&2; exit 2; }
for n in $SIZES; do is_int "$n" || { echo "SIZES: $n is not a positive integer" >&2; exit 2; }; done
for p in $PCTS; do is_pct "$p" || { echo "PCTS: $p is not a number in (0, 50]" >&2; exit 2; }; done

log() { echo "diff.sh: $*" >&2; }

# --- tools -------------------------------------------------------------------------------------
# shellcheck source=bench/common.sh
source bench/common.sh
need_tools "sqlite3:sqlite3" "sqldiff:sqlite3-tools" "/usr/bin/time:time"

log "building the release binary"
cargo build --release --quiet
TURSYNC="$ROOT/target/release/tursync"
BUILD="$(build_label)"
HAVE_DIFF=1
if ! "$TURSYNC" diff --help >/dev/null 2>&1; then
    HAVE_DIFF=0
    log "WARNING: this build has no 'tursync diff'; timing sqldiff only"
fi

TMP="$(mktemp -d "${TMPDIR:-/tmp}/tursync-bench-diff.XXXXXX")"
HOLD_PID=""
# WAL=1: a sqlite3 process holding the working copy open, fed through a fifo on fd 7.
hold_open() {
    rm -f "$TMP/hold.fifo"
    mkfifo "$TMP/hold.fifo"
    sqlite3 "$1" <"$TMP/hold.fifo" >/dev/null &
    HOLD_PID=$!
    exec 7>"$TMP/hold.fifo"
    rm -f "$TMP/hold.ready"
    # Wait until it has read the database (and so recovered the WAL index): a reader that
    # comes while it does that gets SQLITE_BUSY, and sqldiff sets no busy timeout.
    printf 'SELECT count(*) FROM sqlite_schema;\n.shell touch %s\n' "$TMP/hold.ready" >&7
    local i
    for i in $(seq 1 600); do
        [[ -e "$TMP/hold.ready" ]] && return 0
        kill -0 "$HOLD_PID" 2>/dev/null || break
        sleep 0.05
    done
    echo "WAL=1: the sqlite3 connection holding the working copy open did not start" >&2
    exit 1
}
release() {
    if [[ -n "$HOLD_PID" ]]; then
        exec 7>&-
        wait "$HOLD_PID" 2>/dev/null || true
        HOLD_PID=""
    fi
}
cleanup() {
    release
    if [[ "${KEEP_TMP:-0}" == 1 ]]; then log "kept $TMP"; else rm -rf "$TMP"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# --- data --------------------------------------------------------------------------------------
# Row i of the generator; used for the base rows and for the inserted ones.
ROW_SELECT="SELECT i, 'item-' || printf('%08d', i), round((i * 37 % 100000) / 100.0 + 0.01, 2),
    randomblob(8 + i % 40), CASE WHEN i % 4 = 0 THEN NULL ELSE 'note ' || hex(randomblob(6)) END,
    i % 500"

# make_base N FILE
make_base() {
    local n=$1 file=$2
    rm -f "$file"
    sqlite3 "$file" <<SQL
PRAGMA journal_mode = OFF;
PRAGMA synchronous = OFF;
CREATE TABLE items(id INTEGER PRIMARY KEY, name TEXT NOT NULL, price REAL, payload BLOB,
                   note TEXT, qty INT);
CREATE INDEX items_name ON items(name);
INSERT INTO items(id, name, price, payload, note, qty)
    WITH RECURSIVE c(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM c WHERE i < $n)
    $ROW_SELECT FROM c;
PRAGMA journal_mode = DELETE;
SQL
} >/dev/null

# make_workspace BASE N PCT DIR: the base as .tursync/base.db, an edited copy as the working
# copy. Sets CHANGES to "updates deletes inserts".
make_workspace() {
    local base=$1 n=$2 pct=$3 dir=$4 u_ppm d_ppm ins
    rm -rf "$dir"
    mkdir -p "$dir/.tursync"
    cp "$base" "$dir/.tursync/base.db"
    cp "$base" "$dir/working_copy.db"
    printf '{"version":1,"url":"http://127.0.0.1:9","db":"working_copy.db"}\n' >"$dir/.tursync/config.json"
    # A row is picked by a multiplicative hash of its id, which spreads the picks evenly over the
    # table; the hash is a bijection mod 10^6, so at 10^6 rows the counts are exact.
    u_ppm=$(awk -v p="$pct" 'BEGIN { printf "%d", p * 10000 * 5 / 14 + 0.5 }')
    d_ppm=$u_ppm
    ins=$(awk -v p="$pct" -v n="$n" 'BEGIN { printf "%d", n * p / 100 * 4 / 14 + 0.5 }')
    if [[ "$UPDATES_ONLY" == 1 ]]; then
        u_ppm=$(awk -v p="$pct" 'BEGIN { printf "%d", p * 10000 + 0.5 }')
        d_ppm=0 ins=0
    fi
    local wal_setup=""
    if [[ "$WAL" == 1 ]]; then
        wal_setup=".output /dev/null
.dbconfig no_ckpt_on_close on
PRAGMA journal_mode = WAL;
PRAGMA wal_autocheckpoint = 0;
.output stdout"
    fi
    CHANGES=$(sqlite3 "$dir/working_copy.db" <<SQL
$wal_setup
BEGIN;
UPDATE items SET
    price = price + 0.25,
    qty = CASE WHEN id % 2 = 0 THEN qty + 1 ELSE qty END,
    note = CASE id % 5 WHEN 0 THEN NULL WHEN 1 THEN 'edited ' || id ELSE note END,
    payload = CASE WHEN id % 7 = 0 THEN randomblob(16) ELSE payload END
  WHERE (id * 2654435761) % 1000000 < $u_ppm;
SELECT changes();
DELETE FROM items
  WHERE (id * 2654435761) % 1000000 >= $u_ppm AND (id * 2654435761) % 1000000 < $((u_ppm + d_ppm));
SELECT changes();
INSERT INTO items(id, name, price, payload, note, qty)
    WITH RECURSIVE c(i) AS (SELECT $n + 1 UNION ALL SELECT i + 1 FROM c WHERE i < $n + $ins)
    $ROW_SELECT FROM c WHERE $ins > 0;
SELECT changes();
COMMIT;
SQL
)
    CHANGES=$(echo $CHANGES)
    if [[ "$WAL" == 1 ]]; then
        wal_check "$dir"
        hold_open "$dir/working_copy.db"
    fi
}
wal_check() {
    [[ -s "$1/working_copy.db-wal" ]] || { echo "WAL=1: working_copy.db-wal is missing or empty" >&2; exit 1; }
}

# --- timing ------------------------------------------------------------------------------------
# best_of DIR CMD...: runs CMD in DIR $RUNS times, stdout discarded. Sets BEST (seconds, the
# fastest run) and RSS (KiB, the largest peak RSS over the runs).
best_of() {
    local dir=$1 t0 t1 t r
    shift
    BEST="" RSS=""
    for _ in $(seq 1 "$RUNS"); do
        t0=$EPOCHREALTIME
        (cd "$dir" && /usr/bin/time -f %M -o "$TMP/rss" "$@" >/dev/null)
        t1=$EPOCHREALTIME
        t=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.3f", b - a }')
        r=$(tail -n1 "$TMP/rss")
        BEST=$(awk -v a="$BEST" -v b="$t" 'BEGIN { print (a == "" || b + 0 < a + 0) ? b : a }')
        RSS=$(awk -v a="$RSS" -v b="$r" 'BEGIN { print (a == "" || b + 0 > a + 0) ? b : a }')
    done
}

ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", a / b }'; }
mib() { awk -v k="$1" 'BEGIN { printf "%.1f", k / 1024 }'; }

# bench N PCT: builds the workspace (reusing the base for N) and times the three commands.
# Sets S_T S_R (sqldiff), D_T D_R (tursync diff), Q_T Q_R (tursync diff --sql), NCH (changes).
declare -A CACHE=()
bench() {
    local n=$1 pct=$2 ws="$TMP/ws" expected got
    release
    if [[ -n "${CACHE[$n:$pct]:-}" ]]; then
        read -r U D I NCH S_T S_R D_T D_R Q_T Q_R <<<"${CACHE[$n:$pct]}"
        if [[ "$D_T" == - ]]; then D_T="" D_R="" Q_T="" Q_R=""; fi
        return 0
    fi
    if [[ ! -f "$TMP/base-$n.db" ]]; then
        log "building the $n-row base"
        make_base "$n" "$TMP/base-$n.db"
    fi
    make_workspace "$TMP/base-$n.db" "$n" "$pct" "$ws"
    read -r U D I <<<"$CHANGES"
    NCH=$((U + D + I))
    log "$n rows, $pct %: $U updates, $D deletes, $I inserts"

    # Sanity check: sqldiff prints one statement per changed row.
    got=$(cd "$ws" && sqldiff .tursync/base.db working_copy.db | wc -l)
    [[ "$got" == "$NCH" ]] || { echo "sqldiff reported $got changes, expected $NCH" >&2; exit 1; }

    best_of "$ws" sqldiff .tursync/base.db working_copy.db
    S_T=$BEST S_R=$RSS
    D_T="" D_R="" Q_T="" Q_R=""
    if ((HAVE_DIFF)); then
        # Sanity check: the JSON changeset lists one change per changed row.
        if [[ "$("$TURSYNC" diff --help 2>/dev/null)" == *--json* ]]; then
            expected=$NCH
            got=$(cd "$ws" && "$TURSYNC" diff -q --json | count_json_changes)
            if [[ "$got" == "?" ]]; then
                log "could not count the changes in 'tursync diff --json' (no python3?); not checked"
            elif [[ "$got" != "$expected" ]]; then
                echo "tursync diff --json reported $got changes, expected $expected" >&2
                exit 1
            fi
        fi
        best_of "$ws" "$TURSYNC" diff -q
        D_T=$BEST D_R=$RSS
        best_of "$ws" "$TURSYNC" diff --sql -q
        Q_T=$BEST Q_R=$RSS
    fi
    [[ "$WAL" == 1 ]] && wal_check "$ws"
    CACHE[$n:$pct]="$U $D $I $NCH $S_T $S_R ${D_T:--} ${D_R:--} ${Q_T:--} ${Q_R:--}"
}

# Counts row changes in `tursync diff --json` output, whatever its exact shape: the number of
# objects that carry an "op"/"kind"/"type" of insert/delete/update. Prints ? when unsure.
count_json_changes() {
    python3 -c '
import json, sys
try:
    doc = json.load(sys.stdin)
except Exception:
    print("?"); sys.exit()
n = 0
def walk(x):
    global n
    if isinstance(x, dict):
        for k in ("op", "kind", "type", "change"):
            v = x.get(k)
            if isinstance(v, str) and v.lower() in ("insert", "delete", "update"):
                n += 1
                return
        for v in x.values(): walk(v)
    elif isinstance(x, list):
        for v in x: walk(v)
walk(doc)
print(n if n else "?")
' 2>/dev/null || echo "?"
}

print_header() {
    printf '  %-24s %9s %9s %9s %7s %9s %9s %9s\n' "$1" "sqldiff" "diff" "diff-sql" "ratio" \
        "RSS sqldf" "RSS diff" "RSS sql"
}
print_row() {
    local r="-" dt="${D_T:--}" qt="${Q_T:--}" dr="-" qr="-"
    [[ -n "$D_T" ]] && r="$(ratio "$D_T" "$S_T")x"
    [[ -n "$D_R" ]] && dr="$(mib "$D_R")M"
    [[ -n "$Q_R" ]] && qr="$(mib "$Q_R")M"
    printf '  %-24s %8ss %8ss %8ss %7s %8sM %9s %9s\n' "$1" "$S_T" "$dt" "$qt" "$r" "$(mib "$S_R")" "$dr" "$qr"
}

# --- main --------------------------------------------------------------------------------------
bench "$ROWS" "$CHANGE_PCT"
if ((HAVE_DIFF)); then
    # Correctness check: base.db + `tursync diff --sql` must equal the working copy.
    cp "$TMP/ws/.tursync/base.db" "$TMP/replayed.db"
    (cd "$TMP/ws" && "$TURSYNC" diff --sql -q) | sqlite3 "$TMP/replayed.db"
    left=$(sqldiff "$TMP/replayed.db" "$TMP/ws/working_copy.db" | wc -l)
    [[ "$left" == 0 ]] || { echo "base + tursync diff --sql differs from the working copy in $left rows" >&2; exit 1; }
    log "checked: base.db + 'tursync diff --sql' == working copy"
    rm -f "$TMP/replayed.db"
fi
echo
wal_note=""
[[ "$WAL" == 1 ]] && wal_note=", edits left in the WAL"
echo "diff benchmark: $ROWS rows, $CHANGE_PCT % changed ($U updates, $D deletes, $I inserts$wal_note), best of $RUNS, $(nproc) cores"
sizes="  base.db $(( $(stat -c %s "$TMP/ws/.tursync/base.db") / 1048576 )) MiB, working_copy.db $(( $(stat -c %s "$TMP/ws/working_copy.db") / 1048576 )) MiB"
[[ "$WAL" == 1 ]] && sizes+=" + $(( $(stat -c %s "$TMP/ws/working_copy.db-wal") / 1048576 )) MiB WAL"
echo "$sizes"
echo "  tursync at $BUILD"
printf '  %-40s %8ss   peak RSS %7s KiB\n' "sqldiff base.db working_copy.db" "$S_T" "$S_R"
if ((HAVE_DIFF)); then
    printf '  %-40s %8ss   peak RSS %7s KiB\n' "tursync diff -q" "$D_T" "$D_R"
    printf '  %-40s %8ss   peak RSS %7s KiB\n' "tursync diff --sql -q" "$Q_T" "$Q_R"
    echo "  ratio tursync diff / sqldiff:       $(ratio "$D_T" "$S_T")"
    echo "  ratio tursync diff --sql / sqldiff: $(ratio "$Q_T" "$S_T")"
else
    echo "  tursync diff: not available in this build"
fi

if [[ "$SCALING" == 1 ]]; then
    echo
    echo "scaling with table size ($CHANGE_PCT % changed$wal_note), best of $RUNS; ratio = diff / sqldiff"
    print_header "rows"
    for n in $SIZES; do
        bench "$n" "$CHANGE_PCT"
        print_row "$n"
    done
    echo
    echo "scaling with changed rows ($ROWS rows$wal_note), best of $RUNS; ratio = diff / sqldiff"
    print_header "changed"
    for p in $PCTS; do
        bench "$ROWS" "$p"
        print_row "$p % ($NCH rows)"
    done
fi
