#!/usr/bin/env bash
# How fast `tursync watch --interval 0.5` carries a row committed by an app in one workspace to
# another workspace's working copy. Two workspaces of one remote (ROWS seed rows), a watcher in
# each; an app commits one row at a time in A (sqlite3 from Python, its own process) and waits
# until the row is in B's working copy, COUNT times, at random moments. With BUSY_B=1 an app also
# commits in B every 100 ms. Prints the median, 90th percentile and worst latency, and checks
# that every row is on the remote and in both working copies and that both watchers exit 0 on
# SIGTERM.
set -euo pipefail
cd "$(dirname "$0")/.."
ROWS=${ROWS:-10000}
COUNT=${COUNT:-40}
INTERVAL=${INTERVAL:-0.5}
BUSY_B=${BUSY_B:-0}

sqld_bin="$(bash scripts/install-sqld.sh)"
cargo build --release --quiet
tursync="$PWD/target/release/tursync"
work=$(mktemp -d)
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
url="http://127.0.0.1:$port"
"$sqld_bin" --db-path "$work/server" --http-listen-addr "127.0.0.1:$port" --no-welcome >"$work/sqld.log" 2>&1 &
sqld_pid=$!
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill -KILL "$p" 2>/dev/null || true; done
    kill "$sqld_pid" 2>/dev/null || true
    [[ ${KEEP_TMP:-0} == 1 ]] || rm -rf "$work"
}
trap cleanup EXIT
for _ in $(seq 100); do curl -sf "$url/health" >/dev/null && break; sleep 0.1; done

sql() { curl -sf -XPOST "$url/v3/pipeline" -H 'Content-Type: application/json' \
    -d "{\"requests\":[{\"type\":\"execute\",\"stmt\":{\"sql\":\"$1\"}},{\"type\":\"close\"}]}"; }
sql "CREATE TABLE items(id INTEGER PRIMARY KEY, tag TEXT, n INTEGER)" >/dev/null
sql "WITH RECURSIVE c(i) AS (SELECT 1 UNION ALL SELECT i+1 FROM c WHERE i<$ROWS) \
INSERT INTO items SELECT i, 'seed '||i, i FROM c" >/dev/null

for side in a b; do
    mkdir "$work/$side"
    (cd "$work/$side" && "$tursync" init -q --url "$url" >/dev/null)
    (cd "$work/$side" && exec "$tursync" watch -q --interval "$INTERVAL" >"$work/$side.log" 2>&1) &
    pids+=($!)
done
if [[ $BUSY_B == 1 ]]; then
    python3 - "$work/b/working_copy.db" "$work/b-stop" <<'PY' &
import os, sqlite3, sys, time
conn = sqlite3.connect(sys.argv[1], timeout=30, isolation_level=None)
i = 0
while not os.path.exists(sys.argv[2]):
    conn.execute("INSERT INTO items(id, tag, n) VALUES (?, 'b', 0)", (2_000_000 + i,))
    i += 1
    time.sleep(0.1)
PY
    busy_pid=$!
fi
sleep 1

python3 - "$work/a/working_copy.db" "$work/b/working_copy.db" "$COUNT" <<'PY'
import random, sqlite3, statistics, sys, time
a = sqlite3.connect(sys.argv[1], timeout=30, isolation_level=None)
b = sqlite3.connect(sys.argv[2], timeout=30, isolation_level=None)
lat = []
for i in range(int(sys.argv[3])):
    time.sleep(random.uniform(0, 0.5))
    a.execute("INSERT INTO items(id, tag, n) VALUES (?, 'a', ?)", (1_000_000 + i, i))
    t0 = time.monotonic()
    while not b.execute("SELECT 1 FROM items WHERE id = ?", (1_000_000 + i,)).fetchone():
        if time.monotonic() - t0 > 30:
            sys.exit(f"row {i} not in B after 30 s")
        time.sleep(0.005)
    lat.append(time.monotonic() - t0)
lat.sort()
print(f"rows: {len(lat)}; latency A commit -> B working copy: median {statistics.median(lat):.3f}s, "
      f"p90 {lat[int(len(lat) * 0.9) - 1]:.3f}s, worst {lat[-1]:.3f}s")
PY

if [[ $BUSY_B == 1 ]]; then
    touch "$work/b-stop"
    wait "$busy_pid"
fi
# Let the last commits settle, then stop both watchers as a service manager would.
sleep 3
for p in "${pids[@]}"; do
    kill -TERM "$p"
    code=0
    wait "$p" || code=$?
    [[ $code == 0 ]] || { echo "a watcher exited with $code" >&2; cat "$work"/*.log >&2; exit 1; }
done
pids=()
remote=$(sql "SELECT count(*) FROM items" | python3 -c 'import json,sys; print(json.load(sys.stdin)["results"][0]["response"]["result"]["rows"][0][0]["value"])')
for side in a b; do
    n=$(python3 -c "import sqlite3,sys; print(sqlite3.connect(sys.argv[1]).execute('SELECT count(*) FROM items').fetchone()[0])" "$work/$side/working_copy.db")
    [[ $n == "$remote" ]] || { echo "$side has $n rows, the remote $remote" >&2; exit 1; }
done
echo "nothing lost: $remote rows on the remote and in both working copies; both watchers exited 0 on SIGTERM"
