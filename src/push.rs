//! Sending the local changeset to the remote: all or nothing, and never over someone else's
//! change.
//!
//! One push is one remote transaction on a Hrana stream:
//!
//! 1. `PRAGMA foreign_keys=OFF` (the changeset already holds what cascades did locally),
//!    `BEGIN IMMEDIATE`, then, in the same request, the remote's schema and every row the push
//!    touches, read by key in chunks.
//! 2. Each touched row must be in the base state (apply it) or already in the local state (skip
//!    it: a re-run after a crash converges). Anything else is a conflict: `ROLLBACK`, report,
//!    exit 3, nothing changed anywhere.
//! 3. The changes go out as multi-row statements — `DELETE … WHERE key IN (…)`,
//!    `UPDATE … FROM (VALUES …)`, multi-row `INSERT` — with every trigger dropped first and
//!    re-created last (DDL is transactional), so no remote trigger fires a second time. `COMMIT`
//!    follows in a request of its own once every write succeeded.
//! 4. The base snapshot then moves by exactly the changeset pushed, which was read from one
//!    consistent snapshot of the working copy: edits the app made meanwhile stay pending.

use std::collections::HashMap;
use std::path::PathBuf;

use crate::diff::{Changeset, ConflictKind, RowChange, SchemaChange, TableDiff};
use crate::progress::Progress;
use crate::remote::{Remote, RemoteError, Stmt, StmtResult, Stream, StreamRequest};
use crate::schema::{
    foreign_key_scope, foreign_keys, parse_unique_failure, ObjectKind, Orphan, RowKey, SchemaError,
    UniqueFailure,
};
use crate::sql;
use crate::value::Value;
use crate::workspace::Workspace;
use crate::{Error, Result};

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

/// A row of ours the remote will not take: it is neither in the base state nor in the local
/// state there, or (with `constraint`) another remote row holds its values under a UNIQUE
/// constraint; `remote` is then that other row.
#[derive(Debug, Clone)]
pub struct Conflict {
    pub table: String,
    pub kind: ConflictKind,
    pub columns: Vec<String>,
    pub key: Vec<Value>,
    pub base: Option<Vec<Value>>,
    pub local: Option<Vec<Value>>,
    pub remote: Option<Vec<Value>>,
    pub constraint: Option<String>,
}

/// What a push did.
#[derive(Debug, Default, Clone)]
pub struct PushReport {
    pub changes: usize,
    /// Row changes sent.
    pub applied: usize,
    /// Row changes the remote already had (a re-run after a crash).
    pub skipped: usize,
    pub requests: u64,
    pub transactions: usize,
    /// Where the SQL of this push was kept.
    pub log: Option<PathBuf>,
}

fn row_bytes(row: &[Value]) -> usize {
    row.iter().map(crate::remote::proto::json_size).sum()
}

/// `K IN (?, …)`, or `(K1, K2) IN (VALUES (?, ?), …)` for composite keys.
fn key_in(t: &TableDiff, rows: &[&[Value]], args: &mut Vec<Value>) -> String {
    let keys: Vec<String> = t.key.iter().map(|&k| sql::ident(&t.columns[k])).collect();
    let mut out = String::new();
    if keys.len() == 1 {
        out.push_str(&keys[0]);
        out.push_str(" IN (");
        for (i, r) in rows.iter().enumerate() {
            out.push_str(if i == 0 { "?" } else { ",?" });
            args.push(r[t.key[0]].clone());
        }
        out.push(')');
    } else {
        out.push_str(&format!("({}) IN (VALUES ", keys.join(", ")));
        for (i, r) in rows.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            out.push('(');
            for (j, &k) in t.key.iter().enumerate() {
                out.push_str(if j == 0 { "?" } else { ",?" });
                args.push(r[k].clone());
            }
            out.push(')');
        }
        out.push(')');
    }
    out
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
/// index just before its writes and just after its commit. Or the conflicts that stopped it.
type Outcome = Result<Committed, Vec<Conflict>>;

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

impl TablePlan<'_> {
    fn is_virtual(&self) -> bool {
        self.diff.table.key == RowKey::Virtual
    }

    /// SELECTs returning the remote's current version of every row this plan touches, with
    /// `cols` as the select list (in row layout).
    fn reads(&self, cols: &[String]) -> Vec<(Stmt, usize)> {
        // Always the exact select list: a value the server cannot encode would fail the whole
        // request, and with it the stream and its transaction.
        let cols = sql::exact_select_list(cols);
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
            let mut args = Vec::new();
            let cond = key_in(t, &rows[start..end], &mut args);
            out.push((
                stmt(
                    format!(
                        "SELECT {cols} FROM {} WHERE {cond}",
                        sql::ident(&t.table.name)
                    ),
                    args,
                    true,
                ),
                bytes,
            ));
            start = end;
        }
        out
    }

    /// The statements that apply `todo` (the changes still needed).
    fn writes(&self, todo: &[&RowChange]) -> Vec<(Stmt, usize, usize)> {
        let t = self.diff;
        let name = sql::ident(&t.table.name);
        let mut out = Vec::new();
        let (deletes, updates, inserts) = t.phases(todo.iter().copied());
        let updates: Vec<&[Value]> = updates.into_iter().map(RowChange::row).collect();
        let virt = self.is_virtual();
        for part in chunks(&deletes, if virt { usize::MAX } else { t.key.len() }) {
            let mut args = Vec::new();
            let cond = key_in(t, part, &mut args);
            out.push((
                stmt(format!("DELETE FROM {name} WHERE {cond}"), args, false),
                part.len(),
                part.len(),
            ));
        }
        let set_cols: Vec<usize> = (0..t.columns.len())
            .filter(|i| !t.key.contains(i))
            .collect();
        if !set_cols.is_empty() {
            if virt {
                for row in &updates {
                    let mut args = Vec::new();
                    let sets: Vec<String> = set_cols
                        .iter()
                        .map(|&c| {
                            args.push(row[c].clone());
                            format!("{} = ?", sql::ident(&t.columns[c]))
                        })
                        .collect();
                    let cond = key_in(t, &[row], &mut args);
                    out.push((
                        stmt(
                            format!(
                                "UPDATE OR ABORT {name} SET {} WHERE {cond}",
                                sets.join(", ")
                            ),
                            args,
                            false,
                        ),
                        1,
                        1,
                    ));
                }
            } else {
                // VALUES columns are named column1, column2…: keys first, then the new values.
                for part in chunks(&updates, t.columns.len()) {
                    let mut args = Vec::new();
                    let mut values = String::new();
                    for (i, row) in part.iter().enumerate() {
                        values.push_str(if i == 0 { "(" } else { ",(" });
                        for (j, v) in t
                            .key
                            .iter()
                            .chain(set_cols.iter())
                            .map(|&c| &row[c])
                            .enumerate()
                        {
                            values.push_str(if j == 0 { "?" } else { ",?" });
                            args.push(v.clone());
                        }
                        values.push(')');
                    }
                    let nk = t.key.len();
                    let sets: Vec<String> = set_cols
                        .iter()
                        .enumerate()
                        .map(|(j, &c)| {
                            format!("{} = v.column{}", sql::ident(&t.columns[c]), nk + j + 1)
                        })
                        .collect();
                    let cond: Vec<String> = t
                        .key
                        .iter()
                        .enumerate()
                        .map(|(j, &k)| {
                            format!("{name}.{} = v.column{}", sql::ident(&t.columns[k]), j + 1)
                        })
                        .collect();
                    out.push((
                        stmt(
                            format!(
                                "UPDATE OR ABORT {name} SET {} FROM (VALUES {values}) AS v WHERE {}",
                                sets.join(", "),
                                cond.join(" AND ")
                            ),
                            args,
                            false,
                        ),
                        part.len(),
                        part.len(),
                    ));
                }
            }
        }
        let cols = t
            .columns
            .iter()
            .map(|c| sql::ident(c))
            .collect::<Vec<_>>()
            .join(", ");
        let marks = format!("({})", vec!["?"; t.columns.len()].join(","));
        for part in chunks(&inserts, t.columns.len()) {
            let args: Vec<Value> = part.iter().flat_map(|r| r.iter().cloned()).collect();
            let values = vec![marks.as_str(); part.len()].join(",");
            out.push((
                stmt(
                    format!("INSERT OR ABORT INTO {name} ({cols}) VALUES {values}"),
                    args,
                    false,
                ),
                part.len(),
                part.len(),
            ));
        }
        out
    }
}

/// The select list that reads a table's rows on the remote in the changeset's row layout, or
/// `None` when the remote cannot hold any of its rows yet: the table is missing, or it is to be
/// rebuilt (dropped and re-created, rows and all). A table still lacking columns that
/// `ADD COLUMN` appended reads their defaults instead, as its rows will after the ALTER.
fn remote_select(cs: &Changeset, t: &TableDiff, remote: &RemoteSchema) -> Option<Vec<String>> {
    let remote_sql = remote
        .objects
        .get(&("table".to_owned(), t.table.name.clone()))?;
    let plain = || t.columns.iter().map(|c| sql::ident(c)).collect::<Vec<_>>();
    if remote_sql == &t.table.sql {
        return Some(plain());
    }
    for ch in &cs.schema {
        match ch {
            SchemaChange::TableRebuilt { name, .. } if name == &t.table.name => return None,
            SchemaChange::ColumnsAdded { table, columns, .. } if table == &t.table.name => {
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
                return Some(cols);
            }
            _ => {}
        }
    }
    Some(plain())
}

/// Classifies each change against the remote row: needed, already there, or a conflict.
fn classify<'a>(
    plan: &TablePlan<'a>,
    remote_rows: &HashMap<String, Vec<Value>>,
    todo: &mut Vec<&'a RowChange>,
    skipped: &mut usize,
    conflicts: &mut Vec<Conflict>,
) {
    let t = plan.diff;
    for ch in plan.changes {
        let key = t.key_text(ch.row());
        let remote = remote_rows.get(&key);
        let (base, local): (Option<&Vec<Value>>, Option<&Vec<Value>>) = match ch {
            RowChange::Insert(r) => (None, Some(r)),
            RowChange::Delete(r) => (Some(r), None),
            RowChange::Update { old, new } => (Some(old), Some(new)),
        };
        if remote == base {
            todo.push(ch);
        } else if remote == local {
            *skipped += 1;
        } else {
            conflicts.push(Conflict {
                table: t.table.name.clone(),
                kind: ConflictKind::Row,
                columns: t.columns.clone(),
                key: t.key.iter().map(|&k| ch.row()[k].clone()).collect(),
                base: base.cloned(),
                local: local.cloned(),
                remote: remote.cloned(),
                constraint: None,
            });
        }
    }
}

/// The rows of `tables` on the remote whose foreign keys point at nothing, as (table, rowid,
/// parent, fkid), read inside the push's transaction.
fn orphans(
    stream: &mut Stream<'_>,
    tables: &std::collections::BTreeSet<String>,
    report: &mut PushReport,
) -> Result<std::collections::BTreeSet<Orphan>> {
    if tables.is_empty() {
        return Ok(Default::default());
    }
    let checks = tables
        .iter()
        .map(|t| stmt(crate::schema::orphans_sql(t), vec![], true))
        .collect();
    let mut out = std::collections::BTreeSet::new();
    let text = crate::schema::text;
    for res in send(stream, checks, report)? {
        for row in res.rows {
            let [t, rowid, p, Value::Integer(fkid)] = &row[..] else {
                return Err(Error::Refused(format!(
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
            conflicts.push(Conflict {
                table: table.to_owned(),
                kind: ConflictKind::Unique,
                columns: t.columns.clone(),
                key: t.key.iter().map(|&k| row[k].clone()).collect(),
                base: None,
                local: Some(row.to_vec()),
                remote: Some(holder),
                constraint: Some(constraint.clone()),
            });
        }
    }
    Ok((!conflicts.is_empty()).then_some(conflicts))
}

/// The remote's schema, as read inside the push transaction.
struct RemoteSchema {
    objects: HashMap<(String, String), String>,
    triggers: Vec<(String, String)>,
    sequences: HashMap<String, i64>,
}

fn read_schema(res: StmtResult, seq: Option<StmtResult>) -> Result<RemoteSchema> {
    let text = crate::schema::text;
    let mut objects = HashMap::new();
    let mut triggers = Vec::new();
    for r in &res.rows {
        let [ty, name, sqltext] = r.as_slice() else {
            return Err(SchemaError::Malformed(format!("remote sqlite_schema row {r:?}")).into());
        };
        let name = text(name, "remote sqlite_schema.name")?;
        let ty = text(ty, &format!("remote sqlite_schema.type of {name:?}"))?;
        let sqltext = text(sqltext, &format!("remote sqlite_schema.sql of {name:?}"))?;
        if ty == "trigger" {
            triggers.push((name.clone(), sqltext.clone()));
        }
        objects.insert((ty, name), sqltext);
    }
    let mut sequences = HashMap::new();
    for r in seq.map(|s| s.rows).unwrap_or_default() {
        match r.as_slice() {
            [name, Value::Integer(v)] => {
                sequences.insert(text(name, "remote sqlite_sequence.name")?, *v);
            }
            _ => {
                return Err(
                    SchemaError::Malformed(format!("remote sqlite_sequence row {r:?}")).into(),
                )
            }
        }
    }
    Ok(RemoteSchema {
        objects,
        triggers,
        sequences,
    })
}

/// A schema change the remote does not allow: someone else changed the same object.
fn schema_conflict(what: &str) -> Error {
    Error::Conflict(format!(
        "{what} changed on the remote since your last sync; nothing was pushed. Run `tursync pull` to bring the remote's change in first"
    ))
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
fn plan_schema(cs: &Changeset, remote: &RemoteSchema) -> Result<SchemaPlan> {
    let has = |ty: &str, name: &str| remote.objects.get(&(ty.to_owned(), name.to_owned()));
    // Object drops go before table DDL (a dropped table takes its indexes with it).
    let mut drops = Vec::new();
    let mut before = Vec::new();
    let mut views = Vec::new();
    let mut index_drops = Vec::new();
    let mut after = Vec::new();
    // Triggers: the remote's must be the base's or already the working copy's.
    let mut base_tr = cs.base_triggers.clone();
    let mut new_tr = cs.new_triggers.clone();
    let mut remote_tr = remote.triggers.clone();
    base_tr.sort();
    new_tr.sort();
    remote_tr.sort();
    if remote_tr != base_tr && remote_tr != new_tr {
        return Err(schema_conflict("a trigger"));
    }
    for (name, _) in &remote.triggers {
        drops.push(format!("DROP TRIGGER {}", sql::ident(name)));
    }
    for ch in &cs.schema {
        match ch {
            SchemaChange::TableAdded { name, sql: create } => match has("table", name) {
                None => before.push(create.clone()),
                Some(s) if s == create => {}
                Some(_) => return Err(schema_conflict(&format!("table {name:?}"))),
            },
            SchemaChange::TableDropped { name, sql: old } => match has("table", name) {
                Some(s) if s == old => before.push(format!("DROP TABLE {}", sql::ident(name))),
                None => {}
                Some(_) => return Err(schema_conflict(&format!("table {name:?}"))),
            },
            // Re-creating a table would replace every row in it, including rows others changed
            // since the last sync, which no per-row check covers; so it is refused.
            SchemaChange::TableRebuilt { name, new_sql, .. } => match has("table", name) {
                Some(s) if s == new_sql => {}
                _ => {
                    return Err(Error::Refused(format!(
                        "table {name:?} changed in a way push cannot apply safely (only new tables, dropped tables and ADD COLUMN are pushed). \
                         Apply the change on the remote itself (SQLite's 12-step table rebuild), then run `tursync init --force`"
                    )))
                }
            },
            SchemaChange::ColumnsAdded {
                table,
                columns,
                old_sql,
            } => {
                let new_sql = cs
                    .tables
                    .iter()
                    .find(|t| &t.table.name == table)
                    .map(|t| t.table.sql.clone());
                match has("table", table) {
                    Some(s) if Some(s) == new_sql.as_ref() => {}
                    Some(s) if s == old_sql => {
                        for c in columns {
                            before
                                .push(format!("ALTER TABLE {} ADD COLUMN {c}", sql::ident(table)));
                        }
                    }
                    _ => return Err(schema_conflict(&format!("table {table:?}"))),
                }
            }
            SchemaChange::ObjectDropped {
                kind,
                name,
                sql: old,
            } if *kind != ObjectKind::Trigger => match has(kind.as_str(), name) {
                Some(s) if s == old => drops.push(kind.drop_sql(name)),
                None => {}
                Some(_) => return Err(schema_conflict(&format!("{} {name:?}", kind.as_str()))),
            },
            SchemaChange::ObjectChanged {
                kind,
                name,
                old_sql,
                new_sql,
            } if *kind != ObjectKind::Trigger => {
                let (drop_list, create_list) = match kind {
                    ObjectKind::Index => (&mut index_drops, &mut after),
                    _ => (&mut drops, &mut views),
                };
                match has(kind.as_str(), name) {
                    Some(s) if s == old_sql => {
                        drop_list.push(kind.drop_sql(name));
                        create_list.push(new_sql.clone());
                    }
                    Some(s) if s == new_sql && old_sql != new_sql => {}
                    // An index of a table that was rebuilt (with the same definition) on the
                    // remote went with it.
                    None if old_sql == new_sql => create_list.push(new_sql.clone()),
                    _ => return Err(schema_conflict(&format!("{} {name:?}", kind.as_str()))),
                }
            }
            SchemaChange::ObjectAdded {
                kind,
                name,
                sql: create,
            } if *kind != ObjectKind::Trigger => match has(kind.as_str(), name) {
                None if *kind == ObjectKind::Index => after.push(create.clone()),
                None => views.push(create.clone()),
                Some(s) if s == create => {}
                Some(_) => return Err(schema_conflict(&format!("{} {name:?}", kind.as_str()))),
            },
            _ => {}
        }
    }
    // Rows may only go into tables whose definition is the one they were diffed against.
    for t in cs.tables.iter().filter(|t| !t.changes.is_empty()) {
        let reshaped = cs.schema.iter().any(|c| match c {
            SchemaChange::TableAdded { name, .. } | SchemaChange::TableRebuilt { name, .. } => {
                name == &t.table.name
            }
            SchemaChange::ColumnsAdded { table, .. } => table == &t.table.name,
            _ => false,
        });
        if !reshaped && has("table", &t.table.name) != Some(&t.table.sql) {
            return Err(schema_conflict(&format!("table {:?}", t.table.name)));
        }
    }
    for (_, create) in &cs.new_triggers {
        after.push(create.clone());
    }
    drops.extend(before);
    Ok(SchemaPlan {
        before: drops,
        views,
        index_drops,
        after,
    })
}

/// Sends requests on the push stream and fails on the first statement error.
fn send(
    stream: &mut Stream<'_>,
    stmts: Vec<Stmt>,
    report: &mut PushReport,
) -> Result<Vec<StmtResult>> {
    let reqs: Vec<StreamRequest> = stmts
        .into_iter()
        .map(|stmt| StreamRequest::Execute { stmt })
        .collect();
    report.requests += 1;
    stream
        .send(&reqs)?
        .into_iter()
        .map(|r| r.map_err(Error::from))
        .collect()
}

/// Rolls back and closes the stream after a failure; the server would do it anyway when the
/// stream expires, but this frees the write lock at once.
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
) -> Result<Result<PushReport, Vec<Conflict>>> {
    let _lock = ws.lock()?;
    let cs = ws.diff(&Default::default())?;
    let report = PushReport {
        changes: cs.change_count(),
        ..PushReport::default()
    };
    if cs.is_empty() {
        return Ok(Ok(report));
    }
    let fks = foreign_keys(&ws.open_working_copy(true)?)?;
    let fk_scope = foreign_key_scope(&fks, cs.tables.iter().map(|t| t.table.name.as_str()));
    let fresh_record = ws.record_push_start(&cs)?;
    let total_rows: usize = cs.tables.iter().map(|t| t.changes.len()).sum();
    progress.start("push", total_rows as u64);

    // Cut the row changes into transactions of at most `rows_per_transaction`.
    let mut groups: Vec<Vec<TablePlan<'_>>> = vec![Vec::new()];
    let mut in_group = 0;
    let limit = opts.rows_per_transaction.max(1);
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
    // The base is about to move by our changeset, away from any mirror point: forget it first,
    // so a crash from here on can never pair the moved base with the mirror's old content.
    if state.base_at.is_some() {
        ws.save_sync_state(&crate::workspace::SyncState {
            base_at: None,
            ..state.clone()
        })?;
    }
    let mut index = None;
    for (gi, group) in groups.iter().enumerate() {
        let txn = Txn {
            cs: &cs,
            group,
            fk_scope: &fk_scope,
            first: gi == 0,
            last: gi == last,
        };
        // A transaction that failed on the way (its COMMIT answer lost, say) runs again from
        // the start: it re-reads every row and skips those already there, so a change never
        // lands twice.
        let (report_before, log_before) = (run.report.clone(), run.log.len());
        let attempt = remote.retrying(|| {
            run.report = report_before.clone();
            run.log.truncate(log_before);
            push_transaction(remote, &txn, &mut run)
        });
        let outcome = match attempt {
            Err(Error::Remote(RemoteError::Sql { message, code })) => {
                match unique_conflicts(remote, &cs, &message)? {
                    Some(conflicts) => Err(conflicts),
                    None => return Err(RemoteError::Sql { message, code }.into()),
                }
            }
            other => other?,
        };
        match outcome {
            Ok(done) => {
                final_sequences.extend(done.sequences);
                // The remote is known to equal the new base only if nobody else wrote since
                // the last sync and this push ran as one transaction.
                index = if groups.len() == 1 && known.is_some() && done.index_before == known {
                    done.index_after
                } else {
                    None
                };
            }
            Err(conflicts) => {
                // Refused in its first transaction: nothing of this push reached the remote.
                if gi == 0 && fresh_record && !run.commit_sent {
                    ws.drop_push_record()?;
                }
                return Ok(Err(conflicts));
            }
        }
        run.report.transactions += 1;
    }
    progress.finish();
    let mut report = run.report;
    report.log = Some(ws.record_push(&cs, &final_sequences, &run.log, fresh_record)?);
    ws.save_sync_state(&crate::workspace::SyncState {
        replication_index: index,
        base_at: None,
        ..state
    })?;
    Ok(Ok(report))
}

/// One transaction's share of the changeset.
struct Txn<'a, 'g> {
    cs: &'a Changeset,
    group: &'g [TablePlan<'a>],
    /// The tables whose foreign keys the push may break (see [`foreign_key_scope`]).
    fk_scope: &'a std::collections::BTreeSet<String>,
    first: bool,
    last: bool,
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

fn push_transaction(remote: &Remote, txn: &Txn<'_, '_>, run: &mut Run<'_>) -> Result<Outcome> {
    let mut stream = remote.stream();
    let result = push_transaction_on(&mut stream, txn, run);
    match &result {
        Ok(Ok(_)) => {
            let _ = stream.send(&[StreamRequest::Close]);
        }
        Ok(Err(_)) | Err(_) => abandon(&mut stream),
    }
    result
}

fn push_transaction_on(
    stream: &mut Stream<'_>,
    txn: &Txn<'_, '_>,
    run: &mut Run<'_>,
) -> Result<Outcome> {
    let Txn {
        cs,
        group,
        fk_scope,
        first,
        last,
    } = *txn;
    let Run {
        report,
        log,
        progress,
        orphans_before,
        commit_sent,
    } = run;
    // Request 1: open the transaction and read the schema, which says how to read the rows.
    let head = vec![
        stmt("PRAGMA foreign_keys = OFF".into(), vec![], false),
        stmt("BEGIN IMMEDIATE".into(), vec![], false),
        stmt(
            "SELECT type, name, sql FROM sqlite_schema WHERE sql IS NOT NULL".into(),
            vec![],
            true,
        ),
    ];
    let schema_rows = send(stream, head, report)?.pop().unwrap_or_default();
    let index_before = schema_rows.replication_index();
    let mut schema = read_schema(schema_rows, None)?;
    let has_sequence = schema
        .objects
        .keys()
        .any(|(ty, name)| ty == "table" && name == "sqlite_sequence");
    if last && !cs.sequences.is_empty() && has_sequence {
        let seq = stmt("SELECT name, seq FROM sqlite_sequence".into(), vec![], true);
        if let Some(res) = send(stream, vec![seq], report)?.pop() {
            schema.sequences = read_schema(StmtResult::default(), Some(res))?.sequences;
        }
    }

    // Then every touched row, in requests bounded by expected response size.
    let mut reads: Vec<(usize, Stmt, usize)> = Vec::new();
    for (pi, plan) in group.iter().enumerate() {
        if let Some(cols) = remote_select(cs, plan.diff, &schema) {
            for (s, bytes) in plan.reads(&cols) {
                reads.push((pi, s, bytes));
            }
        }
    }
    let mut remote_rows: Vec<HashMap<String, Vec<Value>>> = vec![HashMap::new(); group.len()];
    let mut reads = reads.into_iter().peekable();
    while reads.peek().is_some() {
        let mut bytes = 0;
        let mut pending: Vec<(usize, Stmt, usize)> = Vec::new();
        while let Some((_, _, b)) = reads.peek() {
            if !pending.is_empty() && bytes + b > BYTES_PER_REQUEST {
                break;
            }
            bytes += b;
            pending.push(reads.next().expect("peeked"));
        }
        let owners: Vec<usize> = pending.iter().map(|(pi, _, _)| *pi).collect();
        let results = send(
            stream,
            pending.into_iter().map(|(_, s, _)| s).collect(),
            report,
        )?;
        for (pi, res) in owners.into_iter().zip(results) {
            let t = group[pi].diff;
            for row in res.exact_rows()? {
                remote_rows[pi].insert(t.key_text(&row), row);
            }
        }
    }

    // Decide, row by row.
    let mut conflicts = Vec::new();
    let mut todo: Vec<Vec<&RowChange>> = Vec::with_capacity(group.len());
    for (pi, plan) in group.iter().enumerate() {
        let mut t = Vec::new();
        classify(
            plan,
            &remote_rows[pi],
            &mut t,
            &mut report.skipped,
            &mut conflicts,
        );
        todo.push(t);
    }
    if !conflicts.is_empty() {
        return Ok(Err(conflicts));
    }
    let ddl = plan_schema(cs, &schema)?;
    // Foreign keys are off on this stream (the changeset holds what cascades did locally), so
    // orphans are looked for instead: those the push would add are conflicts.
    if first {
        *orphans_before = Some(orphans(stream, fk_scope, report)?);
    }

    // The writes, in requests of bounded size; the last one commits.
    let mut writes: Vec<(Stmt, usize, usize)> = Vec::new();
    let ddl_stmt = |s: &String| (stmt(s.clone(), vec![], false), 0, 0);
    if first {
        writes.extend(ddl.before.iter().map(ddl_stmt));
    } else {
        writes.extend(
            schema
                .triggers
                .iter()
                .map(|(n, _)| ddl_stmt(&format!("DROP TRIGGER {}", sql::ident(n)))),
        );
    }
    if last {
        writes.extend(ddl.index_drops.iter().map(ddl_stmt));
    }
    for (plan, t) in group.iter().zip(&todo) {
        writes.extend(plan.writes(t));
    }
    if first {
        writes.extend(ddl.views.iter().map(ddl_stmt));
    }
    let mut sequences = Vec::new();
    if last {
        for q in &cs.sequences {
            let value = match (q.new, schema.sequences.get(&q.table)) {
                // AUTOINCREMENT never reuses a number: keep the larger counter.
                (Some(n), Some(&r)) => Some(n.max(r)),
                (n, _) => n,
            };
            writes.push(ddl_stmt(&format!(
                "DELETE FROM sqlite_sequence WHERE name = {}",
                sql::text_literal(&q.table)
            )));
            if let Some(v) = value {
                writes.push(ddl_stmt(&format!(
                    "INSERT INTO sqlite_sequence(name, seq) VALUES ({}, {v})",
                    sql::text_literal(&q.table)
                )));
            }
            sequences.push((q.table.clone(), value));
        }
        writes.extend(ddl.after.iter().map(ddl_stmt));
        if let Some(v) = cs.user_version {
            writes.push(ddl_stmt(&format!("PRAGMA user_version = {v}")));
        }
    } else {
        writes.extend(cs.new_triggers.iter().map(|(_, s)| ddl_stmt(s)));
    }

    let mut batch: Vec<Stmt> = Vec::new();
    let mut expect: Vec<usize> = Vec::new();
    let mut bytes = 0;
    let total = writes.len();
    for (i, (s, rows, affected)) in writes.into_iter().enumerate() {
        log_stmt(log, &s);
        bytes += s
            .args
            .iter()
            .map(crate::remote::proto::json_size)
            .sum::<usize>()
            + s.sql.len();
        report.applied += rows;
        batch.push(s);
        expect.push(affected);
        if bytes > BYTES_PER_REQUEST || i + 1 == total {
            let results = send(stream, std::mem::take(&mut batch), report)?;
            for (res, want) in results.iter().zip(&expect) {
                if *want > 0 && res.affected_row_count as usize != *want {
                    return Err(Error::Refused(format!(
                        "the remote changed {} rows where {want} were expected; the push was rolled back",
                        res.affected_row_count
                    )));
                }
            }
            progress.advance(expect.iter().sum::<usize>() as u64);
            expect.clear();
            bytes = 0;
        }
    }
    let added: std::collections::BTreeSet<Orphan> = match (last, &*orphans_before) {
        (false, _) => Default::default(),
        (true, Some(before)) => orphans(stream, fk_scope, report)?
            .difference(before)
            .cloned()
            .collect(),
        (true, None) => {
            return Err(Error::Refused(
                "the push reached its last transaction without reading the remote's orphans in its first".into(),
            ))
        }
    };
    let orphaned: Vec<Conflict> = added
        .iter()
        .map(|(child, rowid, parent, _)| Conflict {
            table: child.clone(),
            kind: ConflictKind::ForeignKey,
            columns: Vec::new(),
            key: rowid.map(Value::Integer).into_iter().collect(),
            base: None,
            local: None,
            remote: None,
            constraint: Some(format!("FOREIGN KEY of {child} REFERENCES {parent}")),
        })
        .collect();
    if !orphaned.is_empty() {
        return Ok(Err(orphaned));
    }
    // COMMIT travels alone, once every write is known to have succeeded: statements of one
    // pipeline run even after an earlier one failed, so a COMMIT sent with them could commit
    // half a push.
    *commit_sent = true;
    let commit = send(stream, vec![stmt("COMMIT".into(), vec![], false)], report)?;
    Ok(Ok(Committed {
        sequences,
        index_before,
        index_after: commit.first().and_then(StmtResult::replication_index),
    }))
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

impl Workspace {
    /// Moves the base by exactly `cs` (plus the AUTOINCREMENT counters as written to the
    /// remote), atomically, and keeps the SQL that was sent under `.tursync/pushes/`. The
    /// push's own record (`fresh`) already holds base + `cs` and becomes the base; an older
    /// record, left by an interrupted push, is dropped, since the base now covers it too.
    fn record_push(
        &self,
        cs: &Changeset,
        sequences: &[(String, Option<i64>)],
        log: &str,
        fresh: bool,
    ) -> Result<PathBuf> {
        let dir = self.state_dir().join("pushes");
        std::fs::create_dir_all(&dir)?;
        let stamp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis())
            .unwrap_or(0);
        let log_path = dir.join(format!("{stamp}.sql"));
        std::fs::write(&log_path, log)?;

        let counters = |conn: &rusqlite::Connection| {
            for (name, v) in sequences {
                crate::workspace::set_sequence(conn, name, *v)?;
            }
            Ok(())
        };
        if fresh {
            self.finish_push_record(counters)?;
        } else {
            self.replace_base(|conn| {
                cs.apply(conn)?;
                counters(conn)
            })?;
            self.drop_push_record()?;
        }
        Ok(log_path)
    }
}
