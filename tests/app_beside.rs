//! An app in its own OS process commits every few milliseconds while tursync diffs, pushes,
//! pulls and syncs beside it, and is killed mid-command: the working copy and the base stay
//! intact, no commit the app was told succeeded is lost, and everything reaches the remote.

use std::collections::BTreeSet;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::common::*;

const SEED_ROWS: u64 = 60_000;
/// How long tursync's commands run beside the app, per journal mode.
const BUSY_SECS: u64 = 12;

/// A teammate's change on the remote: an update of a seed row (the app never touches those)
/// and a new row at a negative id, which the app's `max(id) + 1` never takes.
fn remote_change(sqld: &Sqld, rng: &mut Rng, round: u64) {
    sqld.exec(&format!(
        "UPDATE items SET n = n + 1 WHERE id = {}; INSERT INTO items(id, tag, n) VALUES ({}, 'remote-{round}', {round})",
        1 + rng.below(SEED_ROWS),
        -1 - round as i64
    ));
}

/// Every tag an app printed (a commit it was told succeeded) is among `rows` (one tag each).
fn assert_none_lost(tags: &[String], rows: Vec<Vec<Cell>>, where_: &str) {
    let held: BTreeSet<String> = rows
        .into_iter()
        .map(|r| match &r[0] {
            Cell::Text(t) => t.clone(),
            other => panic!("tag {other:?}"),
        })
        .collect();
    let lost: Vec<&String> = tags.iter().filter(|t| !held.contains(*t)).collect();
    assert!(
        lost.is_empty(),
        "{} of the {} commits the app was told succeeded {where_}, e.g. {:?}",
        lost.len(),
        tags.len(),
        &lost[..lost.len().min(5)]
    );
}

/// A remote with `items` and a working copy of it in a fresh directory.
fn workspace() -> (Sqld, TempDir) {
    let sqld = Sqld::start();
    sqld.exec(&format!(
        "CREATE TABLE items(id INTEGER PRIMARY KEY, tag TEXT, n INTEGER);
         CREATE INDEX items_tag ON items(tag);
         WITH RECURSIVE c(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM c WHERE i < {SEED_ROWS})
         INSERT INTO items SELECT i, 'seed-' || i, i FROM c;"
    ));
    let dir = tempdir();
    ok(&sqld, dir.path(), &["init", "--url", &sqld.url]);
    (sqld, dir)
}

fn beside_an_app(journal_mode: &str) {
    let mut rng = Rng::from_time(journal_mode);
    let (sqld, dir) = workspace();
    let dir = dir.path();
    let wc = dir.join("working_copy.db");
    let app = App::start(&wc, journal_mode, 2);

    // Every command, over and over, while the app commits.
    let deadline = Instant::now() + Duration::from_secs(BUSY_SECS);
    let mut round = 0;
    while Instant::now() < deadline {
        remote_change(&sqld, &mut rng, round);
        round += 1;
        for args in [&["diff"][..], &["status"], &["pull"], &["push"], &["sync"]] {
            ok(&sqld, dir, args);
        }
    }
    assert!(round >= 2, "only {round} rounds of commands ran");

    // kill -9 of pull and push at random moments, the app still committing.
    for i in 0..6 {
        remote_change(&sqld, &mut rng, round);
        round += 1;
        let what = ["pull", "push", "sync"][i % 3];
        let wait = Duration::from_millis(20 + rng.below(400));
        killed_after(sqld.tursync(dir).arg(what), wait, what);
        integrity_ok(&wc);
        integrity_ok(&base_copy(&wc, &dir.join("base-copy.db")));
    }
    // The next run converges.
    ok(&sqld, dir, &["sync"]);

    let tags = app.stop();
    assert!(
        tags.len() > 100,
        "the app committed only {} times",
        tags.len()
    );
    integrity_ok(&wc);
    integrity_ok(&base_copy(&wc, &dir.join("base-copy.db")));
    // The mirror the pulls read from the log, too: every file tursync writes ends whole.
    let mirror = mirror_copy(&wc, &dir.join("mirror-copy.db"));
    integrity_ok(&mirror.expect("the pulls read the log into a mirror"));
    let local = local_query(&wc, "SELECT tag FROM items");
    assert_none_lost(&tags, local, "are gone from the working copy");

    // A final sync puts every commit on the remote; the working copy equals it.
    ok(&sqld, dir, &["sync"]);
    assert_items_equal(&sqld, &wc);
    assert_nothing_pending(dir);
}

#[test]
fn an_app_in_rollback_journal_mode_loses_nothing() {
    beside_an_app("delete");
}

#[test]
fn an_app_in_wal_mode_loses_nothing() {
    beside_an_app("wal");
}

/// The app commits back to back, leaving the write lock free only for moments: pull still
/// gets it, and holds it only to apply.
fn back_to_back(journal_mode: &str) {
    let mut rng = Rng::from_time(journal_mode);
    let (sqld, dir) = workspace();
    let dir = dir.path();
    let wc = dir.join("working_copy.db");
    let app = App::start(&wc, journal_mode, 0);
    std::thread::sleep(Duration::from_millis(300));
    for round in 0..3 {
        remote_change(&sqld, &mut rng, round);
        ok(&sqld, dir, &["pull"]);
    }
    let tags = app.stop();
    integrity_ok(&wc);
    let n = local_query(&wc, "SELECT count(*) FROM items WHERE tag LIKE 'app-%'");
    assert_eq!(n, vec![vec![Cell::Integer(tags.len() as i64)]]);
    let theirs = local_query(&wc, "SELECT count(*) FROM items WHERE tag LIKE 'remote-%'");
    assert_eq!(
        theirs,
        vec![vec![Cell::Integer(3)]],
        "the pulls brought every remote row"
    );
}

#[test]
fn pull_gets_the_write_lock_beside_an_app_committing_back_to_back_in_rollback_journal_mode() {
    back_to_back("delete");
}

#[test]
fn pull_gets_the_write_lock_beside_an_app_committing_back_to_back_in_wal_mode() {
    back_to_back("wal");
}

/// init killed at random moments leaves nothing half-built, and the next init completes.
#[test]
fn a_killed_init_leaves_nothing_behind() {
    let mut rng = Rng::from_time("init");
    let (sqld, dir) = workspace();
    let dir = dir.path();
    for _ in 0..4 {
        let wait = Duration::from_millis(rng.below(600));
        killed_after(
            sqld.tursync(dir)
                .args(["init", "--force", "--url", &sqld.url]),
            wait,
            "init",
        );
        ok(&sqld, dir, &["init", "--force", "--url", &sqld.url]);
        let wc = dir.join("working_copy.db");
        integrity_ok(&wc);
        integrity_ok(&base_copy(&wc, &dir.join("base-copy.db")));
        let leftovers: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .chain(std::fs::read_dir(dir.join(".tursync")).unwrap())
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.contains(".tmp-") || n.ends_with("-journal"))
            .collect();
        assert!(leftovers.is_empty(), "left behind: {leftovers:?}");
        assert_items_equal(&sqld, &wc);
    }
}

/// A push killed (SIGKILL) between the remote COMMIT and the base update: the remote holds the
/// pushed rows, the base does not, and `.tursync/pushed.rec` records what was sent. The app then
/// edits a row it had pushed. The next sync must see the remote's copy of that row as our own
/// push coming back, not as a teammate's conflicting change.
#[test]
fn a_push_killed_after_its_commit_converges_although_the_app_edited_the_pushed_rows() {
    let (sqld, dir) = workspace();
    let dir = dir.path();
    let wc = dir.join("working_copy.db");
    let state = dir.join(".tursync");
    edit(dir, "INSERT INTO items(id, tag, n) VALUES (70001, 'mine', 1); UPDATE items SET n = -5 WHERE id = 3;");
    let base_before = base_image(&wc);
    let mut push = sqld
        .tursync(dir)
        .arg("push")
        .env("TURSYNC_TEST_PAUSE_AFTER_COMMIT_MS", "30000")
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while sqld.query("SELECT count(*) FROM items WHERE id = 70001") != vec![vec![Cell::Integer(1)]]
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the push never committed"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    push.kill().unwrap();
    let _ = push.wait();
    assert!(
        state.join("pushed.rec").exists(),
        "the push recorded what it sent"
    );
    assert_eq!(base_image(&wc), base_before, "killed before the base moved");
    edit(
        dir,
        "UPDATE items SET n = 2 WHERE id = 70001; UPDATE items SET n = -6 WHERE id = 3;",
    );
    sqld.exec("UPDATE items SET n = 99 WHERE id = 4");

    ok(&sqld, dir, &["sync"]);
    assert_items_equal(&sqld, &wc);
    assert_eq!(
        sqld.query("SELECT n FROM items WHERE id IN (3, 4, 70001) ORDER BY id"),
        vec![
            vec![Cell::Integer(-6)],
            vec![Cell::Integer(99)],
            vec![Cell::Integer(2)]
        ]
    );
    assert!(
        !state.join("pushed.rec").exists(),
        "the record of the push is gone once settled"
    );
    assert_nothing_pending(dir);
}

/// A writer killed mid-transaction leaves a hot journal beside the working copy. The next
/// `diff`, `status` or `verify` must roll it back and read, not fail with "attempt to write a
/// readonly database" until the app happens to open the file again.
#[test]
fn a_hot_journal_left_by_a_killed_writer_does_not_stop_reading() {
    let (sqld, dir) = workspace();
    let dir = dir.path();
    let wc = dir.join("working_copy.db");
    let out = Command::new("python3")
        .arg("-c")
        .arg(
            "import os, sqlite3, sys\n\
             c = sqlite3.connect(sys.argv[1], isolation_level=None)\n\
             c.execute('PRAGMA cache_size = 1')\n\
             c.execute('BEGIN IMMEDIATE')\n\
             c.execute('UPDATE items SET n = n + 1')\n\
             os._exit(0)",
        )
        .arg(&wc)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let journal = dir.join("working_copy.db-journal");
    assert!(
        std::fs::metadata(&journal).is_ok_and(|m| m.len() > 0),
        "the killed writer left a journal"
    );
    // Its spilled pages are in the file: only the journal's rollback makes it whole again.
    let ro = rusqlite::Connection::open_with_flags(&wc, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
        .unwrap();
    assert!(
        ro.query_row("SELECT count(*) FROM items", [], |r| r.get::<_, i64>(0))
            .is_err(),
        "a read-only reader meets a hot journal"
    );
    drop(ro);
    assert_nothing_pending(dir);
    let verify = ok(&sqld, dir, &["verify"]);
    assert!(
        text(&verify).contains("equals the base"),
        "{}",
        text(&verify)
    );
}

/// Pushes of a table of over a thousand leaves, which a push reads with two connections at once
/// (from the second push on: `diff::BESIDE_LEAVES`), while two apps commit throughout, one in
/// the first half of the table's keys and one past its end: every commit reaches the remote,
/// and the remote ends equal to the working copy. Were the second connection to read another
/// snapshot than the first, a leaf it saw unchanged would be taken for the base's, and the
/// rows the app had put there would never be pushed.
fn pushes_that_read_a_large_table_with_two_connections(journal_mode: &str) {
    let sqld = Sqld::start();
    // Ids 1..=100000 and 200001..=400000: the second app inserts from 100001 on.
    sqld.exec(
        "CREATE TABLE items(id INTEGER PRIMARY KEY, tag TEXT, n INTEGER);
         WITH RECURSIVE c(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM c WHERE i < 300000)
         INSERT INTO items SELECT CASE WHEN i <= 100000 THEN i ELSE i + 100000 END, 'seed-' || i, i FROM c;",
    );
    let dir = tempdir();
    let dir = dir.path();
    ok(&sqld, dir, &["init", "--url", &sqld.url]);
    let wc = dir.join("working_copy.db");
    let leaves = leaf_count(&wc, "items");
    assert!(
        leaves >= 1024,
        "only {leaves} leaves: one connection reads them"
    );

    let end = App::start(&wc, journal_mode, 2);
    let middle = App::spawn("app.py", &wc, &[journal_mode, "2", "100001"]);
    let deadline = Instant::now() + Duration::from_secs(6);
    let mut pushes = 0;
    while Instant::now() < deadline {
        ok(&sqld, dir, &["push"]);
        pushes += 1;
    }
    assert!(pushes >= 3, "only {pushes} pushes ran");
    let mut tags = end.stop();
    tags.extend(middle.stop());
    assert!(
        tags.len() > 100,
        "the apps committed only {} times",
        tags.len()
    );
    ok(&sqld, dir, &["push"]);
    let remote = sqld.query("SELECT tag FROM items WHERE tag LIKE 'app-%'");
    assert_none_lost(&tags, remote, "never reached the remote");
    assert_items_equal(&sqld, &wc);
    integrity_ok(&wc);
    assert_nothing_pending(dir);
}

#[test]
fn pushes_that_read_a_large_table_with_two_connections_lose_no_commit_of_an_app_in_rollback_journal_mode(
) {
    pushes_that_read_a_large_table_with_two_connections("delete");
}

#[test]
fn pushes_that_read_a_large_table_with_two_connections_lose_no_commit_of_an_app_in_wal_mode() {
    pushes_that_read_a_large_table_with_two_connections("wal");
}
