//! `tursync sync`, and each round of `tursync watch`: pull, then push.
//!
//! A push refused because someone pushed between our pull and our push (their new rows took our
//! new rows' keys, say) is a race, not a conflict: a fresh pull brings their change in (and
//! renumbers ours), and the push goes again. A push conflict is reported only when the fresh
//! pull found the remote unchanged, or after [`ATTEMPTS`] pushes; a conflict the fresh pull
//! finds is reported as the pull's.

use crate::clone::FetchOptions;
use crate::conflict::{Conflict, Outcome};
use crate::progress::Progress;
use crate::pull::{MergeOptions, PullReport, WaitNotice};
use crate::push::{PushOptions, PushReport};
use crate::remote::Remote;
use crate::workspace::Workspace;
use crate::Result;

/// Pushes tried, each after a pull, before a push conflict is reported whatever the remote did.
pub const ATTEMPTS: u32 = 3;

/// What a sync did.
#[derive(Debug)]
pub struct Synced {
    /// Every pull that finished, added up; `None` when the first one stopped on conflicts.
    pub pulled: Option<PullReport>,
    /// Pushes tried (0 when none was asked for or the first pull stopped on conflicts).
    pub attempts: u32,
    pub end: End,
    /// The remote's replication index the first pull read ([`crate::pull::Pulled`]).
    pub remote_index: Option<u64>,
}

impl Synced {
    /// For a person, before the conflicts of a push refused after [`ATTEMPTS`] pulls: that the
    /// remote moved each time between the pull and the push, so the last refusal stands.
    pub fn retries_note(&self) -> Option<String> {
        match self.end {
            End::PushConflicts(_) if self.attempts >= ATTEMPTS => Some(format!(
                "note: the remote changed between each of {} pulls and the push that followed; the last push was refused as below",
                self.attempts
            )),
            _ => None,
        }
    }
}

/// How a sync ended.
#[derive(Debug)]
pub enum End {
    /// Pushed (an empty report when there was nothing to push or no push was asked for).
    Pushed(PushReport),
    /// A pull found conflicts; nothing of that pull changed either side.
    PullConflicts(Vec<Conflict>),
    /// The push found conflicts that a fresh pull did not explain; nothing of it was sent.
    PushConflicts(Vec<Conflict>),
}

/// Pulls, then pushes when `push` is set, pulling and pushing again when the push lost a race
/// (see the module's documentation).
pub fn sync(
    ws: &Workspace,
    remote: &Remote,
    merge: &MergeOptions,
    push: bool,
    progress: &Progress,
    on_wait: WaitNotice<'_>,
) -> Result<Synced> {
    let mut pulled: Option<PullReport> = None;
    let mut attempts = 0;
    let mut remote_index = None;
    // The conflicts of the last push, while a fresh pull decides whether they were a race.
    let mut refused: Option<Vec<Conflict>> = None;
    loop {
        let opts = FetchOptions::default();
        let pull = crate::pull::pull(ws, remote, merge, opts, progress, on_wait)?;
        if attempts == 0 {
            remote_index = pull.remote_index;
        }
        let report = match pull.outcome {
            Outcome::Done(r) => r,
            Outcome::Conflicts(conflicts) => {
                return Ok(Synced {
                    pulled,
                    attempts,
                    end: End::PullConflicts(conflicts),
                    remote_index,
                })
            }
        };
        // Downloaded: the remote moved since the last sync (the push refused meanwhile may have
        // lost a race with it).
        let moved = report.downloaded;
        pulled = Some(match pulled.take() {
            Some(before) => add(before, report),
            None => report,
        });
        let end = match refused.take() {
            Some(conflicts) if !moved => Some(End::PushConflicts(conflicts)),
            _ if !push => Some(End::Pushed(PushReport::default())),
            _ => None,
        };
        if let Some(end) = end {
            return Ok(Synced {
                pulled,
                attempts,
                end,
                remote_index,
            });
        }
        attempts += 1;
        match crate::push::push(ws, remote, PushOptions::default(), progress)? {
            Outcome::Done(r) => {
                return Ok(Synced {
                    pulled,
                    attempts,
                    end: End::Pushed(r),
                    remote_index,
                })
            }
            Outcome::Conflicts(conflicts) if attempts >= ATTEMPTS => {
                return Ok(Synced {
                    pulled,
                    attempts,
                    end: End::PushConflicts(conflicts),
                    remote_index,
                })
            }
            Outcome::Conflicts(conflicts) => refused = Some(conflicts),
        }
    }
}

/// Two pulls' reports as one: counts added, renumbered rows listed in order, the last read.
fn add(mut first: PullReport, then: PullReport) -> PullReport {
    first.downloaded |= then.downloaded;
    first.read = then.read.or(first.read);
    first.applied += then.applied;
    first.merged += then.merged;
    first.resolved += then.resolved;
    first.schema_changes += then.schema_changes;
    first.renumbered.extend(then.renumbered);
    first.references.extend(then.references);
    first.schema.extend(then.schema);
    first
}
