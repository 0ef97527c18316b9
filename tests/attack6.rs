//! Attacks on two paths not attacked before: `tursync diff --sql` reading a large table with two
//! connections (`pages::DbFile::sum_leaves`) beside an app in its own process, and a Turso Sync
//! pull whose pages rewrite most of a large table (`touched`: such a table keeps no cells and
//! is read whole).

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::{Duration, Instant};

use crate::common::*;

const SEED_ROWS: i64 = 200_000;
/// The app updates and deletes ids 1..=APP_HI and inserts from APP_NEW + 1 on.
const APP_HI: i64 = 100_000;
const APP_NEW: i64 = 10_000_000;

/// One commit of the churn app's: its sequence number, and each row it wrote with its `n`
/// (`None`: deleted).
type Commit = (i64, Vec<(i64, Option<i64>)>);

/// The churn app's writes, one commit a group, in commit order.
fn commits(lines: &[String]) -> Vec<Commit> {
    let mut out = Vec::new();
    let mut group = Vec::new();
    for line in lines {
        let parts: Vec<&str> = line.split(' ').collect();
        let id: i64 = parts[1].parse().unwrap();
        match parts[0] {
            "u" => group.push((id, Some(parts[2].parse().unwrap()))),
            "d" => group.push((id, None)),
            "i" => {
                let seq: i64 = parts[2].parse().unwrap();
                group.push((id, Some(seq)));
                out.push((seq, std::mem::take(&mut group)));
            }
            other => panic!("app line {other:?}"),
        }
    }
    out
}

/// `tursync diff --sql`, run again and again on a working copy in WAL mode whose table of some
/// 1,100 leaves is read by two connections (its leaves are known from our push; the second
/// opens the first one's snapshot), while an app in its own process updates and deletes rows
/// across the first half of the keys, inserts past the last, and checkpoints every third
/// commit (TRUNCATE, RESTART, PASSIVE in turn). Each script, applied to a copy of the base, must give the rows of one
/// commit of the app's exactly: the inserts 1..=K, and every write of commits 1..=K, none
/// after.
#[test]
fn diff_sql_of_a_large_table_read_by_two_connections_beside_an_app_in_wal_mode() {
    let seed = Rng::from_time("diff beside").below(1 << 30).to_string();
    let dir = tempdir();
    let dir = dir.path();
    let sqld = large_items_copy(SEED_ROWS, dir);
    let wc = dir.join("working_copy.db");
    // A push of ours reads the table's leaves and records them.
    edit(dir, "UPDATE items SET n = -1 WHERE id = 1");
    ok(&sqld, dir, &["push"]);
    assert!(
        dir.join(".tursync/leaves.sum").exists(),
        "the push recorded no leaves"
    );
    let base = dir.join("base-copy.db");
    std::fs::copy(dir.join(".tursync/base.db"), &base).unwrap();

    let app = App::spawn(
        "churn_app.py",
        &wc,
        &[
            "wal",
            "1",
            &seed,
            "1",
            &APP_HI.to_string(),
            &APP_NEW.to_string(),
            "1",
        ],
    );
    let mut scripts = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(4);
    while Instant::now() < deadline {
        let out = ok(&sqld, dir, &["diff", "--sql"]);
        scripts.push(out.stdout);
    }
    let lines = app.stop();
    let commits = commits(&lines);
    assert!(
        commits.len() > 100,
        "the app committed only {}",
        commits.len()
    );
    assert!(scripts.len() >= 3, "only {} diffs ran", scripts.len());

    let ids: BTreeSet<i64> = commits
        .iter()
        .flat_map(|(_, w)| w.iter().map(|(id, _)| *id))
        .collect();
    let list = |ids: &BTreeSet<i64>| {
        ids.iter()
            .map(|i| i.to_string())
            .collect::<Vec<_>>()
            .join(",")
    };
    let state = |db: &Path| -> BTreeMap<i64, i64> {
        local_query(
            db,
            &format!("SELECT id, n FROM items WHERE id IN ({})", list(&ids)),
        )
        .into_iter()
        .map(|r| match (&r[0], &r[1]) {
            (Cell::Integer(id), Cell::Integer(n)) => (*id, *n),
            _ => panic!("row {r:?}"),
        })
        .collect()
    };
    let at_base = state(&base);
    let mut torn = Vec::new();
    let mut seen_k = BTreeSet::new();
    for (i, script) in scripts.iter().enumerate() {
        let x = dir.join(format!("applied-{i}.db"));
        std::fs::copy(&base, &x).unwrap();
        sqlite3_cli(&x, script);
        let got = state(&x);
        // The commit the diff's snapshot is at: the last insert it holds.
        let k = got
            .keys()
            .filter(|&&id| id > APP_NEW)
            .map(|id| id - APP_NEW)
            .max()
            .unwrap_or(0);
        seen_k.insert(k);
        let mut want = at_base.clone();
        for (_, writes) in commits.iter().filter(|(seq, _)| *seq <= k) {
            for (id, n) in writes {
                match n {
                    Some(n) => want.insert(*id, *n),
                    None => want.remove(id),
                };
            }
        }
        if got != want {
            let differ: Vec<String> = ids
                .iter()
                .filter(|id| got.get(id) != want.get(id))
                .take(5)
                .map(|id| {
                    format!(
                        "{id}: diff {:?}, commit {k} {:?}",
                        got.get(id),
                        want.get(id)
                    )
                })
                .collect();
            torn.push(format!("diff {i} (at commit {k}): {differ:?}"));
        }
        let count = local_query(&x, "SELECT count(*) FROM items");
        let deleted = commits
            .iter()
            .filter(|(seq, _)| *seq <= k)
            .flat_map(|(_, w)| w.iter().filter(|(_, n)| n.is_none()))
            .count() as i64;
        if count != [[Cell::Integer(SEED_ROWS - deleted + k)]] {
            torn.push(format!("diff {i} (at commit {k}): {count:?} rows"));
        }
        let _ = std::fs::remove_file(&x);
    }
    eprintln!(
        "{} diffs at commits {seen_k:?} of the app's {}",
        scripts.len(),
        commits.len()
    );
    assert!(
        torn.is_empty(),
        "{} of {} diffs describe no state the app committed: {torn:?}",
        torn.len(),
        scripts.len()
    );
    assert!(
        seen_k.len() >= 3,
        "the diffs saw only commits {seen_k:?} of the app's {}",
        commits.len()
    );
    integrity_ok(&wc);
}

/// Every row of Turso Sync's `t` in the working copy with its storage class and exact bytes,
/// a range of ids at a time.
fn assert_t_exact_turso(server: &TursoSync, wc: &Path, ids: std::ops::Range<i64>) {
    for from in ids.step_by(25_000) {
        server.assert_table_eq(
            wc,
            &format!(
                "SELECT id, typeof(v), CASE WHEN typeof(v) IN ('text', 'blob') THEN hex(v) ELSE v END
                   FROM t WHERE id BETWEEN {from} AND {} ORDER BY id",
                from + 24_999
            ),
        );
    }
    server.assert_table_eq(wc, "SELECT count(*), sum(id) FROM t");
}

/// On Turso Sync, right after a push of ours, one transaction of a teammate rewrites more than
/// a quarter of a large table's leaves (so the pull's pages make it read whole, keeping no
/// cells): values change storage class, move onto and off overflow pages, rows we pushed are
/// set back, most rows go, then more come back than went. Each pull ends with the remote's
/// rows exactly, and reads the pages `/pull-updates` sent.
#[test]
fn turso_sync_bulk_rewrites_of_a_large_table_after_our_push_are_pulled_exactly() {
    let server = TursoSync::start();
    server.exec(&[
        "CREATE TABLE t(id INTEGER PRIMARY KEY, v)",
        "INSERT INTO t SELECT value, CASE value % 5
             WHEN 0 THEN value * 7 WHEN 1 THEN value + 0.25 WHEN 2 THEN printf('%080d', value)
             WHEN 3 THEN CASE WHEN value % 50 = 3 THEN zeroblob(5000) ELSE randomblob(60) END
             ELSE NULL END
           FROM generate_series(1, 80000)",
    ]);
    let dir = tempdir();
    let dir = dir.path();
    init_url(&server.url, dir);
    let wc = dir.join("working_copy.db");
    let leaves = leaf_count(&wc, "t");
    assert!(leaves >= 1024, "only {leaves} leaves");
    assert_t_exact_turso(&server, &wc, 0..80_001);
    let bulk: [&[&str]; 3] = [
        &["UPDATE t SET v = CASE WHEN v IS NULL THEN 'was null ' || id
                               WHEN typeof(v) = 'blob' AND length(v) > 1000 THEN x'00'
                               WHEN id % 97 = 0 THEN randomblob(4500 + id % 300)
                               WHEN typeof(v) = 'integer' THEN v * 1.5
                               ELSE v END
           WHERE id % 4 != 0"],
        &[
            "BEGIN",
            "DELETE FROM t WHERE id BETWEEN 2000 AND 72000",
            "UPDATE t SET v = zeroblob(6000) WHERE id % 11 = 0 AND id < 2000",
            "UPDATE t SET v = printf('%080d', id) WHERE id IN (72001, 72002, 72003)",
            "COMMIT",
        ],
        &[
            "BEGIN",
            "INSERT INTO t SELECT value, CASE WHEN value % 9 = 0 THEN randomblob(4200)
                                         ELSE printf('%0120d', value) END
               FROM generate_series(2000, 71999) WHERE value % 3 != 0",
            "INSERT INTO t SELECT value, value * 0.5 FROM generate_series(90001, 140000)",
            "COMMIT",
        ],
    ];
    let mut by_pages = 0;
    for (round, stmts) in bulk.iter().enumerate() {
        edit_ours_across_t(dir, round);
        run_ok(tursync(dir).arg("push"));
        server.exec(stmts);
        let out = run_ok(tursync(dir).args(["pull", "--json"]));
        let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let read = report["read"].as_str().unwrap_or_default().to_owned();
        eprintln!("round {round}: read {read}");
        by_pages += usize::from(read == "the pages the log changed");
        assert_t_exact_turso(&server, &wc, 0..200_010);
        assert_nothing_pending(dir);
    }
    integrity_ok(&wc);
    assert!(
        by_pages >= 2,
        "only {by_pages} pulls read the pages /pull-updates sent"
    );
}
