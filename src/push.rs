//! Sending the local changeset to the remote: all or nothing, and never over someone else's
//! change.
//!
//! One push is one remote transaction, run as one guarded batch ([`Remote::batch_stream`]) on
//! every server, in two requests:
//!
//! 1. One request reads what the push decides from: the remote's schema (`sqlite_schema`), its
//!    AUTOINCREMENT counters, its orphans, and every row the push touches, read by key as they
//!    are if the remote's schema is the base's (it is unless someone changed it since the last
//!    sync; otherwise they are read again once the schema is known).
//! 2. Each touched row must be in the base state (apply it) or already in the local state (skip
//!    it: a re-run after a crash converges). Anything else is a conflict: report, exit 3,
//!    nothing changed anywhere.
//! 3. The changes go out in the second request as multi-row statements — `DELETE … WHERE key IN
//!    (…)`, `UPDATE … FROM (VALUES …)`, multi-row `INSERT` — with every trigger dropped first
//!    and re-created last (DDL is transactional), so no remote trigger fires a second time. The
//!    batch sets `PRAGMA foreign_keys = OFF` (the changeset already holds what cascades did
//!    locally), runs `BEGIN IMMEDIATE`, every read of step 1 again as a guard that fails unless
//!    it returns the same rows, each write followed by a check of the rows it changed, a check
//!    that the push left no new orphan, and `COMMIT` only if every step succeeded. A guard that
//!    fails is a race: the transaction runs again from step 1. An orphan check that fails costs
//!    a second run, which reads the orphans to report them.
//! 4. The base snapshot then moves by exactly the changeset pushed, which was read from one
//!    consistent snapshot of the working copy: edits the app made meanwhile stay pending.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::changeset::{Changeset, DdlPhase, RowChange, SchemaChange, TableDiff};
use crate::conflict::{Conflict, ConflictKind, Outcome};
use crate::progress::Progress;
use crate::remote::{Remote, RemoteError, Stmt, StmtResult, Stream, StreamRequest};
use crate::schema::{
    foreign_key_scope, foreign_keys, parse_unique_failure, ObjectKind, Orphan, RowKey, SchemaError,
    UniqueFailure,
};
use crate::sql;
use crate::value::Value;
use crate::workspace::Workspace;
use crate::{Context, Error, Result};

/// Rows per multi-row statement: large enough to amortize parsing, small enough to stay far
/// under SQLite's 32766 bound parameters.
const ROWS_PER_STMT: usize = 1000;
const MAX_PARAMS: usize = 16_000;
/// Bytes of row data per HTTP request, keeping responses (for reads) under sqld's 10 MB cap.
const BYTES_PER_REQUEST: usize = 4 << 20;

#[derive(Debug, Clone, Copy)]
pub struct PushOptions {
    /// Row changes per remote transaction. sqld rolls back a transaction that holds the write
    /// lock for over 5 s once another connection waits, so very large pushes are cut into
    /// several transactions (see [`PushReport::transactions`]).
    pub rows_per_transaction: usize,
}

impl Default for PushOptions {
    fn default() -> Self {
        PushOptions {
            rows_per_transaction: 200_000,
        }
    }
}

/// What a push did. In JSON (`push --json`), each field under its own name but `log`, which
/// the caller words.
#[derive(Debug, Default, Clone, Serialize)]
pub struct PushReport {
    pub changes: usize,
    /// Row changes sent.
    pub applied: usize,
    /// Row changes the remote already had (a re-run after a crash).
    pub skipped: usize,
    pub requests: u64,
    pub transactions: usize,
    /// Where the SQL of this push was kept.
    #[serde(skip)]
    pub log: Option<PathBuf>,
    /// Our schema changes sent, each as `diff --json` shows it.
    pub schema: Vec<serde_json::Value>,
}

fn row_bytes(row: &[Value]) -> usize {
    row.iter().map(crate::remote::proto::json_size).sum()
}

/// The key values of `rows`, row after row: the arguments of [`sql::key_in`] and its kin.
fn key_args(t: &TableDiff, rows: &[&[Value]]) -> Vec<Value> {
    rows.iter()
        .flat_map(|r| t.key.iter().map(|&k| r[k].clone()))
        .collect()
}

fn stmt(sql: String, args: Vec<Value>, want_rows: bool) -> Stmt {
    Stmt {
        sql,
        args,
        want_rows,
    }
}

/// Cuts `rows` into statements of at most [`ROWS_PER_STMT`] rows and [`MAX_PARAMS`] values.
fn chunks<T>(rows: &[T], width: usize) -> impl Iterator<Item = &[T]> {
    let per = (MAX_PARAMS / width.max(1)).clamp(1, ROWS_PER_STMT);
    rows.chunks(per)
}

/// What one transaction did: the AUTOINCREMENT counters it wrote and the remote's replication
/// index just before its writes and just after its commit.
struct Committed {
    sequences: Vec<(String, Option<i64>)>,
    index_before: Option<u64>,
    index_after: Option<u64>,
}

/// The plan for one table within one transaction.
struct TablePlan<'a> {
    diff: &'a TableDiff,
    changes: &'a [RowChange],
}

/// A statement that changes the remote, with the number of row changes it carries: the rows
/// it must affect, or 0 for DDL and counters, whose effect is not counted.
#[derive(Debug)]
struct Write {
    stmt: Stmt,
    rows: usize,
}

impl Write {
    /// A write of `rows` row changes, which it must affect exactly.
    fn rows(sql: String, args: Vec<Value>, rows: usize) -> Write {
        Write {
            stmt: stmt(sql, args, false),
            rows,
        }
    }

    fn ddl(sql: impl Into<String>) -> Write {
        Write::uncounted(sql, vec![])
    }

    /// A statement whose effect is not counted.
    fn uncounted(sql: impl Into<String>, args: Vec<Value>) -> Write {
        Write {
            stmt: stmt(sql.into(), args, false),
            rows: 0,
        }
    }
}

impl TablePlan<'_> {
    fn is_virtual(&self) -> bool {
        self.diff.table.key == RowKey::Virtual
    }

    /// SELECTs returning the remote's current version of every row this plan touches, with
    /// `cols` as the select list (in row layout), and the bytes each is expected to return.
    fn reads(&self, source: &Source) -> Vec<(Stmt, usize)> {
        // Always the exact select list: a value the server cannot encode would fail the whole
        // request, and with it the stream and its transaction.
        let cols = sql::exact_select_list(&source.cols);
        let keys: Vec<&str> = source.keys.iter().map(String::as_str).collect();
        let t = self.diff;
        let rows: Vec<&[Value]> = self.changes.iter().map(|c| c.row()).collect();
        let mut out = Vec::new();
        let mut start = 0;
        while start < rows.len() {
            let mut end = start;
            // `worst` bounds one statement's response (should every row be there already);
            // `bytes` is what is expected back (new rows are expected absent), which sizes
            // the requests.
            let (mut worst, mut bytes) = (0, 0);
            while end < rows.len() && end - start < ROWS_PER_STMT && worst < BYTES_PER_REQUEST / 2 {
                worst += row_bytes(rows[end]);
                bytes += match self.changes[end] {
                    RowChange::Insert(_) => 16,
                    _ => row_bytes(rows[end]),
                };
                end += 1;
            }
            let q = format!(
                "SELECT {cols} FROM {} WHERE {}",
                sql::ident(&source.table),
                sql::key_in(&keys, end - start)
            );
            out.push((stmt(q, key_args(t, &rows[start..end]), true), bytes));
            start = end;
        }
        out
    }

    /// The statements that apply `todo` (the changes still needed), in the order that passes
    /// no transient UNIQUE violation ([`TableDiff::phases`]).
    fn writes(&self, todo: &[&RowChange]) -> Vec<Write> {
        let (deletes, updates, inserts) = self.diff.phases(todo.iter().copied());
        let updates: Vec<&[Value]> = updates.into_iter().map(RowChange::row).collect();
        let mut out = self.deletes(&deletes);
        out.extend(self.updates(&updates));
        out.extend(self.inserts(&inserts));
        out
    }

    /// `DELETE … WHERE key IN (…)`.
    fn deletes(&self, rows: &[&[Value]]) -> Vec<Write> {
        let t = self.diff;
        let width = if self.is_virtual() {
            usize::MAX
        } else {
            t.key.len()
        };
        chunks(rows, width)
            .map(|part| {
                Write::rows(
                    sql::delete_many(&t.table.name, &t.key_names(), part.len()),
                    key_args(t, part),
                    part.len(),
                )
            })
            .collect()
    }

    /// `UPDATE … FROM (VALUES …)` setting every column but the key (and a locator, which is no
    /// data); virtual tables, which cannot take UPDATE … FROM, one row at a time.
    fn updates(&self, rows: &[&[Value]]) -> Vec<Write> {
        let t = self.diff;
        let locator = t.table.locator();
        let set_cols: Vec<usize> = (0..t.columns.len())
            .filter(|i| !t.key.contains(i) && Some(*i) != locator)
            .collect();
        if set_cols.is_empty() {
            return Vec::new();
        }
        let set: Vec<&String> = set_cols.iter().map(|&c| &t.columns[c]).collect();
        let key = t.key_names();
        if self.is_virtual() {
            let q = sql::update(&t.table.name, &set, &key);
            return rows
                .iter()
                .map(|row| {
                    let args = set_cols.iter().chain(&t.key).map(|&c| row[c].clone());
                    Write::rows(q.clone(), args.collect(), 1)
                })
                .collect();
        }
        chunks(rows, key.len() + set.len())
            .map(|part| {
                let args = part
                    .iter()
                    .flat_map(|row| t.key.iter().chain(&set_cols).map(|&c| row[c].clone()))
                    .collect();
                Write::rows(
                    sql::update_many(&t.table.name, &set, &key, part.len()),
                    args,
                    part.len(),
                )
            })
            .collect()
    }

    /// Multi-row `INSERT OR ABORT`, naming every data column (the rowid included).
    fn inserts(&self, rows: &[&[Value]]) -> Vec<Write> {
        let t = self.diff;
        chunks(rows, t.columns.len())
            .map(|part| {
                Write::rows(
                    sql::insert(&t.table.name, &t.columns, part.len()),
                    part.iter().flat_map(|r| r.iter().cloned()).collect(),
                    part.len(),
                )
            })
            .collect()
    }
}

/// The select list that reads a table's rows on the remote in the changeset's row layout, or
/// `None` when the remote cannot hold any of its rows yet: the table is missing, or it is to be
/// rebuilt (dropped and re-created, rows and all). A table still lacking columns that
/// `ADD COLUMN` appended reads their defaults instead, as its rows will after the ALTER.
/// Where and how a table's rows are read on the remote: the table, the select list, and the
/// key columns' names there.
struct Source {
    table: String,
    cols: Vec<String>,
    keys: Vec<String>,
}

/// The remote's rows of `t` are read from: the table as we have it, or, for a table migrated
/// here (rebuilt, renamed) whose remote table is still in the base's form, that old table, as
/// the rebuild will carry its rows. `None`: the remote has no rows of it to compare. An error
/// when the remote's definition is one the changeset does not know.
fn remote_source(cs: &Changeset, t: &TableDiff, remote: &RemoteState) -> Result<Option<Source>> {
    let same = |cols: Vec<String>| Source {
        table: t.table.name.clone(),
        cols,
        keys: t.key_names().iter().map(|k| k.to_string()).collect(),
    };
    // A table migrated here whose remote table is still in the base's form: its rows are
    // read from the old table as the rebuild will carry them.
    for ch in &cs.schema {
        if let SchemaChange::TableRebuilt {
            name,
            old_name,
            old_sql,
            columns,
            ..
        } = ch
        {
            if name != &t.table.name
                || remote.sql_of("table", old_name) != Some(old_sql.as_str())
                || (old_name != name && remote.sql_of("table", name).is_some())
            {
                continue;
            }
            let Some(map) = columns.as_ref() else {
                return Ok(None);
            };
            let Some(keys) = t
                .key
                .iter()
                .map(|&k| map.get(k).and_then(|(_, o)| o.clone()))
                .collect::<Option<Vec<String>>>()
            else {
                return Ok(None);
            };
            return Ok(Some(Source {
                table: old_name.clone(),
                cols: crate::migration::carried_select(&t.table, map),
                keys,
            }));
        }
    }
    let Some(remote_sql) = remote.sql_of("table", &t.table.name) else {
        return Ok(None);
    };
    let plain = || t.columns.iter().map(|c| sql::ident(c)).collect::<Vec<_>>();
    if remote_sql == t.table.sql {
        return Ok(Some(same(plain())));
    }
    for ch in &cs.schema {
        match ch {
            SchemaChange::TableRebuilt { name, .. } if name == &t.table.name => return Ok(None),
            SchemaChange::ColumnsAdded {
                table,
                columns,
                old_sql,
            } if table == &t.table.name && remote_sql == old_sql => {
                let all = &t.table.columns;
                let appended: Vec<_> = all[all.len().saturating_sub(columns.len())..]
                    .iter()
                    .filter(|c| !c.generated)
                    .collect();
                let old_count = t.columns.len().saturating_sub(appended.len());
                let mut cols: Vec<String> = t.columns[..old_count]
                    .iter()
                    .map(|c| sql::ident(c))
                    .collect();
                cols.extend(
                    appended
                        .iter()
                        .map(|c| c.default.clone().unwrap_or_else(|| "NULL".into())),
                );
                return Ok(Some(same(cols)));
            }
            _ => {}
        }
    }
    // Only a definition that differs from ours by references to a table renamed here (the
    // rename rewrites them) has our columns; any other is someone else's change, which
    // [`plan_schema`] reports as a conflict before rows are read. Never read by a column name
    // the remote's table may lack: sqld takes a double-quoted name that is no column for a
    // string, and the row would seem to hold the column's name.
    let renames = cs.renamed_tables();
    if crate::changeset::with_renamed_references(remote_sql, &renames) == t.table.sql {
        return Ok(Some(same(plain())));
    }
    Err(Error::Unexpected(format!(
        "table {:?} on the remote is defined as {remote_sql:?}, which is neither the base's nor the working copy's \
         definition, so its rows cannot be compared with ours; nothing was pushed. Run `tursync pull` to bring the remote's change in, then push again",
        t.table.name
    )))
}

/// Classifies each change against the remote row: needed (the remote holds the base row),
/// already there (it holds ours: a re-run converges), or a conflict. Returns the changes still
/// needed, table by table, or every conflict.
fn classify<'a>(
    group: &[TablePlan<'a>],
    found: &[HashMap<String, Vec<Value>>],
    skipped: &mut usize,
) -> Result<Vec<Vec<&'a RowChange>>, Vec<Conflict>> {
    let mut conflicts = Vec::new();
    let mut todo = Vec::with_capacity(group.len());
    for (plan, remote_rows) in group.iter().zip(found) {
        let t = plan.diff;
        // A locator is no data: the remote may hold the row at another hidden rowid.
        let same = |a: Option<&Vec<Value>>, b: Option<&Vec<Value>>| match (a, b) {
            (Some(a), Some(b)) => (0..a.len())
                .filter(|&i| Some(i) != t.table.locator())
                .all(|i| a[i] == b[i]),
            (a, b) => a.is_none() && b.is_none(),
        };
        let mut needed = Vec::new();
        for ch in plan.changes {
            let remote = remote_rows.get(&t.key_text(ch.row()));
            let (base, local): (Option<&Vec<Value>>, Option<&Vec<Value>>) = match ch {
                RowChange::Insert(r) => (None, Some(r)),
                RowChange::Delete(r) => (Some(r), None),
                RowChange::Update { old, new } => (Some(old), Some(new)),
            };
            if same(remote, base) {
                needed.push(ch);
            } else if same(remote, local) {
                *skipped += 1;
            } else {
                let key = t.key.iter().map(|&k| ch.row()[k].clone()).collect();
                conflicts.push(Conflict {
                    columns: t.columns.clone(),
                    base: base.cloned(),
                    ours: local.cloned(),
                    theirs: remote.cloned(),
                    ..Conflict::new(&t.table.name, ConflictKind::Row, key)
                });
            }
        }
        todo.push(needed);
    }
    if conflicts.is_empty() {
        Ok(todo)
    } else {
        Err(conflicts)
    }
}

/// The reads of the rows of `tables` on the remote whose foreign keys point at nothing, as
/// (table, rowid, parent, fkid).
fn orphan_reads(tables: &std::collections::BTreeSet<String>) -> Vec<Stmt> {
    tables
        .iter()
        .map(|t| stmt(crate::schema::orphans_sql(t), vec![], true))
        .collect()
}

/// The orphans [`orphan_reads`] returned.
fn orphans_found(
    results: impl IntoIterator<Item = StmtResult>,
) -> Result<std::collections::BTreeSet<Orphan>> {
    let mut out = std::collections::BTreeSet::new();
    let text = crate::schema::text;
    for res in results {
        for row in res.rows {
            let [t, rowid, p, Value::Integer(fkid)] = &row[..] else {
                return Err(Error::Unexpected(format!(
                    "unexpected foreign_key_check row from the remote: {row:?}"
                )));
            };
            let rowid = match rowid {
                Value::Integer(r) => Some(*r),
                _ => None,
            };
            out.insert((
                text(t, "foreign_key_check table")?,
                rowid,
                text(p, "foreign_key_check parent")?,
                *fkid,
            ));
        }
    }
    Ok(out)
}

/// An orphan as the row [`orphan_reads`] returns for it.
fn orphan_row((table, rowid, parent, fkid): &Orphan) -> Vec<Value> {
    vec![
        Value::text(table),
        rowid.map_or(Value::Null, Value::Integer),
        Value::text(parent),
        Value::Integer(*fkid),
    ]
}

/// When a push broke a UNIQUE constraint on the remote (`message` is SQLite's, e.g. `UNIQUE
/// constraint failed: users.email`), the conflicts: each row of ours in that table whose
/// values under the constraint another remote row holds, with that row. Read after the
/// push's transaction was rolled back, so the remote is as the push found it. `None` when the
/// message names no constraint whose rows can be matched (an index on expressions).
fn unique_conflicts(
    remote: &Remote,
    cs: &Changeset,
    message: &str,
) -> Result<Option<Vec<Conflict>>> {
    let Some(UniqueFailure::Columns { table, columns }) = parse_unique_failure(message) else {
        return Ok(None);
    };
    let constraint = format!(
        "UNIQUE constraint failed: {}",
        columns
            .iter()
            .map(|c| format!("{table}.{c}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    let Some(t) = cs.tables.iter().find(|t| t.table.name == table) else {
        return Ok(None);
    };
    let Some(cols): Option<Vec<usize>> = columns
        .iter()
        .map(|c| t.columns.iter().position(|n| n == c))
        .collect()
    else {
        return Ok(None);
    };
    let ours: Vec<&[Value]> = t
        .changes
        .iter()
        .filter(|c| !matches!(c, RowChange::Delete(_)))
        .map(RowChange::row)
        .collect();
    let list = t.table.data_columns()?;
    let mut conflicts = Vec::new();
    for row in ours {
        // UNIQUE never holds NULLs equal: a row with a NULL there collides with nothing.
        if cols.iter().any(|&c| row[c] == Value::Null) {
            continue;
        }
        let same: Vec<String> = cols
            .iter()
            .map(|&c| format!("{} = {}", sql::ident(&t.columns[c]), sql::literal(&row[c])))
            .collect();
        let key: Vec<String> = t
            .key
            .iter()
            .map(|&k| format!("{} IS {}", sql::ident(&t.columns[k]), sql::literal(&row[k])))
            .collect();
        let q = format!(
            "SELECT {} FROM {} WHERE {} AND NOT ({}) LIMIT 1",
            sql::exact_select_list(&list),
            sql::ident(table),
            same.join(" AND "),
            key.join(" AND ")
        );
        if let Some(holder) = remote.query(&q, vec![])?.exact_rows()?.into_iter().next() {
            let key = t.key.iter().map(|&k| row[k].clone()).collect();
            conflicts.push(Conflict {
                columns: t.columns.clone(),
                ours: Some(row.to_vec()),
                theirs: Some(holder),
                constraint: Some(constraint.clone()),
                ..Conflict::new(table, ConflictKind::Unique, key)
            });
        }
    }
    Ok((!conflicts.is_empty()).then_some(conflicts))
}

/// The SQL text of the remote's tables, indexes, views and triggers, which is all of its schema
/// a push compares (read with [`SCHEMA_SQL`]). The same objects as [`crate::schema::load`]
/// lists: no internal tables, no automatic indexes.
#[derive(Debug, Default)]
struct SchemaTexts {
    /// (type, name, SQL)
    objects: Vec<(String, String, String)>,
    has_sequence: bool,
}

const SCHEMA_SQL: &str = "SELECT type, name, tbl_name, sql FROM sqlite_schema ORDER BY rowid";

impl SchemaTexts {
    fn from_rows(rows: Vec<Vec<Value>>) -> Result<SchemaTexts> {
        let mut out = SchemaTexts::default();
        for row in rows {
            let [ty, name, tbl, sqltext] = &row[..] else {
                return Err(SchemaError::Malformed(format!("sqlite_schema row {row:?}")).into());
            };
            let name = crate::schema::text(name, "sqlite_schema.name")?;
            if name.eq_ignore_ascii_case("sqlite_sequence") {
                out.has_sequence = true;
                continue;
            }
            let tbl = crate::schema::text(tbl, "sqlite_schema.tbl_name")?;
            let Value::Text(_) = sqltext else { continue };
            if crate::schema::is_internal(&name) || crate::schema::is_internal(&tbl) {
                continue;
            }
            out.objects.push((
                crate::schema::text(ty, "sqlite_schema.type")?,
                name,
                crate::schema::text(sqltext, "sqlite_schema.sql")?,
            ));
        }
        Ok(out)
    }

    /// A local database's (the base's: what the remote holds unless someone changed it).
    fn read_local(conn: &rusqlite::Connection) -> Result<SchemaTexts> {
        let mut q = conn.prepare(SCHEMA_SQL)?;
        let rows = q
            .query_map([], |r| (0..4).map(|i| r.get::<_, Value>(i)).collect())?
            .collect::<rusqlite::Result<Vec<Vec<Value>>>>()?;
        SchemaTexts::from_rows(rows)
    }
}

/// The remote as a push transaction finds it: the SQL text of its schema and its AUTOINCREMENT
/// counters.
struct RemoteState {
    schema: SchemaTexts,
    sequences: HashMap<String, i64>,
}

impl RemoteState {
    /// The SQL text of the remote's `ty` ("table", "index", "view", "trigger") named `name`.
    fn sql_of(&self, ty: &str, name: &str) -> Option<&str> {
        self.schema
            .objects
            .iter()
            .find(|(t, n, _)| t == ty && n == name)
            .map(|(_, _, sql)| sql.as_str())
    }

    /// The remote's triggers, as (name, SQL).
    fn triggers(&self) -> Vec<(String, String)> {
        self.schema
            .objects
            .iter()
            .filter(|(t, ..)| t == ObjectKind::Trigger.as_str())
            .map(|(_, name, sql)| (name.clone(), sql.clone()))
            .collect()
    }
}

/// The counters `SELECT name, seq FROM sqlite_sequence` returned.
fn sequences_found(rows: Vec<Vec<Value>>) -> Result<HashMap<String, i64>> {
    let mut out = HashMap::new();
    for r in rows {
        match r.as_slice() {
            [name, Value::Integer(v)] => {
                out.insert(
                    crate::schema::text(name, "remote sqlite_sequence.name")?,
                    *v,
                );
            }
            _ => {
                return Err(
                    SchemaError::Malformed(format!("remote sqlite_sequence row {r:?}")).into(),
                )
            }
        }
    }
    Ok(out)
}

/// How much of a schema change the remote still needs, as a push transaction finds it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Needs {
    All,
    /// Already there: a re-run, or a later transaction of a split push.
    Nothing,
    /// Only its new form: an index of a table that was rebuilt (with the same definition) on
    /// the remote went with it.
    NewForm,
}

/// Compares a schema change with the remote's object: it must be in the base's form (then
/// the change is needed) or already in the working copy's (then nothing is). Anything else is
/// someone else's change of the same object: a conflict. A rebuilt table is refused outright:
/// re-creating it would replace every row in it, including rows others changed since the last
/// sync, which no per-row check covers.
fn remote_needs(ch: &SchemaChange, cs: &Changeset, remote: &RemoteState) -> Result<Outcome<Needs>> {
    let has = |ty: &str, name: &str| remote.sql_of(ty, name);
    let conflict = |ty: &str, name: &str| Ok(Outcome::Conflicts(vec![Conflict::schema(ty, name)]));
    let needs = match ch {
        SchemaChange::TableAdded { name, sql: create } => match has("table", name) {
            None => Needs::All,
            Some(s) if s == create => Needs::Nothing,
            Some(_) => return conflict("table", name),
        },
        SchemaChange::TableDropped { name, sql: old } => match has("table", name) {
            Some(s) if s == old => Needs::All,
            None => Needs::Nothing,
            Some(_) => return conflict("table", name),
        },
        SchemaChange::TableRebuilt {
            name,
            old_name,
            old_sql,
            new_sql,
            ..
        } => {
            let renamed = old_name != name;
            let (at_old, at_new) = (has("table", old_name), has("table", name));
            if at_new == Some(new_sql.as_str()) && (!renamed || at_old.is_none()) {
                Needs::Nothing
            } else if at_old == Some(old_sql.as_str()) && (!renamed || at_new.is_none()) {
                // Re-created under a new row key: every row is replaced, so the push first
                // checks that the remote's rows are still the base's ([`recreated_unchanged`]).
                Needs::All
            } else {
                let theirs = at_old.filter(|_| renamed).or(at_new).or(at_old);
                return Ok(Outcome::Conflicts(vec![Conflict::definitions(
                    "table",
                    name,
                    old_sql,
                    Some(new_sql),
                    theirs,
                )]));
            }
        }
        SchemaChange::ColumnsAdded { table, old_sql, .. } => {
            let new_sql = cs
                .tables
                .iter()
                .find(|t| &t.table.name == table)
                .map(|t| t.table.sql.as_str());
            match has("table", table) {
                Some(s) if Some(s) == new_sql => Needs::Nothing,
                Some(s) if s == old_sql => Needs::All,
                _ => return conflict("table", table),
            }
        }
        // Triggers are compared as a set (see plan_schema).
        SchemaChange::ObjectAdded { kind, .. }
        | SchemaChange::ObjectDropped { kind, .. }
        | SchemaChange::ObjectChanged { kind, .. }
            if *kind == ObjectKind::Trigger =>
        {
            Needs::Nothing
        }
        SchemaChange::ObjectDropped {
            kind,
            name,
            sql: old,
        } => match has(kind.as_str(), name) {
            Some(s) if s == old => Needs::All,
            None => Needs::Nothing,
            Some(_) => return conflict(kind.as_str(), name),
        },
        SchemaChange::ObjectChanged {
            kind,
            name,
            old_sql,
            new_sql,
        } => match has(kind.as_str(), name) {
            Some(s) if s == old_sql => Needs::All,
            Some(s) if s == new_sql && old_sql != new_sql => Needs::Nothing,
            None if old_sql == new_sql => Needs::NewForm,
            _ => return conflict(kind.as_str(), name),
        },
        SchemaChange::ObjectAdded {
            kind,
            name,
            sql: create,
        } => match has(kind.as_str(), name) {
            None => Needs::All,
            Some(s) if s == create => Needs::Nothing,
            Some(_) => return conflict(kind.as_str(), name),
        },
    };
    Ok(Outcome::Done(needs))
}

/// DDL for the schema changes the remote still needs, split around the row changes. A push cut
/// into transactions must leave the remote, after any one of them, in a state a re-run (or a
/// pull) understands: every object either as in the base or as in the working copy, never
/// missing. So views change at once in the first transaction (a definition holds no rows), while
/// changed indexes keep their old form until the last one, which drops them and builds the
/// new ones over the final rows.
struct SchemaPlan {
    /// First transaction, before its rows: trigger and object drops, then table DDL.
    before: Vec<String>,
    /// First transaction, after its rows: new and changed views.
    views: Vec<String>,
    /// Last transaction, before its rows: the old versions of changed indexes.
    index_drops: Vec<String>,
    /// Last transaction, after its rows: new and changed indexes, then triggers.
    after: Vec<String>,
}

/// Plans the DDL from the remote's schema as this transaction finds it: objects already in their
/// new form (a re-run, or a later transaction of a split push) need nothing.
/// A schema change the remote no longer allows (someone else changed the same object) is the
/// conflict it returns instead.
fn plan_schema(cs: &Changeset, remote: &RemoteState) -> Result<Outcome<SchemaPlan>> {
    let has = |ty: &str, name: &str| remote.sql_of(ty, name);
    // Object drops go before table DDL (a dropped table takes its indexes with it).
    let mut drops = Vec::new();
    let mut before = Vec::new();
    let mut views = Vec::new();
    let mut index_drops = Vec::new();
    let mut after = Vec::new();
    // Triggers: the remote's must be the base's or already the working copy's.
    let mut base_tr = cs.base_triggers.clone();
    let mut new_tr = cs.new_triggers.clone();
    let mut remote_tr = remote.triggers();
    base_tr.sort();
    new_tr.sort();
    remote_tr.sort();
    if remote_tr != base_tr && remote_tr != new_tr {
        // Name one trigger the remote has otherwise than the base.
        let odd = remote_tr
            .iter()
            .find(|t| !base_tr.contains(t))
            .or_else(|| base_tr.iter().find(|t| !remote_tr.contains(t)))
            .map_or("", |(name, _)| name.as_str());
        return Ok(Outcome::Conflicts(vec![Conflict::schema("trigger", odd)]));
    }
    for (name, _) in &remote_tr {
        drops.push(format!("DROP TRIGGER {}", sql::ident(name)));
    }
    for ch in &cs.schema {
        let needed = match remote_needs(ch, cs, remote)? {
            Outcome::Done(needed) => needed,
            Outcome::Conflicts(c) => return Ok(Outcome::Conflicts(c)),
        };
        let (index, changed_index) = match ch {
            SchemaChange::ObjectAdded { kind, .. } => (*kind == ObjectKind::Index, false),
            SchemaChange::ObjectChanged { kind, .. } => {
                (*kind == ObjectKind::Index, *kind == ObjectKind::Index)
            }
            _ => (false, false),
        };
        for (phase, q) in ch.statements() {
            match (needed, phase) {
                (Needs::Nothing, _) => {}
                (Needs::NewForm, DdlPhase::DropObjects | DdlPhase::Tables) => {}
                // A changed index keeps its old form until the last transaction.
                (_, DdlPhase::DropObjects) if changed_index => index_drops.push(q),
                (_, DdlPhase::DropObjects) => drops.push(q),
                (_, DdlPhase::Tables) => before.push(q),
                (_, DdlPhase::CreateObjects) if index => after.push(q),
                (_, DdlPhase::CreateObjects) => views.push(q),
            }
        }
    }
    // Rows may only go into tables whose definition is the one they were diffed against.
    let renames = cs.renamed_tables();
    for t in cs.tables.iter().filter(|t| !t.changes.is_empty()) {
        let reshaped = cs.schema.iter().any(|c| match c {
            SchemaChange::TableAdded { name, .. } | SchemaChange::TableRebuilt { name, .. } => {
                name == &t.table.name
            }
            SchemaChange::ColumnsAdded { table, .. } => table == &t.table.name,
            _ => false,
        });
        // A table whose references to a renamed table the rename itself rewrites.
        let follows = |s: &str| {
            !renames.is_empty()
                && crate::changeset::with_renamed_references(s, &renames) == t.table.sql
        };
        if !reshaped && !has("table", &t.table.name).is_some_and(|s| s == t.table.sql || follows(s))
        {
            return Ok(Outcome::Conflicts(vec![Conflict::schema(
                "table",
                &t.table.name,
            )]));
        }
    }
    for (_, create) in &cs.new_triggers {
        after.push(create.clone());
    }
    drops.extend(before);
    Ok(Outcome::Done(SchemaPlan {
        before: drops,
        views,
        index_drops,
        after,
    }))
}

/// Sends statements on the push stream, each with its own result.
fn send_each(stream: &mut Stream<'_>, stmts: Vec<Stmt>) -> Result<Vec<Result<StmtResult>>> {
    let reqs: Vec<StreamRequest> = stmts
        .into_iter()
        .map(|stmt| StreamRequest::Execute { stmt })
        .collect();
    Ok(stream
        .send(&reqs)?
        .into_iter()
        .map(|r| r.map_err(Error::from))
        .collect())
}

/// Sends statements on the push stream and fails on the first statement error.
fn send(stream: &mut Stream<'_>, stmts: Vec<Stmt>) -> Result<Vec<StmtResult>> {
    send_each(stream, stmts)?.into_iter().collect()
}

/// Drops the transaction kept on this side after a failure or a conflict: nothing of it was
/// sent.
fn abandon(stream: &mut Stream<'_>) {
    let _ = stream.send(&[
        StreamRequest::Execute {
            stmt: stmt("ROLLBACK".into(), vec![], false),
        },
        StreamRequest::Close,
    ]);
}

/// Pushes the working copy's changes. Returns the conflicts instead of pushing when there are
/// any (nothing is changed on either side then).
pub fn push(
    ws: &Workspace,
    remote: &Remote,
    opts: PushOptions,
    progress: &Progress,
) -> Result<Outcome<PushReport>> {
    let _lock = ws.lock()?;
    ws.finish_interrupted_pull()?;
    let (cs, work_stamp, walked) = ws.ours(&Default::default())?;
    let report = PushReport {
        changes: cs.change_count(),
        schema: cs.listed_schema().map(SchemaChange::to_json).collect(),
        ..PushReport::default()
    };
    if cs.is_empty() {
        // Nothing of ours: a clean point spares the next pull reading the working copy, and
        // the leaves just read, the next diff walking the base.
        let state = ws.sync_state()?;
        let clean = ws.clean_point(work_stamp);
        let leaves = ws.record_leaves(walked).or(state.leaves);
        if (clean.is_some() && clean != state.clean) || leaves != state.leaves {
            ws.save_sync_state(&crate::workspace::SyncState {
                clean: clean.or(state.clean),
                leaves,
                ..state
            })?;
        }
        return Ok(Outcome::Done(report));
    }
    let fks = foreign_keys(&ws.open_working_copy(true)?)?;
    let fk_scope = foreign_key_scope(&fks, cs.tables.iter().map(|t| t.table.name.as_str()));
    let fresh_record = ws.record_push_start(&cs)?;
    // What the remote's schema is unless someone changed it since the last sync: the touched
    // rows are read in the same request as the schema, as if it were.
    let expected = RemoteState {
        schema: SchemaTexts::read_local(&ws.open_base()?)?,
        sequences: HashMap::new(),
    };
    let total_rows: usize = cs.tables.iter().map(|t| t.changes.len()).sum();
    progress.start("push", total_rows as u64);

    let groups = transactions(&cs, opts.rows_per_transaction);
    let recreated = cs
        .schema
        .iter()
        .any(|c| matches!(c, SchemaChange::TableRebuilt { columns: None, .. }));
    let base = if recreated {
        Some(ws.open_base()?)
    } else {
        None
    };
    let mut run = Run {
        report,
        log: String::new(),
        progress,
        orphans_before: None,
        commit_sent: false,
    };
    let mut final_sequences: Vec<(String, Option<i64>)> = Vec::new();
    let last = groups.len() - 1;
    let state = ws.sync_state()?;
    let known = state.replication_index;
    // The base moves by our changeset but keeps its mirror point (`base_at`): every row we
    // change lands on the remote after that point, so the pages the log writes past it cover
    // our rows as well as theirs (see `SyncState::base_at`).
    let mut index = None;
    for (gi, group) in groups.iter().enumerate() {
        let txn = Txn {
            cs: &cs,
            base: base.as_ref(),
            group,
            fk_scope: &fk_scope,
            expected: &expected,
            first: gi == 0,
            last: gi == last,
        };
        // A transaction that failed on the way (its COMMIT answer lost, say) runs again from
        // the start: it re-reads every row and skips those already there, so a change never
        // lands twice.
        let (report_before, log_before) = (run.report.clone(), run.log.len());
        // Once the batch's orphan check failed, the transaction runs again reading the
        // orphans after its writes, to report them.
        let mut orphans = OrphanCheck::InBatch;
        let attempt = remote.retrying(|| loop {
            run.report = report_before.clone();
            run.log.truncate(log_before);
            match push_transaction(remote, &txn, &mut run, orphans) {
                Err(e)
                    if orphans == OrphanCheck::InBatch
                        && matches!(e.root(), Error::Remote(RemoteError::Check(_))) =>
                {
                    orphans = OrphanCheck::Read;
                }
                other => return other,
            }
        });
        let outcome = match attempt {
            Err(e) => match e.root() {
                Error::Remote(RemoteError::Sql { message, .. }) => {
                    match unique_conflicts(remote, &cs, message)? {
                        Some(conflicts) => Outcome::Conflicts(conflicts),
                        None => return Err(e),
                    }
                }
                _ => return Err(e),
            },
            Ok(outcome) => outcome,
        };
        match outcome {
            Outcome::Done(done) => {
                final_sequences.extend(done.sequences);
                // The remote is known to equal the new base only if nobody else wrote since
                // the last sync and this push ran as one transaction.
                index = if groups.len() == 1 && known.is_some() && done.index_before == known {
                    done.index_after
                } else {
                    None
                };
            }
            Outcome::Conflicts(conflicts) => {
                // Refused in its first transaction: nothing of this push reached the remote.
                if gi == 0 && fresh_record && !run.commit_sent {
                    ws.drop_push_record()?;
                }
                return Ok(Outcome::Conflicts(conflicts));
            }
        }
        run.report.transactions += 1;
    }
    progress.finish();
    // Its read transaction would hold off the base's move below.
    drop(base);
    let mut report = run.report;
    report.log = Some(ws.record_push(&cs, &final_sequences, &run.log)?);
    ws.save_sync_state(&crate::workspace::SyncState {
        replication_index: index,
        // The base now holds the rows the working copy held when ours was read: clean, if the
        // app wrote nothing since; and the rows of the leaves ours was read from, whatever the
        // app wrote since.
        clean: ws.clean_point(work_stamp),
        leaves: ws.record_leaves(walked),
        ..state
    })?;
    Ok(Outcome::Done(report))
}

/// Cuts the row changes into transactions of at most `limit` row changes each, in changeset
/// order (a table may span two). There is always at least one, which carries the schema.
fn transactions(cs: &Changeset, limit: usize) -> Vec<Vec<TablePlan<'_>>> {
    let mut groups: Vec<Vec<TablePlan<'_>>> = vec![Vec::new()];
    let mut in_group = 0;
    let limit = limit.max(1);
    for t in &cs.tables {
        let mut rest = &t.changes[..];
        while !rest.is_empty() {
            if in_group == limit {
                groups.push(Vec::new());
                in_group = 0;
            }
            let take = (limit - in_group).min(rest.len());
            if let Some(g) = groups.last_mut() {
                g.push(TablePlan {
                    diff: t,
                    changes: &rest[..take],
                });
            }
            rest = &rest[take..];
            in_group += take;
        }
    }
    groups
}

/// One transaction's share of the changeset.
struct Txn<'a, 'g> {
    cs: &'a Changeset,
    /// The base, open when a table is re-created under a new row key ([`recreated_unchanged`]).
    base: Option<&'a rusqlite::Connection>,
    group: &'g [TablePlan<'a>],
    /// The tables whose foreign keys the push may break (see [`foreign_key_scope`]).
    fk_scope: &'a std::collections::BTreeSet<String>,
    /// The remote as the base has it, which the first request's reads assume.
    expected: &'a RemoteState,
    first: bool,
    last: bool,
}

/// How the last transaction of a push finds the orphans its writes would leave.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum OrphanCheck {
    /// A step of the batch that fails when there is one beyond those found before the push:
    /// nothing more to send when there is none.
    InBatch,
    /// Read after the writes (a trial batch, rolled back), to report each one.
    Read,
}

/// What a push accumulates across its transactions.
struct Run<'p> {
    report: PushReport,
    log: String,
    progress: &'p Progress,
    /// The remote's orphans before the push's first write: only orphans beyond these are the
    /// push's doing. Checked once the last transaction has written, so a parent and its
    /// children's deletes may land in different transactions.
    orphans_before: Option<std::collections::BTreeSet<Orphan>>,
    /// Whether any attempt sent a COMMIT: from then on the remote may hold the push, whatever
    /// answer got lost.
    commit_sent: bool,
}

fn push_transaction(
    remote: &Remote,
    txn: &Txn<'_, '_>,
    run: &mut Run<'_>,
    orphans: OrphanCheck,
) -> Result<Outcome<Committed>> {
    let mut stream = remote.batch_stream();
    let result = push_transaction_on(&mut stream, txn, run, orphans);
    if !matches!(result, Ok(Outcome::Done(_))) {
        abandon(&mut stream);
    }
    run.report.requests += stream.requests();
    result
}

/// One transaction of a push, in its phases: read the remote's schema, counters, orphans and
/// touched rows, classify the rows, plan the writes, keep them with the orphan check, commit.
fn push_transaction_on(
    stream: &mut Stream<'_>,
    txn: &Txn<'_, '_>,
    run: &mut Run<'_>,
    orphans: OrphanCheck,
) -> Result<Outcome<Committed>> {
    let opened = open(stream, txn)?;
    let remote = &opened.state;
    // A schema change someone else made meanwhile is reported as such, before any row of
    // a table it reshaped is compared.
    if let Outcome::Conflicts(conflicts) = plan_schema(txn.cs, remote)? {
        return Ok(Outcome::Conflicts(conflicts));
    }
    if txn.first {
        if let Some(conflict) = recreated_unchanged(stream, txn, remote)? {
            return Ok(Outcome::Conflicts(vec![conflict]));
        }
    }
    let found = read_rows(stream, txn, remote, opened.guessed)?;
    let todo = match classify(txn.group, &found, &mut run.report.skipped) {
        Ok(todo) => todo,
        Err(conflicts) => return Ok(Outcome::Conflicts(conflicts)),
    };
    let plan = match plan_writes(txn, remote, &todo)? {
        Outcome::Done(plan) => plan,
        Outcome::Conflicts(conflicts) => return Ok(Outcome::Conflicts(conflicts)),
    };
    // Foreign keys are off for the push (the changeset holds what cascades did locally), so
    // orphans are looked for instead: those the push would add are conflicts.
    if txn.first {
        let before = opened
            .orphans
            .into_iter()
            .collect::<Result<Vec<StmtResult>>>()?;
        run.orphans_before = Some(orphans_found(before)?);
    }
    send_writes(stream, plan.writes, run)?;
    if txn.last {
        let conflicts = new_orphans(stream, txn, run, orphans)?;
        if !conflicts.is_empty() {
            return Ok(Outcome::Conflicts(conflicts));
        }
    }
    // The batch commits only if every step before COMMIT succeeded.
    run.commit_sent = true;
    let commit = send(stream, vec![stmt("COMMIT".into(), vec![], false)])?;
    Ok(Outcome::Done(Committed {
        sequences: plan.sequences,
        index_before: stream.began_at(),
        index_after: commit.first().and_then(StmtResult::replication_index),
    }))
}

/// Tables re-created here under a new row key replace every row of the remote's table, so
/// each one whose remote table is still the base's must hold exactly the base's rows
/// ([`crate::unchanged`]). Otherwise a teammate changed it since the last sync: a conflict on
/// the table, which a pull shows row by row and `--ours`/`--theirs` settles.
fn recreated_unchanged(
    stream: &mut Stream<'_>,
    txn: &Txn<'_, '_>,
    remote: &RemoteState,
) -> Result<Option<Conflict>> {
    let mut base_schema = None;
    for ch in &txn.cs.schema {
        let SchemaChange::TableRebuilt {
            name,
            old_name,
            old_sql,
            columns: None,
            ..
        } = ch
        else {
            continue;
        };
        let in_base_form = remote.sql_of("table", old_name) == Some(old_sql.as_str())
            && (name == old_name || remote.sql_of("table", name).is_none());
        if !in_base_form {
            continue;
        }
        let Some(base) = txn.base else {
            return Err(Error::Unexpected(format!(
                "table {name:?} is re-created under a new row key, but the push has no base to compare the remote's rows with"
            )));
        };
        // The remote's table is the base's, by its definition.
        if base_schema.is_none() {
            base_schema = Some(crate::schema::load(base)?);
        }
        let Some(table) = base_schema
            .iter()
            .flat_map(|s| &s.tables)
            .find(|t| &t.name == old_name)
        else {
            continue;
        };
        let same = crate::unchanged::rows_unchanged(base, table, |stmts| send(stream, stmts))
            .during(
                "comparing the remote's rows with the base's, table",
                format_args!("{old_name:?}"),
            )?;
        if !same {
            let mut c = Conflict::schema("table", old_name);
            c.note = Some(format!(
                "table {name:?} was re-created here under a new row key, and its rows changed on the remote since the last sync; `tursync sync --ours` keeps ours (the remote's table replaced by ours), `--theirs` takes the remote's"
            ));
            return Ok(Some(c));
        }
    }
    Ok(None)
}

/// What the first request of a transaction read.
struct Opened {
    state: RemoteState,
    /// The orphans in the foreign-key scope, in the first transaction.
    orphans: Vec<Result<StmtResult>>,
    /// The touched rows read as if the remote's schema were the base's, with what each read
    /// returned.
    guessed: Vec<(PlannedRead, Result<StmtResult>)>,
}

/// A read of touched rows: the table plan it is for (its index in the group), the statement,
/// and the bytes it is expected to return.
type PlannedRead = (usize, Stmt, usize);

/// Phase 1, one request: the transaction opened (`PRAGMA foreign_keys = OFF`, `BEGIN
/// IMMEDIATE`, kept on this side until the batch), the remote's schema, its AUTOINCREMENT
/// counters when the last transaction sets them, its orphans in the first, and the first
/// requestful of touched rows read as if the remote's schema were the base's.
fn open(stream: &mut Stream<'_>, txn: &Txn<'_, '_>) -> Result<Opened> {
    let mut stmts = vec![
        stmt("PRAGMA foreign_keys = OFF".into(), vec![], false),
        stmt("BEGIN IMMEDIATE".into(), vec![], false),
        stmt(SCHEMA_SQL.into(), vec![], true),
    ];
    let counters = txn.last && !txn.cs.sequences.is_empty();
    if counters {
        stmts.push(stmt(
            "SELECT name, seq FROM sqlite_sequence".into(),
            vec![],
            true,
        ));
    }
    let orphan_reads = if txn.first {
        orphan_reads(txn.fk_scope)
    } else {
        Vec::new()
    };
    let orphan_count = orphan_reads.len();
    stmts.extend(orphan_reads);
    // A guess the base's schema cannot make (its tables do not match ours) is no guess.
    let guess = planned_reads(txn, txn.expected)
        .ok()
        .and_then(|reads| requestfuls(reads).into_iter().next())
        .unwrap_or_default();
    stmts.extend(guess.iter().map(|(_, s, _)| s.clone()));
    let mut results = send_each(stream, stmts)?.into_iter();
    let mut next = || {
        results
            .next()
            .unwrap_or_else(|| Err(Error::Unexpected("a read got no answer".into())))
    };
    next()?;
    next()?;
    let schema = SchemaTexts::from_rows(next()?.rows)?;
    let sequences = match counters.then(&mut next) {
        Some(Ok(r)) => sequences_found(r.rows)?,
        Some(Err(e)) if schema.has_sequence => return Err(e),
        // No sqlite_sequence on the remote: no counter yet.
        _ => HashMap::new(),
    };
    let orphans = (0..orphan_count).map(|_| next()).collect();
    let guessed = guess.into_iter().map(|read| (read, next())).collect();
    Ok(Opened {
        state: RemoteState { schema, sequences },
        orphans,
        guessed,
    })
}

/// The reads of every row the transaction touches, as the remote `remote` has its tables.
fn planned_reads(txn: &Txn<'_, '_>, remote: &RemoteState) -> Result<Vec<PlannedRead>> {
    let mut reads = Vec::new();
    for (pi, plan) in txn.group.iter().enumerate() {
        if let Some(source) = remote_source(txn.cs, plan.diff, remote)? {
            reads.extend(
                plan.reads(&source)
                    .into_iter()
                    .map(|(s, bytes)| (pi, s, bytes)),
            );
        }
    }
    Ok(reads)
}

/// `reads` cut into requests whose answers stay under [`BYTES_PER_REQUEST`].
fn requestfuls(reads: Vec<PlannedRead>) -> Vec<Vec<PlannedRead>> {
    let mut out: Vec<Vec<PlannedRead>> = Vec::new();
    let mut bytes = 0;
    for read in reads {
        match out.last_mut() {
            Some(last) if bytes + read.2 <= BYTES_PER_REQUEST => {
                bytes += read.2;
                last.push(read);
            }
            _ => {
                bytes = read.2;
                out.push(vec![read]);
            }
        }
    }
    out
}

/// Phase 2: the remote's current version of every row the transaction touches, table by
/// table and keyed by [`TableDiff::key_text`]. The first request's answers serve when it read
/// what the remote's schema calls for; the rest is read in requests bounded by the expected
/// response size.
fn read_rows(
    stream: &mut Stream<'_>,
    txn: &Txn<'_, '_>,
    remote: &RemoteState,
    guessed: Vec<(PlannedRead, Result<StmtResult>)>,
) -> Result<Vec<HashMap<String, Vec<Value>>>> {
    let mut found: Vec<HashMap<String, Vec<Value>>> = vec![HashMap::new(); txn.group.len()];
    let mut guessed = Some(guessed);
    for requestful in requestfuls(planned_reads(txn, remote)?) {
        let same = |g: &[(PlannedRead, Result<StmtResult>)]| {
            g.len() == requestful.len()
                && g.iter()
                    .zip(&requestful)
                    .all(|(((_, a, _), _), (_, b, _))| a.sql == b.sql && a.args == b.args)
        };
        let results: Vec<StmtResult> = match guessed.take() {
            Some(g) if same(&g) => g.into_iter().map(|(_, r)| r).collect::<Result<_>>()?,
            _ => send(
                stream,
                requestful.iter().map(|(_, s, _)| s.clone()).collect(),
            )?,
        };
        for ((pi, _, _), res) in requestful.iter().zip(results) {
            let t = txn.group[*pi].diff;
            for row in res.exact_rows()? {
                found[*pi].insert(t.key_text(&row), row);
            }
        }
    }
    Ok(found)
}

/// What one transaction writes: its statements in order, and the AUTOINCREMENT counters they
/// set (as the base must record them).
#[derive(Debug)]
struct WritePlan {
    writes: Vec<Write>,
    sequences: Vec<(String, Option<i64>)>,
}

/// Phase 4: the transaction's writes, from the remote's state and the changes still needed
/// (`todo`, per table of the group). No I/O. Triggers are dropped first and re-created last
/// (so none fires a second time); schema changes go where [`plan_schema`] puts them;
/// counters never go down.
fn plan_writes(
    txn: &Txn<'_, '_>,
    remote: &RemoteState,
    todo: &[Vec<&RowChange>],
) -> Result<Outcome<WritePlan>> {
    let Txn {
        cs, first, last, ..
    } = *txn;
    let ddl = match plan_schema(cs, remote)? {
        Outcome::Done(ddl) => ddl,
        Outcome::Conflicts(conflicts) => return Ok(Outcome::Conflicts(conflicts)),
    };
    let mut writes = Vec::new();
    if first {
        writes.extend(ddl.before.into_iter().map(Write::ddl));
    } else {
        let triggers = remote.triggers();
        writes.extend(
            triggers
                .iter()
                .map(|(n, _)| Write::ddl(format!("DROP TRIGGER {}", sql::ident(n)))),
        );
    }
    if last {
        writes.extend(ddl.index_drops.into_iter().map(Write::ddl));
    }
    for (plan, t) in txn.group.iter().zip(todo) {
        writes.extend(plan.writes(t));
    }
    if first {
        writes.extend(ddl.views.into_iter().map(Write::ddl));
    }
    let mut sequences = Vec::new();
    if last {
        for q in &cs.sequences {
            let value = match (q.new, remote.sequences.get(&q.table)) {
                // AUTOINCREMENT never reuses a number: keep the larger counter.
                (Some(n), Some(&r)) => Some(n.max(r)),
                (n, _) => n,
            };
            let name = Value::text(&q.table);
            writes.push(Write::uncounted(sql::SEQUENCE_DELETE, vec![name.clone()]));
            if let Some(v) = value {
                writes.push(Write::uncounted(
                    sql::SEQUENCE_INSERT,
                    vec![name, Value::Integer(v)],
                ));
            }
            sequences.push((q.table.clone(), value));
        }
        writes.extend(ddl.after.into_iter().map(Write::ddl));
        if let Some(v) = cs.user_version {
            writes.push(Write::ddl(format!("PRAGMA user_version = {v}")));
        }
    } else {
        writes.extend(cs.new_triggers.iter().map(|(_, s)| Write::ddl(s.clone())));
    }
    Ok(Outcome::Done(WritePlan { writes, sequences }))
}

/// Phase 5: keeps the writes for the batch, logging each statement, with the rows each must
/// change (checked in the batch).
fn send_writes(stream: &mut Stream<'_>, writes: Vec<Write>, run: &mut Run<'_>) -> Result<()> {
    let mut stmts = Vec::with_capacity(writes.len());
    let mut expect = Vec::with_capacity(writes.len());
    for w in writes {
        log_stmt(&mut run.log, &w.stmt);
        run.report.applied += w.rows;
        stmts.push(w.stmt);
        expect.push(w.rows);
    }
    stream.expect_changes(&expect);
    let results = send(stream, stmts)?;
    for (res, want) in results.iter().zip(&expect) {
        if *want > 0 && res.affected_row_count as usize != *want {
            return Err(Error::Unexpected(format!(
                "the remote changed {} rows where {want} were expected; the push was rolled back",
                res.affected_row_count
            )));
        }
    }
    run.progress.advance(expect.iter().sum::<usize>() as u64);
    Ok(())
}

/// The orphans the whole push adds on the remote (beyond those its first transaction found),
/// as foreign-key conflicts. Checked in the last transaction, so a parent and its children's
/// deletes may land in different transactions: kept as a check of the batch
/// ([`OrphanCheck::InBatch`], no conflict here then), or read after the writes.
fn new_orphans(
    stream: &mut Stream<'_>,
    txn: &Txn<'_, '_>,
    run: &mut Run<'_>,
    how: OrphanCheck,
) -> Result<Vec<Conflict>> {
    let Some(before) = run.orphans_before.as_ref() else {
        return Err(Error::Unexpected(
            "the push reached its last transaction without reading the remote's orphans in its first".into(),
        ));
    };
    if how == OrphanCheck::InBatch {
        for (read, table) in orphan_reads(txn.fk_scope).into_iter().zip(txn.fk_scope) {
            let allowed = before
                .iter()
                .filter(|o| &o.0 == table)
                .map(orphan_row)
                .collect();
            stream.check(read, allowed)?;
        }
        return Ok(Vec::new());
    }
    let now = if txn.fk_scope.is_empty() {
        Default::default()
    } else {
        orphans_found(send(stream, orphan_reads(txn.fk_scope))?)?
    };
    Ok(now
        .difference(before)
        .map(|(child, rowid, parent, _)| Conflict {
            constraint: Some(format!("FOREIGN KEY of {child} REFERENCES {parent}")),
            ..Conflict::new(
                child,
                ConflictKind::ForeignKey,
                rowid.map(Value::Integer).into_iter().collect(),
            )
        })
        .collect())
}

fn log_stmt(log: &mut String, s: &Stmt) {
    log.push_str(&s.sql);
    if !s.args.is_empty() {
        log.push_str("\n  -- args: ");
        for (i, v) in s.args.iter().enumerate() {
            if i > 0 {
                log.push_str(", ");
            }
            sql::push_literal(log, v);
        }
    }
    log.push_str(";\n");
}

/// How many pushes `.tursync/pushes/` keeps, newest first, and how many bytes at most (the
/// newest is kept whatever its size): enough to find out what recent pushes sent, bounded
/// however long `watch` runs.
const PUSH_LOGS_KEPT: usize = 50;
const PUSH_LOGS_BYTES: u64 = 16 << 20;

/// Writes `log` as the newest file of `dir` and removes the oldest past [`PUSH_LOGS_KEPT`]
/// files or [`PUSH_LOGS_BYTES`] bytes. Files are named by the time in milliseconds, zero-padded
/// so names sort by age, and a counter when two pushes share a millisecond:
///
/// ```text
/// 00000001796419704782.sql  00000001796419704782-1.sql  00000001796419704865.sql
/// ```
fn keep_push_log(dir: &Path, log: &str) -> Result<PathBuf> {
    std::fs::create_dir_all(dir).during("creating the push log directory", dir.display())?;
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0);
    let mut path = dir.join(format!("{stamp:020}.sql"));
    for n in 1.. {
        if !path.exists() {
            break;
        }
        path = dir.join(format!("{stamp:020}-{n}.sql"));
    }
    std::fs::write(&path, log).during("writing the push log", path.display())?;
    let mut logs: Vec<(PathBuf, u64)> = std::fs::read_dir(dir)
        .during("listing the push log", dir.display())?
        .filter_map(|e| e.ok())
        .map(|e| (e.path(), e.metadata().map(|m| m.len()).unwrap_or(0)))
        .filter(|(p, _)| p.extension().is_some_and(|x| x == "sql"))
        .collect();
    // Newest first; the names of an older version (unpadded milliseconds) sort as older.
    logs.sort_by(|a, b| {
        let key = |p: &Path| {
            let name = p.file_stem().and_then(|s| s.to_str()).unwrap_or("");
            let (ms, n) = name.split_once('-').unwrap_or((name, "0"));
            (
                ms.parse::<u128>().unwrap_or(0),
                n.parse::<u64>().unwrap_or(0),
            )
        };
        key(&b.0).cmp(&key(&a.0))
    });
    let mut bytes = 0u64;
    for (i, (p, len)) in logs.iter().enumerate() {
        bytes += len;
        if i > 0 && (i >= PUSH_LOGS_KEPT || bytes > PUSH_LOGS_BYTES) {
            std::fs::remove_file(p).during("removing an old push log", p.display())?;
        }
    }
    Ok(path)
}

impl Workspace {
    /// Moves the base by exactly `cs` (plus the AUTOINCREMENT counters as written to the
    /// remote), in place in one SQLite transaction, then forgets the record of the push (an
    /// older one, left by an interrupted push, too: the base now covers it). Keeps the SQL that
    /// was sent under `.tursync/pushes/`. Costs what was pushed, not the size of the base.
    fn record_push(
        &self,
        cs: &Changeset,
        sequences: &[(String, Option<i64>)],
        log: &str,
    ) -> Result<PathBuf> {
        let log_path = keep_push_log(&self.state_dir().join("pushes"), log)?;
        pause_for_tests();
        self.update_base(|conn| {
            cs.apply(conn)?;
            for (name, v) in sequences {
                crate::workspace::set_sequence(conn, name, *v)?;
            }
            Ok(())
        })
        .during("moving the base by the push", self.base_path().display())?;
        self.drop_push_record()?;
        Ok(log_path)
    }
}

/// A test hook: `TURSYNC_TEST_PAUSE_AFTER_COMMIT_MS` sleeps that long after the remote's
/// COMMIT and before the base moves, so a test can kill the push at that very step.
fn pause_for_tests() {
    let ms: u64 = std::env::var("TURSYNC_TEST_PAUSE_AFTER_COMMIT_MS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    if ms > 0 {
        std::thread::sleep(std::time::Duration::from_millis(ms));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rusqlite::Connection;

    fn db(sql: &str) -> Connection {
        let conn = Connection::open_in_memory().expect("in-memory database");
        conn.execute_batch(sql).expect("set-up SQL");
        conn
    }

    /// The planned writes, run on a copy of the base standing in for the remote, turn it into
    /// the working copy: values swapped under a UNIQUE constraint, a TEXT primary key re-inserted
    /// by REPLACE, deletes, inserts and an AUTOINCREMENT counter, in one transaction.
    #[test]
    fn planned_writes_turn_the_remote_into_the_working_copy() {
        let setup = "
            CREATE TABLE it(id INTEGER PRIMARY KEY, pos INTEGER UNIQUE, v TEXT);
            INSERT INTO it VALUES (1, 1, 'a'), (2, 2, 'b'), (3, 3, 'c');
            CREATE TABLE acct(email TEXT PRIMARY KEY, name TEXT);
            INSERT INTO acct VALUES ('a@x', 'Ann'), ('b@x', 'Bob');
            CREATE TABLE auto(id INTEGER PRIMARY KEY AUTOINCREMENT, v TEXT);
            INSERT INTO auto(v) VALUES ('one');";
        let remote_db = db(setup);
        let work = db(setup);
        work.execute_batch(
            "UPDATE it SET pos = -1 WHERE id = 1;
             UPDATE it SET pos = 1 WHERE id = 2;
             UPDATE it SET pos = 2 WHERE id = 1;
             DELETE FROM it WHERE id = 3;
             INSERT INTO it VALUES (4, 3, 'd');
             INSERT OR REPLACE INTO acct VALUES ('a@x', 'Anna');
             INSERT INTO auto(v) VALUES ('two');",
        )
        .expect("edits");
        let base = db(setup);
        let cs = crate::diff::diff(&base, &work, &Default::default()).expect("diff");
        let group: Vec<TablePlan<'_>> = cs
            .tables
            .iter()
            .map(|t| TablePlan {
                diff: t,
                changes: &t.changes,
            })
            .collect();
        let scope = Default::default();
        let txn = Txn {
            cs: &cs,
            base: None,
            group: &group,
            fk_scope: &scope,
            expected: &RemoteState {
                schema: SchemaTexts::default(),
                sequences: HashMap::new(),
            },
            first: true,
            last: true,
        };
        let remote = RemoteState {
            schema: SchemaTexts::read_local(&remote_db).expect("schema"),
            sequences: HashMap::from([("auto".to_owned(), 1)]),
        };
        let todo: Vec<Vec<&RowChange>> = group.iter().map(|p| p.changes.iter().collect()).collect();
        let Outcome::Done(plan) = plan_writes(&txn, &remote, &todo).expect("plan") else {
            panic!("no conflict expected")
        };
        assert_eq!(plan.sequences, vec![("auto".to_owned(), Some(2))]);

        remote_db.execute_batch("BEGIN").expect("begin");
        for w in &plan.writes {
            let changed = remote_db
                .execute(&w.stmt.sql, rusqlite::params_from_iter(&w.stmt.args))
                .unwrap_or_else(|e| panic!("{}: {e}", w.stmt.sql));
            if w.rows > 0 {
                assert_eq!(changed, w.rows, "{}", w.stmt.sql);
            }
        }
        remote_db.execute_batch("COMMIT").expect("commit");
        let left = crate::diff::diff(&remote_db, &work, &Default::default()).expect("diff");
        assert!(left.is_empty(), "left over: {:?}", left.tables);
        let seq: i64 = remote_db
            .query_row(
                "SELECT seq FROM sqlite_sequence WHERE name = 'auto'",
                [],
                |r| r.get(0),
            )
            .expect("counter");
        assert_eq!(seq, 2);
    }
}
