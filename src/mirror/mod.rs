//! The mirror: a page-exact copy of the remote database file in `.tursync/mirror.db`, advanced
//! only by whole transactions read from the server's replication log, or from Turso Sync's
//! page pull read as one ([`crate::turso_pages`]).
//!
//! ```text
//! .tursync/mirror.db      the remote's database file, page for page (never written by SQLite)
//! .tursync/mirror.json    {"log_id":…,"generation_id":…,"frame_no":…}: the last frame in it
//!                         (and Turso Sync's "revision" there, for a mirror of its pages)
//! .tursync/mirror.spool   frames fetched and synced, not yet (or not surely) written into it
//! .tursync/mirror.sums    a CRC-32 of every page, with the frame and size they are of
//! ```
//!
//! An advance streams frames into a spool built aside (bounded memory, whatever the length of
//! the log), keeping only whole transactions. Once complete, its head records the count and
//! CRC-32 of its frames, and it is synced and renamed to `mirror.spool`: from then on it is
//! "ready" (one that no longer matches its head is damaged, and dropped with the mirror), and
//! applying it is idempotent (the same pages
//! written in the same order, the file cut to the last commit's size), so a run killed while
//! applying is finished by the next one. Then the pages go into the mirror, the file is synced,
//! the new frame number recorded atomically, and the spool deleted. A spool still under its
//! aside name is incomplete and swept with every other leftover.
//!
//! SQLite reads the mirror only as `immutable=1` ([`open_immutable`]): it takes no lock and
//! keeps no journal, so nothing of SQLite's is ever lost by our own writes to the file. It reads
//! it through the VFS of [`crate::page_sums`], which checks every page against the sum recorded
//! when the page was written; [`Mirror::health`] says whether the three files agree.

mod apply;
mod build;
mod log;
mod spool;
#[cfg(test)]
mod tests;

use std::fs;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::durable;
use crate::page_sums::{self, Header as SumsHeader};
use crate::remote::replication::LogError;
use crate::{Context, Error, Result};

pub use apply::Settling;
pub use build::Built;
pub use log::LOG_STREAMS;
pub use spool::Ready;

const DB: &str = "mirror.db";
const STATE: &str = "mirror.json";
const SPOOL: &str = "mirror.spool";
const SUMS: &str = "mirror.sums";

/// Which log the mirror follows and how far it has applied it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MirrorState {
    pub log_id: String,
    pub generation_id: String,
    /// The last frame applied; `None` while nothing is.
    pub frame_no: Option<u64>,
    /// The server's name for that point, when it has one (Turso Sync's revision, from which
    /// the next pull asks for pages: [`crate::turso_pages`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision: Option<String>,
}

/// Why an advance stopped: the log cannot be used (fall back to SQL) or the files failed.
#[derive(Debug, thiserror::Error)]
pub enum MirrorError {
    #[error(transparent)]
    Log(#[from] LogError),
    #[error(transparent)]
    Local(#[from] Error),
}

impl From<std::io::Error> for MirrorError {
    fn from(e: std::io::Error) -> Self {
        MirrorError::Local(e.into())
    }
}

/// Whether a long stretch of log is read in [`LOG_STREAMS`] streams at once (`log::stream_ahead`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Streams {
    /// Tried, and used when they answer.
    Try,
    /// Not tried, for this reason: a stream sent nothing in time on this remote
    /// ([`LogError::Silent`]), so something on the way holds them. Set by a read whose streams
    /// stayed silent; batches read the whole log then.
    Off(String),
}

/// The mirror in a state directory (a workspace's, or one `init` is building).
pub struct Mirror {
    dir: PathBuf,
}

impl Mirror {
    /// The mirror in state directory `dir` (`Workspace::mirror` for a workspace's).
    pub fn new(dir: PathBuf) -> Mirror {
        Mirror { dir }
    }

    pub fn db_path(&self) -> PathBuf {
        self.dir.join(DB)
    }

    fn spool_path(&self) -> PathBuf {
        self.dir.join(SPOOL)
    }

    /// `mirror.sums`: the checksum of every page ([`crate::page_sums`]).
    pub fn sums_path(&self) -> PathBuf {
        page_sums::path_for(&self.db_path())
    }

    /// The page size its sums file names, when it can be read (a mirror found healthy has its
    /// pages of that size, [`Mirror::health`]): the frames carrying it forward must be of it
    /// ([`Mirror::fetch`]).
    fn page_size(&self) -> Option<usize> {
        let sums = fs::File::open(self.sums_path()).ok()?;
        let head = SumsHeader::read(&sums).ok()??;
        usize::try_from(head.page_size).ok()
    }

    /// Whether the mirror can be trusted as it lies: `None` when there is none; otherwise its
    /// state, or why not (a file missing, shorter or longer than recorded, `mirror.json` and
    /// the pages at different frames, sums missing, a spool not yet applied). Cheap: it reads
    /// two small files and the sizes of two others, never a page.
    pub fn health(&self) -> Result<Option<std::result::Result<MirrorState, String>>> {
        let state = match self.state() {
            Ok(Some(state)) => state,
            // Pages or sums without the point they are at: not a mirror to go on from.
            Ok(None) => {
                return Ok([DB, SUMS, SPOOL]
                    .iter()
                    .map(|f| self.dir.join(f))
                    .find(|p| p.exists())
                    .map(|p| {
                        Err(format!(
                            "{} is missing, {} is there",
                            self.dir.join(STATE).display(),
                            p.display()
                        ))
                    }))
            }
            Err(Error::Workspace(why)) => return Ok(Some(Err(why))),
            Err(e) => return Err(e),
        };
        Ok(Some(self.agrees(&state).map(|()| state)))
    }

    fn agrees(&self, state: &MirrorState) -> std::result::Result<(), String> {
        let name = |p: PathBuf| p.display().to_string();
        if self.spool_path().exists() {
            return Err(format!(
                "{} is not yet written into it",
                name(self.spool_path())
            ));
        }
        let frame = state
            .frame_no
            .ok_or_else(|| format!("{} records no frame", name(self.dir.join(STATE))))?;
        let sums = fs::File::open(self.sums_path())
            .map_err(|e| format!("{}: {e}", name(self.sums_path())))?;
        let head = SumsHeader::read(&sums)
            .map_err(|e| format!("{}: {e}", name(self.sums_path())))?
            .filter(|h| h.frame != page_sums::UNTRUSTED)
            .ok_or_else(|| format!("{} vouches for no page", name(self.sums_path())))?;
        if head.frame != frame {
            return Err(format!(
                "{} names frame {frame}, the pages are at frame {}",
                name(self.dir.join(STATE)),
                head.frame
            ));
        }
        if let Some(why) =
            crate::shared_pages::disagrees(&self.dir, head.page_size).map_err(|e| e.to_string())?
        {
            return Err(why);
        }
        let len = |p: PathBuf| {
            fs::metadata(&p)
                .map(|m| m.len())
                .map_err(|e| format!("{}: {e}", name(p)))
        };
        let want = u64::from(head.pages) * u64::from(head.page_size);
        let got = len(self.db_path())?;
        if got != want {
            return Err(format!(
                "{} holds {got} bytes, {want} were written",
                name(self.db_path())
            ));
        }
        let want = page_sums::len_for(head.pages);
        let got = len(self.sums_path())?;
        if got != want {
            return Err(format!(
                "{} holds {got} bytes, {want} were written",
                name(self.sums_path())
            ));
        }
        Ok(())
    }

    /// What the checking VFS found wrong in the mirror's pages since last asked
    /// ([`crate::page_sums::take_damage`]).
    pub fn take_damage(&self) -> Option<String> {
        page_sums::take_damage(&self.db_path())
    }

    /// Whether the checking VFS found a damaged page of the mirror since last asked.
    pub fn damage_seen(&self) -> bool {
        page_sums::damage_seen(&self.db_path())
    }

    /// The recorded state; `None` when there is no mirror.
    pub fn state(&self) -> Result<Option<MirrorState>> {
        let path = self.dir.join(STATE);
        match fs::read(&path) {
            Ok(text) => serde_json::from_slice(&text).map(Some).map_err(|e| {
                Error::Workspace(format!(
                    "{} is damaged ({e}); the next pull drops the mirror and reads the log again",
                    path.display()
                ))
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).during("reading the mirror's state", path.display()),
        }
    }

    fn save_state(&self, state: &MirrorState) -> Result<()> {
        durable::save_json(&self.dir, STATE, state)
    }

    /// Removes the mirror and its state, for a workspace that stops following the log.
    pub fn remove(&self) -> Result<()> {
        let _ = self.take_damage();
        for name in [STATE, SPOOL, crate::shared_pages::OWN, DB, SUMS] {
            let path = self.dir.join(name);
            match fs::remove_file(&path) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    return Err(e).during("removing", path.display())
                }
                _ => {}
            }
        }
        durable::sync_dir(&self.dir)
    }

    /// Finishes a spool a killed run left ready. Returns whether there was one, or why it is
    /// damaged: then nothing of it was written, and the mirror, which it may have been
    /// half-written into, is not to be trusted (the caller drops it).
    pub fn recover(&self) -> Result<std::result::Result<bool, String>> {
        if !self.spool_path().exists() {
            return Ok(Ok(false));
        }
        let ready = match spool::read_spool(&self.spool_path())? {
            Ok(ready) => ready,
            Err(why) => return Ok(Err(why)),
        };
        self.apply(ready)?;
        Ok(Ok(true))
    }
}

/// Opens a database file no SQLite connection writes to (the mirror) read-only and
/// `immutable=1`: no locks, no journal, no WAL, nothing SQLite could lose when we write the file.
/// Every page is read through the checking VFS ([`crate::page_sums`]): one that does not match
/// its sum in `mirror.sums` (or has none) fails the statement reading it, and
/// [`Mirror::take_damage`] says which.
pub fn open_immutable(path: &Path) -> Result<rusqlite::Connection> {
    let vfs = page_sums::vfs_name()
        .map_err(|e| Error::Unexpected(format!("opening {}: {e}", path.display())))?;
    open_read_only(path, &format!("immutable=1&vfs={vfs}"))
}

/// [`open_immutable`] without the checks, memory-mapped: for init's `quick_check` of a mirror
/// just built, whose sums were taken from the very bytes written a moment before.
pub(crate) fn open_immutable_unchecked(path: &Path) -> Result<rusqlite::Connection> {
    open_read_only(path, "immutable=1")
}

fn open_read_only(path: &Path, query: &str) -> Result<rusqlite::Connection> {
    let abs = std::path::absolute(path).during("opening", path.display())?;
    let mut url = url::Url::from_file_path(&abs)
        .map_err(|()| Error::Unsupported(format!("{} is not a usable path", abs.display())))?;
    url.set_query(Some(query));
    let conn = rusqlite::Connection::open_with_flags(
        url.as_str(),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY
            | rusqlite::OpenFlags::SQLITE_OPEN_URI
            | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .during("opening", path.display())?;
    // A plain `BEGIN`, not a `rusqlite::Transaction`: the connection is handed to the caller
    // inside it, so every read it makes sees one snapshot, and a `Transaction` borrows the
    // connection it would have to be returned with.
    conn.execute_batch("BEGIN")
        .during("opening", path.display())?;
    Ok(conn)
}

/// Copies the mirror to `dst` as a database an app can use: byte for byte, but with the header
/// saying rollback journal ([`set_rollback_journal`]). The copy is not synced: the caller does,
/// when it is done with it; the disk starts writing each stretch as the next is copied
/// ([`crate::durable::start_writeback`]), so that sync waits for the last one only.
pub fn copy_out(mirror: &Path, dst: &Path) -> Result<()> {
    let copying = "copying the mirror to";
    let mut from = fs::File::open(mirror).during(copying, dst.display())?;
    let mut to = fs::File::create(dst).during(copying, dst.display())?;
    while std::io::copy(
        &mut std::io::Read::take(&mut from, build::START_WRITEBACK as u64),
        &mut to,
    )
    .during(copying, dst.display())?
        > 0
    {
        crate::durable::start_writeback(&to);
    }
    set_rollback_journal(dst)
}

/// Sets the header of the database file at `path` to say rollback journal (bytes 18 and 19 set
/// to 1) instead of the server's WAL mode: the server's file as an app's SQLite, or the base's,
/// opens it on its own. Only for a file no connection has open.
pub fn set_rollback_journal(path: &Path) -> Result<()> {
    let f = fs::OpenOptions::new()
        .write(true)
        .open(path)
        .during("opening", path.display())?;
    let len = f.metadata().during("reading", path.display())?.len();
    if len >= 100 {
        f.write_all_at(&[1, 1], 18)
            .during("setting the journal mode in", path.display())?;
    }
    Ok(())
}
