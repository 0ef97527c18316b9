//! `tursync verify`: whether the working copy and the base are intact SQLite files, and
//! whether the base still equals the remote at the recorded sync point.
//!
//! This is what a user runs when something looks wrong. It reads everything: SQLite's
//! `integrity_check` of both files, then the whole remote, diffed against the base. The remote
//! cannot be read as it was at an older point, so the comparison is conclusive only when the
//! remote has not moved since the last sync (its replication index before and after the read
//! equals the recorded one); otherwise the differences are reported as not yet pulled.
//! The mirror of the replication log, when there is one, gets the same checks against the same
//! read of the remote, conclusive when the remote is at the mirror's frame.

use std::path::PathBuf;

use crate::changeset::Changeset;
use crate::clone::FetchOptions;
use crate::diff;
use crate::mirror::open_immutable;
use crate::progress::Progress;
use crate::remote::Remote;
use crate::workspace::{open_snapshot, Workspace};
use crate::Result;

/// What `PRAGMA integrity_check` said of one file: no problems means intact.
#[derive(Debug)]
pub struct Integrity {
    pub file: PathBuf,
    pub problems: Vec<String>,
}

impl Integrity {
    pub fn ok(&self) -> bool {
        self.problems.is_empty()
    }
}

/// How the base compares with the remote.
#[derive(Debug)]
pub enum RemoteCheck {
    /// The base is damaged, so it was not compared.
    Skipped,
    /// The remote is at the recorded sync point; `differences` is what the base lacks or holds
    /// beyond it: drift, when not empty.
    AtSyncPoint { differences: Changeset },
    /// The remote moved since the last sync (or no sync point was recorded): `differences`
    /// are others' changes not yet pulled, not drift.
    Moved { differences: Changeset },
}

/// The mirror: intact or not, and how it compares with the remote (at the mirror's frame).
#[derive(Debug)]
pub struct MirrorCheck {
    pub integrity: Integrity,
    pub frame_no: Option<u64>,
    pub remote: RemoteCheck,
}

#[derive(Debug)]
pub struct VerifyReport {
    pub working_copy: Integrity,
    pub base: Integrity,
    pub remote: RemoteCheck,
    pub mirror: Option<MirrorCheck>,
}

impl VerifyReport {
    /// Drift: the base differs from the remote at the very sync point it records, or the
    /// mirror from the remote at its frame.
    pub fn drift(&self) -> bool {
        let drifted = |r: &RemoteCheck| matches!(r, RemoteCheck::AtSyncPoint { differences } if !differences.is_empty());
        drifted(&self.remote) || self.mirror.as_ref().is_some_and(|m| drifted(&m.remote))
    }

    /// Whether every file checked is intact.
    pub fn intact(&self) -> bool {
        self.working_copy.ok()
            && self.base.ok()
            && self.mirror.as_ref().is_none_or(|m| m.integrity.ok())
    }
}

/// Checks the workspace. Holds the workspace lock, so no push or pull moves the base meanwhile;
/// the working copy is read in one read transaction beside the app.
pub fn verify(
    ws: &Workspace,
    remote: &Remote,
    opts: FetchOptions,
    progress: &Progress,
) -> Result<VerifyReport> {
    let _lock = ws.lock()?;
    let work = ws.open_working_copy(true)?;
    let working_copy = integrity(&work, ws.db_path())?;
    drop(work);
    let base_conn = ws.open_base()?;
    let base = integrity(&base_conn, ws.base_path())?;
    if !base.ok() {
        return Ok(VerifyReport {
            working_copy,
            base,
            remote: RemoteCheck::Skipped,
            mirror: None,
        });
    }
    let recorded = ws.sync_state()?.replication_index;
    let before = remote.query("SELECT 1", vec![])?.replication_index();
    let copy = ws.download(remote, opts, progress)?;
    let after = remote.query("SELECT 1", vec![])?.replication_index();
    let theirs = open_snapshot(&copy.path)?;
    let differences = diff::diff(&base_conn, &theirs, &diff::Filter::default())?;
    let at = |point: Option<u64>, differences| {
        if point.is_some() && before == point && after == point {
            RemoteCheck::AtSyncPoint { differences }
        } else {
            RemoteCheck::Moved { differences }
        }
    };
    let mirror = ws.mirror();
    // A mirror whose files disagree is not checked: the next pull drops it and reads the log
    // again.
    let mirror = match mirror.health()? {
        Some(Ok(state)) => {
            let conn = open_immutable(&mirror.db_path())?;
            let integrity = integrity(&conn, mirror.db_path())?;
            let remote = if integrity.ok() {
                at(
                    state.frame_no,
                    diff::diff(&conn, &theirs, &diff::Filter::default())?,
                )
            } else {
                RemoteCheck::Skipped
            };
            Some(MirrorCheck {
                integrity,
                frame_no: state.frame_no,
                remote,
            })
        }
        _ => None,
    };
    Ok(VerifyReport {
        working_copy,
        base,
        remote: at(recorded, differences),
        mirror,
    })
}

/// `PRAGMA integrity_check` of `conn`'s database. A file too damaged to be checked at all is
/// a problem found, not a failure of the check.
fn integrity(conn: &rusqlite::Connection, file: PathBuf) -> Result<Integrity> {
    let run = || -> rusqlite::Result<Vec<String>> {
        conn.prepare("PRAGMA integrity_check")?
            .query_map([], |r| r.get::<_, String>(0))?
            .collect()
    };
    let problems = match run() {
        Ok(lines) if lines == ["ok"] => Vec::new(),
        Ok(lines) => lines,
        Err(rusqlite::Error::SqliteFailure(e, msg))
            if matches!(
                e.code,
                rusqlite::ErrorCode::DatabaseCorrupt | rusqlite::ErrorCode::NotADatabase
            ) || e.extended_code == rusqlite::ffi::SQLITE_IOERR_DATA =>
        {
            // A page of the mirror that does not match its sum (`page_sums`).
            if let Some(why) = crate::page_sums::take_damage(&file) {
                return Ok(Integrity {
                    file,
                    problems: vec![why],
                });
            }
            vec![msg.unwrap_or_else(|| e.to_string())]
        }
        Err(e) => return Err(e.into()),
    };
    Ok(Integrity { file, problems })
}
