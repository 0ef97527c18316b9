//! Each table's rows in a push: the reads that find them on the remote, the writes that turn
//! them into ours (multi-row statements within the request's limits), and whether each change
//! applies, is already there (a re-run after a crash) or conflicts.

use std::collections::HashMap;

use super::schema::Source;
use super::{BYTES_PER_REQUEST, MAX_PARAMS, ROWS_PER_STMT};
use crate::changeset::{Changeset, RowChange, TableDiff};
use crate::conflict::{Conflict, ConflictKind};
use crate::remote::{Remote, Stmt};
use crate::schema::{parse_unique_failure, RowKey, UniqueFailure};
use crate::sql;
use crate::value::Value;
use crate::Result;

fn row_bytes(row: &[Value]) -> usize {
    row.iter().map(crate::remote::proto::json_size).sum()
}

/// The key values of `rows`, row after row: the arguments of [`sql::key_in`] and its kin.
fn key_args(t: &TableDiff, rows: &[&[Value]]) -> Vec<Value> {
    rows.iter()
        .flat_map(|r| t.key.iter().map(|&k| r[k].clone()))
        .collect()
}

pub(super) fn stmt(sql: String, args: Vec<Value>, want_rows: bool) -> Stmt {
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

/// The plan for one table within one transaction.
pub(super) struct TablePlan<'a> {
    pub(super) diff: &'a TableDiff,
    pub(super) changes: &'a [RowChange],
}

/// A statement that changes the remote, with the number of row changes it carries: the rows
/// it must affect, or 0 for DDL and counters, whose effect is not counted.
#[derive(Debug)]
pub(super) struct Write {
    pub(super) stmt: Stmt,
    pub(super) rows: usize,
}

impl Write {
    /// A write of `rows` row changes, which it must affect exactly.
    fn rows(sql: String, args: Vec<Value>, rows: usize) -> Write {
        Write {
            stmt: stmt(sql, args, false),
            rows,
        }
    }

    pub(super) fn ddl(sql: impl Into<String>) -> Write {
        Write::uncounted(sql, vec![])
    }

    /// A statement whose effect is not counted.
    pub(super) fn uncounted(sql: impl Into<String>, args: Vec<Value>) -> Write {
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
    pub(super) fn reads(&self, source: &Source) -> Vec<(Stmt, usize)> {
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
    pub(super) fn writes(&self, todo: &[&RowChange]) -> Vec<Write> {
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

/// Classifies each change against the remote row: needed (the remote holds the base row),
/// already there (it holds ours: a re-run converges), or a conflict. Returns the changes still
/// needed, table by table, or every conflict.
pub(super) fn classify<'a>(
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

/// When a push broke a UNIQUE constraint on the remote (`message` is SQLite's, e.g. `UNIQUE
/// constraint failed: users.email`), the conflicts: each row of ours in that table whose
/// values under the constraint another remote row holds, with that row. Read after the
/// push's transaction was rolled back, so the remote is as the push found it. `None` when the
/// message names no constraint whose rows can be matched (an index on expressions).
pub(super) fn unique_conflicts(
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
