//! The diff against its reference: the page walk (skipping shared leaves, or reading only the
//! leaves changed since they were recorded) must find what the SQL merge join finds, and
//! printing must print what the changeset in memory holds.

use super::*;
use crate::changeset::Phase;

/// A scratch directory with `base.db`, made by `setup`, and `work.db`, a byte copy of it
/// then changed by `edit`: the working copy right after an init, then edited.
fn copies(
    name: &str,
    setup: impl FnOnce(&Connection),
    edit: impl FnOnce(&Connection),
) -> (std::path::PathBuf, Connection, Connection) {
    let dir = std::env::temp_dir().join(format!("tursync-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let (base, work) = (dir.join("base.db"), dir.join("work.db"));
    setup(&Connection::open(&base).unwrap());
    std::fs::copy(&base, &work).unwrap();
    edit(&Connection::open(&work).unwrap());
    let (b, w) = (
        Connection::open(&base).unwrap(),
        Connection::open(&work).unwrap(),
    );
    w.execute_batch("BEGIN").unwrap();
    (dir, b, w)
}

/// Diffs `base` against `work` and checks every table's changes, and each phase's, against
/// the SQL merge join (the reference). Returns the changeset and the leaves its one read
/// of every table passed over.
fn diff_like_the_reference(base: &Connection, work: &Connection) -> (Changeset, u64) {
    diff_knowing_like_the_reference(base, work, None)
}

/// [`diff_like_the_reference`], the diff reading the tables `known` covers from the leaves
/// that changed since.
fn diff_knowing_like_the_reference(
    base: &Connection,
    work: &Connection,
    known: Option<&LeafSums>,
) -> (Changeset, u64) {
    let d = Diff::new(base, work, &Filter::default())
        .unwrap()
        .knowing(known)
        .unwrap()
        .summing();
    let cs = d.changeset().unwrap();
    let skipped = d.leaves_skipped();
    for (i, t) in d.outline.tables.iter().enumerate() {
        let Read::Merge(old) = &d.reads[i] else {
            continue;
        };
        let mut reference = Vec::new();
        merge(base, old, work, t, Pick::All, &mut |ch| {
            reference.push(ch);
            Ok(())
        })
        .unwrap();
        assert_eq!(cs.tables[i].changes, reference, "table {}", t.table.name);
        for phase in Phase::ALL {
            let mut got = Vec::new();
            d.read(i, Pick::Only(phase), &mut |ch| {
                got.push(ch);
                Ok(())
            })
            .unwrap();
            let want: Vec<_> = reference
                .iter()
                .filter(|ch| Pick::Only(phase).takes(t, ch))
                .cloned()
                .collect();
            assert_eq!(got, want, "table {}, {phase:?}", t.table.name);
        }
    }
    // Printed as the rows are read, whether the changes put aside for a table's later
    // passes stay in memory or go to a file: byte for byte what the changeset in memory
    // prints.
    let (mut summary, mut summary2) = (Vec::new(), Vec::new());
    cs.write_summary(&mut summary, true).unwrap();
    d.write_summary(&mut summary2, true).unwrap();
    assert_eq!(
        String::from_utf8_lossy(&summary),
        String::from_utf8_lossy(&summary2)
    );
    let (mut sql, mut json) = (Vec::new(), Vec::new());
    cs.write_sql(&mut sql).unwrap();
    cs.write_json(&mut json).unwrap();
    for budget in [0, 3000, KEPT_BYTES] {
        let printing = Printing {
            diff: &d,
            budget,
            buffered: std::cell::RefCell::new(None),
        };
        let (mut sql2, mut json2) = (Vec::new(), Vec::new());
        d.outline.write_sql_from(&printing, &mut sql2).unwrap();
        d.outline.write_json_from(&printing, &mut json2).unwrap();
        assert!(sql == sql2, "SQL printed with {budget} bytes in memory");
        assert!(json == json2, "JSON printed with {budget} bytes in memory");
    }
    (cs, skipped)
}

const TABLE: &str = "CREATE TABLE t(id INTEGER PRIMARY KEY, a, b REAL, c TEXT, u INT UNIQUE);
    WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 3000)
    INSERT INTO t SELECT i * 2, i, i % 7, printf('row %d', i),
        CASE WHEN i % 10 = 0 THEN i END FROM n;
    INSERT INTO t(id, a) VALUES (1001, zeroblob(9000)), (3001, randomblob(20000));";

#[test]
fn leaves_both_files_share_are_passed_over() {
    let (dir, b, w) = copies(
        "shared-leaves",
        |c| c.execute_batch(TABLE).unwrap(),
        |c| {
            c.execute_batch(
                "UPDATE t SET c = 'edited' WHERE id = 3000; DELETE FROM t WHERE id = 5000;
                 INSERT INTO t(id, a) VALUES (100000, 'new');",
            )
            .unwrap()
        },
    );
    // Table leaves start with 0x0d; page 1 starts with the file header, and `t` is the
    // only table.
    let leaves: i64 = w
        .query_row(
            "SELECT count(*) FROM sqlite_dbpage WHERE substr(data, 1, 1) = x'0d'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    let leaves = leaves as u64;
    let (cs, skipped) = diff_like_the_reference(&b, &w);
    assert_eq!(cs.tables[0].counts(), (1, 1, 1));
    // Three edited leaves, two holding rows that spill to overflow pages, and the pages
    // a split or a merge may touch: every other leaf is passed over.
    assert!(skipped > 0, "no leaf passed over");
    assert!(
        skipped + 12 >= leaves,
        "{skipped} of {leaves} leaves passed over"
    );
    let (unchanged, b2, w2) = copies("unchanged", |c| c.execute_batch(TABLE).unwrap(), |_| {});
    let (cs, all) = diff_like_the_reference(&b2, &w2);
    assert!(cs.is_empty());
    // Every leaf but the two holding spilled rows.
    assert_eq!(all + 2, leaves, "leaves passed over in identical copies");
    let _ = std::fs::remove_dir_all(dir);
    let _ = std::fs::remove_dir_all(unchanged);
}

/// The leaf holding a spilled row is the same in both files, but its overflow page is not:
/// the leaf must be read, not passed over.
#[test]
fn a_leaf_is_not_passed_over_when_its_overflow_pages_differ() {
    let marker = "6d61726b6572"; // "marker"
    let (dir, b, w) = copies(
        "overflow",
        |c| {
            c.execute_batch(&format!(
                "CREATE TABLE t(id INTEGER PRIMARY KEY, v);
                 INSERT INTO t VALUES (1, 'small'), (2, zeroblob(6000) || x'{marker}'), (3, 'x');"
            ))
            .unwrap()
        },
        |c| {
            let (pgno, mut data): (i64, Vec<u8>) = c
                .query_row(
                    &format!(
                        "SELECT pgno, data FROM sqlite_dbpage WHERE instr(data, x'{marker}') > 0"
                    ),
                    [],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
                .unwrap();
            let at = data.windows(6).position(|x| x == b"marker").unwrap();
            data[at] = b'M';
            c.execute(
                "UPDATE sqlite_dbpage SET data = ?2 WHERE pgno = ?1",
                rusqlite::params![pgno, data],
            )
            .unwrap();
        },
    );
    let (cs, _) = diff_like_the_reference(&b, &w);
    assert_eq!(cs.tables[0].counts(), (0, 1, 0));
    let _ = std::fs::remove_dir_all(dir);
}

/// A xorshift generator: `next(n)` is below `n`.
fn xorshift(mut seed: u64) -> impl FnMut(u64) -> u64 {
    move |n| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed % n
    }
}

/// A value as SQL: NULL, an integer, a real, a text, a small blob, or a blob that spills
/// to overflow pages.
fn random_value(next: &mut impl FnMut(u64) -> u64) -> String {
    match next(6) {
        0 => "NULL".to_owned(),
        1 => format!("{}", next(1000)),
        2 => format!("{}.5", next(1000)),
        3 => format!("'text {}'", next(1000)),
        4 => format!("randomblob({})", 1 + next(30)),
        _ => format!("zeroblob({})", 4000 + next(12000)),
    }
}

/// Random edits to a page copy of the base, few and many: the page walk, leaves passed
/// over, short records and all, finds exactly what the SQL merge join finds, phase by
/// phase.
#[test]
fn random_edits_diff_like_the_sql_merge_join() {
    let mut next = xorshift(0x9e37_79b9_7f4a_7c15);
    let mut skipped_somewhere = false;
    for round in 0..12 {
        let count = [1, 3, 10, 60][round % 4];
        let mut edits = String::new();
        for _ in 0..count {
            let id = next(6200);
            let value = random_value(&mut next);
            edits.push_str(&match next(5) {
                0 => format!("UPDATE OR REPLACE t SET a = {value} WHERE id = {id};"),
                1 => format!("UPDATE OR REPLACE t SET u = {} WHERE id = {id};", next(300)),
                2 => format!("DELETE FROM t WHERE id = {id};"),
                3 => format!("INSERT OR REPLACE INTO t(id, a, b) VALUES ({id}, {value}, 1);"),
                _ => format!("UPDATE t SET b = b + 1, c = NULL WHERE id = {id};"),
            });
        }
        // Odd rounds add a column after the rows were written: their records are short,
        // and each changed one is read through SQL by rowid.
        let added = ["", "ALTER TABLE t ADD COLUMN z DEFAULT 'added';"][round % 2];
        let (dir, b, w) = copies(
            "random",
            |c| c.execute_batch(&format!("{TABLE}{added}")).unwrap(),
            |c| c.execute_batch(&edits).unwrap(),
        );
        let (_, skipped) = diff_like_the_reference(&b, &w);
        skipped_somewhere |= skipped > 0;
        let _ = std::fs::remove_dir_all(dir);
    }
    assert!(skipped_somewhere);
}

/// The leaves of the file at `path` as a diff reads them, standing for that file as a
/// base: what a push records when the working copy holds exactly the base's rows.
fn leaves_of(path: &std::path::Path) -> LeafSums {
    let (a, b) = (
        Connection::open(path).unwrap(),
        Connection::open(path).unwrap(),
    );
    b.execute_batch("BEGIN").unwrap();
    let d = Diff::new(&a, &b, &Filter::default()).unwrap().summing();
    assert!(d.changeset().unwrap().is_empty());
    let base = pages::stamp(&a).unwrap().unwrap();
    d.walked().standing_for(base)
}

/// Random edits after the working copy's leaves were recorded, small and large, with rows
/// spilling to overflow pages, leaves split, merged and freed, a VACUUM renumbering every
/// page, and rows written back unchanged: reading only the leaves that changed finds
/// exactly what the SQL merge join finds, phase by phase.
#[test]
fn leaves_changed_since_they_were_recorded_diff_like_the_sql_merge_join() {
    let mut next = xorshift(0x2545_f491_4f6c_dd1d);
    let mut kept_somewhere = false;
    for round in 0..16 {
        let count = [1, 4, 30, 400][round % 4];
        let mut edits = String::new();
        for _ in 0..count {
            let id = next(6400);
            let value = random_value(&mut next);
            edits.push_str(&match next(7) {
                0 => format!("UPDATE OR REPLACE t SET a = {value} WHERE id = {id};"),
                1 => format!(
                    "DELETE FROM t WHERE id BETWEEN {id} AND {id} + {};",
                    next(200)
                ),
                2 => format!("INSERT OR REPLACE INTO t(id, a, b) VALUES ({id}, {value}, 1);"),
                3 => format!(
                    "INSERT OR IGNORE INTO t(id, a) VALUES ({}, {value});",
                    -(id as i64)
                ),
                4 => format!("UPDATE t SET a = a, b = b WHERE id = {id};"),
                5 => format!(
                    "DELETE FROM t WHERE id = {id}; INSERT INTO t SELECT * FROM t2 WHERE id = {id};"
                ),
                _ => format!("UPDATE t SET b = b + 1, c = NULL WHERE id = {id};"),
            });
        }
        if round % 5 == 4 {
            edits.push_str("VACUUM;");
        }
        let (dir, b, w) = copies(
            "known-leaves",
            |c| {
                c.execute_batch(&format!("{TABLE} CREATE TABLE t2 AS SELECT * FROM t;"))
                    .unwrap()
            },
            |c| c.execute_batch(&edits).unwrap(),
        );
        let known = leaves_of(&dir.join("base.db"));
        assert!(known.tables.contains_key("t"));
        let (_, kept) = diff_knowing_like_the_reference(&b, &w, Some(&known));
        kept_somewhere |= kept > 0;
        let _ = std::fs::remove_dir_all(dir);
    }
    assert!(kept_somewhere, "no leaf was ever kept");
}

/// Leaves recorded for another base, or for a file of another page size, are not used:
/// the diff walks both files.
#[test]
fn leaves_of_another_base_or_page_size_are_ignored() {
    let (dir, b, w) = copies(
        "other-leaves",
        |c| c.execute_batch(TABLE).unwrap(),
        |c| {
            c.execute_batch("UPDATE t SET c = 'x' WHERE id = 40")
                .unwrap()
        },
    );
    // The working copy's leaves as edited, standing for the working copy: the base does
    // not hold their rows, and were they used, the change would go unseen.
    w.execute_batch("COMMIT").unwrap();
    let mut known = leaves_of(&dir.join("work.db"));
    w.execute_batch("BEGIN").unwrap();
    let (cs, _) = diff_knowing_like_the_reference(&b, &w, Some(&known));
    assert_eq!(cs.tables[0].counts(), (0, 1, 0));
    known.head.page_size = 8192;
    known.head.base = pages::stamp(&b).unwrap().unwrap();
    let (cs, _) = diff_knowing_like_the_reference(&b, &w, Some(&known));
    assert_eq!(cs.tables[0].counts(), (0, 1, 0));
    let _ = std::fs::remove_dir_all(dir);
}

/// Several changed tables, one with a UNIQUE column whose values rotate: each table's
/// passes are served from what its one read put aside, and JSON's count of the last table
/// still serves its print after the other tables were read again.
#[test]
fn several_tables_print_like_the_changeset() {
    let (dir, b, w) = copies(
        "several",
        |c| {
            c.execute_batch(&format!(
                "{TABLE}
                 CREATE TABLE s(id INTEGER PRIMARY KEY, u TEXT UNIQUE, v);
                 INSERT INTO s VALUES (1, 'a', 1), (2, 'b', 2), (3, 'c', 3), (4, 'd', 4), (6, 'f', 6);"
            ))
            .unwrap()
        },
        |c| {
            c.execute_batch(
                "UPDATE t SET c = 'edited' WHERE id % 7 = 0; DELETE FROM t WHERE id % 11 = 0;
                 INSERT INTO t(id, a) VALUES (100000, 'new');
                 UPDATE s SET u = 'x' WHERE id = 1; UPDATE s SET u = 'a' WHERE id = 2;
                 UPDATE s SET u = 'b' WHERE id = 3; UPDATE s SET u = 'c' WHERE id = 1;
                 UPDATE s SET v = 40 WHERE id = 4; DELETE FROM s WHERE id = 6;
                 INSERT INTO s VALUES (5, 'e', 5);",
            )
            .unwrap()
        },
    );
    let (cs, _) = diff_like_the_reference(&b, &w);
    assert!(cs.tables.iter().all(|t| !t.changes.is_empty()));
    let _ = std::fs::remove_dir_all(dir);
}
