#!/usr/bin/env bash
# The end-to-end demo: starts a local sqld, seeds a sample database, clones it with tursync,
# edits the working copy as an app would, and shows what changed. Leaves everything in ./demo/.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
root=$PWD

sqld_bin="$(bash scripts/install-sqld.sh)"
echo "== building tursync"
cargo build --release --quiet
tursync="$root/target/release/tursync"

demo="$root/demo"
rm -rf "$demo"
mkdir -p "$demo/app"
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
url="http://127.0.0.1:$port"
"$sqld_bin" --db-path "$demo/server" --http-listen-addr "127.0.0.1:$port" --no-welcome >"$demo/sqld.log" 2>&1 &
sqld_pid=$!
trap 'kill $sqld_pid 2>/dev/null || true' EXIT
for _ in $(seq 100); do
    curl -sf "$url/health" >/dev/null && break
    sleep 0.1
done

echo "== seeding a sample database at $url"
curl -sf -XPOST "$url/v3/pipeline" -H 'Content-Type: application/json' -d @- >/dev/null <<'JSON'
{"requests":[{"type":"sequence","sql":"CREATE TABLE notes(body TEXT, score REAL); CREATE TABLE tags(name TEXT PRIMARY KEY, n INT) WITHOUT ROWID; CREATE TABLE users(id INTEGER PRIMARY KEY AUTOINCREMENT, email TEXT UNIQUE, avatar BLOB); INSERT INTO users(email, avatar) VALUES ('ada@example.com', x''), ('linus@example.com', NULL); INSERT INTO notes(rowid, body, score) VALUES (10, 'it''s exact', -0.0), (20, 'rowids survive', 5e-324); INSERT INTO tags VALUES ('sqlite', 1), ('sync', 2); CREATE INDEX notes_score ON notes(score); CREATE VIEW top AS SELECT body FROM notes ORDER BY score DESC;"},{"type":"close"}]}
JSON

cd "$demo/app"
echo "== tursync init --url $url"
"$tursync" init --url "$url"
echo "== tursync status"
"$tursync" status
echo "== the app edits working_copy.db with any SQLite driver"
python3 - <<'PY'
import sqlite3
db = sqlite3.connect("working_copy.db")
db.executescript("""
UPDATE notes SET body = 'edited offline' WHERE rowid = 10;
INSERT INTO users(email) VALUES ('grace@example.com');
DELETE FROM tags WHERE name = 'sync';
""")
db.close()
PY
echo "== tursync diff"
"$tursync" diff
echo "== tursync diff --sql"
"$tursync" diff --sql
echo "== tursync push"
"$tursync" push
echo "== a teammate clones, edits and pushes"
mkdir -p "$demo/teammate" && cd "$demo/teammate"
"$tursync" init -q --url "$url"
python3 -c "import sqlite3; db = sqlite3.connect('working_copy.db'); db.execute(\"UPDATE notes SET score = 1.5 WHERE rowid = 20\"); db.commit()"
"$tursync" push
echo "== back in the app: tursync pull"
cd "$demo/app"
"$tursync" pull
"$tursync" status
echo "== done: the working copy is $demo/app/working_copy.db"
