//! Several working copies on one remote (issue 9). What is here so far: tursync's own writes can
//! never be rewritten by a table's conflict clause.

mod common;

use std::path::Path;
use std::process::Output;

use common::*;

fn run(sqld: &Sqld, dir: &Path, args: &[&str]) -> Output {
    tursync(dir)
        .args(args)
        .env("TURSO_AUTH_TOKEN", &sqld.rw_token)
        .output()
        .unwrap()
}

/// Measured: with `UNIQUE ON CONFLICT REPLACE`, B pushed (10, 'x@ex.com'), then A pushed
/// (11, 'x@ex.com') with exit 0, and B's row was gone from the remote: SQLite does not count
/// REPLACE deletions in `changes()`. And a pull of B's row deleted A's unpushed row locally.
#[test]
fn a_tables_on_conflict_replace_never_deletes_rows_behind_tursync() {
    let sqld = Sqld::start();
    sqld.exec("CREATE TABLE users(id INTEGER PRIMARY KEY, email TEXT UNIQUE ON CONFLICT REPLACE);");
    let (a, b) = (tempdir(), tempdir());
    for d in [&a, &b] {
        let out = run(&sqld, d.path(), &["init", "--url", &sqld.url]);
        assert!(out.status.success(), "{}", text(&out));
    }
    edit(b.path(), "INSERT INTO users VALUES (10, 'x@ex.com')");
    let out = run(&sqld, b.path(), &["push"]);
    assert!(out.status.success(), "{}", text(&out));

    edit(a.path(), "INSERT INTO users VALUES (11, 'x@ex.com')");
    let out = run(&sqld, a.path(), &["push"]);
    assert!(
        !out.status.success(),
        "the push replaced B's row: {}",
        text(&out)
    );
    assert_eq!(
        sqld.query("SELECT id, email FROM users ORDER BY id"),
        vec![vec![Cell::Integer(10), Cell::text("x@ex.com")]],
        "B's row stays, A's did not land"
    );

    let out = run(&sqld, a.path(), &["pull"]);
    assert!(
        !out.status.success(),
        "the pull replaced A's row: {}",
        text(&out)
    );
    assert_eq!(
        local_query(
            &a.path().join("working_copy.db"),
            "SELECT id, email FROM users ORDER BY id"
        ),
        vec![vec![Cell::Integer(11), Cell::text("x@ex.com")]],
        "A's unpushed row stays in its working copy"
    );
}
