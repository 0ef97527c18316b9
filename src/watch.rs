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

use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use rusqlite::Connection;
use serde::ser::{SerializeMap, Serializer};
use serde::Serialize;

use crate::conflict::{Conflict, Op, Stopped};
use crate::progress::Progress;
use crate::pull::{MergeOptions, PullReport, Resolve};
use crate::push::PushReport;
use crate::remote::{Remote, Transient};
use crate::report::count;
use crate::sync::End;
use crate::workspace::Workspace;
use crate::{Error, Result};

/// How often the working copy's `data_version` is read: a local commit is pushed within this.
const LOCAL_POLL: Duration = Duration::from_millis(50);
/// The first wait after a failed round; each next one doubles, up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_secs(1);
const MAX_BACKOFF: Duration = Duration::from_secs(60);

/// What the watch tells its caller, who prints it: as text, or as its JSON (one object per
/// event, `event` naming it; see the `Serialize` impl).
pub enum Event<'a> {
    /// A round that changed something on either side, and how long it took: from the read of
    /// the remote's index that begins the step to the end of its push, what a change waits for
    /// once the round has started (issue 22 measures a pull inside a running watch by it).
    Synced {
        pulled: &'a PullReport,
        pushed: &'a PushReport,
        took: Duration,
    },
    /// A round, or a check while waiting on a conflict, that found nothing to do (shown with
    /// `-v` only).
    Checked {
        local_changed: bool,
        remote_index: Option<u64>,
    },
    /// The pull or the push found conflicts; reported once until they change.
    Conflicts(Stopped<'a>),
    /// The round was refused for a reason the user must settle (the app holding the write
    /// lock too long, say), with the error's message; reported once.
    Refused(&'a str),
    /// A round succeeded after conflicts or refusals.
    Settled,
    /// A round failed in a way that passes; the next one is in `delay`.
    Backoff { error: &'a Error, delay: Duration },
}

/// `watch --json`, one object per event:
///
/// ```text
/// {"event": "synced", "pulled": {"applied": 1, "merged": 0, "schema_changes": 0},
///  "pushed": {"changes": 2, "applied": 2, "skipped": 0}, "seconds": 0.031}
/// {"event": "checked", "local_changed": false, "remote_index": 7}
/// {"event": "conflict", "pulled": false, "conflicts": [..]}                 (as pull --json)
/// {"event": "conflict", "pushed": false, "conflicts": [..], "earlier_push_interrupted": false}
/// {"event": "refused", "error": ".."}
/// {"event": "settled"}
/// {"event": "retrying", "error": "..", "in_seconds": 2.0}
/// ```
impl Serialize for Event<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        #[derive(Serialize)]
        struct Pulled {
            applied: usize,
            merged: usize,
            schema_changes: usize,
        }
        #[derive(Serialize)]
        struct Pushed {
            changes: usize,
            applied: usize,
            skipped: usize,
        }
        let mut m = s.serialize_map(None)?;
        match self {
            Event::Synced {
                pulled,
                pushed,
                took,
            } => {
                m.serialize_entry("event", "synced")?;
                m.serialize_entry(
                    "pulled",
                    &Pulled {
                        applied: pulled.applied,
                        merged: pulled.merged,
                        schema_changes: pulled.schema_changes,
                    },
                )?;
                m.serialize_entry(
                    "pushed",
                    &Pushed {
                        changes: pushed.changes,
                        applied: pushed.applied,
                        skipped: pushed.skipped,
                    },
                )?;
                m.serialize_entry("seconds", &took.as_secs_f64())?;
            }
            Event::Checked {
                local_changed,
                remote_index,
            } => {
                m.serialize_entry("event", "checked")?;
                m.serialize_entry("local_changed", local_changed)?;
                m.serialize_entry("remote_index", remote_index)?;
            }
            Event::Conflicts(stopped) => {
                m.serialize_entry("event", "conflict")?;
                stopped.entries(&mut m)?;
            }
            Event::Refused(error) => {
                m.serialize_entry("event", "refused")?;
                m.serialize_entry("error", error)?;
            }
            Event::Settled => m.serialize_entry("event", "settled")?,
            Event::Backoff { error, delay } => {
                m.serialize_entry("event", "retrying")?;
                m.serialize_entry("error", &error.to_string())?;
                m.serialize_entry("in_seconds", &delay.as_secs_f64())?;
            }
        }
        m.end()
    }
}

impl Event<'_> {
    /// Whether a person reads this event on stderr: conflicts, refusals and waits; the others
    /// go to stdout.
    pub fn is_trouble(&self) -> bool {
        matches!(
            self,
            Event::Conflicts(_) | Event::Refused(_) | Event::Backoff { .. }
        )
    }

    /// The event for a person, each line ending in a newline, the first stamped `at`.
    pub fn write_text(&self, at: &str, out: &mut dyn Write) -> std::io::Result<()> {
        const GOES_ON: &str = "watch keeps running and tries again when either side changes.";
        match self {
            Event::Synced {
                pulled,
                pushed,
                took,
            } => writeln!(
                out,
                "{at} pulled {} ({} merged, {}), pushed {} ({} applied, {} already there) in {:.3}s",
                count(pulled.applied, "row change"),
                pulled.merged,
                count(pulled.schema_changes, "schema change"),
                count(pushed.changes, "change"),
                pushed.applied,
                pushed.skipped,
                took.as_secs_f64()
            ),
            Event::Checked {
                local_changed,
                remote_index,
            } => writeln!(
                out,
                "{at} checked: working copy {}, remote index {}; nothing to do",
                if *local_changed {
                    "committed to"
                } else {
                    "unchanged"
                },
                remote_index.map_or_else(|| "unknown".to_owned(), |i| i.to_string())
            ),
            Event::Conflicts(stopped) => {
                let doing = match stopped.op {
                    Op::Push { .. } => "pushing",
                    Op::Pull => "pulling",
                };
                writeln!(out, "{at} conflict while {doing}:")?;
                stopped.write_text(out)?;
                writeln!(out, "{GOES_ON}")
            }
            Event::Refused(e) => {
                writeln!(out, "{at} {e}")?;
                writeln!(out, "{GOES_ON}")
            }
            Event::Settled => writeln!(out, "{at} settled: syncing again"),
            Event::Backoff { error, delay } => {
                writeln!(out, "{at} {error}; trying again in {}s", delay.as_secs())
            }
        }
    }
}

/// Runs until `stop` is set (returns `Ok`) or an error that will not pass (returns it).
///
/// ```text
/// wait for a change ──► step ──► ran: report it; blocked on conflicts or a refusal: report
///      ▲                  │       once, then wait for either side to move
///      │                  ├────► raced: go again at once
///      └── back off ◄─────┴────► an error that passes (any other ends the watch)
/// ```
pub fn watch(
    ws: &Workspace,
    remote: &Remote,
    interval: Duration,
    stop: &AtomicBool,
    on_event: &mut dyn FnMut(Event<'_>),
) -> Result<()> {
    let mut w = Watch {
        watched: ws.open_working_copy(true)?,
        ws,
        remote,
        interval,
        stop,
        on_event,
        round_local: None,
        pushed_local: None,
        blocked: None,
        failures: 0,
        next_due: Instant::now(),
    };
    while let Some((local, local_changed)) = w.wait_for_change()? {
        // Every request of the round, and the index reads that judge its end, in one step:
        // whatever fails there in a way that passes is waited out.
        let step = w.step(local);
        w.round_local = Some(local);
        match step {
            Ok(step) => {
                w.failures = 0;
                w.settle(step, local, local_changed)?;
            }
            Err(e) if e.remote().is_some_and(|r| r.is_transient()) => w.back_off(&e),
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// The watch between rounds.
struct Watch<'a> {
    ws: &'a Workspace,
    remote: &'a Remote,
    interval: Duration,
    stop: &'a AtomicBool,
    on_event: &'a mut dyn FnMut(Event<'_>),
    /// A connection kept open on the working copy, whose `data_version` moves when any other
    /// connection commits.
    watched: Connection,
    /// The data_version at the start of the last round (`None`: look again at once).
    round_local: Option<i64>,
    /// The data_version at the start of the last round whose push saw the whole working copy.
    pushed_local: Option<i64>,
    /// Why rounds wait for a change, set in one place ([`Watch::block`]).
    blocked: Option<Blocked>,
    /// Failed steps in a row, which the backoff doubles by.
    failures: u32,
    /// When the next round is due whatever happens locally.
    next_due: Instant,
}

/// Why rounds wait for a change: what was reported, and the two sides as they were then.
struct Blocked {
    why: Why,
    local: i64,
    remote: Option<u64>,
}

impl Blocked {
    /// Whether neither side moved since: the working copy's `data_version` is `local` and the
    /// remote's replication index `remote`. A remote that does not say where it stands (Turso
    /// Sync's answers carry no index) may have moved: its round runs again, and its pull finds
    /// nothing new in one request, or the change that settles the conflict. What blocked the
    /// rounds is reported once all the same ([`Watch::block`]).
    fn holds(&self, local: i64, remote: Option<u64>) -> bool {
        self.could_hold(local) && self.remote == remote
    }

    /// Whether [`Self::holds`] may, before the remote's index is read: not once the working
    /// copy moved, nor for a remote that does not say where it stands.
    fn could_hold(&self, local: i64) -> bool {
        self.local == local && self.remote.is_some()
    }
}

/// What blocks rounds, compared by value so each is reported once.
#[derive(PartialEq)]
enum Why {
    PullConflicts(Vec<Conflict>),
    PushConflicts(Vec<Conflict>),
    /// The refusal's message.
    Refused(String),
}

/// How one step ended: a round, with the remote's index before it; nothing tried, both sides
/// as they were when rounds were blocked; a push that lost a race, to be run again at once; or
/// a refusal, with the remote's index after it.
enum Step {
    Ran(Option<u64>, Round),
    Unchanged(Option<u64>),
    Raced,
    Refused(Error, Option<u64>),
}

/// How a round ended.
enum Round {
    Done,
    PullConflicts(Vec<Conflict>),
    PushConflicts(Vec<Conflict>),
}

impl Watch<'_> {
    /// Waits until the working copy committed since the last round, or a round is due: the
    /// working copy's `data_version` then, and whether it moved. `None` once stopped.
    fn wait_for_change(&mut self) -> Result<Option<(i64, bool)>> {
        while !self.stop.load(Ordering::SeqCst) {
            if !self.ws.db_path().exists() {
                return Err(Error::Io(std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    format!("the working copy {} is gone", self.ws.db_path().display()),
                )));
            }
            let local: i64 = self
                .watched
                .query_row("PRAGMA data_version", [], |r| r.get(0))?;
            let local_changed = self.round_local != Some(local);
            let due = Instant::now() >= self.next_due;
            if local_changed || due {
                if due {
                    self.next_due = Instant::now() + self.interval;
                }
                return Ok(Some((local, local_changed)));
            }
            std::thread::sleep(LOCAL_POLL);
        }
        Ok(None)
    }

    /// A round, unless rounds are blocked and neither side moved since. Unblocked, the round's
    /// pull is the only look at the remote: a round with nothing new on either side is one
    /// request, and the index that pull read is the one a conflict waits on.
    fn step(&mut self, local: i64) -> Result<Step> {
        // The round's duration counts from here: its first request.
        let started = Instant::now();
        if let Some(blocked) = self.blocked.as_ref().filter(|b| b.could_hold(local)) {
            let now = self.remote.replication_index()?;
            if blocked.holds(local, now) {
                return Ok(Step::Unchanged(now));
            }
        } else if self.blocked.as_ref().is_some_and(|b| {
            b.local == local && b.remote.is_none() && matches!(b.why, Why::PushConflicts(_))
        }) {
            // A remote that does not say where it stands: its pull alone tells whether it
            // moved. With nothing new on either side the push would be refused the same way,
            // so it is not sent again (each one opens a write transaction on the remote).
            let pulled = crate::pull::pull(
                self.ws,
                self.remote,
                &Self::merge(),
                crate::clone::FetchOptions::default(),
                &Progress::hidden(),
                &|| {},
            )?;
            if matches!(&pulled.outcome, crate::conflict::Outcome::Done(r) if !r.downloaded) {
                return Ok(Step::Unchanged(pulled.remote_index));
            }
        }
        match self.round(local, started) {
            // The sync pulled and pushed again while the remote kept moving, and still the
            // push was refused: no conflict yet, the next round pulls their change first.
            Ok((before, Round::PushConflicts(_))) if self.remote.replication_index()? != before => {
                Ok(Step::Raced)
            }
            Ok((before, done)) => Ok(Step::Ran(before, done)),
            Err(e) if matches!(e.root(), Error::Busy(_) | Error::Unsupported(_)) => {
                Ok(Step::Refused(e, self.remote.replication_index()?))
            }
            Err(e) => Err(e),
        }
    }

    /// What a step leaves: reported, and rounds blocked or unblocked.
    fn settle(&mut self, step: Step, local: i64, local_changed: bool) -> Result<()> {
        match step {
            Step::Unchanged(remote_index) => (self.on_event)(Event::Checked {
                local_changed,
                remote_index,
            }),
            Step::Ran(_, Round::Done) => {
                if self.blocked.take().is_some() {
                    (self.on_event)(Event::Settled);
                }
            }
            Step::Ran(before, Round::PullConflicts(c)) => {
                self.block(Why::PullConflicts(c), local, before)?
            }
            Step::Ran(before, Round::PushConflicts(c)) => {
                self.block(Why::PushConflicts(c), local, before)?
            }
            Step::Raced => self.round_local = None,
            // What the user must settle: reported once, then rounds wait for a change.
            Step::Refused(e, after) => self.block(Why::Refused(e.to_string()), local, after)?,
        }
        Ok(())
    }

    /// Blocks rounds until either side moves from `local` and `remote`, reporting `why` unless
    /// it is what blocked them already.
    fn block(&mut self, why: Why, local: i64, remote: Option<u64>) -> Result<()> {
        if self.blocked.as_ref().is_none_or(|b| b.why != why) {
            let event = match &why {
                Why::PullConflicts(conflicts) => Event::Conflicts(Stopped {
                    op: Op::Pull,
                    conflicts,
                }),
                Why::PushConflicts(conflicts) => Event::Conflicts(Stopped {
                    op: Op::Push {
                        interrupted: self.ws.push_interrupted()?,
                    },
                    conflicts,
                }),
                Why::Refused(message) => Event::Refused(message),
            };
            (self.on_event)(event);
        }
        self.blocked = Some(Blocked { why, local, remote });
        Ok(())
    }

    /// Waits out an error that passes, longer after each in a row; whatever changed meanwhile
    /// is looked at after the wait.
    fn back_off(&mut self, error: &Error) {
        let delay = crate::remote::retry::doubling(FIRST_BACKOFF, self.failures, MAX_BACKOFF);
        self.failures += 1;
        (self.on_event)(Event::Backoff { error, delay });
        self.round_local = None;
        let until = Instant::now() + delay;
        while Instant::now() < until && !self.stop.load(Ordering::SeqCst) {
            std::thread::sleep(LOCAL_POLL);
        }
    }

    /// As `sync` merges: conflicts stop the round, colliding new rows are renumbered.
    fn merge() -> MergeOptions {
        MergeOptions {
            resolve: Resolve::Refuse,
            tables: Default::default(),
            renumber: true,
        }
    }

    /// One `sync` ([`crate::sync::sync`]): pull, then push (skipped when the working copy has
    /// not moved since a push that saw all of it). Reports a round that changed something, or
    /// (for `-v`) one that did not. Returns with how it ended the remote's index its pull read
    /// first.
    fn round(&mut self, local: i64, started: Instant) -> Result<(Option<u64>, Round)> {
        let merge = Self::merge();
        let local_changed = self.pushed_local != Some(local);
        let synced = crate::sync::sync(
            self.ws,
            self.remote,
            &merge,
            local_changed,
            &Progress::hidden(),
            &|| {},
        )?;
        let index = synced.remote_index;
        let pushed = match synced.end {
            End::Pushed(r) => r,
            End::PullConflicts(conflicts) => return Ok((index, Round::PullConflicts(conflicts))),
            End::PushConflicts(conflicts) => return Ok((index, Round::PushConflicts(conflicts))),
        };
        if local_changed {
            self.pushed_local = Some(local);
        }
        let pulled = synced.pulled.unwrap_or_default();
        if pulled.applied > 0 || pulled.schema_changes > 0 || pushed.changes > 0 {
            (self.on_event)(Event::Synced {
                pulled: &pulled,
                pushed: &pushed,
                took: started.elapsed(),
            });
        } else {
            (self.on_event)(Event::Checked {
                local_changed,
                remote_index: index,
            });
        }
        Ok((index, Round::Done))
    }
}
