#!/usr/bin/env python3
"""The "old scheme" of pushing a local SQLite edit to a remote libSQL server (sqld), kept as a
benchmark baseline for `tursync push` (see bench/push.sh).

    python3 bench/push_old.py URL base.db working_copy.db

1. `sqldiff base.db working_copy.db` gives the changes as SQL statements.
2. DELETE statements are sent 1000 per Hrana "batch" request, INSERT statements 500 per batch
   request, and every other statement (UPDATE, schema changes, ...) as an HTTP request of its
   own. Every batch and every statement is one HTTP POST to URL/v3/pipeline (the request plus a
   "close"), with no stream kept between them: each statement commits on its own, as a client
   of that scheme did. Deletes go first, then the other statements in sqldiff's order, then the
   inserts (safe for tables with a primary key: sqldiff never deletes and re-inserts a key, it
   emits an UPDATE for it).
3. Every result is checked; the first error aborts with exit status 1.

Prints one JSON line on stdout:
    {"statements": N, "deletes": D, "inserts": I, "others": O, "requests": R,
     "diff_secs": ..., "send_secs": ..., "total_secs": ...}

Standard library only. Env: SQLDIFF (default "sqldiff"), SQLD_AUTH_TOKEN (optional bearer
token). Option --keep-alive reuses one HTTP connection (http.client) instead of opening one per
request (urllib), to show how much of the time is connection setup.
"""

import argparse
import http.client
import json
import os
import sqlite3
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request

DELETES_PER_BATCH = 1000
INSERTS_PER_BATCH = 500


def read_statements(base, work):
    """Runs sqldiff and returns its statements (a statement may span lines: sqldiff writes a
    newline inside a string as '...'||X'0a'\\n||'...')."""
    sqldiff = os.environ.get("SQLDIFF", "sqldiff")
    proc = subprocess.run([sqldiff, base, work], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    if proc.returncode != 0:
        sys.exit("push_old: sqldiff failed: " + proc.stderr.decode(errors="replace").strip())
    stmts, pending = [], ""
    for line in proc.stdout.decode("utf-8", errors="surrogateescape").split("\n"):
        if not line and not pending:
            continue
        pending = pending + "\n" + line if pending else line
        if sqlite3.complete_statement(pending):
            stmts.append(pending)
            pending = ""
    if pending.strip():
        sys.exit("push_old: sqldiff output ends in an incomplete statement: " + pending[:200])
    return stmts


def kind(stmt):
    head = stmt.lstrip()[:12].upper()
    if head.startswith("DELETE FROM"):
        return "delete"
    if head.startswith("INSERT INTO"):
        return "insert"
    return "other"


def chunks(items, width):
    for i in range(0, len(items), width):
        yield items[i : i + width]


class Client:
    def __init__(self, url, keep_alive):
        self.url = url.rstrip("/") + "/v3/pipeline"
        self.requests = 0
        self.headers = {"Content-Type": "application/json"}
        token = os.environ.get("SQLD_AUTH_TOKEN")
        if token:
            self.headers["Authorization"] = "Bearer " + token
        self.conn = None
        if keep_alive:
            u = urllib.parse.urlsplit(self.url)
            cls = http.client.HTTPSConnection if u.scheme == "https" else http.client.HTTPConnection
            self.conn = cls(u.hostname, u.port, timeout=300)
            self.path = u.path

    def post(self, body):
        data = json.dumps({"requests": [body, {"type": "close"}]}).encode()
        self.requests += 1
        if self.conn is not None:
            self.conn.request("POST", self.path, body=data, headers=self.headers)
            resp = self.conn.getresponse()
            status, text = resp.status, resp.read()
        else:
            req = urllib.request.Request(self.url, data=data, headers=self.headers, method="POST")
            try:
                with urllib.request.urlopen(req, timeout=300) as resp:
                    status, text = resp.status, resp.read()
            except urllib.error.HTTPError as e:
                status, text = e.code, e.read()
        if status != 200:
            sys.exit("push_old: HTTP %d from %s: %s" % (status, self.url, text[:500].decode(errors="replace")))
        results = json.loads(text).get("results")
        if not isinstance(results, list) or len(results) != 2:
            sys.exit("push_old: unexpected response: %s" % text[:500].decode(errors="replace"))
        for r in results:
            if r.get("type") != "ok":
                sys.exit("push_old: request failed: %s" % json.dumps(r.get("error", r))[:500])
        return results[0]["response"]

    def execute(self, sql):
        self.post({"type": "execute", "stmt": {"sql": sql, "want_rows": False}})

    def batch(self, stmts):
        resp = self.post(
            {"type": "batch", "batch": {"steps": [{"stmt": {"sql": s, "want_rows": False}} for s in stmts]}}
        )
        result = resp.get("result", {})
        errors = result.get("step_errors", [])
        oks = result.get("step_results", [])
        if len(oks) != len(stmts):
            sys.exit("push_old: batch of %d steps returned %d results" % (len(stmts), len(oks)))
        for i, (ok, err) in enumerate(zip(oks, errors)):
            if err is not None or ok is None:
                sys.exit("push_old: batch step failed: %s: %s" % (stmts[i][:200], json.dumps(err)[:500]))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("url")
    ap.add_argument("base")
    ap.add_argument("working_copy")
    ap.add_argument("--keep-alive", action="store_true", help="reuse one HTTP connection")
    args = ap.parse_args()
    for path in (args.base, args.working_copy):
        if not os.path.isfile(path):
            sys.exit("push_old: no such file: " + path)

    t0 = time.monotonic()
    stmts = read_statements(args.base, args.working_copy)
    t1 = time.monotonic()

    deletes = [s for s in stmts if kind(s) == "delete"]
    inserts = [s for s in stmts if kind(s) == "insert"]
    others = [s for s in stmts if kind(s) == "other"]

    client = Client(args.url, args.keep_alive)
    for group in chunks(deletes, DELETES_PER_BATCH):
        client.batch(group)
    for s in others:
        client.execute(s)
    for group in chunks(inserts, INSERTS_PER_BATCH):
        client.batch(group)
    t2 = time.monotonic()

    print(
        json.dumps(
            {
                "statements": len(stmts),
                "deletes": len(deletes),
                "inserts": len(inserts),
                "others": len(others),
                "requests": client.requests,
                "diff_secs": round(t1 - t0, 3),
                "send_secs": round(t2 - t1, 3),
                "total_secs": round(t2 - t0, 3),
            }
        )
    )


if __name__ == "__main__":
    main()
