//! Transactions on a server without streams (Turso Sync's `/v2/pipeline` takes only `execute`
//! and `batch` requests: no baton, no `close`, no `sequence`).
//!
//! Without a baton nothing stays open between two HTTP requests, so a transaction that reads,
//! decides and then writes (push) is run optimistically: between `BEGIN` and `COMMIT`, reads
//! run at once and their answers are kept; writes are kept too, and answered with the number
//! of rows the caller expects them to change ([`Deferred::expect`]). A read after a write runs
//! in a trial batch (`BEGIN`, the writes so far, the read, `ROLLBACK`), so it sees the
//! transaction's own writes. `COMMIT` sends everything as one batch: `BEGIN`, then each read
//! again as a guard that fails unless it returns the same rows, each write followed by a check
//! of `changes()`, then `COMMIT`, every step on condition that the one before succeeded. So the
//! transaction commits whole or not at all, and only if nothing it read moved meanwhile; a
//! guard that fails is [`RemoteError::Raced`], which passes: the caller runs the whole
//! transaction again from its reads.

use std::collections::VecDeque;

use super::proto::{Batch, BatchCond, BatchPipelineResp, BatchResult, BatchStep, ErrorBody};
use super::{Remote, RemoteError, Stmt, StmtResult, StreamRequest};
use crate::sql;

/// An expression that fails when evaluated: SQLite (and Turso) raise "integer overflow".
const FAIL: &str = "abs(-9223372036854775808)";

/// What a step of the final batch is, to name the error of the step that failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    Setup,
    Guard,
    Write,
    Changes,
    Read,
    Commit,
    Rollback,
}

/// One kept statement of an open transaction.
#[derive(Debug)]
enum Entry {
    /// A read and the rows it returned.
    Read {
        stmt: Stmt,
        rows: Vec<Vec<crate::value::Value>>,
    },
    /// A write and how many rows it must change (when counted).
    Write { stmt: Stmt, changes: Option<usize> },
}

/// A stream's state on a server without streams.
#[derive(Debug, Default)]
pub(super) struct Deferred {
    /// Connection settings (`PRAGMA foreign_keys = OFF`) sent before each batch's `BEGIN`.
    setup: Vec<Stmt>,
    /// `Some` between `BEGIN` and `COMMIT`/`ROLLBACK`.
    txn: Option<Vec<Entry>>,
    /// Row counts the next writes must change (0: not counted).
    expect: VecDeque<usize>,
}

fn plain(sql: &str) -> Stmt {
    Stmt {
        sql: sql.to_owned(),
        args: vec![],
        want_rows: false,
    }
}

/// The statement's first keyword, upper case.
fn verb(sql: &str) -> String {
    sql.trim_start()
        .split(|c: char| !c.is_ascii_alphabetic())
        .next()
        .unwrap_or("")
        .to_ascii_uppercase()
}

fn is_read(stmt: &Stmt) -> bool {
    stmt.want_rows
        && match verb(&stmt.sql).as_str() {
            "SELECT" | "WITH" | "VALUES" => true,
            "PRAGMA" => !stmt.sql.contains('='),
            _ => false,
        }
}

/// Statements that fail unless `read` returns exactly `rows` (as a set: reads by key return
/// each row once). None for `PRAGMA` reads, which cannot be a subquery.
fn guards(read: &Stmt, rows: &[Vec<crate::value::Value>]) -> Vec<Stmt> {
    if verb(&read.sql) == "PRAGMA" {
        return vec![];
    }
    let (q, _) = sql::inline_args(&read.sql, &read.args, |_| true);
    let q = q.trim().trim_end_matches(';');
    let check = |from: String| {
        plain(&format!(
            "SELECT CASE WHEN count(*) = 0 THEN 1 ELSE {FAIL} END FROM ({from})"
        ))
    };
    if rows.is_empty() {
        return vec![check(q.to_owned())];
    }
    let mut values = String::from("VALUES ");
    for (i, row) in rows.iter().enumerate() {
        if i > 0 {
            values.push(',');
        }
        values.push('(');
        for (j, v) in row.iter().enumerate() {
            if j > 0 {
                values.push(',');
            }
            sql::push_literal(&mut values, v);
        }
        values.push(')');
    }
    vec![
        check(format!("SELECT * FROM ({q}) EXCEPT {values}")),
        check(format!("{values} EXCEPT SELECT * FROM ({q})")),
    ]
}

impl Deferred {
    /// Row counts the next writes must change, in order (0: not counted).
    pub(super) fn expect(&mut self, counts: &[usize]) {
        self.expect.extend(counts);
    }

    /// Runs `requests` as a stream would, one result per request.
    pub(super) fn send(
        &mut self,
        remote: &Remote,
        requests: &[StreamRequest],
    ) -> Result<Vec<Result<StmtResult, RemoteError>>, RemoteError> {
        let mut out: Vec<Option<Result<StmtResult, RemoteError>>> =
            (0..requests.len()).map(|_| None).collect();
        let mut reads: Vec<(usize, Stmt)> = Vec::new();
        for (i, req) in requests.iter().enumerate() {
            let stmt = match req {
                StreamRequest::Close => {
                    out[i] = Some(Ok(StmtResult::default()));
                    continue;
                }
                StreamRequest::Sequence { .. } | StreamRequest::Batch { .. } => {
                    return Err(RemoteError::Protocol(
                        "a server without streams was sent a request tursync only sends to sqld"
                            .into(),
                    ))
                }
                StreamRequest::Execute { stmt } => stmt,
            };
            let read = is_read(stmt) || (self.txn.is_none() && stmt.want_rows);
            if read {
                reads.push((i, stmt.clone()));
                continue;
            }
            self.flush_reads(remote, std::mem::take(&mut reads), &mut out)?;
            out[i] = Some(self.statement(remote, stmt)?);
        }
        self.flush_reads(remote, reads, &mut out)?;
        Ok(out
            .into_iter()
            .map(|r| r.unwrap_or_else(|| Err(RemoteError::Protocol("missing result".into()))))
            .collect())
    }

    /// A statement that is not a read: transaction control, a setting, or a write.
    fn statement(
        &mut self,
        remote: &Remote,
        stmt: &Stmt,
    ) -> Result<Result<StmtResult, RemoteError>, RemoteError> {
        let verb = verb(&stmt.sql);
        let Some(entries) = self.txn.as_mut() else {
            return Ok(match verb.as_str() {
                "BEGIN" => {
                    self.txn = Some(Vec::new());
                    self.expect.clear();
                    Ok(StmtResult::default())
                }
                "PRAGMA" => {
                    self.setup.push(stmt.clone());
                    Ok(StmtResult::default())
                }
                "ROLLBACK" | "COMMIT" | "END" => Ok(StmtResult::default()),
                _ => single(remote, stmt)?,
            });
        };
        Ok(match verb.as_str() {
            "COMMIT" | "END" => {
                let entries = self.txn.take().unwrap_or_default();
                self.commit(remote, entries)
            }
            "ROLLBACK" => {
                self.txn = None;
                Ok(StmtResult::default())
            }
            _ => {
                let changes = self.expect.pop_front().filter(|&n| n > 0);
                entries.push(Entry::Write {
                    stmt: stmt.clone(),
                    changes,
                });
                Ok(StmtResult {
                    affected_row_count: changes.unwrap_or(0) as u64,
                    ..StmtResult::default()
                })
            }
        })
    }

    /// Runs reads: at once outside a transaction or before its first write, else in a trial
    /// batch after the transaction's writes. Inside a transaction each is kept for its guard.
    fn flush_reads(
        &mut self,
        remote: &Remote,
        reads: Vec<(usize, Stmt)>,
        out: &mut [Option<Result<StmtResult, RemoteError>>],
    ) -> Result<(), RemoteError> {
        if reads.is_empty() {
            return Ok(());
        }
        let mut reads = reads;
        by_hand_orphan_checks(remote, &mut reads)?;
        let written = self
            .txn
            .as_ref()
            .is_some_and(|e| e.iter().any(|e| matches!(e, Entry::Write { .. })));
        let results = if written {
            self.trial(remote, reads.iter().map(|(_, s)| s.clone()).collect())?
        } else {
            let reqs: Vec<StreamRequest> = reads
                .iter()
                .map(|(_, stmt)| StreamRequest::Execute { stmt: stmt.clone() })
                .collect();
            remote.pipeline(&reqs)?
        };
        for ((i, stmt), res) in reads.into_iter().zip(results) {
            if let (Some(entries), Ok(r)) = (self.txn.as_mut(), &res) {
                entries.push(Entry::Read {
                    stmt,
                    rows: r.rows.clone(),
                });
            }
            out[i] = Some(res);
        }
        Ok(())
    }

    /// The transaction's kept statements as batch steps, each on condition that the one before
    /// succeeded: an empty transaction (see below), the settings, then (with `precheck`) every guard once before `BEGIN
    /// IMMEDIATE`, then `BEGIN IMMEDIATE` and the kept statements in order. Returns the steps,
    /// each one's role, and the index of `BEGIN`.
    fn steps(&self, entries: &[Entry], precheck: bool) -> (Vec<BatchStep>, Vec<Role>, usize) {
        let mut steps = Vec::new();
        let mut roles = Vec::new();
        let mut push = |stmt: Stmt, role: Role, steps: &mut Vec<BatchStep>| {
            let condition = steps
                .len()
                .checked_sub(1)
                .map(|step| BatchCond::Ok { step });
            steps.push(BatchStep { stmt, condition });
            roles.push(role);
        };
        // tursodb 0.7.0, once a `pragma_*` function ran on its one connection, keeps the
        // autocommit writes of later requests in an open transaction that the next ROLLBACK
        // (explicit, or after a failed step) undoes. An empty transaction commits them first.
        push(plain("BEGIN IMMEDIATE"), Role::Setup, &mut steps);
        push(plain("COMMIT"), Role::Setup, &mut steps);
        for s in &self.setup {
            push(s.clone(), Role::Setup, &mut steps);
        }
        if precheck {
            for e in entries {
                if let Entry::Read { stmt, rows } = e {
                    for g in guards(stmt, rows) {
                        push(g, Role::Guard, &mut steps);
                    }
                }
            }
        }
        let begin = steps.len();
        push(plain("BEGIN IMMEDIATE"), Role::Setup, &mut steps);
        for e in entries {
            match e {
                Entry::Read { stmt, rows } => {
                    for g in guards(stmt, rows) {
                        push(g, Role::Guard, &mut steps);
                    }
                }
                Entry::Write { stmt, changes } => {
                    push(stmt.clone(), Role::Write, &mut steps);
                    if let Some(n) = changes {
                        let check =
                            format!("SELECT CASE WHEN changes() = {n} THEN 1 ELSE {FAIL} END");
                        push(plain(&check), Role::Changes, &mut steps);
                    }
                }
            }
        }
        (steps, roles, begin)
    }

    /// Reads after the transaction's writes: `BEGIN`, the writes, the reads, `ROLLBACK`.
    fn trial(
        &self,
        remote: &Remote,
        reads: Vec<Stmt>,
    ) -> Result<Vec<Result<StmtResult, RemoteError>>, RemoteError> {
        let entries = self.txn.as_deref().unwrap_or_default();
        let (mut steps, mut roles, _) = self.steps(entries, false);
        let last = steps.len() - 1;
        let first_read = steps.len();
        for stmt in reads {
            steps.push(BatchStep {
                stmt,
                condition: Some(BatchCond::Ok { step: last }),
            });
            roles.push(Role::Read);
        }
        steps.push(BatchStep {
            stmt: plain("ROLLBACK"),
            condition: None,
        });
        roles.push(Role::Rollback);
        let mut result = remote.batch(steps)?;
        check(remote, &result, &roles[..first_read])?;
        let n = roles.len() - 1 - first_read;
        let errors = result.step_errors.drain(..).skip(first_read).take(n);
        let answers = result.step_results.drain(..).skip(first_read).take(n);
        let out: Vec<_> = answers
            .zip(errors.chain(std::iter::repeat(None)))
            .map(|(r, e)| match (r, e) {
                (Some(r), _) => Ok(r),
                (None, Some(e)) => Err(remote.sql_error(e)),
                (None, None) => Err(RemoteError::Protocol(
                    "a read of a trial batch did not run".into(),
                )),
            })
            .collect();
        if out.len() != n {
            return Err(RemoteError::Protocol(format!(
                "sent {n} reads in a batch, got {} results",
                out.len()
            )));
        }
        Ok(out)
    }

    /// The whole transaction as one batch.
    fn commit(&self, remote: &Remote, entries: Vec<Entry>) -> Result<StmtResult, RemoteError> {
        // The guards run once before `BEGIN` too: a race is then found with no transaction
        // open, so nothing is rolled back, and again inside it, where they hold.
        let (mut steps, mut roles, begin) = self.steps(&entries, true);
        let commit = steps.len();
        steps.push(BatchStep {
            stmt: plain("COMMIT"),
            condition: Some(BatchCond::Ok { step: commit - 1 }),
        });
        roles.push(Role::Commit);
        steps.push(BatchStep {
            stmt: plain("ROLLBACK"),
            condition: Some(BatchCond::And {
                conds: vec![
                    BatchCond::Ok { step: begin },
                    BatchCond::Not {
                        cond: Box::new(BatchCond::Ok { step: commit }),
                    },
                ],
            }),
        });
        roles.push(Role::Rollback);
        let mut result = remote.batch(steps)?;
        check(remote, &result, &roles[..=commit])?;
        match result.step_results.get_mut(commit).and_then(Option::take) {
            Some(r) => Ok(r),
            None => Err(RemoteError::Protocol(
                "the transaction's COMMIT did not run".into(),
            )),
        }
    }
}

/// The first failed step among those `roles` name, as an error: a guard or a row count that
/// no longer holds is a race ([`RemoteError::Raced`]); anything else is the statement's error.
fn check(remote: &Remote, result: &BatchResult, roles: &[Role]) -> Result<(), RemoteError> {
    let failed = roles.iter().enumerate().find_map(|(i, role)| {
        let e: Option<&ErrorBody> = result.step_errors.get(i).and_then(Option::as_ref);
        e.map(|e| (*role, e))
    });
    match failed {
        Some((Role::Guard, _)) => Err(RemoteError::Raced(
            "a row the transaction read changed on the remote before it committed".into(),
        )),
        Some((Role::Changes, _)) => Err(RemoteError::Raced(
            "a write changed another number of rows than when the transaction read them".into(),
        )),
        Some((_, e)) => Err(remote.sql_error(e.clone())),
        None => {
            if result.step_results.len() < roles.len() {
                return Err(RemoteError::Protocol(format!(
                    "sent a batch of {} steps, got {} results",
                    roles.len(),
                    result.step_results.len()
                )));
            }
            Ok(())
        }
    }
}

/// One foreign key of a table: its id, its parent, and its columns as (child column, parent
/// column, when declared).
type ForeignKeyCols = (i64, String, Vec<(String, Option<String>)>);

/// Turso Sync's server (tursodb 0.7.0) has no `pragma_foreign_key_check` function, and its
/// `PRAGMA foreign_key_check` returns nothing whatever the rows. So the orphan checks push sends
/// ([`crate::schema::orphans_sql`]) are written out here from the table's foreign keys as the
/// server lists them: each child row whose key columns are all set and that no parent row
/// matches, with the columns `foreign_key_check` returns. A table whose name cannot be matched
/// (one this transaction creates) keeps its check as it is.
fn by_hand_orphan_checks(remote: &Remote, reads: &mut [(usize, Stmt)]) -> Result<(), RemoteError> {
    const PREFIX: &str = "SELECT \"table\", rowid, parent, fkid FROM pragma_foreign_key_check(";
    if !reads.iter().any(|(_, s)| s.sql.starts_with(PREFIX)) {
        return Ok(());
    }
    let query = |sql: String,
                 args: Vec<crate::value::Value>|
     -> Result<Vec<Vec<crate::value::Value>>, RemoteError> {
        let stmt = Stmt {
            sql,
            args,
            want_rows: true,
        };
        remote
            .pipeline(&[StreamRequest::Execute { stmt }])?
            .pop()
            .unwrap_or_else(|| Err(RemoteError::Protocol("missing result".into())))
            .map(|r| r.rows)
    };
    let text = |v: &crate::value::Value| match v {
        crate::value::Value::Text(t) => Some(String::from_utf8_lossy(t).into_owned()),
        _ => None,
    };
    let tables: Vec<String> = query(
        "SELECT name FROM sqlite_schema WHERE type = 'table'".into(),
        vec![],
    )?
    .iter()
    .filter_map(|r| r.first().and_then(text))
    .collect();
    for (_, stmt) in reads.iter_mut().filter(|(_, s)| s.sql.starts_with(PREFIX)) {
        let Some(table) = tables
            .iter()
            .find(|t| crate::schema::orphans_sql(t) == stmt.sql)
        else {
            continue;
        };
        let fks = query(
            "SELECT id, \"table\", \"from\", \"to\" FROM pragma_foreign_key_list(?) ORDER BY id, seq".into(),
            vec![crate::value::Value::text(table)],
        )?;
        let mut keys: Vec<ForeignKeyCols> = Vec::new();
        for row in &fks {
            let (Some(crate::value::Value::Integer(id)), Some(parent), Some(from)) = (
                row.first(),
                row.get(1).and_then(text),
                row.get(2).and_then(text),
            ) else {
                return Err(RemoteError::Protocol(format!(
                    "unexpected pragma_foreign_key_list row {row:?}"
                )));
            };
            let to = row.get(3).and_then(text);
            match keys.last_mut() {
                Some((last, _, cols)) if last == id => cols.push((from, to)),
                _ => keys.push((*id, parent, vec![(from, to)])),
            }
        }
        let mut parts = Vec::new();
        for (id, parent, mut cols) in keys {
            if cols.iter().any(|(_, to)| to.is_none()) {
                let pk: Vec<String> = query(
                    "SELECT name FROM pragma_table_info(?) WHERE pk > 0 ORDER BY pk".into(),
                    vec![crate::value::Value::text(&parent)],
                )?
                .iter()
                .filter_map(|r| r.first().and_then(text))
                .collect();
                for (i, (_, to)) in cols.iter_mut().enumerate() {
                    if to.is_none() {
                        *to = pk.get(i).cloned();
                    }
                }
            }
            let set: Vec<String> = cols
                .iter()
                .map(|(from, _)| format!("c.{} IS NOT NULL", sql::ident(from)))
                .collect();
            let matched: Vec<String> = cols
                .iter()
                .map(|(from, to)| {
                    format!(
                        "p.{} = c.{}",
                        sql::ident(to.as_deref().unwrap_or("rowid")),
                        sql::ident(from)
                    )
                })
                .collect();
            parts.push(format!(
                "SELECT {} AS \"table\", c.rowid AS rowid, {} AS parent, {id} AS fkid FROM {} AS c \
                 WHERE {} AND NOT EXISTS (SELECT 1 FROM {} AS p WHERE {})",
                sql::text_literal(table),
                sql::text_literal(&parent),
                sql::ident(table),
                set.join(" AND "),
                sql::ident(&parent),
                matched.join(" AND ")
            ));
        }
        stmt.sql = if parts.is_empty() {
            "SELECT NULL, NULL, NULL, NULL WHERE 0".into()
        } else {
            parts.join(" UNION ALL ")
        };
        stmt.args.clear();
    }
    Ok(())
}

/// One statement outside any transaction, in a request of its own.
fn single(remote: &Remote, stmt: &Stmt) -> Result<Result<StmtResult, RemoteError>, RemoteError> {
    let mut results = remote.pipeline(&[StreamRequest::Execute { stmt: stmt.clone() }])?;
    Ok(results
        .pop()
        .unwrap_or_else(|| Err(RemoteError::Protocol("missing result".into()))))
}

impl Remote {
    /// One batch in one request, on a server without streams.
    pub(super) fn batch(&self, steps: Vec<BatchStep>) -> Result<BatchResult, RemoteError> {
        let req = [StreamRequest::Batch {
            batch: Batch { steps },
        }];
        let body = serde_json::to_vec(&super::proto::PipelineReq {
            baton: None,
            requests: &req,
        })
        .map_err(|e| RemoteError::Protocol(e.to_string()))?;
        let resp: BatchPipelineResp = self.post_as(&self.endpoint.base, &body)?;
        let Some(first) = resp.results.into_iter().next() else {
            return Err(RemoteError::Protocol("a batch got no result".into()));
        };
        match (first.kind.as_str(), first.response, first.error) {
            ("ok", Some(r), _) => Ok(r.result.unwrap_or_default()),
            (_, _, Some(e)) => Err(self.sql_error(e)),
            _ => Err(RemoteError::Protocol(format!(
                "batch result of type {:?} without a body",
                first.kind
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_and_writes_are_told_apart() {
        let s = |sql: &str, want_rows| Stmt {
            sql: sql.into(),
            args: vec![],
            want_rows,
        };
        assert!(is_read(&s("SELECT 1", true)));
        assert!(is_read(&s("  with x AS (SELECT 1) SELECT * FROM x", true)));
        assert!(is_read(&s("PRAGMA user_version", true)));
        assert!(!is_read(&s("PRAGMA user_version = 3", true)));
        assert!(!is_read(&s("UPDATE t SET a = 1", false)));
        assert!(!is_read(&s("SELECT 1", false)));
        assert_eq!(guards(&s("PRAGMA user_version", true), &[]).len(), 0);
        assert_eq!(
            guards(&s("SELECT a FROM t WHERE a = ?", true), &[]).len(),
            1
        );
    }
}
