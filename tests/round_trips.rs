//! How many HTTP requests each command makes on its success path (issue 20's goals), counted
//! by a proxy in front of a real server that also holds every request one round-trip time
//! ([`HookProxy::far`]). A far server costs a command one round-trip time per request, so the
//! count is what a team far from its database region feels.
//!
//! `ROUND_TRIPS_RTT_MS` sets the round-trip time (default 20 ms, which keeps the tests quick);
//! with `--nocapture` each measure prints its count and wall time, which is how
//! `bench/round_trips.sh` measures at 100 ms.

use std::path::Path;
use std::process::Output;
use std::time::{Duration, Instant};

use crate::common::*;

fn rtt() -> Duration {
    let ms = std::env::var("ROUND_TRIPS_RTT_MS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20);
    Duration::from_millis(ms)
}

/// Runs `command`, which must succeed, through `proxy` and checks it made at most `goal`
/// requests, all on one connection; the failure lists them. Prints the counts and the time
/// taken.
///
/// One connection: a new one costs a round trip before its request (two on https, with TLS's
/// handshake), so a command that dropped its connection after each answer would pay up to three
/// round trips a request where it counts one.
fn at_most(proxy: &HookProxy, what: &str, goal: usize, command: impl FnOnce() -> Output) {
    proxy.take_requests();
    proxy.take_connections();
    let started = Instant::now();
    let out = command();
    let took = started.elapsed();
    let requests = proxy.take_requests();
    let connections = proxy.take_connections();
    assert!(
        out.status.success(),
        "{what} failed: {}\nrequests:\n{}",
        text(&out),
        requests.join("\n")
    );
    println!(
        "ROUND TRIPS | {what} | {} | {:.2} s | rtt {} ms | {connections} connection(s)",
        requests.len(),
        took.as_secs_f64(),
        rtt().as_millis()
    );
    assert!(
        requests.len() <= goal,
        "{what} made {} requests, the goal is at most {goal}:\n{}",
        requests.len(),
        requests.join("\n")
    );
    assert!(
        connections <= 1,
        "{what} opened {connections} connections for its {} requests, the goal is one:\n{}",
        requests.len(),
        requests.join("\n")
    );
}

const SCHEMA: &str = "CREATE TABLE items(id INTEGER PRIMARY KEY, name TEXT NOT NULL, qty INTEGER, \
                      note TEXT); CREATE INDEX items_name ON items(name)";

/// A sqld holding `rows` items and a working copy of it cloned through a far proxy, then
/// pulled once so that the working copy reads the log from where it stands.
fn cloned(rows: i64) -> (Sqld, HookProxy, TempDir) {
    let sqld = Sqld::start();
    sqld.exec(SCHEMA);
    if rows > 0 {
        sqld.exec(&format!(
            "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < {rows}) \
             INSERT INTO items SELECT i, 'item ' || i, i % 7, NULL FROM n"
        ));
    }
    let proxy = HookProxy::far(&sqld.url, rtt());
    let dir = tempdir();
    ok(&sqld, dir.path(), &["init", "--url", &proxy.url]);
    ok(&sqld, dir.path(), &["pull"]);
    (sqld, proxy, dir)
}

/// `tursync ARGS` in `dir`, through `proxy`, which must make at most `goal` requests.
fn sqld_at_most(
    sqld: &Sqld,
    proxy: &HookProxy,
    dir: &Path,
    what: &str,
    goal: usize,
    args: &'static [&'static str],
) {
    at_most(proxy, what, goal, tursync_ok(sqld, dir, args));
}

/// The working copy's items are the remote's.
fn assert_items(sqld: &Sqld, dir: &Path) {
    let wc = dir.join("working_copy.db");
    assert_table_eq(sqld, &wc, "SELECT * FROM items ORDER BY id");
}

/// `tursync ARGS` with nothing new on either side makes at most `goal` requests, and so it
/// does right after our own push: nobody else wrote, and the push knows the remote is the base.
fn idle_before_and_after_our_push(args: &'static [&'static str], what: &str, goal: usize) {
    let (sqld, proxy, dir) = cloned(100);
    let what_after = format!("{what} after our push (sqld)");
    sqld_at_most(
        &sqld,
        &proxy,
        dir.path(),
        &format!("{what} (sqld)"),
        goal,
        args,
    );
    edit(dir.path(), "UPDATE items SET qty = 99 WHERE id = 7");
    ok(&sqld, dir.path(), &["push"]);
    sqld_at_most(&sqld, &proxy, dir.path(), &what_after, goal, args);
}

fn tursync_ok(sqld: &Sqld, dir: &Path, args: &'static [&'static str]) -> impl FnOnce() -> Output {
    let (token, dir) = (sqld.rw_token.clone(), dir.to_path_buf());
    move || {
        tursync(&dir)
            .args(args)
            .env("TURSO_AUTH_TOKEN", token)
            .output()
            .unwrap()
    }
}

/// Measured before: 6 requests (0.64 s at 100 ms) for one row.
#[test]
fn push_of_one_row_takes_at_most_two_requests_on_sqld() {
    let (sqld, proxy, dir) = cloned(100);
    edit(dir.path(), "UPDATE items SET qty = 99 WHERE id = 7");
    sqld_at_most(
        &sqld,
        &proxy,
        dir.path(),
        "push, 1 row (sqld)",
        2,
        &["push"],
    );
    assert_items(&sqld, dir.path());
    assert_nothing_pending(dir.path());
}

/// Measured before: 6 requests for 2,000 rows.
#[test]
fn push_of_ten_thousand_row_changes_takes_at_most_two_requests_on_sqld() {
    let (sqld, proxy, dir) = cloned(6000);
    edit(
        dir.path(),
        "UPDATE items SET qty = qty + 100, note = 'changed' WHERE id <= 3000; \
         DELETE FROM items WHERE id > 5000; \
         WITH RECURSIVE n(i) AS (SELECT 10001 UNION ALL SELECT i + 1 FROM n WHERE i < 16000) \
         INSERT INTO items SELECT i, 'new ' || i, 1, 'added' FROM n",
    );
    sqld_at_most(
        &sqld,
        &proxy,
        dir.path(),
        "push, 10,000 row changes (sqld)",
        2,
        &["push"],
    );
    assert_items(&sqld, dir.path());
    assert_nothing_pending(dir.path());
}

/// Measured before: 2 requests.
/// `init` of a small database through the log: what the server speaks (`/pull-updates`, then
/// the log's `Hello`, which the clone reads on from), and the log's one batch. Measured before:
/// 5 requests (a `SELECT 1` for the replication index first, and a second `Hello`). The
/// replication index recorded is the one `Hello` carries, read before the frames as that
/// `SELECT`'s was.
#[test]
fn init_through_the_log_takes_at_most_three_requests_on_sqld() {
    let sqld = Sqld::start();
    sqld.exec(SCHEMA);
    sqld.exec("INSERT INTO items VALUES (1, 'one', 1, NULL), (2, 'two', 2, NULL)");
    let proxy = HookProxy::far(&sqld.url, rtt());
    let dir = tempdir();
    let (token, url) = (sqld.rw_token.clone(), proxy.url.clone());
    at_most(&proxy, "init (sqld)", 3, || {
        tursync(dir.path())
            .args(["init", "--url", &url])
            .env("TURSO_AUTH_TOKEN", token)
            .output()
            .unwrap()
    });
    assert_items(&sqld, dir.path());
    // The index recorded is the remote's: a pull finds nothing new in one request.
    sqld_at_most(
        &sqld,
        &proxy,
        dir.path(),
        "pull after init (sqld)",
        1,
        &["pull"],
    );
}

#[test]
fn pull_with_nothing_new_takes_one_request_on_sqld() {
    idle_before_and_after_our_push(&["pull"], "pull, nothing new", 1);
}

/// A teammate's write that lands between a push's reads and its batch is no part of what the
/// push knows of the remote: the next pull brings it in, however few requests it makes.
#[test]
fn a_write_between_a_push_s_reads_and_its_batch_is_pulled_after_it() {
    let sqld = Sqld::start();
    sqld.exec(SCHEMA);
    sqld.exec("INSERT INTO items VALUES (1, 'one', 1, NULL), (2, 'two', 2, NULL)");
    let (url, token) = (sqld.url.clone(), sqld.rw_token.clone());
    let fired = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let seen = fired.clone();
    let proxy = HookProxy::with_latency(&sqld.url, rtt(), move |_, body| {
        let body = String::from_utf8_lossy(body);
        if body.contains("\"type\":\"batch\"")
            && !seen.swap(true, std::sync::atomic::Ordering::SeqCst)
        {
            exec_at(
                &url,
                &token,
                "UPDATE items SET note = 'theirs' WHERE id = 2",
            );
        }
        Verdict::Forward
    });
    let dir = tempdir();
    ok(&sqld, dir.path(), &["init", "--url", &proxy.url]);
    ok(&sqld, dir.path(), &["pull"]);
    edit(dir.path(), "UPDATE items SET qty = 10 WHERE id = 1");
    ok(&sqld, dir.path(), &["push"]);
    assert!(
        fired.load(std::sync::atomic::Ordering::SeqCst),
        "no batch was sent"
    );
    ok(&sqld, dir.path(), &["pull"]);
    assert_items(&sqld, dir.path());
    let wc = local_query(
        &dir.path().join("working_copy.db"),
        "SELECT note FROM items WHERE id = 2",
    );
    assert_eq!(wc, vec![vec![Cell::text("theirs")]]);
    assert_nothing_pending(dir.path());
}

/// A push larger than a request goes in parts of a few MB on sqld, in one transaction.
#[test]
fn a_push_of_many_megabytes_adds_a_request_per_few_megabytes_on_sqld() {
    let (sqld, proxy, dir) = cloned(10);
    // 30,000 rows of about 600 bytes: some 18 MB of statements.
    edit(
        dir.path(),
        "WITH RECURSIVE n(i) AS (SELECT 100 UNION ALL SELECT i + 1 FROM n WHERE i < 30099) \
         INSERT INTO items SELECT i, 'new ' || i, 1, hex(randomblob(300)) FROM n",
    );
    at_most(
        &proxy,
        "push, 30,000 rows, 18 MB (sqld)",
        // One request of reads, then the batch in parts of 3 to 4 MB.
        1 + 18 / 3 + 1,
        tursync_ok(&sqld, dir.path(), &["push"]),
    );
    // Read back in parts: the whole table is over sqld's 10 MB answer.
    for lo in (0..31_000).step_by(5000) {
        assert_table_eq(
            &sqld,
            &dir.path().join("working_copy.db"),
            &format!(
                "SELECT * FROM items WHERE id >= {lo} AND id < {} ORDER BY id",
                lo + 5000
            ),
        );
    }
    assert_nothing_pending(dir.path());
}

/// Measured before: 5 requests.
#[test]
fn pull_of_a_change_takes_at_most_three_requests_on_sqld() {
    let (sqld, proxy, dir) = cloned(100);
    sqld.exec("UPDATE items SET qty = 1000 WHERE id = 42");
    sqld_at_most(
        &sqld,
        &proxy,
        dir.path(),
        "pull, one changed row (sqld)",
        3,
        &["pull"],
    );
    assert_items(&sqld, dir.path());
    // After our own push, the next pull reads it back too.
    edit(dir.path(), "UPDATE items SET qty = 5 WHERE id = 43");
    ok(&sqld, dir.path(), &["push"]);
    sqld.exec("UPDATE items SET qty = 1001 WHERE id = 44");
    sqld_at_most(
        &sqld,
        &proxy,
        dir.path(),
        "pull, one changed row after a push (sqld)",
        3,
        &["pull"],
    );
    assert_items(&sqld, dir.path());
}

/// Measured before: 2 requests.
#[test]
fn sync_with_nothing_on_either_side_takes_at_most_two_requests_on_sqld() {
    idle_before_and_after_our_push(&["sync"], "sync, nothing either side", 2);
}

/// Measured before: 1 request.
#[test]
fn status_takes_at_most_two_requests_on_sqld() {
    let (sqld, proxy, dir) = cloned(100);
    sqld_at_most(&sqld, &proxy, dir.path(), "status (sqld)", 2, &["status"]);
    sqld_at_most(
        &sqld,
        &proxy,
        dir.path(),
        "status --json (sqld)",
        2,
        &["status", "--json"],
    );
}

/// A Turso Sync server seeded with `rows` items, and a working copy of it through a far proxy.
fn turso_cloned(rows: i64) -> (TursoSync, HookProxy, TempDir) {
    let server = TursoSync::start();
    let mut seed: Vec<String> = SCHEMA.split("; ").map(str::to_owned).collect();
    for start in (1..=rows).step_by(500) {
        let values: Vec<String> = (start..(start + 500).min(rows + 1))
            .map(|i| format!("({i}, 'item {i}', {}, NULL)", i % 7))
            .collect();
        seed.push(format!("INSERT INTO items VALUES {}", values.join(",")));
    }
    server.exec(&seed.iter().map(String::as_str).collect::<Vec<_>>());
    let proxy = HookProxy::far(&server.url, rtt());
    let dir = tempdir();
    run_ok(tursync(dir.path()).args(["init", "--url", &proxy.url]));
    (server, proxy, dir)
}

fn turso_ok(dir: &Path, args: &'static [&'static str]) -> impl FnOnce() -> Output {
    let dir = dir.to_path_buf();
    move || tursync(&dir).args(args).output().unwrap()
}

#[test]
fn push_takes_at_most_two_requests_on_turso_sync() {
    let (server, proxy, dir) = turso_cloned(100);
    edit(dir.path(), "UPDATE items SET qty = 99 WHERE id = 7");
    at_most(
        &proxy,
        "push, 1 row (Turso Sync)",
        2,
        turso_ok(dir.path(), &["push"]),
    );
    edit(
        dir.path(),
        "UPDATE items SET qty = qty + 100 WHERE id <= 50; DELETE FROM items WHERE id > 90; \
         INSERT INTO items VALUES (1000, 'new', 1, 'added')",
    );
    at_most(
        &proxy,
        "push, 61 row changes (Turso Sync)",
        2,
        turso_ok(dir.path(), &["push"]),
    );
    server.assert_table_eq(
        &dir.path().join("working_copy.db"),
        "SELECT * FROM items ORDER BY id",
    );
    assert_nothing_pending(dir.path());
}

#[test]
fn status_takes_at_most_two_requests_on_turso_sync() {
    let (_server, proxy, dir) = turso_cloned(100);
    at_most(
        &proxy,
        "status (Turso Sync)",
        2,
        turso_ok(dir.path(), &["status"]),
    );
}

/// `tursync ARGS` on a Turso Sync server with nothing new on either side makes at most `goal`
/// requests; right after our push, at most `after_push`. Our push wrote pages the mirror does
/// not hold yet, so the pull after it reads them as it would anyone's change: the pages and the
/// witness of the mirror's last frames (measured before: 3 requests, with a spot check that
/// cannot conclude on tursodb).
/// `what` names the two measures: idle, then right after our push.
fn turso_idle_before_and_after_our_push(
    args: &'static [&'static str],
    what: [&str; 2],
    goal: usize,
    after_push: usize,
) -> (TursoSync, HookProxy, TempDir) {
    let (server, proxy, dir) = turso_cloned(100);
    at_most(&proxy, what[0], goal, turso_ok(dir.path(), args));
    edit(dir.path(), "UPDATE items SET qty = 99 WHERE id = 7");
    run_ok(tursync(dir.path()).arg("push"));
    at_most(&proxy, what[1], after_push, turso_ok(dir.path(), args));
    (server, proxy, dir)
}

#[test]
fn pull_with_nothing_new_takes_one_request_on_turso_sync() {
    let (_server, proxy, dir) = turso_idle_before_and_after_our_push(
        &["pull"],
        [
            "pull, nothing new (Turso Sync)",
            "pull of our own push's pages (Turso Sync)",
        ],
        1,
        2,
    );
    at_most(
        &proxy,
        "pull, nothing new after pulling our push (Turso Sync)",
        1,
        turso_ok(dir.path(), &["pull"]),
    );
    assert_nothing_pending(dir.path());
}

/// The pages and the witness of the mirror's last frames, nothing more: the goal is 3,
/// and a spot check, which cannot conclude on tursodb (its answers carry no replication
/// index), made it 3 before.
#[test]
fn pull_of_a_change_takes_at_most_two_requests_on_turso_sync() {
    let (server, proxy, dir) = turso_cloned(100);
    run_ok(tursync(dir.path()).arg("pull"));
    server.exec(&["UPDATE items SET qty = 1000 WHERE id = 42"]);
    at_most(
        &proxy,
        "pull, one changed row (Turso Sync)",
        2,
        turso_ok(dir.path(), &["pull"]),
    );
    let wc = dir.path().join("working_copy.db");
    server.assert_table_eq(&wc, "SELECT * FROM items ORDER BY id");
    edit(dir.path(), "UPDATE items SET qty = 5 WHERE id = 43");
    run_ok(tursync(dir.path()).arg("push"));
    server.exec(&["UPDATE items SET qty = 1001 WHERE id = 44"]);
    at_most(
        &proxy,
        "pull, one changed row after a push (Turso Sync)",
        2,
        turso_ok(dir.path(), &["pull"]),
    );
    server.assert_table_eq(&wc, "SELECT * FROM items ORDER BY id");
    assert_nothing_pending(dir.path());
}

#[test]
fn sync_with_nothing_on_either_side_takes_at_most_two_requests_on_turso_sync() {
    let (_server, _proxy, dir) = turso_idle_before_and_after_our_push(
        &["sync"],
        [
            "sync, nothing either side (Turso Sync)",
            "sync, nothing either side after our push (Turso Sync)",
        ],
        2,
        2,
    );
    assert_nothing_pending(dir.path());
}
