//! Exactness in every byte, against a real sqld: TEXT that is not UTF-8, control characters in
//! SQL text output read back by the sqlite3 shell, infinite REALs, values the remote's SQLite
//! converts, `sqlite_sequence` without AUTOINCREMENT tables, split pushes stopped midway.
//! Apps are separate processes: the sqlite3 shell.

use std::path::Path;

use crate::common::*;

/// A copy of the base of the working copy in `dir`, beside it, to query.
fn base(dir: &Path) -> std::path::PathBuf {
    base_copy(&wc(dir), &dir.join("base-copy.db"))
}

/// Both local files hold exactly what the remote holds in `select`.
fn assert_everywhere(sqld: &Sqld, dir: &Path, select: &str) {
    assert_table_eq(sqld, &wc(dir), select);
    assert_table_eq(sqld, &base(dir), select);
}

/// An app writing to `db`: a separate OS process on Python's stock sqlite3 driver
/// (`tests/fixtures/exact_app.py`), running `sql`, or binding the rows of [`app_rows`].
fn app(db: &Path, sql: &str) {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/exact_app.py");
    let out = std::process::Command::new("python3")
        .arg(&script)
        .arg(db)
        .arg(sql)
        .output()
        .unwrap();
    assert!(out.status.success(), "the app failed: {}", text(&out));
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
    init(&sqld, dir.path());
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
    init(&sqld, dir.path());
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
    init(&sqld, dir.path());
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
    base_copy(&wc(dir.path()), &applied);
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
    init(&sqld, dir.path());
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
    init(&sqld, dir.path());
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
    init(&sqld, dir.path());
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
    init(&sqld, dir.path());
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
    let ws = tursync::workspace::Workspace::locate(Some(&wc(dir.path()))).unwrap();
    let (endpoint, _) = tursync::remote::Endpoint::parse(&sqld.url).unwrap();
    let remote = tursync::remote::Remote::new(endpoint, Some(sqld.rw_token.clone()));
    let opts = tursync::push::PushOptions {
        rows_per_transaction: 1000,
    };
    let stopped =
        tursync::push::push(&ws, &remote, opts, &tursync::progress::Progress::hidden()).unwrap();
    assert!(
        matches!(stopped, tursync::Outcome::Conflicts(_)),
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

/// A value as the property test generates it: storage class and exact content.
#[derive(Debug, Clone)]
enum V {
    Null,
    Int(i64),
    Real(f64),
    Text(Vec<u8>),
    Blob(Vec<u8>),
}

impl V {
    /// What [`exact_select`] shows for this value in a column without affinity.
    fn shown(&self) -> [Cell; 2] {
        let hex = |b: &[u8]| Cell::Text(hex(b));
        match self {
            V::Null => [Cell::text("null"), Cell::Null],
            V::Int(i) => [Cell::text("integer"), Cell::Integer(*i)],
            V::Real(f) if f.is_infinite() => [
                Cell::text("real"),
                Cell::text(if *f > 0.0 { "Inf" } else { "-Inf" }),
            ],
            V::Real(f) => [Cell::text("real"), Cell::real(*f)],
            V::Text(t) => [Cell::text("text"), hex(t)],
            V::Blob(b) => [Cell::text("blob"), hex(b)],
        }
    }
}

/// Rows for [`app_rows`], passed as text: `class:hex` per value.
fn encode_rows(rows: &[(i64, V)]) -> String {
    rows.iter()
        .map(|(id, v)| {
            let (class, bytes) = match v {
                V::Null => ("n", vec![]),
                V::Int(i) => ("i", i.to_be_bytes().to_vec()),
                V::Real(f) => ("r", f.to_bits().to_be_bytes().to_vec()),
                V::Text(t) => ("t", t.clone()),
                V::Blob(b) => ("b", b.clone()),
            };
            format!("{id}:{class}:{}", hex(&bytes))
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// The app writes `rows` (id, value) into every column of `t`, bound as parameters: exact, by
/// construction, with no SQL text in between.
fn app_rows(db: &Path, rows: &[(i64, V)]) {
    app(db, &format!("-- rows {}", encode_rows(rows)));
}

fn values() -> impl proptest::strategy::Strategy<Value = V> {
    use proptest::prelude::*;
    let controls: Vec<u8> = (0u8..32).chain([0x7f]).collect();
    prop_oneof![
        Just(V::Null),
        prop_oneof![Just(i64::MIN), Just(i64::MAX), Just(0), any::<i64>()].prop_map(V::Int),
        prop_oneof![
            Just(f64::INFINITY),
            Just(f64::NEG_INFINITY),
            Just(-0.0),
            Just(5e-324),
            Just(-f64::from_bits(0x000f_ffff_ffff_ffff)),
            (1u64..(1 << 52)).prop_map(f64::from_bits),
            any::<f64>().prop_filter("SQLite stores no NaN", |f| !f.is_nan()),
        ]
        .prop_map(V::Real),
        proptest::collection::vec(any::<u8>(), 0..12).prop_map(V::Text),
        proptest::collection::vec(
            prop_oneof![proptest::sample::select(controls), Just(b'a'), Just(b'\'')],
            0..12
        )
        .prop_map(V::Text),
        Just(V::Text(b"a\r\nb\r\n".to_vec())),
        Just(V::Blob(vec![])),
        proptest::collection::vec(any::<u8>(), 0..8).prop_map(V::Blob),
    ]
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig { cases: 6, ..Default::default() })]

    /// Any values, cloned, edited, pushed and pulled, are byte for byte the same on every side,
    /// and the base equals the remote after every push.
    #[test]
    fn any_values_travel_exactly_on_every_side(
        first in proptest::collection::vec(values(), 1..10),
        second in proptest::collection::vec(values(), 1..10),
    ) {
        let sqld = Sqld::start();
        sqld.exec("CREATE TABLE t(id INTEGER PRIMARY KEY, a, r REAL, x TEXT, i INTEGER, b BLOB);");
        let dir = tempdir();
        init(&sqld, dir.path());
        let cols = ["id", "a", "r", "x", "i", "b"];
        let select = exact_select("t", &cols, "id");
        let rows: Vec<(i64, V)> = first.into_iter().enumerate().map(|(i, v)| (i as i64, v)).collect();
        app_rows(&wc(dir.path()), &rows);
        // The untyped column holds exactly what the app wrote.
        let shown: Vec<Vec<Cell>> = rows.iter().map(|(id, v)| {
            let mut r = vec![Cell::Integer(*id)];
            r.extend(v.shown());
            r
        }).collect();
        proptest::prop_assert_eq!(
            local_query(&wc(dir.path()), "SELECT id, typeof(a), CASE typeof(a) WHEN 'text' THEN hex(a) \
             WHEN 'blob' THEN hex(a) WHEN 'real' THEN iif(a IN (9e999, -9e999), CAST(a AS TEXT), a) ELSE a END FROM t ORDER BY id"),
            shown
        );
        ok(&sqld, dir.path(), &["push"]);
        assert_everywhere(&sqld, dir.path(), &select);
        assert_nothing_pending(dir.path());

        // Someone else moves values around on the remote; pull brings them exactly.
        sqld.exec("UPDATE t SET a = x, x = a, b = r WHERE id % 2 = 0;");
        ok(&sqld, dir.path(), &["pull"]);
        assert_everywhere(&sqld, dir.path(), &select);

        // The app edits again: changed rows, new rows.
        let rows: Vec<(i64, V)> = second.into_iter().enumerate().map(|(i, v)| (i as i64 * 2, v)).collect();
        app_rows(&wc(dir.path()), &rows);
        ok(&sqld, dir.path(), &["push"]);
        assert_everywhere(&sqld, dir.path(), &select);

        // A fresh clone and a dump loaded with the sqlite3 shell hold the same.
        let other = tempdir();
        init(&sqld, other.path());
        assert_everywhere(&sqld, other.path(), &select);
        let dump = ok(&sqld, dir.path(), &["dump"]);
        let loaded = dir.path().join("loaded.db");
        load_with_cli(&loaded, &dump.stdout);
        assert_table_eq(&sqld, &loaded, &select);
    }
}
