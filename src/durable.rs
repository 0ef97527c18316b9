//! Files that survive a crash whole or not at all: built aside under a unique name, synced,
//! renamed into place, the directory synced; JSON state files written that way; leftovers of a
//! killed run swept. Every error names the file.
//!
//! ```text
//! save_json(".tursync", "sync.json", &state)
//!   writes .tursync/sync.json.tmp-<pid>-<nanos>-<n>, syncs it, renames it to sync.json,
//!   syncs .tursync: a crash leaves the old sync.json or the new one, and maybe a leftover
//!   that sweep_leftovers removes
//! ```

use std::fs;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::{Context, Result};

/// Writes `name` in the state directory `dir` as JSON, atomically and durably (write aside,
/// sync, rename, sync the directory).
pub(crate) fn save_json(dir: &Path, name: &str, value: &impl Serialize) -> Result<()> {
    let tmp = aside_name(dir, name);
    let _guard = Aside {
        paths: vec![tmp.clone()],
    };
    let text = serde_json::to_string(value)?;
    write_synced(&tmp, text.as_bytes())?;
    let to = dir.join(name);
    fs::rename(&tmp, &to).during("renaming into place", to.display())?;
    sync_dir(dir)
}

/// Marks every name built aside, so a later run can tell leftovers from real files.
pub(crate) const TMP_MARK: &str = ".tmp-";

pub(crate) fn aside_name(dir: &Path, stem: &str) -> PathBuf {
    static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    dir.join(format!(
        "{stem}{TMP_MARK}{}-{nanos}-{n}",
        std::process::id()
    ))
}

/// Removes a file built aside with whatever SQLite left next to it (`-journal`, `-wal`,
/// `-shm`): a stale journal would be replayed into the next file of that name.
pub(crate) fn remove_aside(p: &Path) {
    if p.is_dir() {
        let _ = fs::remove_dir_all(p);
        return;
    }
    let _ = fs::remove_file(p);
    for suffix in ["-journal", "-wal", "-shm"] {
        let mut side = p.as_os_str().to_owned();
        side.push(suffix);
        let _ = fs::remove_file(PathBuf::from(side));
    }
}

/// Removes files built aside (by `init`, `pull`, a base update) unless they were renamed into
/// place: on an error, nothing half-built stays behind.
pub(crate) struct Aside {
    pub(crate) paths: Vec<PathBuf>,
}

impl Drop for Aside {
    fn drop(&mut self) {
        for p in &self.paths {
            remove_aside(p);
        }
    }
}

/// Deletes what a run killed mid-way (no chance to clean up) left in `dir`: the entries whose
/// name `ours` recognizes, with the journals SQLite may have left beside them.
pub(crate) fn sweep_leftovers(dir: &Path, ours: impl Fn(&str) -> bool) -> Result<()> {
    for e in fs::read_dir(dir).during("listing", dir.display())? {
        let e = e.during("listing", dir.display())?;
        if ours(&e.file_name().to_string_lossy()) {
            remove_aside(&e.path());
        }
    }
    Ok(())
}

/// Writes a whole file and syncs it, before it is renamed into place.
pub(crate) fn write_synced(p: &Path, bytes: &[u8]) -> Result<()> {
    let mut f = fs::File::create(p).during("creating", p.display())?;
    std::io::Write::write_all(&mut f, bytes).during("writing", p.display())?;
    f.sync_all().during("syncing", p.display())?;
    Ok(())
}

/// Syncs a file that no connection of this process has open: SQLite's POSIX locks belong to
/// the process, and closing this descriptor would drop them.
pub(crate) fn sync_file(p: &Path) -> Result<()> {
    fs::File::open(p)
        .and_then(|f| f.sync_all())
        .during("syncing", p.display())
}

/// Asks the kernel to start writing `file`'s dirty pages to disk, without waiting for them
/// (`sync_file_range` with `SYNC_FILE_RANGE_WRITE`), so the disk works while the file is still
/// being written. Only a head start for the sync that follows, which alone makes the file
/// durable: a file system that refuses it costs nothing but that head start, so its answer is
/// not looked at.
pub(crate) fn start_writeback(file: &fs::File) {
    use std::os::fd::AsRawFd;
    // SAFETY: a plain system call on a descriptor `file` owns; it writes no memory of ours.
    unsafe {
        libc::sync_file_range(file.as_raw_fd(), 0, 0, libc::SYNC_FILE_RANGE_WRITE);
    }
}

/// Makes renames in `dir` durable.
pub(crate) fn sync_dir(dir: &Path) -> Result<()> {
    fs::File::open(dir)
        .and_then(|f| f.sync_all())
        .during("syncing the directory", dir.display())
}
