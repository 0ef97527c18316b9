//! A cheap random comparison of the mirror with the remote, made on every pull that advanced the
//! mirror through the log, before the merge reads anything from it.
//!
//! The mirror ([`crate::mirror`]) is trusted page for page: a pull reads theirs from it, and the
//! base then takes what it read. Nothing but `tursync verify` would notice a mirror that no
//! longer equals the remote (a page damaged on disk, a file written behind our back, a bug in
//! applying frames), and every later pull would carry the damage into the working copy and,
//! through a push, back to the remote. So each advance is followed by a spot check:
//!
//! * up to [`TABLES`] data tables of the mirror's schema, chosen at random (all of them when
//!   there are no more), and in each a run of up to [`ROWS`] rows in key order, from a random
//!   key: a random rowid between the mirror's smallest and the start of its last full run (so a
//!   run is always full, and a table of at most [`ROWS`] rows is read whole), or for a WITHOUT
//!   ROWID table a random one of the mirror's first [`KEYS_SEEN`] keys;
//! * the same statements run on the remote in one request, and on the mirror; the rows must be
//!   equal value for value ([`Value`]'s equality: storage class and bytes). TEXT that is not
//!   UTF-8 and infinite REALs, which the server cannot put in its answer, are read again with
//!   [`sql::exact_select_list`], as a clone reads them.
//!
//! The remote is read as it is now, the mirror as it is at its frame: the comparison counts only
//! when every answer carries that frame as its replication index. Otherwise (someone wrote
//! meanwhile), or when a run is too large for one answer, the check is inconclusive and the
//! pull goes on; the next advance checks again.
//!
//! ```text
//! mirror at frame 1234; tables t (rowids 1..=5000) and w (WITHOUT ROWID, 30 rows)
//! rowid 2811 drawn for t:  SELECT "id", "v" FROM "t" WHERE "id" >= ? ORDER BY "id" LIMIT ?   [2811, 64]
//! w fits in one run:       SELECT "k", "v" FROM "w" ORDER BY "k" LIMIT ?                       [64]
//! remote answers at index 1234; the mirror holds (2828, 'x'), the remote (2828, 'y')
//!   -> Differed: the mirror differed from the remote at frame 1234 (table "t", id 2828)
//! ```
//!
//! A pull told so does not use the mirror: it removes it, reads the remote over SQL this once,
//! and the next pull builds the mirror again from the log.

use std::fmt;

use rusqlite::{Connection, OptionalExtension};

use crate::remote::{Remote, RemoteError, Stmt, StmtResult};
use crate::schema::{self, RowKey, Table};
use crate::sql;
use crate::value::Value;
use crate::{Context, Result};

/// At most this many tables are sampled per check.
pub const TABLES: usize = 8;
/// At most this many rows are read from each sampled table.
pub const ROWS: usize = 64;
/// A WITHOUT ROWID table's run starts at one of its first this many keys: counting further
/// would cost a scan of the whole table.
pub const KEYS_SEEN: usize = 4096;

/// What a spot check found.
#[derive(Debug, Clone, PartialEq)]
pub enum SpotCheck {
    /// Every sampled row is the same on both sides.
    Agreed { tables: usize, rows: usize },
    /// The remote could not be read as it is at the mirror's frame, for this reason.
    Inconclusive(String),
    /// The mirror holds a row the remote does not, or lacks one, or holds other values.
    Differed(Difference),
}

/// The first row found that differs between the mirror and the remote.
#[derive(Debug, Clone, PartialEq)]
pub struct Difference {
    /// The mirror's frame (the remote's replication index when it was read).
    pub frame: u64,
    pub table: String,
    /// The row's identifying key ([`Table::key_positions`]): names and values.
    pub key: Vec<(String, Value)>,
}

impl fmt::Display for Difference {
    /// `the mirror differed from the remote at frame 1234 (table "t", id 17)`
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "the mirror differed from the remote at frame {} (table {:?}",
            self.frame, self.table
        )?;
        for (name, value) in &self.key {
            write!(f, ", {name} {}", sql::literal(value))?;
        }
        f.write_str(")")
    }
}

/// Compares a random sample of the mirror (`mirror`, opened with
/// [`crate::mirror::open_immutable`], at `frame`) with the remote, in one request.
pub fn spot_check(mirror: &Connection, remote: &Remote, frame: u64) -> Result<SpotCheck> {
    spot_check_with(mirror, remote, frame, &mut Rng::seeded())
}

fn spot_check_with(
    mirror: &Connection,
    remote: &Remote,
    frame: u64,
    rng: &mut Rng,
) -> Result<SpotCheck> {
    let samples = plan(mirror, rng)?;
    if samples.is_empty() {
        return Ok(SpotCheck::Agreed { tables: 0, rows: 0 });
    }
    let stmts = |exact: bool| {
        samples
            .iter()
            .map(|s| Stmt {
                sql: s.query(exact),
                args: s.args(),
                want_rows: true,
            })
            .collect::<Vec<_>>()
    };
    let exact = |r: StmtResult| -> Result<StmtResult, RemoteError> {
        let replication_index = r.replication_index.clone();
        Ok(StmtResult {
            rows: r.exact_rows()?,
            replication_index,
            ..StmtResult::default()
        })
    };
    let answers = match remote.execute_many(stmts(false)) {
        Err(e) if e.is_unencodable_value() => remote
            .execute_many(stmts(true))
            .map(|results| results.into_iter().map(|r| r.and_then(exact)).collect()),
        other => other,
    };
    let answers = match answers {
        Ok(answers) => answers,
        Err(RemoteError::ResponseTooLarge) => {
            return Ok(SpotCheck::Inconclusive(
                "the sample was too large for one answer".into(),
            ))
        }
        Err(e) => return Err(e).during("spot-checking the mirror against", "the remote"),
    };
    if answers.len() != samples.len() {
        return Err(RemoteError::Protocol(format!(
            "{} answers to {} statements",
            answers.len(),
            samples.len()
        )))
        .during("spot-checking the mirror against", "the remote");
    }

    let (mut tables, mut rows) = (0, 0);
    for (s, answer) in samples.iter().zip(answers) {
        let theirs = match answer {
            Ok(r) => {
                let index = r.replication_index();
                if index != Some(frame) {
                    return Ok(SpotCheck::Inconclusive(format!(
                        "the remote answered at replication index {index:?}, the mirror is at frame {frame}"
                    )));
                }
                r.rows
            }
            // Too large for one answer, or refused (a statement sqld cannot run, say): this
            // table is not compared this time.
            Err(RemoteError::ResponseTooLarge | RemoteError::Sql { .. }) => continue,
            Err(e) => {
                return Err(e).during("spot-checking table", format_args!("{:?}", s.table.name))
            }
        };
        let ours = s.read(mirror).during(
            "reading the mirror's table",
            format_args!("{:?}", s.table.name),
        )?;
        if let Some(row) = s.first_difference(&ours, &theirs) {
            let names = s.table.data_names()?;
            let key = s
                .table
                .key_positions()
                .into_iter()
                .map(|p| {
                    (
                        names.get(p).cloned().unwrap_or_default(),
                        row.get(p).cloned().unwrap_or(Value::Null),
                    )
                })
                .collect();
            return Ok(SpotCheck::Differed(Difference {
                frame,
                table: s.table.name.clone(),
                key,
            }));
        }
        tables += 1;
        rows += theirs.len();
    }
    Ok(SpotCheck::Agreed { tables, rows })
}

/// One run of one table to compare.
struct Sample {
    table: Table,
    /// The data columns ([`Table::data_columns`]) and the B-tree's key, quoted.
    columns: Vec<String>,
    key: Vec<String>,
    /// Where the run starts; `None` from the first row.
    start: Option<Vec<Value>>,
}

impl Sample {
    fn query(&self, exact: bool) -> String {
        let columns = if exact {
            sql::exact_select_list(&self.columns)
        } else {
            self.columns.join(", ")
        };
        sql::select_run(&self.table.name, &columns, &self.key, self.start.is_some())
    }

    fn args(&self) -> Vec<Value> {
        let mut args = self.start.clone().unwrap_or_default();
        args.push(Value::Integer(ROWS as i64));
        args
    }

    fn read(&self, mirror: &Connection) -> rusqlite::Result<Vec<Vec<Value>>> {
        let mut st = mirror.prepare(&self.query(false))?;
        let n = st.column_count();
        let rows = st.query_map(rusqlite::params_from_iter(self.args()), |r| {
            (0..n).map(|i| r.get::<_, Value>(i)).collect()
        })?;
        rows.collect()
    }

    /// The first row, in key order, that one side holds and the other does not hold the same:
    /// the mirror's where both hold the key, else the one that comes first (the remote's when
    /// the keys cannot be ordered here).
    fn first_difference<'r>(
        &self,
        ours: &'r [Vec<Value>],
        theirs: &'r [Vec<Value>],
    ) -> Option<&'r Vec<Value>> {
        let positions = self.table.scan_key_positions();
        let key = |row: &Vec<Value>| -> Vec<Value> {
            positions
                .iter()
                .map(|&p| row.get(p).cloned().unwrap_or(Value::Null))
                .collect()
        };
        for i in 0..ours.len().max(theirs.len()) {
            match (ours.get(i), theirs.get(i)) {
                (Some(a), Some(b)) if a == b => {}
                (Some(a), Some(b)) => {
                    let (ka, kb) = (key(a), key(b));
                    return Some(match (ka.as_slice(), kb.as_slice()) {
                        _ if ka == kb => a,
                        ([Value::Integer(x)], [Value::Integer(y)]) if x < y => a,
                        _ => b,
                    });
                }
                (a, b) => return a.or(b),
            }
        }
        None
    }
}

/// Chooses the tables and where each run starts, from the mirror alone.
fn plan(mirror: &Connection, rng: &mut Rng) -> Result<Vec<Sample>> {
    let schema = schema::load(mirror).during("reading the schema of", "the mirror")?;
    let mut tables: Vec<Table> = schema
        .tables
        .into_iter()
        .filter(|t| t.key != RowKey::Virtual)
        .collect();
    let picked = tables.len().min(TABLES);
    for i in 0..picked {
        let j = i + rng.below((tables.len() - i) as u64) as usize;
        tables.swap(i, j);
    }
    tables.truncate(picked);
    let mut samples = Vec::with_capacity(picked);
    for table in tables {
        // A table whose rowid no name reaches cannot be read by key: not sampled.
        let (Ok(columns), Ok(key)) = (table.data_columns(), table.scan_key_exprs()) else {
            continue;
        };
        let start = start_key(mirror, &table, &key, rng).during(
            "choosing where to spot-check table",
            format_args!("{:?}", table.name),
        )?;
        samples.push(Sample {
            table,
            columns,
            key,
            start,
        });
    }
    Ok(samples)
}

/// Where a table's run starts: `None` (the first row) when the table holds at most [`ROWS`]
/// rows, else a random key no later than the start of its last full run.
fn start_key(
    mirror: &Connection,
    t: &Table,
    key: &[String],
    rng: &mut Rng,
) -> rusqlite::Result<Option<Vec<Value>>> {
    let name = sql::ident(&t.name);
    let order = key.join(", ");
    let read_key = |r: &rusqlite::Row<'_>| (0..key.len()).map(|i| r.get::<_, Value>(i)).collect();
    let desc: Vec<String> = key.iter().map(|k| format!("{k} DESC")).collect();
    let last_full: Option<Vec<Value>> = mirror
        .query_row(
            &format!(
                "SELECT {order} FROM {name} ORDER BY {} LIMIT 1 OFFSET {}",
                desc.join(", "),
                ROWS - 1
            ),
            [],
            read_key,
        )
        .optional()?;
    let Some(last_full) = last_full else {
        return Ok(None);
    };
    if let (RowKey::Rowid { .. }, [Value::Integer(hi)]) = (&t.key, last_full.as_slice()) {
        let lo: Option<i64> =
            mirror.query_row(&format!("SELECT min({order}) FROM {name}"), [], |r| {
                r.get(0)
            })?;
        let lo = lo.unwrap_or(*hi).min(*hi);
        let span = (i128::from(*hi) - i128::from(lo)) as u64;
        let start = lo.wrapping_add(rng.below(span.saturating_add(1)) as i64);
        return Ok(Some(vec![Value::Integer(start)]));
    }
    let seen: i64 = mirror.query_row(
        &format!("SELECT count(*) FROM (SELECT 1 FROM {name} LIMIT {KEYS_SEEN})"),
        [],
        |r| r.get(0),
    )?;
    let starts = (seen.max(0) as u64).saturating_sub(ROWS as u64 - 1).max(1);
    mirror
        .query_row(
            &format!("SELECT {order} FROM {name} ORDER BY {order} LIMIT 1 OFFSET ?"),
            [rng.below(starts) as i64],
            read_key,
        )
        .optional()
}

/// A small xorshift generator, seeded from the same source as the retries' jitter
/// ([`crate::remote::retry`]): the sample must differ from pull to pull, not be unpredictable,
/// so no crate is needed for it; a fixed seed makes the tests repeatable.
struct Rng(u64);

impl Rng {
    fn seeded() -> Rng {
        Rng(crate::remote::retry::random_u64().max(1))
    }

    /// A number below `n` (0 when `n` is 0).
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        if n == 0 {
            0
        } else {
            self.0 % n
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mirror() -> Connection {
        let conn = Connection::open_in_memory().unwrap();
        conn.execute_batch(
            "CREATE TABLE t(id INTEGER PRIMARY KEY, v);
             WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 1000)
             INSERT INTO t SELECT i, i FROM n;
             CREATE TABLE w(a, b, v, PRIMARY KEY(b, a)) WITHOUT ROWID;
             WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 500)
             INSERT INTO w SELECT i % 7, i, i FROM n;
             CREATE TABLE s(k TEXT PRIMARY KEY, v);
             INSERT INTO s VALUES ('x', 1), ('y', 2);",
        )
        .unwrap();
        conn
    }

    /// Every run is full, starts inside the table, and a small table is read whole.
    #[test]
    fn runs_are_full_and_small_tables_whole() {
        let conn = mirror();
        let mut rng = Rng(42);
        for _ in 0..50 {
            let samples = plan(&conn, &mut rng).unwrap();
            assert_eq!(samples.len(), 3);
            for s in &samples {
                let rows = s.read(&conn).unwrap();
                match s.table.name.as_str() {
                    "s" => {
                        assert_eq!(s.start, None);
                        assert_eq!(rows.len(), 2);
                    }
                    _ => assert_eq!(rows.len(), ROWS, "{}", s.query(false)),
                }
            }
        }
    }

    #[test]
    fn the_first_differing_row_is_named_by_its_key() {
        let conn = mirror();
        let s = plan(&conn, &mut Rng(7))
            .unwrap()
            .into_iter()
            .find(|s| s.table.name == "w")
            .unwrap();
        let ours = s.read(&conn).unwrap();
        let mut theirs = ours.clone();
        theirs[5][2] = Value::text("other");
        assert_eq!(s.first_difference(&ours, &theirs), Some(&ours[5]));
        theirs.truncate(5);
        assert_eq!(s.first_difference(&ours, &theirs), Some(&ours[5]));
        assert_eq!(s.first_difference(&ours, &ours), None);
        let d = Difference {
            frame: 1234,
            table: "t".into(),
            key: vec![("id".into(), Value::Integer(17))],
        };
        assert_eq!(
            d.to_string(),
            "the mirror differed from the remote at frame 1234 (table \"t\", id 17)"
        );
    }
}
