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

use super::proto::{Batch, BatchCond, BatchResult, BatchStep, ErrorBody};
use super::{Remote, RemoteError, Stmt, StmtResult, StreamRequest};
use crate::sql;

/// An expression that fails when evaluated: SQLite (and Turso) raise "integer overflow".
const FAIL: &str = "abs(-9223372036854775808)";

/// What a step of the final batch is, to name the error of the step that failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    Setup,
    Guard,
    /// A check that must find nothing ([`Deferred::check`]).
    Check,
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
    /// A read after the writes that must return none but the `allowed` rows.
    Check {
        stmt: Stmt,
        allowed: Vec<Vec<crate::value::Value>>,
    },
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
    /// The replication index of the last commit before the transaction, read inside it (on a
    /// server that keeps streams, whose answers carry one).
    pub(super) began_at: Option<u64>,
    /// HTTP requests sent.
    pub(super) requests: u64,
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

/// A statement that fails unless `from` returns no row.
fn empty(from: &str) -> Stmt {
    plain(&format!(
        "SELECT CASE WHEN count(*) = 0 THEN 1 ELSE {FAIL} END FROM ({from})"
    ))
}

/// The read's SQL with its arguments written in, as a subquery.
fn subquery(read: &Stmt) -> String {
    let (q, _) = sql::inline_args(&read.sql, &read.args, |_| true);
    q.trim().trim_end_matches(';').to_owned()
}

/// Statements that fail unless `read` returns exactly `rows` (as a set: reads by key return
/// each row once). None for `PRAGMA` reads, which cannot be a subquery.
fn guards(read: &Stmt, rows: &[Vec<crate::value::Value>]) -> Vec<Stmt> {
    if verb(&read.sql) == "PRAGMA" {
        return vec![];
    }
    let q = subquery(read);
    match values(rows) {
        None => vec![empty(&q)],
        // `VALUES` of over 500 rows must stand alone (as a subquery), or SQLite counts its
        // rows as the terms of a compound SELECT ("too many terms").
        Some(values) => vec![
            empty(&format!(
                "SELECT * FROM ({q}) EXCEPT SELECT * FROM ({values})"
            )),
            empty(&format!(
                "SELECT * FROM ({values}) EXCEPT SELECT * FROM ({q})"
            )),
        ],
    }
}

/// A statement that fails when `read` returns a row not among `allowed`.
fn nothing_but(read: &Stmt, allowed: &[Vec<crate::value::Value>]) -> Stmt {
    let q = subquery(read);
    match values(allowed) {
        None => empty(&q),
        Some(values) => empty(&format!(
            "SELECT * FROM ({q}) EXCEPT SELECT * FROM ({values})"
        )),
    }
}

/// `rows` as a `VALUES` clause of exact literals; `None` when there are none.
fn values(rows: &[Vec<crate::value::Value>]) -> Option<String> {
    if rows.is_empty() {
        return None;
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
    Some(values)
}

impl Deferred {
    /// Row counts the next writes must change, in order (0: not counted).
    pub(super) fn expect(&mut self, counts: &[usize]) {
        self.expect.extend(counts);
    }

    /// Keeps `read`, to run after the writes so far: the transaction commits only if it
    /// returns none but the `allowed` rows, and fails with [`RemoteError::Check`] otherwise.
    pub(super) fn check(
        &mut self,
        remote: &Remote,
        read: Stmt,
        allowed: Vec<Vec<crate::value::Value>>,
    ) -> Result<(), RemoteError> {
        let mut read = [(0, read)];
        self.by_hand_orphan_checks(remote, &mut read)?;
        let [(_, stmt)] = read;
        match self.txn.as_mut() {
            Some(entries) => {
                entries.push(Entry::Check { stmt, allowed });
                Ok(())
            }
            None => Err(RemoteError::Protocol(
                "a check was asked for outside a transaction".into(),
            )),
        }
    }

    /// [`by_hand_orphan_checks`] where the server may lack `pragma_foreign_key_check`: any
    /// server not known to keep streams (sqld, which has it, does).
    fn by_hand_orphan_checks(
        &mut self,
        remote: &Remote,
        reads: &mut [(usize, Stmt)],
    ) -> Result<(), RemoteError> {
        if remote.streams_known() == Some(true) {
            return Ok(());
        }
        self.requests += by_hand_orphan_checks(remote, reads)?;
        Ok(())
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
        self.by_hand_orphan_checks(remote, &mut reads)?;
        let written = self
            .txn
            .as_ref()
            .is_some_and(|e| e.iter().any(|e| matches!(e, Entry::Write { .. })));
        let results = if written {
            self.trial(remote, reads.iter().map(|(_, s)| s.clone()).collect())?
        } else {
            let mut reqs: Vec<StreamRequest> = reads
                .iter()
                .map(|(_, stmt)| StreamRequest::Execute { stmt: stmt.clone() })
                .collect();
            reqs.push(StreamRequest::Close);
            self.requests += 1;
            let mut results = remote.pipeline(&reqs)?;
            results.pop();
            results
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
                Entry::Check { stmt, allowed } => {
                    push(nothing_but(stmt, allowed), Role::Check, &mut steps);
                }
            }
        }
        (steps, roles, begin)
    }

    /// Reads after the transaction's writes: `BEGIN`, the writes, the reads, `ROLLBACK`.
    fn trial(
        &mut self,
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
        self.requests += 1;
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

    /// The whole transaction as one batch, in one request while it is at most
    /// [`BYTES_PER_REQUEST`] (a few MB).
    ///
    /// On a server without streams the batch ends in `COMMIT` on condition that every step
    /// before it succeeded, then `ROLLBACK` if `BEGIN` ran and `COMMIT` did not. On a server
    /// that keeps streams (sqld) the batch ends in that `ROLLBACK` alone, and the same request
    /// goes on, on the same stream, with a `SELECT 1`, whose answer carries the replication
    /// index the transaction started from (nobody else can commit while it holds the write
    /// lock), and `COMMIT`, which succeeds only while the transaction is open: when every step
    /// succeeded. A batch larger than a request is sent in parts on that stream, each part
    /// after the one before succeeded.
    fn commit(&mut self, remote: &Remote, entries: Vec<Entry>) -> Result<StmtResult, RemoteError> {
        // The guards run once before `BEGIN` too: a race is then found with no transaction
        // open, so nothing is rolled back, and again inside it, where they hold.
        let (mut steps, mut roles, begin) = self.steps(&entries, true);
        if remote.streams_known() == Some(true) {
            return self.commit_on_stream(remote, steps, roles, begin);
        }
        let commit = steps.len();
        steps.push(BatchStep {
            stmt: plain("COMMIT"),
            condition: Some(BatchCond::Ok { step: commit - 1 }),
        });
        roles.push(Role::Commit);
        steps.push(rollback(begin, commit));
        roles.push(Role::Rollback);
        self.requests += 1;
        let mut result = remote.batch(steps)?;
        check(remote, &result, &roles[..=commit])?;
        match result.step_results.get_mut(commit).and_then(Option::take) {
            Some(r) => Ok(r),
            None => Err(RemoteError::Protocol(
                "the transaction's COMMIT did not run".into(),
            )),
        }
    }

    /// [`Deferred::commit`] on a server that keeps streams.
    fn commit_on_stream(
        &mut self,
        remote: &Remote,
        steps: Vec<BatchStep>,
        roles: Vec<Role>,
        begin: usize,
    ) -> Result<StmtResult, RemoteError> {
        let mut stream = remote.stream();
        let result = self.send_parts(&mut stream, steps, &roles, begin);
        if result.is_err() && stream.baton.is_some() {
            // Frees the stream (and the write lock, should a part have left it held) at once.
            let _ = stream.exchange::<StmtResult>(&[
                StreamRequest::Execute {
                    stmt: plain("ROLLBACK"),
                },
                StreamRequest::Close,
            ]);
        }
        result
    }

    fn send_parts(
        &mut self,
        stream: &mut super::Stream<'_>,
        steps: Vec<BatchStep>,
        roles: &[Role],
        begin: usize,
    ) -> Result<StmtResult, RemoteError> {
        let parts = parts(&steps);
        let mut steps = steps.into_iter();
        let mut first = 0;
        for (pi, len) in parts.iter().copied().enumerate() {
            let last_part = pi + 1 == parts.len();
            // Each part's first step runs unconditioned: the parts before it succeeded.
            let mut part: Vec<BatchStep> = steps
                .by_ref()
                .take(len)
                .enumerate()
                .map(|(i, s)| BatchStep {
                    condition: i.checked_sub(1).map(|step| BatchCond::Ok { step }),
                    ..s
                })
                .collect();
            let rollback = match begin.checked_sub(first).filter(|&b| b < len) {
                Some(b) => rollback(b, len - 1),
                None => BatchStep {
                    stmt: plain("ROLLBACK"),
                    condition: Some(BatchCond::Not {
                        cond: Box::new(BatchCond::Ok { step: len - 1 }),
                    }),
                },
            };
            part.push(rollback);
            let mut reqs = vec![StreamRequest::Batch {
                batch: Batch { steps: part },
            }];
            if last_part {
                let then = |sql: &str| StreamRequest::Execute { stmt: plain(sql) };
                reqs.extend([then("SELECT 1"), then("COMMIT"), StreamRequest::Close]);
            }
            self.requests += 1;
            let mut answers = stream.exchange::<serde_json::Value>(&reqs)?.into_iter();
            let batch: BatchResult = read_as(answers.next())?;
            check(stream.remote, &batch, &roles[first..first + len])?;
            first += len;
            if last_part {
                let index = answers.next();
                // The COMMIT's answer first: whatever became of the SELECT, it says whether the
                // transaction committed.
                let commit: StmtResult = read_as(answers.next())?;
                self.began_at = read_as::<StmtResult>(index)
                    .ok()
                    .and_then(|r| r.replication_index());
                return Ok(commit);
            }
        }
        Err(RemoteError::Protocol("a transaction without steps".into()))
    }
}

/// `ROLLBACK` on condition that `BEGIN` (step `begin`) ran and step `last` (the `COMMIT`, or
/// the last step, which runs only when every step before it succeeded) did not succeed.
fn rollback(begin: usize, last: usize) -> BatchStep {
    BatchStep {
        stmt: plain("ROLLBACK"),
        condition: Some(BatchCond::And {
            conds: vec![
                BatchCond::Ok { step: begin },
                BatchCond::Not {
                    cond: Box::new(BatchCond::Ok { step: last }),
                },
            ],
        }),
    }
}

/// Bytes of statements per request: well under what a server takes, and quick to run.
const BYTES_PER_REQUEST: usize = 4 << 20;

/// The lengths of the parts `steps` are sent in, each at most [`BYTES_PER_REQUEST`] (or one
/// step).
fn parts(steps: &[BatchStep]) -> Vec<usize> {
    let mut out = vec![0];
    let mut bytes = 0;
    for s in steps {
        let size = s.stmt.sql.len()
            + s.stmt
                .args
                .iter()
                .map(super::proto::json_size)
                .sum::<usize>();
        let n = out.last_mut().expect("one part at least");
        if *n > 0 && bytes + size > BYTES_PER_REQUEST {
            out.push(1);
            bytes = size;
        } else {
            *n += 1;
            bytes += size;
        }
    }
    out
}

/// One answer of a mixed pipeline, read as the result its request has.
fn read_as<R: serde::de::DeserializeOwned>(
    answer: Option<Result<serde_json::Value, RemoteError>>,
) -> Result<R, RemoteError> {
    let value = answer.unwrap_or_else(|| Err(RemoteError::Protocol("missing result".into())))?;
    serde_json::from_value(value).map_err(|e| RemoteError::Protocol(e.to_string()))
}

/// The first failed step among those `roles` name, as an error: a guard or a row count that
/// no longer holds is a race ([`RemoteError::Raced`]); anything else is the statement's error.
fn check(remote: &Remote, result: &BatchResult, roles: &[Role]) -> Result<(), RemoteError> {
    let failed = roles.iter().enumerate().find_map(|(i, role)| {
        let e: Option<&ErrorBody> = result.step_errors.get(i).and_then(Option::as_ref);
        e.map(|e| (*role, e))
    });
    // A guard, a count or a check that does not hold fails on purpose, with [`FAIL`]'s integer
    // overflow; any other error of theirs is the statement's own.
    let failed = failed.map(|(role, e)| match role {
        Role::Guard | Role::Changes | Role::Check if !e.message.contains("integer overflow") => {
            (Role::Setup, e)
        }
        _ => (role, e),
    });
    match failed {
        Some((Role::Guard, _)) => Err(RemoteError::Raced(
            "a row the transaction read changed on the remote before it committed".into(),
        )),
        Some((Role::Check, _)) => Err(RemoteError::Check(
            "a read after the writes found rows it must not".into(),
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
/// ([`crate::sql::orphans_sql`]) are written out here from the table's foreign keys as the
/// server lists them: each child row whose key columns are all set and that no parent row
/// matches, with the columns `foreign_key_check` returns. A table whose name cannot be matched
/// (one this transaction creates) keeps its check as it is.
/// Returns the requests it sent.
fn by_hand_orphan_checks(remote: &Remote, reads: &mut [(usize, Stmt)]) -> Result<u64, RemoteError> {
    const PREFIX: &str = "SELECT \"table\", rowid, parent, fkid FROM pragma_foreign_key_check(";
    if !reads.iter().any(|(_, s)| s.sql.starts_with(PREFIX)) {
        return Ok(0);
    }
    let sent = std::cell::Cell::new(0);
    let query = |sql: String,
                 args: Vec<crate::value::Value>|
     -> Result<Vec<Vec<crate::value::Value>>, RemoteError> {
        let stmt = Stmt {
            sql,
            args,
            want_rows: true,
        };
        sent.set(sent.get() + 1);
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
            .find(|t| crate::sql::orphans_sql(t) == stmt.sql)
        else {
            continue;
        };
        // id, seq, table, from, to, on_update, on_delete, match; the plain pragma (see
        // `sql::pragma_of`), put in key order here.
        let mut fks = query(sql::pragma_of("foreign_key_list", table), vec![])?;
        let int = |v: Option<&crate::value::Value>| match v {
            Some(crate::value::Value::Integer(i)) => Some(*i),
            _ => None,
        };
        fks.sort_by_key(|r| (int(r.first()), int(r.get(1))));
        let mut keys: Vec<ForeignKeyCols> = Vec::new();
        for row in &fks {
            let (Some(id), Some(parent), Some(from)) = (
                int(row.first()),
                row.get(2).and_then(text),
                row.get(3).and_then(text),
            ) else {
                return Err(RemoteError::Protocol(format!(
                    "unexpected PRAGMA foreign_key_list({table:?}) row {row:?}"
                )));
            };
            // A parent column left out is NULL in SQLite's answer and '' in tursodb's.
            let to = row.get(4).and_then(text).filter(|t| !t.is_empty());
            match keys.last_mut() {
                Some((last, _, cols)) if *last == id => cols.push((from, to)),
                _ => keys.push((id, parent, vec![(from, to)])),
            }
        }
        let mut parts = Vec::new();
        for (id, parent, mut cols) in keys {
            if cols.iter().any(|(_, to)| to.is_none()) {
                // cid, name, type, notnull, dflt_value, pk.
                let mut pk: Vec<(i64, String)> =
                    query(sql::pragma_of("table_info", &parent), vec![])?
                        .iter()
                        .filter_map(|r| Some((int(r.get(5)).filter(|&k| k > 0)?, text(r.get(1)?)?)))
                        .collect();
                pk.sort();
                let pk: Vec<String> = pk.into_iter().map(|(_, name)| name).collect();
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
    Ok(sent.get())
}

/// One statement outside any transaction, in a request of its own.
fn single(remote: &Remote, stmt: &Stmt) -> Result<Result<StmtResult, RemoteError>, RemoteError> {
    let mut results = remote.pipeline(&[
        StreamRequest::Execute { stmt: stmt.clone() },
        StreamRequest::Close,
    ])?;
    results.truncate(1);
    Ok(results
        .pop()
        .unwrap_or_else(|| Err(RemoteError::Protocol("missing result".into()))))
}

impl Remote {
    /// One batch in one request, on a fresh stream closed with it where streams are kept.
    pub(super) fn batch(&self, steps: Vec<BatchStep>) -> Result<BatchResult, RemoteError> {
        let mut reqs = vec![StreamRequest::Batch {
            batch: Batch { steps },
        }];
        // On a server that keeps streams, the stream the batch opened is closed with it.
        if self.streams_known() == Some(true) {
            reqs.push(StreamRequest::Close);
        }
        self.stream()
            .exchange::<BatchResult>(&reqs)?
            .into_iter()
            .next()
            .unwrap_or_else(|| Err(RemoteError::Protocol("a batch got no result".into())))
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
