//! Copying a whole database, exactly, from a remote or a local file into a [`Sink`].
//!
//! The order is what makes a copy exact: tables are created first, then every row goes in
//! with its rowid, then `sqlite_sequence` is overwritten with the source's counters, and only
//! then are indexes, views and triggers created, so loading never fires a trigger.
//!
//! Remote rows come in keyset pages over `/v3/pipeline` (a plain `SELECT *` fails once its
//! response passes 10 MB). Large rowid tables are cut into rowid ranges fetched by several
//! threads at once; one writer drains a bounded channel, so memory stays bounded whatever the
//! size of the database.

use std::collections::VecDeque;
use std::sync::mpsc::{sync_channel, Receiver};
use std::sync::Mutex;

use crate::progress::Progress;
use crate::remote::{Remote, RemoteError};
use crate::schema::{self, RowKey, Schema, Table};
use crate::sql;
use crate::value::Value;
use crate::{Context, Error, Result};

/// Where a copy goes: a SQLite file or SQL text.
pub trait Sink {
    /// Runs a `CREATE …` statement exactly as the source's `sqlite_schema` holds it.
    fn create(&mut self, sql: &str) -> Result<()>;
    /// Empties a table that creating another object filled (shadow tables, `sqlite_sequence`).
    fn clear(&mut self, table: &Table) -> Result<()>;
    /// Adds rows laid out as [`Table::data_columns`].
    fn insert(&mut self, table: &Table, rows: &[Vec<Value>]) -> Result<()>;
    /// Sets an integer header pragma (`user_version`, `application_id`).
    fn pragma(&mut self, name: &str, value: i64) -> Result<()>;
}

/// How many rows a copy moved, for the user and the benchmarks.
#[derive(Debug, Default, Clone, Copy)]
pub struct Stats {
    pub tables: usize,
    pub rows: u64,
    pub requests: u64,
}

/// `sqlite_sequence` as a table, so its rows travel like any other.
fn sequence_table() -> Table {
    let col = |name: &str| schema::Column {
        name: name.into(),
        decl_type: String::new(),
        pk: 0,
        generated: false,
        default: None,
    };
    Table {
        name: "sqlite_sequence".into(),
        sql: String::new(),
        columns: vec![col("name"), col("seq")],
        key: RowKey::Rowid {
            ipk: None,
            alias: Some("rowid".into()),
            declared: Vec::new(),
        },
        shadow: true,
    }
}

/// Creates the tables of `schema` in the sink, in source order. Shadow tables are made by their
/// virtual table's `CREATE VIRTUAL TABLE`, and emptied so the source's rows can replace theirs.
fn create_tables(schema: &Schema, sink: &mut dyn Sink) -> Result<()> {
    for t in &schema.tables {
        if !t.shadow {
            sink.create(&t.sql)?;
        }
    }
    for t in schema.tables.iter().filter(|t| t.shadow) {
        sink.clear(t)?;
    }
    if schema.has_sequence {
        // `sqlite_sequence` outlives the AUTOINCREMENT tables that made it, and SQLite lets no
        // one create it by name: a scratch AUTOINCREMENT table, dropped at once, leaves it.
        let taken = |n: &str| schema.tables.iter().any(|t| t.name.eq_ignore_ascii_case(n));
        let mut i = 0;
        let scratch = loop {
            let n = format!("tursync_sequence_maker_{i}");
            if !taken(&n) {
                break n;
            }
            i += 1;
        };
        sink.create(&format!(
            "CREATE TABLE {0}(id INTEGER PRIMARY KEY AUTOINCREMENT); DROP TABLE {0}",
            sql::ident(&scratch)
        ))?;
    }
    Ok(())
}

/// Finishes a copy once every row is in: counters, then indexes, views and triggers, then the
/// header pragmas.
fn create_rest(schema: &Schema, sink: &mut dyn Sink) -> Result<()> {
    for o in &schema.objects {
        sink.create(&o.sql)?;
    }
    sink.pragma("user_version", schema.user_version)?;
    sink.pragma("application_id", schema.application_id)?;
    Ok(())
}

/// The tables whose rows are copied: all but virtual tables, whose data lives in their shadows.
fn data_tables(schema: &Schema) -> impl Iterator<Item = &Table> {
    schema.tables.iter().filter(|t| t.key != RowKey::Virtual)
}

/// Copies the local database `conn` into `sink`, reading every table in key order.
pub fn copy_local(
    conn: &rusqlite::Connection,
    sink: &mut dyn Sink,
    progress: &Progress,
) -> Result<Stats> {
    let db = conn.path().unwrap_or("the database").to_owned();
    let schema = schema::load(conn).during("reading the schema of", &db)?;
    let mut stats = Stats::default();
    create_tables(&schema, sink)?;
    let seq = sequence_table();
    let tables: Vec<&Table> = data_tables(&schema)
        .chain(schema.has_sequence.then_some(&seq))
        .collect();
    for t in tables {
        if t.name == "sqlite_sequence" {
            sink.clear(t)?;
        }
        let q = format!(
            "SELECT {} FROM {} ORDER BY {}",
            t.data_columns()?.join(", "),
            sql::ident(&t.name),
            t.scan_key_exprs()?.join(", ")
        );
        let reading = "reading the rows of table";
        let table = format_args!("{:?} of {db}", t.name);
        let mut st = conn.prepare(&q).during(reading, table)?;
        let n = st.column_count();
        let mut rows = st.query([]).during(reading, table)?;
        let mut batch = Vec::with_capacity(1024);
        while let Some(r) = rows.next().during(reading, table)? {
            batch.push(
                (0..n)
                    .map(|i| r.get::<_, Value>(i))
                    .collect::<rusqlite::Result<Vec<_>>>()
                    .during(reading, table)?,
            );
            if batch.len() == 1024 {
                sink.insert(t, &batch)?;
                progress.advance(batch.len() as u64);
                stats.rows += batch.len() as u64;
                batch.clear();
            }
        }
        sink.insert(t, &batch)?;
        stats.rows += batch.len() as u64;
        stats.tables += 1;
    }
    create_rest(&schema, sink)?;
    Ok(stats)
}

/// Tuning of remote reads.
#[derive(Debug, Clone, Copy)]
pub struct FetchOptions {
    /// HTTP requests in flight at once.
    pub workers: usize,
    /// Aim for responses of about this many bytes: large enough to amortize a round trip, far
    /// enough under the server's 10 MB cap that a page of wider rows still fits.
    pub target_bytes: usize,
    /// Tables with more rows than this are cut into rowid ranges fetched in parallel.
    pub split_rows: u64,
    /// Read the server's replication log into a mirror when it serves one (see
    /// [`crate::mirror`]); otherwise, or when the log fails, rows are read over SQL. On by
    /// default; `TURSYNC_NO_LOG` in the environment turns it off, so the two paths can be
    /// compared on one server, and so does `TURSYNC_PROTOCOL=sql` or `turso-sync`.
    pub use_log: bool,
}

impl Default for FetchOptions {
    fn default() -> Self {
        FetchOptions {
            workers: 4,
            target_bytes: 3 << 20,
            split_rows: 20_000,
            use_log: crate::protocol::log_allowed(),
        }
    }
}

/// A slice of one table to read: rows whose key is after `after` and at most `upto`.
struct Task {
    table: usize,
    after: Option<Vec<Value>>,
    upto: Option<i64>,
}

/// A page of rows of one table, or the error that stopped a worker.
type Page = Result<(usize, Vec<Vec<Value>>, u64)>;

/// Copies the remote database into `sink`. Returns the schema it copied, so callers can keep
/// a record of what was skipped.
pub fn copy_remote(
    remote: &Remote,
    sink: &mut dyn Sink,
    opts: FetchOptions,
    progress: &Progress,
) -> Result<(Schema, Stats)> {
    let schema = schema::load(remote)?;
    let mut stats = Stats {
        requests: 2,
        ..Stats::default()
    };
    create_tables(&schema, sink)?;

    let tables: Vec<&Table> = data_tables(&schema).collect();
    let tasks = plan_tasks(remote, &tables, opts, progress)?;
    stats.requests += 1;
    fetch_into(remote, &tables, tasks, opts, sink, progress, &mut stats)?;

    if schema.has_sequence {
        let seq = sequence_table();
        sink.clear(&seq)?;
        let tasks = VecDeque::from([Task {
            table: 0,
            after: None,
            upto: None,
        }]);
        fetch_into(remote, &[&seq], tasks, opts, sink, progress, &mut stats)?;
    }
    stats.tables = tables.len();
    create_rest(&schema, sink)?;
    Ok((schema, stats))
}

/// Counts rows (for the progress bar) and cuts big rowid tables into ranges, in one request.
fn plan_tasks(
    remote: &Remote,
    tables: &[&Table],
    opts: FetchOptions,
    progress: &Progress,
) -> Result<VecDeque<Task>> {
    let stmts = tables
        .iter()
        .map(|t| {
            let key = t.scan_key_exprs()?;
            let bounds = match t.key {
                RowKey::Rowid { .. } => format!("min({0}), max({0})", key[0]),
                _ => "NULL, NULL".to_owned(),
            };
            Ok(crate::remote::Stmt {
                sql: format!("SELECT count(*), {bounds} FROM {}", sql::ident(&t.name)),
                args: vec![],
                want_rows: true,
            })
        })
        .collect::<Result<Vec<_>>>()?;
    let results = if stmts.is_empty() {
        vec![]
    } else {
        remote.execute_many(stmts)?
    };
    let mut total = 0u64;
    let mut tasks = VecDeque::new();
    for (i, r) in results.into_iter().enumerate() {
        let row = r?.rows.into_iter().next().unwrap_or_default();
        let int = |k: usize| match row.get(k) {
            Some(Value::Integer(v)) => Some(*v),
            _ => None,
        };
        let count = int(0).unwrap_or(0).max(0) as u64;
        total += count;
        let parts = if count > opts.split_rows {
            (count / opts.split_rows).min(opts.workers as u64 * 2) as i128
        } else {
            1
        };
        match (int(1), int(2)) {
            (Some(lo), Some(hi)) if parts > 1 => {
                let span = hi as i128 - lo as i128;
                let mut after = None;
                for p in 1..parts {
                    let cut = (lo as i128 + span * p / parts) as i64;
                    tasks.push_back(Task {
                        table: i,
                        after: after.clone(),
                        upto: Some(cut),
                    });
                    after = Some(vec![Value::Integer(cut)]);
                }
                tasks.push_back(Task {
                    table: i,
                    after,
                    upto: None,
                });
            }
            _ => tasks.push_back(Task {
                table: i,
                after: None,
                upto: None,
            }),
        }
    }
    progress.start("clone", total);
    Ok(tasks)
}

/// Runs the tasks on worker threads and feeds their pages to the sink as they come.
fn fetch_into(
    remote: &Remote,
    tables: &[&Table],
    tasks: VecDeque<Task>,
    opts: FetchOptions,
    sink: &mut dyn Sink,
    progress: &Progress,
    stats: &mut Stats,
) -> Result<()> {
    let queue = Mutex::new(tasks);
    let stop = std::sync::atomic::AtomicBool::new(false);
    std::thread::scope(|s| {
        let (tx, rx) = sync_channel::<Page>(opts.workers * 2);
        for _ in 0..opts.workers {
            let tx = tx.clone();
            let (queue, stop) = (&queue, &stop);
            s.spawn(move || loop {
                if stop.load(std::sync::atomic::Ordering::Relaxed) {
                    return;
                }
                let Some(task) = queue.lock().ok().and_then(|mut q| q.pop_front()) else {
                    return;
                };
                let table = task.table;
                let sent = fetch_task(
                    remote,
                    tables[table],
                    task,
                    opts.target_bytes,
                    &mut |rows, requests| tx.send(Ok((table, rows, requests))).is_ok(),
                );
                if let Err(e) = sent {
                    let _ = tx.send(Err(e));
                    return;
                }
            });
        }
        drop(tx);
        let result = drain(rx, tables, sink, progress, stats);
        if result.is_err() {
            stop.store(true, std::sync::atomic::Ordering::Relaxed);
        }
        result
    })
}

fn drain(
    rx: Receiver<Page>,
    tables: &[&Table],
    sink: &mut dyn Sink,
    progress: &Progress,
    stats: &mut Stats,
) -> Result<()> {
    for page in rx {
        let (table, rows, requests) = page?;
        stats.requests += requests;
        stats.rows += rows.len() as u64;
        progress.advance(rows.len() as u64);
        let t = tables[table];
        sink.insert(t, &rows)
            .during("writing the rows of table", format_args!("{:?}", t.name))?;
    }
    Ok(())
}

/// Reads one task page by page, sizing each page from the bytes per row seen so far, and
/// shrinking it when the server refuses a response as too large.
fn fetch_task(
    remote: &Remote,
    t: &Table,
    task: Task,
    target_bytes: usize,
    emit: &mut dyn FnMut(Vec<Vec<Value>>, u64) -> bool,
) -> Result<()> {
    let data_columns = t.data_columns()?;
    let cols = data_columns.join(", ");
    let exact_cols = sql::exact_select_list(&data_columns);
    let keys = t.scan_key_exprs()?;
    let key_pos = t.scan_key_positions();
    let order = keys.join(", ");
    let key_tuple = if keys.len() == 1 {
        keys[0].clone()
    } else {
        format!("({order})")
    };
    let mut after = task.after;
    let mut limit: usize = 1000;
    loop {
        let mut conds = Vec::new();
        let mut args = Vec::new();
        if let Some(a) = &after {
            let marks: Vec<String> = (1..=a.len()).map(|i| format!("?{i}")).collect();
            let marks = if marks.len() == 1 {
                marks[0].clone()
            } else {
                format!("({})", marks.join(", "))
            };
            conds.push(format!("{key_tuple} > {marks}"));
            args.extend(a.iter().cloned());
        }
        if let Some(u) = task.upto {
            args.push(Value::Integer(u));
            conds.push(format!("{} <= ?{}", keys[0], args.len()));
        }
        args.push(Value::Integer(limit as i64));
        let q = |select: &str| {
            format!(
                "SELECT {select} FROM {}{}{} ORDER BY {order} LIMIT ?{}",
                sql::ident(&t.name),
                if conds.is_empty() { "" } else { " WHERE " },
                conds.join(" AND "),
                args.len()
            )
        };
        // The plain read costs nothing extra; only a page the server cannot encode is read
        // again, exactly.
        let page = match remote.query(&q(&cols), args.clone()) {
            Err(e) if e.is_unencodable_value() => remote
                .query(&q(&exact_cols), args)
                .and_then(|r| r.exact_rows()),
            other => other.map(|r| r.rows),
        };
        let rows = match page {
            Ok(rows) => rows,
            Err(RemoteError::ResponseTooLarge) if limit > 1 => {
                limit = (limit / 4).max(1);
                continue;
            }
            Err(e) => return Err(Error::from(e)),
        };
        let n = rows.len();
        if n == 0 {
            return Ok(());
        }
        let last = &rows[n - 1];
        let key: Option<Vec<Value>> = key_pos.iter().map(|&p| last.get(p).cloned()).collect();
        after = Some(key.ok_or_else(|| {
            Error::Remote(RemoteError::Protocol(format!(
                "a row of {:?} came back with fewer columns than asked for",
                t.name
            )))
        })?);
        let approx_bytes: usize = rows
            .iter()
            .flatten()
            .map(crate::remote::proto::json_size)
            .sum::<usize>()
            + n * 16;
        let per_row = (approx_bytes / n).max(1);
        if !emit(rows, 1) {
            return Ok(());
        }
        if n < limit {
            return Ok(());
        }
        limit = (target_bytes / per_row).clamp(1, 100_000);
    }
}
