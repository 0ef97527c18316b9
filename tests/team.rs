//! Several working copies on one remote (issue 9). What is here so far: tursync's own writes can
//! never be rewritten by a table's conflict clause.

use std::collections::BTreeMap;
use std::path::Path;

use crate::common::*;

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
    assert_eq!(
        out.status.code(),
        Some(3),
        "the push replaced B's row: {}",
        text(&out)
    );
    assert_eq!(
        sqld.query("SELECT id, email FROM users ORDER BY id"),
        vec![vec![Cell::Integer(10), Cell::text("x@ex.com")]],
        "B's row stays, A's did not land"
    );

    let out = run(&sqld, a.path(), &["pull"]);
    assert_eq!(
        out.status.code(),
        Some(3),
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

const TEAM_SCHEMA: &str = "
    CREATE TABLE parent(id INTEGER PRIMARY KEY, name TEXT, n INTEGER DEFAULT 0);
    CREATE TABLE child(id INTEGER PRIMARY KEY, parent_id INTEGER REFERENCES parent(id), v TEXT);
    CREATE TABLE auto(id INTEGER PRIMARY KEY AUTOINCREMENT, v TEXT);
    CREATE TABLE nokey(v TEXT);
    CREATE TABLE accounts(email TEXT PRIMARY KEY, name TEXT);
    INSERT INTO parent(id, name) VALUES (1, 'seed');
    INSERT INTO auto(v) VALUES ('seed');
    INSERT INTO nokey VALUES ('seed');";

/// What one teammate's app adds: in every kind of table, rows that take the next free ids
/// of its own working copy, so every teammate takes the same ones.
fn add_rows(dir: &Path, who: &str) {
    edit(
        dir,
        &format!(
            "INSERT INTO parent(name) VALUES ('{who}-p1'), ('{who}-p2');
             INSERT INTO child(parent_id, v) SELECT id, name || '-child' FROM parent WHERE name LIKE '{who}-%';
             INSERT INTO auto(v) VALUES ('{who}-a1'), ('{who}-a2');
             INSERT INTO nokey VALUES ('{who}-n1');
             INSERT INTO accounts VALUES ('{who}@ex.com', '{who}');"
        ),
    );
}

/// A remote holding `schema`, and two working copies of it.
fn two_clones(schema: &str) -> (Sqld, TempDir, TempDir) {
    let sqld = Sqld::start();
    sqld.exec(schema);
    let (a, b) = (tempdir(), tempdir());
    for d in [&a, &b] {
        ok(&sqld, d.path(), &["init", "--url", &sqld.url]);
    }
    (sqld, a, b)
}

/// Measured: three working copies adding rows at once; the first push lands, the others are
/// stuck with exit 3 forever, in INTEGER PRIMARY KEY, AUTOINCREMENT, key-less and TEXT PRIMARY
/// KEY tables alike. Now the later ones' new rows are renumbered past everything taken, with
/// the references to them, and everything lands exactly once.
#[test]
fn teammates_adding_rows_at_once_all_land_renumbered() {
    let sqld = Sqld::start();
    sqld.exec(TEAM_SCHEMA);
    let team: Vec<TempDir> = (0..3).map(|_| tempdir()).collect();
    let names = ["ann", "bob", "cat"];
    for (d, who) in team.iter().zip(names) {
        ok(&sqld, d.path(), &["init", "--url", &sqld.url]);
        add_rows(d.path(), who);
    }
    ok(&sqld, team[0].path(), &["push"]);
    // bob's new rows took ann's ids: push stops and says how to go on.
    let out = run(&sqld, team[1].path(), &["push"]);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    assert!(text(&out).contains("tursync sync"), "{}", text(&out));
    let out = ok(&sqld, team[1].path(), &["sync", "--json"]);
    let report: serde_json::Value =
        serde_json::from_str(text(&out).lines().next().unwrap()).unwrap();
    let renumbered = report["renumbered"]
        .as_array()
        .expect("renumbered rows listed");
    assert!(
        renumbered
            .iter()
            .any(|r| r["table"] == "parent" && r["from"] == 2),
        "{report}"
    );
    ok(&sqld, team[2].path(), &["sync"]);
    for d in &team {
        ok(&sqld, d.path(), &["sync"]);
    }

    for (name, expect) in [
        ("parent", 7),
        ("child", 6),
        ("auto", 7),
        ("nokey", 4),
        ("accounts", 3),
    ] {
        assert_eq!(
            sqld.query(&format!("SELECT count(*) FROM {name}")),
            vec![vec![Cell::Integer(expect)]],
            "{name}: every row exactly once"
        );
    }
    // Every child points at its own parent.
    assert_eq!(
        sqld.query("SELECT count(*) FROM child JOIN parent ON parent.id = child.parent_id WHERE child.v = parent.name || '-child'"),
        vec![vec![Cell::Integer(6)]]
    );
    // The AUTOINCREMENT counter covers every id.
    assert_eq!(
        sqld.query("SELECT (SELECT seq FROM sqlite_sequence WHERE name = 'auto') >= (SELECT max(id) FROM auto)"),
        vec![vec![Cell::Integer(1)]]
    );
    for d in &team {
        assert_same_data(&sqld, &d.path().join("working_copy.db"), false);
    }
}

/// `--no-renumber` keeps colliding new rows a conflict, and changes nothing.
#[test]
fn no_renumber_keeps_colliding_rows_a_conflict() {
    let sqld = Sqld::start();
    sqld.exec(TEAM_SCHEMA);
    let (a, b) = (tempdir(), tempdir());
    for (d, who) in [(&a, "ann"), (&b, "bob")] {
        ok(&sqld, d.path(), &["init", "--url", &sqld.url]);
        add_rows(d.path(), who);
    }
    ok(&sqld, a.path(), &["push"]);
    let wc = b.path().join("working_copy.db");
    let before = local_query(&wc, "SELECT id, name FROM parent ORDER BY id");
    let out = run(&sqld, b.path(), &["pull", "--no-renumber"]);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    assert_eq!(
        local_query(&wc, "SELECT id, name FROM parent ORDER BY id"),
        before
    );
}

/// Measured: swapping the values of a UNIQUE column between rows failed every push with
/// "UNIQUE constraint failed: it.pos" (the UPDATE … FROM (VALUES …) is checked row by row).
/// Swaps and rotations now push, pull, and replay from `diff --sql`.
#[test]
fn swapped_and_rotated_unique_values_push_and_pull() {
    let sqld = Sqld::start();
    sqld.exec(
        "CREATE TABLE it(id INTEGER PRIMARY KEY, pos INT UNIQUE, v TEXT);
         CREATE UNIQUE INDEX it_v ON it(lower(v));
         INSERT INTO it VALUES (1, 1, 'a'), (2, 2, 'b'), (3, 3, 'c'), (4, 4, 'd');",
    );
    let (a, b) = (tempdir(), tempdir());
    for d in [&a, &b] {
        ok(&sqld, d.path(), &["init", "--url", &sqld.url]);
    }
    let rotate = "UPDATE it SET pos = -pos; UPDATE it SET pos = CASE -pos WHEN 1 THEN 2 WHEN 2 THEN 3 WHEN 3 THEN 1 ELSE -pos END;
                  UPDATE it SET v = v || '~'; UPDATE it SET v = CASE id WHEN 1 THEN 'd' WHEN 4 THEN 'a' ELSE rtrim(v, '~') END;";
    edit(a.path(), rotate);
    let sql = ok(&sqld, a.path(), &["diff", "--sql"]);
    let replay = a.path().join("replay.db");
    let wc_a = a.path().join("working_copy.db");
    base_copy(&wc_a, &replay);
    sqlite3_cli(&replay, &sql.stdout);
    let q = "SELECT id, pos, v FROM it ORDER BY id";
    assert_eq!(
        local_query(&replay, q),
        local_query(&wc_a, q),
        "diff --sql replays the rotation"
    );

    ok(&sqld, a.path(), &["push"]);
    assert_table_eq(&sqld, &wc_a, q);
    assert_table_eq(&sqld, &base_copy(&wc_a, &a.path().join("base-copy.db")), q);

    // b changed another column of a rotated row: the merge keeps it and takes the rotation.
    edit(b.path(), "UPDATE it SET v = 'B' WHERE id = 2;");
    ok(&sqld, b.path(), &["pull"]);
    let wc_b = b.path().join("working_copy.db");
    assert_eq!(
        local_query(&wc_b, q),
        vec![
            vec![Cell::Integer(1), Cell::Integer(2), Cell::text("d")],
            vec![Cell::Integer(2), Cell::Integer(3), Cell::text("B")],
            vec![Cell::Integer(3), Cell::Integer(1), Cell::text("c")],
            vec![Cell::Integer(4), Cell::Integer(4), Cell::text("a")],
        ]
    );
    ok(&sqld, b.path(), &["push"]);
    assert_table_eq(&sqld, &wc_b, q);
}

/// Measured: the same UNIQUE value added on both sides under different ids was a raw SQL
/// error (exit 1). It is a conflict (exit 3) naming the table, the constraint and both rows,
/// with nothing changed anywhere; `--ours` and `--theirs` settle it.
#[test]
fn the_same_unique_value_added_on_both_sides_is_a_conflict() {
    let sqld = Sqld::start();
    sqld.exec("CREATE TABLE users(id INTEGER PRIMARY KEY, email TEXT UNIQUE, name TEXT);");
    let team: Vec<TempDir> = (0..3).map(|_| tempdir()).collect();
    for d in &team {
        ok(&sqld, d.path(), &["init", "--url", &sqld.url]);
    }
    let (a, b, c) = (team[0].path(), team[1].path(), team[2].path());
    edit(b, "INSERT INTO users VALUES (10, 'x@ex.com', 'bob')");
    ok(&sqld, b, &["push"]);
    let q = "SELECT id, email, name FROM users ORDER BY id";
    for (d, id) in [(a, 11), (c, 12)] {
        edit(
            d,
            &format!("INSERT INTO users VALUES ({id}, 'x@ex.com', 'me')"),
        );
    }

    let out = run(&sqld, a, &["push"]);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    for needle in ["users", "email", "11", "10"] {
        assert!(text(&out).contains(needle), "{needle}: {}", text(&out));
    }
    assert_eq!(sqld.query(q).len(), 1, "the push changed nothing");

    let wc_a = a.join("working_copy.db");
    let out = run(&sqld, a, &["pull", "--json"]);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let conflict = &report["conflicts"][0];
    assert_eq!(conflict["kind"], "unique", "{report}");
    assert_eq!(conflict["table"], "users", "{report}");
    assert!(
        conflict["constraint"].as_str().unwrap().contains("email"),
        "{report}"
    );
    assert_eq!(conflict["ours_key"][0]["value"], "11", "{report}");
    assert_eq!(
        local_query(&wc_a, q),
        vec![vec![
            Cell::Integer(11),
            Cell::text("x@ex.com"),
            Cell::text("me")
        ]],
        "the refused pull changed nothing"
    );

    // --ours keeps our row; theirs is dropped here and, at the next push, on the remote.
    ok(&sqld, a, &["pull", "--ours"]);
    assert_eq!(local_query(&wc_a, q).len(), 1);
    ok(&sqld, a, &["push"]);
    assert_table_eq(&sqld, &wc_a, q);

    // --theirs takes theirs and drops our row holding the value.
    ok(&sqld, c, &["pull", "--theirs"]);
    let wc_c = c.join("working_copy.db");
    assert_table_eq(&sqld, &wc_c, q);
}

/// Measured: a parent deleted here while a teammate added a child to it left a child pointing
/// at nothing, because foreign keys are off on the push's stream and in pull. Both now stop
/// with a foreign-key conflict (exit 3) and change nothing.
#[test]
fn a_merge_never_leaves_an_orphan() {
    let sqld = Sqld::start();
    sqld.exec(
        "CREATE TABLE parent(id INTEGER PRIMARY KEY, name TEXT);
         CREATE TABLE child(id INTEGER PRIMARY KEY, parent_id INTEGER REFERENCES parent(id), v TEXT);
         INSERT INTO parent VALUES (1, 'one'), (2, 'two');
         INSERT INTO child VALUES (10, 2, 'existing');",
    );
    let (a, b) = (tempdir(), tempdir());
    for d in [&a, &b] {
        ok(&sqld, d.path(), &["init", "--url", &sqld.url]);
    }
    let (a, b) = (a.path(), b.path());
    edit(b, "INSERT INTO child VALUES (30, 1, 'new child of one')");
    ok(&sqld, b, &["push"]);
    edit(a, "DELETE FROM parent WHERE id = 1");

    // Push: the remote would hold child 30 without its parent.
    let out = run(&sqld, a, &["push"]);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    assert!(text(&out).contains("foreign key"), "{}", text(&out));
    assert_eq!(
        sqld.query("SELECT id FROM parent ORDER BY id"),
        vec![vec![Cell::Integer(1)], vec![Cell::Integer(2)]],
        "the push changed nothing"
    );

    // Pull: the working copy would hold child 30 without its parent.
    let wc = a.join("working_copy.db");
    let out = run(&sqld, a, &["pull", "--json"]);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let c = &report["conflicts"][0];
    assert_eq!(c["kind"], "foreign_key", "{report}");
    assert_eq!(c["table"], "child", "{report}");
    assert_eq!(c["key"][0]["value"], "30", "{report}");
    assert!(
        local_query(&wc, "SELECT id FROM child WHERE id = 30").is_empty(),
        "the refused pull changed nothing"
    );
    // A pre-existing orphan of the app's own is not the merge's doing and stops nothing.
    edit(a, "PRAGMA foreign_keys = OFF; INSERT INTO parent VALUES (1, 'one again'); INSERT INTO child VALUES (40, 99, 'orphan of the app');");
    ok(&sqld, a, &["pull"]);
}

/// Conflicts settle per table: `--theirs TABLE` (repeatable) takes the remote's side in the
/// tables named; the others' conflicts still stop the pull, or settle with `--ours TABLE`.
#[test]
fn conflicts_settle_table_by_table() {
    let sqld = Sqld::start();
    sqld.exec(
        "CREATE TABLE a(id INTEGER PRIMARY KEY, v TEXT); CREATE TABLE b(id INTEGER PRIMARY KEY, v TEXT);
         INSERT INTO a VALUES (1, 'base'); INSERT INTO b VALUES (1, 'base');",
    );
    let dir = tempdir();
    let dir = dir.path();
    ok(&sqld, dir, &["init", "--url", &sqld.url]);
    sqld.exec("UPDATE a SET v = 'theirs'; UPDATE b SET v = 'theirs';");
    edit(dir, "UPDATE a SET v = 'ours'; UPDATE b SET v = 'ours';");
    let wc = dir.join("working_copy.db");
    // A table name that is not there settles nothing: a usage error, nothing changed.
    let out = run(&sqld, dir, &["pull", "--theirs", "nosuch"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains("\"nosuch\""), "{}", text(&out));
    let out = run(&sqld, dir, &["pull", "--theirs", "a"]);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    assert!(text(&out).contains("table b"), "{}", text(&out));
    assert!(
        !text(&out).contains("table a"),
        "a is settled: {}",
        text(&out)
    );
    assert_eq!(
        local_query(&wc, "SELECT v FROM a"),
        vec![vec![Cell::text("ours")]]
    );

    ok(&sqld, dir, &["pull", "--theirs", "a", "--ours", "b"]);
    assert_eq!(
        local_query(&wc, "SELECT v FROM a"),
        vec![vec![Cell::text("theirs")]]
    );
    assert_eq!(
        local_query(&wc, "SELECT v FROM b"),
        vec![vec![Cell::text("ours")]]
    );
}

/// The team scenario: three working copies, each with its app in its own process adding rows
/// to every kind of table (parents with children, AUTOINCREMENT, no key, TEXT PRIMARY KEY) and
/// updating its own rows, while `tursync sync` runs every few hundred ms in each workspace.
/// Every sync succeeds; afterwards every row is on the remote exactly once, every child points
/// at its own parent, the AUTOINCREMENT counter covers every id, and every working copy
/// equals the remote.
#[test]
fn a_team_writing_at_once_converges() {
    let sqld = Sqld::start();
    sqld.exec(TEAM_SCHEMA);
    let names = ["ann", "bob", "cat"];
    let team: Vec<TempDir> = names.iter().map(|_| tempdir()).collect();
    for d in &team {
        ok(&sqld, d.path(), &["init", "--url", &sqld.url]);
    }
    let apps: Vec<App> = team
        .iter()
        .zip(names)
        .map(|(d, who)| App::spawn("team_app.py", &d.path().join("working_copy.db"), &[who]))
        .collect();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(8);
    let mut syncs = 0;
    while std::time::Instant::now() < deadline {
        for d in &team {
            ok(&sqld, d.path(), &["sync"]);
            syncs += 1;
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
    }
    let tags: Vec<String> = apps.into_iter().flat_map(App::stop).collect();
    assert!(
        syncs >= 9 && tags.len() > 60,
        "{syncs} syncs, {} commits",
        tags.len()
    );
    // Two more rounds: each working copy's last rows reach the remote, then every other one.
    for _ in 0..2 {
        for d in &team {
            ok(&sqld, d.path(), &["sync"]);
        }
    }

    let seeded = 1;
    for (table, column) in [("parent", "name"), ("auto", "v"), ("nokey", "v")] {
        assert_eq!(
            sqld.query(&format!(
                "SELECT count(*), count(DISTINCT {column}) FROM {table} WHERE {column} <> 'seed'"
            )),
            vec![vec![
                Cell::Integer(tags.len() as i64),
                Cell::Integer(tags.len() as i64)
            ]],
            "{table}: every committed row exactly once"
        );
        assert_eq!(
            sqld.query(&format!(
                "SELECT count(*) FROM {table} WHERE {column} = 'seed'"
            )),
            vec![vec![Cell::Integer(seeded)]]
        );
    }
    assert_eq!(
        sqld.query("SELECT count(*) FROM accounts"),
        vec![vec![Cell::Integer(tags.len() as i64)]]
    );
    assert_eq!(
        sqld.query("SELECT count(*) FROM child JOIN parent ON parent.id = child.parent_id WHERE child.v = parent.name || '-child'"),
        vec![vec![Cell::Integer(tags.len() as i64)]],
        "every child points at its own parent"
    );
    assert_eq!(
        sqld.query("SELECT (SELECT seq FROM sqlite_sequence WHERE name = 'auto') >= (SELECT max(id) FROM auto)"),
        vec![vec![Cell::Integer(1)]]
    );
    for d in &team {
        let wc = d.path().join("working_copy.db");
        for q in [
            "SELECT id, name, n FROM parent ORDER BY id",
            "SELECT id, parent_id, v FROM child ORDER BY id",
            "SELECT id, v FROM auto ORDER BY id",
            "SELECT rowid, v FROM nokey ORDER BY rowid",
            "SELECT rowid, email, name FROM accounts ORDER BY rowid",
            "SELECT name, seq FROM sqlite_sequence ORDER BY name",
        ] {
            assert_table_eq(&sqld, &wc, q);
        }
    }
}

mod randomized {
    use super::*;
    use proptest::prelude::*;

    /// What one client does offline: new rows (ids picked by SQLite, so they collide across
    /// clients), updates of its own new rows, deletes of seed rows (each client its own), and
    /// in a TEXT PRIMARY KEY table the same: new rows (whose hidden rowids collide), upserts
    /// by REPLACE (which move a row's hidden rowid), and one row every client may add alike.
    #[derive(Debug, Clone)]
    enum Op {
        Insert,
        UpdateOwn(usize),
        DeleteSeed(usize),
        AddShared,
    }

    fn ops() -> impl Strategy<Value = Vec<Op>> {
        let op = prop_oneof![
            3 => Just(Op::Insert),
            2 => (0..6usize).prop_map(Op::UpdateOwn),
            1 => (0..4usize).prop_map(Op::DeleteSeed),
            1 => Just(Op::AddShared),
        ];
        proptest::collection::vec(op, 0..8)
    }

    /// Random concurrent histories on three clients, synced in a random order, checked
    /// against the model: every row a client added is on the remote once with its last value,
    /// every seed row a client deleted is gone, the rest are untouched, children still point
    /// at their parents, and every working copy equals the remote.
    #[test]
    fn concurrent_histories_converge_to_the_model() {
        let sqld = Sqld::start();
        let team: Vec<TempDir> = (0..3).map(|_| tempdir()).collect();
        let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig::with_cases(8));
        runner
            .run(
                &(
                    proptest::collection::vec(ops(), 3),
                    proptest::collection::vec(0..3usize, 2..6),
                ),
                |(histories, order)| {
                    sqld.exec(
                        "DROP TABLE IF EXISTS kid; DROP TABLE IF EXISTS t; DROP TABLE IF EXISTS acct;
                         CREATE TABLE acct(email TEXT PRIMARY KEY, v INTEGER);
                         INSERT INTO acct VALUES ('seed@x', 0);
                         CREATE TABLE t(id INTEGER PRIMARY KEY, tag TEXT, v INTEGER);
                         CREATE TABLE kid(id INTEGER PRIMARY KEY, t_id INTEGER REFERENCES t(id), tag TEXT);
                         INSERT INTO t VALUES (1, 'seed0', 0), (2, 'seed1', 0), (3, 'seed2', 0), (4, 'seed3', 0),
                                              (5, 'seed4', 0), (6, 'seed5', 0), (7, 'seed6', 0), (8, 'seed7', 0),
                                              (9, 'seed8', 0), (10, 'seed9', 0), (11, 'seed10', 0), (12, 'seed11', 0);",
                    );
                    let mut model: BTreeMap<String, i64> =
                        (0..12).map(|i| (format!("seed{i}"), 0)).collect();
                    let mut accounts: BTreeMap<String, i64> = [("seed@x".to_owned(), 0)].into();
                    for (c, (d, history)) in team.iter().zip(&histories).enumerate() {
                        ok(&sqld, d.path(), &["init", "--force", "--url", &sqld.url]);
                        let mut own = Vec::new();
                        let mut sql = String::new();
                        for (i, op) in history.iter().enumerate() {
                            match op {
                                Op::Insert => {
                                    let tag = format!("c{c}-{i}");
                                    sql += &format!(
                                        "INSERT INTO t(tag, v) VALUES ('{tag}', 1);
                                         INSERT INTO kid(t_id, tag) VALUES (last_insert_rowid(), '{tag}');
                                         INSERT INTO acct VALUES ('{tag}', 1);"
                                    );
                                    model.insert(tag.clone(), 1);
                                    accounts.insert(tag.clone(), 1);
                                    own.push(tag);
                                }
                                Op::UpdateOwn(k) if !own.is_empty() => {
                                    let tag = &own[k % own.len()];
                                    sql += &format!(
                                        "UPDATE t SET v = v + 1 WHERE tag = '{tag}';
                                         INSERT OR REPLACE INTO acct VALUES ('{tag}', (SELECT v FROM t WHERE tag = '{tag}'));"
                                    );
                                    *model.get_mut(tag).expect("own row") += 1;
                                    *accounts.get_mut(tag).expect("own account") += 1;
                                }
                                Op::UpdateOwn(_) => {}
                                Op::DeleteSeed(k) => {
                                    let tag = format!("seed{}", c * 4 + k);
                                    sql += &format!("DELETE FROM t WHERE tag = '{tag}';");
                                    model.remove(&tag);
                                }
                                Op::AddShared => {
                                    sql += "INSERT OR IGNORE INTO acct VALUES ('shared@x', 7);";
                                    accounts.insert("shared@x".to_owned(), 7);
                                }
                            }
                        }
                        edit(d.path(), &sql);
                    }
                    // Syncs in the drawn order, then two full rounds so everyone has everything.
                    for &c in order.iter().chain(&[0, 1, 2, 0, 1, 2]) {
                        ok(&sqld, team[c].path(), &["sync"]);
                    }
                    let remote: BTreeMap<String, i64> = sqld
                        .query("SELECT tag, v FROM t")
                        .into_iter()
                        .map(|r| match &r[..] {
                            [Cell::Text(t), Cell::Integer(v)] => (t.clone(), *v),
                            other => panic!("row {other:?}"),
                        })
                        .collect();
                    prop_assert_eq!(&remote, &model);
                    let remote_accounts: BTreeMap<String, i64> = sqld
                        .query("SELECT email, v FROM acct")
                        .into_iter()
                        .map(|r| match &r[..] {
                            [Cell::Text(t), Cell::Integer(v)] => (t.clone(), *v),
                            other => panic!("row {other:?}"),
                        })
                        .collect();
                    prop_assert_eq!(&remote_accounts, &accounts);
                    // No row twice (the map above would hide a duplicate tag).
                    prop_assert_eq!(
                        sqld.query("SELECT count(*) FROM t"),
                        vec![vec![Cell::Integer(model.len() as i64)]]
                    );
                    prop_assert_eq!(
                        sqld.query("SELECT count(*) FROM kid LEFT JOIN t ON t.id = kid.t_id WHERE t.tag IS NOT kid.tag"),
                        vec![vec![Cell::Integer(0)]],
                        "every child points at its own parent"
                    );
                    for d in &team {
                        let wc = d.path().join("working_copy.db");
                        assert_table_eq(&sqld, &wc, "SELECT id, tag, v FROM t ORDER BY id");
                        assert_table_eq(&sqld, &wc, "SELECT id, t_id, tag FROM kid ORDER BY id");
                        assert_table_eq(&sqld, &wc, "SELECT email, v FROM acct ORDER BY email");
                    }
                    Ok(())
                },
            )
            .unwrap();
    }
}

/// Their update moves a UNIQUE value onto the value our new row holds. `--ours` keeps our row
/// and their row as it was here (their change of it gives way), never deletes it: a deleted
/// row would be deleted on the remote by the next push.
#[test]
fn ours_on_a_unique_conflict_with_their_update_keeps_their_row() {
    let (sqld, a, b) = two_clones(
        "CREATE TABLE users(id INTEGER PRIMARY KEY, email TEXT UNIQUE, name TEXT);
         INSERT INTO users VALUES (1, 'a@x', 'alice');",
    );
    edit(b.path(), "UPDATE users SET email = 'new@x' WHERE id = 1");
    ok(&sqld, b.path(), &["push"]);
    edit(a.path(), "INSERT INTO users VALUES (2, 'new@x', 'me')");
    ok(&sqld, a.path(), &["pull", "--ours"]);
    let q = "SELECT id, email, name FROM users ORDER BY id";
    let wc = a.path().join("working_copy.db");
    assert_eq!(
        local_query(&wc, q),
        vec![
            vec![Cell::Integer(1), Cell::text("a@x"), Cell::text("alice")],
            vec![Cell::Integer(2), Cell::text("new@x"), Cell::text("me")],
        ]
    );
    ok(&sqld, a.path(), &["push"]);
    assert_table_eq(&sqld, &wc, q);
}

/// Our edit of a shared row collides with their new row. `--theirs` gives the shared row its
/// remote version back (our edit gives way); it never deletes a row the team shares.
#[test]
fn theirs_on_a_unique_conflict_restores_a_shared_row_instead_of_deleting_it() {
    let (sqld, a, b) = two_clones(
        "CREATE TABLE users(id INTEGER PRIMARY KEY, email TEXT UNIQUE, name TEXT);
         INSERT INTO users VALUES (1, 'a@x', 'alice'), (2, 'b@x', 'bob');",
    );
    edit(b.path(), "INSERT INTO users VALUES (3, 'c@x', 'carol')");
    ok(&sqld, b.path(), &["push"]);
    edit(
        a.path(),
        "UPDATE users SET email = 'c@x', name = 'bobby' WHERE id = 2",
    );
    ok(&sqld, a.path(), &["pull", "--theirs"]);
    let q = "SELECT id, email, name FROM users ORDER BY id";
    let wc = a.path().join("working_copy.db");
    assert_eq!(
        local_query(&wc, q),
        vec![
            vec![Cell::Integer(1), Cell::text("a@x"), Cell::text("alice")],
            vec![Cell::Integer(2), Cell::text("b@x"), Cell::text("bob")],
            vec![Cell::Integer(3), Cell::text("c@x"), Cell::text("carol")],
        ]
    );
    ok(&sqld, a.path(), &["push"]);
    assert_table_eq(&sqld, &wc, q);
}

/// Parents deleted with their children (a local cascade), pushed in several transactions: the
/// children's deletes may land in a later transaction than their parents'. The orphan check
/// looks at the push as a whole, so the push finishes.
#[test]
fn a_split_push_of_deleted_parents_and_children_is_no_conflict() {
    let sqld = Sqld::start();
    sqld.exec(
        "CREATE TABLE parent(id INTEGER PRIMARY KEY, v);
         CREATE TABLE child(id INTEGER PRIMARY KEY, pid INTEGER REFERENCES parent(id) ON DELETE CASCADE, v);
         WITH RECURSIVE c(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM c WHERE i < 30) INSERT INTO parent SELECT i, i FROM c;
         WITH RECURSIVE c(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM c WHERE i < 30) INSERT INTO child SELECT i, i, i FROM c;",
    );
    let dir = tempdir();
    ok(&sqld, dir.path(), &["init", "--url", &sqld.url]);
    edit(
        dir.path(),
        "PRAGMA foreign_keys = ON; DELETE FROM parent WHERE id <= 20;",
    );
    let wc = dir.path().join("working_copy.db");
    let ws = tursync::workspace::Workspace::locate(Some(&wc)).unwrap();
    let (endpoint, _) = tursync::remote::Endpoint::parse(&sqld.url).unwrap();
    let remote = tursync::remote::Remote::new(endpoint, Some(sqld.rw_token.clone()));
    let opts = tursync::push::PushOptions {
        rows_per_transaction: 25,
    };
    let tursync::Outcome::Done(report) =
        tursync::push::push(&ws, &remote, opts, &tursync::progress::Progress::hidden()).unwrap()
    else {
        panic!("the split push was refused")
    };
    assert_eq!(report.transactions, 2);
    assert_table_eq(&sqld, &wc, "SELECT id, pid, v FROM child ORDER BY id");
    assert_table_eq(&sqld, &wc, "SELECT id, v FROM parent ORDER BY id");
}

mod settling {
    use super::*;
    use proptest::prelude::*;

    #[derive(Debug, Clone)]
    enum Op {
        /// A new row with this unique value.
        Insert(i64),
        /// A seed row (shared by everyone) gets this unique value.
        UpdateSeed(usize, i64),
        /// Another column of a seed row changes.
        TouchSeed(usize),
    }

    fn ops() -> impl Strategy<Value = Vec<Op>> {
        let op = prop_oneof![
            (0..12i64).prop_map(Op::Insert),
            (0..6usize, 0..12i64).prop_map(|(s, u)| Op::UpdateSeed(s, u)),
            (0..6usize).prop_map(Op::TouchSeed),
        ];
        proptest::collection::vec(op, 1..6)
    }

    /// Random histories on three clients that collide on a UNIQUE column, synced in random
    /// order, every conflict settled with a random side. Whatever is settled how, no row the
    /// team shares is ever lost, and every copy ends equal to the remote.
    #[test]
    fn settling_conflicts_never_loses_a_shared_row() {
        let sqld = Sqld::start();
        let team: Vec<TempDir> = (0..3).map(|_| tempdir()).collect();
        let settled = std::cell::Cell::new(0);
        let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig::with_cases(12));
        runner
            .run(
                &(
                    proptest::collection::vec(ops(), 3),
                    proptest::collection::vec((0..3usize, 0..2usize), 3..7),
                ),
                |(histories, order)| {
                    sqld.exec(
                        "DROP TABLE IF EXISTS s;
                         CREATE TABLE s(id INTEGER PRIMARY KEY, tag TEXT, u INTEGER UNIQUE, n INTEGER);
                         INSERT INTO s VALUES (1, 'seed0', 100, 0), (2, 'seed1', 101, 0), (3, 'seed2', 102, 0),
                                              (4, 'seed3', 103, 0), (5, 'seed4', 104, 0), (6, 'seed5', 105, 0);",
                    );
                    for (c, (d, history)) in team.iter().zip(&histories).enumerate() {
                        ok(&sqld, d.path(), &["init", "--force", "--url", &sqld.url]);
                        let mut sql = String::new();
                        for (i, op) in history.iter().enumerate() {
                            // A statement that breaks UNIQUE here is the app's own error: skip it.
                            sql += &match op {
                                Op::Insert(u) => format!("INSERT OR IGNORE INTO s(tag, u, n) VALUES ('c{c}-{i}', {u}, 0);"),
                                Op::UpdateSeed(s, u) => format!("UPDATE OR IGNORE s SET u = {u} WHERE id = {};", s + 1),
                                Op::TouchSeed(s) => format!("UPDATE s SET n = n + 1 WHERE id = {};", s + 1),
                            };
                        }
                        edit(d.path(), &sql);
                    }
                    let sides = ["--ours", "--theirs"];
                    let sync = |c: usize, side: usize| {
                        let out = run(&sqld, team[c].path(), &["sync"]);
                        match out.status.code() {
                            Some(0) => {}
                            Some(3) => {
                                settled.set(settled.get() + 1);
                                ok(&sqld, team[c].path(), &["sync", sides[side]]);
                            }
                            _ => panic!("sync failed: {}", text(&out)),
                        }
                    };
                    for &(c, side) in &order {
                        sync(c, side);
                    }
                    // Settle everything, then let everyone catch up.
                    for c in [0, 1, 2, 0, 1, 2] {
                        sync(c, c % 2);
                    }
                    for t in 0..6 {
                        prop_assert_eq!(
                            sqld.query(&format!("SELECT count(*) FROM s WHERE tag = 'seed{t}'")),
                            vec![vec![Cell::Integer(1)]],
                            "shared row seed{} was lost", t
                        );
                    }
                    for d in &team {
                        let wc = d.path().join("working_copy.db");
                        assert_table_eq(&sqld, &wc, "SELECT id, tag, u, n FROM s ORDER BY id");
                        prop_assert_eq!(
                            local_query(&wc, "PRAGMA integrity_check"),
                            vec![vec![Cell::text("ok")]]
                        );
                    }
                    Ok(())
                },
            )
            .unwrap();
        // The histories collide on purpose: a run that settled nothing tested nothing.
        assert!(settled.get() > 0, "no conflict was settled in any case");
    }
}

/// Measured: a rowid table with a TEXT or composite PRIMARY KEY was keyed by its hidden rowid.
/// The same account added on both sides under different rowids was a UNIQUE conflict (exit 3),
/// and a conflict named the row by its rowid. Rows now merge by their declared key: the same
/// row added twice is one row (ours takes their rowid), a rowid both sides took for different
/// rows is renumbered on our side, and reports name the key.
#[test]
fn rowid_tables_with_a_declared_key_merge_by_that_key() {
    let (sqld, a, b) = two_clones(
        "CREATE TABLE accounts(email TEXT PRIMARY KEY, name TEXT);
         CREATE TABLE pairs(x INT, y TEXT, v TEXT, PRIMARY KEY(x, y));",
    );
    let (a, b) = (a.path(), b.path());
    edit(
        a,
        "INSERT INTO accounts VALUES ('a@x', 'Ann');
         INSERT INTO pairs VALUES (1, 'p', 'same');",
    );
    ok(&sqld, a, &["push"]);
    // B adds another row first, so its copy of A's rows takes rowid 2.
    edit(
        b,
        "INSERT INTO accounts VALUES ('b@x', 'Bob');
         INSERT INTO accounts VALUES ('a@x', 'Ann');
         INSERT INTO pairs VALUES (2, 'q', 'other');
         INSERT INTO pairs VALUES (1, 'p', 'same');",
    );
    ok(&sqld, b, &["sync"]);
    let wc_b = b.join("working_copy.db");
    assert_same_data(&sqld, &wc_b, false);
    assert_eq!(
        sqld.query("SELECT email, name FROM accounts ORDER BY email"),
        vec![
            vec![Cell::text("a@x"), Cell::text("Ann")],
            vec![Cell::text("b@x"), Cell::text("Bob")]
        ]
    );
    assert_eq!(
        sqld.query("SELECT count(*) FROM pairs"),
        vec![vec![Cell::Integer(2)]]
    );
    ok(&sqld, a, &["pull"]);
    assert_same_data(&sqld, &a.join("working_copy.db"), false);

    // A conflict names the row by its key, not by its rowid.
    edit(a, "UPDATE accounts SET name = 'Ann A' WHERE email = 'a@x'");
    ok(&sqld, a, &["push"]);
    edit(b, "UPDATE accounts SET name = 'Ann B' WHERE email = 'a@x'");
    let out = run(&sqld, b, &["pull", "--json"]);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let conflict = &report["conflicts"][0];
    assert_eq!(conflict["kind"], "cell", "{report}");
    assert_eq!(
        conflict["key"],
        serde_json::json!([{"type": "text", "value": "a@x"}]),
        "{report}"
    );

    ok(&sqld, b, &["pull", "--theirs"]);

    // A rowid their new row took stops a push, which says how to go on; sync renumbers ours.
    edit(a, "INSERT INTO accounts VALUES ('c@x', 'Cat')");
    ok(&sqld, a, &["push"]);
    edit(b, "INSERT INTO accounts VALUES ('d@x', 'Dan')");
    let out = run(&sqld, b, &["push"]);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    assert!(text(&out).contains("tursync sync"), "{}", text(&out));
    ok(&sqld, b, &["sync"]);
    assert_same_data(&sqld, &wc_b, false);

    // An app's REPLACE gives the row a new rowid; that is no change of the row.

    edit(b, "INSERT OR REPLACE INTO accounts VALUES ('b@x', 'Bob')");
    let out = ok(&sqld, b, &["diff", "--json"]);
    let changes: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(
        !text(&out).contains("b@x"),
        "a new rowid alone is no change: {changes}"
    );
    // Their next new row takes that rowid on the remote; the pull moves ours out of its way.
    ok(&sqld, a, &["pull"]);
    edit(a, "INSERT INTO accounts VALUES ('e@x', 'Eve')");
    ok(&sqld, a, &["push"]);
    ok(&sqld, b, &["sync"]);
    assert_table_eq(
        &sqld,
        &wc_b,
        "SELECT email, name FROM accounts ORDER BY email",
    );
    assert_eq!(
        sqld.query("SELECT count(*) FROM accounts"),
        vec![vec![Cell::Integer(5)]]
    );
}

/// A writer on the remote itself re-inserts a row of a TEXT PRIMARY KEY table (REPLACE gives
/// it a new hidden rowid), then deletes it. Pulls read the log's pages by rowid, so the base
/// must follow the remote's rowids: with the REPLACE applied by key alone, the delete was
/// never seen and the row stayed here.
#[test]
fn a_remote_replace_then_delete_of_a_declared_key_row_pulls() {
    // Many leaves, so a pull reads only the rows on the few it changes.
    let (sqld, a, _b) = two_clones(
        "CREATE TABLE acct(email TEXT PRIMARY KEY, v INT, pad TEXT);
         WITH RECURSIVE c(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM c WHERE i < 2000)
         INSERT INTO acct SELECT 'u' || i || '@x', i, zeroblob(100) FROM c;",
    );
    let wc = a.path().join("working_copy.db");
    let q = "SELECT email, v FROM acct ORDER BY email";
    sqld.exec("INSERT OR REPLACE INTO acct VALUES ('u10@x', 5, 'moved')");
    ok(&sqld, a.path(), &["pull"]);
    assert_table_eq(&sqld, &wc, q);
    sqld.exec("DELETE FROM acct WHERE email = 'u10@x'");
    ok(&sqld, a.path(), &["pull"]);
    assert_table_eq(&sqld, &wc, q);
    let out = ok(&sqld, a.path(), &["verify"]);
    assert!(text(&out).contains("equals the base"), "{}", text(&out));
}

/// Parents, their children and grandchildren, a WITHOUT ROWID table keyed by its parent, and a
/// seed row that points at a parent.
const FAMILY: &str = "
    CREATE TABLE parent(id INTEGER PRIMARY KEY, name TEXT);
    CREATE TABLE child(id INTEGER PRIMARY KEY, parent_id INTEGER REFERENCES parent(id), v TEXT);
    CREATE TABLE grandchild(id INTEGER PRIMARY KEY, child_id INTEGER REFERENCES child(id), v TEXT);
    CREATE TABLE member(group_id INTEGER REFERENCES parent, user TEXT, PRIMARY KEY(group_id, user)) WITHOUT ROWID;
    CREATE TABLE pet(id INTEGER PRIMARY KEY, owner INTEGER REFERENCES parent(id));
    INSERT INTO parent VALUES (1, 'seed');
    INSERT INTO pet VALUES (1, 1);";

const FAMILY_SELECTS: [&str; 5] = [
    "SELECT id, name FROM parent ORDER BY id",
    "SELECT id, parent_id, v FROM child ORDER BY id",
    "SELECT id, child_id, v FROM grandchild ORDER BY id",
    "SELECT group_id, user FROM member ORDER BY group_id, user",
    "SELECT id, owner FROM pet ORDER BY id",
];

/// Measured: B added parent(2,'bob') and child(1,2) and synced; A added parent(2,'alice') and
/// child(1,2) and synced. Exit 0, A's parent was renumbered 2→3, and the remote held child(1,3):
/// Bob's child was gone. The two children had equal values, so the merge took them for one
/// change made on both sides, and the renumbering then rewrote that shared row. A grandchild
/// under the child and a WITHOUT ROWID member (2,'u1') were lost the same way. A row of ours
/// that refers to a renumbered key is our own new row: it is renumbered with that reference.
#[test]
fn identical_rows_under_colliding_new_parents_are_both_kept() {
    let (sqld, a, b) = two_clones(FAMILY);
    let family = |who: &str| {
        format!(
            "INSERT INTO parent VALUES (2, '{who}'); INSERT INTO child VALUES (1, 2, 'same');
             INSERT INTO grandchild VALUES (1, 1, 'same'); INSERT INTO member VALUES (2, 'u1');"
        )
    };
    edit(b.path(), &family("bob"));
    ok(&sqld, b.path(), &["sync"]);
    edit(a.path(), &family("alice"));
    ok(&sqld, a.path(), &["sync"]);
    ok(&sqld, b.path(), &["sync"]);

    assert_eq!(
        sqld.query(
            "SELECT p.id, c.id, c.parent_id, g.id, g.child_id FROM parent p
             JOIN child c ON c.parent_id = p.id JOIN grandchild g ON g.child_id = c.id
             WHERE p.name = 'bob'"
        ),
        vec![vec![
            Cell::Integer(2),
            Cell::Integer(1),
            Cell::Integer(2),
            Cell::Integer(1),
            Cell::Integer(1)
        ]],
        "Bob's rows are on the remote as Bob pushed them"
    );
    for who in ["bob", "alice"] {
        assert_eq!(
            sqld.query(&format!(
                "SELECT (SELECT count(*) FROM child c JOIN grandchild g ON g.child_id = c.id
                         WHERE c.parent_id = p.id),
                        (SELECT count(*) FROM member m WHERE m.group_id = p.id)
                 FROM parent p WHERE p.name = '{who}'"
            )),
            vec![vec![Cell::Integer(1), Cell::Integer(1)]],
            "{who}'s parent has its one child, grandchild and member"
        );
    }
    assert_eq!(
        sqld.query("SELECT (SELECT count(*) FROM child), (SELECT count(*) FROM grandchild), (SELECT count(*) FROM member)"),
        vec![vec![Cell::Integer(2), Cell::Integer(2), Cell::Integer(2)]]
    );
    for d in [&a, &b] {
        let wc = d.path().join("working_copy.db");
        for q in FAMILY_SELECTS {
            assert_table_eq(&sqld, &wc, q);
        }
    }
}

/// Measured: both sides pointed the seed pet at their own new parent 2; A's sync exited 0 and
/// the remote's pet pointed at A's parent (renumbered to 3): A's choice won silently. Both sides
/// changed that cell to different parents, so it is a conflict: nothing changes until it is
/// settled, `--theirs` keeps the remote's choice and `--ours` puts ours there.
#[test]
fn a_reference_both_sides_point_at_their_own_new_parent_is_a_conflict() {
    let (sqld, a, b) = two_clones(FAMILY);
    let c = tempdir();
    ok(&sqld, c.path(), &["init", "--url", &sqld.url]);
    let repoint =
        |who: &str| format!("INSERT INTO parent VALUES (2, '{who}'); UPDATE pet SET owner = 2;");
    edit(b.path(), &repoint("bob"));
    ok(&sqld, b.path(), &["sync"]);

    edit(a.path(), &repoint("alice"));
    let out = run(&sqld, a.path(), &["sync", "--json"]);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let conflict = &report["conflicts"][0];
    assert_eq!(conflict["table"], "pet", "{report}");
    assert_eq!(conflict["column"], "owner", "{report}");
    assert_eq!(conflict["theirs"]["value"], "2", "{report}");
    assert_eq!(
        conflict["ours"]["value"], "3",
        "ours reads as renumbered: {report}"
    );
    assert!(
        conflict["note"]
            .as_str()
            .unwrap_or("")
            .contains("renumbered to 3"),
        "{report}"
    );
    assert_eq!(
        sqld.query("SELECT owner FROM pet"),
        vec![vec![Cell::Integer(2)]],
        "nothing changed on the remote"
    );
    ok(&sqld, a.path(), &["sync", "--theirs"]);
    assert_eq!(
        sqld.query("SELECT p.name FROM pet JOIN parent p ON p.id = pet.owner"),
        vec![vec![Cell::text("bob")]],
        "--theirs keeps the remote's choice"
    );

    edit(c.path(), &repoint("cat"));
    assert_eq!(run(&sqld, c.path(), &["sync"]).status.code(), Some(3));
    ok(&sqld, c.path(), &["sync", "--ours"]);
    assert_eq!(
        sqld.query("SELECT p.name FROM pet JOIN parent p ON p.id = pet.owner"),
        vec![vec![Cell::text("cat")]],
        "--ours puts our parent there, renumbered"
    );
    for d in [&a, &b, &c] {
        ok(&sqld, d.path(), &["sync"]);
    }
    for d in [&a, &b, &c] {
        let wc = d.path().join("working_copy.db");
        for q in FAMILY_SELECTS {
            assert_table_eq(&sqld, &wc, q);
        }
    }
    assert_eq!(
        sqld.query("SELECT name FROM parent ORDER BY id"),
        vec![
            vec![Cell::text("seed")],
            vec![Cell::text("bob")],
            vec![Cell::text("alice")],
            vec![Cell::text("cat")]
        ]
    );
}

mod families {
    use super::*;
    use proptest::prelude::*;

    /// Random families on three clients: each adds parents of its own, each with a child, a
    /// grandchild and a member row that every client adds alike (SQLite picks the same next
    /// ids everywhere, and the values are equal), synced in a random order. Every parent lands
    /// once with exactly its own child, grandchild and member, nothing of anyone's is rewritten,
    /// and every working copy equals the remote.
    #[test]
    fn identical_families_under_colliding_keys_all_land() {
        let sqld = Sqld::start();
        let team: Vec<TempDir> = (0..3).map(|_| tempdir()).collect();
        let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig::with_cases(6));
        runner
            .run(
                &(
                    proptest::collection::vec((0..3usize, any::<bool>()), 3),
                    proptest::collection::vec(0..3usize, 2..6),
                ),
                |(families, order)| {
                    sqld.exec(
                        "DROP TABLE IF EXISTS member; DROP TABLE IF EXISTS grandchild; DROP TABLE IF EXISTS child;
                         DROP TABLE IF EXISTS pet; DROP TABLE IF EXISTS parent;",
                    );
                    sqld.exec(FAMILY);
                    let mut names = vec!["seed".to_owned()];
                    for (c, (d, &(n, grand))) in team.iter().zip(&families).enumerate() {
                        ok(&sqld, d.path(), &["init", "--force", "--url", &sqld.url]);
                        let mut sql = String::new();
                        for j in 0..n {
                            let name = format!("c{c}-{j}");
                            sql += &format!(
                                "INSERT INTO parent(name) VALUES ('{name}');
                                 INSERT INTO member VALUES (last_insert_rowid(), 'u');
                                 INSERT INTO child(parent_id, v) VALUES ((SELECT id FROM parent WHERE name = '{name}'), 'same');"
                            );
                            if grand {
                                sql += "INSERT INTO grandchild(child_id, v) VALUES (last_insert_rowid(), 'same');";
                            }
                            names.push(name);
                        }
                        edit(d.path(), &sql);
                    }
                    for &c in order.iter().chain(&[0, 1, 2, 0, 1, 2]) {
                        ok(&sqld, team[c].path(), &["sync"]);
                    }
                    let mut remote: Vec<String> = sqld
                        .query("SELECT name FROM parent")
                        .into_iter()
                        .map(|r| match &r[..] {
                            [Cell::Text(t)] => t.clone(),
                            other => panic!("row {other:?}"),
                        })
                        .collect();
                    remote.sort();
                    names.sort();
                    prop_assert_eq!(&remote, &names);
                    for (c, &(n, grand)) in families.iter().enumerate() {
                        for j in 0..n {
                            prop_assert_eq!(
                                sqld.query(&format!(
                                    "SELECT (SELECT count(*) FROM child c WHERE c.parent_id = p.id),
                                            (SELECT count(*) FROM child c JOIN grandchild g ON g.child_id = c.id
                                             WHERE c.parent_id = p.id),
                                            (SELECT count(*) FROM member m WHERE m.group_id = p.id)
                                     FROM parent p WHERE p.name = 'c{c}-{j}'"
                                )),
                                vec![vec![Cell::Integer(1), Cell::Integer(i64::from(grand)), Cell::Integer(1)]],
                                "family c{}-{}", c, j
                            );
                        }
                    }
                    let families_added: usize = families.iter().map(|f| f.0).sum();
                    let grand_added: usize = families.iter().map(|f| if f.1 { f.0 } else { 0 }).sum();
                    prop_assert_eq!(
                        sqld.query("SELECT (SELECT count(*) FROM child), (SELECT count(*) FROM grandchild), (SELECT count(*) FROM member)"),
                        vec![vec![
                            Cell::Integer(families_added as i64),
                            Cell::Integer(grand_added as i64),
                            Cell::Integer(families_added as i64)
                        ]]
                    );
                    for d in &team {
                        let wc = d.path().join("working_copy.db");
                        for q in FAMILY_SELECTS {
                            assert_table_eq(&sqld, &wc, q);
                        }
                    }
                    Ok(())
                },
            )
            .unwrap();
    }
}

/// Parents with children that cascade, notes that are set null, and tags that restrict.
const REFERENCES: &str = "
    CREATE TABLE parent(id INTEGER PRIMARY KEY, name TEXT);
    CREATE TABLE child(id INTEGER PRIMARY KEY, parent_id INTEGER REFERENCES parent(id) ON DELETE CASCADE, v TEXT);
    CREATE TABLE note(id INTEGER PRIMARY KEY, parent_id INTEGER REFERENCES parent(id) ON DELETE SET NULL, v TEXT);
    CREATE TABLE tag(parent_id INTEGER REFERENCES parent(id), t TEXT, PRIMARY KEY(parent_id, t)) WITHOUT ROWID;
    INSERT INTO parent VALUES (1, 'one'), (2, 'two'), (3, 'three');
    INSERT INTO child VALUES (10, 1, 'seed child of one'), (11, 2, 'seed child of two');
    INSERT INTO note VALUES (20, 1, 'seed note on one');";

const REFERENCE_SELECTS: [&str; 4] = [
    "SELECT id, name FROM parent ORDER BY id",
    "SELECT id, parent_id, v FROM child ORDER BY id",
    "SELECT id, parent_id, v FROM note ORDER BY id",
    "SELECT parent_id, t FROM tag ORDER BY parent_id, t",
];

/// The app deletes with foreign keys on, as apps do: its cascades happen in the working copy.
fn app_edit(dir: &Path, sql: &str) {
    edit(dir, &format!("PRAGMA foreign_keys = ON; {sql}"));
}

/// Measured: A deleted a parent while a teammate added a child to it. The push stopped with a
/// `foreign_key` conflict, as it should, but `sync --theirs` still left A's working copy
/// different from the remote, and `--ours` settled nothing either: the rows had to be repaired
/// by hand. `--theirs` now restores what our side deleted (the parent and the rows our cascade
/// removed), and their new child stays; the working copy then equals the remote.
#[test]
fn theirs_settles_a_foreign_key_conflict_by_restoring_what_we_deleted() {
    let (sqld, a, b) = two_clones(REFERENCES);
    app_edit(
        b.path(),
        "INSERT INTO child VALUES (30, 1, 'new child of one'); INSERT INTO tag VALUES (1, 'new');",
    );
    ok(&sqld, b.path(), &["sync"]);
    app_edit(
        a.path(),
        "DELETE FROM parent WHERE id = 1; INSERT INTO child VALUES (31, 3, 'ours, kept');",
    );

    let out = run(&sqld, a.path(), &["sync", "--json"]);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    assert!(text(&out).contains("foreign_key"), "{}", text(&out));
    let out = run(&sqld, a.path(), &["sync", "--theirs"]);
    assert!(out.status.success(), "{}", text(&out));
    let wc = a.path().join("working_copy.db");
    for q in REFERENCE_SELECTS {
        assert_table_eq(&sqld, &wc, q);
    }
    assert_eq!(
        sqld.query("SELECT (SELECT name FROM parent WHERE id = 1), (SELECT count(*) FROM child WHERE parent_id = 1), (SELECT parent_id FROM note WHERE id = 20), (SELECT count(*) FROM child WHERE id = 31)"),
        vec![vec![Cell::text("one"), Cell::Integer(2), Cell::Integer(1), Cell::Integer(1)]],
        "the parent, its children and its note are back, and our unrelated new row was pushed"
    );
    ok(&sqld, b.path(), &["sync"]);
    for q in REFERENCE_SELECTS {
        assert_table_eq(&sqld, &b.path().join("working_copy.db"), q);
    }
}

/// `--ours` keeps our delete and applies the schema's ON DELETE action to their new rows that
/// point at the parent (CASCADE deletes, SET NULL empties, NO ACTION deletes too, as the only
/// way the parent can stay deleted), reports what it removed, and pushes it all.
#[test]
fn ours_settles_a_foreign_key_conflict_with_the_on_delete_actions() {
    let (sqld, a, b) = two_clones(REFERENCES);
    app_edit(
        b.path(),
        "INSERT INTO child VALUES (30, 1, 'new child of one'); INSERT INTO note VALUES (40, 1, 'new note on one');
         INSERT INTO tag VALUES (1, 'new');",
    );
    ok(&sqld, b.path(), &["sync"]);
    app_edit(a.path(), "DELETE FROM parent WHERE id = 1;");
    assert_eq!(run(&sqld, a.path(), &["sync"]).status.code(), Some(3));

    let out = run(&sqld, a.path(), &["pull", "--ours", "--json"]);
    assert!(out.status.success(), "{}", text(&out));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let settled = report["references"].to_string();
    for what in ["\"child\"", "\"note\"", "\"tag\"", "deleted", "set null"] {
        assert!(settled.contains(what), "{what} in {report}");
    }
    ok(&sqld, a.path(), &["push"]);
    assert_eq!(
        sqld.query("SELECT (SELECT count(*) FROM parent WHERE id = 1), (SELECT count(*) FROM child WHERE parent_id = 1),
                           (SELECT count(*) FROM tag), (SELECT count(*) FROM note WHERE parent_id IS NULL)"),
        vec![vec![Cell::Integer(0), Cell::Integer(0), Cell::Integer(0), Cell::Integer(2)]],
        "our delete holds on the remote, with its actions on their new rows"
    );
    let wc = a.path().join("working_copy.db");
    for q in REFERENCE_SELECTS {
        assert_table_eq(&sqld, &wc, q);
    }
    ok(&sqld, b.path(), &["sync"]);
    for q in REFERENCE_SELECTS {
        assert_table_eq(&sqld, &b.path().join("working_copy.db"), q);
    }
}

/// The other way round: they deleted a parent we added a child to. `--ours` restores their
/// deleted parent (and what their cascade took with it) and pushes it back; `--theirs` keeps
/// their delete and applies its action to our new child.
#[test]
fn a_parent_they_deleted_under_our_new_child_settles_either_way() {
    let (sqld, a, b) = two_clones(REFERENCES);
    let c = tempdir();
    ok(&sqld, c.path(), &["init", "--url", &sqld.url]);
    app_edit(b.path(), "DELETE FROM parent WHERE id = 2;");
    ok(&sqld, b.path(), &["sync"]);

    app_edit(
        a.path(),
        "INSERT INTO child VALUES (50, 2, 'ours under two');",
    );
    assert_eq!(run(&sqld, a.path(), &["sync"]).status.code(), Some(3));
    ok(&sqld, a.path(), &["sync", "--ours"]);
    assert_eq!(
        sqld.query("SELECT (SELECT name FROM parent WHERE id = 2), (SELECT group_concat(id) FROM (SELECT id FROM child WHERE parent_id = 2 ORDER BY id))"),
        vec![vec![Cell::text("two"), Cell::text("11,50")]],
        "--ours restored their deleted parent and the child their cascade removed"
    );
    for q in REFERENCE_SELECTS {
        assert_table_eq(&sqld, &a.path().join("working_copy.db"), q);
    }

    ok(&sqld, b.path(), &["sync"]);
    app_edit(b.path(), "DELETE FROM parent WHERE id = 3;");
    ok(&sqld, b.path(), &["sync"]);
    app_edit(
        c.path(),
        "INSERT INTO child VALUES (60, 3, 'ours under three');",
    );
    assert_eq!(run(&sqld, c.path(), &["sync"]).status.code(), Some(3));
    ok(&sqld, c.path(), &["sync", "--theirs"]);
    assert_eq!(
        sqld.query("SELECT (SELECT count(*) FROM parent WHERE id = 3), (SELECT count(*) FROM child WHERE id = 60)"),
        vec![vec![Cell::Integer(0), Cell::Integer(0)]],
        "--theirs kept their delete; our child followed it (ON DELETE CASCADE)"
    );
    for d in [&a, &b, &c] {
        ok(&sqld, d.path(), &["sync"]);
        for q in REFERENCE_SELECTS {
            assert_table_eq(&sqld, &d.path().join("working_copy.db"), q);
        }
    }
}

/// A teammate's push that lands between this sync's pull and its push and takes our new row's
/// key is a race, not a conflict: sync pulls again (renumbering ours), pushes again and exits
/// 0, with both rows on the remote and in the working copy. The race is made deterministic by a
/// proxy that runs the teammate's insert when it sees our push open its transaction. A race
/// whose fresh pull still finds a conflict exits 3 with the pull's report.
#[test]
fn sync_pulls_again_when_a_teammate_pushes_between_its_pull_and_its_push() {
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::sync::{Arc, Mutex};
    let sqld = Sqld::start();
    sqld.exec("CREATE TABLE items(id INTEGER PRIMARY KEY, tag TEXT);");
    let a = tempdir();
    let out = run(&sqld, a.path(), &["init", "--url", &sqld.url]);
    assert!(out.status.success(), "{}", text(&out));
    // What the teammate does when our next push opens its transaction.
    let teammate: Arc<Mutex<Option<String>>> = Arc::new(Mutex::new(None));
    let raced = Arc::new(AtomicU32::new(0));
    let (url, token) = (sqld.url.clone(), sqld.rw_token.clone());
    let (next, count) = (teammate.clone(), raced.clone());
    let proxy = HookProxy::start(&sqld.url, move |_, body| {
        if opens_transaction(body) {
            if let Some(sql) = next.lock().unwrap().take() {
                exec_at(&url, &token, &sql);
                count.fetch_add(1, Ordering::SeqCst);
            }
        }
        Verdict::Forward
    });
    let wc = a.path().join("working_copy.db");
    let sync = |json: bool| {
        let mut args = vec!["sync", "--url", &proxy.url];
        if json {
            args.push("--json");
        }
        run(&sqld, a.path(), &args)
    };

    sqlite3_cli(&wc, b"INSERT INTO items VALUES (1, 'ours');");
    *teammate.lock().unwrap() = Some("INSERT INTO items VALUES (1, 'theirs')".into());
    let out = sync(false);
    assert_eq!(raced.load(Ordering::SeqCst), 1, "the teammate pushed first");
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(
        sqld.query("SELECT id, tag FROM items ORDER BY id"),
        vec![
            vec![Cell::Integer(1), Cell::text("theirs")],
            vec![Cell::Integer(2), Cell::text("ours")],
        ],
        "{}",
        text(&out)
    );
    assert_table_eq(&sqld, &wc, "SELECT id, tag FROM items ORDER BY id");
    assert!(
        text(&out).contains("1 -> 2"),
        "says what moved: {}",
        text(&out)
    );

    // The teammate changes the very cell we changed: the fresh pull reports that conflict.
    sqlite3_cli(&wc, b"UPDATE items SET tag = 'ours, edited' WHERE id = 2;");
    *teammate.lock().unwrap() = Some("UPDATE items SET tag = 'theirs, edited' WHERE id = 2".into());
    let out = sync(true);
    assert_eq!(raced.load(Ordering::SeqCst), 2, "the teammate pushed first");
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    let last: serde_json::Value =
        serde_json::from_str(String::from_utf8_lossy(&out.stdout).lines().last().unwrap()).unwrap();
    assert_eq!(last["pulled"], false, "the pull's report: {last}");
    assert_eq!(last["conflicts"][0]["kind"], "cell", "{last}");
    assert_eq!(
        local_query(&wc, "SELECT tag FROM items WHERE id = 2"),
        vec![vec![Cell::text("ours, edited")]]
    );
    assert_eq!(
        sqld.query("SELECT tag FROM items WHERE id = 2"),
        vec![vec![Cell::text("theirs, edited")]]
    );
}

mod references {
    use super::*;
    use proptest::prelude::*;

    /// What one client does to the parents 1–3 and the rows that point at them.
    #[derive(Debug, Clone)]
    enum Op {
        DeleteParent(i64),
        RenameParent(i64),
        AddChild(i64),
        AddNote(i64),
        AddTag(i64),
        MoveSeedChild(i64),
    }

    fn ops() -> impl Strategy<Value = Vec<Op>> {
        let p = 1..4i64;
        let op = prop_oneof![
            2 => p.clone().prop_map(Op::DeleteParent),
            1 => p.clone().prop_map(Op::RenameParent),
            2 => p.clone().prop_map(Op::AddChild),
            1 => p.clone().prop_map(Op::AddNote),
            1 => p.clone().prop_map(Op::AddTag),
            1 => p.prop_map(Op::MoveSeedChild),
        ];
        proptest::collection::vec(op, 1..5)
    }

    fn sql(who: &str, ops: &[Op]) -> String {
        let mut s = String::from("PRAGMA foreign_keys = ON;");
        for (i, op) in ops.iter().enumerate() {
            let tag = format!("{who}-{i}");
            // Tags restrict a parent's delete, so the app deletes them first; children cascade
            // and notes are set null by SQLite.
            s += &match op {
                Op::DeleteParent(p) => {
                    format!("DELETE FROM tag WHERE parent_id = {p}; DELETE FROM parent WHERE id = {p};")
                }
                Op::RenameParent(p) => format!("UPDATE parent SET name = '{tag}' WHERE id = {p};"),
                Op::AddChild(p) => format!("INSERT INTO child(parent_id, v) SELECT id, '{tag}' FROM parent WHERE id = {p};"),
                Op::AddNote(p) => format!("INSERT INTO note(parent_id, v) SELECT id, '{tag}' FROM parent WHERE id = {p};"),
                Op::AddTag(p) => format!("INSERT OR IGNORE INTO tag SELECT id, '{tag}' FROM parent WHERE id = {p};"),
                Op::MoveSeedChild(p) => format!("UPDATE child SET parent_id = {p} WHERE id = 11 AND EXISTS (SELECT 1 FROM parent WHERE id = {p});"),
            };
        }
        s
    }

    fn count(sqld: &Sqld, q: &str) -> i64 {
        match &sqld.query(q)[..] {
            [row] => match &row[..] {
                [Cell::Integer(n)] => *n,
                other => panic!("{q}: {other:?}"),
            },
            other => panic!("{q}: {other:?}"),
        }
    }

    /// Random deletes of parents on one side and new or moved rows pointing at them on the
    /// other, settled with a random side. `--theirs` leaves the working copy equal to the
    /// remote with every row the teammate added still there; `--ours` lands all of ours, our
    /// deletes included. Either way the remote has no row pointing at nothing and every copy
    /// ends equal to it.
    #[test]
    fn foreign_key_conflicts_settle_either_way_against_the_model() {
        let sqld = Sqld::start();
        let (a, b) = (tempdir(), tempdir());
        let settled = std::cell::Cell::new(0);
        let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig::with_cases(10));
        runner
            .run(&(ops(), ops(), any::<bool>()), |(ours, theirs, take_theirs)| {
                sqld.exec("DROP TABLE IF EXISTS tag; DROP TABLE IF EXISTS note; DROP TABLE IF EXISTS child; DROP TABLE IF EXISTS parent;");
                sqld.exec(REFERENCES);
                for d in [&a, &b] {
                    ok(&sqld, d.path(), &["init", "--force", "--url", &sqld.url]);
                }
                edit(b.path(), &sql("b", &theirs));
                ok(&sqld, b.path(), &["sync"]);
                let theirs_added = count(&sqld, "SELECT (SELECT count(*) FROM child WHERE v LIKE 'b-%') + (SELECT count(*) FROM note WHERE v LIKE 'b-%') + (SELECT count(*) FROM tag WHERE t LIKE 'b-%')");
                edit(a.path(), &sql("a", &ours));
                let wc = a.path().join("working_copy.db");
                let deleted: Vec<i64> = (1..4)
                    .filter(|p| local_query(&wc, &format!("SELECT 1 FROM parent WHERE id = {p}")).is_empty())
                    .collect();
                let first = run(&sqld, a.path(), &["sync"]);
                match first.status.code() {
                    Some(0) => {}
                    Some(3) => {
                        settled.set(settled.get() + 1);
                        let side = if take_theirs { "--theirs" } else { "--ours" };
                        ok(&sqld, a.path(), &["sync", side]);
                        if take_theirs {
                            prop_assert_eq!(
                                count(&sqld, "SELECT (SELECT count(*) FROM child WHERE v LIKE 'b-%') + (SELECT count(*) FROM note WHERE v LIKE 'b-%') + (SELECT count(*) FROM tag WHERE t LIKE 'b-%')"),
                                theirs_added,
                                "--theirs lost a row the teammate added"
                            );
                        } else {
                            for p in &deleted {
                                prop_assert_eq!(
                                    count(&sqld, &format!("SELECT count(*) FROM parent WHERE id = {p}")),
                                    0,
                                    "--ours: our delete of parent {} holds", p
                                );
                            }
                        }
                    }
                    _ => panic!("sync failed: {}", text(&first)),
                }
                for q in REFERENCE_SELECTS {
                    assert_table_eq(&sqld, &wc, q);
                }
                prop_assert_eq!(
                    sqld.query("SELECT count(*) FROM pragma_foreign_key_check"),
                    vec![vec![Cell::Integer(0)]],
                    "a row on the remote points at nothing"
                );
                ok(&sqld, b.path(), &["sync"]);
                for q in REFERENCE_SELECTS {
                    assert_table_eq(&sqld, &b.path().join("working_copy.db"), q);
                }
                Ok(())
            })
            .unwrap();
        assert!(settled.get() > 0, "no conflict was settled in any case");
    }
}

/// An orphan the app made itself before the merge is not the merge's doing: settling a
/// foreign-key conflict in the same table leaves it as it is and is not stopped by it.
#[test]
fn settling_a_foreign_key_conflict_leaves_the_apps_own_orphan_alone() {
    let (sqld, a, b) = two_clones(REFERENCES);
    app_edit(
        b.path(),
        "INSERT INTO child VALUES (30, 1, 'new child of one');",
    );
    ok(&sqld, b.path(), &["sync"]);
    edit(
        a.path(),
        "PRAGMA foreign_keys = ON; DELETE FROM parent WHERE id = 1;
         PRAGMA foreign_keys = OFF; INSERT INTO child VALUES (40, 99, 'orphan of the app');",
    );
    ok(&sqld, a.path(), &["pull", "--theirs"]);
    let wc = a.path().join("working_copy.db");
    assert_eq!(
        local_query(
            &wc,
            "SELECT id, parent_id FROM child WHERE id IN (30, 40) ORDER BY id"
        ),
        vec![
            vec![Cell::Integer(30), Cell::Integer(1)],
            vec![Cell::Integer(40), Cell::Integer(99)]
        ],
        "their child kept with its restored parent, the app's orphan as it was"
    );
    assert_eq!(
        local_query(&wc, "SELECT name FROM parent WHERE id = 1"),
        vec![vec![Cell::text("one")]]
    );
}
