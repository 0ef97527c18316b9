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
