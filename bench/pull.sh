#!/usr/bin/env bash
# Pull against a fresh clone: a 1M-row remote (ROWS), 1% of its rows changed remotely
# (CHANGE_PCT), plus a pull when nothing changed. Prints the times and the ratio.
set -euo pipefail
cd "$(dirname "$0")/.."
ROWS=${ROWS:-1000000}
CHANGE_PCT=${CHANGE_PCT:-1}

sqld_bin="$(bash scripts/install-sqld.sh)"
cargo build --release --quiet
tursync="$PWD/target/release/tursync"
work=$(mktemp -d)
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
url="http://127.0.0.1:$port"
"$sqld_bin" --db-path "$work/server" --http-listen-addr "127.0.0.1:$port" --no-welcome >"$work/sqld.log" 2>&1 &
sqld_pid=$!
trap 'kill $sqld_pid 2>/dev/null || true; rm -rf "$work"' EXIT
for _ in $(seq 100); do curl -sf "$url/health" >/dev/null && break; sleep 0.1; done

sql() { curl -sf -XPOST "$url/v3/pipeline" -H 'Content-Type: application/json' \
    -d "{\"requests\":[{\"type\":\"sequence\",\"sql\":\"$1\"},{\"type\":\"close\"}]}" >/dev/null; }
sql "CREATE TABLE big(id INTEGER PRIMARY KEY, name TEXT, email TEXT, score REAL, n INT, data BLOB); \
WITH RECURSIVE c(i) AS (SELECT 1 UNION ALL SELECT i+1 FROM c WHERE i<$ROWS) \
INSERT INTO big SELECT i, 'name '||i, 'user'||i||'@example.com', i*1.5, i*7, randomblob(16) FROM c; \
CREATE INDEX big_n ON big(n);"

secs() { python3 -c "import time,sys; print(f'{time.time()-float(sys.argv[1]):.2f}')" "$1"; }
best_clone=""
for i in 1 2 3; do
    rm -rf "$work/c$i" && mkdir "$work/c$i"
    t0=$(date +%s.%N); (cd "$work/c$i" && "$tursync" init -q --url "$url" >/dev/null); t=$(secs "$t0")
    best_clone=$(python3 -c "print(min(x for x in [$t, ${best_clone:-1e9}]))")
done
echo "fresh clone of $ROWS rows:        ${best_clone}s (best of 3)"

cd "$work/c1"
t0=$(date +%s.%N); "$tursync" pull -q >/dev/null; t=$(secs "$t0")
echo "pull, remote unchanged:           ${t}s"

step=$((100 / CHANGE_PCT))
best_pull=""
for i in 1 2 3; do
    sql "UPDATE big SET name = name || '.$i', score = score + 1 WHERE id % $step = 0;"
    t0=$(date +%s.%N); "$tursync" pull -q >/dev/null; t=$(secs "$t0")
    best_pull=$(python3 -c "print(min(x for x in [$t, ${best_pull:-1e9}]))")
done
echo "pull of ${CHANGE_PCT}% changed rows:        ${best_pull}s (best of 3)"
python3 -c "print(f'pull / clone:                     {$best_pull/$best_clone:.2f} (goal: at most 1.20)')"
