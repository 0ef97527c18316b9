//! More attacks on the recovery of a killed pull: a working copy in WAL mode, a pull that only
//! inserted or only deleted, a migration with rows, two kills in a row, a killed push and a
//! killed pull together, and renumbered colliding inserts. Each states the safe outcome: no
//! teammate's row and no app's edit lost silently, a documented command leads forward (never
//! `init --force`), and at the end both sides hold the same database with nothing pending.
//!
//! Kept apart (branch `s5-adversary3`), failing: a pull killed in the instant between its
//! working copy's commit and the synced rename of its record, whose only written rows the app
//! then deletes or edits. The working copy then reads exactly as if the commit had not landed
//! (its rows as before the merge, or edited past both), so the pull merges again: a deleted
//! row of theirs comes back, an edited one is kept beside theirs, renumbered. Nothing tells the
//! two apart there; the rename leaves only that instant (or a power cut within it).

use std::path::Path;
use std::time::{Duration, Instant};

use crate::common::*;

/// A workspace cloned from a remote holding `schema`; the working copy in WAL mode when
/// `wal` (set by the app, as an app does on opening); the app's `ours`, the teammate's
/// `theirs`, and a pull of it killed at `moment`.
fn killed_pull(
    schema: &str,
    wal: bool,
    ours: &str,
    theirs: &str,
    moment: Moment,
) -> (Sqld, TempDir) {
    let sqld = Sqld::start();
    sqld.exec(schema);
    let dir = tempdir();
    ok(&sqld, dir.path(), &["init", "--url", &sqld.url]);
    if wal {
        edit(dir.path(), "PRAGMA journal_mode = WAL;");
        assert_eq!(
            local_query(&wc(dir.path()), "PRAGMA journal_mode"),
            [[Cell::text("wal")]]
        );
    }
    if !ours.is_empty() {
        edit(dir.path(), ours);
    }
    sqld.exec(theirs);
    kill_pull_at(&sqld, dir.path(), &[], moment, false);
    (sqld, dir)
}

/// `sync`; if it stops on conflicts (exit 3, the way forward it documents), `sync SIDE`.
/// Returns whether it stopped.
fn sync_or_settle(sqld: &Sqld, dir: &Path, side: &str) -> bool {
    let (code, report) = json(sqld, dir, &["sync"], false);
    match code {
        Some(0) => false,
        Some(3) => {
            eprintln!("sync stopped on conflicts: {report}");
            let (code, report) = json(sqld, dir, &["sync", side], false);
            assert_eq!(code, Some(0), "sync {side}: {report}");
            true
        }
        _ => panic!("sync failed: {code:?} {report}"),
    }
}

fn rows(rows: &[(i64, &str)]) -> Vec<Vec<Cell>> {
    rows.iter()
        .map(|(id, v)| vec![Cell::Integer(*id), Cell::text(v)])
        .collect()
}

const T: &str = "CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT);
                 INSERT INTO t VALUES (1, 'a'), (2, 'b');";
const ALL: &str = "SELECT id, v FROM t ORDER BY id";

// ---------------------------------------------------------------------------------------
// 1. The working copy in WAL mode (no stamp in its header): the app writes other rows after
// the kill. The teammate's change and every app write end on both sides.

fn wal_app_writes_other_rows(moment: Moment) {
    let (sqld, dir) = killed_pull(
        T,
        true,
        "INSERT INTO t VALUES (5, 'ours before')",
        "UPDATE t SET v = 'theirs' WHERE id = 1; INSERT INTO t VALUES (3, 'new')",
        moment,
    );
    edit(
        dir.path(),
        "PRAGMA journal_mode = WAL; UPDATE t SET v = 'app' WHERE id = 2; INSERT INTO t VALUES (6, 'ours after');",
    );
    let stopped = sync_or_settle(&sqld, dir.path(), "--ours");
    assert!(!stopped, "no row was edited on both sides");
    assert_eq!(
        sqld.query(ALL),
        rows(&[
            (1, "theirs"),
            (2, "app"),
            (3, "new"),
            (5, "ours before"),
            (6, "ours after")
        ])
    );
    settled(&sqld, dir.path());
}

#[test]
fn wal_killed_before_commit_app_writes_other_rows() {
    wal_app_writes_other_rows(Moment::Before)
}

#[test]
fn wal_killed_after_commit_app_writes_other_rows() {
    wal_app_writes_other_rows(Moment::After("SELECT count(*) FROM t WHERE id = 3"))
}

#[test]
fn wal_killed_before_rename_app_writes_other_rows() {
    wal_app_writes_other_rows(Moment::BeforeRename("SELECT count(*) FROM t WHERE id = 3"))
}

// ---------------------------------------------------------------------------------------
// 2. A migration and row changes in one pull, killed before the rename; the app then writes
// unrelated rows (the stamp moves). The evidence must find the commit landed: the new column,
// the teammate's values and the app's rows all end on both sides.

#[test]
fn migration_and_rows_killed_before_rename_app_writes_other_rows() {
    let (sqld, dir) = killed_pull(
        T,
        false,
        "",
        "ALTER TABLE t ADD COLUMN w TEXT; UPDATE t SET w = 'x' WHERE id = 1;
         INSERT INTO t VALUES (3, 'new', 'y');",
        Moment::BeforeRename("SELECT count(*) FROM t WHERE id = 3"),
    );
    edit(
        dir.path(),
        "INSERT INTO t(id, v) VALUES (9, 'app'); UPDATE t SET v = 'app2' WHERE id = 2;",
    );
    let stopped = sync_or_settle(&sqld, dir.path(), "--ours");
    assert!(!stopped, "nothing was edited on both sides");
    assert_eq!(
        sqld.query("SELECT id, v, ifnull(w, '-') FROM t ORDER BY id"),
        [
            [Cell::Integer(1), Cell::text("a"), Cell::text("x")],
            [Cell::Integer(2), Cell::text("app2"), Cell::text("-")],
            [Cell::Integer(3), Cell::text("new"), Cell::text("y")],
            [Cell::Integer(9), Cell::text("app"), Cell::text("-")],
        ]
    );
    settled(&sqld, dir.path());
}

// ---------------------------------------------------------------------------------------
// 3. A pull that only inserted, or only deleted.

/// Their only change deletes row 1; killed after the commit and before the rename, the app
/// inserts a new row under key 1. The app's row must not vanish silently.
#[test]
fn only_delete_killed_before_rename_then_app_inserts_same_key() {
    let (sqld, dir) = killed_pull(
        T,
        false,
        "",
        "DELETE FROM t WHERE id = 1",
        Moment::BeforeRename("SELECT count(*) = 0 FROM t WHERE id = 1"),
    );
    edit(dir.path(), "INSERT INTO t VALUES (1, 'mine')");
    sync_or_settle(&sqld, dir.path(), "--ours");
    assert_eq!(sqld.query(ALL), rows(&[(1, "mine"), (2, "b")]));
    settled(&sqld, dir.path());
}

/// Their only change deletes row 1; killed before the commit, the app inserts a new row under
/// key 1 (the old one still there, so an INSERT OR REPLACE). Settled `--ours`, the app's row
/// lives on.
#[test]
fn only_delete_killed_before_commit_then_app_replaces_the_row() {
    let (sqld, dir) = killed_pull(T, false, "", "DELETE FROM t WHERE id = 1", Moment::Before);
    edit(dir.path(), "INSERT OR REPLACE INTO t VALUES (1, 'mine')");
    sync_or_settle(&sqld, dir.path(), "--ours");
    assert_eq!(sqld.query(ALL), rows(&[(1, "mine"), (2, "b")]));
    settled(&sqld, dir.path());
}

/// Their only change inserts row 3; killed before the commit, the app inserts its own row 3.
/// Both new rows live on (a whole pull renumbers ours).
#[test]
fn only_insert_killed_before_commit_then_app_inserts_same_key() {
    let (sqld, dir) = killed_pull(
        T,
        true,
        "",
        "INSERT INTO t VALUES (3, 'theirs')",
        Moment::Before,
    );
    edit(dir.path(), "INSERT INTO t VALUES (3, 'mine')");
    sync_or_settle(&sqld, dir.path(), "--ours");
    assert_eq!(
        sqld.query("SELECT v FROM t ORDER BY v"),
        [["a"], ["b"], ["mine"], ["theirs"]].map(|[v]| vec![Cell::text(v)])
    );
    settled(&sqld, dir.path());
}

// ---------------------------------------------------------------------------------------
// 4. Two kills in a row.

/// A pull killed after its commit and before the rename; the app edits; the teammate edits; the
/// next pull (which finishes the first) killed before its commit; the app and the teammate
/// edit again; then sync. Every edit ends on both sides.
#[test]
fn two_kills_in_a_row_then_sync() {
    let (sqld, dir) = killed_pull(
        T,
        false,
        "",
        "UPDATE t SET v = 'theirs1' WHERE id = 1",
        Moment::BeforeRename("SELECT v = 'theirs1' FROM t WHERE id = 1"),
    );
    edit(dir.path(), "INSERT INTO t VALUES (10, 'app1')");
    sqld.exec("UPDATE t SET v = 'theirs2' WHERE id = 2");
    kill_pull_at(&sqld, dir.path(), &[], Moment::Before, false);
    edit(
        dir.path(),
        "INSERT INTO t VALUES (11, 'app2'); UPDATE t SET v = 'app1b' WHERE id = 10",
    );
    sqld.exec("INSERT INTO t VALUES (4, 'theirs3')");
    let stopped = sync_or_settle(&sqld, dir.path(), "--ours");
    assert!(!stopped, "no row was edited on both sides");
    assert_eq!(
        sqld.query(ALL),
        rows(&[
            (1, "theirs1"),
            (2, "theirs2"),
            (4, "theirs3"),
            (10, "app1b"),
            (11, "app2")
        ])
    );
    settled(&sqld, dir.path());
}

/// A pull killed before its commit; the app edits the row the pull would have written; the next
/// pull killed after its commit (before the rename); the teammate edits; then sync.
#[test]
fn killed_before_commit_then_killed_before_rename_then_sync() {
    let (sqld, dir) = killed_pull(
        T,
        true,
        "",
        "UPDATE t SET v = 'theirs1' WHERE id = 1; INSERT INTO t VALUES (3, 'new')",
        Moment::Before,
    );
    edit(dir.path(), "INSERT INTO t VALUES (10, 'app1')");
    kill_pull_at(
        &sqld,
        dir.path(),
        &[],
        Moment::BeforeRename("SELECT count(*) FROM t WHERE id = 3"),
        false,
    );
    edit(dir.path(), "UPDATE t SET v = 'app2' WHERE id = 2");
    sqld.exec("UPDATE t SET v = 'theirs2' WHERE id = 3");
    let stopped = sync_or_settle(&sqld, dir.path(), "--ours");
    assert!(!stopped, "no row was edited on both sides");
    assert_eq!(
        sqld.query(ALL),
        rows(&[(1, "theirs1"), (2, "app2"), (3, "theirs2"), (10, "app1")])
    );
    settled(&sqld, dir.path());
}

// ---------------------------------------------------------------------------------------
// 5. A push killed after the remote's commit (pushed.rec), then a pull killed after its commit
// and before its rename.

fn push_killed_then_pull_killed(moment: Moment) {
    let sqld = Sqld::start();
    sqld.exec(T);
    let dir = tempdir();
    let dir = dir.path();
    ok(&sqld, dir, &["init", "--url", &sqld.url]);
    edit(
        dir,
        "INSERT INTO t VALUES (10, 'mine'); UPDATE t SET v = 'ours' WHERE id = 2;",
    );
    let mut push = sqld
        .tursync(dir)
        .arg("push")
        .env("TURSYNC_TEST_PAUSE_AFTER_COMMIT_MS", "60000")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while sqld.query("SELECT count(*) FROM t WHERE id = 10") != [[Cell::Integer(1)]] {
        assert!(Instant::now() < deadline, "the push never committed");
        std::thread::sleep(Duration::from_millis(10));
    }
    kill(&mut push);
    assert!(dir.join(".tursync/pushed.rec").exists());
    edit(dir, "UPDATE t SET v = 'mine2' WHERE id = 10");
    sqld.exec("UPDATE t SET v = 'theirs' WHERE id = 1");
    kill_pull_at(&sqld, dir, &[], moment, false);
    edit(
        dir,
        "UPDATE t SET v = 'ours2' WHERE id = 2; INSERT INTO t VALUES (11, 'mine3')",
    );
    let stopped = sync_or_settle(&sqld, dir, "--ours");
    assert!(
        !stopped,
        "no row was edited by the teammate and the app both"
    );
    assert_eq!(
        sqld.query(ALL),
        rows(&[(1, "theirs"), (2, "ours2"), (10, "mine2"), (11, "mine3")])
    );
    settled(&sqld, dir);
}

#[test]
fn push_killed_after_remote_commit_then_pull_killed_before_rename() {
    push_killed_then_pull_killed(Moment::BeforeRename(
        "SELECT v = 'theirs' FROM t WHERE id = 1",
    ))
}

#[test]
fn push_killed_after_remote_commit_then_pull_killed_before_commit() {
    push_killed_then_pull_killed(Moment::Before)
}

// ---------------------------------------------------------------------------------------
// 6. Renumbered colliding inserts (our new row 3 and theirs), killed before the rename.

/// The pull renumbered our row 3 and took their row 3; killed before the rename, the app then
/// adds a row. All three new rows live on, each once.
#[test]
fn renumbered_colliding_inserts_killed_before_rename() {
    let (sqld, dir) = killed_pull(
        T,
        false,
        "INSERT INTO t VALUES (3, 'ours')",
        "INSERT INTO t VALUES (3, 'theirs')",
        Moment::BeforeRename("SELECT v = 'theirs' FROM t WHERE id = 3"),
    );
    edit(dir.path(), "INSERT INTO t VALUES (20, 'later')");
    let stopped = sync_or_settle(&sqld, dir.path(), "--ours");
    assert!(!stopped);
    assert_eq!(
        sqld.query("SELECT v FROM t ORDER BY v"),
        [["a"], ["b"], ["later"], ["ours"], ["theirs"]].map(|[v]| vec![Cell::text(v)])
    );
    assert_eq!(
        sqld.query("SELECT v FROM t WHERE id = 3"),
        [[Cell::text("theirs")]]
    );
    settled(&sqld, dir.path());
}

// ---------------------------------------------------------------------------------------
// Controls and neighbours of the failing cases above.

/// As `only_insert_killed_before_rename_then_app_deletes_it`, but the pull also updated row 1,
/// which tells the commit landed: the app's delete of row 3 is marked, the next sync stops on
/// it, and `--ours` keeps the delete.
#[test]
fn insert_and_update_killed_before_rename_then_app_deletes_the_insert() {
    let (sqld, dir) = killed_pull(
        T,
        false,
        "",
        "INSERT INTO t VALUES (3, 'theirs'); UPDATE t SET v = 'x' WHERE id = 1",
        Moment::BeforeRename("SELECT count(*) FROM t WHERE id = 3"),
    );
    edit(dir.path(), "DELETE FROM t WHERE id = 3");
    sync_or_settle(&sqld, dir.path(), "--ours");
    assert_eq!(sqld.query(ALL), rows(&[(1, "x"), (2, "b")]));
    settled(&sqld, dir.path());
}

/// As `only_insert_killed_before_rename_then_app_edits_it`, with a text key (nothing to
/// renumber): the app's edit of the teammate's row must land on it, or be a conflict.
#[test]
fn only_insert_text_key_killed_before_rename_then_app_edits_it() {
    let (sqld, dir) = killed_pull(
        "CREATE TABLE t(id TEXT PRIMARY KEY, v TEXT); INSERT INTO t VALUES ('k1', 'a');",
        false,
        "",
        "INSERT INTO t VALUES ('k3', 'theirs')",
        Moment::BeforeRename("SELECT count(*) FROM t WHERE id = 'k3'"),
    );
    edit(dir.path(), "UPDATE t SET v = 'edited' WHERE id = 'k3'");
    sync_or_settle(&sqld, dir.path(), "--ours");
    assert_eq!(
        sqld.query("SELECT id, v FROM t ORDER BY id"),
        [["k1", "a"], ["k3", "edited"]].map(|r| r.map(Cell::text).to_vec())
    );
    settled(&sqld, dir.path());
}

/// Killed before its commit (nothing landed); the app then makes the very edit the teammate
/// made to row 1, which reads as the commit's evidence. The teammate's new row 3, never in the
/// working copy, must not be deleted silently: it ends on both sides, or the sync stops on it
/// (settled here `--theirs`, which keeps it).
#[test]
fn killed_before_commit_then_app_makes_the_same_edit() {
    let (sqld, dir) = killed_pull(
        T,
        false,
        "",
        "UPDATE t SET v = 'x' WHERE id = 1; INSERT INTO t VALUES (3, 'theirs')",
        Moment::Before,
    );
    edit(dir.path(), "UPDATE t SET v = 'x' WHERE id = 1");
    sync_or_settle(&sqld, dir.path(), "--theirs");
    assert_eq!(sqld.query(ALL), rows(&[(1, "x"), (2, "b"), (3, "theirs")]));
    settled(&sqld, dir.path());
}

/// The same in WAL mode, where no stamp tells that the app committed.
#[test]
fn killed_before_commit_then_app_makes_the_same_edit_wal() {
    let (sqld, dir) = killed_pull(
        T,
        true,
        "",
        "UPDATE t SET v = 'x' WHERE id = 1; INSERT INTO t VALUES (3, 'theirs')",
        Moment::Before,
    );
    edit(dir.path(), "UPDATE t SET v = 'x' WHERE id = 1");
    let (code, report) = json(&sqld, dir.path(), &["sync"], false);
    eprintln!("sync: {code:?} {report}");
    assert_ne!(
        sqld.query("SELECT count(*) FROM t WHERE id = 3"),
        [[Cell::Integer(0)]],
        "the teammate's row 3 was deleted by a plain sync"
    );
    if code == Some(3) {
        let (code, report) = json(&sqld, dir.path(), &["sync", "--theirs"], false);
        assert_eq!(code, Some(0), "{report}");
    }
    assert_eq!(sqld.query(ALL), rows(&[(1, "x"), (2, "b"), (3, "theirs")]));
    settled(&sqld, dir.path());
}
