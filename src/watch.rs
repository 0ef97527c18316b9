//! `tursync watch`: the same `sync` as the command, run again whenever either side changes,
//! beside a running app, until the user stops it.
//!
//! What sets off a round:
//! * a local commit, seen through `PRAGMA data_version` on a connection kept open on the
//!   working copy (it moves when any other connection commits; reading it touches no table), polled
//!   every [`LOCAL_POLL`];
//! * and every interval, a round whose pull first compares the remote's replication index with
//!   the one recorded at the last sync (one small request) and downloads only when it moved.
//!
//! A round is [`crate::sync::sync`], the same as the command: pull then push, each all or
//! nothing, pulled and pushed again when the push lost a race with a teammate's. The push is
//! skipped when the working copy has not changed since a push that saw all of it, so an idle
//! round costs one request. A conflict is reported once; the watch then waits until either side changes (a
//! local commit, or a new replication index) and tries again, so the user can settle it while it
//! runs. Errors that pass (see [`crate::remote::RemoteError::is_transient`]), in a round or in
//! any other request the watch makes (the index reads), are waited out with exponential
//! backoff; any other error ends the watch.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::conflict::Conflict;
use crate::progress::Progress;
use crate::pull::{MergeOptions, PullReport, Resolve};
use crate::push::PushReport;
use crate::remote::{Remote, Transient};
use crate::sync::End;
use crate::workspace::Workspace;
use crate::{Error, Result};

/// How often the working copy's `data_version` is read: a local commit is pushed within this.
const LOCAL_POLL: Duration = Duration::from_millis(50);
/// The first wait after a failed round; each next one doubles, up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_secs(1);
const MAX_BACKOFF: Duration = Duration::from_secs(60);

/// What the watch tells its caller, who prints it.
pub enum Event<'a> {
    /// A round that changed something on either side.
    Synced {
        pulled: &'a PullReport,
        pushed: &'a PushReport,
    },
    /// A round, or a check while waiting on a conflict, that found nothing to do (shown with
    /// `-v` only).
    Checked {
        local_changed: bool,
        remote_index: Option<u64>,
    },
    /// The pull found conflicts; reported once until they change.
    PullConflicts(&'a [Conflict]),
    /// The push found conflicts; reported once until they change.
    PushConflicts {
        conflicts: &'a [Conflict],
        earlier_push_interrupted: bool,
    },
    /// The round was refused for a reason the user must settle (the app holding the write
    /// lock too long, say); reported once.
    Refused(&'a Error),
    /// A round succeeded after conflicts or refusals.
    Settled,
    /// A round failed in a way that passes; the next one is in `delay`.
    Backoff { error: &'a Error, delay: Duration },
}

/// Why rounds wait for a change: what was reported, and the two sides as they were then.
struct Blocked {
    report: String,
    local: i64,
    remote: Option<u64>,
}

/// How one step of the loop ended: a round (or, with `None`, a check that found both sides
/// as they were when rounds were blocked), with the remote's index before it; a push that lost
/// a race, to be run again at once; or a refusal, with the remote's index after it.
enum Step {
    Round(Option<u64>, Option<Round>),
    Raced,
    Refused(Error, Option<u64>),
}

/// How a round ended.
enum Round {
    Done,
    PullConflicts(Vec<Conflict>),
    PushConflicts(Vec<Conflict>),
}

/// Runs until `stop` is set (returns `Ok`) or an error that will not pass (returns it).
pub fn watch(
    ws: &Workspace,
    remote: &Remote,
    interval: Duration,
    stop: &AtomicBool,
    on_event: &mut dyn FnMut(Event<'_>),
) -> Result<()> {
    let watched = ws.open_working_copy(true)?;
    let data_version =
        || -> Result<i64> { Ok(watched.query_row("PRAGMA data_version", [], |r| r.get(0))?) };
    let index = || -> Result<Option<u64>> { Ok(remote.replication_index()?) };
    // The data_version at the start of the last round, and at the start of the last round
    // whose push saw the whole working copy.
    let mut round_local: Option<i64> = None;
    let mut pushed_local: Option<i64> = None;
    let mut blocked: Option<Blocked> = None;
    let mut failures = 0u32;
    let mut next_due = Instant::now();
    while !stop.load(Ordering::SeqCst) {
        if !ws.db_path().exists() {
            return Err(Error::Io(std::io::Error::new(
                std::io::ErrorKind::NotFound,
                format!("the working copy {} is gone", ws.db_path().display()),
            )));
        }
        let local = data_version()?;
        let local_changed = round_local != Some(local);
        let due = Instant::now() >= next_due;
        if !local_changed && !due {
            std::thread::sleep(LOCAL_POLL);
            continue;
        }
        if due {
            next_due = Instant::now() + interval;
        }
        // Every request of the round, and the index reads that judge its end, in one step:
        // whatever fails there in a way that passes is waited out below.
        let outcome = (|| -> Result<Step> {
            // The remote's index before the round: a conflict waits for it to move.
            let before = index()?;
            if blocked
                .as_ref()
                .is_some_and(|b| b.local == local && b.remote == before)
            {
                return Ok(Step::Round(before, None));
            }
            match round(
                ws,
                remote,
                (local, before),
                &mut pushed_local,
                &mut *on_event,
            ) {
                // The sync pulled and pushed again while the remote kept moving, and still the
                // push was refused: no conflict yet, the next round pulls their change first.
                Ok(Round::PushConflicts(_)) if index()? != before => Ok(Step::Raced),
                Ok(done) => Ok(Step::Round(before, Some(done))),
                Err(e) if matches!(e.root(), Error::Busy(_) | Error::Unsupported(_)) => {
                    Ok(Step::Refused(e, index()?))
                }
                Err(e) => Err(e),
            }
        })();
        round_local = Some(local);
        let (before, done) = match outcome {
            Ok(Step::Round(before, done)) => {
                failures = 0;
                (before, done)
            }
            Ok(Step::Raced) => {
                failures = 0;
                round_local = None;
                continue;
            }
            // What the user must settle: reported once, then rounds wait for a change.
            Ok(Step::Refused(e, remote_index)) => {
                failures = 0;
                let report = e.to_string();
                if blocked.as_ref().map(|b| &b.report) != Some(&report) {
                    on_event(Event::Refused(&e));
                }
                blocked = Some(Blocked {
                    report,
                    local,
                    remote: remote_index,
                });
                continue;
            }
            Err(e) if e.remote().is_some_and(|r| r.is_transient()) => {
                let delay = FIRST_BACKOFF
                    .saturating_mul(1 << failures.min(10))
                    .min(MAX_BACKOFF);
                failures += 1;
                on_event(Event::Backoff { error: &e, delay });
                // Whatever changed meanwhile is looked at after the wait.
                round_local = None;
                let until = Instant::now() + delay;
                while Instant::now() < until && !stop.load(Ordering::SeqCst) {
                    std::thread::sleep(LOCAL_POLL);
                }
                continue;
            }
            Err(e) => return Err(e),
        };
        let report = match &done {
            None | Some(Round::Done) => None,
            Some(Round::PullConflicts(c)) => Some(format!("{c:?}")),
            Some(Round::PushConflicts(c)) => Some(format!("{c:?}")),
        };
        let Some(report) = report else {
            if done.is_none() {
                on_event(Event::Checked {
                    local_changed,
                    remote_index: before,
                });
            } else if blocked.take().is_some() {
                on_event(Event::Settled);
            }
            continue;
        };
        if blocked.as_ref().map(|b| &b.report) != Some(&report) {
            match &done {
                Some(Round::PullConflicts(c)) => on_event(Event::PullConflicts(c)),
                Some(Round::PushConflicts(c)) => on_event(Event::PushConflicts {
                    conflicts: c,
                    earlier_push_interrupted: ws.push_interrupted()?,
                }),
                _ => {}
            }
        }
        blocked = Some(Blocked {
            report,
            local,
            remote: before,
        });
    }
    Ok(())
}

/// One `sync` ([`crate::sync::sync`]): pull, then push (skipped when the working copy has not
/// moved since a push that saw all of it). Reports a round that changed something, or (for
/// `-v`) one that did not.
fn round(
    ws: &Workspace,
    remote: &Remote,
    (local, index): (i64, Option<u64>),
    pushed_local: &mut Option<i64>,
    on_event: &mut dyn FnMut(Event<'_>),
) -> Result<Round> {
    // As `sync` does: conflicts stop the round, colliding new rows are renumbered.
    let merge = MergeOptions {
        resolve: Resolve::Refuse,
        tables: Default::default(),
        renumber: true,
    };
    let local_changed = *pushed_local != Some(local);
    let synced = crate::sync::sync(
        ws,
        remote,
        &merge,
        local_changed,
        &Progress::hidden(),
        &|| {},
    )?;
    let pushed = match synced.end {
        End::Pushed(r) => r,
        End::PullConflicts(conflicts) => return Ok(Round::PullConflicts(conflicts)),
        End::PushConflicts(conflicts) => return Ok(Round::PushConflicts(conflicts)),
    };
    if local_changed {
        *pushed_local = Some(local);
    }
    let pulled = synced.pulled.unwrap_or_default();
    if pulled.applied > 0 || pulled.schema_changes > 0 || pushed.changes > 0 {
        on_event(Event::Synced {
            pulled: &pulled,
            pushed: &pushed,
        });
    } else {
        on_event(Event::Checked {
            local_changed,
            remote_index: index,
        });
    }
    Ok(Round::Done)
}
