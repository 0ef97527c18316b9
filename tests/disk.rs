//! What a workspace costs on disk: `.tursync/` holds one copy of the database beside the
//! working copy, after init, pulls and pushes alike (the mirror shares its pages with the
//! base; docs/ARCHITECTURE.md, "The mirror's pages and the base's").

use std::path::Path;

use crate::common::*;

/// `.tursync/` costs at most 1.05 times the working copy (issue 22's goal).
fn assert_one_copy(dir: &Path, when: &str) {
    let state = on_disk(&dir.join(".tursync"));
    let work = on_disk(&wc(dir));
    assert!(
        state * 100 <= work * 105,
        "{when}: .tursync/ takes {state} bytes on disk, the working copy {work}:\n{}",
        state_listing(dir)
    );
}

#[test]
fn the_state_directory_holds_one_copy_of_the_database_after_init_pulls_and_pushes() {
    let sqld = Sqld::start();
    sqld.exec(
        "CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT); CREATE INDEX t_v ON t(v); \
         WITH RECURSIVE c(x) AS (VALUES(1) UNION ALL SELECT x+1 FROM c WHERE x < 40000) \
         INSERT INTO t SELECT x, printf('%060d', x) FROM c",
    );
    let dir = tempdir();
    init(&sqld, dir.path());
    assert!(
        dir.path().join(".tursync/mirror.db").exists(),
        "init read the log"
    );
    assert_one_copy(dir.path(), "after init");

    sqld.exec("UPDATE t SET v = 'theirs ' || v WHERE id % 97 = 0");
    ok(&sqld, dir.path(), &["pull"]);
    assert_one_copy(dir.path(), "after a pull");

    edit(
        dir.path(),
        "UPDATE t SET v = 'ours ' || v WHERE id % 2000 = 0",
    );
    ok(&sqld, dir.path(), &["push"]);
    assert_one_copy(dir.path(), "after a push of a few rows");

    // A push that rewrites most pages leaves the mirror the old copies of them (it is the
    // remote as it was before the push) until a pull reads the log past it and gives them
    // back. (A pull while the remote has not moved since the push does not read the log.)
    edit(
        dir.path(),
        "UPDATE t SET v = 'ours ' || v WHERE id % 89 = 0",
    );
    ok(&sqld, dir.path(), &["push"]);
    sqld.exec("UPDATE t SET v = 'theirs, later' WHERE id = 1");
    ok(&sqld, dir.path(), &["pull"]);
    assert_one_copy(dir.path(), "after a push of many rows and a pull");

    sqld.exec("DELETE FROM t WHERE id % 101 = 0");
    edit(dir.path(), "INSERT INTO t(v) VALUES ('ours, new')");
    ok(&sqld, dir.path(), &["sync"]);
    assert_one_copy(dir.path(), "after a sync");

    // And nothing of it is lost: the base and the mirror are the remote, read in full.
    ok(&sqld, dir.path(), &["verify"]);
    assert_same_database(&sqld, &wc(dir.path()));
}
