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
use std::path::PathBuf;

use crate::changeset::{Changeset, RowChange, SchemaChange};
use crate::conflict::{Conflict, ConflictKind, Outcome};
use crate::progress::Progress;
use crate::remote::{Remote, RemoteError, Stmt, StmtResult, Stream, StreamRequest};
use crate::schema::{foreign_key_scope, foreign_keys, Orphan};
use crate::sql;
use crate::unsettled::Unsettled;
use crate::value::Value;
use crate::workspace::Workspace;
use crate::{Context, Error, Result};

mod log;
mod orphan_check;
mod report;
mod rows;
mod schema;

use log::{keep_push_log, log_stmt};
use orphan_check::{new_orphans, orphan_reads, orphans_found, OrphanCheck};
pub use report::{write_dry_run, PushReport};
use rows::{classify, stmt, unique_conflicts, TablePlan, Write};
use schema::{plan_schema, remote_source, sequences_found, RemoteState, SchemaTexts, SCHEMA_SQL};

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

/// What one transaction did: the AUTOINCREMENT counters it wrote and the remote's replication
/// index just before its writes and just after its commit.
struct Committed {
    sequences: Vec<(String, Option<i64>)>,
    index_before: Option<u64>,
    index_after: Option<u64>,
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

/// Fails when `conflicts` cannot be conflicts: rows the remote holds otherwise than the base
/// while it stands where it stood at the last sync (`known`, its replication index then). Each
/// side's change is counted from the base, so the base is then not what the remote was (a byte
/// of `base.db` damaged, say): a pull would bring nothing, the push would refuse the same rows
/// again, and `--ours` would settle nothing. What leads forward is a base read again from the
/// remote, which `tursync verify --repair` makes. Costs one request, on conflicts only.
fn base_is_the_remote(
    ws: &Workspace,
    remote: &Remote,
    known: Option<u64>,
    conflicts: &[Conflict],
) -> Result<()> {
    let Some(row) = conflicts
        .iter()
        .find(|c| matches!(c.kind, ConflictKind::Cell | ConflictKind::Row))
    else {
        return Ok(());
    };
    if known.is_none() || remote.replication_index()? != known {
        return Ok(());
    }
    let key: Vec<String> = row.key.iter().map(sql::literal).collect();
    Err(Error::DamagedBase(format!(
        "the base {} is damaged: the remote has not changed since the last sync, yet holds row ({}) of {:?} otherwise than the base, so the push would refuse it again and a pull would bring nothing; nothing was pushed. Run `tursync verify --repair`: it reads the remote again as the base and leaves the working copy as it is, then `tursync sync`",
        ws.base_path().display(),
        key.join(", "),
        row.table
    )))
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
    let (cs, work_stamp, walked) = ws
        .ours(&Default::default())
        .during("reading our changes from", ws.db_path().display())?;
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
    // What an interrupted pull left unsettled is settled by a pull, never pushed on a guess.
    let marks = Unsettled::load(&ws.state_dir())?;
    let none = Changeset::default();
    let mut held = marks.schema_conflicts(&cs, &none);
    held.extend(marks.row_conflicts(&cs, &none));
    if !held.is_empty() {
        return Ok(Outcome::Conflicts(held));
    }
    let fks = foreign_keys(&ws.open_working_copy(true)?)
        .during("reading the foreign keys of", ws.db_path().display())?;
    let fk_scope = foreign_key_scope(&fks, cs.tables.iter().map(|t| t.table.name.as_str()));
    let fresh_record = ws.record_push_start(&cs)?;
    // What the remote's schema is unless someone changed it since the last sync: the touched
    // rows are read in the same request as the schema, as if it were.
    let expected = RemoteState {
        schema: SchemaTexts::read_local(&ws.open_base()?)
            .during("reading the schema of", ws.base_path().display())?,
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
            let sent_before = run.commit_sent;
            match push_transaction(remote, &txn, &mut run, orphans) {
                Err(e)
                    if orphans == OrphanCheck::InBatch
                        && matches!(e.root(), Error::Remote(RemoteError::Check(_))) =>
                {
                    // The server answered that the batch's guard failed: its COMMIT did not
                    // run, so this attempt landed nothing (an earlier one whose answer was
                    // lost still may have).
                    run.commit_sent = sent_before;
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
                if gi == 0 && !run.commit_sent {
                    if fresh_record {
                        ws.drop_push_record()?;
                    }
                    base_is_the_remote(ws, remote, known, &conflicts)?;
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
        // The base keeps its mirror point across our push (see `SyncState::base_at`).
        base_stamp: match state.base_stamp {
            Some(_) => Some(ws.base_stamp()?),
            None => None,
        },
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
    const ON: &str = "the remote";
    let opened = open(stream, txn).during(
        "opening the push's transaction (reading schema, counters and rows) on",
        ON,
    )?;
    let remote = &opened.state;
    // A schema change someone else made meanwhile is reported as such, before any row of
    // a table it reshaped is compared.
    if let Outcome::Conflicts(conflicts) = plan_schema(txn.cs, remote)? {
        return Ok(Outcome::Conflicts(conflicts));
    }
    if txn.first {
        if let Some(conflict) = recreated_unchanged(stream, txn, remote)
            .during("checking the tables the push replaces whole on", ON)?
        {
            return Ok(Outcome::Conflicts(vec![conflict]));
        }
    }
    let found = read_rows(stream, txn, remote, opened.guessed)
        .during("reading the rows the push changes from", ON)?;
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
        run.orphans_before =
            Some(orphans_found(before).during("reading the orphans before the push on", ON)?);
    }
    send_writes(stream, plan.writes, run).during("sending the push's writes to", ON)?;
    if txn.last {
        let conflicts = new_orphans(stream, txn, run, orphans)
            .during("checking the foreign keys the push leaves on", ON)?;
        if !conflicts.is_empty() {
            return Ok(Outcome::Conflicts(conflicts));
        }
    }
    // The batch commits only if every step before COMMIT succeeded.
    run.commit_sent = true;
    let commit = send(stream, vec![stmt("COMMIT".into(), vec![], false)])
        .during("committing the push's transaction on", ON)?;
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
/// table and keyed by [`crate::changeset::TableDiff::key_text`]. The first request's answers serve when it read
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
    crate::test_hook::pause("TURSYNC_TEST_PAUSE_AFTER_COMMIT_MS")
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
