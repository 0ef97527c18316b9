//! The workspace: the working copy, its state directory `.tursync/` and the base snapshot in it,
//! and every file operation on them.
//!
//! ```text
//! working_copy.db        the app's database: a plain SQLite file
//! .tursync/config.json   {"version":1,"url":"https://…","db":"working_copy.db"} (no token)
//! .tursync/base.db       the remote as it was at the last sync: diffs compare against it
//! ```
//!
//! The state directory sits next to the working copy. Commands find it through `--db`, or by
//! looking in the current directory and then its parents, as git finds `.git`.

use std::fs;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::clone::{self, FetchOptions, Stats};
use crate::durable::{
    aside_name, remove_aside, save_json, sweep_leftovers, sync_dir, sync_file, write_synced, Aside,
    TMP_MARK,
};
use crate::leaf_sums::{LeafSums, Walked};
use crate::mirror::{self, Mirror, MirrorError, Streams};
use crate::progress::Progress;
use crate::remote::replication::LogError;
use crate::remote::{Endpoint, Remote};
use crate::schema::Schema;
use crate::shared_pages::BASE;
use crate::sink::LocalSink;
use crate::sql;
use crate::{Context, Error, Result};

pub const STATE_DIR: &str = ".tursync";
pub const DEFAULT_DB: &str = "working_copy.db";
const CONFIG: &str = "config.json";
const SYNC: &str = "sync.json";

/// What tursync knows of the remote at the last sync, in `.tursync/sync.json`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct SyncState {
    /// The remote's replication index when the base was read (or last pushed to, when nobody
    /// else had written in between). `None`: unknown, so pull must download.
    pub replication_index: Option<u64>,
    /// The mirror's frame `F` the base stands on (set by init and by a pull from the log): the
    /// base holds the mirror's content at `F`, plus our own pushes since, whose rows all land on
    /// the remote after `F`. So the rows on the pages the log writes past `F` are every row in
    /// which the base can differ from the remote, and a pull whose mirror starts from `F` reads
    /// theirs from those alone. A mirror that moved on without the base (a pull stopped by
    /// conflicts) no longer starts from `F`, and the next pull reads whole tables.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base_at: Option<u64>,
    /// The base's stamp when `base_at` was recorded: `base_at` counts only while the base
    /// still has it ([`Workspace::base_at`]), so the base can move without forgetting it first,
    /// and a crash after the move leaves a `base_at` that no longer counts. `None` (a state file
    /// from before this field, whose writers forgot `base_at` before every move): `base_at`
    /// counts as it is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base_stamp: Option<crate::pages::Stamp>,
    /// Why the remote is read over SQL instead of from its replication log, when it is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sql_path: Option<String>,
    /// Log streams are not tried while the log keeps the id recorded here; see [`StreamsOff`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub streams_off: Option<StreamsOff>,
    /// The stamps of the working copy and the base when the working copy last held exactly
    /// the base's rows; see [`Clean`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clean: Option<Clean>,
    /// The id of `.tursync/leaves.sum` while the base holds exactly the rows of the working
    /// copy's leaves it lists ([`crate::leaf_sums`]); forgotten before the base moves.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub leaves: Option<u64>,
}

/// Why the replication log's streams are not tried, and on which log. A stream that sent
/// nothing within its short wait ([`LogError::Silent`]) is held by something on the way (a
/// proxy that passes answers on only once they end, which a stream never does), which will hold
/// the next one too: a long stretch of log then goes straight to batches. Streams are tried
/// again by `init`, and once the log has another id (a database reset or restored, which is
/// when a long stretch is read again from the start, perhaps served another way by then).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct StreamsOff {
    pub log_id: String,
    pub reason: String,
}

impl StreamsOff {
    /// Whether to try streams on the log with this id, given the record.
    pub fn streams(off: Option<&StreamsOff>, log_id: &str) -> Streams {
        match off {
            Some(off) if off.log_id == log_id => Streams::Off(off.reason.clone()),
            _ => Streams::Try,
        }
    }

    /// The record after reading the log with this id.
    pub fn after(streams: &Streams, log_id: &str) -> Option<StreamsOff> {
        match streams {
            Streams::Try => None,
            Streams::Off(reason) => Some(StreamsOff {
                log_id: log_id.to_owned(),
                reason: reason.clone(),
            }),
        }
    }
}

/// The working copy held exactly the base's rows when the two files had these stamps
/// ([`crate::pages::Stamp`]). While both still have them, nothing of ours is pending, so a
/// pull reads none of the working copy's rows: an idle working copy costs nothing to pull
/// into, however large. Any write to either file, by us or by the app, changes its stamp.
///
/// ```text
/// pull, nothing of ours pending   -> clean {work: W1, base: B1}
/// next pull, stamps W1 and B1     -> ours has no row changes; rows not read
/// app: INSERT …                   -> work stamp W2 != W1: ours read in full, as always
/// ```
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub struct Clean {
    pub work: crate::pages::Stamp,
    pub base: crate::pages::Stamp,
}

/// What `.tursync/config.json` holds. The token is deliberately absent: it stays in the
/// environment or `.env`, never on disk by our hand.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Config {
    pub version: u32,
    /// The remote URL, without credentials.
    pub url: String,
    /// The working copy's file name, relative to the directory holding `.tursync/`.
    pub db: String,
}

/// A working copy and its state directory.
#[derive(Debug, Clone)]
pub struct Workspace {
    pub dir: PathBuf,
    pub config: Config,
}

impl Workspace {
    /// Finds the workspace: next to `db` when given, else in the current directory or the
    /// nearest parent that has a `.tursync/` directory.
    pub fn locate(db: Option<&Path>) -> Result<Workspace> {
        let dir = match db {
            Some(db) => parent_dir(db),
            None => {
                let cwd = std::env::current_dir()?;
                cwd.ancestors()
                    .find(|d| d.join(STATE_DIR).join(CONFIG).is_file())
                    .map(Path::to_path_buf)
                    .ok_or_else(|| {
                        Error::Workspace(format!(
                            "no working copy here: {} has no {STATE_DIR}/ directory (nor do its parents). Run `tursync init` first, or pass --db",
                            cwd.display()
                        ))
                    })?
            }
        };
        let path = dir.join(STATE_DIR).join(CONFIG);
        let text = fs::read_to_string(&path).map_err(|e| {
            Error::Workspace(format!(
                "cannot read {}: {e}. Run `tursync init` to make a working copy",
                path.display()
            ))
        })?;
        let config: Config = serde_json::from_str(&text)
            .map_err(|e| Error::Workspace(format!("{} is damaged: {e}", path.display())))?;
        if let Some(db) = db {
            let name = file_name(db);
            if name != config.db {
                return Err(Error::Workspace(format!(
                    "{} belongs to working copy {:?}, not {name:?}",
                    dir.join(STATE_DIR).display(),
                    config.db
                )));
            }
        }
        Ok(Workspace { dir, config })
    }

    pub fn db_path(&self) -> PathBuf {
        self.dir.join(&self.config.db)
    }

    pub fn state_dir(&self) -> PathBuf {
        self.dir.join(STATE_DIR)
    }

    /// The mirror of the remote's file in the state directory.
    pub fn mirror(&self) -> Mirror {
        Mirror::new(self.state_dir())
    }

    pub fn base_path(&self) -> PathBuf {
        self.state_dir().join(BASE)
    }

    /// Takes the workspace's lock for a command that moves the base (push, pull), so two
    /// of them never interleave. Held until the returned file is dropped; the OS releases it
    /// when the process dies, however it dies (an `flock`, on a file that is no database, so
    /// SQLite's own locks are not involved). Whatever a killed run left aside is removed first.
    pub fn lock(&self) -> Result<fs::File> {
        let path = self.state_dir().join("lock");
        let f = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .during("opening the lock file", path.display())?;
        match f.try_lock() {
            Ok(()) => {}
            Err(fs::TryLockError::WouldBlock) => {
                return Err(Error::Busy(
                    "another tursync command is working on this working copy; try again when it is done".into(),
                ))
            }
            Err(fs::TryLockError::Error(e)) => {
                return Err(e).during("locking", path.display())
            }
        }
        sweep_leftovers(&self.state_dir(), |n| n.contains(TMP_MARK))?;
        Ok(f)
    }

    /// A new file name in the state directory for something built aside, unique even across
    /// processes that share a pid (containers): `base.db.tmp-<pid>-<nanos>-<n>`.
    pub fn aside_path(&self, stem: &str) -> PathBuf {
        aside_name(&self.state_dir(), stem)
    }

    /// Opens the working copy as the app's neighbour: a busy handler that retries every
    /// millisecond (the app's write lock may be free only for moments) for [`BUSY_TIMEOUT`].
    /// Always read-write, never created: a writer killed mid-transaction leaves a hot journal
    /// that only a read-write connection can roll back, so a read-only one would fail
    /// ("attempt to write a readonly database") until the app opens the file again. With
    /// `read_only`, `PRAGMA query_only` keeps the connection from changing any data.
    pub fn open_working_copy(&self, read_only: bool) -> Result<rusqlite::Connection> {
        let flags =
            rusqlite::OpenFlags::SQLITE_OPEN_READ_WRITE | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let path = self.db_path();
        let mut conn = rusqlite::Connection::open_with_flags(&path, flags)
            .during("opening the working copy", path.display())?;
        wait_for_locks(&mut conn)?;
        if read_only {
            conn.pragma_update(None, "query_only", true)?;
        }
        Ok(conn)
    }

    /// What `.tursync/sync.json` records; nothing known when there is none (an older init,
    /// say), which only makes the next pull download in full.
    pub fn sync_state(&self) -> Result<SyncState> {
        let path = self.state_dir().join(SYNC);
        let text = match fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(SyncState::default()),
            Err(e) => return Err(e).during("reading", path.display()),
        };
        serde_json::from_str(&text).map_err(|e| {
            Error::Workspace(format!(
                "{} is damaged ({e}); delete it, and the next pull downloads the remote in full",
                path.display()
            ))
        })
    }

    /// The mirror's frame the base stands on ([`SyncState::base_at`]), if the base has not
    /// moved since it was recorded.
    pub(crate) fn base_at(&self, state: &SyncState) -> Result<Option<u64>> {
        Ok(match (state.base_at, state.base_stamp) {
            (Some(frame), Some(stamp)) => (self.base_stamp()? == stamp).then_some(frame),
            (base_at, None) => base_at,
            (None, Some(_)) => None,
        })
    }

    /// Records the sync state atomically and durably (write aside, sync, rename, sync the
    /// directory).
    pub fn save_sync_state(&self, state: &SyncState) -> Result<()> {
        save_json(&self.state_dir(), SYNC, state)
    }
}

fn parent_dir(db: &Path) -> PathBuf {
    match db.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

fn file_name(db: &Path) -> String {
    db.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| DEFAULT_DB.to_owned())
}

/// What `init` did.
#[derive(Debug)]
pub struct InitReport {
    pub workspace: Workspace,
    pub schema: Schema,
    pub stats: Stats,
}

/// Ours, base → working copy, read in the caller's read transaction on `work`. While both
/// files have the stamps of `clean`, the working copy holds exactly the base's rows, so no row
/// is read: only schemas, counters and triggers are compared ([`crate::diff::Diff::into_outline`]).
/// Otherwise the tables `known` covers are read from the leaves that changed since
/// ([`crate::diff::Diff::knowing`]). Returns the working copy's leaves as read (none when no
/// row was read).
pub fn read_ours(
    base: &rusqlite::Connection,
    work: &rusqlite::Connection,
    filter: &crate::diff::Filter,
    clean: Option<Clean>,
    known: Option<&LeafSums>,
) -> Result<(crate::changeset::Changeset, Walked)> {
    let d = crate::diff::Diff::new(base, work, filter)?
        .knowing(known)?
        .summing();
    let unchanged = match clean {
        Some(c) => {
            crate::pages::stamp(work)? == Some(c.work) && crate::pages::stamp(base)? == Some(c.base)
        }
        None => false,
    };
    if unchanged {
        Ok((d.into_outline(), Walked::default()))
    } else {
        let cs = d.changeset()?;
        Ok((cs, d.walked()))
    }
}

/// Clones the remote into `db`, with its state directory beside it. Everything is built
/// aside under temporary names and renamed into place only once complete, so a failed init
/// leaves nothing behind. An existing working copy is replaced only with `force`.
pub fn init(
    endpoint: &Endpoint,
    remote: &Remote,
    db: &Path,
    force: bool,
    opts: FetchOptions,
    progress: &Progress,
) -> Result<InitReport> {
    let dir = parent_dir(db);
    let name = file_name(db);
    let state = dir.join(STATE_DIR);
    // A state directory we cannot read may be another working copy's: never ours to remove
    // without --force.
    if state.exists() && !force {
        let config = state.join(CONFIG);
        let other = fs::read_to_string(&config)
            .map_err(|e| e.to_string())
            .and_then(|t| serde_json::from_str::<Config>(&t).map_err(|e| e.to_string()));
        match other {
            Ok(other) if other.db == name => {}
            Ok(other) => {
                return Err(Error::Workspace(format!(
                    "{} already holds the state of working copy {:?}; pass --force to replace it",
                    state.display(),
                    other.db
                )))
            }
            Err(why) => {
                return Err(Error::Workspace(format!(
                    "{} exists but its config {} cannot be read ({why}), so which working copy \
                     it belongs to is unknown; it was left as it is. Repair or remove it, or pass \
                     --force to replace it (the state of whichever working copy it holds is lost)",
                    state.display(),
                    config.display()
                )))
            }
        }
    }
    if db.exists() && !force {
        return Err(Error::Workspace(format!(
            "{} already exists; pass --force to replace it (any unpushed changes in it are lost)",
            db.display()
        )));
    }
    if !dir.is_dir() {
        return Err(Error::Workspace(format!(
            "directory {} does not exist",
            dir.display()
        )));
    }
    sweep_leftovers(&dir, |n| {
        n.starts_with(&format!("{STATE_DIR}.init{TMP_MARK}"))
            || n.starts_with(&format!("{STATE_DIR}.old{TMP_MARK}"))
            || (n.starts_with('.') && n.contains(&format!(".tursync-init{TMP_MARK}")))
    })?;

    let tmp_db = aside_name(&dir, &format!(".{name}.tursync-init"));
    let tmp_state = aside_name(&dir, &format!("{STATE_DIR}.init"));
    let mut aside = Aside {
        paths: vec![tmp_db.clone(), tmp_state.clone()],
    };
    fs::create_dir(&tmp_state).during("creating", tmp_state.display())?;

    // The index is read before the rows, so writes made while cloning can only make the next
    // pull download again, never skip what it should fetch: through the log, the one its
    // `Hello` carried before the frames (sqld's last commit, as the index of its SQL answers).
    let (schema, stats, mut sync) = match clone_from_log(remote, &tmp_state, &tmp_db, opts)? {
        Ok((frame, index, schema, stats, streams_off)) => (
            schema,
            stats,
            SyncState {
                replication_index: index,
                base_at: Some(frame),
                base_stamp: None,
                sql_path: None,
                streams_off,
                clean: None,
                leaves: None,
            },
        ),
        Err(reason) => {
            let index = remote.replication_index()?;
            let mut sink = LocalSink::create(&tmp_db)?;
            let (schema, stats) = clone::copy_remote(remote, &mut sink, opts, progress)?;
            sink.finish()?;
            // A byte copy, so the base is the working copy to the last header byte: the sink's
            // connection, the only one this process had on the file, is closed, so no SQLite
            // lock of ours can be dropped by closing this descriptor.
            let base = tmp_state.join(BASE);
            fs::copy(&tmp_db, &base).during("copying the working copy to", base.display())?;
            sync_file(&tmp_db)?;
            sync_file(&base)?;
            (
                schema,
                stats,
                SyncState {
                    replication_index: index,
                    base_at: None,
                    base_stamp: None,
                    sql_path: reason,
                    streams_off: None,
                    clean: None,
                    leaves: None,
                },
            )
        }
    };
    // The working copy and the base are copies of one file: nothing of ours is pending, so
    // the first pull need not read the working copy's rows.
    let stamp = |path: &Path| -> Result<Option<crate::pages::Stamp>> {
        Ok(crate::pages::stamp(&open_snapshot(path)?)?)
    };
    let base_stamp = stamp(&tmp_state.join(BASE))?;
    sync.clean = match (stamp(&tmp_db)?, base_stamp) {
        (Some(work), Some(base)) => Some(Clean { work, base }),
        _ => None,
    };
    if sync.base_at.is_some() {
        sync.base_stamp = base_stamp;
    }
    write_synced(
        &tmp_state.join(SYNC),
        serde_json::to_string(&sync)?.as_bytes(),
    )?;
    let config = Config {
        version: 1,
        url: endpoint.to_string(),
        db: name.clone(),
    };
    let text = serde_json::to_string_pretty(&config)?;
    write_synced(&tmp_state.join(CONFIG), (text + "\n").as_bytes())?;
    sync_dir(&tmp_state)?;

    // A stale journal next to the old file would be replayed into the new one.
    for suffix in ["-journal", "-wal", "-shm"] {
        let p = dir.join(format!("{name}{suffix}"));
        if p.exists() {
            fs::remove_file(&p).during("removing", p.display())?;
        }
    }
    // The state directory goes in last: its presence marks a finished init, so a crash
    // between these renames can never pair a new working copy with an old base.
    if state.exists() {
        let old = aside_name(&dir, &format!("{STATE_DIR}.old"));
        fs::rename(&state, &old).during("setting aside", state.display())?;
        aside.paths.push(old);
    }
    fs::rename(&tmp_db, db).during("renaming into place", db.display())?;
    fs::rename(&tmp_state, &state).during("renaming into place", state.display())?;
    sync_dir(&dir)?;
    Ok(InitReport {
        workspace: Workspace { dir, config },
        schema,
        stats,
    })
}

/// A clone through the log: the mirror's frame the copy holds, the replication index `Hello`
/// named before the frames were read, what the copy holds, how much, and whether the log's
/// streams stayed silent.
type LogClone = (u64, Option<u64>, Schema, Stats, Option<StreamsOff>);

/// Clones through the replication log: the mirror is built in `state` (a state directory being
/// built), and `db` and the base are copies of it in rollback-journal mode, checked by
/// `quick_check`; all three are synced. Returns a [`LogClone`], or `Ok(Err(reason))` when the
/// log cannot be used, with nothing of it left behind; the caller then clones over SQL. The
/// reason is `None` when the log is usable but holds nothing yet (a new database) or was reset
/// meanwhile: the next pull reads it.
fn clone_from_log(
    remote: &Remote,
    state: &Path,
    db: &Path,
    opts: FetchOptions,
) -> Result<std::result::Result<LogClone, Option<String>>> {
    if !opts.use_log {
        return Ok(Err(Some(
            "TURSYNC_NO_LOG is set, or TURSYNC_PROTOCOL=sql".into(),
        )));
    }
    let mirror = Mirror::new(state.to_path_buf());
    let probed = crate::protocol::for_clone(state, remote)?;
    // The probe's reader of sqld's log said `Hello` already: the clone reads on with it.
    let (mut source, said): (Box<dyn crate::remote::replication::LogSource>, _) =
        match probed.said_hello {
            Some((log, hello)) => (Box::new(log), Some(hello)),
            None => (
                (probed.found.protocol).mirror_source(remote, Mirror::new(state.to_path_buf())),
                None,
            ),
        };
    let log = &mut *source;
    let mut streams = Streams::Try;
    let mut log_id = String::new();
    let mut index = None;
    let hello = match said {
        Some(hello) => Ok(hello),
        None => log.hello(),
    };
    let reason = match hello.map_err(MirrorError::from).and_then(|hello| {
        log_id.clone_from(&hello.log_id);
        index = hello.replication_index;
        mirror.build(log, &hello, &mut streams)
    }) {
        Ok(Some(built)) => {
            let src = mirror.db_path();
            let base = state.join(BASE);
            // The mirror is checked while the working copy is copied from it and both are
            // synced; then the mirror itself becomes the base. Byte copies and a rename are safe
            // here: these are new files in a directory built aside, which no connection (of this
            // process or any other) has opened, so there is no SQLite lock or journal a copy
            // could miss or drop. The mirror is read by SQLite only as `immutable=1`, which takes
            // no lock that syncing it through a descriptor of its own could drop.
            let checked = std::thread::scope(|s| -> Result<_> {
                let check = s.spawn(|| check_log_copy(&src));
                let copy = s.spawn(|| -> Result<()> {
                    mirror::copy_out(&src, db)?;
                    sync_file(db)
                });
                sync_file(&src)?;
                sync_file(&mirror.sums_path())?;
                joined(copy)?;
                joined(check)
            })?;
            match checked {
                Ok((schema, stats)) => {
                    // Internal tables stay out of the working copy, as a clone over SQL leaves
                    // them.
                    if !schema.skipped.is_empty() {
                        let conn =
                            rusqlite::Connection::open(db).during("opening", db.display())?;
                        for name in &schema.skipped {
                            conn.execute_batch(&format!("DROP TABLE {}", sql::ident(name)))?;
                        }
                        conn.close().map_err(|(_, e)| Error::Local(e))?;
                        // Closed: no lock of ours to drop (see above).
                        fs::copy(db, &base)
                            .during("copying the working copy to", base.display())?;
                        sync_file(&base)?;
                    } else {
                        // The built mirror becomes the base, page for page: the mirror keeps
                        // page 1 only and reads the rest from it, so the workspace holds one
                        // copy of the database beside the working copy.
                        crate::shared_pages::base_from_built(state)?;
                    }
                    let streams_off = StreamsOff::after(&streams, &log_id);
                    return Ok(Ok((built.to, index, schema, stats, streams_off)));
                }
                Err(check) => Some(format!("the copy of the log failed quick_check: {check}")),
            }
        }
        // Read over SQL this time; the next pull reads the log again.
        Ok(None) | Err(MirrorError::Log(LogError::Reset | LogError::Uneven(_))) => None,
        Err(MirrorError::Log(e)) => Some(e.to_string()),
        Err(MirrorError::Local(e)) => return Err(e),
    };
    mirror.remove()?;
    remove_aside(db);
    remove_aside(&state.join(BASE));
    Ok(Err(reason))
}

/// The result of a scoped thread, its panic passed on.
fn joined<T>(h: std::thread::ScopedJoinHandle<'_, T>) -> T {
    h.join().unwrap_or_else(|p| std::panic::resume_unwind(p))
}

/// Checks a mirror just built with `quick_check` (every page and B-tree checked, not every
/// index entry against its row: `integrity_check` takes 10x longer, and `tursync verify` runs
/// it), and reads its schema and row counts; `Ok(Err(what quick_check said))` when it fails.
fn check_log_copy(mirror: &Path) -> Result<std::result::Result<(Schema, Stats), String>> {
    let conn = mirror::open_immutable_unchecked(mirror)?;
    // Mapped, the file is read without a system call per page.
    conn.execute_batch("PRAGMA mmap_size = 1099511627776")?;
    let check: String = conn.query_row("PRAGMA quick_check(1)", [], |r| r.get(0))?;
    if check != "ok" {
        return Ok(Err(check));
    }
    let schema = crate::schema::load(&conn)?;
    let mut stats = Stats {
        tables: schema.tables.iter().filter(|t| !t.shadow).count(),
        ..Stats::default()
    };
    for t in schema
        .tables
        .iter()
        .filter(|t| t.key != crate::schema::RowKey::Virtual)
    {
        let q = format!("SELECT count(*) FROM {}", sql::ident(&t.name));
        stats.rows += conn.query_row(&q, [], |r| r.get::<_, i64>(0))? as u64;
    }
    Ok(Ok((schema, stats)))
}

/// The table's AUTOINCREMENT counter in a local database, if it has one.
pub(crate) fn sequence(conn: &rusqlite::Connection, table: &str) -> Result<Option<i64>> {
    use rusqlite::OptionalExtension;
    let has: bool = conn.query_row(
        "SELECT count(*) > 0 FROM sqlite_schema WHERE name = 'sqlite_sequence'",
        [],
        |r| r.get(0),
    )?;
    if !has {
        return Ok(None);
    }
    Ok(conn
        .query_row(
            "SELECT seq FROM sqlite_sequence WHERE name = ?1",
            [table],
            |r| r.get(0),
        )
        .optional()?)
}

/// Sets (or, with `None`, removes) a table's AUTOINCREMENT counter in a local database.
/// `sqlite_sequence` has no key, so a counter is replaced by delete and insert.
pub(crate) fn set_sequence(
    conn: &rusqlite::Connection,
    table: &str,
    seq: Option<i64>,
) -> Result<()> {
    conn.execute(sql::SEQUENCE_DELETE, [table])?;
    if let Some(v) = seq {
        conn.execute(sql::SEQUENCE_INSERT, rusqlite::params![table, v])?;
    }
    Ok(())
}

/// A plain-file copy of the remote in the state directory, removed on drop unless it was
/// renamed into place (as the new base).
pub struct RemoteCopy {
    pub path: PathBuf,
    _aside: Aside,
}

impl RemoteCopy {
    /// The same copy under `path` (in the same directory), durably, still removed when dropped:
    /// a pull over SQL keeps its download as `.tursync/pulled.db`, where the next run finds it
    /// if this one is killed before the download became the base
    /// ([`crate::in_flight::TheirsKept::Download`]).
    pub fn keep_as(self, path: PathBuf) -> Result<RemoteCopy> {
        sync_file(&self.path)?;
        fs::rename(&self.path, &path).during("renaming into place", path.display())?;
        if let Some(dir) = path.parent() {
            sync_dir(dir)?;
        }
        Ok(RemoteCopy {
            _aside: Aside {
                paths: vec![path.clone()],
            },
            path,
        })
    }
}

impl Workspace {
    /// Reads the whole remote into a file beside the base, with the clone machinery (exact,
    /// streamed, bounded memory).
    pub fn download(
        &self,
        remote: &Remote,
        opts: FetchOptions,
        progress: &Progress,
    ) -> Result<RemoteCopy> {
        let path = self.aside_path("remote.db");
        let aside = Aside {
            paths: vec![path.clone()],
        };
        let mut sink = LocalSink::create(&path)?;
        clone::copy_remote(remote, &mut sink, opts, progress)?;
        sink.finish()?;
        progress.finish();
        Ok(RemoteCopy {
            path,
            _aside: aside,
        })
    }
}

/// A database file of ours (the base, a remote copy), read-only, inside a read transaction that
/// ends when the connection is dropped.
pub fn open_snapshot(path: &Path) -> Result<rusqlite::Connection> {
    // Through the base's VFS, as every connection on a base must be (`shared_pages`); it
    // passes any other file on.
    let conn = crate::shared_pages::open(
        path,
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    conn.busy_timeout(BUSY_TIMEOUT)?;
    // A plain `BEGIN`, not a `Transaction`: the connection leaves this function inside it, and a
    // `Transaction` cannot outlive the borrow of the connection it begins on.
    conn.execute_batch("BEGIN")
        .during("beginning a read of", path.display())?;
    Ok(conn)
}

/// Makes `conn` wait up to [`BUSY_TIMEOUT`] for a lock held by another connection, trying
/// again every millisecond. SQLite's own busy timeout backs off to 100 ms between tries, and
/// an app that commits back to back leaves the lock free for far less than that.
pub fn wait_for_locks(conn: &mut rusqlite::Connection) -> Result<()> {
    let tries = BUSY_TIMEOUT.as_millis();
    conn.busy_handler(Some(move |attempt: i32| {
        std::thread::sleep(std::time::Duration::from_millis(1));
        (attempt as u128) < tries
    }))?;
    Ok(())
}

/// How long to wait for an app that holds the working copy's write lock before giving up.
pub const BUSY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

impl Workspace {
    /// Diffs the base snapshot against the working copy, reading the working copy in one
    /// transaction so the result is a consistent snapshot even while the app writes to it.
    pub fn diff(&self, filter: &crate::diff::Filter) -> Result<crate::changeset::Changeset> {
        Ok(self.ours(filter)?.0)
    }

    /// [`Workspace::diff`], with the working copy's stamp in the same snapshot, for a
    /// [`Workspace::clean_point`] once the base holds those rows, and its leaves as read, for
    /// [`Workspace::record_leaves`] then. While the recorded [`Clean`] point holds, no row is
    /// read; otherwise only the leaves that changed since the recorded ones ([`read_ours`]).
    pub fn ours(
        &self,
        filter: &crate::diff::Filter,
    ) -> Result<(
        crate::changeset::Changeset,
        Option<crate::pages::Stamp>,
        Walked,
    )> {
        let clean = self.sync_state()?.clean;
        let known = self.known_leaves()?;
        self.snapshot(|base, work| {
            let (cs, walked) = read_ours(base, work, filter, clean, known.as_ref())?;
            Ok((cs, crate::pages::stamp(work)?, walked))
        })
    }

    /// The working copy's leaves from when it last held exactly the base's rows, if
    /// `sync.json` names them and the file is whole ([`LeafSums::load`]).
    pub fn known_leaves(&self) -> Result<Option<LeafSums>> {
        Ok(self
            .sync_state()?
            .leaves
            .and_then(|id| LeafSums::load(&self.state_dir(), id)))
    }

    /// Writes `walked`, the leaves of a working copy whose rows the base now holds exactly
    /// (ours was read from them and the base moved by all of it, or nothing was ours), as
    /// `.tursync/leaves.sum` standing for the base as it is now, and returns its id for
    /// `sync.json`. Nothing when no table was read from its leaves, or when the file cannot be
    /// written: the next diff then walks both files, as without it.
    ///
    /// Init records none: the leaves are held in memory (about 1 % of the tables' size), and
    /// init keeps its anonymous memory bounded whatever the database's size. The first push
    /// walks both files.
    pub fn record_leaves(&self, walked: Walked) -> Option<u64> {
        if walked.tables.is_empty() {
            return None;
        }
        let base = crate::pages::stamp(&self.open_base().ok()?).ok()??;
        walked.standing_for(base).save(&self.state_dir()).ok()
    }

    /// The [`Clean`] point of a working copy that held exactly the base's rows when its stamp
    /// was `work`: only if it has that stamp still (nobody wrote it since), with the base's
    /// stamp now. Taken once a push or pull is done, so a file that cannot be read records
    /// nothing rather than failing it: the next pull then reads ours in full.
    pub fn clean_point(&self, work: Option<crate::pages::Stamp>) -> Option<Clean> {
        let work = work?;
        let (now, base) = self
            .snapshot(|base, work| Ok((crate::pages::stamp(work)?, crate::pages::stamp(base)?)))
            .ok()?;
        (now == Some(work)).then_some(Clean { work, base: base? })
    }

    /// Runs `read` on the diff of the base against the working copy, inside one read
    /// transaction on the working copy: `read` may print rows as they are read, and they are
    /// all of one snapshot. Tables the recorded leaves cover are read from the leaves that
    /// changed since ([`Workspace::known_leaves`]).
    pub fn with_diff<T>(
        &self,
        filter: &crate::diff::Filter,
        read: impl FnOnce(&crate::diff::Diff<'_>) -> Result<T>,
    ) -> Result<T> {
        let known = self.known_leaves()?;
        self.snapshot(|base, work| {
            read(&crate::diff::Diff::new(base, work, filter)?.knowing(known.as_ref())?)
        })
    }

    /// Runs `read` on the base snapshot and the working copy, inside one read transaction on
    /// the working copy, beside the app.
    fn snapshot<T>(
        &self,
        read: impl FnOnce(&rusqlite::Connection, &rusqlite::Connection) -> Result<T>,
    ) -> Result<T> {
        let base = self.open_base()?;
        let work = self.open_working_copy(true)?;
        let snapshot =
            rusqlite::Transaction::new_unchecked(&work, rusqlite::TransactionBehavior::Deferred)?;
        let out = read(&base, &work)?;
        snapshot.commit()?;
        Ok(out)
    }

    /// The base snapshot, read-only, inside a read transaction that lasts as long as the
    /// connection: every page the diff reads comes from one snapshot.
    pub fn open_base(&self) -> Result<rusqlite::Connection> {
        // A pull killed inside its transaction on the base ([`Workspace::update_base`]) left a
        // hot journal, which only a read-write connection rolls back; a read-only one would
        // fail on it. SQLite rolls back only a journal no live transaction holds.
        let mut journal = self.base_path().into_os_string();
        journal.push("-journal");
        if Path::new(&journal).exists() {
            let base = self.base_path();
            let mut conn = crate::shared_pages::open(&base, Default::default())?;
            wait_for_locks(&mut conn)?;
            conn.query_row("SELECT count(*) FROM sqlite_schema", [], |_| Ok(()))?;
            conn.close().map_err(|(_, e)| Error::Local(e))?;
        }
        open_snapshot(&self.base_path())
    }
}

impl Workspace {
    /// Makes `file` (a complete database built in the state directory, no connection of ours
    /// open on it) the base snapshot.
    pub fn replace_base_with(&self, file: &Path) -> Result<()> {
        self.base_moves()?;
        sync_file(file)?;
        // The mirror reads the pages it shares with the base from the file about to go.
        crate::shared_pages::unshare(&self.state_dir())?;
        let base = self.base_path();
        fs::rename(file, &base).during("renaming into place", base.display())?;
        sync_dir(&self.state_dir())
    }

    /// The base's stamp, in a read transaction of its own.
    pub(crate) fn base_stamp(&self) -> Result<crate::pages::Stamp> {
        let base = self.open_base()?;
        crate::pages::stamp(&base)
            .during("reading the stamp of the base", self.base_path().display())?
            .ok_or_else(|| {
                Error::Workspace(format!(
                    "the base {} has no stamp (is it in WAL mode?); run `tursync verify`",
                    self.base_path().display()
                ))
            })
    }

    /// Changes the base in place by `edit`, which runs one SQLite transaction (as
    /// [`crate::changeset::Changeset::apply`] does): what a pull brings in or a push sent is small
    /// next to the base, so the base is not copied. A crash leaves a hot journal that the next
    /// [`Workspace::open_base`] rolls back, so the base is the old one or the new one, never a
    /// mix.
    ///
    /// The [`Clean`] point and the working copy's leaves are not forgotten first (one durable
    /// write less per push): a transaction that writes the base adds one to its change counter,
    /// so its stamp is one no record names, and one rolled back leaves the base as the records
    /// knew it.
    ///
    /// A base SQLite finds malformed on the way is a [`Error::DamagedBase`]: the transaction
    /// rolled back, and what leads forward is `tursync verify --repair`.
    pub fn update_base(
        &self,
        edit: impl FnOnce(&rusqlite::Connection) -> Result<()>,
    ) -> Result<()> {
        edit_file(&self.base_path(), edit).map_err(|e| match e.root() {
            Error::Local(rusqlite::Error::SqliteFailure(f, _))
                if f.code == rusqlite::ErrorCode::DatabaseCorrupt =>
            {
                Error::DamagedBase(format!(
                    "the base {} is damaged ({e}); nothing of it changed. Run `tursync verify --repair`: it reads the remote again as the base and leaves the working copy as it is, then `tursync sync`",
                    self.base_path().display()
                ))
            }
            _ => e,
        })
    }

    /// Makes the base the mirror as it is now, page for page, in one transaction of the base
    /// ([`crate::shared_pages::give_base`]): what a pull from the log does once the working
    /// copy took theirs, instead of writing their rows into the base. The mirror's pages are
    /// Like [`Workspace::update_base`], the move changes the base's stamp. A page of the
    /// mirror that fails its check fails the move, which then changes nothing
    /// ([`Mirror::take_damage`] says which). [`crate::shared_pages::share`] follows once the
    /// mirror's writes are synced.
    pub fn base_takes_mirror(&self) -> Result<()> {
        let base = self.base_path();
        let mut conn = crate::shared_pages::open(&base, Default::default())?;
        wait_for_locks(&mut conn)?;
        // Every page given is read through the mirror's checks (`page_sums`).
        let mirror = mirror::open_immutable(&self.mirror().db_path())?;
        let mut page = mirror.prepare("SELECT data FROM sqlite_dbpage WHERE pgno = ?1")?;
        crate::shared_pages::give_base(&self.state_dir(), &mut conn, |n, out| {
            *out = page.query_row([n], |r| r.get(0))?;
            Ok(())
        })
        .during("moving the base to the mirror", base.display())?;
        conn.close().map_err(|(_, e)| Error::Local(e))
    }

    /// Forgets the [`Clean`] point, the working copy's leaves and the mirror point before the
    /// base is replaced: they are recorded again only once the change is done, so a crash in
    /// between never leaves a record naming a base that moved. (A stamp tells states of one
    /// file apart, not one file from another.)
    pub(crate) fn base_moves(&self) -> Result<()> {
        let state = self.sync_state()?;
        if state.clean.is_some() || state.leaves.is_some() || state.base_at.is_some() {
            self.save_sync_state(&SyncState {
                clean: None,
                leaves: None,
                base_at: None,
                base_stamp: None,
                ..state
            })?;
        }
        Ok(())
    }
}

/// Runs `edit` on a database file of ours and closes it, so its changes are on disk.
fn edit_file(path: &Path, edit: impl FnOnce(&rusqlite::Connection) -> Result<()>) -> Result<()> {
    let conn = crate::shared_pages::open(path, Default::default())?;
    edit(&conn)?;
    conn.close().map_err(|(_, e)| Error::Local(e))
}
