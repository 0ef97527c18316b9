//! `tursync verify`: integrity of the working copy and the base, and the base against the
//! remote at the recorded sync point, with its exit codes.

use std::path::Path;
use std::process::Output;

use crate::common::*;

fn verify(sqld: &Sqld, dir: &Path, json: bool) -> Output {
    let mut cmd = sqld.tursync(dir);
    cmd.arg("verify");
    if json {
        cmd.arg("--json");
    }
    cmd.output().unwrap()
}

#[test]
fn verify_reports_intact_moved_drift_and_damage_with_their_exit_codes() {
    let sqld = Sqld::start();
    sqld.exec(
        "CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT);
         WITH RECURSIVE c(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM c WHERE i < 3000)
         INSERT INTO t SELECT i, printf('%.100c', 'x') FROM c;",
    );
    let dir = tempdir();
    let dir = dir.path();
    ok(&sqld, dir, &["init", "--url", &sqld.url]);

    let out = verify(&sqld, dir, false);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(
        text(&out).contains("equals the base at the last sync point"),
        "{}",
        text(&out)
    );

    // Others' changes are not drift.
    sqld.exec("UPDATE t SET v = 'theirs' WHERE id = 7");
    let out = verify(&sqld, dir, false);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(
        text(&out).contains("moved since the last sync"),
        "{}",
        text(&out)
    );
    assert!(
        text(&out)
            .contains("table t: 0 rows only on the remote, 0 rows only in the base, 1 row differ"),
        "{}",
        text(&out)
    );

    // A base that no longer matches the remote it records is drift.
    ok(&sqld, dir, &["pull"]);
    // Through the library's VFS, as every writer of the base must: the mirror shares the
    // base's pages, and keeps its own copy of one before it is written.
    tursync::shared_pages::open(&dir.join(".tursync/base.db"), Default::default())
        .unwrap()
        .execute_batch("DELETE FROM t WHERE id = 9")
        .unwrap();
    let out = verify(&sqld, dir, false);
    assert_eq!(out.status.code(), Some(4), "{}", text(&out));
    assert!(text(&out).contains("DRIFT"), "{}", text(&out));
    assert!(
        text(&out).contains("table t: 1 row only on the remote"),
        "{}",
        text(&out)
    );
    let out = verify(&sqld, dir, true);
    assert_eq!(out.status.code(), Some(4), "{}", text(&out));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["remote"]["drift"][0]["table"], "t", "{report}");
    assert_eq!(
        report["remote"]["drift"][0]["only_on_remote"], 1,
        "{report}"
    );

    // A damaged working copy: garbage over a B-tree page.
    init(&sqld, dir);
    let wc = dir.join("working_copy.db");
    let mut bytes = std::fs::read(&wc).unwrap();
    assert!(bytes.len() > 8 * 4096, "the table spans pages");
    bytes[5 * 4096..5 * 4096 + 64].fill(0xa5);
    std::fs::write(&wc, bytes).unwrap();
    let out = verify(&sqld, dir, true);
    assert_eq!(out.status.code(), Some(5), "{}", text(&out));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["working_copy"]["ok"], false, "{report}");
    assert_eq!(report["base"]["ok"], true, "{report}");
    assert!(!report["working_copy"]["problems"]
        .as_array()
        .unwrap()
        .is_empty());
}

/// `verify --repair` mends a base that no longer holds what the remote did, with the working
/// copy as it is: at the sync point the remote's copy is the base and the app's edits are pushed
/// as before; after the remote moved, the differences of ours where the old base could not be
/// trusted are conflicts until settled.
#[test]
fn verify_repair_mends_the_base_and_keeps_the_working_copy() {
    let sqld = Sqld::start();
    sqld.exec(
        "CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT);
         CREATE INDEX t_v ON t(v);
         CREATE TABLE u(id INTEGER PRIMARY KEY, v TEXT);
         WITH RECURSIVE c(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM c WHERE i < 300)
         INSERT INTO t SELECT i, 'x' FROM c;
         INSERT INTO u SELECT id, v FROM t;
         UPDATE t SET v = 'flip me' WHERE id = 50;",
    );
    let dir = tempdir();
    let dir = dir.path();
    ok(&sqld, dir, &["init", "--url", &sqld.url]);
    let base = dir.join(".tursync/base.db");
    // Through the library's VFS, as every writer of the base must (see above).
    let damage = |sql: &str| {
        tursync::shared_pages::open(&base, Default::default())
            .unwrap()
            .execute_batch(sql)
            .unwrap()
    };
    let remote = |q: &str| sqld.query(q);
    let work = |q: &str| local_query(&dir.join("working_copy.db"), q);
    let v = |db: &dyn Fn(&str) -> Vec<Vec<Cell>>, t: &str, id: i64| {
        db(&format!("SELECT v FROM {t} WHERE id = {id}"))
    };
    let repair = |json: bool| {
        let mut cmd = sqld.tursync(dir);
        cmd.args(["verify", "--repair"]);
        if json {
            cmd.arg("--json");
        }
        let out = cmd.output().unwrap();
        assert_eq!(out.status.code(), Some(0), "{}", text(&out));
        out
    };

    // The remote at the sync point; the base lost a row's value, which the app then edits.
    edit(dir, "UPDATE t SET v = 'ours' WHERE id IN (9, 11)");
    damage("UPDATE t SET v = 'damaged' WHERE id IN (9, 10)");
    let out = verify(&sqld, dir, false);
    assert_eq!(out.status.code(), Some(4), "{}", text(&out));
    assert!(text(&out).contains("verify --repair"), "{}", text(&out));
    assert!(!text(&out).contains("init --force"), "{}", text(&out));
    // The push names the damaged base, not a conflict with a remote that never changed.
    let out = sqld.tursync(dir).arg("push").output().unwrap();
    assert_eq!(out.status.code(), Some(5), "{}", text(&out));
    assert!(text(&out).contains("verify --repair"), "{}", text(&out));
    assert!(text(&repair(false)).contains("repaired"));
    assert_eq!(verify(&sqld, dir, false).status.code(), Some(0));
    ok(&sqld, dir, &["sync"]);
    for id in [9, 11] {
        assert_eq!(v(&remote, "t", id), [[Cell::text("ours")]]);
    }
    assert_eq!(v(&remote, "t", 10), [[Cell::text("x")]]);
    assert_eq!(v(&work, "t", 10), [[Cell::text("x")]]);

    // A byte of the base flipped on disk (its index then disagrees), the remote moved since:
    // which rows are ours is not known, so each difference is a conflict until settled.
    sqld.exec("UPDATE u SET v = 'theirs' WHERE id = 60");
    edit(dir, "UPDATE t SET v = 'ours' WHERE id = 70");
    let mut bytes = std::fs::read(&base).unwrap();
    let at = bytes
        .windows(7)
        .position(|w| w == b"flip me")
        .expect("the value in the base");
    bytes[at] ^= 1;
    std::fs::write(&base, bytes).unwrap();
    assert_eq!(verify(&sqld, dir, false).status.code(), Some(5));
    let report: serde_json::Value = serde_json::from_slice(&repair(true).stdout).unwrap();
    assert_eq!(report["repaired"]["base"], true, "{report}");
    assert_eq!(report["repaired"]["unsettled"], true, "{report}");
    let out = sqld.tursync(dir).arg("sync").output().unwrap();
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    assert!(text(&out).contains("table t, key (70)"), "{}", text(&out));
    assert!(text(&out).contains("table u, key (60)"), "{}", text(&out));
    // Each says why: the repair, not a pull that was never interrupted.
    assert!(text(&out).contains("verify --repair"), "{}", text(&out));
    assert!(!text(&out).contains("interrupted pull"), "{}", text(&out));
    ok(&sqld, dir, &["sync", "--ours", "t", "--theirs", "u"]);
    assert_eq!(v(&remote, "t", 70), [[Cell::text("ours")]]);
    assert_eq!(v(&work, "u", 60), [[Cell::text("theirs")]]);
    assert_eq!(v(&remote, "t", 50), [[Cell::text("flip me")]]);
    assert_eq!(v(&work, "t", 50), [[Cell::text("flip me")]]);
    assert_eq!(verify(&sqld, dir, false).status.code(), Some(0));
    settled(&sqld, dir);
}
