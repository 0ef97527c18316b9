//! Pulls and clones through the replication log (the mirror), against a real sqld.

mod common;

use std::path::Path;

use common::*;

fn init(sqld: &Sqld, dir: &Path) {
    run_ok(
        tursync(dir)
            .args(["init", "--force", "--url", &sqld.url])
            .env("TURSO_AUTH_TOKEN", &sqld.rw_token),
    );
}

fn pull(sqld: &Sqld, dir: &Path) -> String {
    text(&run_ok(
        tursync(dir)
            .args(["pull"])
            .env("TURSO_AUTH_TOKEN", &sqld.rw_token),
    ))
}

/// The sync state as JSON.
fn sync_state(dir: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(dir.join(".tursync/sync.json")).unwrap()).unwrap()
}

#[test]
fn pulls_across_many_transactions_read_the_log() {
    let sqld = Sqld::start();
    sqld.exec(
        "CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT, n INT); CREATE INDEX t_v ON t(v);
         INSERT INTO t SELECT value, 'v' || value, value FROM generate_series(1, 2000);",
    );
    let dir = tempdir();
    init(&sqld, dir.path());
    assert!(dir.path().join(".tursync/mirror.db").is_file());
    assert!(
        sync_state(dir.path())["base_at"].is_u64(),
        "{}",
        sync_state(dir.path())
    );
    assert_same_database(&sqld, &dir.path().join("working_copy.db"));

    for round in 0..3 {
        for i in 0..20 {
            sqld.exec(&format!(
                "UPDATE t SET n = n + {i} WHERE id % 97 = {i}; \
                 INSERT INTO t(v, n) VALUES ('new {round} {i}', {i}); \
                 DELETE FROM t WHERE id = {} ",
                round * 100 + i * 3 + 1
            ));
        }
        pull(&sqld, dir.path());
        assert_same_database(&sqld, &dir.path().join("working_copy.db"));
        assert!(sync_state(dir.path())["sql_path"].is_null());
    }
}
