//! Every command against a real Turso Sync server (`tursodb DB --sync-server`), whose
//! `/v2/pipeline` keeps no streams: no baton, no `close`.

use std::path::Path;
use std::process::Output;

use crate::common::*;

const SEED: &[&str] = &[
    "CREATE TABLE items(id INTEGER PRIMARY KEY, name TEXT, price REAL, data BLOB)",
    "CREATE TABLE notes(body TEXT, n INTEGER)",
    "CREATE INDEX items_name ON items(name)",
    "INSERT INTO items VALUES (1, 'apple', 1.5, x'00ff'), (2, 'pear', -0.25, NULL), (7, 'fig', 5e-324, x'')",
    "INSERT INTO items VALUES (9223372036854775807, 'it''s \"quoted\"', 1e300, x'0102')",
    "INSERT INTO notes(rowid, body, n) VALUES (10, 'ten', -9223372036854775808), (20, 'twenty', 0), (35, NULL, 3)",
];

const TABLES: &[&str] = &[
    "SELECT id, name, price, data FROM items ORDER BY id",
    "SELECT rowid, body, n FROM notes ORDER BY rowid",
    "SELECT type, name, tbl_name, sql FROM sqlite_schema WHERE name NOT LIKE 'sqlite%' \
     AND tbl_name NOT IN ('turso_cdc', 'turso_cdc_version', 'turso_sync_last_change_id') \
     AND tbl_name NOT LIKE '!_!_turso!_internal%' ESCAPE '!' ORDER BY type, name",
];

fn seeded() -> TursoSync {
    let server = TursoSync::start();
    server.exec(SEED);
    server
}

fn run(dir: &Path, args: &[&str]) -> Output {
    tursync(dir).args(args).output().unwrap()
}

fn assert_same(server: &TursoSync, local: &Path) {
    for q in TABLES {
        server.assert_table_eq(local, q);
    }
}

#[test]
fn init_clones_exactly() {
    let server = seeded();
    let dir = tempdir();
    init_url(&server.url, dir.path());
    assert_same(&server, &wc(dir.path()));
    let status = run_ok(tursync(dir.path()).arg("status"));
    assert!(
        text(&status).contains("nothing to push"),
        "{}",
        text(&status)
    );
}

#[test]
fn push_applies_and_a_conflicting_push_changes_nothing() {
    let server = seeded();
    let (a, b) = (tempdir(), tempdir());
    init_url(&server.url, a.path());
    init_url(&server.url, b.path());

    edit(
        a.path(),
        "UPDATE items SET price = 2.75 WHERE id = 1; INSERT INTO items VALUES (3, 'plum', 0.5, x'aa'); \
         DELETE FROM notes WHERE rowid = 20; INSERT INTO notes(rowid, body, n) VALUES (40, 'forty', 4)",
    );
    let out = run(a.path(), &["push"]);
    assert!(out.status.success(), "{}", text(&out));
    assert_same(&server, &wc(a.path()));
    let diff = run_ok(tursync(a.path()).arg("diff"));
    assert!(
        text(&diff).ends_with("nothing to push\n"),
        "{}",
        text(&diff)
    );

    // B changed the row A changed: its push is refused whole, its other change included.
    edit(
        b.path(),
        "UPDATE items SET price = 9.0 WHERE id = 1; UPDATE notes SET body = 'TEN' WHERE rowid = 10",
    );
    let before: Vec<_> = TABLES.iter().map(|q| server.query(q)).collect();
    let out = run(b.path(), &["push"]);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    assert!(text(&out).contains("items"), "{}", text(&out));
    let after: Vec<_> = TABLES.iter().map(|q| server.query(q)).collect();
    assert_eq!(before, after, "a refused push changed the remote");
    assert_eq!(
        local_query(&wc(b.path()), "SELECT price FROM items WHERE id = 1"),
        vec![vec![Cell::real(9.0)]]
    );
}

#[test]
fn pull_merges_and_sync_theirs_settles_a_conflict() {
    let server = seeded();
    let (a, b) = (tempdir(), tempdir());
    init_url(&server.url, a.path());
    init_url(&server.url, b.path());

    edit(a.path(), "UPDATE items SET name = 'APPLE' WHERE id = 1; INSERT INTO items VALUES (4, 'kiwi', 1.0, NULL)");
    run_ok(tursync(a.path()).arg("push"));
    // B's own change is elsewhere: the pull merges both.
    edit(b.path(), "UPDATE notes SET n = 99 WHERE rowid = 35");
    let out = run(b.path(), &["pull"]);
    assert!(out.status.success(), "{}", text(&out));
    let wb = wc(b.path());
    assert_eq!(
        local_query(
            &wb,
            "SELECT id, name FROM items WHERE id IN (1, 4) ORDER BY id"
        ),
        vec![
            vec![Cell::Integer(1), Cell::text("APPLE")],
            vec![Cell::Integer(4), Cell::text("kiwi")]
        ]
    );
    assert_eq!(
        local_query(&wb, "SELECT n FROM notes WHERE rowid = 35"),
        vec![vec![Cell::Integer(99)]]
    );
    run_ok(tursync(b.path()).arg("push"));
    assert_same(&server, &wb);

    // Both change one cell: a conflict for sync, settled by --theirs.
    run_ok(tursync(a.path()).arg("pull"));
    edit(a.path(), "UPDATE items SET price = 100.0 WHERE id = 2");
    run_ok(tursync(a.path()).arg("push"));
    edit(
        b.path(),
        "UPDATE items SET price = 200.0 WHERE id = 2; UPDATE items SET name = 'FIG' WHERE id = 7",
    );
    let out = run(b.path(), &["sync"]);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    let out = run(b.path(), &["sync", "--theirs"]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(
        local_query(
            &wb,
            "SELECT price, name FROM items WHERE id IN (2, 7) ORDER BY id"
        ),
        vec![
            vec![Cell::real(100.0), Cell::text("pear")],
            vec![Cell::real(5e-324), Cell::text("FIG")]
        ]
    );
    assert_same(&server, &wb);
}

/// A teammate's write lands between the push's reads and its one-batch transaction: the
/// transaction's guards fail, nothing of it is committed, and the push, run again from its
/// reads, finds the conflict.
#[test]
fn a_write_between_reads_and_commit_fails_the_whole_batch() {
    let server = seeded();
    let url = server.url.clone();
    let raced = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flag = raced.clone();
    let proxy = HookProxy::start(&server.url, move |_, body| {
        let body = String::from_utf8_lossy(body);
        if body.contains("\"COMMIT\"") && !flag.swap(true, std::sync::atomic::Ordering::SeqCst) {
            turso_exec_at(&url, &["UPDATE items SET price = 42.0 WHERE id = 1"]);
        }
        Verdict::Forward
    });
    let dir = tempdir();
    run_ok(tursync(dir.path()).args(["init", "--url", &proxy.url]));
    edit(
        dir.path(),
        "UPDATE items SET price = 9.0 WHERE id = 1; UPDATE notes SET body = 'TEN' WHERE rowid = 10",
    );
    let out = run(dir.path(), &["push"]);
    assert!(
        raced.load(std::sync::atomic::Ordering::SeqCst),
        "no commit batch was seen"
    );
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    assert!(
        text(&out).contains("the remote changed while a transaction was being prepared"),
        "{}",
        text(&out)
    );
    assert_eq!(
        server.query("SELECT price FROM items WHERE id = 1"),
        vec![vec![Cell::real(42.0)]]
    );
    assert_eq!(
        server.query("SELECT body FROM notes WHERE rowid = 10"),
        vec![vec![Cell::text("ten")]],
        "half of a refused transaction reached the remote"
    );
}

/// The tables Turso Sync's own clients keep in the database are theirs: never cloned, diffed,
/// pushed or shown.
#[test]
fn turso_sync_client_tables_are_left_alone() {
    let server = seeded();
    server.exec(&[
        "CREATE TABLE turso_cdc(change_id INTEGER PRIMARY KEY AUTOINCREMENT, change_time INTEGER, change_type INTEGER, table_name TEXT, id, before BLOB, after BLOB, updates BLOB)",
        "CREATE TABLE turso_cdc_version(table_name TEXT PRIMARY KEY, version TEXT NOT NULL)",
        "CREATE TABLE turso_sync_last_change_id(client_id TEXT PRIMARY KEY, pull_gen INTEGER, change_id INTEGER)",
        "INSERT INTO turso_cdc_version VALUES ('turso_cdc', 'v1')",
        "INSERT INTO turso_sync_last_change_id VALUES ('some-client', 1, 7)",
    ]);
    let dir = tempdir();
    init_url(&server.url, dir.path());
    let tables = local_query(
        &wc(dir.path()),
        "SELECT name FROM sqlite_schema WHERE type = 'table' AND name NOT LIKE 'sqlite%' ORDER BY name",
    );
    assert_eq!(
        tables,
        vec![vec![Cell::text("items")], vec![Cell::text("notes")]]
    );
    server.exec(&["INSERT INTO turso_sync_last_change_id VALUES ('other-client', 2, 9)"]);
    edit(dir.path(), "UPDATE items SET name = 'x' WHERE id = 2");
    let status = run_ok(tursync(dir.path()).arg("status"));
    assert!(!text(&status).contains("turso_"), "{}", text(&status));
    run_ok(tursync(dir.path()).arg("sync"));
    assert_same(&server, &wc(dir.path()));
    assert_eq!(
        server.query("SELECT count(*) FROM turso_sync_last_change_id"),
        vec![vec![Cell::Integer(2)]]
    );
}

/// Pages pulled from `/pull-updates` written into a file at their offsets, with the header's
/// size, and read back as a database (bytes 18-19 say rollback journal, as in a copy of a WAL
/// database).
fn apply_pages(
    file: &Path,
    sync: &tursync::remote::turso_sync::TursoSync<'_>,
    since: Option<&str>,
) -> (tursync::remote::turso_sync::PullHeader, Vec<u64>) {
    use std::io::{Seek, SeekFrom, Write};
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(false)
        .open(file)
        .unwrap();
    let mut pages = Vec::new();
    let mut page_size = 0u64;
    let header = sync
        .pull(since, None, &mut |id, page| {
            page_size = page.len() as u64;
            pages.push(id);
            f.seek(SeekFrom::Start(id * page.len() as u64))?;
            f.write_all(page)?;
            if id == 0 {
                f.seek(SeekFrom::Start(18))?;
                f.write_all(&[1, 1])?;
            }
            Ok(())
        })
        .unwrap();
    if page_size > 0 {
        f.set_len(header.db_size * page_size).unwrap();
    }
    f.sync_all().unwrap();
    (header, pages)
}

#[test]
fn pull_updates_bootstrap_and_incremental_pages() {
    use tursync::remote::turso_sync::{ApplyMode, TursoSync as Pull};
    let server = seeded();
    let mut rows = vec!["CREATE TABLE big(id INTEGER PRIMARY KEY, body TEXT)".to_owned()];
    for i in 0..40 {
        rows.push(format!(
            "INSERT INTO big(id, body) SELECT {i} * 10 + value, printf('%0200d', {i} * 10 + value) FROM generate_series(0, 9)"
        ));
    }
    let stmts: Vec<&str> = rows.iter().map(String::as_str).collect();
    server.exec(&stmts);
    assert_eq!(
        server.query("SELECT count(*) FROM big"),
        vec![vec![Cell::Integer(400)]]
    );

    let (endpoint, _) = tursync::remote::Endpoint::parse(&server.url).unwrap();
    let remote = tursync::remote::Remote::new(endpoint, None);
    let sync = Pull::new(&remote);
    let dir = tempdir();
    let file = dir.path().join("pulled.db");

    let (boot, pages) = apply_pages(&file, &sync, None);
    assert_eq!(boot.apply_mode, ApplyMode::Incremental);
    assert!(boot.db_size > 20, "{boot:?}");
    let mut distinct = pages.clone();
    distinct.sort_unstable();
    distinct.dedup();
    assert_eq!(
        distinct,
        (0..boot.db_size).collect::<Vec<_>>(),
        "bootstrap sends every page once"
    );
    assert_same(&server, &file);
    server.assert_table_eq(&file, "SELECT id, body FROM big ORDER BY id");

    // Nothing changed: no page.
    let (same, pages) = apply_pages(&file, &sync, Some(&boot.revision));
    assert_eq!(
        (same.revision.as_str(), pages.len()),
        (boot.revision.as_str(), 0)
    );

    server.exec(&["UPDATE big SET body = 'changed' WHERE id = 123"]);
    let (next, pages) = apply_pages(&file, &sync, Some(&boot.revision));
    assert_ne!(next.revision, boot.revision);
    eprintln!(
        "bootstrap: {} pages at revision {}; after one UPDATE: pages {pages:?} of {} at revision {}",
        boot.db_size, boot.revision, next.db_size, next.revision
    );
    assert!(
        !pages.is_empty() && pages.len() <= 3,
        "one row changed, but {} of {} pages came: {pages:?}",
        pages.len(),
        next.db_size
    );
    server.assert_table_eq(&file, "SELECT id, body FROM big ORDER BY id");
    assert_same(&server, &file);
    let check = local_query(&file, "PRAGMA integrity_check");
    assert_eq!(check, vec![vec![Cell::text("ok")]]);

    // The probe asks for page 0 only and says the server serves the page pull.
    let probed = sync.probe().unwrap();
    assert_eq!(probed.revision, next.revision);
}

fn status_json(dir: &Path, env: &[(&str, &str)]) -> serde_json::Value {
    let out = run_ok(
        tursync(dir)
            .args(["status", "--json"])
            .envs(env.iter().copied()),
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// One probe says what a remote speaks: Turso Sync, sqld's log, or SQL only; it is recorded
/// at init, shown by status, overridden by TURSYNC_PROTOCOL, and probed again when the remote
/// answers otherwise than recorded.
#[test]
fn status_says_what_the_remote_speaks() {
    let server = seeded();
    let t = tempdir();
    let out = run_ok(tursync(t.path()).args(["init", "--url", &server.url]));
    assert!(
        text(&out).contains("protocol: turso-sync"),
        "{}",
        text(&out)
    );
    let s = status_json(t.path(), &[]);
    assert_eq!(s["protocol"]["name"], "turso-sync", "{s}");
    let shown = run_ok(tursync(t.path()).arg("status"));
    assert!(
        text(&shown).contains("protocol       Turso Sync"),
        "{}",
        text(&shown)
    );

    let sqld = Sqld::start();
    sqld.exec("CREATE TABLE t(a)");
    let token = [("TURSO_AUTH_TOKEN", sqld.rw_token.as_str())];
    let l = tempdir();
    run_ok(
        tursync(l.path())
            .args(["init", "--url", &sqld.url])
            .envs(token),
    );
    let s = status_json(l.path(), &token);
    assert_eq!(s["protocol"]["name"], "log", "{s}");
    assert_eq!(s["protocol"]["forced"], false, "{s}");

    let forced = status_json(l.path(), &[token[0], ("TURSYNC_PROTOCOL", "sql")]);
    assert_eq!(forced["protocol"]["name"], "sql", "{forced}");
    assert_eq!(forced["protocol"]["forced"], true, "{forced}");
    let bad = status_json(l.path(), &[token[0], ("TURSYNC_PROTOCOL", "grpc")]);
    assert!(
        bad["protocol"]["reason"]
            .as_str()
            .unwrap_or("")
            .contains("use log, turso-sync or sql"),
        "{bad}"
    );

    // A record the server contradicts (it keeps streams) is probed again.
    std::fs::write(
        l.path().join(".tursync/protocol.json"),
        r#"{"protocol":"turso-sync","reason":"written by the test"}"#,
    )
    .unwrap();
    let s = status_json(l.path(), &token);
    assert_eq!(s["protocol"]["name"], "log", "{s}");
    assert!(
        s["protocol"]["probed_again_because"]
            .as_str()
            .unwrap_or("")
            .contains("stream"),
        "{s}"
    );

    // A server without the log speaks SQL only.
    let blocker = LogBlocker::start(&sqld.url, LogBlocker::NOT_FOUND);
    let q = tempdir();
    run_ok(
        tursync(q.path())
            .args(["init", "--url", &blocker.url])
            .envs(token),
    );
    let s = status_json(q.path(), &token);
    assert_eq!(s["protocol"]["name"], "sql", "{s}");
}

/// Foreign keys: tursodb has no `pragma_foreign_key_check`, so the orphan checks are written
/// out by hand there. A push of parents and children goes through; a push that would leave a
/// teammate's new child without its parent is refused whole (exit 3).
#[test]
fn foreign_keys_push_and_a_push_that_would_orphan_is_refused() {
    let server = TursoSync::start();
    server.exec(&[
        "CREATE TABLE parent(id INTEGER PRIMARY KEY, name TEXT)",
        "CREATE TABLE child(id INTEGER PRIMARY KEY, parent_id INTEGER REFERENCES parent(id))",
        "INSERT INTO parent VALUES (1, 'a'), (2, 'b')",
        "INSERT INTO child VALUES (10, 1)",
    ]);
    let (a, b) = (tempdir(), tempdir());
    init_url(&server.url, a.path());
    init_url(&server.url, b.path());
    edit(
        a.path(),
        "INSERT INTO parent VALUES (3, 'c'); INSERT INTO child VALUES (11, 3), (12, 2)",
    );
    let out = run(a.path(), &["push"]);
    assert!(out.status.success(), "{}", text(&out));
    server.assert_table_eq(&wc(a.path()), "SELECT id, parent_id FROM child ORDER BY id");

    // B removes parent 2, which A's new child 12 now points at.
    edit(
        b.path(),
        "DELETE FROM parent WHERE id = 2; UPDATE parent SET name = 'A' WHERE id = 1",
    );
    let out = run(b.path(), &["push"]);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    assert!(text(&out).contains("child"), "{}", text(&out));
    assert_eq!(
        server.query("SELECT id, name FROM parent ORDER BY id"),
        vec![
            vec![Cell::Integer(1), Cell::text("a")],
            vec![Cell::Integer(2), Cell::text("b")],
            vec![Cell::Integer(3), Cell::text("c")],
        ],
        "a refused push changed the remote"
    );
}

/// A row whose UNIQUE value a teammate took meanwhile: tursodb words the failure its own way
/// (`Runtime error: UNIQUE constraint failed: parent.name (19)`); it is still a `unique`
/// conflict naming the row, exit 3, with nothing changed.
#[test]
fn a_unique_value_taken_meanwhile_is_a_conflict() {
    let server = TursoSync::start();
    server.exec(&[
        "CREATE TABLE parent(id INTEGER PRIMARY KEY, name TEXT UNIQUE)",
        "INSERT INTO parent VALUES (1, 'a'), (2, 'b')",
    ]);
    let (a, b) = (tempdir(), tempdir());
    init_url(&server.url, a.path());
    init_url(&server.url, b.path());
    edit(a.path(), "UPDATE parent SET name = 'x' WHERE id = 2");
    run_ok(tursync(a.path()).arg("push"));
    edit(
        b.path(),
        "INSERT INTO parent VALUES (5, 'x'); UPDATE parent SET name = 'A' WHERE id = 1",
    );
    let out = run(b.path(), &["push"]);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    assert!(text(&out).contains("UNIQUE"), "{}", text(&out));
    assert_eq!(
        server.query("SELECT id, name FROM parent ORDER BY id"),
        vec![
            vec![Cell::Integer(1), Cell::text("a")],
            vec![Cell::Integer(2), Cell::text("x")],
        ]
    );
}

/// tursodb 0.7.0, after a `pragma_*` function ran on its connection, keeps later autocommit
/// writes in a transaction the next ROLLBACK undoes. A push to tables with foreign keys runs a
/// trial batch that ends in ROLLBACK (its orphan check after the writes): a teammate's row
/// written just before must survive it.
#[test]
fn a_teammates_write_survives_a_push_that_checks_orphans() {
    let server = TursoSync::start();
    server.exec(&PARENT_AND_CHILD);
    let dir = tempdir();
    init_url(&server.url, dir.path());
    // A teammate's write, autocommit, in its own request (after init's pragma reads).
    server.query("INSERT INTO parent VALUES (78, 'teammate') RETURNING id");
    edit(dir.path(), "INSERT INTO child VALUES (10, 1)");
    let out = run(dir.path(), &["push"]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(
        server.query("SELECT id, name FROM parent ORDER BY id"),
        vec![
            vec![Cell::Integer(1), Cell::text("a")],
            vec![Cell::Integer(78), Cell::text("teammate")],
        ],
        "the teammate's row was lost"
    );
    assert_eq!(
        server.query("SELECT id, parent_id FROM child"),
        vec![vec![Cell::Integer(10), Cell::Integer(1)]]
    );
}

/// A pull with nothing new on Turso Sync says so (`downloaded: false`): `sync` takes a pull
/// that downloaded to mean the remote moved, so that a push refused meanwhile may have lost a
/// race and is sent again. A `sync` whose push is refused with nothing new on the remote (an
/// orphan it would add) sends it once, as on sqld, not once per attempt.
#[test]
fn a_pull_with_nothing_new_downloads_nothing_and_a_refused_push_is_sent_once() {
    let server = TursoSync::start();
    server.exec(&PARENT_AND_CHILD);
    let a = tempdir();
    init_url(&server.url, a.path());
    let out = run(a.path(), &["pull", "--json"]);
    assert!(out.status.success(), "{}", text(&out));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["downloaded"], false, "{report}");

    edit(a.path(), "INSERT INTO child VALUES (1, 99)");
    let proxy = HookProxy::start(&server.url, |_, _| Verdict::Forward);
    let out = run(a.path(), &["sync", "--url", &proxy.url]);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    let requests = proxy.requests();
    let pulls = requests
        .iter()
        .filter(|r| r.contains("/pull-updates"))
        .count();
    assert!(
        pulls <= 2,
        "{pulls} pulls for a push refused with nothing new: {requests:#?}"
    );
}
