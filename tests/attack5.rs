//! Attacks on the two connections that read a large table's leaves (`pages::DbFile::sum_leaves`,
//! `diff::BESIDE_LEAVES`) and on a pull's advance that writes most of a table's leaves
//! (`touched`: such a table is read whole).

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::{Duration, Instant};

use crate::common::*;

/// The app's rows: ids 1..=APP_HI; the teammate's: APP_HI+1..=SEED_ROWS and negative ids.
const SEED_ROWS: i64 = 240_000;
const APP_HI: i64 = 120_000;
/// The app's new rows take ids from here on.
const APP_NEW: i64 = 10_000_000;

/// One write the churn app printed after its COMMIT returned.
#[derive(Clone, Copy, Debug)]
enum Op {
    Set(i64),
    Deleted,
}

/// What the remote must show after a push or sync that began at `began`: every write the app
/// committed before then, for each id its last one (an update's `n` or a later one, since `n`
/// only grows; a row deleted at any time may be gone).
fn assert_on_remote(sqld: &Sqld, lines: &[(String, Instant)], began: Instant, what: &str) {
    let mut last: BTreeMap<i64, Op> = BTreeMap::new();
    let mut ever_deleted = BTreeSet::new();
    for (line, at) in lines {
        let parts: Vec<&str> = line.split(' ').collect();
        let id: i64 = parts[1].parse().unwrap();
        let op = match parts[0] {
            "d" => {
                ever_deleted.insert(id);
                Op::Deleted
            }
            "u" | "i" => Op::Set(parts[2].parse().unwrap()),
            other => panic!("app line {other:?}"),
        };
        if *at < began {
            last.insert(id, op);
        }
    }
    let ids: Vec<i64> = last.keys().copied().collect();
    let mut remote = BTreeMap::new();
    for chunk in ids.chunks(500) {
        let list: Vec<String> = chunk.iter().map(|i| i.to_string()).collect();
        for row in sqld.query(&format!(
            "SELECT id, n FROM items WHERE id IN ({})",
            list.join(",")
        )) {
            let (Cell::Integer(id), Cell::Integer(n)) = (&row[0], &row[1]) else {
                panic!("row {row:?}")
            };
            remote.insert(*id, *n);
        }
    }
    let mut wrong = Vec::new();
    for (id, op) in &last {
        let ok = match (op, remote.get(id)) {
            (Op::Deleted, None) => true,
            (Op::Deleted, Some(_)) => false,
            (Op::Set(_), None) => ever_deleted.contains(id),
            (Op::Set(seq), Some(n)) => n >= seq,
        };
        if !ok {
            wrong.push(format!("{id}: app {op:?}, remote {:?}", remote.get(id)));
        }
    }
    assert!(
        wrong.is_empty(),
        "after a {what} that began after them, {} of {} rows the app wrote are not on the remote as written, e.g. {:?}",
        wrong.len(),
        last.len(),
        &wrong[..wrong.len().min(5)]
    );
}

/// A teammate's bulk change of its half of the keys, in one transaction: an update of a third
/// of the table's rows (a third of them made to spill onto overflow pages, the rest short),
/// deletes and inserts. Then more than a quarter of the table's leaves are written, and the pull
/// reads it whole.
fn teammate_bulk(sqld: &Sqld, rng: &mut Rng, round: i64) {
    let from = APP_HI + 1 + rng.below(20_000) as i64;
    let to = from + 80_000;
    sqld.exec(&format!(
        "UPDATE items SET n = n + 1, tag = CASE WHEN id % 3 = {r3} THEN printf('%.*c', 4200 + id % 900, 'o') ELSE 't{round}' END
           WHERE id BETWEEN {from} AND {to};
         DELETE FROM items WHERE id BETWEEN {to} + 1 AND {to} + 2000 AND id <= {SEED_ROWS};
         INSERT INTO items(id, tag, n) VALUES ({neg}, 'remote-{round}', {round});",
        r3 = round % 3,
        neg = -1 - round,
    ));
}

/// Pushes and syncs of a table of some 1,900 leaves, read by two connections at once, beside
/// an app in its own process that updates and deletes rows across half the keys (and, in WAL
/// mode, checkpoints every third commit), while a teammate rewrites most of the other half's
/// leaves in one transaction; pushes and syncs killed at random moments. After every push or
/// sync that succeeds, each write the app committed before it began is on the remote; at the
/// end the remote and the working copy hold the same rows.
fn churn_beside_two_readers(journal_mode: &str, checkpoint: bool) {
    let mut rng = Rng::from_time(journal_mode);
    let dir = tempdir();
    let dir = dir.path();
    let sqld = large_items_copy(SEED_ROWS, dir);
    let wc = dir.join("working_copy.db");
    // The first push records the leaves; the pushes after it read them with two connections.
    ok(&sqld, dir, &["push"]);

    let seed = rng.below(1 << 30).to_string();
    let app = App::spawn(
        "churn_app.py",
        &wc,
        &[
            journal_mode,
            "3",
            &seed,
            "1",
            &APP_HI.to_string(),
            &APP_NEW.to_string(),
            if checkpoint { "1" } else { "0" },
        ],
    );
    let run_checked = |what: &str| {
        let began = Instant::now();
        ok(&sqld, dir, &[what]);
        assert_on_remote(&sqld, &app.committed(), began, what);
    };

    // Pushes only: the app's writes alone.
    let deadline = Instant::now() + Duration::from_secs(3);
    let mut pushes = 0;
    while Instant::now() < deadline {
        run_checked("push");
        pushes += 1;
    }
    assert!(pushes >= 3, "only {pushes} pushes ran");

    // Syncs with a teammate's bulk changes, and commands killed at random moments.
    for round in 0..3 {
        teammate_bulk(&sqld, &mut rng, round);
        let what = ["sync", "push"][round as usize % 2];
        let wait = Duration::from_millis(30 + rng.below(500));
        killed_after(sqld.tursync(dir).arg(what), wait, what);
        run_checked("sync");
        run_checked("push");
    }

    let lines = app.stop();
    assert!(lines.len() > 200, "the app wrote only {} rows", lines.len());
    ok(&sqld, dir, &["sync"]);
    integrity_ok(&wc);
    assert_items_equal(&sqld, &wc);
    assert_nothing_pending(dir);
}

#[test]
fn churn_across_a_large_table_read_by_two_connections_in_rollback_journal_mode() {
    churn_beside_two_readers("delete", false);
}

#[test]
fn churn_across_a_large_table_read_by_two_connections_in_wal_mode_with_checkpoints() {
    churn_beside_two_readers("wal", true);
}

/// Every row of `t` with its storage class and exact bytes, on both sides.
fn assert_t_exact(sqld: &Sqld, wc: &Path) {
    assert_rows_equal_by_id(
        sqld,
        wc,
        "SELECT id, typeof(v), CASE WHEN typeof(v) IN ('text', 'blob') THEN hex(v) ELSE v END FROM t",
        1000,
    );
}

/// A teammate's one transaction rewrites more than a quarter of a large table's leaves (so the
/// pull reads it whole and keeps no cells of its leaves), right after our push (so the base
/// keeps pages apart from the mirror): values change storage class, move onto and off overflow
/// pages, rows we pushed are set back, and the table shrinks and grows by tens of thousands of
/// rows in one transaction (its depth changes). Each pull ends with the remote's rows exactly.
#[test]
fn bulk_rewrites_of_a_large_table_after_our_push_are_pulled_exactly() {
    let sqld = Sqld::start();
    sqld.exec(
        "CREATE TABLE t(id INTEGER PRIMARY KEY, v);
         INSERT INTO t SELECT value, CASE value % 5
             WHEN 0 THEN value * 7 WHEN 1 THEN value + 0.25 WHEN 2 THEN printf('%080d', value)
             WHEN 3 THEN CASE WHEN value % 50 = 3 THEN zeroblob(5000) ELSE randomblob(60) END
             ELSE NULL END
           FROM generate_series(1, 80000);",
    );
    let dir = tempdir();
    let dir = dir.path();
    init(&sqld, dir);
    let wc = dir.join("working_copy.db");
    let leaves = leaf_count(&wc, "t");
    assert!(leaves >= 1024, "only {leaves} leaves");
    // The teammate's transactions, each after a push of ours.
    let bulk = [
        // Most rows change class or size; the overflow rows go small, some small ones spill.
        "UPDATE t SET v = CASE WHEN v IS NULL THEN 'was null ' || id
                               WHEN typeof(v) = 'blob' AND length(v) > 1000 THEN x'00'
                               WHEN id % 97 = 0 THEN randomblob(4500 + id % 300)
                               WHEN typeof(v) = 'integer' THEN v * 1.5
                               ELSE v END
           WHERE id % 4 != 0",
        // Most of the table goes; what stays is rewritten; our rows are set back.
        "DELETE FROM t WHERE id BETWEEN 2000 AND 72000;
         UPDATE t SET v = zeroblob(6000) WHERE id % 11 = 0 AND id < 2000;
         UPDATE t SET v = printf('%080d', id) WHERE id IN (72001, 72002, 72003)",
        // It grows by more than it had, with rows across the key range and beyond.
        "INSERT INTO t SELECT value, CASE WHEN value % 9 = 0 THEN randomblob(4200)
                                         ELSE printf('%0120d', value) END
           FROM generate_series(2000, 71999) WHERE value % 3 != 0;
         INSERT INTO t SELECT value, value * 0.5 FROM generate_series(90001, 140000);",
    ];
    let mut by_log = 0;
    for (round, sql) in bulk.iter().enumerate() {
        // Ours: rows across the keys, some spilling, pushed; then the teammate's bulk.
        edit_ours_across_t(dir, round);
        ok(&sqld, dir, &["push"]);
        sqld.exec(sql);
        let out = ok(&sqld, dir, &["pull", "--json"]);
        let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let read = report["read"].as_str().unwrap_or_default().to_owned();
        eprintln!("round {round}: read {read}");
        by_log += usize::from(read == "the pages the log changed");
        assert_t_exact(&sqld, &wc);
        assert_nothing_pending(dir);
    }
    assert!(
        by_log >= 2,
        "only {by_log} pulls read the pages the log changed"
    );
}
