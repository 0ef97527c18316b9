//! `tursync init` and `tursync dump` against a real sqld: exactness, bad inputs, properties.

use std::path::Path;
use std::time::{Duration, Instant};

use crate::common::*;

#[test]
fn clone_and_dump_are_exact() {
    let sqld = Sqld::start();
    sqld.exec(include_str!("fixtures/exact.sql"));
    let dir = tempdir();
    let out = init(&sqld, dir.path());
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("skipped internal tables: _litestream_seq"),
        "{stdout}"
    );

    let wc = dir.path().join("working_copy.db");
    assert_same_database(&sqld, &wc);

    // Spot checks that the comparison above would catch a renumbered or converted row.
    assert_eq!(
        local_query(&wc, "SELECT _rowid_, rowid FROM shadowed ORDER BY 1"),
        vec![
            vec![Cell::Integer(10), Cell::text("not the rowid")],
            vec![Cell::Integer(20), Cell::text("also not")]
        ]
    );
    assert_eq!(
        local_query(&wc, "SELECT v FROM reals WHERE id = 1"),
        vec![vec![Cell::real(-0.0)]]
    );
    assert_eq!(
        local_query(&wc, "SELECT seq FROM sqlite_sequence WHERE name = 'auto'"),
        vec![vec![Cell::Integer(3)]]
    );
    assert_eq!(
        local_query(&wc, "SELECT count(*) FROM audit"),
        vec![vec![Cell::Integer(1)]],
        "a trigger fired during load"
    );
    assert_eq!(
        local_query(&wc, "SELECT rowid FROM docs WHERE docs MATCH 'hello'"),
        vec![vec![Cell::Integer(1)]]
    );
    assert_eq!(
        local_query(&wc, "PRAGMA integrity_check"),
        vec![vec![Cell::text("ok")]]
    );
    assert_eq!(
        local_query(&wc, "PRAGMA journal_mode"),
        vec![vec![Cell::text("delete")]]
    );

    // The base snapshot is the same database, and the config names the URL but not the token.
    let state = dir.path().join(".tursync");
    assert_eq!(std::fs::read(&wc).unwrap(), base_image(&wc));
    let config = std::fs::read_to_string(state.join("config.json")).unwrap();
    assert!(config.contains(&sqld.url), "{config}");
    for entry in std::fs::read_dir(&state).unwrap() {
        let bytes = std::fs::read(entry.unwrap().path()).unwrap();
        assert!(
            !String::from_utf8_lossy(&bytes).contains(&sqld.rw_token),
            "token written to disk"
        );
    }

    // `dump` (remote, URL from the config) and `dump --local` both load into the same database.
    for (args, file) in [
        (vec!["dump", "--out", "remote.sql"], "remote.sql"),
        (vec!["dump", "--local", "-o", "local.sql"], "local.sql"),
    ] {
        ok(&sqld, dir.path(), &args);
        let loaded = dir.path().join(format!("{file}.db"));
        let conn = rusqlite::Connection::open(&loaded).unwrap();
        conn.execute_batch(&std::fs::read_to_string(dir.path().join(file)).unwrap())
            .unwrap();
        drop(conn);
        assert_same_database(&sqld, &loaded);
    }

    // `status` finds everything from the directory alone, and never shows the token.
    let out = ok(&sqld, dir.path(), &["status", "--json"]);
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(status["remote"]["state"], "ok", "{status}");
    assert_eq!(status["remote"]["url"], sqld.url.as_str());
    assert_eq!(status["working_copy"]["exists"], true);
    assert_eq!(status["external_tools_needed"], serde_json::json!([]));
    let text = ok(&sqld, dir.path(), &["status"]);
    let all = format!(
        "{}{}",
        String::from_utf8_lossy(&text.stdout),
        String::from_utf8_lossy(&text.stderr)
    );
    assert!(all.contains("none needed"), "{all}");
    assert!(!all.contains(&sqld.rw_token));
}

#[test]
fn bad_inputs_fail_cleanly_and_leave_nothing_behind() {
    let sqld = Sqld::start();
    sqld.exec("CREATE TABLE t(a); INSERT INTO t VALUES (1);");
    let dir = tempdir();
    let nothing_left = |dir: &Path| {
        let names: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert!(names.is_empty(), "left behind: {names:?}");
    };

    // A bad token: authentication failed, the token is not echoed, exit code 1.
    let bad = "eyJhbGciOiJFZERTQSJ9.eyJhIjoicncifQ.bm90LWEtcmVhbC1zaWduYXR1cmU";
    let out = run_err(
        tursync(dir.path())
            .args(["init", "--url", &sqld.url])
            .env("TURSO_AUTH_TOKEN", bad),
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1));
    assert!(err.contains("authentication failed"), "{err}");
    assert!(!err.contains(bad) && !String::from_utf8_lossy(&out.stdout).contains(bad));
    nothing_left(dir.path());

    // No token at all.
    let out = run_err(tursync(dir.path()).args(["init", "--url", &sqld.url]));
    assert!(String::from_utf8_lossy(&out.stderr).contains("authentication failed"));
    nothing_left(dir.path());

    // An unreachable server is reported within seconds.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let started = Instant::now();
    let out =
        run_err(tursync(dir.path()).args(["init", "--url", &format!("http://127.0.0.1:{port}")]));
    assert!(started.elapsed() < Duration::from_secs(10));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("cannot reach"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    nothing_left(dir.path());

    // No URL is a usage error.
    let out = run_err(tursync(dir.path()).arg("init"));
    assert_eq!(out.status.code(), Some(2));
    let out = run_err(tursync(dir.path()).args(["init", "--url", "ftp://x"]));
    assert_eq!(out.status.code(), Some(2));

    // An existing working copy is kept unless --force.
    init(&sqld, dir.path());
    sqld.exec("INSERT INTO t VALUES (2);");
    let wc = dir.path().join("working_copy.db");
    rusqlite::Connection::open(&wc)
        .unwrap()
        .execute_batch("INSERT INTO t VALUES ('local edit')")
        .unwrap();
    let out = run_err(sqld.tursync(dir.path()).args(["init", "--url", &sqld.url]));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--force"));
    assert_eq!(
        local_query(&wc, "SELECT count(*) FROM t"),
        vec![vec![Cell::Integer(2)]]
    );
    ok(&sqld, dir.path(), &["init", "--force", "--url", &sqld.url]);
    assert_table_eq(&sqld, &wc, "SELECT rowid, a FROM t ORDER BY rowid");

    // A .env file supplies what the environment does not.
    let other = tempdir();
    std::fs::write(
        other.path().join(".env"),
        format!(
            "TURSO_DATABASE_URL={}\nTURSO_AUTH_TOKEN={}\n",
            sqld.url, sqld.rw_token
        ),
    )
    .unwrap();
    run_ok(tursync(other.path()).arg("init"));
    assert_table_eq(
        &sqld,
        &other.path().join("working_copy.db"),
        "SELECT rowid, a FROM t ORDER BY rowid",
    );
}

/// Every file under `dir` with its bytes, to show a directory was left exactly as it was.
fn snapshot(dir: &Path) -> std::collections::BTreeMap<std::path::PathBuf, Vec<u8>> {
    let mut out = std::collections::BTreeMap::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                todo.push(p);
            } else {
                out.insert(p.clone(), std::fs::read(&p).unwrap());
            }
        }
    }
    out
}

/// A state directory whose config cannot be read may belong to another working copy: init
/// leaves it exactly as it is, says what it found and what to do, and exits 1; `--force`
/// replaces it.
#[test]
fn init_refuses_a_state_directory_it_cannot_read_unless_forced() {
    let sqld = Sqld::start();
    sqld.exec("CREATE TABLE t(a); INSERT INTO t VALUES (1);");
    let dir = tempdir();
    // Another working copy's state, its config damaged.
    ok(
        &sqld,
        dir.path(),
        &["init", "--db", "other.db", "--url", &sqld.url],
    );
    let state = dir.path().join(".tursync");
    std::fs::write(
        state.join("config.json"),
        "{\"version\": 1, \"url\": garbage",
    )
    .unwrap();
    let before = snapshot(&state);

    let out = run_err(sqld.tursync(dir.path()).args(["init", "--url", &sqld.url]));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("config.json"), "names the file: {err}");
    assert!(
        err.contains("expected value"),
        "gives the parse error: {err}"
    );
    assert!(err.contains("--force"), "says what to do: {err}");
    assert_eq!(snapshot(&state), before, "the state directory was changed");
    assert!(!dir.path().join("working_copy.db").exists());

    // A state directory with no config at all is not ours to remove either.
    std::fs::remove_file(state.join("config.json")).unwrap();
    let before = snapshot(&state);
    let out = run_err(sqld.tursync(dir.path()).args(["init", "--url", &sqld.url]));
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("--force"), "{}", text(&out));
    assert_eq!(snapshot(&state), before, "the state directory was changed");

    ok(&sqld, dir.path(), &["init", "--force", "--url", &sqld.url]);
    let config = std::fs::read_to_string(state.join("config.json")).unwrap();
    assert!(config.contains("\"working_copy.db\""), "{config}");
    assert_table_eq(
        &sqld,
        &dir.path().join("working_copy.db"),
        "SELECT rowid, a FROM t ORDER BY rowid",
    );
}

mod properties {
    use super::*;
    use proptest::prelude::*;

    #[derive(Debug, Clone)]
    enum Gen {
        Null,
        Int(i64),
        Real(f64),
        Text(String),
        Blob(Vec<u8>),
    }

    fn literal(v: &Gen) -> String {
        match v {
            Gen::Null => "NULL".into(),
            Gen::Int(i) => format!("{i}"),
            Gen::Real(f) => format!("{f:e}"),
            Gen::Text(s) => format!("'{}'", s.replace('\'', "''")),
            Gen::Blob(b) => format!(
                "x'{}'",
                b.iter().map(|x| format!("{x:02x}")).collect::<String>()
            ),
        }
    }

    fn value() -> impl Strategy<Value = Gen> {
        prop_oneof![
            Just(Gen::Null),
            any::<i64>().prop_map(Gen::Int),
            any::<f64>()
                .prop_filter("finite", |f| f.is_finite())
                .prop_map(Gen::Real),
            "[^\u{0}]{0,12}".prop_map(Gen::Text),
            proptest::collection::vec(any::<u8>(), 0..12).prop_map(Gen::Blob),
        ]
    }

    #[derive(Debug, Clone)]
    struct TableSpec {
        name: String,
        types: Vec<&'static str>,
        without_rowid: bool,
        rows: Vec<(i64, Vec<Gen>)>,
    }

    fn table() -> impl Strategy<Value = TableSpec> {
        (
            "[a-zA-Z \"'é]{1,8}",
            proptest::collection::vec(
                prop_oneof![
                    Just(""),
                    Just("INTEGER"),
                    Just("REAL"),
                    Just("TEXT"),
                    Just("BLOB"),
                    Just("NUMERIC")
                ],
                1..5,
            ),
            any::<bool>(),
        )
            .prop_flat_map(|(name, types, without_rowid)| {
                let n = types.len();
                let rows = proptest::collection::vec(
                    (any::<i64>(), proptest::collection::vec(value(), n)),
                    0..20,
                );
                (Just(name), Just(types), Just(without_rowid), rows)
            })
            .prop_map(|(name, types, without_rowid, rows)| TableSpec {
                name,
                types,
                without_rowid,
                rows,
            })
    }

    fn create_sql(i: usize, t: &TableSpec) -> String {
        let name = format!("{}{i}", t.name).replace('"', "\"\"");
        let cols: Vec<String> = t
            .types
            .iter()
            .enumerate()
            .map(|(c, ty)| format!("\"c{c}\" {ty}"))
            .collect();
        let mut sql = if t.without_rowid {
            format!(
                "CREATE TABLE \"{name}\"(k INTEGER PRIMARY KEY, {}) WITHOUT ROWID;\n",
                cols.join(", ")
            )
        } else {
            format!("CREATE TABLE \"{name}\"({});\n", cols.join(", "))
        };
        for (key, vals) in &t.rows {
            let vals: Vec<String> = vals.iter().map(literal).collect();
            let key_col = if t.without_rowid { "k" } else { "rowid" };
            let names: Vec<String> = (0..vals.len()).map(|c| format!("\"c{c}\"")).collect();
            sql += &format!(
                "INSERT OR REPLACE INTO \"{name}\"({key_col}, {}) VALUES ({key}, {});\n",
                names.join(", "),
                vals.join(", ")
            );
        }
        sql
    }

    #[test]
    fn random_databases_clone_identically() {
        let sqld = Sqld::start();
        let dir = tempdir();
        let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig::with_cases(12));
        runner
            .run(&proptest::collection::vec(table(), 1..4), |tables| {
                let existing = sqld.query("SELECT name FROM sqlite_schema WHERE type = 'table'");
                let mut sql: String = existing
                    .iter()
                    .map(|r| match &r[0] {
                        Cell::Text(n) => format!("DROP TABLE \"{}\";\n", n.replace('"', "\"\"")),
                        _ => String::new(),
                    })
                    .collect();
                for (i, t) in tables.iter().enumerate() {
                    sql += &create_sql(i, t);
                }
                sqld.exec(&sql);
                ok(&sqld, dir.path(), &["init", "--force", "--url", &sqld.url]);
                assert_same_database(&sqld, &dir.path().join("working_copy.db"));
                Ok(())
            })
            .unwrap();
    }
}

/// What a user expects of a command-line tool: `--version` names the commit it was built from,
/// `--help` names each alias once, and `completions` prints a script for each shell.
#[test]
fn version_help_and_completions() {
    let dir = tempdir();
    let out = run_ok(tursync(dir.path()).arg("--version"));
    let version = String::from_utf8(out.stdout).unwrap();
    let commit = version
        .trim()
        .strip_prefix(&format!("tursync {} (", env!("CARGO_PKG_VERSION")))
        .and_then(|v| v.strip_suffix(')'))
        .unwrap_or_else(|| panic!("{version}"));
    assert!(
        commit == "unknown commit"
            || (commit.len() == 12 && commit.bytes().all(|b| b.is_ascii_hexdigit())),
        "{version}"
    );
    let help = text(&run_ok(tursync(dir.path()).arg("--help")));
    assert_eq!(help.matches("dump-init").count(), 1, "{help}");
    assert_eq!(help.matches("dump-push").count(), 1, "{help}");
    for (shell, mark) in [
        ("bash", "complete -F"),
        ("zsh", "#compdef tursync"),
        ("fish", "complete -c tursync"),
    ] {
        let script = text(&run_ok(tursync(dir.path()).args(["completions", shell])));
        assert!(
            script.contains(mark) && script.contains("pull"),
            "{shell}: {script}"
        );
    }
}
