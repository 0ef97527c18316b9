//! Bringing others' changes into the working copy: when and under which locks.
//!
//! The remote is read from its replication log into the mirror ([`crate::mirror`]) when the
//! server serves one, or from its pages when it speaks Turso Sync ([`crate::turso_pages`]);
//! otherwise, and from the first time the log fails in a way that will not
//! pass (the reason is kept in the sync state), with the clone machinery into a plain file
//! beside the base (exact, streamed, bounded memory). Ours (base → working copy) is read from a snapshot of the
//! working copy and the merge planned from both sides ([`crate::merge`]); then, under the
//! app's write lock, held only to check that the app did not commit meanwhile and to apply,
//! the plan goes into the working copy in one transaction, with foreign keys off and the
//! working copy's triggers suspended. Finally the remote copy becomes the base, so unpushed
//! local changes stay pending and a later push sends only them.

use rusqlite::{Connection, Transaction, TransactionBehavior};

use crate::changeset::Changeset;
use crate::clone::FetchOptions;
use crate::conflict::Outcome;
pub use crate::conflict::{MergeOptions, Resolve};
use crate::diff;
use crate::in_flight::{Expected, TheirsKept};
use crate::merge::{strip_our_push, Plan};
pub use crate::merge::{PullReport, Renumbered};
use crate::mirror::{open_immutable, Mirror, MirrorError, Settling};
use crate::pages::{self, Stamp};
use crate::progress::Progress;
use crate::remote::replication::{Hello, LogError, LogSource};
use crate::remote::turso_sync::TursoSyncError;
use crate::remote::Remote;
use crate::spot_check::{spot_check, SpotCheck};
use crate::touched::{touched, Before, Touched};
use crate::unsettled::Unsettled;
use crate::workspace::{
    read_ours, wait_for_locks, Clean, StreamsOff, SyncState, Workspace, BUSY_TIMEOUT,
};
use crate::{Context, Error, Result};

/// Called once if the app holds the working copy's write lock, before waiting for it.
pub type WaitNotice<'a> = &'a dyn Fn();

/// What a pull did, and where the remote stood when it looked.
#[derive(Debug)]
pub struct Pulled {
    /// The report, or the conflicts `merge` left unsettled (nothing changed on either side).
    pub outcome: Outcome<PullReport>,
    /// The remote's replication index the pull read first (`Hello`'s on sqld's log, a
    /// `SELECT 1`'s over SQL; `None` from a server that does not say, as Turso Sync). `watch`
    /// keeps it to tell later that the remote moved, without a request of its own per round.
    pub remote_index: Option<u64>,
}

/// Pulls the remote into the working copy. Returns the conflicts instead when any is left
/// unsettled by `merge`; nothing changes on either side then.
pub fn pull(
    ws: &Workspace,
    remote: &Remote,
    merge: &MergeOptions,
    opts: FetchOptions,
    progress: &Progress,
    on_wait: WaitNotice<'_>,
) -> Result<Pulled> {
    let _lock = ws.lock()?;
    ws.finish_interrupted_pull()?;
    // Rows an interrupted pull left unsettled are settled by a merge, even when the remote
    // has nothing new.
    let unsettled = !Unsettled::load(&ws.state_dir())?.is_empty();
    let state = ws.sync_state()?;
    let known = state.replication_index;
    let mut sql_path = state.sql_path.clone();
    let use_log = opts.use_log && sql_path.is_none();
    // The reader of the remote's pages this protocol offers (sqld's log, Turso Sync's pages).
    let mut source = if use_log {
        let protocol = crate::protocol::detect(&ws.state_dir(), None, remote)?
            .0
            .protocol;
        Some(protocol.mirror_source(remote, ws.mirror()))
    } else {
        None
    };
    let hello = match source.as_mut().map(|log| log.hello()) {
        None => None,
        Some(Ok(hello)) => Some(Ok(hello)),
        Some(Err(LogError::Remote(e))) if e.is_transient() => return Err(e.into()),
        Some(Err(e)) => Some(Err(e.to_string())),
    };
    // The log's `Hello` carries the replication index Hrana's answers do (both are sqld's
    // last commit frame), so a pull through the log asks nothing else to find nothing new.
    let now = match &hello {
        Some(Ok(h)) => h.replication_index,
        _ => remote.replication_index()?,
    };
    let pulled = |outcome| Pulled {
        outcome,
        remote_index: now,
    };
    if known.is_some() && now == known && !use_log && !unsettled {
        return Ok(pulled(Outcome::Done(PullReport::default())));
    }

    let mut read = "over SQL".to_owned();
    if let (Some(hello), Some(log)) = (hello, source.as_deref_mut()) {
        // A reset log can reach the same index again: the index alone does not say nothing
        // changed, the index and the log's id together do.
        // A mirror.json that cannot be read is dropped by `from_log` with the rest of the mirror.
        let mirror = ws.mirror().state().unwrap_or(None);
        if let (Some(m), Ok(h)) = (&mirror, &hello) {
            if known.is_some() && now == known && m.log_id == h.log_id && !unsettled {
                return Ok(pulled(Outcome::Done(PullReport::default())));
            }
        }
        let outcome = match hello {
            Ok(hello) => from_log(ws, remote, log, &hello, &state, merge, on_wait)?,
            Err(reason) => FromLog::Unusable(reason),
        };
        match outcome {
            FromLog::Done(merged, frame) => {
                if merged.outcome.is_done() {
                    let now_state = ws.sync_state()?;
                    ws.save_sync_state(&SyncState {
                        replication_index: now,
                        base_at: Some(frame),
                        base_stamp: Some(ws.base_stamp()?),
                        sql_path: None,
                        streams_off: now_state.streams_off,
                        clean: ws.clean_point(merged.clean_work),
                        leaves: now_state.leaves,
                    })?;
                }
                return Ok(pulled(merged.outcome));
            }
            FromLog::NotNow => {}
            FromLog::Diverged(difference) => {
                read = format!(
                    "over SQL: {difference}; it was dropped and is read again from the log"
                );
            }
            FromLog::Damaged(why) => {
                read = format!(
                    "over SQL: {why}; the mirror was dropped and is read again from the log"
                );
            }
            FromLog::Unusable(reason) => {
                ws.mirror().remove()?;
                sql_path = Some(reason);
            }
        }
    }

    let theirs = ws
        .download(remote, opts, progress)?
        .keep_as(ws.state_dir().join(crate::in_flight::DOWNLOAD))?;
    let Merged {
        outcome,
        clean_work,
    } = {
        let base = ws.open_base()?;
        let theirs_db = crate::workspace::open_snapshot(&theirs.path)?;
        let changes = diff::diff(&base, &theirs_db, &diff::Filter::default())?;
        let theirs = Theirs {
            db: &theirs_db,
            changes,
            kept: TheirsKept::Download,
        };
        merge_into(ws, &base, theirs, merge, state.clean, on_wait)?
    };
    if outcome.is_done() {
        pause_after_commit();
        // A crash here leaves the old base and the pull's record, which the next pull or push
        // finishes first ([`Workspace::finish_interrupted_pull`]).
        ws.replace_base_with(&theirs.path)?;
        ws.forget_after_pull()?;
    }
    if outcome.is_done() || sql_path != state.sql_path {
        let now_state = ws.sync_state()?;
        ws.save_sync_state(&SyncState {
            replication_index: if outcome.is_done() { now } else { known },
            base_at: None,
            base_stamp: None,
            sql_path,
            streams_off: now_state.streams_off,
            clean: if outcome.is_done() {
                ws.clean_point(clean_work)
            } else {
                state.clean
            },
            leaves: now_state.leaves,
        })?;
    }
    Ok(pulled(outcome.map(|report| PullReport {
        downloaded: true,
        read: Some(read),
        ..report
    })))
}

/// How a pull through the replication log went.
enum FromLog {
    /// Merged (or stopped on conflicts), with the mirror at this frame.
    Done(Merged, u64),
    /// The log holds nothing yet, or was reset while read: read over SQL this time.
    NotNow,
    /// The mirror, just advanced, differed from the remote ([`crate::spot_check`]): it was
    /// removed before anything was read from it. Read over SQL this time; the next pull builds
    /// the mirror again from the log.
    Diverged(crate::spot_check::Difference),
    /// A page read from the mirror did not match its checksum ([`crate::page_sums`]): the
    /// read failed, nothing of it was merged, and the mirror was removed. Read over SQL this
    /// time; the next pull builds the mirror again from the log.
    Damaged(String),
    /// The log cannot be used, for this reason: read over SQL from now on.
    Unusable(String),
}

/// Pulls through the mirror: the log's new frames are applied to it, theirs is the base
/// against the mirror, and on success the base takes theirs.
///
/// When the base holds the mirror's content from before this advance (`base_at`), theirs is
/// read from the rows on the pages the advance wrote ([`crate::touched`]), so a pull costs
/// what changed; otherwise, or when those pages say too little, from the whole tables.
///
/// Once advanced, and before anything is read from it, the mirror is spot-checked against the
/// remote ([`crate::spot_check`]) when its frames are the server's replication index (sqld's
/// log; Turso Sync's pages are witnessed by their source instead, [`crate::turso_pages`]); a
/// mirror that differs is removed, unused. Every page read
/// from it is checked against its sum ([`crate::page_sums`]); a read that finds a damaged one
/// fails, and the mirror is removed with nothing of it merged. A mirror whose files do not
/// agree ([`Mirror::health`]) is removed first and built again from the log.
fn from_log(
    ws: &Workspace,
    remote: &Remote,
    log: &mut dyn LogSource,
    hello: &Hello,
    state: &SyncState,
    merge: &MergeOptions,
    on_wait: WaitNotice<'_>,
) -> Result<FromLog> {
    let base_at = ws.base_at(state)?;
    let mirror = ws.mirror();
    // Whether the mirror moved in this pull (a spool a killed run left counts). A spool that
    // is damaged may have been half-written into the mirror: both go.
    let (mut advanced, mut dropped) = match mirror.recover()? {
        Ok(advanced) => (advanced, None),
        Err(why) => (false, Some(why)),
    };
    if dropped.is_none() {
        if let Some(Err(why)) = mirror.health()? {
            dropped = Some(why);
        }
    }
    if dropped.is_some() {
        forget_base_at(ws)?;
        mirror.remove()?;
    }
    let mut streams = StreamsOff::streams(state.streams_off.as_ref(), &hello.log_id);
    let fetched = mirror.fetch(log, hello, &mut streams);
    // Streams that stayed silent are not tried again on this log; a new log tries them again.
    let streams_off = StreamsOff::after(&streams, &hello.log_id);
    if streams_off != state.streams_off {
        ws.save_sync_state(&SyncState {
            streams_off,
            ..ws.sync_state()?
        })?;
    }
    let ready = match fetched {
        Ok(ready) => ready,
        Err(MirrorError::Log(LogError::Remote(e))) if e.is_transient() => return Err(e.into()),
        Err(MirrorError::Log(LogError::Reset)) => return Ok(FromLog::NotNow),
        // Turso Sync's server no longer knows the mirror's revision: the next pull bootstraps.
        Err(MirrorError::Log(LogError::TursoSync(e @ TursoSyncError::Reset { .. }))) => {
            forget_base_at(ws)?;
            mirror.remove()?;
            return Ok(FromLog::Damaged(e.to_string()));
        }
        Err(MirrorError::Log(e)) => return Ok(FromLog::Unusable(e.to_string())),
        Err(MirrorError::Local(e)) => return Err(e),
    };
    // What the mirror held before this advance, when the base holds the same: then theirs is
    // read from the rows on the pages the advance writes.
    let mut before = Err(match &dropped {
        Some(why) => format!("the mirror was dropped ({why}) and is built again from the log"),
        None => "the base is not at the mirror's last point".to_owned(),
    });
    let mut settling = None;
    // Read before the advance marks its pages: the pages on which the base may differ from
    // the mirror are those the mirror keeps apart from it now.
    let apart = crate::shared_pages::kept_apart(&ws.state_dir())?;
    let read_before = |pages| {
        open_immutable(&mirror.db_path()).and_then(|old| Before::read(&old, pages, apart.clone()))
    };
    match ready {
        Some(ready) => {
            if !ready.fresh && ready.from.is_some() && ready.from == base_at {
                match read_before(ready.pages.clone()) {
                    Ok(b) => before = b,
                    Err(e) => return drop_damaged(ws, &mirror, None, e),
                }
            }
            settling = Some(mirror.apply_settling(ready)?);
            advanced = true;
        }
        None if base_at.is_some() && mirror.state()?.and_then(|s| s.frame_no) == base_at => {
            match read_before(Default::default()) {
                Ok(b) => before = b,
                Err(e) => return drop_damaged(ws, &mirror, None, e),
            }
        }
        None => {}
    }
    // No mirror of this log yet: it holds no frames (a new or just reset database).
    let mirrored = match &settling {
        Some(settling) => Some(settling.state().clone()),
        None => mirror.state()?,
    };
    let Some(frame) = mirrored
        .filter(|s| s.log_id == hello.log_id)
        .and_then(|s| s.frame_no)
    else {
        return Ok(FromLog::NotNow);
    };
    // A spot check costs a request and needs the remote's answers at the mirror's frame; on a
    // source whose frames are not the server's index (Turso Sync's pages) it cannot conclude,
    // and the source's own witness of the mirror's last frames stands in for it. Its request
    // goes out while the mirror's side of the pull is read (the pages the log changed, their
    // rows against the base's), which writes nothing: it must agree before anything read from
    // the mirror is merged.
    let spot = advanced && log.frames_are_server_index();
    let read_theirs = || -> Result<(Connection, Connection, Changeset, String)> {
        let base = ws.open_base()?;
        let theirs_db = open_immutable(&mirror.db_path())?;
        let touched = match &before {
            Ok(before) => touched(before, &theirs_db, &base)?,
            Err(why) => Touched::Everything(why.clone()),
        };
        let (cs, read) = match touched {
            Touched::Tables(tables) => (
                diff::diff_remote(&base, &theirs_db, Some(&tables))?,
                "the pages the log changed".to_owned(),
            ),
            Touched::Everything(why) => (
                diff::diff_remote(&base, &theirs_db, None)?,
                format!("whole tables of the mirror: {why}"),
            ),
        };
        Ok((base, theirs_db, cs, read))
    };
    let (check, read) = std::thread::scope(|s| {
        let check = spot.then(|| {
            s.spawn(|| {
                open_immutable(&mirror.db_path())
                    .and_then(|theirs_db| spot_check(&theirs_db, remote, frame))
            })
        });
        let read = read_theirs();
        let check = check.map(|c| c.join().unwrap_or_else(|p| std::panic::resume_unwind(p)));
        (check, read)
    });
    // Either way out closes what the read opened on the mirror and the base first.
    match check {
        Some(Err(e)) => {
            drop(read);
            return drop_damaged(ws, &mirror, settling.take(), e);
        }
        Some(Ok(SpotCheck::Differed(difference))) => {
            drop(read);
            // The base is at no point of a mirror that is gone.
            forget_base_at(ws)?;
            // Its sync finishes (or fails) before the files go.
            drop(settling.take());
            mirror.remove()?;
            return Ok(FromLog::Diverged(difference));
        }
        _ => {}
    }
    let merge_theirs = |(base, theirs_db, cs, read): (
        Connection,
        Connection,
        Changeset,
        String,
    )|
     -> Result<(Merged, Changeset)> {
        let theirs = Theirs {
            db: &theirs_db,
            changes: cs.clone(),
            kept: TheirsKept::Mirror {
                log_id: hello.log_id.clone(),
                frame_no: frame,
            },
        };
        let merged = merge_into(ws, &base, theirs, merge, state.clean, on_wait)?;
        let outcome = merged.outcome.map(|report| PullReport {
            read: Some(read),
            ..report
        });
        Ok((Merged { outcome, ..merged }, cs))
    };
    // A damaged page fails the statement reading it; one whose failure was passed over (a
    // fallback to another way of reading) is caught here, before the base moves.
    let (merged, theirs) = match read.and_then(merge_theirs) {
        Ok(_) if mirror.damage_seen() => {
            let e = Error::Unexpected("a page of the mirror did not match its sum".into());
            return drop_damaged(ws, &mirror, settling.take(), e);
        }
        Ok(read) => read,
        Err(e) => return drop_damaged(ws, &mirror, settling.take(), e),
    };
    let mut dropped = None;
    let mut gave = false;
    if merged.outcome.is_done() {
        pause_after_commit();
        // The base becomes the mirror, page for page, in one transaction of its own, in place:
        // it takes the pages the mirror keeps apart from it (those the log wrote since the last
        // pull, and the base's old copies of those our pushes wrote since), so a pull costs
        // what changed, and the mirror then shares every page with it again
        // (`shared_pages::give_base`). Their rows are what turns the base into the mirror:
        // `theirs` is the base against the mirror. The move changes the base's stamp, so the
        // mirror point and the clean point recorded for the old base no longer count, even if
        // this run dies before recording the new ones (`SyncState::base_stamp`, `Clean`).
        // The mirror's sync goes on meanwhile: the base commits pages the page cache holds,
        // and until the spool that wrote them is gone, a crash applies it again.
        match ws.base_takes_mirror() {
            Ok(()) => gave = true,
            Err(e) => {
                // A damaged page of the mirror (one no read of this pull touched) is never
                // given to the base: the mirror goes, its sync finished first, and the base
                // takes their rows instead.
                let Some(why) = mirror.take_damage() else {
                    return Err(e);
                };
                drop(settling.take());
                mirror.remove()?;
                ws.update_base(|conn| theirs.apply(conn))?;
                dropped = Some(format!(
                    "; then {why}: the mirror was dropped and is read again from the log"
                ));
            }
        }
        ws.forget_after_pull()?;
    }
    // Once the mirror's own writes are synced, it reads every page from the base again (a
    // crash before leaves them in both files, holding the same bytes, or in the spool, which
    // is applied again).
    match (settling, gave) {
        (Some(settling), true) => drop(settling.given()?),
        (Some(settling), false) => drop(settling.wait()?),
        (None, true) => crate::shared_pages::share(&ws.state_dir())?,
        (None, false) => {}
    }
    // Nothing was downloaded when the mirror did not move and the base was at its point
    // already: a source that gives no index to compare first (Turso Sync) comes here then too,
    // and `sync` takes a download to mean that a refused push may have lost a race.
    // (Rows an interrupted pull left unsettled, settled now, count as what came.)
    let downloaded = advanced || base_at != Some(frame);
    let outcome = merged.outcome.map(|report| PullReport {
        downloaded: downloaded
            || report.applied + report.merged + report.resolved + report.schema_changes > 0,
        read: match (report.read, dropped) {
            (Some(read), Some(dropped)) => Some(read + &dropped),
            (read, _) => read,
        },
        ..report
    });
    Ok(FromLog::Done(Merged { outcome, ..merged }, frame))
}

/// A test hook: `TURSYNC_TEST_PULL_PAUSE_AFTER_COMMIT_MS` sleeps that long after the merge
/// committed into the working copy and before the base takes theirs, so a test can kill the
/// pull in between.
fn pause_after_commit() {
    crate::test_hook::pause("TURSYNC_TEST_PULL_PAUSE_AFTER_COMMIT_MS")
}

/// A test hook: `TURSYNC_TEST_PULL_PAUSE_BEFORE_COMMIT_MS` sleeps that long after the pull's
/// record is written and before the working copy's commit, so a test can kill the pull there.
fn pause_before_commit() {
    crate::test_hook::pause("TURSYNC_TEST_PULL_PAUSE_BEFORE_COMMIT_MS")
}

/// The base is at no point of a mirror that is about to go.
fn forget_base_at(ws: &Workspace) -> Result<()> {
    let state = ws.sync_state()?;
    ws.save_sync_state(&SyncState {
        base_at: None,
        ..state
    })
}

/// After `e` while reading the mirror: when the checking VFS found a damaged page, the mirror
/// goes (its sync finished first) and the pull reads over SQL; any other error is passed on.
fn drop_damaged(
    ws: &Workspace,
    mirror: &Mirror,
    settling: Option<Settling>,
    e: Error,
) -> Result<FromLog> {
    let Some(why) = mirror.take_damage() else {
        return Err(e);
    };
    forget_base_at(ws)?;
    drop(settling);
    mirror.remove()?;
    Ok(FromLog::Damaged(why))
}

/// Takes the working copy's write lock, telling the user once if the app holds it. The wait
/// ([`wait_for_locks`]) retries every millisecond, so an app that commits back to back still
/// leaves us a moment to take it. A `BEGIN IMMEDIATE` string rather than a rusqlite
/// `Transaction`: the first try must not wait, and the wait for the second needs the connection
/// mutably (`busy_handler`), which a `Transaction` borrowing it would forbid; `merge_into` ends
/// it with `COMMIT` or `ROLLBACK` on every path.
fn begin_immediate(work: &mut Connection, on_wait: WaitNotice<'_>) -> Result<()> {
    work.busy_timeout(std::time::Duration::ZERO)?;
    let first = work.execute_batch("BEGIN IMMEDIATE");
    wait_for_locks(work)?;
    match first {
        Err(rusqlite::Error::SqliteFailure(e, _))
            if e.code == rusqlite::ErrorCode::DatabaseBusy =>
        {
            on_wait();
            work.execute_batch("BEGIN IMMEDIATE").map_err(|e| {
                Error::Busy(format!(
                    "the working copy stayed locked by another connection for {}s ({e}); try again when the app is idle",
                    BUSY_TIMEOUT.as_secs()
                ))
            })
        }
        other => Ok(other?),
    }
}

/// `PRAGMA data_version`: changes whenever another connection commits to the file.
fn data_version(work: &Connection) -> Result<i64> {
    Ok(work.query_row("PRAGMA data_version", [], |r| r.get(0))?)
}

/// How a merge into the working copy went.
struct Merged {
    outcome: Outcome<PullReport>,
    /// The working copy's stamp right after our commit, when nothing of ours was pending and
    /// no app committed in between: once the base takes theirs, the two hold the same rows
    /// ([`Clean`]).
    clean_work: Option<Stamp>,
}

/// The working copy's stamp just after our commit, in a read transaction of its own: `None`
/// when another connection committed in between (`data_version` moved from `locked`, read
/// under our write lock), since the stamp would then cover the app's write too. Our commit is
/// done: a failure to read the stamp only costs the next pull a full read of ours.
fn stamp_after_commit(work: &Connection, locked: i64) -> Option<Stamp> {
    let read = Transaction::new_unchecked(work, TransactionBehavior::Deferred).ok()?;
    let stamp = pages::stamp(work).ok().flatten();
    let unmoved = matches!(data_version(work), Ok(v) if v == locked);
    read.commit().ok()?;
    stamp.filter(|_| unmoved)
}

/// Their side of a pull: the remote's database as read (the mirror, or a download), their
/// changes since the base, and where that database stays for the next run if this one is
/// killed between the working copy's commit and the base's.
struct Theirs<'a> {
    db: &'a Connection,
    changes: Changeset,
    kept: TheirsKept,
}

/// Merges the remote copy into the working copy, holding the app's write lock only to check
/// and apply. Ours and the merge come from a read snapshot of the working copy; then, under
/// the write lock, `data_version` says whether the app committed since. If it did, ours is
/// read again (the app waits for us now) and the merge planned again, so every app commit is
/// either merged or was already in the snapshot: none is overwritten.
fn merge_into(
    ws: &Workspace,
    base: &Connection,
    theirs: Theirs<'_>,
    merge: &MergeOptions,
    clean: Option<Clean>,
    on_wait: WaitNotice<'_>,
) -> Result<Merged> {
    let Theirs {
        db: theirs_db,
        changes: recorded,
        kept,
    } = theirs;
    // What the base takes is the record's; the merge into the working copy leaves out the
    // rows an interrupted push of ours already brought to the remote.
    let theirs = match ws.interrupted_push()? {
        Some(pushed) => {
            let mut theirs = recorded.clone();
            strip_our_push(&mut theirs, &pushed);
            std::borrow::Cow::Owned(theirs)
        }
        None => std::borrow::Cow::Borrowed(&recorded),
    };
    let theirs = theirs.as_ref();
    let marks = Unsettled::load(&ws.state_dir())?;
    // Plans the merge of `ours`, with the rows an interrupted pull left unsettled settled as
    // `merge` says (or left as conflicts).
    let plan_merge = |mut ours: Changeset, work: &Connection| -> Result<Plan> {
        if marks.is_empty() {
            return Plan::new(&ours, theirs, merge, work, theirs_db, &marks);
        }
        let mut theirs = theirs.clone();
        let (left, take_back) = marks.settle_rows(&mut ours, &mut theirs, merge);
        let mut plan = Plan::new(&ours, &theirs, merge, work, theirs_db, &marks)?;
        plan.conflicts.extend(left);
        plan.take_back_first(take_back);
        Ok(plan)
    };

    let mut work = ws.open_working_copy(false)?;
    // Off before the transaction: SQLite ignores the pragma inside one.
    work.execute_batch("PRAGMA foreign_keys = OFF")?;
    let snapshot = Transaction::new_unchecked(&work, TransactionBehavior::Deferred)?;
    let known = ws.known_leaves()?;
    let wc = ws.db_path();
    let (ours, _) = read_ours(base, &work, &diff::Filter::default(), clean, known.as_ref())
        .during("reading our changes from", wc.display())?;
    // A table named to settle (`--theirs TABLE`) must exist: a typo would settle nothing.
    for name in merge.tables.keys() {
        if ![&ours, theirs]
            .iter()
            .any(|cs| cs.tables.iter().any(|t| &t.table.name == name))
        {
            return Err(Error::BadArgument(format!(
                "no table named {name:?} in the working copy or on the remote, so --ours/--theirs {name} settles nothing"
            )));
        }
    }
    let seen = data_version(&work)?;
    let mut nothing_ours = ours.is_empty();
    let mut plan = plan_merge(ours, &work).during("planning the merge into", wc.display())?;
    snapshot.commit()?;
    let unsettled = merge.unsettled(&plan.conflicts);
    if !unsettled.is_empty() {
        return Ok(Merged {
            outcome: Outcome::Conflicts(unsettled),
            clean_work: None,
        });
    }

    begin_immediate(&mut work, on_wait)?;
    let mut locked = None;
    let applied = (|| -> Result<Outcome<PullReport>> {
        let now = data_version(&work)?;
        locked = Some(now);
        if now != seen {
            let (ours, _) = read_ours(base, &work, &diff::Filter::default(), clean, known.as_ref())
                .during("reading our changes again from", wc.display())?;
            nothing_ours = ours.is_empty();
            plan = plan_merge(ours, &work).during("planning the merge again into", wc.display())?;
            let unsettled = merge.unsettled(&plan.conflicts);
            if !unsettled.is_empty() {
                return Ok(Outcome::Conflicts(unsettled));
            }
        }
        let before = Expected::before(&work, &recorded)
            .during("reading what the merge finds in", wc.display())?;
        let unique = plan
            .apply(&work, theirs_db, merge)
            .during("applying their changes to", wc.display())?;
        let unsettled = merge.unsettled(&unique);
        if !unsettled.is_empty() {
            return Ok(Outcome::Conflicts(unsettled));
        }
        plan.report.resolved += unique.len();
        // Nothing read from a damaged page of the mirror is committed, even when a reader
        // passed over the failed read.
        if crate::page_sums::damage_pending() {
            return Err(Error::Unexpected(
                "a page of the mirror did not match its sum".into(),
            ));
        }
        // The base takes theirs right after this commit; a pull killed in between leaves the
        // record, and the next one finishes the base's part ([`Workspace::finish_interrupted_pull`]).
        let expected = before
            .after(&work, &recorded)
            .during("reading what the merge left in", wc.display())?;
        ws.record_pull_start(&recorded, kept.clone(), expected)?;
        pause_before_commit();
        work.execute_batch("COMMIT")
            .during("committing the pull to", wc.display())?;
        ws.pull_landed()?;
        Ok(Outcome::Done(plan.report.clone()))
    })();
    if !matches!(applied, Ok(Outcome::Done(_))) {
        let _ = work.execute_batch("ROLLBACK");
    }
    let outcome = applied?;
    let clean_work = match locked {
        Some(locked) if outcome.is_done() && nothing_ours => stamp_after_commit(&work, locked),
        _ => None,
    };
    Ok(Merged {
        outcome,
        clean_work,
    })
}
