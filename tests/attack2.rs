//! Attacks on the recovery of a killed pull and the marks it may leave
//! (`.tursync/unsettled.json`): rows the next run cannot place are conflicts until
//! `--ours`/`--theirs` settles them. Each test kills a pull at its working copy's commit, disturbs
//! the state, and states the safe outcome: no teammate's row and no app's edit lost silently, a
//! documented command always leads forward (never `init --force`), and once settled both sides
//! hold the same database with nothing pending.
//!
//! Where the kill falls decides what the next run knows: just before the commit (`pulled.rec`,
//! the working copy as before: the next pull merges again, ordinary conflicts only); after the
//! commit and its record's rename (`pulled.landed`: the commit landed, whatever the app wrote
//! since is ours, nothing marked); after the commit and before the rename (`pulled.rec`, the
//! working copy tells: a row the merge wrote and the app set back to its old value is marked).

use std::path::Path;
use std::time::Duration;

use crate::common::*;

/// A workspace cloned from a remote holding `schema`, the app's `ours` (run before the pull,
/// may be empty), the teammate's `theirs`, and a pull of it killed at `moment`.
fn killed_pull(
    schema: &str,
    ours: &str,
    theirs: &str,
    moment: Moment,
    sql_path: bool,
) -> (Sqld, TempDir) {
    let sqld = Sqld::start();
    sqld.exec(schema);
    let dir = tempdir();
    ok(&sqld, dir.path(), &["init", "--url", &sqld.url]);
    if !ours.is_empty() {
        edit(dir.path(), ours);
    }
    sqld.exec(theirs);
    kill_fresh_pull_at(&sqld, dir.path(), &[], moment, sql_path);
    (sqld, dir)
}

/// Asserts no record of a pull is there (a plain `pull` finished one first), then kills a
/// `pull ARGS` at `moment`.
fn kill_fresh_pull_at(sqld: &Sqld, dir: &Path, args: &[&str], moment: Moment, sql_path: bool) {
    assert!(
        !dir.join(".tursync/pulled.rec").exists(),
        "a record of a pull is already there"
    );
    kill_pull_at(sqld, dir, args, moment, sql_path);
}

/// `tursync ARGS` in `dir` (over SQL when `sql_path`), asserting it exited 0.
fn runs(sqld: &Sqld, dir: &Path, args: &[&str], sql_path: bool) {
    run_ok(sqld.tursync_over(dir, args[0], sql_path).args(&args[1..]));
}

/// Asserts `args` stops with conflicts (exit 3) and the remote unchanged; returns the
/// conflicts.
fn stops(sqld: &Sqld, dir: &Path, args: &[&str], sql_path: bool) -> Vec<serde_json::Value> {
    let before = remote_dump(sqld);
    let (code, report) = json(sqld, dir, args, sql_path);
    assert_eq!(code, Some(3), "{args:?}: {report}");
    assert_eq!(remote_dump(sqld), before, "{args:?} changed the remote");
    report["conflicts"]
        .as_array()
        .unwrap_or_else(|| panic!("{args:?}: no conflicts in {report}"))
        .clone()
}

/// Every row of every table of the remote, exactly.
fn remote_dump(sqld: &Sqld) -> Vec<Vec<Vec<Cell>>> {
    table_selects(sqld, false)
        .iter()
        .map(|q| sqld.query(q))
        .collect()
}

fn texts(rows: &[&str]) -> Vec<Vec<Cell>> {
    rows.iter().map(|r| vec![Cell::text(r)]).collect()
}

const T: &str = "CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT); INSERT INTO t VALUES (1, 'a');";

// ---------------------------------------------------------------------------------------
// New rows on both sides under one integer key. A whole pull renumbers ours (no conflict),
// so both rows live on. Killed before its commit, the working copy still holds our row under
// the key their row takes: the next run finds the commit did not land, and merges again.

/// Killed before its commit: the next `sync SIDE` merges again as if the killed pull never
/// ran, so it renumbers ours (nothing to settle, whichever side is named): the teammate's row
/// keeps key 3, the app's row lives on under another key, and both sides end equal.
fn colliding_inserts_killed_before_commit_merged_again(side: &str, sql_path: bool) {
    let (sqld, dir) = killed_pull(
        T,
        "INSERT INTO t VALUES (3, 'ours')",
        "INSERT INTO t VALUES (3, 'theirs')",
        Moment::Before,
        sql_path,
    );
    runs(&sqld, dir.path(), &["sync", side], sql_path);
    assert_eq!(
        sqld.query("SELECT v FROM t ORDER BY v"),
        texts(&["a", "ours", "theirs"]),
        "sync {side} after a pull killed before its commit lost a new row (sql_path {sql_path})"
    );
    assert_eq!(
        sqld.query("SELECT v FROM t WHERE id = 3"),
        texts(&["theirs"]),
        "the teammate's row 3 was renumbered"
    );
    settled(&sqld, dir.path());
}

#[test]
fn colliding_inserts_killed_before_commit_then_sync_ours_keeps_both_rows() {
    colliding_inserts_killed_before_commit_merged_again("--ours", false)
}

#[test]
fn colliding_inserts_killed_before_commit_then_sync_theirs_keeps_both_rows() {
    colliding_inserts_killed_before_commit_merged_again("--theirs", false)
}

#[test]
fn colliding_inserts_killed_before_commit_then_sync_theirs_keeps_both_rows_over_sql() {
    colliding_inserts_killed_before_commit_merged_again("--theirs", true)
}

/// The same collision, with a child row of ours pointing at our new parent. A whole pull moves
/// our parent to a free key and the child with it. After the kill (the next run merges again)
/// and `--theirs`, the child must still point at our parent, never silently at the teammate's
/// row, and both parents live on.
#[test]
fn colliding_parent_killed_before_commit_then_theirs_never_repoints_our_child() {
    let (sqld, dir) = killed_pull(
        "CREATE TABLE p(id INTEGER PRIMARY KEY, name TEXT);
         CREATE TABLE c(id INTEGER PRIMARY KEY, pid INTEGER REFERENCES p(id));
         INSERT INTO p VALUES (1, 'a');",
        "INSERT INTO p VALUES (2, 'ours'); INSERT INTO c VALUES (10, 2);",
        "INSERT INTO p VALUES (2, 'theirs')",
        Moment::Before,
        false,
    );
    let (code, report) = json(&sqld, dir.path(), &["sync", "--theirs"], false);
    eprintln!("sync --theirs: {code:?} {report}");
    let parent = "SELECT p.name FROM c JOIN p ON p.id = c.pid WHERE c.id = 10";
    assert_ne!(
        sqld.query(parent),
        texts(&["theirs"]),
        "our child row now points at the teammate's parent"
    );
    assert_ne!(
        local_query(&dir.path().join("working_copy.db"), parent),
        texts(&["theirs"]),
        "our child row now points at the teammate's parent in the working copy"
    );
    assert_eq!(code, Some(0), "{report}");
    assert_eq!(
        sqld.query("SELECT name FROM p ORDER BY name"),
        texts(&["a", "ours", "theirs"])
    );
    assert_eq!(sqld.query(parent), texts(&["ours"]));
    settled(&sqld, dir.path());
}

// ---------------------------------------------------------------------------------------
// Settling table by table.

const TWO: &str = "CREATE TABLE t1(id INTEGER PRIMARY KEY, v TEXT);
                   CREATE TABLE t2(id INTEGER PRIMARY KEY, v TEXT);
                   INSERT INTO t1 VALUES (1, 'base'); INSERT INTO t2 VALUES (1, 'base');";
const TWO_THEIRS: &str = "UPDATE t1 SET v = 'theirs1'; UPDATE t2 SET v = 'theirs2';";
const TWO_LANDED: &str = "SELECT (SELECT v FROM t1) = 'theirs1' AND (SELECT v FROM t2) = 'theirs2'";
/// `TWO_THEIRS` and a new row 2 of t1, which the app leaves as the merge wrote it: the evidence
/// that a commit killed before its rename landed.
const TWO_THEIRS_AND_NEW: &str = "UPDATE t1 SET v = 'theirs1'; UPDATE t2 SET v = 'theirs2';
                                  INSERT INTO t1 VALUES (2, 'new1');";

/// Rows in two tables in conflict, each settled its own way: `--theirs t1 --ours t2`. Naming
/// one table only stops on the other and changes nothing on either side. Killed before the
/// commit, they are ordinary conflicts (the next pull merges again). Killed after the commit
/// and before the rename, the app first sets both rows back to their old value (so they are
/// marked, the new row 2 of t1 telling the commit landed), then edits them.
fn per_table_settling(moment: Moment, sql_path: bool) {
    let theirs = match moment {
        Moment::BeforeRename(_) => TWO_THEIRS_AND_NEW,
        _ => TWO_THEIRS,
    };
    let (sqld, dir) = killed_pull(TWO, "", theirs, moment, sql_path);
    if let Moment::BeforeRename(_) = moment {
        edit(
            dir.path(),
            "UPDATE t1 SET v = 'base' WHERE id = 1; UPDATE t2 SET v = 'base';",
        );
        let conflicts = stops(&sqld, dir.path(), &["pull"], sql_path);
        assert_eq!(conflicts.len(), 2, "{conflicts:?}");
    }
    edit(
        dir.path(),
        "UPDATE t1 SET v = 'ours1' WHERE id = 1; UPDATE t2 SET v = 'ours2';",
    );
    let wc = dir.path().join("working_copy.db");
    let conflicts = stops(&sqld, dir.path(), &["pull"], sql_path);
    assert_eq!(conflicts.len(), 2, "{conflicts:?}");
    let local = local_dump(&wc);
    let conflicts = stops(&sqld, dir.path(), &["pull", "--theirs", "t1"], sql_path);
    assert!(
        conflicts.iter().all(|c| c["table"] == "t2"),
        "{conflicts:?}"
    );
    assert_eq!(
        local_dump(&wc),
        local,
        "a pull that stopped changed the working copy"
    );
    stops(&sqld, dir.path(), &["push"], sql_path);
    runs(
        &sqld,
        dir.path(),
        &["pull", "--theirs", "t1", "--ours", "t2"],
        sql_path,
    );
    runs(&sqld, dir.path(), &["push"], sql_path);
    assert_eq!(
        sqld.query("SELECT v FROM t1 WHERE id = 1"),
        texts(&["theirs1"])
    );
    assert_eq!(sqld.query("SELECT v FROM t2"), texts(&["ours2"]));
    settled(&sqld, dir.path());
}

#[test]
fn per_table_settling_after_the_commit_before_the_rename() {
    per_table_settling(Moment::BeforeRename(TWO_LANDED), false)
}

#[test]
fn per_table_settling_after_the_commit_before_the_rename_over_sql() {
    per_table_settling(Moment::BeforeRename(TWO_LANDED), true)
}

/// Killed after the commit and its record's rename: the commit landed, so the app's later
/// edits of both tables are ours (no marks, no conflict): a plain pull goes on and the push
/// sends them.
fn edits_after_a_landed_pull_are_ours(sql_path: bool) {
    let (sqld, dir) = killed_pull(TWO, "", TWO_THEIRS, Moment::After(TWO_LANDED), sql_path);
    edit(
        dir.path(),
        "UPDATE t1 SET v = 'ours1'; DELETE FROM t2; INSERT INTO t2 VALUES (5, 'ours2');",
    );
    let (code, report) = json(&sqld, dir.path(), &["pull"], sql_path);
    assert_eq!(code, Some(0), "{report}");
    assert!(
        !dir.path().join(".tursync/unsettled.json").exists(),
        "a landed pull left marks"
    );
    runs(&sqld, dir.path(), &["push"], sql_path);
    assert_eq!(sqld.query("SELECT v FROM t1"), texts(&["ours1"]));
    assert_eq!(
        sqld.query("SELECT id, v FROM t2"),
        [[Cell::Integer(5), Cell::text("ours2")]]
    );
    settled(&sqld, dir.path());
}

#[test]
fn edits_after_the_commit_are_ours() {
    edits_after_a_landed_pull_are_ours(false)
}

#[test]
fn edits_after_the_commit_are_ours_over_sql() {
    edits_after_a_landed_pull_are_ours(true)
}

#[test]
fn per_table_settling_before_the_commit() {
    per_table_settling(Moment::Before, false)
}

/// `sync --ours t2 --theirs t1` does the pull and the push in one go, the teammate having
/// changed t1 again meanwhile (their later change is theirs to keep, not a conflict).
#[test]
fn per_table_sync_with_a_later_change_of_theirs() {
    let (sqld, dir) = killed_pull(TWO, "", TWO_THEIRS, Moment::After(TWO_LANDED), false);
    edit(
        dir.path(),
        "UPDATE t1 SET v = 'ours1'; UPDATE t2 SET v = 'ours2';",
    );
    sqld.exec("UPDATE t1 SET v = 'later1'; INSERT INTO t2 VALUES (2, 'new2');");
    runs(
        &sqld,
        dir.path(),
        &["sync", "--ours", "t2", "--theirs", "t1"],
        false,
    );
    assert_eq!(sqld.query("SELECT v FROM t1"), texts(&["later1"]));
    assert_eq!(
        sqld.query("SELECT v FROM t2 ORDER BY id"),
        texts(&["ours2", "new2"])
    );
    settled(&sqld, dir.path());
}

// ---------------------------------------------------------------------------------------
// Exact values: WITHOUT ROWID text keys, NULLs, -0.0, blobs.

const EXACT: &str = "CREATE TABLE w(k TEXT PRIMARY KEY, n, r, b BLOB) WITHOUT ROWID;
                     INSERT INTO w VALUES ('a', NULL, 0.0, x''), ('b', 1, 1.5, x'00'),
                                          ('d', 'x', 2.0, x'ff');";
const EXACT_THEIRS: &str = "UPDATE w SET r = -0.0 WHERE k = 'a';
                            UPDATE w SET n = NULL, b = x'' WHERE k = 'b';
                            INSERT INTO w VALUES ('c', NULL, -0.0, NULL);
                            DELETE FROM w WHERE k = 'd';";
const EXACT_LANDED: &str = "SELECT count(*) FROM w WHERE k = 'c'";

/// Killed after the commit with nothing touched since: every row is as the merge left it
/// (NULLs, -0.0, empty blobs compared exactly), so nothing is marked and a plain pull goes on.
fn exact_values_killed_after_commit(sql_path: bool) {
    let (sqld, dir) = killed_pull(
        EXACT,
        "",
        EXACT_THEIRS,
        Moment::After(EXACT_LANDED),
        sql_path,
    );
    let (code, report) = json(&sqld, dir.path(), &["pull"], sql_path);
    assert_eq!(code, Some(0), "{report}");
    settled(&sqld, dir.path());
}

#[test]
fn exact_values_killed_after_commit_over_the_log() {
    exact_values_killed_after_commit(false)
}

#[test]
fn exact_values_killed_after_commit_over_sql() {
    exact_values_killed_after_commit(true)
}

/// Killed before the commit: the working copy still holds 0.0 where theirs is -0.0, their
/// NULL/empty blob and row 'c' are missing, their deleted 'd' is still there. The next run
/// finds the commit did not land (nothing of it is in the working copy) and merges again: a
/// plain sync brings theirs exactly and pushes none of the stale values over theirs.
fn exact_values_killed_before_commit(sql_path: bool) {
    let (sqld, dir) = killed_pull(EXACT, "", EXACT_THEIRS, Moment::Before, sql_path);
    let remote = remote_dump(&sqld);
    let (code, report) = json(&sqld, dir.path(), &["sync"], sql_path);
    assert_eq!(
        remote_dump(&sqld),
        remote,
        "sync changed the remote: {report}"
    );
    assert_eq!(code, Some(0), "{report}");
    assert_eq!(
        local_query(
            &dir.path().join("working_copy.db"),
            "SELECT r FROM w WHERE k = 'a'"
        ),
        [[Cell::real(-0.0)]]
    );
    settled(&sqld, dir.path());
}

#[test]
fn exact_values_killed_before_commit_merged_again_over_the_log() {
    exact_values_killed_before_commit(false)
}

#[test]
fn exact_values_killed_before_commit_merged_again_over_sql() {
    exact_values_killed_before_commit(true)
}

/// After the commit (and its record's rename), the app changes only what tells the values
/// apart: -0.0 to 0.0, a NULL to an empty blob, an integer 1 to a real 1.0. The commit landed,
/// so these edits are ours: a plain sync sends them exactly (none lost as "equal").
#[test]
fn exact_values_edited_invisibly_after_the_commit_are_pushed_exactly() {
    let (sqld, dir) = killed_pull(
        EXACT,
        "",
        "UPDATE w SET r = -0.0, n = 1 WHERE k = 'a'; UPDATE w SET n = NULL WHERE k = 'b';",
        Moment::After("SELECT count(*) FROM w WHERE k = 'b' AND n IS NULL"),
        false,
    );
    edit(
        dir.path(),
        "UPDATE w SET r = 0.0, n = 1.0 WHERE k = 'a'; UPDATE w SET n = x'' WHERE k = 'b';",
    );
    runs(&sqld, dir.path(), &["sync"], false);
    assert_eq!(
        sqld.query("SELECT r, n FROM w WHERE k = 'a'"),
        [[Cell::real(0.0), Cell::real(1.0)]]
    );
    assert_eq!(
        sqld.query("SELECT n FROM w WHERE k = 'b'"),
        [[Cell::Blob(vec![])]]
    );
    settled(&sqld, dir.path());
}

// ---------------------------------------------------------------------------------------
// Killing the pull that settles the marks.

const ROW: &str = "CREATE TABLE t(id INTEGER PRIMARY KEY, b BLOB);
                   INSERT INTO t VALUES (1, x'00'), (2, x'00');";

/// The teammate's change of both rows, of which row 2, left as the merge wrote it, tells that a
/// commit killed before its record's rename landed.
const ROW_THEIRS: &str = "UPDATE t SET b = x'01'";
const ROW1_LANDED: &str = "SELECT b = x'01' FROM t WHERE id = 1";

/// Row 1 marked: the pull of their x'01' (both rows) killed after its commit and before its
/// record's rename, the app set row 1 back to x'00' (against the evidence of row 2, which holds
/// their x'01'); a plain pull finished the record and stopped on it; the app then set x'02'
/// (still marked). The teammate then sets row 2 to x'05', so the settling pull's commit can
/// be seen.
fn marked_row_1(sql_path: bool) -> (Sqld, TempDir) {
    let (sqld, dir) = killed_pull(
        ROW,
        "",
        ROW_THEIRS,
        Moment::BeforeRename(ROW1_LANDED),
        sql_path,
    );
    edit(dir.path(), "UPDATE t SET b = x'00' WHERE id = 1");
    let conflicts = stops(&sqld, dir.path(), &["pull"], sql_path);
    assert_eq!(conflicts.len(), 1, "{conflicts:?}");
    assert!(
        conflicts[0]["note"]
            .as_str()
            .is_some_and(|n| n.starts_with("an interrupted pull left this unsettled")),
        "{conflicts:?}"
    );
    assert!(dir.path().join(".tursync/unsettled.json").exists());
    edit(dir.path(), "UPDATE t SET b = x'02' WHERE id = 1");
    sqld.exec("UPDATE t SET b = x'05' WHERE id = 2");
    (sqld, dir)
}

/// Kills `pull SIDE` at `moment`, then checks that a plain push sends nothing over theirs on a
/// guess, and that `sync SIDE` again settles: row 1 = `b1`, row 2 = x'05' on both sides.
fn settling_pull_killed(side: &str, moment: Moment, b1: u8, sql_path: bool) {
    let (sqld, dir) = marked_row_1(sql_path);
    kill_fresh_pull_at(&sqld, dir.path(), &[side], moment, sql_path);
    let (code, report) = json(&sqld, dir.path(), &["push"], sql_path);
    eprintln!("push after the killed settling pull: {code:?} {report}");
    if side == "--theirs" {
        assert_eq!(
            sqld.query("SELECT b FROM t WHERE id = 1"),
            [[Cell::Blob(vec![1])]],
            "a push after a killed `pull --theirs` sent ours over theirs"
        );
    }
    assert_eq!(
        sqld.query("SELECT b FROM t WHERE id = 2"),
        [[Cell::Blob(vec![5])]],
        "a push after a killed pull wrote over the teammate's later row 2"
    );
    runs(&sqld, dir.path(), &["sync", side], sql_path);
    assert_eq!(
        sqld.query("SELECT b FROM t ORDER BY id"),
        [[Cell::Blob(vec![b1])], [Cell::Blob(vec![5])]],
        "sync {side} after a killed pull {side}"
    );
    settled(&sqld, dir.path());
}

const ROW2_LANDED: &str = "SELECT b = x'05' FROM t WHERE id = 2";

#[test]
fn settling_pull_theirs_killed_after_its_commit() {
    settling_pull_killed("--theirs", Moment::After(ROW2_LANDED), 1, false)
}

#[test]
fn settling_pull_theirs_killed_after_its_commit_over_sql() {
    settling_pull_killed("--theirs", Moment::After(ROW2_LANDED), 1, true)
}

#[test]
fn settling_pull_ours_killed_after_its_commit() {
    settling_pull_killed("--ours", Moment::After(ROW2_LANDED), 2, false)
}

#[test]
fn settling_pull_ours_killed_after_its_commit_over_sql() {
    settling_pull_killed("--ours", Moment::After(ROW2_LANDED), 2, true)
}

#[test]
fn settling_pull_theirs_killed_before_its_commit() {
    settling_pull_killed("--theirs", Moment::Before, 1, false)
}

#[test]
fn settling_pull_ours_killed_before_its_commit() {
    settling_pull_killed("--ours", Moment::Before, 2, false)
}

/// The settling `sync --ours` killed at random moments (a few rounds, over the log and over
/// SQL), the app editing row 2 in between: each time `sync --ours` run again leads forward and
/// nothing is lost (row 1 ours, the teammate's row 3, the app's row 2 edit).
#[test]
fn settling_sync_killed_at_random_moments() {
    let mut rng = Rng::from_time("settling_sync_killed_at_random_moments");
    for round in 0..4 {
        let sql_path = round % 2 == 1;
        let (sqld, dir) = marked_row_1(sql_path);
        sqld.exec("INSERT INTO t VALUES (3, x'03')");
        for kill_round in 0..3 {
            let mut child = sqld
                .tursync_over(dir.path(), "sync", sql_path)
                .arg("--ours")
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn()
                .unwrap();
            let ms = rng.below(400);
            std::thread::sleep(Duration::from_millis(ms));
            eprintln!("round {round}.{kill_round}: killed after {ms} ms");
            kill(&mut child);
        }
        edit(dir.path(), "UPDATE t SET b = x'07' WHERE id = 2");
        runs(&sqld, dir.path(), &["sync", "--ours"], sql_path);
        assert_eq!(
            sqld.query("SELECT b FROM t ORDER BY id"),
            [
                [Cell::Blob(vec![2])],
                [Cell::Blob(vec![7])],
                [Cell::Blob(vec![3])]
            ],
            "round {round} (sql_path {sql_path})"
        );
        settled(&sqld, dir.path());
    }
}

// ---------------------------------------------------------------------------------------
// The marks file itself.

/// The marks file damaged (truncated, emptied, garbage): everything is marked, so the app's
/// unrelated edit of row 2 is held too; a push refuses, `pull --ours` settles, the push sends
/// row 1 and row 2 as ours.
fn damaged_marks(content: &[u8]) {
    let (sqld, dir) = marked_row_1(false);
    let marks = dir.path().join(".tursync/unsettled.json");
    std::fs::write(&marks, content).unwrap();
    edit(dir.path(), "INSERT INTO t VALUES (9, x'09')");
    let conflicts = stops(&sqld, dir.path(), &["push"], false);
    assert!(
        conflicts
            .iter()
            .any(|c| c["key"] == serde_json::json!([{"type": "integer", "value": "9"}])),
        "the app's new row was not held: {conflicts:?}"
    );
    stops(&sqld, dir.path(), &["pull"], false);
    runs(&sqld, dir.path(), &["pull", "--ours"], false);
    runs(&sqld, dir.path(), &["push"], false);
    assert_eq!(
        sqld.query("SELECT b FROM t ORDER BY id"),
        [
            [Cell::Blob(vec![2])],
            [Cell::Blob(vec![5])],
            [Cell::Blob(vec![9])]
        ]
    );
    settled(&sqld, dir.path());
}

#[test]
fn truncated_marks() {
    damaged_marks(b"{\"everything\":false,\"objects\":[],\"rows\":{\"t\":[\"")
}

#[test]
fn empty_marks() {
    damaged_marks(b"")
}

#[test]
fn garbage_marks() {
    damaged_marks(b"\x00\xff not json")
}

/// A pull killed before its commit leaves no marks: the next run finds the commit did not land
/// (the working copy holds x'00' where the teammate's x'01' is, as before the pull) and merges
/// again. No `unsettled.json` is left to lose, and a plain `sync` takes the teammate's x'01',
/// never pushes the stale x'00' over it.
#[test]
fn a_kill_before_the_commit_leaves_no_marks() {
    let (sqld, dir) = killed_pull(ROW, "", ROW_THEIRS, Moment::Before, false);
    runs(&sqld, dir.path(), &["sync"], false);
    assert!(
        !dir.path().join(".tursync/unsettled.json").exists(),
        "a pull that never committed left marks"
    );
    assert_eq!(
        sqld.query("SELECT b FROM t ORDER BY id"),
        [[Cell::Blob(vec![1])], [Cell::Blob(vec![1])]],
        "sync pushed the stale x'00' over the teammate's x'01'"
    );
    settled(&sqld, dir.path());
}

/// Marks are what keeps a teammate's change safe when the killed pull's record is damaged:
/// the base stays as before that pull, the working copy holds their x'01' (its commit landed),
/// and the teammate then sets row 1 back to x'00'. To the merge that is no change of theirs and
/// our x'01' a change of ours; only the marks (everything) make it a conflict, so `sync` stops
/// and the remote keeps x'00'; `sync --theirs` settles. Deleting `unsettled.json` by hand
/// throws this protection away (the stale x'01' would then be pushed over x'00'): that is the
/// user's act, which no command of tursync does or advises, so it is not tested here.
#[test]
fn marks_of_a_damaged_record_hold_a_teammates_set_back() {
    let (sqld, dir) = killed_pull(ROW, "", ROW_THEIRS, Moment::After(ROW1_LANDED), false);
    std::fs::write(dir.path().join(".tursync/pulled.landed"), b"damaged").unwrap();
    sqld.exec("UPDATE t SET b = x'00' WHERE id = 1");
    let conflicts = stops(&sqld, dir.path(), &["sync"], false);
    assert_eq!(
        conflicts.len(),
        1,
        "only row 1 differs from theirs: {conflicts:?}"
    );
    stops(&sqld, dir.path(), &["push"], false);
    assert_eq!(
        sqld.query("SELECT b FROM t WHERE id = 1"),
        [[Cell::Blob(vec![0])]],
        "the teammate's x'00' was overwritten"
    );
    runs(&sqld, dir.path(), &["sync", "--theirs"], false);
    assert_eq!(
        sqld.query("SELECT b FROM t ORDER BY id"),
        [[Cell::Blob(vec![0])], [Cell::Blob(vec![1])]]
    );
    settled(&sqld, dir.path());
}

// ---------------------------------------------------------------------------------------
// watch and sync with marks.

/// `watch` with a marked row (`marked_row_1`): it reports the conflict (once), never pushes
/// ours over theirs, keeps running, and once `pull --theirs` settles it beside the watcher,
/// both sides converge (their x'01' on row 1, the teammate's later x'05' on row 2).
#[test]
fn watch_with_marks_reports_and_waits() {
    let (sqld, dir) = marked_row_1(false);
    let out_path = dir.path().join("watch.out");
    let mut watcher = sqld
        .tursync(dir.path())
        .args(["watch", "--interval", "0.3", "--json"])
        .stdout(std::fs::File::create(&out_path).unwrap())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_secs(4));
    if let Ok(Some(status)) = watcher.try_wait() {
        panic!(
            "watch stopped ({status}): {}",
            std::fs::read_to_string(&out_path).unwrap()
        );
    }
    let lines = std::fs::read_to_string(&out_path).unwrap();
    let conflicts = lines
        .lines()
        .filter(|l| l.contains("\"event\":\"conflict\""))
        .count();
    assert_eq!(
        sqld.query("SELECT b FROM t WHERE id = 1"),
        [[Cell::Blob(vec![1])]],
        "watch pushed over theirs: {lines}"
    );
    assert_eq!(
        conflicts, 1,
        "watch reported the conflict {conflicts} times: {lines}"
    );
    runs(&sqld, dir.path(), &["pull", "--theirs"], false);
    std::thread::sleep(Duration::from_secs(2));
    kill(&mut watcher);
    assert_eq!(
        sqld.query("SELECT b FROM t ORDER BY id"),
        [[Cell::Blob(vec![1])], [Cell::Blob(vec![5])]]
    );
    settled(&sqld, dir.path());
}

// ---------------------------------------------------------------------------------------
// Schema changes on a marked table.

/// Killed after the commit and before the rename, the app adds a column and sets row 1 back to
/// x'00' (marked: row 2 holds their x'01', so the commit landed); the teammate adds another
/// column. `sync SIDE` settles the row (ours x'00' or their x'01'); both columns live on.
fn schema_changes_on_a_marked_table(side: &str, b1: u8, sql_path: bool) {
    let (sqld, dir) = killed_pull(
        ROW,
        "",
        ROW_THEIRS,
        Moment::BeforeRename(ROW1_LANDED),
        sql_path,
    );
    edit(
        dir.path(),
        "ALTER TABLE t ADD COLUMN c TEXT; UPDATE t SET b = x'00', c = 'ours' WHERE id = 1;",
    );
    sqld.exec("ALTER TABLE t ADD COLUMN d INTEGER DEFAULT 7; UPDATE t SET d = 8 WHERE id = 2;");
    stops(&sqld, dir.path(), &["pull"], sql_path);
    runs(&sqld, dir.path(), &["sync", side], sql_path);
    assert_eq!(
        sqld.query("SELECT b FROM t WHERE id = 1"),
        [[Cell::Blob(vec![b1])]],
        "sync {side}"
    );
    assert_eq!(
        sqld.query("SELECT d FROM t ORDER BY id"),
        [[Cell::Integer(7)], [Cell::Integer(8)]],
        "the teammate's column or row 2 was lost"
    );
    settled(&sqld, dir.path());
}

#[test]
fn schema_changes_on_a_marked_table_ours() {
    schema_changes_on_a_marked_table("--ours", 0, false)
}

/// Killed after the commit and its rename: the app's new column and its edit of row 1 are
/// ours, the teammate's column theirs; a plain sync keeps both columns and the app's x'02'.
#[test]
fn schema_changes_after_a_landed_pull_are_ours() {
    let (sqld, dir) = killed_pull(ROW, "", ROW_THEIRS, Moment::After(ROW1_LANDED), false);
    edit(
        dir.path(),
        "ALTER TABLE t ADD COLUMN c TEXT; UPDATE t SET b = x'02', c = 'ours' WHERE id = 1;",
    );
    sqld.exec("ALTER TABLE t ADD COLUMN d INTEGER DEFAULT 7; UPDATE t SET d = 8 WHERE id = 2;");
    runs(&sqld, dir.path(), &["sync"], false);
    assert_eq!(
        sqld.query("SELECT id, b, c, d FROM t ORDER BY id"),
        [
            [
                Cell::Integer(1),
                Cell::Blob(vec![2]),
                Cell::text("ours"),
                Cell::Integer(7)
            ],
            [
                Cell::Integer(2),
                Cell::Blob(vec![1]),
                Cell::Null,
                Cell::Integer(8)
            ]
        ]
    );
    settled(&sqld, dir.path());
}

#[test]
fn schema_changes_on_a_marked_table_theirs() {
    schema_changes_on_a_marked_table("--theirs", 1, false)
}

#[test]
fn schema_changes_on_a_marked_table_theirs_over_sql() {
    schema_changes_on_a_marked_table("--theirs", 1, true)
}

/// After the commit (and its rename), the app drops a column of the table the pull changed (a
/// rebuild). The commit landed, so the drop is ours: nothing is marked, and `sync SIDE` merges
/// it as the unkilled control does (`app_drops_a_column_not_killed_ours`): their x'01' on row 1
/// and the teammate's later row 2 edit survive either way.
fn app_drops_a_column_after_the_kill(side: &str) {
    let (sqld, dir) = killed_pull(
        "CREATE TABLE t(id INTEGER PRIMARY KEY, b BLOB, e TEXT);
         INSERT INTO t VALUES (1, x'00', 'e1'), (2, x'00', 'e2');",
        "",
        "UPDATE t SET b = x'01' WHERE id = 1",
        Moment::After("SELECT b = x'01' FROM t WHERE id = 1"),
        false,
    );
    edit(dir.path(), "ALTER TABLE t DROP COLUMN e");
    sqld.exec("UPDATE t SET b = x'05' WHERE id = 2");
    runs(&sqld, dir.path(), &["sync", side], false);
    assert!(
        !dir.path().join(".tursync/unsettled.json").exists(),
        "a landed pull left marks"
    );
    assert_eq!(
        sqld.query("SELECT id, b FROM t ORDER BY id"),
        [
            [Cell::Integer(1), Cell::Blob(vec![1])],
            [Cell::Integer(2), Cell::Blob(vec![5])]
        ],
        "sync {side}"
    );
    settled(&sqld, dir.path());
}

#[test]
fn app_drops_a_column_after_the_kill_theirs() {
    app_drops_a_column_after_the_kill("--theirs")
}

#[test]
fn app_drops_a_column_after_the_kill_ours() {
    app_drops_a_column_after_the_kill("--ours")
}

// ---------------------------------------------------------------------------------------
// Foreign keys.

const FK: &str = "PRAGMA foreign_keys = ON;
                  CREATE TABLE p(id INTEGER PRIMARY KEY, name TEXT);
                  CREATE TABLE c(id INTEGER PRIMARY KEY, pid INTEGER REFERENCES p(id));
                  INSERT INTO p VALUES (1, 'a'), (2, 'b');";

/// A pull of the teammate's rename of parent 1 killed before its commit (the next pull merges
/// again: our delete against their rename is an ordinary conflict); the app deletes parent 1;
/// the teammate then adds a child of parent 1. `--ours` keeps our delete: the remote
/// must never hold a child pointing at no parent. `--theirs` brings parent 1 back with its
/// child. Either way both sides end equal.
fn marked_parent_deleted_by_us(side: &str) {
    let (sqld, dir) = killed_pull(
        FK,
        "",
        "UPDATE p SET name = 'renamed' WHERE id = 1",
        Moment::Before,
        false,
    );
    edit(
        dir.path(),
        "PRAGMA foreign_keys = ON; DELETE FROM p WHERE id = 1;",
    );
    sqld.exec("INSERT INTO c VALUES (5, 1)");
    stops(&sqld, dir.path(), &["pull"], false);
    stops(&sqld, dir.path(), &["push"], false);
    let (code, report) = json(&sqld, dir.path(), &["sync", side], false);
    eprintln!("sync {side}: {code:?} {report}");
    let orphans = "SELECT count(*) FROM c WHERE pid NOT IN (SELECT id FROM p)";
    assert_eq!(
        sqld.query(orphans),
        [[Cell::Integer(0)]],
        "an orphan on the remote"
    );
    assert_eq!(
        local_query(&dir.path().join("working_copy.db"), orphans),
        [[Cell::Integer(0)]],
        "an orphan in the working copy"
    );
    if side == "--theirs" {
        assert_eq!(code, Some(0), "{report}");
        assert_eq!(
            sqld.query("SELECT name FROM p ORDER BY id"),
            texts(&["renamed", "b"])
        );
        assert_eq!(sqld.query("SELECT count(*) FROM c"), [[Cell::Integer(1)]]);
    } else if code != Some(0) {
        // Stopped on the child: a documented way forward must settle it.
        runs(
            &sqld,
            dir.path(),
            &["sync", "--theirs", "c", "--ours", "p"],
            false,
        );
    }
    settled(&sqld, dir.path());
}

#[test]
fn marked_parent_deleted_by_us_then_ours() {
    marked_parent_deleted_by_us("--ours")
}

#[test]
fn marked_parent_deleted_by_us_then_theirs() {
    marked_parent_deleted_by_us("--theirs")
}

// ---------------------------------------------------------------------------------------
// Controls and retries.

/// The unkilled control of `app_drops_a_column_after_the_kill`: the app drops a column, the
/// teammate changes rows 1 and 2; `sync --ours` keeps the drop and both their rows.
#[test]
fn app_drops_a_column_not_killed_ours() {
    let sqld = Sqld::start();
    sqld.exec(
        "CREATE TABLE t(id INTEGER PRIMARY KEY, b BLOB, e TEXT);
         INSERT INTO t VALUES (1, x'00', 'e1'), (2, x'00', 'e2');",
    );
    let dir = tempdir();
    ok(&sqld, dir.path(), &["init", "--url", &sqld.url]);
    sqld.exec("UPDATE t SET b = x'01' WHERE id = 1");
    ok(&sqld, dir.path(), &["pull"]);
    edit(dir.path(), "ALTER TABLE t DROP COLUMN e");
    sqld.exec("UPDATE t SET b = x'05' WHERE id = 2");
    let (code, report) = json(&sqld, dir.path(), &["sync"], false);
    eprintln!("sync: {code:?} {report}");
    if code != Some(0) {
        runs(&sqld, dir.path(), &["sync", "--ours"], false);
    }
    assert_eq!(
        sqld.query("SELECT id, b FROM t ORDER BY id"),
        [
            [Cell::Integer(1), Cell::Blob(vec![1])],
            [Cell::Integer(2), Cell::Blob(vec![5])]
        ]
    );
    settled(&sqld, dir.path());
}

/// A `pull --ours` settling an ordinary conflict (row 1 changed on both sides), killed before
/// its commit, then retried as `sync --ours`: the teammate's change of row 2, which conflicts
/// with nothing, must survive the retry as it survives the unkilled run.
fn a_pull_ours_then_retried(killed: bool, sql_path: bool) {
    let (sqld, dir) = killed_pull_or_not(killed, sql_path);
    runs(&sqld, dir.path(), &["sync", "--ours"], sql_path);
    assert_eq!(
        sqld.query("SELECT b FROM t ORDER BY id"),
        [[Cell::Blob(vec![2])], [Cell::Blob(vec![5])]],
        "killed {killed}, sql_path {sql_path}: the teammate's row 2 was reverted"
    );
    settled(&sqld, dir.path());
}

fn killed_pull_or_not(killed: bool, sql_path: bool) -> (Sqld, TempDir) {
    let sqld = Sqld::start();
    sqld.exec(ROW);
    let dir = tempdir();
    ok(&sqld, dir.path(), &["init", "--url", &sqld.url]);
    edit(dir.path(), "UPDATE t SET b = x'02' WHERE id = 1");
    sqld.exec("UPDATE t SET b = x'01' WHERE id = 1; UPDATE t SET b = x'05' WHERE id = 2;");
    let conflicts = stops(&sqld, dir.path(), &["pull"], sql_path);
    assert_eq!(conflicts.len(), 1, "{conflicts:?}");
    if killed {
        kill_fresh_pull_at(&sqld, dir.path(), &["--ours"], Moment::Before, sql_path);
    }
    (sqld, dir)
}

#[test]
fn a_pull_ours_killed_before_its_commit_then_retried() {
    a_pull_ours_then_retried(true, false)
}

#[test]
fn a_pull_ours_killed_before_its_commit_then_retried_over_sql() {
    a_pull_ours_then_retried(true, true)
}

#[test]
fn a_pull_ours_not_killed() {
    a_pull_ours_then_retried(false, false)
}

/// After a `pull --ours` killed before its commit, a plain pull reports what it stops on:
/// row 2, which only the teammate changed, must not be offered as a conflict whose `ours`
/// is the stale x'00' (a user reading `ours` as their edit would keep it).
#[test]
fn a_pull_ours_killed_before_its_commit_reports_only_the_real_conflict() {
    let (sqld, dir) = killed_pull_or_not(true, false);
    let conflicts = stops(&sqld, dir.path(), &["pull"], false);
    let keys: Vec<_> = conflicts.iter().map(|c| c["key"].clone()).collect();
    assert_eq!(
        keys,
        [serde_json::json!([{"type": "integer", "value": "1"}])],
        "{conflicts:?}"
    );
}

// ---------------------------------------------------------------------------------------
// Taking rows back (`--theirs` on a marked row).

/// A table with a hidden rowid (no INTEGER PRIMARY KEY): killed after the commit and before the
/// rename, the app deletes the row the pull changed. No row the merge wrote holds what it
/// wrote, so the commit is taken as not landed and the next pull merges again: our delete
/// against their update is an ordinary conflict, and `--theirs` takes the row back, under its
/// own rowid, so both sides stay the same file.
fn hidden_rowid_row_deleted_after_the_kill(sql_path: bool) {
    let (sqld, dir) = killed_pull(
        "CREATE TABLE h(v TEXT, b BLOB); INSERT INTO h VALUES ('one', x'00'), ('two', x'00');
         DELETE FROM h WHERE v = 'one'; INSERT INTO h VALUES ('three', x'00');",
        "",
        "UPDATE h SET b = x'01' WHERE v = 'two'",
        Moment::BeforeRename("SELECT b = x'01' FROM h WHERE v = 'two'"),
        sql_path,
    );
    edit(dir.path(), "DELETE FROM h WHERE v = 'two'");
    stops(&sqld, dir.path(), &["pull"], sql_path);
    runs(&sqld, dir.path(), &["sync", "--theirs"], sql_path);
    assert_eq!(
        sqld.query("SELECT rowid, v, b FROM h ORDER BY rowid"),
        [
            [Cell::Integer(2), Cell::text("two"), Cell::Blob(vec![1])],
            [Cell::Integer(3), Cell::text("three"), Cell::Blob(vec![0])]
        ]
    );
    settled(&sqld, dir.path());
}

#[test]
fn hidden_rowid_row_deleted_before_the_rename_over_the_log() {
    hidden_rowid_row_deleted_after_the_kill(false)
}

#[test]
fn hidden_rowid_row_deleted_before_the_rename_over_sql() {
    hidden_rowid_row_deleted_after_the_kill(true)
}

/// Taking a row back collides under a UNIQUE constraint with a new row of ours: the teammate
/// renamed row 1 to 'b', the app (after the commit, before the rename) renamed it to 'c' and
/// added row 2 named 'b' (so the commit reads as not landed: the merge is done again, row 1 an
/// ordinary conflict, as in `taking_a_row_back_under_unique_not_killed`). `--theirs` is
/// documented for UNIQUE conflicts (our row gives way): it must settle, not fail, and both
/// sides end equal with their 'b' on row 1.
#[test]
fn taking_a_row_back_collides_under_unique() {
    let (sqld, dir) = killed_pull(
        "CREATE TABLE u(id INTEGER PRIMARY KEY, name TEXT UNIQUE); INSERT INTO u VALUES (1, 'a');",
        "",
        "UPDATE u SET name = 'b' WHERE id = 1",
        Moment::BeforeRename("SELECT name = 'b' FROM u WHERE id = 1"),
        false,
    );
    edit(
        dir.path(),
        "UPDATE u SET name = 'c' WHERE id = 1; INSERT INTO u VALUES (2, 'b');",
    );
    stops(&sqld, dir.path(), &["pull"], false);
    let (code, report) = json(&sqld, dir.path(), &["sync", "--theirs"], false);
    if code != Some(0) {
        // The way forward the other side offers must at least work.
        let (ours, ours_report) = json(&sqld, dir.path(), &["sync", "--ours"], false);
        panic!("sync --theirs: {code:?} {report}\nthen sync --ours: {ours:?} {ours_report}");
    }
    assert_eq!(sqld.query("SELECT name FROM u WHERE id = 1"), texts(&["b"]));
    settled(&sqld, dir.path());
}

/// A row the app edits after a landed pull (killed after the commit and its rename: the edit
/// is ours, not marked), which the teammate deletes later: an ordinary update/delete conflict.
/// `--theirs` takes their delete (both sides without row 1), `--ours` keeps our x'02' (the
/// push sends it back). Row 2 untouched either way.
fn marked_row_deleted_by_the_teammate(side: &str) {
    let (sqld, dir) = killed_pull(
        ROW,
        "",
        "UPDATE t SET b = x'01' WHERE id = 1",
        Moment::After("SELECT b = x'01' FROM t WHERE id = 1"),
        false,
    );
    edit(dir.path(), "UPDATE t SET b = x'02' WHERE id = 1");
    sqld.exec("DELETE FROM t WHERE id = 1");
    stops(&sqld, dir.path(), &["pull"], false);
    runs(&sqld, dir.path(), &["sync", side], false);
    let want: &[[Cell; 2]] = if side == "--theirs" {
        &[[Cell::Integer(2), Cell::Blob(vec![0])]]
    } else {
        &[
            [Cell::Integer(1), Cell::Blob(vec![2])],
            [Cell::Integer(2), Cell::Blob(vec![0])],
        ]
    };
    assert_eq!(
        sqld.query("SELECT id, b FROM t ORDER BY id"),
        want,
        "sync {side}"
    );
    settled(&sqld, dir.path());
}

#[test]
fn marked_row_deleted_by_the_teammate_theirs() {
    marked_row_deleted_by_the_teammate("--theirs")
}

#[test]
fn marked_row_deleted_by_the_teammate_ours() {
    marked_row_deleted_by_the_teammate("--ours")
}

/// The recovery itself (finishing the killed pull's record, first thing in a push or a pull)
/// killed at random moments, a few times in a row; the killed pull's commit landed but not its
/// rename, and the app set row 1 back to x'00' (marked, row 2 telling the commit landed). No
/// killed command may change the remote, a push then refuses the marked row, and `sync --ours`
/// settles: ours x'00' on row 1, the teammate's later x'05' on row 2.
#[test]
fn the_recovery_killed_at_random_moments() {
    let mut rng = Rng::from_time("the_recovery_killed_at_random_moments");
    for round in 0..4 {
        let sql_path = round % 2 == 1;
        let (sqld, dir) = killed_pull(
            ROW,
            "",
            ROW_THEIRS,
            Moment::BeforeRename(ROW1_LANDED),
            sql_path,
        );
        edit(dir.path(), "UPDATE t SET b = x'00' WHERE id = 1");
        sqld.exec("UPDATE t SET b = x'05' WHERE id = 2");
        for kill_round in 0..4 {
            let command = ["push", "pull"][kill_round % 2];
            let mut child = sqld
                .tursync_over(dir.path(), command, sql_path)
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn()
                .unwrap();
            let us = rng.below(40_000);
            std::thread::sleep(Duration::from_micros(us));
            eprintln!("round {round}.{kill_round}: {command} killed after {us} us");
            kill(&mut child);
        }
        assert_eq!(
            sqld.query("SELECT b FROM t ORDER BY id"),
            [[Cell::Blob(vec![1])], [Cell::Blob(vec![5])]],
            "round {round}: a killed command changed the remote"
        );
        let (code, report) = json(&sqld, dir.path(), &["push"], sql_path);
        assert_eq!(code, Some(3), "round {round}: {report}");
        runs(&sqld, dir.path(), &["sync", "--ours"], sql_path);
        assert_eq!(
            sqld.query("SELECT b FROM t ORDER BY id"),
            [[Cell::Blob(vec![0])], [Cell::Blob(vec![5])]],
            "round {round} (sql_path {sql_path})"
        );
        settled(&sqld, dir.path());
    }
}

/// A WITHOUT ROWID table whose text key is NOCASE: after the commit and before the rename the
/// app replaces the pulled row 'a' by 'A' (the same key to SQLite), so the commit reads as not
/// landed and the merge is done again (row 'a' an ordinary conflict, as in
/// `nocase_key_replaced_not_killed`). Settling `--theirs` must not fail on the key and must
/// end with both sides equal; `--ours` pushes 'A'.
fn nocase_key_replaced_after_the_kill(side: &str) {
    let (sqld, dir) = killed_pull(
        "CREATE TABLE w(k TEXT PRIMARY KEY COLLATE NOCASE, v TEXT) WITHOUT ROWID;
         INSERT INTO w VALUES ('a', 'base'), ('b', 'base');",
        "",
        "UPDATE w SET v = 'theirs' WHERE k = 'a'",
        Moment::BeforeRename("SELECT v = 'theirs' FROM w WHERE k = 'a'"),
        false,
    );
    edit(
        dir.path(),
        "DELETE FROM w WHERE k = 'a'; INSERT INTO w VALUES ('A', 'ours');",
    );
    stops(&sqld, dir.path(), &["pull"], false);
    let (code, report) = json(&sqld, dir.path(), &["sync", side], false);
    assert_eq!(code, Some(0), "sync {side}: {report}");
    let want = if side == "--theirs" {
        [Cell::text("a"), Cell::text("theirs")]
    } else {
        [Cell::text("A"), Cell::text("ours")]
    };
    assert_eq!(sqld.query("SELECT k, v FROM w WHERE k = 'a'"), [want]);
    settled(&sqld, dir.path());
}

#[test]
fn nocase_key_replaced_before_the_rename_theirs() {
    nocase_key_replaced_after_the_kill("--theirs")
}

#[test]
fn nocase_key_replaced_before_the_rename_ours() {
    nocase_key_replaced_after_the_kill("--ours")
}

/// The unkilled controls of the take-back attacks: the same edits with no pull killed, as an
/// ordinary conflict, settled by `sync --theirs`.
fn unkilled_theirs(schema: &str, theirs: &str, ours: &str, check: &str, want: &[Vec<Cell>]) {
    let sqld = Sqld::start();
    sqld.exec(schema);
    let dir = tempdir();
    ok(&sqld, dir.path(), &["init", "--url", &sqld.url]);
    sqld.exec(theirs);
    edit(dir.path(), ours);
    let (code, report) = json(&sqld, dir.path(), &["sync", "--theirs"], false);
    assert_eq!(code, Some(0), "sync --theirs: {report}");
    assert_eq!(sqld.query(check), want);
    settled(&sqld, dir.path());
}

#[test]
fn taking_a_row_back_under_unique_not_killed() {
    unkilled_theirs(
        "CREATE TABLE u(id INTEGER PRIMARY KEY, name TEXT UNIQUE); INSERT INTO u VALUES (1, 'a');",
        "UPDATE u SET name = 'b' WHERE id = 1",
        "UPDATE u SET name = 'c' WHERE id = 1; INSERT INTO u VALUES (2, 'b');",
        "SELECT name FROM u WHERE id = 1",
        &texts(&["b"]),
    )
}

#[test]
fn nocase_key_replaced_not_killed() {
    unkilled_theirs(
        "CREATE TABLE w(k TEXT PRIMARY KEY COLLATE NOCASE, v TEXT) WITHOUT ROWID;
         INSERT INTO w VALUES ('a', 'base'), ('b', 'base');",
        "UPDATE w SET v = 'theirs' WHERE k = 'a'",
        "DELETE FROM w WHERE k = 'a'; INSERT INTO w VALUES ('A', 'ours');",
        "SELECT k, v FROM w WHERE k = 'a'",
        &[vec![Cell::text("a"), Cell::text("theirs")]],
    )
}

/// A damaged record marks everything; the app then adds a column, the teammate adds another
/// and changes row 2. `sync --ours` keeps our column: the teammate's column and their row 2
/// change, which no change of ours touches, must survive (as they do in an ordinary merge of
/// columns added on both sides).
fn everything_marked_then_columns_on_both_sides(side: &str) {
    let (sqld, dir) = killed_pull(
        ROW,
        "",
        "UPDATE t SET b = x'01' WHERE id = 1",
        Moment::After("SELECT b = x'01' FROM t WHERE id = 1"),
        false,
    );
    std::fs::write(dir.path().join(".tursync/pulled.landed"), b"damaged").unwrap();
    edit(dir.path(), "ALTER TABLE t ADD COLUMN c TEXT DEFAULT 'c'");
    sqld.exec(
        "ALTER TABLE t ADD COLUMN d INTEGER DEFAULT 7; UPDATE t SET b = x'05', d = 8 WHERE id = 2;",
    );
    stops(&sqld, dir.path(), &["pull"], false);
    runs(&sqld, dir.path(), &["sync", side], false);
    let all = sqld.query("SELECT * FROM t ORDER BY id");
    assert!(
        !sqld
            .query("SELECT 1 FROM pragma_table_info('t') WHERE name = 'd'")
            .is_empty(),
        "sync {side} dropped the teammate's column d: {all:?}"
    );
    assert_eq!(
        sqld.query("SELECT id, b, d FROM t ORDER BY id"),
        [
            [Cell::Integer(1), Cell::Blob(vec![1]), Cell::Integer(7)],
            [Cell::Integer(2), Cell::Blob(vec![5]), Cell::Integer(8)]
        ],
        "sync {side}"
    );
    settled(&sqld, dir.path());
}

#[test]
fn everything_marked_then_columns_on_both_sides_ours() {
    everything_marked_then_columns_on_both_sides("--ours")
}

#[test]
fn everything_marked_then_columns_on_both_sides_theirs() {
    everything_marked_then_columns_on_both_sides("--theirs")
}
