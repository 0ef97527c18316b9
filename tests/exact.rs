//! Exactness in every byte, against a real sqld: TEXT that is not UTF-8, control characters in
//! SQL text output read back by the sqlite3 shell, infinite REALs, values the remote's SQLite
//! converts, `sqlite_sequence` without AUTOINCREMENT tables, split pushes stopped midway.
//! Apps are separate processes: the sqlite3 shell.

mod common;

use std::path::Path;
use std::process::Output;

use common::*;

fn cmd(sqld: &Sqld, dir: &Path, args: &[&str]) -> Output {
    tursync(dir)
        .args(args)
        .env("TURSO_DATABASE_URL", &sqld.url)
        .env("TURSO_AUTH_TOKEN", &sqld.rw_token)
        .output()
        .unwrap()
}

fn ok(sqld: &Sqld, dir: &Path, args: &[&str]) -> Output {
    let out = cmd(sqld, dir, args);
    assert!(
        out.status.success(),
        "tursync {args:?} exited with {}\n{}",
        out.status,
        text(&out)
    );
    out
}

fn wc(dir: &Path) -> std::path::PathBuf {
    dir.join("working_copy.db")
}

fn base(dir: &Path) -> std::path::PathBuf {
    dir.join(".tursync/base.db")
}

/// The working copy and the base agree and `diff` has nothing to push.
fn assert_nothing_pending(dir: &Path) {
    let out = run_ok(tursync(dir).arg("diff"));
    assert!(text(&out).ends_with("nothing to push\n"), "{}", text(&out));
}

/// Both local files hold exactly what the remote holds in `select`.
fn assert_everywhere(sqld: &Sqld, dir: &Path, select: &str) {
    assert_table_eq(sqld, &wc(dir), select);
    assert_table_eq(sqld, &base(dir), select);
}

/// An app writing to `db`: this test binary run again as a separate process, through
/// [`app_entry`], with the bundled SQLite, which (unlike the shell's 3.40) keeps `-0.0` in REAL
/// columns.
fn app(db: &Path, sql: &str) {
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--ignored", "--exact", "app_entry", "--nocapture"])
        .env("EXACT_APP_DB", db)
        .env("EXACT_APP_SQL", sql)
        .output()
        .unwrap();
    assert!(
        out.status.success() && text(&out).contains("1 passed"),
        "the app failed: {}",
        text(&out)
    );
}

/// The app's body (see [`app`]); ignored in normal runs.
#[test]
#[ignore = "run by app() as a separate process"]
fn app_entry() {
    let db = std::env::var_os("EXACT_APP_DB").expect("EXACT_APP_DB");
    let sql = std::env::var("EXACT_APP_SQL").expect("EXACT_APP_SQL");
    rusqlite::Connection::open(db)
        .unwrap()
        .execute_batch(&sql)
        .unwrap();
}

/// Loads SQL text with the sqlite3 shell into a new file.
fn load_with_cli(path: &Path, script: &[u8]) {
    let _ = std::fs::remove_file(path);
    sqlite3_cli(path, script);
}

#[test]
fn text_that_is_not_utf8_is_pushed_exactly_and_leaves_nothing_pending() {
    let sqld = Sqld::start();
    sqld.exec(
        "CREATE TABLE n(id INTEGER PRIMARY KEY, t TEXT, u); INSERT INTO n VALUES (1, 'a', 'b');",
    );
    let dir = tempdir();
    ok(&sqld, dir.path(), &["init"]);
    // An app written in C stores raw Latin-1 bytes as TEXT.
    app(
        &wc(dir.path()),
        "UPDATE n SET t = CAST(X'4361666ce9' AS TEXT) WHERE id = 1; \
         INSERT INTO n VALUES (2, CAST(X'ff00fe' AS TEXT), CAST(X'c3' AS TEXT));",
    );
    ok(&sqld, dir.path(), &["push"]);
    let select = exact_select("n", &["id", "t", "u"], "id");
    assert_everywhere(&sqld, dir.path(), &select);
    assert_eq!(
        sqld.query("SELECT hex(t) FROM n WHERE id = 1"),
        vec![vec![Cell::text("4361666CE9")]]
    );
    assert_nothing_pending(dir.path());
    ok(&sqld, dir.path(), &["push"]);
    ok(&sqld, dir.path(), &["pull"]);
    assert_everywhere(&sqld, dir.path(), &select);
}

#[test]
fn text_that_is_not_utf8_on_the_remote_clones_dumps_and_pulls_exactly() {
    let sqld = Sqld::start();
    sqld.exec(
        "CREATE TABLE n(id INTEGER PRIMARY KEY, t TEXT, u); \
         INSERT INTO n VALUES (1, CAST(X'4361666ce9' AS TEXT), 'x'), (2, 'ok', CAST(X'80' AS TEXT));",
    );
    let dir = tempdir();
    ok(&sqld, dir.path(), &["init"]);
    let select = exact_select("n", &["id", "t", "u"], "id");
    assert_everywhere(&sqld, dir.path(), &select);

    let dump = ok(&sqld, dir.path(), &["dump"]);
    let loaded = dir.path().join("loaded.db");
    load_with_cli(&loaded, &dump.stdout);
    assert_table_eq(&sqld, &loaded, &select);

    sqld.exec(
        "INSERT INTO n VALUES (3, CAST(X'e282' AS TEXT), 1); UPDATE n SET u = 2 WHERE id = 1;",
    );
    ok(&sqld, dir.path(), &["pull"]);
    assert_everywhere(&sqld, dir.path(), &select);
    assert_nothing_pending(dir.path());
}

/// Every control character, CR LF pairs and a lone CR at the end of a line included.
fn control_text() -> Vec<u8> {
    let mut t: Vec<u8> = (1u8..32).collect();
    t.extend_from_slice(b"a\r\nb\r\n\r\rc\n\x7f'\"");
    t
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02X}")).collect()
}

#[test]
fn control_characters_survive_dump_and_diff_sql_through_the_sqlite3_shell() {
    let sqld = Sqld::start();
    let t = hex(&control_text());
    sqld.exec(&format!(
        "CREATE TABLE c(id INTEGER PRIMARY KEY, v TEXT, w);\
         INSERT INTO c VALUES (1, CAST(X'{t}' AS TEXT), 'a' || char(13, 10) || 'b'), (2, char(13), char(10, 13));"
    ));
    let dir = tempdir();
    ok(&sqld, dir.path(), &["init"]);
    let select = exact_select("c", &["id", "v", "w"], "id");
    assert_everywhere(&sqld, dir.path(), &select);

    let dump = ok(&sqld, dir.path(), &["dump"]);
    let loaded = dir.path().join("loaded.db");
    load_with_cli(&loaded, &dump.stdout);
    assert_table_eq(&sqld, &loaded, &select);

    // diff --sql, applied with the shell to a copy of the base, gives the working copy.
    app(
        &wc(dir.path()),
        &format!(
            "UPDATE c SET w = CAST(X'{t}' AS TEXT) WHERE id = 2; \
             INSERT INTO c VALUES (3, 'x' || char(13,10,13,10) || 'y', char(9, 0, 13, 10));"
        ),
    );
    let sql = run_ok(tursync(dir.path()).args(["diff", "--sql"]));
    let applied = dir.path().join("applied.db");
    std::fs::copy(base(dir.path()), &applied).unwrap();
    sqlite3_cli(&applied, &sql.stdout);
    assert_eq!(
        local_query(&applied, &select),
        local_query(&wc(dir.path()), &select)
    );
}

#[test]
fn infinities_travel_in_clone_pull_dump_and_push() {
    let sqld = Sqld::start();
    sqld.exec(
        "CREATE TABLE f(id INTEGER PRIMARY KEY, r REAL, a); \
         INSERT INTO f VALUES (1, 9e999, -9e999), (2, 1.5, 9e999);",
    );
    let dir = tempdir();
    ok(&sqld, dir.path(), &["init"]);
    let select = exact_select("f", &["id", "r", "a"], "id");
    assert_everywhere(&sqld, dir.path(), &select);

    let dump = ok(&sqld, dir.path(), &["dump"]);
    let loaded = dir.path().join("loaded.db");
    load_with_cli(&loaded, &dump.stdout);
    assert_table_eq(&sqld, &loaded, &select);

    sqld.exec("INSERT INTO f VALUES (3, -9e999, 1); UPDATE f SET a = 9e999 WHERE id = 1;");
    ok(&sqld, dir.path(), &["pull"]);
    assert_everywhere(&sqld, dir.path(), &select);

    app(
        &wc(dir.path()),
        "INSERT INTO f VALUES (4, 9e999, -9e999); UPDATE f SET r = -9e999 WHERE id = 2;",
    );
    ok(&sqld, dir.path(), &["sync"]);
    assert_everywhere(&sqld, dir.path(), &select);
    assert_nothing_pending(dir.path());
}

#[test]
fn values_the_remote_converts_are_recorded_in_the_base_as_stored() {
    let sqld = Sqld::start();
    sqld.exec(
        "CREATE TABLE z(id INTEGER PRIMARY KEY, r REAL, n); INSERT INTO z VALUES (1, 1.0, 1);",
    );
    let dir = tempdir();
    ok(&sqld, dir.path(), &["init"]);
    app(
        &wc(dir.path()),
        "UPDATE z SET r = -0.0, n = -0.0 WHERE id = 1; INSERT INTO z VALUES (2, -0.0, -0.0);",
    );
    ok(&sqld, dir.path(), &["push"]);
    let select = exact_select("z", &["id", "r", "n"], "id");
    // The base holds what the remote stored; the remote moved by nothing else.
    assert_table_eq(&sqld, &base(dir.path()), &select);
    // The next edit of those rows is no conflict, and pull sees nothing new.
    app(
        &wc(dir.path()),
        "UPDATE z SET n = 7 WHERE id = 1; UPDATE z SET n = 8 WHERE id = 2;",
    );
    ok(&sqld, dir.path(), &["push"]);
    assert_table_eq(&sqld, &base(dir.path()), &select);
    let pulled = ok(&sqld, dir.path(), &["pull"]);
    assert!(!text(&pulled).contains("conflict"), "{}", text(&pulled));
    assert_table_eq(&sqld, &base(dir.path()), &select);
    assert_eq!(
        sqld.query("SELECT id, n FROM z ORDER BY id"),
        vec![
            vec![Cell::Integer(1), Cell::Integer(7)],
            vec![Cell::Integer(2), Cell::Integer(8)]
        ]
    );
}

#[test]
fn sqlite_sequence_left_by_a_dropped_autoincrement_table_clones_exactly() {
    let sqld = Sqld::start();
    sqld.exec(
        "CREATE TABLE gone(id INTEGER PRIMARY KEY AUTOINCREMENT); INSERT INTO gone VALUES (5); \
         CREATE TABLE t(a); INSERT INTO t VALUES (1); DROP TABLE gone;",
    );
    let dir = tempdir();
    ok(&sqld, dir.path(), &["init"]);
    assert_same_database(&sqld, &wc(dir.path()));
    assert_same_database(&sqld, &base(dir.path()));
    let dump = ok(&sqld, dir.path(), &["dump"]);
    let loaded = dir.path().join("loaded.db");
    load_with_cli(&loaded, &dump.stdout);
    assert_same_database(&sqld, &loaded);
    // A new AUTOINCREMENT table on the remote is pulled, counter and all.
    sqld.exec(
        "CREATE TABLE a(id INTEGER PRIMARY KEY AUTOINCREMENT, v); INSERT INTO a(v) VALUES (1);",
    );
    ok(&sqld, dir.path(), &["pull"]);
    assert_same_database(&sqld, &wc(dir.path()));
}

/// A push cut into transactions that stops after the first (here: someone else changed a row of
/// the second) leaves every index and view on the remote, so pull works and push then finishes.
#[test]
fn a_split_push_stopped_midway_keeps_every_object_and_can_be_finished() {
    let sqld = Sqld::start();
    sqld.exec(
        "CREATE TABLE t(id INTEGER PRIMARY KEY, v, w); CREATE INDEX t_v ON t(v); \
         CREATE VIEW big AS SELECT id FROM t WHERE v > 10; \
         INSERT INTO t VALUES (1, 1, 1), (5000, 2, 2);",
    );
    let dir = tempdir();
    ok(&sqld, dir.path(), &["init"]);
    app(
        &wc(dir.path()),
        "DROP INDEX t_v; CREATE INDEX t_v ON t(v, w); DROP VIEW big; \
         CREATE VIEW big AS SELECT id FROM t WHERE v > 100; CREATE INDEX t_w ON t(w); \
         WITH RECURSIVE c(i) AS (SELECT 2 UNION ALL SELECT i + 1 FROM c WHERE i < 2500) \
         INSERT INTO t SELECT i, i, i FROM c; \
         UPDATE t SET v = 3 WHERE id = 5000;",
    );
    // Someone else changes the same cell of a row of the last transaction.
    sqld.exec("UPDATE t SET v = 4 WHERE id = 5000;");
    let ws = tursync::snapshot::Workspace::locate(Some(&wc(dir.path()))).unwrap();
    let (endpoint, _) = tursync::remote::Endpoint::parse(&sqld.url).unwrap();
    let remote = tursync::remote::Remote::new(endpoint, Some(sqld.rw_token.clone()));
    let opts = tursync::push::PushOptions {
        rows_per_transaction: 1000,
    };
    let stopped =
        tursync::push::push(&ws, &remote, opts, &tursync::progress::Progress::hidden()).unwrap();
    assert!(
        stopped.is_err(),
        "the last transaction should meet the conflict"
    );
    assert!(
        sqld.query("SELECT count(*) FROM t")[0][0] != Cell::Integer(2),
        "the first transactions committed"
    );
    // Every object is there, in its old or its new form.
    let objects = sqld.query("SELECT type, name FROM sqlite_schema ORDER BY name");
    for name in ["t_v", "big"] {
        assert!(
            objects.iter().any(|r| r[1] == Cell::text(name)),
            "{name} is missing on the remote between transactions: {objects:?}"
        );
    }
    ok(&sqld, dir.path(), &["pull", "--theirs"]);
    ok(&sqld, dir.path(), &["push"]);
    assert_same_data(&sqld, &wc(dir.path()), true);
    assert_nothing_pending(dir.path());
}
