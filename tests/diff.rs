//! `tursync diff`: applying its SQL to a copy of the base must give the working copy, checked
//! by our own exact comparison and by `sqldiff` as an outside oracle.

use std::path::Path;
use std::process::Command;

use crate::common::*;

/// Every table's rows (rowid included) plus the schema, counters and user_version, in a total
/// order, so two files compare exactly. Virtual tables are read through themselves; their
/// shadow tables may differ in layout while holding the same rows.
fn snapshot(db: &Path) -> Vec<(String, Vec<Vec<Cell>>)> {
    let mut out = vec![(
        "schema".to_owned(),
        local_query(
            db,
            "SELECT type, name, tbl_name, sql FROM sqlite_schema ORDER BY type, name",
        ),
    )];
    let tables = local_query(
        db,
        "SELECT name, wr FROM pragma_table_list WHERE schema = 'main' AND type IN ('table', 'virtual') \
         AND name NOT LIKE 'sqlite_%' ORDER BY name",
    );
    for row in tables {
        let (Cell::Text(name), Cell::Integer(wr)) = (&row[0], &row[1]) else {
            panic!("{row:?}")
        };
        let q = name.replace('"', "\"\"");
        let select = if *wr == 1 {
            let n = local_query(
                db,
                &format!(
                    "SELECT count(*) FROM pragma_table_info('{}')",
                    name.replace('\'', "''")
                ),
            );
            let Cell::Integer(n) = n[0][0] else { panic!() };
            format!(
                "SELECT * FROM \"{q}\" ORDER BY {}",
                (1..=n).map(|i| i.to_string()).collect::<Vec<_>>().join(",")
            )
        } else {
            let cols = local_query(
                db,
                &format!(
                    "SELECT lower(name) FROM pragma_table_info('{}')",
                    name.replace('\'', "''")
                ),
            );
            let alias = ["rowid", "_rowid_", "oid"]
                .into_iter()
                .find(|a| !cols.iter().any(|c| c[0] == Cell::text(a)))
                .unwrap();
            format!("SELECT {alias}, * FROM \"{q}\" ORDER BY {alias}")
        };
        if is_shadow(db, name) {
            continue;
        }
        out.push((name.clone(), local_query(db, &select)));
    }
    if !local_query(
        db,
        "SELECT 1 FROM sqlite_schema WHERE name = 'sqlite_sequence'",
    )
    .is_empty()
    {
        out.push((
            "sqlite_sequence".into(),
            local_query(db, "SELECT name, seq FROM sqlite_sequence ORDER BY name"),
        ));
    }
    out.push((
        "user_version".into(),
        local_query(db, "PRAGMA user_version"),
    ));
    out
}

fn is_shadow(db: &Path, name: &str) -> bool {
    !local_query(
        db,
        &format!(
            "SELECT 1 FROM pragma_table_list WHERE name = '{}' AND type = 'shadow'",
            name.replace('\'', "''")
        ),
    )
    .is_empty()
}

fn assert_same_snapshot(a: &Path, b: &Path) {
    let (sa, sb) = (snapshot(a), snapshot(b));
    assert_eq!(
        sa.len(),
        sb.len(),
        "different tables:\n{:?}\n{:?}",
        sa.iter().map(|t| &t.0).collect::<Vec<_>>(),
        sb.iter().map(|t| &t.0).collect::<Vec<_>>()
    );
    for (ta, tb) in sa.iter().zip(&sb) {
        assert_eq!(ta.0, tb.0);
        if let Some(i) = (0..ta.1.len().min(tb.1.len())).find(|&i| ta.1[i] != tb.1[i]) {
            panic!("{}: row {i} differs\n {:?}\n {:?}", ta.0, ta.1[i], tb.1[i]);
        }
        assert_eq!(ta.1.len(), tb.1.len(), "{}: row counts differ", ta.0);
    }
}

/// `sqldiff` must find nothing between the two files, table by table (shadow tables of
/// virtual tables aside: their layout depends on how rows were written, not on what they are).
fn assert_sqldiff_clean(a: &Path, b: &Path) {
    let tables = local_query(b, "SELECT name FROM pragma_table_list WHERE schema = 'main' AND type = 'table' AND name NOT LIKE 'sqlite_%'");
    for row in tables {
        let Cell::Text(name) = &row[0] else { panic!() };
        let out = Command::new("sqldiff")
            .args(["--table", name])
            .arg(a)
            .arg(b)
            .output()
            .expect("sqldiff (Debian package sqlite3-tools) must be installed: scripts/test.sh installs it");
        assert!(
            out.status.success(),
            "sqldiff failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            out.stdout.is_empty(),
            "sqldiff --table {name} found differences:\n{}",
            String::from_utf8_lossy(&out.stdout)
        );
    }
}

/// Runs `tursync diff --sql` in `dir`, applies it to a copy of the base, and checks the result.
fn check_roundtrip(dir: &Path) -> String {
    let out = run_ok(tursync(dir).args(["diff", "--sql"]));
    let sql = String::from_utf8(out.stdout).unwrap();
    let wc = dir.join("working_copy.db");
    let applied = base_copy(&wc, &dir.join("applied.db"));
    rusqlite::Connection::open(&applied)
        .unwrap()
        .execute_batch(&sql)
        .unwrap_or_else(|e| panic!("{e}\n{sql}"));
    assert_same_snapshot(&applied, &wc);
    assert_sqldiff_clean(&applied, &wc);
    sql
}

#[test]
fn every_exactness_case_edited_diffs_exactly() {
    let sqld = Sqld::start();
    sqld.exec(include_str!("fixtures/exact.sql"));
    let dir = tempdir();
    ok(&sqld, dir.path(), &["init", "--url", &sqld.url]);
    let out = run_ok(tursync(dir.path()).arg("diff"));
    assert!(String::from_utf8_lossy(&out.stdout).ends_with("nothing to push\n"));

    let wc = dir.path().join("working_copy.db");
    rusqlite::Connection::open(&wc)
        .unwrap()
        .execute_batch(include_str!("fixtures/edits.sql"))
        .unwrap();

    let sql = check_roundtrip(dir.path());
    assert!(
        sql.contains("ALTER TABLE \"textpk\" ADD COLUMN extra TEXT DEFAULT 'dflt';"),
        "{sql}"
    );
    assert!(
        !sql.contains("\"b\" = ") || !sql.contains("UPDATE \"gen\" SET \"b\""),
        "generated columns are not data"
    );

    let out = run_ok(tursync(dir.path()).args(["diff", "--json"]));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let table = |name: &str| {
        json["tables"]
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["table"] == name)
            .cloned()
            .unwrap_or_else(|| panic!("{name} missing in {json}"))
    };
    assert_eq!(
        (
            table("wr")["inserted"].clone(),
            table("wr")["updated"].clone(),
            table("wr")["deleted"].clone()
        ),
        (2.into(), 1.into(), 1.into())
    );
    let reals = table("reals");
    let first = reals["changes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["key"][0]["value"] == "1")
        .unwrap();
    assert_eq!(
        first["set"]["v"]["old"],
        serde_json::json!({"type": "float", "value": -0.0})
    );
    assert_eq!(
        first["set"]["v"]["new"],
        serde_json::json!({"type": "float", "value": 0.0})
    );
    let schema: Vec<String> = json["schema"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            format!(
                "{} {}",
                c["change"].as_str().unwrap(),
                c["name"].as_str().unwrap()
            )
        })
        .collect();
    for expected in [
        "table_dropped wide",
        "table_added added \"table\"",
        "table_added rebuilt_src",
        "columns_added textpk",
        "index_dropped plain_a",
        "index_added plain_b",
        "view_dropped view \"q\"",
        "view_added v_new",
        "trigger_dropped weird \"trigger\"",
        "trigger_added t_new",
    ] {
        assert!(
            schema.contains(&expected.to_owned()),
            "{expected} not in {schema:?}"
        );
    }

    let one = run_ok(tursync(dir.path()).args(["diff", "--json", "--table", "wr"]));
    let one: serde_json::Value = serde_json::from_slice(&one.stdout).unwrap();
    assert_eq!(one["tables"].as_array().unwrap().len(), 1);

    let status = ok(&sqld, dir.path(), &["status"]);
    let text = String::from_utf8_lossy(&status.stdout);
    assert!(text.trim_end().ends_with("changes to push"), "{text}");
}

#[test]
fn a_changed_column_type_rebuilds_the_table() {
    let sqld = Sqld::start();
    sqld.exec(
        "CREATE TABLE t(id INTEGER PRIMARY KEY, v INT); INSERT INTO t VALUES (1, 1), (2, 2); CREATE INDEX t_v ON t(v);",
    );
    let dir = tempdir();
    ok(&sqld, dir.path(), &["init", "--url", &sqld.url]);
    rusqlite::Connection::open(dir.path().join("working_copy.db"))
        .unwrap()
        .execute_batch("CREATE TABLE t2(id INTEGER PRIMARY KEY, v TEXT); INSERT INTO t2 SELECT id, v || '!' FROM t; DROP TABLE t; ALTER TABLE t2 RENAME TO t; CREATE INDEX t_v ON t(v);")
        .unwrap();
    let sql = check_roundtrip(dir.path());
    assert!(sql.contains("DROP TABLE \"t\""), "{sql}");
}

mod properties {
    use super::*;
    use proptest::prelude::*;

    fn literal() -> impl Strategy<Value = String> {
        prop_oneof![
            Just("NULL".to_owned()),
            any::<i64>().prop_map(|i| i.to_string()),
            prop_oneof![
                Just(0.0f64),
                Just(-0.0),
                Just(1.0),
                Just(5e-324),
                any::<f64>().prop_filter("finite", |f| f.is_finite())
            ]
            .prop_map(|f| format!("{f:e}")),
            "[a-c'\" ]{0,4}".prop_map(|s| format!("'{}'", s.replace('\'', "''"))),
            proptest::collection::vec(any::<u8>(), 0..4).prop_map(|b| format!(
                "x'{}'",
                b.iter().map(|x| format!("{x:02x}")).collect::<String>()
            )),
            Just("1".to_owned()),
            Just("1.0".to_owned()),
            Just("'1'".to_owned()),
        ]
    }

    #[derive(Debug, Clone)]
    enum Edit {
        Insert(i64, Vec<String>),
        Update(i64, usize, String),
        Delete(i64),
    }

    fn edit(ncols: usize) -> impl Strategy<Value = Edit> {
        prop_oneof![
            (0..40i64, proptest::collection::vec(literal(), ncols))
                .prop_map(|(k, v)| Edit::Insert(k, v)),
            (0..40i64, 0..ncols, literal()).prop_map(|(k, c, v)| Edit::Update(k, c, v)),
            (0..40i64).prop_map(Edit::Delete),
        ]
    }

    #[derive(Debug, Clone)]
    struct Case {
        without_rowid: bool,
        ncols: usize,
        base: Vec<Edit>,
        work: Vec<Edit>,
    }

    fn case() -> impl Strategy<Value = Case> {
        (any::<bool>(), 1..4usize).prop_flat_map(|(without_rowid, ncols)| {
            (
                proptest::collection::vec(edit(ncols), 0..30),
                proptest::collection::vec(edit(ncols), 0..30),
            )
                .prop_map(move |(base, work)| Case {
                    without_rowid,
                    ncols,
                    base,
                    work,
                })
        })
    }

    fn apply(conn: &rusqlite::Connection, key: &str, edits: &[Edit]) {
        for e in edits {
            let sql = match e {
                Edit::Insert(k, vals) => {
                    let cols: Vec<String> = (0..vals.len()).map(|c| format!("c{c}")).collect();
                    format!(
                        "INSERT OR REPLACE INTO t({key}, {}) VALUES ({k}, {})",
                        cols.join(", "),
                        vals.join(", ")
                    )
                }
                Edit::Update(k, c, v) => format!("UPDATE t SET c{c} = {v} WHERE {key} = {k}"),
                Edit::Delete(k) => format!("DELETE FROM t WHERE {key} = {k}"),
            };
            conn.execute_batch(&sql).unwrap();
        }
    }

    /// Random bases and random edits, diffed by the library directly (no server involved:
    /// this is a property of two local files).
    #[test]
    fn applying_the_diff_to_the_base_gives_the_working_copy() {
        let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig::with_cases(40));
        runner
            .run(&case(), |c| {
                let dir = tempdir();
                let base = dir.path().join("base.db");
                let work = dir.path().join("work.db");
                let cols: Vec<String> = (0..c.ncols).map(|i| format!("c{i}")).collect();
                let (create, key) = if c.without_rowid {
                    (
                        format!(
                            "CREATE TABLE t(k INTEGER PRIMARY KEY, {}) WITHOUT ROWID",
                            cols.join(", ")
                        ),
                        "k",
                    )
                } else {
                    (format!("CREATE TABLE t({})", cols.join(", ")), "rowid")
                };
                let conn = rusqlite::Connection::open(&base).unwrap();
                conn.execute_batch(&create).unwrap();
                apply(&conn, key, &c.base);
                drop(conn);
                std::fs::copy(&base, &work).unwrap();
                apply(&rusqlite::Connection::open(&work).unwrap(), key, &c.work);

                let b = rusqlite::Connection::open(&base).unwrap();
                let w = rusqlite::Connection::open(&work).unwrap();
                let cs = tursync::diff::diff(&b, &w, &Default::default()).unwrap();
                let mut sql = Vec::new();
                cs.write_sql(&mut sql).unwrap();
                // Printed as the rows are read (`diff --sql`, `diff --json`), byte for byte
                // what the changeset in memory prints.
                let streamed = tursync::diff::Diff::new(&b, &w, &Default::default()).unwrap();
                let (mut sql2, mut json, mut json2) = (Vec::new(), Vec::new(), Vec::new());
                streamed.write_sql(&mut sql2).unwrap();
                prop_assert_eq!(&sql, &sql2);
                cs.write_json(&mut json).unwrap();
                streamed.write_json(&mut json2).unwrap();
                prop_assert_eq!(&json, &json2);
                drop(streamed);
                b.execute_batch(std::str::from_utf8(&sql).unwrap()).unwrap();
                drop((b, w));
                assert_same_snapshot(&base, &work);
                assert_sqldiff_clean(&base, &work);
                Ok(())
            })
            .unwrap();
    }
}

/// An app writes pairs of rows (one in `a`, one in `b`, in one transaction) while diffs run:
/// every diff must see whole transactions only, in WAL and in rollback-journal mode.
#[test]
fn diff_reads_one_consistent_snapshot_while_the_app_writes() {
    for mode in ["wal", "delete"] {
        let sqld = Sqld::start();
        // `middle` is diffed between `a` and `b` and takes a while, so writes land in between.
        sqld.exec(
            "CREATE TABLE a(id INTEGER PRIMARY KEY, v); CREATE TABLE middle(x); CREATE TABLE b(id INTEGER PRIMARY KEY, v); \
             WITH RECURSIVE c(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM c WHERE i < 100000) INSERT INTO middle SELECT i FROM c;",
        );
        let dir = tempdir();
        ok(&sqld, dir.path(), &["init", "--url", &sqld.url]);
        let wc = dir.path().join("working_copy.db");
        let conn = rusqlite::Connection::open(&wc).unwrap();
        conn.pragma_update(None, "journal_mode", mode).unwrap();
        conn.busy_timeout(std::time::Duration::from_secs(10))
            .unwrap();
        let ws = tursync::workspace::Workspace::locate(Some(&wc)).unwrap();
        let stop = std::sync::atomic::AtomicBool::new(false);
        let stop = &stop;
        std::thread::scope(|s| {
            s.spawn(move || {
                let mut i = 0;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    conn.execute_batch(&format!(
                        "BEGIN IMMEDIATE; INSERT INTO a(v) VALUES ({i}); INSERT INTO b(v) VALUES (randomblob(200)); COMMIT;"
                    ))
                    .unwrap();
                    i += 1;
                    std::thread::sleep(std::time::Duration::from_millis(1));
                }
            });
            // Stops the writer even when an assertion below fails, so the failure is reported
            // instead of the scope waiting forever for the writer.
            struct StopOnDrop<'a>(&'a std::sync::atomic::AtomicBool);
            impl Drop for StopOnDrop<'_> {
                fn drop(&mut self) {
                    self.0.store(true, std::sync::atomic::Ordering::Relaxed);
                }
            }
            let _stop_writer = StopOnDrop(stop);
            // Diff until several diffs have landed in the middle of the writes.
            let (mut busy_diffs, started) = (0, std::time::Instant::now());
            while busy_diffs < 8 && started.elapsed() < std::time::Duration::from_secs(20) {
                let cs = ws.diff(&Default::default()).unwrap();
                let count = |name: &str| {
                    cs.tables
                        .iter()
                        .find(|t| t.table.name == name)
                        .map_or(0, |t| t.changes.len())
                };
                assert_eq!(
                    count("a"),
                    count("b"),
                    "{mode}: diff saw half a transaction"
                );
                busy_diffs += usize::from(count("a") > 0);
            }
            assert_eq!(busy_diffs, 8, "{mode}: the writer never got in");
        });
    }
}
