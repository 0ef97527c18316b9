//! Attacks on the recovery of a pull killed after its working copy's commit and before the
//! base took their changes (`.tursync/pulled.landed`). Each kills a pull at that moment
//! (`crate::pull::pull_killed_after_its_commit`: a teammate set row 1's b to x'01'), then
//! disturbs the state, and checks that no teammate's row is lost and that commands go on.
//!
//! Whether the killed pull's commit landed cannot be read off the working copy for certain
//! (the app may have written since), so where the state after the kill is the same as after a
//! pull killed *before* its commit (`pull_killed_before_its_commit`), tursync must answer as
//! that twin needs: a row it cannot place is a conflict to settle, never a guess.

use crate::common::*;
use crate::pull::{
    pull_killed, pull_killed_after_its_commit, pull_killed_before_its_commit,
    stops_on_row_1_then_settles, two_rows, UNSETTLED,
};

const MIGRATION: &str = "ALTER TABLE t ADD COLUMN c TEXT DEFAULT 'new'; CREATE INDEX t_c ON t(c);";

/// After the kill the teammate sets row 1 back to x'00'; then pull, push: the remote must
/// still read x'00' and both sides be the same.
fn teammate_sets_back_then_sync(sqld: &Sqld, dir: &std::path::Path, sql_path: bool) {
    sqld.exec("UPDATE t SET b = x'00' WHERE id = 1");
    run_ok(&mut sqld.tursync_over(dir, "pull", sql_path));
    run_ok(&mut sqld.tursync_over(dir, "push", sql_path));
    assert_eq!(
        sqld.query("SELECT b FROM t WHERE id = 1"),
        vec![vec![Cell::Blob(vec![0])]],
        "the teammate's x'00' was overwritten (sql_path {sql_path})"
    );
    settled(sqld, dir);
}

/// The app edits the pulled row after the kill: its edit is made after their x'01' landed, so
/// it is ours, pushed without a conflict. `status` says what the kill left, before the pull
/// finishes it.
fn app_edits_the_pulled_row_after_the_kill(sql_path: bool) {
    let (sqld, dir) = pull_killed_after_its_commit("UPDATE t SET b = x'01' WHERE id = 1", sql_path);
    edit(dir.path(), "UPDATE t SET b = x'02' WHERE id = 1");
    let interrupted = |dir: &std::path::Path| {
        let out = sqld
            .tursync(dir)
            .args(["status", "--json"])
            .output()
            .unwrap();
        let status: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        status["interrupted"].as_array().unwrap().clone()
    };
    let before = interrupted(dir.path());
    assert_eq!(before.len(), 1, "{before:?}");
    assert!(
        before[0]
            .as_str()
            .unwrap()
            .starts_with("a pull, after its commit"),
        "{before:?}"
    );
    run_ok(&mut sqld.tursync_over(dir.path(), "pull", sql_path));
    run_ok(&mut sqld.tursync_over(dir.path(), "push", sql_path));
    assert_eq!(
        sqld.query("SELECT b FROM t WHERE id = 1"),
        vec![vec![Cell::Blob(vec![2])]],
        "the app's edit did not arrive (sql_path {sql_path})"
    );
    assert_same_database(&sqld, &dir.path().join("working_copy.db"));
    assert_nothing_pending(dir.path());
    assert_eq!(interrupted(dir.path()), Vec::<serde_json::Value>::new());
}

/// The twin of the attack above: the pull is killed before its commit, so the app's x'02'
/// never saw their x'01'. A pull must stop on the row (a pull that took x'02' as settled would
/// push it over theirs): the commit did not land, so it is an ordinary conflict, and
/// `--theirs` takes theirs.
fn app_edits_a_row_of_a_pull_killed_before_its_commit(sql_path: bool) {
    let (sqld, dir) =
        pull_killed_before_its_commit("UPDATE t SET b = x'01' WHERE id = 1", sql_path);
    assert_eq!(
        local_query(
            &dir.path().join("working_copy.db"),
            "SELECT b FROM t WHERE id = 1"
        ),
        [[Cell::Blob(vec![0])]],
        "the killed pull's commit landed"
    );
    edit(dir.path(), "UPDATE t SET b = x'02' WHERE id = 1");
    stops_on_row_1_then_settles(&sqld, dir.path(), sql_path, "--theirs", 1, None);
}

#[test]
fn app_edits_a_row_of_a_pull_killed_before_its_commit_over_the_log() {
    app_edits_a_row_of_a_pull_killed_before_its_commit(false)
}

#[test]
fn app_edits_a_row_of_a_pull_killed_before_its_commit_over_sql() {
    app_edits_a_row_of_a_pull_killed_before_its_commit(true)
}

#[test]
fn app_edits_the_pulled_row_after_the_kill_over_the_log() {
    app_edits_the_pulled_row_after_the_kill(false)
}

#[test]
fn app_edits_the_pulled_row_after_the_kill_over_sql() {
    app_edits_the_pulled_row_after_the_kill(true)
}

fn a_push_runs_first_after_the_kill(sql_path: bool) {
    let (sqld, dir) = pull_killed_after_its_commit("UPDATE t SET b = x'01' WHERE id = 1", sql_path);
    sqld.exec("UPDATE t SET b = x'00' WHERE id = 1");
    // May refuse (remote moved); must not write x'01' back.
    let _ = sqld
        .tursync_over(dir.path(), "push", sql_path)
        .output()
        .unwrap();
    assert_eq!(
        sqld.query("SELECT b FROM t WHERE id = 1"),
        vec![vec![Cell::Blob(vec![0])]],
        "the push wrote the pulled copy back over the teammate's (sql_path {sql_path})"
    );
    teammate_sets_back_then_sync(&sqld, dir.path(), sql_path);
}

#[test]
fn a_push_runs_first_after_the_kill_over_the_log() {
    a_push_runs_first_after_the_kill(false)
}

#[test]
fn a_push_runs_first_after_the_kill_over_sql() {
    a_push_runs_first_after_the_kill(true)
}

fn the_teammate_drops_the_table_after_the_kill(sql_path: bool) {
    let (sqld, dir) = pull_killed_after_its_commit("UPDATE t SET b = x'01' WHERE id = 1", sql_path);
    sqld.exec(
        "DROP TABLE t; CREATE TABLE u(id INTEGER PRIMARY KEY, v); INSERT INTO u VALUES (1, 'x');",
    );
    run_ok(&mut sqld.tursync_over(dir.path(), "pull", sql_path));
    run_ok(&mut sqld.tursync_over(dir.path(), "push", sql_path));
    assert_same_database(&sqld, &dir.path().join("working_copy.db"));
    assert_nothing_pending(dir.path());
}

#[test]
fn the_teammate_drops_the_table_after_the_kill_over_the_log() {
    the_teammate_drops_the_table_after_the_kill(false)
}

#[test]
fn the_teammate_drops_the_table_after_the_kill_over_sql() {
    the_teammate_drops_the_table_after_the_kill(true)
}

/// A damaged record: what the pull brought cannot be read, so every difference of ours is
/// unsettled. The teammate then sets row 1 back: a pull and a push stop on row 1 (ours x'01'
/// may be the pull's copy or our edit) with the teammate's x'00' untouched, and `--theirs`
/// settles it. Before: the pull failed, and its advice (delete the record, then `sync`)
/// pushed x'01' back over the teammate's x'00'.
fn a_damaged_pull_record_then_its_advice(sql_path: bool) {
    let (sqld, dir) = pull_killed_after_its_commit("UPDATE t SET b = x'01' WHERE id = 1", sql_path);
    let rec = dir.path().join(".tursync/pulled.landed");
    std::fs::write(&rec, b"tursync pull rec").unwrap();
    sqld.exec("UPDATE t SET b = x'00' WHERE id = 1");
    stops_on_row_1_then_settles(&sqld, dir.path(), sql_path, "--theirs", 0, Some(UNSETTLED));
}

#[test]
fn a_damaged_pull_record_then_its_advice_over_the_log() {
    a_damaged_pull_record_then_its_advice(false)
}

#[test]
fn a_damaged_pull_record_then_its_advice_over_sql() {
    a_damaged_pull_record_then_its_advice(true)
}

/// A migration pull whose kept theirs is gone: `pulled.db` deleted (SQL), or `mirror.json`
/// and the spool whose pages the mirror had not written yet deleted (log). What it brought
/// cannot be read again, so every difference of ours is unsettled, as for a damaged record.
/// Before: the base stayed behind, and the push wrote x'01' back over the teammate's x'00'.
fn a_migration_pull_whose_kept_theirs_is_gone(sql_path: bool) {
    let change = format!("{MIGRATION} UPDATE t SET b = x'01' WHERE id = 1;");
    let (sqld, dir) = pull_killed_after_its_commit(&change, sql_path);
    let gone: &[&str] = if sql_path {
        &[".tursync/pulled.db"]
    } else {
        &[".tursync/mirror.json", ".tursync/mirror.spool"]
    };
    for gone in gone {
        let gone = dir.path().join(gone);
        if gone.exists() {
            std::fs::remove_file(&gone).unwrap();
        } else {
            eprintln!("{} was not there", gone.display());
        }
    }
    sqld.exec("UPDATE t SET b = x'00' WHERE id = 1");
    stops_on_row_1_then_settles(&sqld, dir.path(), sql_path, "--theirs", 0, Some(UNSETTLED));
}

/// As above over the log, but only `mirror.json` deleted: the spool the killed pull left
/// still holds what it brought, so the next pull reads theirs from it, takes the teammate's
/// x'00', and nothing is unsettled.
#[test]
fn a_migration_pull_whose_mirror_json_is_gone_reads_theirs_from_its_spool() {
    let change = format!("{MIGRATION} UPDATE t SET b = x'01' WHERE id = 1;");
    let (sqld, dir) = pull_killed_after_its_commit(&change, false);
    let spool = dir.path().join(".tursync/mirror.spool");
    assert!(spool.exists(), "the killed pull left no spool");
    std::fs::remove_file(dir.path().join(".tursync/mirror.json")).unwrap();
    teammate_sets_back_then_sync(&sqld, dir.path(), false);
}

#[test]
fn a_migration_pull_whose_kept_theirs_is_gone_over_the_log() {
    a_migration_pull_whose_kept_theirs_is_gone(false)
}

#[test]
fn a_migration_pull_whose_kept_theirs_is_gone_over_sql() {
    a_migration_pull_whose_kept_theirs_is_gone(true)
}

/// A migration pull killed after its commit, then the app runs a migration of its own on the
/// same table.
fn the_app_runs_another_migration_after_the_kill(sql_path: bool) {
    let change = format!("{MIGRATION} UPDATE t SET b = x'01' WHERE id = 1;");
    let (sqld, dir) = pull_killed_after_its_commit(&change, sql_path);
    edit(dir.path(), "ALTER TABLE t ADD COLUMN d INTEGER;");
    teammate_sets_back_then_sync(&sqld, dir.path(), sql_path);
}

#[test]
fn the_app_runs_another_migration_after_the_kill_over_the_log() {
    the_app_runs_another_migration_after_the_kill(false)
}

#[test]
fn the_app_runs_another_migration_after_the_kill_over_sql() {
    the_app_runs_another_migration_after_the_kill(true)
}

/// A migration that adds a WITHOUT ROWID table with a TEXT key, and a rowid table with a TEXT
/// key; the teammate then edits their rows back and forth.
fn a_migration_with_text_keys_and_without_rowid(sql_path: bool) {
    let change = "CREATE TABLE w(k TEXT PRIMARY KEY, v) WITHOUT ROWID;
         INSERT INTO w VALUES ('a', 1), ('b', 1);
         CREATE TABLE s(k TEXT PRIMARY KEY, v);
         INSERT INTO s VALUES ('a', 1), ('b', 1);
         UPDATE t SET b = x'01' WHERE id = 1;";
    let (sqld, dir) = pull_killed_after_its_commit(change, sql_path);
    sqld.exec("UPDATE w SET v = 2 WHERE k = 'a'; DELETE FROM s WHERE k = 'b';");
    teammate_sets_back_then_sync(&sqld, dir.path(), sql_path);
    assert_eq!(
        sqld.query("SELECT k, v FROM w ORDER BY k"),
        vec![
            vec![Cell::Text("a".into()), Cell::Integer(2)],
            vec![Cell::Text("b".into()), Cell::Integer(1)]
        ]
    );
}

#[test]
fn a_migration_with_text_keys_and_without_rowid_over_the_log() {
    a_migration_with_text_keys_and_without_rowid(false)
}

#[test]
fn a_migration_with_text_keys_and_without_rowid_over_sql() {
    a_migration_with_text_keys_and_without_rowid(true)
}

/// As above, then the user settles the (false) schema conflict as its report says, with
/// `tursync sync --ours`: the teammate's x'00' must survive, and the app's column be there.
fn another_migration_settled_ours(sql_path: bool) {
    let change = format!("{MIGRATION} UPDATE t SET b = x'01' WHERE id = 1;");
    let (sqld, dir) = pull_killed_after_its_commit(&change, sql_path);
    edit(dir.path(), "ALTER TABLE t ADD COLUMN d INTEGER;");
    sqld.exec("UPDATE t SET b = x'00' WHERE id = 1");
    let out = sqld
        .tursync_over(dir.path(), "pull", sql_path)
        .output()
        .unwrap();
    eprintln!("pull: {}\n{}", out.status, text(&out));
    run_ok(
        sqld.tursync_over(dir.path(), "sync", sql_path)
            .arg("--ours"),
    );
    assert_eq!(
        sqld.query("SELECT b FROM t WHERE id = 1"),
        vec![vec![Cell::Blob(vec![0])]],
        "the teammate's x'00' was overwritten (sql_path {sql_path})"
    );
    assert_same_database(&sqld, &dir.path().join("working_copy.db"));
    assert_nothing_pending(dir.path());
}

#[test]
fn another_migration_settled_ours_over_the_log() {
    another_migration_settled_ours(false)
}

#[test]
fn another_migration_settled_ours_over_sql() {
    another_migration_settled_ours(true)
}

/// A pull (with `extra` arguments) killed right after its working copy's commit, after `app`
/// ran on the working copy.
fn killed_pull_after(app: &str, change: &str, extra: &[&str], sql_path: bool) -> (Sqld, TempDir) {
    pull_killed(app, change, extra, Moment::After("SELECT 1"), sql_path)
}

/// The app made the teammate's very change (row 2 to x'01') before the pull: identical rows on
/// both sides. The teammate then sets row 2 back to x'00'.
fn identical_rows_on_both_sides(sql_path: bool) {
    let (sqld, dir) = killed_pull_after(
        "UPDATE t SET b = x'01' WHERE id = 2",
        "UPDATE t SET b = x'01' WHERE id IN (1, 2)",
        &[],
        sql_path,
    );
    sqld.exec("UPDATE t SET b = x'00' WHERE id = 2");
    run_ok(&mut sqld.tursync_over(dir.path(), "pull", sql_path));
    run_ok(&mut sqld.tursync_over(dir.path(), "push", sql_path));
    assert_eq!(
        sqld.query("SELECT b FROM t WHERE id = 2"),
        vec![vec![Cell::Blob(vec![0])]],
        "the teammate's x'00' was overwritten (sql_path {sql_path})"
    );
    assert_same_database(&sqld, &dir.path().join("working_copy.db"));
    assert_nothing_pending(dir.path());
}

#[test]
fn identical_rows_on_both_sides_over_the_log() {
    identical_rows_on_both_sides(false)
}

#[test]
fn identical_rows_on_both_sides_over_sql() {
    identical_rows_on_both_sides(true)
}

/// A `pull --ours` that kept our x'02' over their x'01' on row 1, killed after its commit; the
/// teammate then sets row 1 to x'00' (the old base's value), a new change of theirs made after
/// they saw ours. A pull and a push must not write x'02' back over it silently.
fn a_pull_ours_killed_then_the_teammate_edits(sql_path: bool) {
    let (sqld, dir) = killed_pull_after(
        "UPDATE t SET b = x'02' WHERE id = 1",
        "UPDATE t SET b = x'01' WHERE id IN (1, 2)",
        &["--ours"],
        sql_path,
    );
    sqld.exec("UPDATE t SET b = x'00' WHERE id = 1");
    let out = sqld
        .tursync_over(dir.path(), "pull", sql_path)
        .output()
        .unwrap();
    eprintln!("pull: {}\n{}", out.status, text(&out));
    let out = sqld
        .tursync_over(dir.path(), "push", sql_path)
        .output()
        .unwrap();
    eprintln!("push: {}\n{}", out.status, text(&out));
    assert_eq!(
        sqld.query("SELECT b FROM t WHERE id = 1"),
        vec![vec![Cell::Blob(vec![0])]],
        "the teammate's later x'00' was overwritten with no conflict (sql_path {sql_path})"
    );
}

#[test]
fn a_pull_ours_killed_then_the_teammate_edits_over_the_log() {
    a_pull_ours_killed_then_the_teammate_edits(false)
}

#[test]
fn a_pull_ours_killed_then_the_teammate_edits_over_sql() {
    a_pull_ours_killed_then_the_teammate_edits(true)
}

/// The control of the attack above: the same `pull --ours`, not killed; the teammate's later
/// x'00' is then a conflict (base x'01', ours x'02', theirs x'00'), reported, not overwritten.
fn a_pull_ours_not_killed_then_the_teammate_edits(sql_path: bool) {
    let (sqld, dir) = two_rows();
    edit(dir.path(), "UPDATE t SET b = x'02' WHERE id = 1");
    sqld.exec("UPDATE t SET b = x'01' WHERE id IN (1, 2)");
    run_ok(
        sqld.tursync_over(dir.path(), "pull", sql_path)
            .arg("--ours"),
    );
    sqld.exec("UPDATE t SET b = x'00' WHERE id = 1");
    let out = sqld
        .tursync_over(dir.path(), "pull", sql_path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    assert_eq!(
        sqld.query("SELECT b FROM t WHERE id = 1"),
        vec![vec![Cell::Blob(vec![0])]]
    );
}

#[test]
fn a_pull_ours_not_killed_then_the_teammate_edits_over_the_log() {
    a_pull_ours_not_killed_then_the_teammate_edits(false)
}

#[test]
fn a_pull_ours_not_killed_then_the_teammate_edits_over_sql() {
    a_pull_ours_not_killed_then_the_teammate_edits(true)
}

/// A migration pull killed before its commit: the working copy holds none of their schema
/// changes, so the pull did not land; the next pull merges it again, and the teammate's later
/// set-back arrives.
fn a_migration_pull_killed_before_its_commit(sql_path: bool) {
    let (sqld, dir) = pull_killed_before_its_commit(
        &format!("{MIGRATION} UPDATE t SET b = x'01' WHERE id = 1;"),
        sql_path,
    );
    teammate_sets_back_then_sync(&sqld, dir.path(), sql_path);
}

#[test]
fn a_migration_pull_killed_before_its_commit_over_the_log() {
    a_migration_pull_killed_before_its_commit(false)
}

#[test]
fn a_migration_pull_killed_before_its_commit_over_sql() {
    a_migration_pull_killed_before_its_commit(true)
}
