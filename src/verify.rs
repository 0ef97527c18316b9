//! `tursync verify`: whether the working copy and the base are intact SQLite files, and
//! whether the base still equals the remote at the recorded sync point.
//!
//! This is what a user runs when something looks wrong. It reads everything: SQLite's
//! `integrity_check` of both files, then the whole remote, diffed against the base. The remote
//! cannot be read as it was at an older point, so the comparison is conclusive only when the
//! remote has not moved since the last sync (its replication index before and after the read
//! equals the recorded one); otherwise the differences are reported as not yet pulled.

use std::path::PathBuf;

use crate::clone::FetchOptions;
use crate::diff::{self, Changeset};
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

#[derive(Debug)]
pub struct VerifyReport {
    pub working_copy: Integrity,
    pub base: Integrity,
    pub remote: RemoteCheck,
}

impl VerifyReport {
    /// Drift: the base differs from the remote at the very sync point it records.
    pub fn drift(&self) -> bool {
        matches!(&self.remote, RemoteCheck::AtSyncPoint { differences } if !differences.is_empty())
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
        });
    }
    let recorded = ws.sync_state()?.replication_index;
    let before = remote.query("SELECT 1", vec![])?.replication_index();
    let copy = ws.download(remote, opts, progress)?;
    let after = remote.query("SELECT 1", vec![])?.replication_index();
    let theirs = open_snapshot(&copy.path)?;
    let differences = diff::diff(&base_conn, &theirs, &diff::Filter::default())?;
    let still = recorded.is_some() && before == recorded && after == recorded;
    Ok(VerifyReport {
        working_copy,
        base,
        remote: if still {
            RemoteCheck::AtSyncPoint { differences }
        } else {
            RemoteCheck::Moved { differences }
        },
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
            ) =>
        {
            vec![msg.unwrap_or_else(|| e.to_string())]
        }
        Err(e) => return Err(e.into()),
    };
    Ok(Integrity { file, problems })
}
