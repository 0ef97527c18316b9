//! Pulls and clones through the replication log (the mirror), against a real sqld.

use std::path::{Path, PathBuf};

use crate::common::*;

/// Pulls, and says how theirs was read (`read` of `pull --json`).
pub(crate) fn pull(sqld: &Sqld, dir: &Path) -> String {
    let out = ok(sqld, dir, &["pull", "--json"]);
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    report["read"].as_str().unwrap_or_default().to_owned()
}

/// The sync state as JSON.
fn sync_state(dir: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(dir.join(".tursync/sync.json")).unwrap()).unwrap()
}

/// A pull through the log compares only the rows whose cells changed on the leaves the log
/// wrote. Attacked where a leaf's bytes do not tell: a record that spills onto overflow pages,
/// rewritten on the remote to a value of the same length that differs only past the leaf
/// (SQLite then writes its overflow pages in place and leaves its cell as it was), on a leaf
/// the log writes for its neighbour's new value; rows moved between leaves by splits and
/// merges; a row deleted and inserted again with the same bytes.
/// Every pull reads the pages the log changed and ends with the remote's database.
#[test]
fn rows_whose_leaf_bytes_do_not_tell_are_pulled() {
    let sqld = Sqld::start();
    sqld.exec(
        "CREATE TABLE b(id INTEGER PRIMARY KEY, v BLOB);
         INSERT INTO b SELECT value, zeroblob(10000) FROM generate_series(1, 40);
         CREATE TABLE s(id INTEGER PRIMARY KEY, v TEXT);
         INSERT INTO s SELECT value * 10, printf('%050d', value) FROM generate_series(1, 2000);",
    );
    let dir = tempdir();
    init(&sqld, dir.path());
    for k in 1..=6 {
        sqld.exec(&format!(
            "UPDATE b SET v = randomblob(10000) WHERE id = 2 * {k} - 1;
             UPDATE b SET v = unhex(hex(zeroblob(9000)) || hex(randomblob(1000))) WHERE id = 2 * {k};
             INSERT INTO s SELECT value * 10 + {k}, printf('%050d', value) FROM generate_series({k} * 200, {k} * 200 + 150);
             DELETE FROM s WHERE id % 10 = 0 AND id / 10 % 13 = {k};
             DELETE FROM s WHERE id = {k}0; INSERT INTO s VALUES ({k}0, printf('%050d', {k}));"
        ));
        let read = pull(&sqld, dir.path());
        assert_eq!(read, "the pages the log changed", "round {k}");
        assert_same_database(&sqld, &dir.path().join("working_copy.db"));
    }
}

/// After a push the base holds our rows and the mirror the remote before them, so a row the
/// log rewrites back to the bytes the mirror held before (a teammate undoing our change) is
/// still a change to the base: it must be pulled, not passed over as unchanged. Also a row we
/// deleted that the teammate inserts again as it was, and one we inserted that they delete.
#[test]
fn a_row_set_back_after_our_push_is_pulled() {
    let sqld = Sqld::start();
    sqld.exec(
        "CREATE TABLE s(id INTEGER PRIMARY KEY, v TEXT);
         INSERT INTO s SELECT value, printf('%050d', value) FROM generate_series(1, 3000);",
    );
    let dir = tempdir();
    init(&sqld, dir.path());
    for k in 1..=3 {
        edit(
            dir.path(),
            &format!(
                "UPDATE s SET v = 'ours {k}' WHERE id = {k}00;
                 DELETE FROM s WHERE id = {k}01;
                 INSERT INTO s VALUES (9000 + {k}, 'new {k}');"
            ),
        );
        run_ok(sqld.tursync(dir.path()).arg("push"));
        sqld.exec(&format!(
            "UPDATE s SET v = printf('%050d', {k}00) WHERE id = {k}00;
             INSERT INTO s VALUES ({k}01, printf('%050d', {k}01));
             DELETE FROM s WHERE id = 9000 + {k};"
        ));
        let read = pull(&sqld, dir.path());
        assert_eq!(read, "the pages the log changed", "round {k}");
        assert_same_database(&sqld, &dir.path().join("working_copy.db"));
    }
}

/// Random rounds of our pushes and a teammate who undoes them byte for byte: our updated rows
/// set back to what they held, our inserted rows deleted, our deleted rows inserted again as
/// they were, beside changes of their own; a pull through the log after each round must leave
/// the working copy equal to the remote, whether the base holds exactly the mirror's rows or
/// our push's too.
#[test]
fn random_pushes_undone_by_the_teammate_are_pulled() {
    let mut rng = Rng::from_time("random_pushes_undone_by_the_teammate_are_pulled");
    let sqld = Sqld::start();
    sqld.exec(
        "CREATE TABLE s(id INTEGER PRIMARY KEY, v TEXT);
         INSERT INTO s SELECT value, printf('%040d', value) FROM generate_series(1, 2000);",
    );
    let dir = tempdir();
    init(&sqld, dir.path());
    for round in 0..8u64 {
        let a = 1 + rng.below(1900);
        let b = 1 + rng.below(1900);
        // Their own change is to a row of neither ours: a conflict is not what this tests.
        let mut c = 1 + rng.below(1900);
        while c == a || c == b {
            c = 1 + rng.below(1900);
        }
        let new = 10_000 + round;
        let pushed = rng.below(3) > 0;
        edit(
            dir.path(),
            &format!(
                "UPDATE s SET v = 'ours {round}' WHERE id = {a};
                 DELETE FROM s WHERE id = {b};
                 INSERT INTO s VALUES ({new}, 'new {round}');"
            ),
        );
        if pushed {
            run_ok(sqld.tursync(dir.path()).arg("push"));
            // The teammate undoes some of it, as the rows were before our push.
            let mut undo = String::new();
            if rng.below(2) == 0 {
                undo += &format!("UPDATE s SET v = printf('%040d', {a}) WHERE id = {a};");
            }
            if rng.below(2) == 0 {
                undo += &format!("INSERT OR IGNORE INTO s VALUES ({b}, printf('%040d', {b}));");
            }
            if rng.below(2) == 0 {
                undo += &format!("DELETE FROM s WHERE id = {new};");
            }
            undo += &format!("UPDATE s SET v = v || '.t' WHERE id = {c};");
            sqld.exec(&undo);
            eprintln!("round {round}: a {a} b {b} c {c}: {undo}");
            pull(&sqld, dir.path());
            assert_same_database(&sqld, &dir.path().join("working_copy.db"));
        } else {
            sqld.exec(&format!("UPDATE s SET v = v || '.t' WHERE id = {c};"));
            run_ok(sqld.tursync(dir.path()).arg("sync"));
            assert_same_database(&sqld, &dir.path().join("working_copy.db"));
        }
    }
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
        let read = pull(&sqld, dir.path());
        assert_eq!(read, "the pages the log changed", "round {round}");
        assert_same_database(&sqld, &dir.path().join("working_copy.db"));
        assert!(sync_state(dir.path())["sql_path"].is_null());
    }
    // A schema change is read from whole tables; after it, pages again.
    sqld.exec("ALTER TABLE t ADD COLUMN extra DEFAULT 7; UPDATE t SET extra = 8 WHERE id = 5");
    let read = pull(&sqld, dir.path());
    assert!(read.contains("the schema changed"), "{read}");
    assert_same_database(&sqld, &dir.path().join("working_copy.db"));
    sqld.exec("UPDATE t SET extra = 9 WHERE id = 6");
    assert_eq!(pull(&sqld, dir.path()), "the pages the log changed");
    assert_same_database(&sqld, &dir.path().join("working_copy.db"));
    // After a push the base moved by our changeset, whose rows the log carries past the
    // base's point too: still only the pages the log changed, and exact.
    edit(
        dir.path(),
        "UPDATE t SET v = 'ours' WHERE id = 20; DELETE FROM t WHERE id = 30; \
         INSERT INTO t(v, n) VALUES ('ours new', 1)",
    );
    ok(&sqld, dir.path(), &["push"]);
    sqld.exec("UPDATE t SET v = 'theirs' WHERE id = 11");
    assert_eq!(pull(&sqld, dir.path()), "the pages the log changed");
    assert_same_database(&sqld, &dir.path().join("working_copy.db"));
    // And when nobody else wrote since the push.
    edit(dir.path(), "UPDATE t SET v = 'ours again' WHERE id = 21");
    ok(&sqld, dir.path(), &["push"]);
    sqld.exec("UPDATE t SET v = 'theirs' WHERE id = 12");
    assert_eq!(pull(&sqld, dir.path()), "the pages the log changed");
    assert_same_database(&sqld, &dir.path().join("working_copy.db"));

    // verify checks the mirror too: intact, and equal to the remote at its frame.
    let out = ok(&sqld, dir.path(), &["verify", "--json"]);
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let mirror = &report["mirror"];
    assert_eq!(mirror["file"]["ok"], true, "{report}");
    assert_eq!(mirror["remote"]["moved"], false, "{report}");
    assert_eq!(mirror["remote"]["drift"], serde_json::json!([]), "{report}");
}

/// `tursync status --json`'s account of how pulls read the remote.
pub(crate) fn reads(sqld: &Sqld, dir: &Path, token: &str) -> serde_json::Value {
    let out = run_ok(
        tursync(dir)
            .args(["status", "--json"])
            .env("TURSO_AUTH_TOKEN", token),
    );
    let _ = sqld;
    serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap()["reads"].clone()
}

#[test]
fn a_compacted_log_is_read_through_its_snapshot() {
    let sqld = Sqld::start_with_args(&["--max-log-size", "1"]);
    sqld.exec("CREATE TABLE t(id INTEGER PRIMARY KEY, b BLOB, n INT); CREATE INDEX t_n ON t(n);");
    let early = tempdir();
    init(&sqld, early.path());
    // Well past 1 MB of log, in several transactions: the log is compacted behind `early`.
    for i in 0..6 {
        sqld.exec(&format!(
            "INSERT INTO t(b, n) SELECT randomblob(3000), value FROM generate_series(1, 200); \
             UPDATE t SET n = n + 1 WHERE id % 5 = {i};"
        ));
    }
    let snapshots = sqld.data_dir().join("dbs/default/snapshots");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while std::fs::read_dir(&snapshots).map_or(0, |d| d.count()) == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "sqld never compacted its log"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    // A fresh clone and a lagging one both need the snapshot.
    let late = tempdir();
    init(&sqld, late.path());
    pull(&sqld, early.path());
    for dir in [early.path(), late.path()] {
        assert_same_database(&sqld, &dir.join("working_copy.db"));
        assert_eq!(reads(&sqld, dir, &sqld.rw_token)["path"], "log");
    }
    sqld.exec("DELETE FROM t WHERE id % 3 = 0");
    pull(&sqld, early.path());
    pull(&sqld, late.path());
    for dir in [early.path(), late.path()] {
        assert_same_database(&sqld, &dir.join("working_copy.db"));
    }
}

#[test]
fn a_reset_log_starts_the_mirror_again() {
    let mut sqld = Sqld::start();
    sqld.exec(
        "CREATE TABLE t(id INTEGER PRIMARY KEY, v); INSERT INTO t VALUES (1, 'old'), (2, 'old');",
    );
    let dir = tempdir();
    init(&sqld, dir.path());
    let before = std::fs::read_to_string(dir.path().join(".tursync/mirror.json")).unwrap();
    sqld.reset();
    sqld.exec(
        "CREATE TABLE t(id INTEGER PRIMARY KEY, v); INSERT INTO t VALUES (2, 'new'), (3, 'new');",
    );
    pull(&sqld, dir.path());
    assert_same_database(&sqld, &dir.path().join("working_copy.db"));
    let after = std::fs::read_to_string(dir.path().join(".tursync/mirror.json")).unwrap();
    let log_id = |t: &str| serde_json::from_str::<serde_json::Value>(t).unwrap()["log_id"].clone();
    assert_ne!(log_id(&before), log_id(&after));
    assert_eq!(reads(&sqld, dir.path(), &sqld.rw_token)["path"], "log");
}

#[test]
fn a_server_without_the_log_is_read_over_sql_and_status_says_why() {
    let sqld = Sqld::start();
    sqld.exec("CREATE TABLE t(id INTEGER PRIMARY KEY, v); INSERT INTO t VALUES (1, 'a');");
    for (answer, why) in [
        (LogBlocker::NOT_FOUND, "HTTP 404"),
        (LogBlocker::UNIMPLEMENTED, "gRPC status 12"),
    ] {
        let proxy = LogBlocker::start(&sqld.url, answer);
        let dir = tempdir();
        ok(&sqld, dir.path(), &["init", "--url", &proxy.url]);
        assert!(!dir.path().join(".tursync/mirror.db").exists());
        let r = reads(&sqld, dir.path(), &sqld.rw_token);
        assert_eq!(r["path"], "sql", "{r}");
        assert!(r["reason"].as_str().unwrap().contains(why), "{r}");
        sqld.exec("INSERT INTO t(v) VALUES ('b'); UPDATE t SET v = 'c' WHERE id = 1;");
        pull(&sqld, dir.path());
        assert_same_database(&sqld, &dir.path().join("working_copy.db"));
        let human = text(&ok(&sqld, dir.path(), &["status"]));
        assert!(human.contains("rows over SQL, because"), "{human}");
    }

    // A workspace that read the log until the server stopped serving it falls back at once.
    let dir = tempdir();
    init(&sqld, dir.path());
    let proxy = LogBlocker::start(&sqld.url, LogBlocker::UNIMPLEMENTED);
    let config = dir.path().join(".tursync/config.json");
    let text_of = std::fs::read_to_string(&config).unwrap();
    std::fs::write(&config, text_of.replace(&sqld.url, &proxy.url)).unwrap();
    sqld.exec("INSERT INTO t(v) VALUES ('d')");
    pull(&sqld, dir.path());
    assert_same_database(&sqld, &dir.path().join("working_copy.db"));
    assert_eq!(reads(&sqld, dir.path(), &sqld.rw_token)["path"], "sql");
    assert!(!dir.path().join(".tursync/mirror.db").exists());
}

#[test]
fn a_read_only_token_reads_the_log() {
    let sqld = Sqld::start();
    sqld.exec("CREATE TABLE t(id INTEGER PRIMARY KEY, v); INSERT INTO t VALUES (1, 'a');");
    let dir = tempdir();
    run_ok(
        tursync(dir.path())
            .args(["init", "--url", &sqld.url])
            .env("TURSO_AUTH_TOKEN", &sqld.ro_token),
    );
    sqld.exec("INSERT INTO t(v) VALUES ('b'); UPDATE t SET v = 'c' WHERE id = 1;");
    run_ok(
        tursync(dir.path())
            .args(["pull"])
            .env("TURSO_AUTH_TOKEN", &sqld.ro_token),
    );
    assert_same_database(&sqld, &dir.path().join("working_copy.db"));
    assert_eq!(reads(&sqld, dir.path(), &sqld.ro_token)["path"], "log");
}

#[test]
fn a_pull_killed_while_applying_frames_is_finished_by_the_next() {
    let sqld = Sqld::start();
    sqld.exec("CREATE TABLE t(id INTEGER PRIMARY KEY, b BLOB); CREATE INDEX t_b ON t(b);");
    let dir = tempdir();
    init(&sqld, dir.path());
    sqld.exec("INSERT INTO t(b) SELECT randomblob(2000) FROM generate_series(1, 400);");
    // Each page written into the mirror waits 20 ms, so the kill lands mid-apply.
    let mut child = sqld
        .tursync(dir.path())
        .args(["pull"])
        .env("TURSYNC_TEST_APPLY_PAUSE_MS", "20")
        .spawn()
        .unwrap();
    let spool = dir.path().join(".tursync/mirror.spool");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while !spool.exists() {
        assert!(
            std::time::Instant::now() < deadline,
            "the spool never became ready"
        );
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    std::thread::sleep(std::time::Duration::from_millis(300));
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(spool.exists(), "the pull finished before the kill");
    sqld.exec("UPDATE t SET b = randomblob(10) WHERE id % 7 = 0");
    pull(&sqld, dir.path());
    assert!(!spool.exists());
    assert_same_database(&sqld, &dir.path().join("working_copy.db"));
    ok(&sqld, dir.path(), &["verify"]);
}

/// One random remote transaction or local edit over the test's tables.
fn random_edit(rng: &mut Rng, tag: &str) -> String {
    let id = rng.below(60) + 1;
    let v = format!("'{tag}{}'", rng.below(1000));
    match rng.below(9) {
        0 => format!("INSERT INTO a(v, n) VALUES ({v}, {})", rng.below(50)),
        1 => format!("UPDATE a SET v = {v} WHERE id = {id}"),
        2 => format!("DELETE FROM a WHERE id = {id}"),
        3 => format!("INSERT OR REPLACE INTO w VALUES ('k{id}', {v})"),
        4 => format!("DELETE FROM w WHERE k = 'k{id}'"),
        5 => format!("INSERT INTO h VALUES ({v}, zeroblob({}))", rng.below(6000)),
        6 => format!("UPDATE h SET x = {v} WHERE rowid = {id}"),
        7 => format!("INSERT INTO s(v) VALUES ({v})"),
        _ => format!("UPDATE a SET n = n + 1 WHERE id % 7 = {}", id % 7),
    }
}

#[test]
fn pulls_from_the_log_and_over_sql_give_the_same_working_copies() {
    let sqld = Sqld::start();
    sqld.exec(
        "CREATE TABLE a(id INTEGER PRIMARY KEY, v TEXT, n INT); CREATE INDEX a_n ON a(n);
         CREATE TABLE w(k TEXT PRIMARY KEY, v) WITHOUT ROWID;
         CREATE TABLE h(x, y);
         CREATE TABLE s(id INTEGER PRIMARY KEY AUTOINCREMENT, v);
         INSERT INTO a(v, n) SELECT 'a' || value, value % 50 FROM generate_series(1, 40);
         INSERT INTO w SELECT 'k' || value, value FROM generate_series(1, 40);
         INSERT INTO h SELECT value, randomblob(value * 100) FROM generate_series(1, 40);",
    );
    let (log, sql) = (tempdir(), tempdir());
    init(&sqld, log.path());
    run_ok(
        sqld.tursync(sql.path())
            .args(["init", "--url", &sqld.url])
            .env("TURSYNC_NO_LOG", "1"),
    );
    assert_eq!(reads(&sqld, log.path(), &sqld.rw_token)["path"], "log");
    assert_eq!(reads(&sqld, sql.path(), &sqld.rw_token)["path"], "sql");
    let mut rng = Rng::from_time("log vs sql pulls");
    for round in 0..8 {
        for _ in 0..rng.below(6) + 1 {
            let txn: Vec<String> = (0..rng.below(4) + 1)
                .map(|_| random_edit(&mut rng, "r"))
                .collect();
            sqld.exec(&txn.join("; "));
        }
        let local: Vec<String> = (0..rng.below(4))
            .map(|_| random_edit(&mut rng, "l"))
            .collect();
        for dir in [log.path(), sql.path()] {
            if !local.is_empty() {
                edit(dir, &local.join("; "));
            }
            ok(&sqld, dir, &["pull", "--theirs"]);
        }
        let (a, b) = (
            local_dump(&log.path().join("working_copy.db")),
            local_dump(&sql.path().join("working_copy.db")),
        );
        for ((name, rows_a), (_, rows_b)) in a.iter().zip(&b) {
            let only = |x: &Vec<Vec<Cell>>, y: &Vec<Vec<Cell>>| {
                x.iter()
                    .filter(|r| !y.contains(r))
                    .map(|r| format!("{:?}", &r[..r.len().min(2)]))
                    .collect::<Vec<_>>()
            };
            assert!(
                rows_a == rows_b,
                "round {round}, {name}: only from the log {:?}, only over SQL {:?}",
                only(rows_a, rows_b),
                only(rows_b, rows_a)
            );
        }
        assert_eq!(a.len(), b.len(), "round {round}");
    }
    // And both agree with the remote once their edits are pushed from one side.
    ok(&sqld, log.path(), &["push"]);
    assert_same_database(&sqld, &log.path().join("working_copy.db"));
}

#[test]
fn a_transaction_on_the_base_killed_midway_is_rolled_back() {
    let sqld = Sqld::start();
    sqld.exec(
        "CREATE TABLE t(id INTEGER PRIMARY KEY, v); INSERT INTO t VALUES (1, 'a'), (2, 'b');",
    );
    let dir = tempdir();
    init(&sqld, dir.path());
    // A process killed inside a write transaction on the base, as a pull killed while moving
    // the base in place would be: its journal is left hot.
    let base = dir.path().join(".tursync/base.db");
    let script = "import os, sqlite3, sys\n\
                  c = sqlite3.connect(sys.argv[1], isolation_level=None)\n\
                  c.execute('PRAGMA cache_size = 1')\n\
                  c.execute('BEGIN IMMEDIATE')\n\
                  c.execute(\"UPDATE t SET v = hex(randomblob(3000))\")\n\
                  c.execute(\"WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 50) INSERT INTO t(v) SELECT hex(randomblob(3000)) FROM n\")\n\
                  os.kill(os.getpid(), 9)\n";
    let status = std::process::Command::new("python3")
        .args(["-c", script])
        .arg(&base)
        .status()
        .unwrap();
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&status),
        Some(9),
        "{status}"
    );
    let journal = dir.path().join(".tursync/base.db-journal");
    assert!(journal.exists(), "no journal was left behind");

    // Read-only commands and the next pull roll it back and see the old base.
    let out = ok(&sqld, dir.path(), &["diff", "--json"]);
    assert!(
        text(&out).contains("[]") || !text(&out).contains("insert"),
        "{}",
        text(&out)
    );
    sqld.exec("UPDATE t SET v = 'c' WHERE id = 2");
    assert_eq!(pull(&sqld, dir.path()), "the pages the log changed");
    assert_same_database(&sqld, &dir.path().join("working_copy.db"));
    assert!(!journal.exists());
    ok(&sqld, dir.path(), &["verify"]);
}

#[test]
fn a_new_empty_database_is_followed_through_the_log_once_it_has_frames() {
    let sqld = Sqld::start();
    let dir = tempdir();
    init(&sqld, dir.path());
    let r = reads(&sqld, dir.path(), &sqld.rw_token);
    assert_eq!(r["path"], "log", "{r}");
    sqld.exec("CREATE TABLE t(id INTEGER PRIMARY KEY, v); INSERT INTO t VALUES (1, 'a');");
    assert!(pull(&sqld, dir.path()).starts_with("whole tables"));
    assert_same_database(&sqld, &dir.path().join("working_copy.db"));
    sqld.exec("INSERT INTO t VALUES (2, 'b');");
    assert_eq!(pull(&sqld, dir.path()), "the pages the log changed");
    assert_same_database(&sqld, &dir.path().join("working_copy.db"));
    assert!(reads(&sqld, dir.path(), &sqld.rw_token)["mirror"].is_object());
}

/// The working copy in `dir` and a copy of its base beside it, to compare with the remote.
fn work_and_base(dir: &Path) -> [PathBuf; 2] {
    let work = wc(dir);
    let base = base_copy(&work, &dir.join("base-copy.db"));
    [work, base]
}

#[test]
fn a_mirror_that_differs_from_the_remote_is_dropped_and_never_merged() {
    let sqld = Sqld::start();
    sqld.exec(
        "CREATE TABLE a(id INTEGER PRIMARY KEY, v TEXT);
         CREATE TABLE b(k TEXT PRIMARY KEY, v) WITHOUT ROWID;
         INSERT INTO a SELECT value, 'a' || value FROM generate_series(1, 40);
         INSERT INTO b SELECT 'k' || value, value FROM generate_series(1, 40);
         INSERT INTO a VALUES (41, CAST(X'e9ff' AS TEXT));
         INSERT INTO b VALUES ('k41', 9e999);",
    );
    let dir = tempdir();
    init(&sqld, dir.path());
    // The mirror keeps its pages in its own file, whose bytes are what is damaged here.
    unshare_mirror(&wc(dir.path()));
    // Both copies equal the remote, compared exactly (the server cannot send these values).
    let same = || {
        for db in work_and_base(dir.path()) {
            assert_table_eq(&sqld, &db, &exact_select("a", &["id", "v"], "id"));
            assert_table_eq(&sqld, &db, &exact_select("b", &["k", "v"], "k"));
        }
    };
    // The mirror's pages change behind the log's back, as a bug in applying frames would change
    // them: another process writes the file, and its sums are taken again from what it holds,
    // so only a comparison with the remote can tell. (The TEXT that is not UTF-8 and the
    // infinite REAL make the check read the remote exactly.)
    sqlite3_cli(
        &dir.path().join(".tursync/mirror.db"),
        b"UPDATE a SET v = 'damaged' WHERE id = 3;",
    );
    reseal(&dir.path().join(".tursync"));
    sqld.exec("UPDATE b SET v = 'theirs' WHERE k = 'k7'");
    let read = pull(&sqld, dir.path());
    assert!(
        read.starts_with("over SQL: the mirror differed from the remote at frame ")
            && read.contains("(table \"a\", id 3)"),
        "{read}"
    );
    same();
    for db in work_and_base(dir.path()) {
        let damaged = local_query(&db, "SELECT count(*) FROM a WHERE v = 'damaged'");
        assert_eq!(damaged, vec![vec![Cell::Integer(0)]], "{}", db.display());
    }
    assert!(!dir.path().join(".tursync/mirror.db").exists());
    // The next pull builds the mirror again from the log, and the one after reads pages again.
    sqld.exec("UPDATE a SET v = 'theirs' WHERE id = 5");
    let read = pull(&sqld, dir.path());
    assert!(read.starts_with("whole tables of the mirror"), "{read}");
    same();
    sqld.exec("UPDATE a SET v = 'theirs again' WHERE id = 6");
    assert_eq!(pull(&sqld, dir.path()), "the pages the log changed");
    same();
    assert_eq!(reads(&sqld, dir.path(), &sqld.rw_token)["path"], "log");
    ok(&sqld, dir.path(), &["verify"]);
}

/// Takes the sums of the mirror in `state` again from the pages it holds, keeping the frame
/// they name: the mirror's own checks then pass whatever was written into it.
fn reseal(state: &Path) {
    use tursync::page_sums::{len_for, sum, Header, HEAD};
    let pages = std::fs::read(state.join("mirror.db")).unwrap();
    let path = state.join("mirror.sums");
    let old = Header::read(&std::fs::File::open(&path).unwrap())
        .unwrap()
        .unwrap();
    let head = Header {
        pages: (pages.len() / old.page_size as usize) as u32,
        ..old
    };
    let mut out = head.encode().to_vec();
    for page in pages.chunks(head.page_size as usize) {
        out.extend_from_slice(&sum(page).to_le_bytes());
    }
    assert_eq!(out.len() as u64, len_for(head.pages));
    assert!(out.len() as u64 > HEAD);
    std::fs::write(&path, out).unwrap();
}

/// A long stretch of log (over 2048 frames) is read in several streams at once (`LogEntries`),
/// which give exactly the frames batches give; a clone and a pull that read it so are exact. A
/// server that refuses streams is read in batches, still through the log.
#[test]
fn a_long_log_is_read_in_several_streams_as_exactly_as_in_batches() {
    use tursync::remote::replication::{LogSource, ReplicationLog};

    let sqld = Sqld::start();
    sqld.exec(
        "CREATE TABLE t(id INTEGER PRIMARY KEY, v BLOB, n INT); CREATE INDEX t_n ON t(n);
         INSERT INTO t SELECT value, randomblob(3000), value % 97 FROM generate_series(1, 5000);",
    );
    // The protocol: frames 0..=last as one stream, cut short after the last, equal batches.
    let (endpoint, _) = tursync::remote::Endpoint::parse(&sqld.url).unwrap();
    let remote = tursync::remote::Remote::new(endpoint, Some(sqld.rw_token.clone()));
    let mut log = ReplicationLog::new(&remote);
    let last = log.hello().unwrap().replication_index.unwrap();
    assert!(last > 2 * 2048, "the log holds {last} frames");
    let (mut streamed, mut batched) = (Vec::new(), Vec::new());
    log.stream(0, last, &mut |f| {
        streamed.push(f.to_vec());
        Ok(())
    })
    .unwrap();
    while batched.len() as u64 <= last {
        let before = batched.len();
        log.frames(batched.len() as u64, false, &mut |f| {
            batched.push(f.to_vec());
            Ok(())
        })
        .unwrap();
        assert!(batched.len() > before, "batches stopped at {before}");
    }
    assert_eq!(streamed.len() as u64, last + 1);
    assert!(
        streamed == batched,
        "the stream's frames differ from the batches'"
    );

    let dir = tempdir();
    init(&sqld, dir.path());
    exact(&sqld, dir.path());
    sqld.exec("UPDATE t SET v = randomblob(3000), n = n + 1 WHERE id % 5 != 0;");
    let read = pull(&sqld, dir.path());
    assert!(read.contains("the log"), "{read}");
    exact(&sqld, dir.path());

    // No streams: batches, and still the log.
    let proxy = LogBlocker::start_for(
        &sqld.url,
        "POST /wal_log.ReplicationLog/LogEntries",
        LogBlocker::UNIMPLEMENTED,
    );
    let dir = tempdir();
    ok(&sqld, dir.path(), &["init", "--url", &proxy.url]);
    assert_eq!(reads(&sqld, dir.path(), &sqld.rw_token)["path"], "log");
    sqld.exec("UPDATE t SET v = randomblob(3000) WHERE id % 5 != 1;");
    let config = dir.path().join(".tursync/config.json");
    assert!(std::fs::read_to_string(&config)
        .unwrap()
        .contains(&proxy.url));
    pull(&sqld, dir.path());
    assert_eq!(reads(&sqld, dir.path(), &sqld.rw_token)["path"], "log");
    exact(&sqld, dir.path());
}

/// The working copy equals the remote, exactly: `verify` compares the base and the mirror with
/// a full read of the remote (at the sync point), and `diff` finds nothing between the base and
/// the working copy. Faster than a comparison in the test for megabytes of blobs.
pub(crate) fn exact(sqld: &Sqld, dir: &Path) {
    let run = |args: &[&str]| {
        let out = ok(sqld, dir, args);
        serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap()
    };
    let verify = run(&["verify", "--json"]);
    assert_eq!(verify["remote"]["moved"], false, "{verify}");
    assert_eq!(verify["remote"]["drift"], serde_json::json!([]), "{verify}");
    assert_eq!(
        verify["mirror"]["remote"]["drift"],
        serde_json::json!([]),
        "{verify}"
    );
    assert_eq!(run(&["diff", "--json"])["changes"], 0);
}

/// A reverse proxy that passes an answer on only once it is whole ([`FaultProxy`], with no
/// faults) never passes on a log stream, which does not end while it follows the log. A clone
/// through it must not wait for that: the streams are given up at once, the batches read the
/// log, and the workspace stops trying streams, so the next pull of a long stretch goes
/// straight to batches. The smallest log that is read in streams: 2500 rows of 3000 bytes, one
/// page each, well past 2048 frames.
#[test]
fn a_proxy_that_holds_answers_until_they_end_costs_a_clone_under_a_second() {
    use std::time::{Duration, Instant};

    let mut sqld = Sqld::start();
    let grow = |sqld: &Sqld, first: u32| {
        sqld.exec(&format!(
            "INSERT INTO t SELECT value, randomblob(3000) FROM generate_series({first}, {})",
            first + 2499
        ))
    };
    sqld.exec("CREATE TABLE t(id INTEGER PRIMARY KEY, v BLOB)");
    grow(&sqld, 1);
    let proxy = FaultProxy::start(&sqld.url, 0, None);
    let timed = |cmd: &mut std::process::Command| {
        let started = Instant::now();
        run_ok(cmd);
        started.elapsed()
    };
    let streams = |requests: &[String]| {
        requests
            .iter()
            .filter(|r| r.contains("/LogEntries "))
            .count()
    };

    let direct = tempdir();
    let direct_init = timed(
        sqld.tursync(direct.path())
            .args(["init", "--url", &sqld.url]),
    );
    let dir = tempdir();
    let proxied_init = timed(sqld.tursync(dir.path()).args(["init", "--url", &proxy.url]));
    eprintln!("init: direct {direct_init:?}, through the proxy {proxied_init:?}");
    assert_eq!(
        streams(&proxy.requests()) as u64,
        tursync::mirror::LOG_STREAMS,
        "{:?}",
        proxy.requests()
    );
    assert!(
        proxied_init < direct_init + Duration::from_secs(1),
        "init took {proxied_init:?} through the proxy, {direct_init:?} direct"
    );
    exact(&sqld, dir.path());
    let r = reads(&sqld, dir.path(), &sqld.rw_token);
    assert_eq!(r["path"], "log", "{r}");
    assert!(
        r["streams"]["off"]
            .as_str()
            .is_some_and(|w| w.contains("sent nothing")),
        "{r}"
    );
    let human = text(&ok(&sqld, dir.path(), &["status"]));
    assert!(human.contains("log streams"), "{human}");

    // A long stretch again: straight to batches, no stream asked for.
    grow(&sqld, 2501);
    let direct_pull = timed(sqld.tursync(direct.path()).args(["pull"]));
    let before = proxy.requests().len();
    let proxied_pull = timed(sqld.tursync(dir.path()).args(["pull"]));
    eprintln!("pull: direct {direct_pull:?}, through the proxy {proxied_pull:?}");
    assert_eq!(streams(&proxy.requests()[before..]), 0);
    assert!(
        proxied_pull < direct_pull + Duration::from_secs(1),
        "pull took {proxied_pull:?} through the proxy, {direct_pull:?} direct"
    );
    exact(&sqld, dir.path());
    exact(&sqld, direct.path());

    // A new log (the database reset) tries streams again, and they are held again.
    let off = |dir: &Path| sync_state(dir)["streams_off"].clone();
    let old = off(dir.path());
    sqld.reset();
    sqld.exec("CREATE TABLE t(id INTEGER PRIMARY KEY, v BLOB)");
    grow(&sqld, 1);
    let before = proxy.requests().len();
    pull(&sqld, dir.path());
    assert_eq!(
        streams(&proxy.requests()[before..]) as u64,
        tursync::mirror::LOG_STREAMS
    );
    assert_ne!(off(dir.path())["log_id"], old["log_id"]);
    assert!(off(dir.path())["reason"].is_string(), "{}", off(dir.path()));
    exact(&sqld, dir.path());
}

/// `tursync status --json` and `status` as the user reads them: whether either calls the
/// mirror valid (names it with its frame).
fn status_calls_mirror_valid(sqld: &Sqld, dir: &Path) -> (bool, String) {
    let r = reads(sqld, dir, &sqld.rw_token);
    let human = text(&ok(sqld, dir, &["status"]));
    let valid = r["mirror"].is_object() || human.contains("the replication log: mirror");
    (valid, format!("{r}\n{human}"))
}

/// A byte of an overflow page of the mirror flips on disk. The remote then changes another
/// column of that row, so the log rewrites the row's leaf but not its overflow page: the pull
/// would read the flipped byte as their value. It must not: the damaged page is found before
/// anything read from it is merged, the pull reads over SQL, and the next pulls rebuild the
/// mirror and read the log again.
#[test]
fn a_damaged_overflow_page_of_the_mirror_is_never_merged() {
    let sqld = Sqld::start();
    // Values of about 6 KB: each spills onto an overflow page. Row 1 is the one damaged: the
    // spot check's runs start at a random rowid, so the smallest is sampled only when it is
    // drawn itself (1 chance in ~440).
    sqld.exec(
        "CREATE TABLE t(id INTEGER PRIMARY KEY, n INT, big TEXT);
         INSERT INTO t SELECT value, 10, hex(randomblob(3000)) FROM generate_series(1, 500);
         UPDATE t SET big = substr(big, 1, 5900) || 'needle-in-overflow' WHERE id = 1;",
    );
    let dir = tempdir();
    init(&sqld, dir.path());
    // The mirror keeps its pages in its own file, whose bytes are what is damaged here.
    unshare_mirror(&wc(dir.path()));
    let mirror = dir.path().join(".tursync/mirror.db");
    let mut bytes = std::fs::read(&mirror).unwrap();
    let needle = b"needle-in-overflow";
    let at = bytes
        .windows(needle.len())
        .position(|w| w == needle)
        .expect("the value's bytes are in the mirror");
    // Past the leaf's local part: the row's cell on its leaf holds fewer than 4 KB.
    let page = at / 4096 + 1;
    // An overflow page (the last of its chain) starts with a next-page pointer of zero; a
    // B-tree page with its kind.
    assert_eq!(
        bytes[(page - 1) * 4096..][..4],
        [0, 0, 0, 0],
        "page {page} is no overflow page"
    );
    bytes[at] = b'N';
    {
        use std::os::unix::fs::FileExt;
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(&mirror)
            .unwrap();
        f.write_all_at(&bytes[at..at + 1], at as u64).unwrap();
    }
    // Another column of row 1, before the value and the same size: SQLite overwrites the cell
    // in place, which rewrites the leaf, not the overflow page (its bytes are unchanged).
    sqld.exec("UPDATE t SET n = 11 WHERE id = 1");
    let read = pull(&sqld, dir.path());
    let [work, base] = work_and_base(dir.path());
    for db in [&work, &base] {
        let flipped = local_query(db, "SELECT count(*) FROM t WHERE instr(big, 'Needle') > 0");
        assert_eq!(
            flipped,
            vec![vec![Cell::Integer(0)]],
            "{} holds the flipped byte; the pull read {read:?}",
            db.display()
        );
        assert_same_database(&sqld, db);
    }
    assert!(read.starts_with("over SQL: "), "{read}");
    assert!(read.contains("checksum"), "{read}");
    // Nothing pending, and the next pulls rebuild the mirror and then read pages again.
    let diff = ok(&sqld, dir.path(), &["diff", "--json"]);
    let diff: serde_json::Value = serde_json::from_slice(&diff.stdout).unwrap();
    assert_eq!(diff["changes"], 0, "{diff}");
    sqld.exec("UPDATE t SET n = 12 WHERE id = 2");
    let read = pull(&sqld, dir.path());
    assert!(read.starts_with("whole tables of the mirror"), "{read}");
    sqld.exec("UPDATE t SET n = 13 WHERE id = 1");
    assert_eq!(pull(&sqld, dir.path()), "the pages the log changed");
    assert_same_database(&sqld, &work);
    edit(dir.path(), "UPDATE t SET n = 14 WHERE id = 1");
    ok(&sqld, dir.path(), &["push"]);
    assert_same_database(&sqld, &work);
    ok(&sqld, dir.path(), &["verify"]);
}

/// A mirror broken in `break_it` heals by itself: `status` does not call it valid, the pull
/// exits 0 with the working copy and the base equal to the remote, saying once that the
/// mirror was dropped, and the next pull reads the pages the log changed again.
fn a_broken_mirror_heals(break_it: impl FnOnce(&Path)) {
    let sqld = Sqld::start();
    sqld.exec(
        "CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT, b BLOB); CREATE INDEX t_v ON t(v);
         INSERT INTO t SELECT value, 'v' || value, randomblob(value % 900) FROM generate_series(1, 600);",
    );
    let dir = tempdir();
    init(&sqld, dir.path());
    assert!(status_calls_mirror_valid(&sqld, dir.path()).0);
    break_it(&dir.path().join(".tursync"));
    let (valid, said) = status_calls_mirror_valid(&sqld, dir.path());
    sqld.exec("UPDATE t SET v = 'theirs' WHERE id % 50 = 3; INSERT INTO t(v) VALUES ('new')");
    let out = sqld
        .tursync(dir.path())
        .args(["pull", "--json"])
        .output()
        .unwrap();
    assert!(
        out.status.success() && !valid,
        "status on the broken mirror: {said}\npull: {}\n{}",
        out.status,
        text(&out)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let read = report["read"].as_str().unwrap_or_default().to_owned();
    assert!(
        read.contains("mirror") && read.contains("dropped"),
        "{read}"
    );
    for db in work_and_base(dir.path()) {
        assert_same_database(&sqld, &db);
    }
    assert!(status_calls_mirror_valid(&sqld, dir.path()).0);
    sqld.exec("UPDATE t SET v = 'theirs again' WHERE id = 7");
    assert_eq!(pull(&sqld, dir.path()), "the pages the log changed");
    assert_same_database(&sqld, &dir.path().join("working_copy.db"));
    ok(&sqld, dir.path(), &["verify"]);
}

#[test]
fn a_deleted_mirror_heals() {
    a_broken_mirror_heals(|state| std::fs::remove_file(state.join("mirror.db")).unwrap());
}

#[test]
fn a_mirror_json_ahead_of_the_file_heals() {
    a_broken_mirror_heals(|state| {
        let path = state.join("mirror.json");
        let mut json: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        json["frame_no"] = (json["frame_no"].as_u64().unwrap() + 1).into();
        std::fs::write(&path, json.to_string()).unwrap();
    });
}

#[test]
fn a_truncated_mirror_heals() {
    a_broken_mirror_heals(|state| {
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(state.join("mirror.db"))
            .unwrap();
        let len = f.metadata().unwrap().len();
        f.set_len(len / 2 / 4096 * 4096).unwrap();
    });
}

/// A workspace whose state directory `break_it` damages heals in one pull: the pull exits 0
/// with the working copy and the base equal to the remote, and the pulls after it read the
/// log again (the first not over SQL, the second only the pages the log changed). Returns
/// what the healing pull said of how it read theirs (`read`), and its whole output.
fn heals_in_one_pull(break_it: impl FnOnce(&Path)) -> (String, String) {
    let sqld = Sqld::start();
    sqld.exec(
        "CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT, b BLOB); CREATE INDEX t_v ON t(v);
         INSERT INTO t SELECT value, 'v' || value, randomblob(value % 900) FROM generate_series(1, 600);",
    );
    let dir = tempdir();
    init(&sqld, dir.path());
    sqld.exec("UPDATE t SET v = 'first' WHERE id % 40 = 1");
    assert_eq!(pull(&sqld, dir.path()), "the pages the log changed");
    break_it(&dir.path().join(".tursync"));
    sqld.exec("UPDATE t SET v = 'theirs' WHERE id % 50 = 3; INSERT INTO t(v) VALUES ('new')");
    let out = sqld
        .tursync(dir.path())
        .args(["pull", "--json"])
        .output()
        .unwrap();
    let said = text(&out);
    assert!(out.status.success(), "pull: {}\n{said}", out.status);
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let read = report["read"].as_str().unwrap_or_default().to_owned();
    for db in work_and_base(dir.path()) {
        assert_same_database(&sqld, &db);
    }
    sqld.exec("UPDATE t SET v = 'theirs again' WHERE id = 7");
    let next = pull(&sqld, dir.path());
    assert!(!next.starts_with("over SQL"), "after {read:?}: {next}");
    sqld.exec("UPDATE t SET v = 'and again' WHERE id = 8");
    assert_eq!(pull(&sqld, dir.path()), "the pages the log changed");
    assert_same_database(&sqld, &dir.path().join("working_copy.db"));
    exact(&sqld, dir.path());
    (read, said)
}

/// The healing pull said once that the mirror was dropped.
fn said_dropped_once(read: &str, said: &str) {
    assert!(
        read.contains("mirror") && read.contains("dropped"),
        "{read}"
    );
    assert_eq!(said.matches("dropped").count(), 1, "{said}");
}

#[test]
fn deleted_sums_heal() {
    let (read, said) = heals_in_one_pull(|s| std::fs::remove_file(s.join("mirror.sums")).unwrap());
    said_dropped_once(&read, &said);
}

#[test]
fn truncated_sums_heal() {
    for len in [40, 20, 0] {
        let (read, said) = heals_in_one_pull(|s| {
            let f = std::fs::OpenOptions::new()
                .write(true)
                .open(s.join("mirror.sums"))
                .unwrap();
            f.set_len(len).unwrap();
        });
        said_dropped_once(&read, &said);
    }
}

/// Bytes that look like nothing in particular, the same every run.
fn garbage(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

#[test]
fn garbage_sums_heal() {
    let (read, said) = heals_in_one_pull(|s| {
        let path = s.join("mirror.sums");
        let len = std::fs::metadata(&path).unwrap().len() as usize;
        std::fs::write(&path, garbage(len, 3)).unwrap();
    });
    said_dropped_once(&read, &said);
}

/// The sum of page 1 (read by every statement) flips: nothing is read from the mirror.
#[test]
fn a_flipped_sum_heals() {
    let (read, said) = heals_in_one_pull(|s| {
        use std::os::unix::fs::FileExt;
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(s.join("mirror.sums"))
            .unwrap();
        let at = tursync::page_sums::offset(1);
        let mut b = [0];
        f.read_exact_at(&mut b, at).unwrap();
        f.write_all_at(&[b[0] ^ 4], at).unwrap();
    });
    said_dropped_once(&read, &said);
    assert!(read.contains("checksum"), "{read}");
}

#[test]
fn garbage_mirror_json_heals() {
    let (read, said) =
        heals_in_one_pull(|s| std::fs::write(s.join("mirror.json"), garbage(90, 5)).unwrap());
    said_dropped_once(&read, &said);
}

#[test]
fn a_deleted_mirror_json_heals() {
    let (read, said) = heals_in_one_pull(|s| std::fs::remove_file(s.join("mirror.json")).unwrap());
    said_dropped_once(&read, &said);
}

#[test]
fn a_mirror_deleted_whole_heals() {
    heals_in_one_pull(|s| {
        for f in ["mirror.db", "mirror.json", "mirror.sums"] {
            std::fs::remove_file(s.join(f)).unwrap();
        }
    });
}

/// One bit of the page size in the mirror's header flips (4096 becomes 8192): SQLite then
/// reads pages of another size, none of which may escape the sums.
#[test]
fn a_flipped_page_size_heals() {
    let (read, said) = heals_in_one_pull(|s| {
        use std::os::unix::fs::FileExt;
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(s.join("mirror.db"))
            .unwrap();
        let mut b = [0; 2];
        f.read_exact_at(&mut b, 16).unwrap();
        assert_eq!(b, [0x10, 0], "a page size of 4096");
        f.write_all_at(&[0x20], 16).unwrap();
    });
    said_dropped_once(&read, &said);
}

/// Kills a pull of a few hundred pages while it writes them into the mirror, and waits until
/// it is gone. The spool is left ready.
fn kill_while_applying(sqld: &Sqld, dir: &Path) {
    sqld.exec("UPDATE t SET b = randomblob(2000) WHERE id % 2 = 0");
    let mut child = sqld
        .tursync(dir)
        .args(["pull"])
        .env("TURSYNC_TEST_APPLY_PAUSE_MS", "20")
        .spawn()
        .unwrap();
    let spool = dir.join(".tursync/mirror.spool");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while !spool.exists() {
        assert!(std::time::Instant::now() < deadline, "no spool");
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    std::thread::sleep(std::time::Duration::from_millis(200));
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(spool.exists(), "the pull finished before the kill");
}

/// A spool a killed pull left, then damaged by `break_it` (given its path): the next pull
/// drops it with the mirror, says so once, exits 0 and is exact, and the pulls after it read
/// the log again.
fn a_damaged_spool_heals(break_it: impl FnOnce(&Path)) {
    let sqld = Sqld::start();
    sqld.exec(
        "CREATE TABLE t(id INTEGER PRIMARY KEY, b BLOB);
         INSERT INTO t(b) SELECT randomblob(2000) FROM generate_series(1, 400);",
    );
    let dir = tempdir();
    init(&sqld, dir.path());
    kill_while_applying(&sqld, dir.path());
    let spool = dir.path().join(".tursync/mirror.spool");
    break_it(&spool);
    sqld.exec("UPDATE t SET b = x'00' WHERE id % 9 = 0");
    let out = sqld
        .tursync(dir.path())
        .args(["pull", "--json"])
        .output()
        .unwrap();
    let said = text(&out);
    assert!(out.status.success(), "pull: {}\n{said}", out.status);
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let read = report["read"].as_str().unwrap_or_default().to_owned();
    assert!(!spool.exists());
    for db in work_and_base(dir.path()) {
        assert_same_database(&sqld, &db);
    }
    said_dropped_once(&read, &said);
    assert!(read.contains("mirror.spool"), "{read}");
    sqld.exec("UPDATE t SET b = x'01' WHERE id % 11 = 0");
    assert!(!pull(&sqld, dir.path()).starts_with("over SQL"));
    sqld.exec("UPDATE t SET b = x'02' WHERE id = 5");
    assert_eq!(pull(&sqld, dir.path()), "the pages the log changed");
    exact(&sqld, dir.path());
}

/// The spool's head is 4096 bytes; each frame a 24-byte header and a page of 4096.
const SPOOL_HEAD: u64 = 4096;
const SPOOL_FRAME: u64 = 24 + 4096;

#[test]
fn a_spool_cut_inside_a_frame_heals() {
    a_damaged_spool_heals(|spool| {
        let f = std::fs::OpenOptions::new().write(true).open(spool).unwrap();
        f.set_len(SPOOL_HEAD + 3 * SPOOL_FRAME + 100).unwrap();
    });
}

#[test]
fn a_spool_cut_between_frames_heals() {
    a_damaged_spool_heals(|spool| {
        let f = std::fs::OpenOptions::new().write(true).open(spool).unwrap();
        f.set_len(SPOOL_HEAD + 2 * SPOOL_FRAME).unwrap();
    });
}

#[test]
fn a_spool_with_a_garbage_head_heals() {
    a_damaged_spool_heals(|spool| {
        use std::os::unix::fs::FileExt;
        let f = std::fs::OpenOptions::new().write(true).open(spool).unwrap();
        f.write_all_at(&garbage(64, 7), 0).unwrap();
    });
}

/// A byte of a page in the spool flips: written into the mirror, it would be summed as it
/// is and trusted.
#[test]
fn a_spool_with_a_flipped_page_byte_heals() {
    a_damaged_spool_heals(|spool| {
        use std::os::unix::fs::FileExt;
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(spool)
            .unwrap();
        for frame in 0..8 {
            let at = SPOOL_HEAD + frame * SPOOL_FRAME + 24 + 3000;
            let mut b = [0];
            f.read_exact_at(&mut b, at).unwrap();
            f.write_all_at(&[b[0] ^ 0x10], at).unwrap();
        }
    });
}

#[test]
fn a_garbage_spool_heals() {
    a_damaged_spool_heals(|spool| {
        let len = std::fs::metadata(spool).unwrap().len() as usize;
        std::fs::write(spool, garbage(len, 11)).unwrap();
    });
}

/// Pulls killed at random moments (fetching, writing the spool, applying it, merging, between
/// the working copy's commit and the base's), each followed by one that runs to the end: that
/// one exits 0 and is exact. The teammate's change brings a new table each round and a new
/// column every other round, and after each kill the teammate sets the rows just changed back
/// to what they were: a base left behind by the kill would take that for no change and keep the
/// killed pull's values.
#[test]
fn pulls_killed_at_random_moments_are_finished_exactly() {
    let sqld = Sqld::start();
    sqld.exec(
        "CREATE TABLE t(id INTEGER PRIMARY KEY, b BLOB); CREATE INDEX t_b ON t(b);
         INSERT INTO t(b) SELECT randomblob(1500) FROM generate_series(1, 400);",
    );
    let dir = tempdir();
    init(&sqld, dir.path());
    let mut rng = Rng::from_time("kills");
    for round in 0..6 {
        let every = 2 + rng.below(4);
        let migration = if round % 2 == 1 {
            format!("ALTER TABLE t ADD COLUMN c{round} TEXT DEFAULT 'new';")
        } else {
            String::new()
        };
        sqld.exec(&format!(
            "CREATE TABLE saved AS SELECT id, b FROM t WHERE id % {every} = 0;
             {migration}
             UPDATE t SET b = randomblob(1500 + {round}) WHERE id % {every} = 0;"
        ));
        let mut child = sqld
            .tursync(dir.path())
            .args(["pull"])
            .env("TURSYNC_TEST_APPLY_PAUSE_MS", "2")
            // A window between the two commits wide enough for some kills to land in.
            .env("TURSYNC_TEST_PULL_PAUSE_AFTER_COMMIT_MS", "300")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(std::time::Duration::from_millis(rng.below(900)));
        let _ = child.kill();
        child.wait().unwrap();
        sqld.exec(&format!(
            "UPDATE t SET b = (SELECT s.b FROM saved s WHERE s.id = t.id) WHERE id % {every} = 0;
             DROP TABLE saved;
             INSERT INTO t(b) VALUES (x'{round:02x}')"
        ));
        pull(&sqld, dir.path());
        assert!(!dir.path().join(".tursync/mirror.spool").exists());
        for db in work_and_base(dir.path()) {
            assert_same_database(&sqld, &db);
        }
    }
    exact(&sqld, dir.path());
}

/// Pulls of a long stretch of log (over 2048 frames, read in several streams with the later
/// parts written into the spool in place) killed at random moments, while the streams come, the
/// spool is finished or applied: the next pull exits 0, leaves no spool, and is exact.
#[test]
fn pulls_of_a_long_stretch_killed_at_random_moments_are_finished_exactly() {
    let sqld = Sqld::start();
    sqld.exec(
        "CREATE TABLE t(id INTEGER PRIMARY KEY, v BLOB);
         INSERT INTO t SELECT value, randomblob(3000) FROM generate_series(1, 2500);",
    );
    let dir = tempdir();
    init(&sqld, dir.path());
    let mut rng = Rng::from_time("long kills");
    for round in 0..5 {
        // One page each: 2500 frames, past 2048.
        sqld.exec(&format!(
            "UPDATE t SET v = randomblob(3000 + {round}) WHERE id % 50 != {round};"
        ));
        killed_after(
            sqld.tursync(dir.path())
                .args(["pull"])
                .env("TURSYNC_TEST_APPLY_PAUSE_MS", "1")
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null()),
            std::time::Duration::from_millis(rng.below(1500)),
            &format!("pull, round {round}"),
        );
        sqld.exec(&format!("INSERT INTO t(v) VALUES (x'{round:02x}')"));
        pull(&sqld, dir.path());
        assert!(!dir.path().join(".tursync/mirror.spool").exists());
        exact(&sqld, dir.path());
    }
}

/// The first page of the mirror whose B-tree page kind is `kind` (5: table interior, 13:
/// table leaf) and holds `needle`, if given.
fn find_page(mirror: &[u8], kind: u8, needle: Option<&[u8]>) -> usize {
    mirror
        .chunks(4096)
        .enumerate()
        .skip(1)
        .find(|(_, p)| p[0] == kind && needle.is_none_or(|n| p.windows(n.len()).any(|w| w == n)))
        .map(|(i, _)| i + 1)
        .expect("no such page")
}

fn flip_last_byte(mirror: &Path, page: usize) {
    use std::os::unix::fs::FileExt;
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(mirror)
        .unwrap();
    let at = (page * 4096 - 1) as u64;
    let mut b = [0];
    f.read_exact_at(&mut b, at).unwrap();
    f.write_all_at(&[b[0] ^ 1], at).unwrap();
}

/// A bit of an interior page of the table the pull reads flips (the last byte of its cell
/// content: a child's page number or a key): the pull notices, and nothing of it is merged.
#[test]
fn a_flipped_interior_page_is_never_merged() {
    let sqld = Sqld::start();
    sqld.exec(
        "CREATE TABLE t(id INTEGER PRIMARY KEY, n INT, b BLOB);
         INSERT INTO t SELECT value, 0, randomblob(300) FROM generate_series(1, 3000);",
    );
    let dir = tempdir();
    init(&sqld, dir.path());
    // The mirror keeps its pages in its own file, whose bytes are what is damaged here.
    unshare_mirror(&wc(dir.path()));
    let mirror = dir.path().join(".tursync/mirror.db");
    let page = find_page(&std::fs::read(&mirror).unwrap(), 5, None);
    flip_last_byte(&mirror, page);
    sqld.exec("UPDATE t SET n = 1 WHERE id % 97 = 0");
    let read = pull(&sqld, dir.path());
    for db in work_and_base(dir.path()) {
        assert_same_database(&sqld, &db);
    }
    // Read or not, the page is known damaged now: verify says so, or it is gone.
    let out = sqld
        .tursync(dir.path())
        .args(["verify", "--json"])
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let damaged = v["mirror"]["file"]["ok"] == false;
    assert!(read.contains("checksum") || damaged, "{read}\n{v}");
    sqld.exec("UPDATE t SET n = 2 WHERE id % 89 = 0");
    pull(&sqld, dir.path());
    sqld.exec("UPDATE t SET n = 3 WHERE id % 83 = 0");
    assert_eq!(pull(&sqld, dir.path()), "the pages the log changed");
    exact(&sqld, dir.path());
}

/// A bit flips in a leaf of a table the pulls do not read: they go on, `verify` reports the
/// page, and the first pull that reads the table heals.
#[test]
fn a_flipped_page_of_a_table_not_read_is_reported_and_healed() {
    let sqld = Sqld::start();
    sqld.exec(
        "CREATE TABLE t(id INTEGER PRIMARY KEY, n INT);
         INSERT INTO t SELECT value, 0 FROM generate_series(1, 100);
         CREATE TABLE u(id INTEGER PRIMARY KEY, s TEXT);
         INSERT INTO u SELECT value, 'untouched-' || value FROM generate_series(1, 2000);",
    );
    let dir = tempdir();
    init(&sqld, dir.path());
    // The mirror keeps its pages in its own file, whose bytes are what is damaged here.
    unshare_mirror(&wc(dir.path()));
    let mirror = dir.path().join(".tursync/mirror.db");
    let page = find_page(
        &std::fs::read(&mirror).unwrap(),
        13,
        Some(b"untouched-1000"),
    );
    flip_last_byte(&mirror, page);
    sqld.exec("UPDATE t SET n = 1 WHERE id = 5");
    let read = pull(&sqld, dir.path());
    for db in work_and_base(dir.path()) {
        assert_same_database(&sqld, &db);
    }
    let out = sqld
        .tursync(dir.path())
        .args(["verify", "--json"])
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    if !read.contains("checksum") {
        assert_eq!(out.status.code(), Some(5), "{v}");
        let problems = v["mirror"]["file"]["problems"].to_string();
        assert!(problems.contains(&format!("page {page} ")), "{v}");
    }
    sqld.exec("UPDATE u SET s = 'theirs' WHERE id % 100 = 0");
    let read = pull(&sqld, dir.path());
    for db in work_and_base(dir.path()) {
        assert_same_database(&sqld, &db);
    }
    sqld.exec("UPDATE u SET s = 'theirs again' WHERE id = 1");
    let next = pull(&sqld, dir.path());
    sqld.exec("UPDATE u SET s = 'and again' WHERE id = 2");
    assert_eq!(
        pull(&sqld, dir.path()),
        "the pages the log changed",
        "{read} / {next}"
    );
    exact(&sqld, dir.path());
}

/// A sqld whose log of about 3,500 frames (in transactions of 500 pages: well past a long
/// stretch of 2048 frames) it compacted into snapshots as it grew.
pub(crate) fn long_compacted_log() -> Sqld {
    let sqld = Sqld::start_with_args(&["--max-log-size", "1"]);
    sqld.exec("CREATE TABLE t(id INTEGER PRIMARY KEY, v BLOB)");
    for first in (1..=3500).step_by(500) {
        sqld.exec(&format!(
            "INSERT INTO t SELECT value, randomblob(3000) FROM generate_series({first}, {})",
            first + 499
        ));
    }
    let data = sqld.data_dir().join("dbs/default");
    let count = |d: &str| std::fs::read_dir(data.join(d)).map_or(0, |d| d.count());
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while count("snapshots") == 0 || count("to_compact") > 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "sqld never compacted its log"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    sqld
}

/// A sqld that compacted its log once into snapshots, followed by a long stretch (2200 frames,
/// past 2048) it did not; and how many snapshots it keeps then.
pub(crate) fn compacted_then_long_tail() -> (Sqld, usize) {
    let sqld = Sqld::start_with_args(&["--max-log-size", "16"]);
    sqld.exec("CREATE TABLE t(id INTEGER PRIMARY KEY, v BLOB)");
    let compacted = grow_past_a_compaction_then_long_tail(&sqld);
    (sqld, compacted)
}

/// Inserts into table `t(id, v)` of `sqld` (started with `--max-log-size 16`) rows 1 to 6700
/// of one page each, waits for sqld to compact its log once they passed 16 MB, and returns
/// how many snapshots it keeps then; the last 2200 rows stay in the log after them.
pub(crate) fn grow_past_a_compaction_then_long_tail(sqld: &Sqld) -> usize {
    // Compacted once the log passes 16 MB: 4500 pages of 4 KB in transactions of 500 pass it
    // once, and 2200 more (past 2048 frames) stay in the log after it.
    let insert = |first: u32, n: u32| {
        sqld.exec(&format!(
            "INSERT INTO t SELECT value, randomblob(3000) FROM generate_series({first}, {})",
            first + n - 1
        ))
    };
    (0..9).for_each(|i| insert(1 + i * 500, 500));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while snapshot_files(sqld, "snapshots") == 0 || snapshot_files(sqld, "to_compact") > 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "sqld never compacted its log"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let compacted = snapshot_files(sqld, "snapshots");
    (0..5).for_each(|i| insert(4501 + i * 440, 440));
    compacted
}

/// How many files sqld keeps in directory `d` of its database (`snapshots`, `to_compact`).
pub(crate) fn snapshot_files(sqld: &Sqld, d: &str) -> usize {
    let data = sqld.data_dir().join("dbs/default");
    std::fs::read_dir(data.join(d)).map_or(0, |d| d.count())
}

/// A proxy in front of `sqld` that logs the requests and passes the streams' frames on as
/// they come.
pub(crate) fn relaying_streams(sqld: &Sqld) -> HookProxy {
    HookProxy::start(&sqld.url, |head, _| {
        if head.contains("Log/LogEntries ") {
            Verdict::Relay
        } else {
            Verdict::Forward
        }
    })
}

/// A log that sqld compacted, followed by a long stretch it did not (a database in use for a
/// while): the clone reads the snapshots, then that stretch in streams, as it would a log never
/// compacted. It was read in batches, which sqld builds whole before sending their first byte,
/// one after the other.
#[test]
fn a_long_stretch_after_the_snapshots_is_read_in_streams() {
    let (sqld, compacted) = compacted_then_long_tail();
    let count = |d: &str| snapshot_files(&sqld, d);
    let proxy = relaying_streams(&sqld);
    let dir = tempdir();
    ok(&sqld, dir.path(), &["init", "--url", &proxy.url]);
    assert_eq!(
        count("snapshots"),
        compacted,
        "sqld compacted the stretch too"
    );
    let requests = proxy.take_requests();
    let last_snapshot = requests.iter().rposition(|r| r.ends_with("Log/Snapshot"));
    let streams: Vec<usize> = (0..requests.len())
        .filter(|&i| requests[i].ends_with("Log/LogEntries"))
        .collect();
    assert!(last_snapshot.is_some(), "no snapshot read: {requests:#?}");
    assert_eq!(
        streams.len() as u64,
        tursync::mirror::LOG_STREAMS,
        "{requests:#?}"
    );
    assert!(
        streams.iter().all(|&i| Some(i) > last_snapshot),
        "{requests:#?}"
    );
    // The streams read the stretch: no batch was left to read it.
    assert!(
        !requests.iter().any(|r| r.contains("/BatchLogEntries")),
        "{requests:#?}"
    );
    exact(&sqld, dir.path());
    let r = reads(&sqld, dir.path(), &sqld.rw_token);
    assert_eq!(r["streams"]["on"], true, "{r}");
}

/// A clone of a long compacted log through a proxy that answers the first snapshot asked for,
/// and the one after the next, with `fault`: the snapshot is asked again (a failed look is not
/// taken to mean that the log holds the frame, which would send the clone to streams of
/// compacted frames), no stream is asked for, and the clone is exact.
fn a_clone_of_a_compacted_log_asks_again_after(fault: Verdict) {
    let sqld = long_compacted_log();
    let asked = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let seen = asked.clone();
    let proxy = HookProxy::start(&sqld.url, move |head, _| {
        if head.contains("/Snapshot ") {
            let n = seen.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            if n == 0 || n == 2 {
                return fault;
            }
        }
        Verdict::Forward
    });
    let dir = tempdir();
    ok(&sqld, dir.path(), &["init", "--url", &proxy.url]);
    let requests = proxy.requests();
    assert!(
        asked.load(std::sync::atomic::Ordering::SeqCst) > 3,
        "{requests:#?}"
    );
    assert!(
        !requests.iter().any(|r| r.contains("/LogEntries")),
        "a stream asked for: {requests:#?}"
    );
    exact(&sqld, dir.path());
}

/// The connection drops as the snapshot is asked for.
#[test]
fn a_clone_of_a_compacted_log_asks_a_dropped_snapshot_again() {
    a_clone_of_a_compacted_log_asks_again_after(Verdict::Drop);
}

/// The snapshot's answer breaks off mid-body.
#[test]
fn a_clone_of_a_compacted_log_asks_a_snapshot_cut_short_again() {
    a_clone_of_a_compacted_log_asks_again_after(Verdict::Cut(300_000));
}

/// sqld compacts its log into snapshots, and a log stream (`LogEntries`) asked for a frame it
/// compacted sends nothing at all (measured: not `NEED_SNAPSHOT`, nothing, for as long as it is
/// left open), where a batch answers `NEED_SNAPSHOT` at once. A clone of a long compacted log
/// must not wait on that silence (half a second at least, on every such clone): it reads the
/// snapshots, one request each, asks for no stream of frames the log no longer holds, and
/// leaves streams on for the log's next long stretch.
#[test]
fn a_clone_of_a_long_compacted_log_asks_no_stream_of_what_was_compacted() {
    let sqld = long_compacted_log();
    let proxy = HookProxy::start(&sqld.url, |_, _| Verdict::Forward);
    let dir = tempdir();
    ok(&sqld, dir.path(), &["init", "--url", &proxy.url]);
    let requests = proxy.take_requests();
    assert!(
        requests.iter().any(|r| r.contains("/Snapshot")),
        "no snapshot read: {requests:#?}"
    );
    assert!(
        !requests.iter().any(|r| r.contains("/LogEntries")),
        "a stream asked for: {requests:#?}"
    );
    // One snapshot after the other, with no batch between to be told `NEED_SNAPSHOT`: each
    // costs one request, which a server far away charges a round trip.
    let last_snapshot = requests.iter().rposition(|r| r.contains("/Snapshot"));
    let first_batch = requests.iter().position(|r| r.contains("/BatchLogEntries"));
    assert!(
        first_batch.is_none_or(|b| last_snapshot.is_some_and(|s| s < b)),
        "a batch before a snapshot: {requests:#?}"
    );
    exact(&sqld, dir.path());
    let r = reads(&sqld, dir.path(), &sqld.rw_token);
    assert_eq!(r["path"], "log", "{r}");
    assert_eq!(r["streams"]["on"], true, "{r}");
}

/// A clone of a compacted log keeps its connections (each new one costs a round trip, two on
/// https): two at most, since the snapshot after each one is asked for on a second connection
/// while that one still comes (and a new connection's round trips are spent meanwhile, not
/// after it). The snapshots, the looks for the snapshot after each (the last of which sqld
/// answers "snapshot not found", headers only) and the batches after them all go out on those
/// two.
#[test]
fn a_clone_of_a_compacted_log_keeps_two_connections() {
    let sqld = long_compacted_log();
    let proxy = HookProxy::far(&sqld.url, std::time::Duration::from_millis(1));
    let dir = tempdir();
    ok(&sqld, dir.path(), &["init", "--url", &proxy.url]);
    let requests = proxy.requests();
    let connections = proxy.take_connections();
    assert!(
        requests.iter().any(|r| r.contains("/Snapshot")),
        "no snapshot read: {requests:#?}"
    );
    assert!(
        (1..=2).contains(&connections),
        "{} requests on {connections} connections: {requests:#?}",
        requests.len()
    );
    exact(&sqld, dir.path());
}

/// A teammate inserting rows of one page into `t` of `sqld` from `first` on, `rows` a
/// transaction, until the flag is set or the rows reach `until`.
pub(crate) fn keep_inserting(
    sqld: &Sqld,
    first: u32,
    rows: u32,
    until: u32,
) -> (
    std::sync::Arc<std::sync::atomic::AtomicBool>,
    std::thread::JoinHandle<()>,
) {
    let url = sqld.url.clone();
    let token = sqld.rw_token.clone();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stopping = stop.clone();
    let writer = std::thread::spawn(move || {
        let mut first = first;
        while !stopping.load(std::sync::atomic::Ordering::SeqCst) && first < until {
            exec_at(
                &url,
                &token,
                &format!(
                    "INSERT INTO t SELECT value, randomblob(3000) FROM generate_series({first}, {})",
                    first + rows - 1
                ),
            );
            first += rows;
        }
    });
    (stop, writer)
}

/// Clones and pulls while sqld keeps compacting its log (a teammate writing transactions of
/// 1.5 MB on a log of at most 1 MB: each one compacted while the next is read): whatever
/// `Snapshot` answers meanwhile ("snapshot not found" while one is being written), every clone
/// and pull ends, and each workspace is exact once the writes stop. (Written unbounded, the
/// teammate took the database past 1 GB in most runs, which found the lock-byte page's fault:
/// `a_pull_that_grows_the_database_past_one_gigabyte_is_exact`.)
#[test]
fn clones_and_pulls_while_sqld_compacts_end_exact() {
    let sqld = Sqld::start_with_args(&["--max-log-size", "1"]);
    sqld.exec("CREATE TABLE t(id INTEGER PRIMARY KEY, v BLOB)");
    sqld.exec("INSERT INTO t SELECT value, randomblob(3000) FROM generate_series(1, 3000)");
    // At most 200 transactions (300 MB): the churn of compaction, not the size, is the point
    // here (a database past 1 GB has its own test).
    let (stop, writer) = keep_inserting(&sqld, 100_000, 500, 200_000);
    let dirs: Vec<TempDir> = (0..3).map(|_| tempdir()).collect();
    for d in &dirs {
        init(&sqld, d.path());
    }
    for d in &dirs {
        ok(&sqld, d.path(), &["pull"]);
    }
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    writer.join().unwrap();
    for d in &dirs {
        ok(&sqld, d.path(), &["pull"]);
        exact(&sqld, d.path());
    }
}

/// A pull that grows the database past 1 GB. SQLite keeps the page holding the byte at offset
/// 1 GB for its file locks: it is in the file, never used, and SQLite's pager refuses to read
/// or write it. The base's move to the mirror page for page counted it among the pages the
/// file grew by, so the pull failed ("database disk image is malformed"), and so did every pull
/// after it. The rows are zero blobs of 4 MB (sqld takes rows of up to 5 MB), 64 MB a
/// transaction.
#[test]
fn a_pull_that_grows_the_database_past_one_gigabyte_is_exact() {
    let sqld = Sqld::start();
    sqld.exec("CREATE TABLE t(id INTEGER PRIMARY KEY, v BLOB); INSERT INTO t VALUES (0, x'01')");
    let dir = tempdir();
    init(&sqld, dir.path());
    for first in (1..=272).step_by(16) {
        sqld.exec(&format!(
            "INSERT INTO t SELECT value, zeroblob(4000000) FROM generate_series({first}, {})",
            first + 15
        ));
    }
    let check = "SELECT count(*), sum(length(v)), sum(id) FROM t";
    let pages = sqld.query("PRAGMA page_count");
    assert!(
        matches!(pages[..], [ref row] if matches!(row[..], [Cell::Integer(n)] if n > 262_145)),
        "the remote holds {pages:?} pages"
    );
    let read = pull(&sqld, dir.path());
    assert!(!read.contains("over SQL"), "{read}");
    let wc = dir.path().join("working_copy.db");
    assert_eq!(local_query(&wc, check), sqld.query(check));
    for file in [wc.clone(), dir.path().join(".tursync/base.db")] {
        assert_eq!(
            local_query(&file, "PRAGMA quick_check"),
            vec![vec![Cell::text("ok")]],
            "{}",
            file.display()
        );
    }
    // And the next pull is a pull like any other.
    sqld.exec("UPDATE t SET v = x'02' WHERE id = 0; INSERT INTO t VALUES (1000, x'03')");
    pull(&sqld, dir.path());
    assert_eq!(local_query(&wc, check), sqld.query(check));
    let diff = ok(&sqld, dir.path(), &["diff", "--json"]);
    let diff: serde_json::Value = serde_json::from_slice(&diff.stdout).unwrap();
    assert_eq!(diff["changes"], 0, "{diff}");
}

/// A pull whose log rewrites a row of an internal table that spills onto overflow pages (the
/// `sqlite_sequence` row of a table with a 5000-character name, its counter past the leaf),
/// with the leaf itself written too (another table's counter on it): the overflow pages belong
/// to that table's written leaf, so the pull still reads only the pages the log changed, not
/// every table whole for "a page changed outside every B-tree".
#[test]
fn an_internal_tables_overflow_pages_keep_a_pull_on_the_pages_the_log_changed() {
    let sqld = Sqld::start();
    let long = format!("t{}", "a".repeat(5000));
    sqld.exec(&format!(
        "CREATE TABLE {long}(id INTEGER PRIMARY KEY AUTOINCREMENT, v TEXT);
         CREATE TABLE s(id INTEGER PRIMARY KEY AUTOINCREMENT, v TEXT);
         INSERT INTO {long}(v) VALUES ('a');
         INSERT INTO s(v) SELECT printf('%050d', value) FROM generate_series(1, 2000);"
    ));
    let dir = tempdir();
    init(&sqld, dir.path());
    sqld.exec(&format!(
        "INSERT INTO {long}(v) VALUES ('b');
         INSERT INTO s(v) VALUES ('new');"
    ));
    assert_eq!(pull(&sqld, dir.path()), "the pages the log changed");
    assert_same_database(&sqld, &dir.path().join("working_copy.db"));
}
