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

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::{BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::durable::{self, Aside};
use crate::page_sums::{self, Header as SumsHeader};
use crate::remote::replication::{page_of, FrameHeader, Hello, LogError, LogSource, FRAME_HEADER};
use crate::{Error, Result};

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

/// What a ready spool starts with: enough to apply it after a crash.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct SpoolHead {
    log_id: String,
    generation_id: String,
    /// The mirror is started again from nothing (a first fetch or a reset log).
    fresh: bool,
    page_size: usize,
    /// The frames after the head, and the CRC-32 of their bytes: a spool that does not hold
    /// exactly these (cut short, a byte changed, written by a version that recorded neither)
    /// is damaged, and never applied.
    #[serde(default)]
    frames: u64,
    #[serde(default)]
    sum: Option<u32>,
    /// The revision the frames reach, recorded with the frame once applied.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    revision: Option<String>,
}

/// Frames fetched, synced and ready to be written into the mirror.
#[derive(Debug)]
pub struct Ready {
    path: PathBuf,
    head: SpoolHead,
    /// The mirror's point before, when it is carried forward (not started afresh).
    pub from: Option<u64>,
    /// Pages the spool writes.
    pub pages: BTreeSet<u32>,
    /// The last frame once applied.
    pub to: u64,
    /// The database size in pages once applied.
    pub size: u32,
    /// Whether the mirror starts again from nothing (a first fetch, a reset log) or a snapshot
    /// was read: then the pages say nothing of what changed since the mirror's point.
    pub fresh: bool,
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

/// Whether a long stretch of log is read in two streams at once ([`stream_ahead`]).
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
            Err(e) => Err(e.into()),
        }
    }

    fn save_state(&self, state: &MirrorState) -> Result<()> {
        durable::save_json(&self.dir, STATE, state)
    }

    /// Removes the mirror and its state, for a workspace that stops following the log.
    pub fn remove(&self) -> Result<()> {
        let _ = self.take_damage();
        for name in [STATE, SPOOL, DB, SUMS] {
            match fs::remove_file(self.dir.join(name)) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e.into()),
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
        let ready = match read_spool(&self.spool_path())? {
            Ok(ready) => ready,
            Err(why) => return Ok(Err(why)),
        };
        self.apply(ready)?;
        Ok(Ok(true))
    }

    /// Fetches every frame past the mirror's point into a ready spool, or `None` when the
    /// mirror is up to date. `hello` is what the log said to [`LogSource::hello`]; a log with
    /// another id starts the mirror afresh. `streams` says whether to try streams, and becomes
    /// [`Streams::Off`] when they stayed silent.
    pub fn fetch(
        &self,
        log: &mut dyn LogSource,
        hello: &Hello,
        streams: &mut Streams,
    ) -> Result<Option<Ready>, MirrorError> {
        let hello = hello.clone();
        let state = self.state()?;
        let carried = state.as_ref().filter(|s| s.log_id == hello.log_id);
        let from = carried.and_then(|s| s.frame_no);
        if carried.is_some() && hello.replication_index.is_some() && hello.replication_index == from
        {
            return Ok(None);
        }
        let mut spool = Spool::create(durable::aside_name(&self.dir, SPOOL), from)?;
        read_log(log, &hello, &mut spool, &self.dir, streams)?;
        let Some(to) = spool.txns.last_frame.filter(|_| spool.txns.frames > 0) else {
            return Ok(None);
        };
        let head = SpoolHead {
            log_id: hello.log_id,
            generation_id: hello.generation_id,
            fresh: carried.is_none(),
            page_size: spool.txns.page_size.unwrap_or(4096),
            frames: 0,
            sum: None,
            revision: log.revision(),
        };
        let (pages, size) = (std::mem::take(&mut spool.pages), spool.txns.size);
        let fresh = head.fresh || spool.snapshots;
        let (path, head) = spool.finish(head, &self.spool_path())?;
        durable::sync_dir(&self.dir)?;
        Ok(Some(Ready {
            path,
            head,
            from,
            pages,
            to,
            size,
            fresh,
        }))
    }

    /// Writes a ready spool into the mirror, syncs it, records the new point and deletes the
    /// spool. Safe to repeat after a crash at any point.
    pub fn apply(&self, ready: Ready) -> Result<MirrorState> {
        self.apply_settling(ready)?.wait()
    }

    /// [`Mirror::apply`], returning once the pages are written: the file is synced, the new
    /// point recorded and the spool deleted on a thread meanwhile, so the sync overlaps the
    /// pull's own work; the pages are readable at once. Until [`Settling::wait`] says it is
    /// done, `mirror.json` still names the old point and the spool is kept, so a crash before
    /// then is finished by [`Mirror::recover`] as after any interrupted apply.
    pub fn apply_settling(&self, ready: Ready) -> Result<Settling> {
        let db = fs::OpenOptions::new()
            .create(true)
            .truncate(ready.head.fresh)
            .read(true)
            .write(true)
            .open(self.db_path())?;
        let sums_file = fs::OpenOptions::new()
            .create(true)
            .truncate(ready.head.fresh)
            .read(true)
            .write(true)
            .open(self.sums_path())?;
        let mut r = BufReader::with_capacity(1 << 20, fs::File::open(&ready.path)?);
        skip_head(&mut r)?;
        let page_size = ready.head.page_size;
        // The sums carried forward, when they vouch for the mirror this spool continues.
        let carried = match ready.head.fresh {
            true => Some(0),
            false => SumsHeader::read(&sums_file)?
                .filter(|h| h.frame != page_sums::UNTRUSTED && h.page_size as usize == page_size)
                .map(|h| h.pages),
        };
        let mut sums = BTreeMap::new();
        let mut frame = vec![0; FRAME_HEADER + page_size];
        let mut pause = test_pause();
        let mut crc = crc32fast::Hasher::new();
        loop {
            match r.read_exact(&mut frame) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => break,
                Err(e) => return Err(e.into()),
            }
            crc.update(&frame);
            let h = FrameHeader::parse(&frame)
                .filter(|h| h.page_no != 0)
                .ok_or_else(|| spool_damaged(&ready.path, "a frame of page 0"))?;
            db.write_all_at(
                page_of(&frame),
                (u64::from(h.page_no) - 1) * page_size as u64,
            )?;
            sums.insert(h.page_no, page_sums::sum(page_of(&frame)));
            if let Some(p) = pause.as_mut() {
                p();
            }
        }
        // Read back as it was synced (checked whole before, by `read_spool`, after a crash): a
        // spool changed since leaves the mirror half-written and its sums at the old point, so
        // the pages written fail their checks and the next pull drops it.
        if ready.head.sum != Some(crc.finalize()) {
            return Err(spool_damaged(
                &ready.path,
                "its frames changed since it was written",
            ));
        }
        db.set_len(u64::from(ready.size) * page_size as u64)?;
        write_sums(
            &sums_file,
            sums,
            carried,
            SumsHeader {
                page_size: page_size as u32,
                pages: ready.size,
                frame: if carried.is_some() {
                    ready.to
                } else {
                    page_sums::UNTRUSTED
                },
            },
        )?;
        let state = MirrorState {
            log_id: ready.head.log_id.clone(),
            generation_id: ready.head.generation_id.clone(),
            frame_no: Some(ready.to),
            revision: ready.head.revision.clone(),
        };
        let (dir, recorded) = (self.dir.clone(), state.clone());
        let sync = std::thread::spawn(move || -> Result<()> {
            db.sync_all()?;
            drop(db);
            sums_file.sync_all()?;
            drop(sums_file);
            Mirror::new(dir.clone()).save_state(&recorded)?;
            fs::remove_file(&ready.path)?;
            durable::sync_dir(&dir)
        });
        Ok(Settling {
            state,
            sync: Some(sync),
        })
    }
}

/// Writes the sums of the pages written (`sums`, by page), cuts the file to `head.pages` and
/// writes its header. A page the database grew by past the `carried` size that no frame wrote
/// reads as zeros, and gets the sum of zeros. Pages next to each other are written at once.
fn write_sums(
    file: &fs::File,
    mut sums: BTreeMap<u32, u32>,
    carried: Option<u32>,
    head: SumsHeader,
) -> std::io::Result<()> {
    let zeros = page_sums::sum(&vec![0; head.page_size as usize]);
    for p in carried.unwrap_or(head.pages).saturating_add(1)..=head.pages {
        sums.entry(p).or_insert(zeros);
    }
    let mut run: Vec<u8> = Vec::new();
    let mut first = 0;
    for (&p, sum) in sums
        .range(1..=head.pages.max(1))
        .filter(|(&p, _)| p <= head.pages)
    {
        if run.is_empty() || first + (run.len() / 4) as u32 != p || run.len() >= 1 << 20 {
            if !run.is_empty() {
                file.write_all_at(&run, page_sums::offset(first))?;
            }
            run.clear();
            first = p;
        }
        run.extend_from_slice(&sum.to_le_bytes());
    }
    if !run.is_empty() {
        file.write_all_at(&run, page_sums::offset(first))?;
    }
    file.set_len(page_sums::len_for(head.pages))?;
    file.write_all_at(&head.encode(), 0)
}

/// A mirror whose new pages are written and being synced ([`Mirror::apply_settling`]).
#[must_use = "the mirror's new point is recorded only once `wait` returns"]
pub struct Settling {
    state: MirrorState,
    sync: Option<std::thread::JoinHandle<Result<()>>>,
}

impl Settling {
    /// The mirror's state once settled.
    pub fn state(&self) -> &MirrorState {
        &self.state
    }

    /// Waits until the pages are synced and the new point recorded.
    pub fn wait(mut self) -> Result<MirrorState> {
        self.join()?;
        Ok(self.state.clone())
    }

    fn join(&mut self) -> Result<()> {
        match self.sync.take().map(|t| t.join()) {
            None => Ok(()),
            Some(Ok(done)) => done,
            Some(Err(_)) => Err(Error::Unexpected(
                "the thread syncing the mirror panicked".into(),
            )),
        }
    }
}

impl Drop for Settling {
    /// A pull that stops early still lets the sync finish; an error then leaves the spool for
    /// [`Mirror::recover`].
    fn drop(&mut self) {
        let _ = self.join();
    }
}

/// What [`Mirror::build`] wrote.
#[derive(Debug)]
pub struct Built {
    /// The last frame in the mirror.
    pub to: u64,
}

impl Mirror {
    /// Builds the mirror from nothing, writing each frame straight into `mirror.db` as it comes
    /// off the wire, then records its point in `mirror.json`; `None` when the log holds no
    /// transaction yet. Only for a state directory nobody uses yet (one `init` builds aside and
    /// renames into place when done): a run killed half-way leaves a directory that is swept
    /// whole, so there is nothing to keep atomic and no spool is needed. The caller syncs
    /// `mirror.db` (this leaves it unsynced, so the sync can overlap other work) before the
    /// directory goes in place.
    ///
    /// The frames are read as [`Mirror::fetch`] reads them, and written in the order a spool
    /// would be applied, so the file is the same: a batch that breaks off is fetched again from
    /// its last whole transaction, which writes the same pages again (a retried snapshot holds
    /// every page the broken one did, newer or the same), and the log must end on a commit.
    /// `streams` as for [`Mirror::fetch`].
    pub(crate) fn build(
        &self,
        log: &mut dyn LogSource,
        hello: &Hello,
        streams: &mut Streams,
    ) -> Result<Option<Built>, MirrorError> {
        let mut out = PageWriter::create(&self.db_path(), self.sums_path())?;
        read_log(log, hello, &mut out, &self.dir, streams)?;
        if out.txns.txn_last.is_some() {
            // Pages of a transaction without its commit are in the file.
            return Err(LogError::Protocol("the log ended inside a transaction".into()).into());
        }
        let Some(to) = out.txns.last_frame.filter(|_| out.txns.frames > 0) else {
            return Ok(None);
        };
        out.finish(to)?;
        self.save_state(&MirrorState {
            log_id: hello.log_id.clone(),
            generation_id: hello.generation_id.clone(),
            frame_no: Some(to),
            revision: log.revision(),
        })?;
        Ok(Some(Built { to }))
    }
}

/// Where frames read off the log go: a spool ([`Mirror::fetch`]) or a mirror being built
/// ([`Mirror::build`]). Frames come in whole transactions; after `rewind` the transaction under
/// way is forgotten, and its frames come again.
trait FrameSink {
    fn txns(&self) -> &Txns;
    fn push(&mut self, frame: &[u8], snapshot: bool) -> std::io::Result<()>;
    fn rewind(&mut self) -> std::io::Result<()>;
}

/// Reads the log into `sink` until it is caught up: a long stretch in two streams at once
/// ([`stream_ahead`]), then batches from the frame after the sink's last commit (a batch that
/// broke off goes on from there), the snapshot when the log was compacted past that frame, a
/// new `Hello` when the server forgot the session (a changed log id means it was reset). Frames
/// of a transaction the log did not finish may be left past the last commit. `dir` holds what
/// is put aside meanwhile. Streams are tried only when `streams` says so; when they stay
/// silent, it becomes [`Streams::Off`].
fn read_log(
    log: &mut dyn LogSource,
    hello: &Hello,
    sink: &mut dyn FrameSink,
    dir: &Path,
    streams: &mut Streams,
) -> Result<(), MirrorError> {
    if let (Some(upto), Streams::Try) = (hello.replication_index, &streams) {
        let from = sink.txns().next();
        if upto >= from.saturating_add(STREAM_FRAMES) {
            if let Some(silent) = stream_ahead(&*log, sink, from, upto, dir)? {
                *streams = Streams::Off(silent.to_string());
            }
        }
    }
    let mut next = sink.txns().next();
    let mut snapshot = false;
    let mut hellos = 0;
    loop {
        let before = sink.txns().frames;
        let got = log.retrying(&mut |log: &mut dyn LogSource| {
            sink.rewind()?;
            let at = if snapshot { next } else { sink.txns().next() };
            log.frames(at, snapshot, &mut |f| sink.push(f, snapshot))
        });
        match got {
            Ok(()) => {}
            Err(LogError::NeedSnapshot) if !snapshot => {
                snapshot = true;
                continue;
            }
            Err(LogError::NoHello) if hellos < 3 => {
                hellos += 1;
                if log.hello()?.log_id != hello.log_id {
                    return Err(LogError::Reset.into());
                }
                continue;
            }
            Err(e) => return Err(e.into()),
        }
        if sink.txns().frames == before {
            if snapshot {
                return Err(LogError::Protocol("an empty snapshot".into()).into());
            }
            return Ok(());
        }
        snapshot = false;
        next = sink.txns().next();
        // Up to the frame `Hello` said the log ends at: asking on would find nothing.
        if hello.replication_index.is_some_and(|upto| next > upto) {
            return Ok(());
        }
    }
}

/// Below this many frames to read, batches are as fast as streams.
const STREAM_FRAMES: u64 = 2048;

/// Reads frames `from..=upto` in two streams at once: the first half straight into `sink`, the
/// second into a file aside in `dir` meanwhile, then from it, in order. sqld reads its log for
/// a stream or a batch one frame at a time, and sends a batch only once it is whole; two
/// streams keep two of its threads reading, so a long stretch of log comes in about a third of
/// the time batches take. Whatever goes wrong here (a server without streams, a dropped
/// connection) leaves `sink` at its last commit, and the batches of [`read_log`] go on from
/// there: this is only a shortcut. Only an error of the sink itself is returned; a stream that
/// stayed silent ([`LogError::Silent`]) is given back, so the caller stops trying streams.
fn stream_ahead(
    log: &dyn LogSource,
    sink: &mut dyn FrameSink,
    from: u64,
    upto: u64,
    dir: &Path,
) -> Result<Option<LogError>, MirrorError> {
    let (Some(mut first), Some(mut second)) = (log.fork(), log.fork()) else {
        return Ok(None);
    };
    let mid = from + (upto - from) / 2;
    let mut aside = BufWriter::with_capacity(1 << 20, tempfile::tempfile_in(dir)?);
    let (head, tail) = std::thread::scope(|s| {
        let tail = s.spawn(|| second.stream(mid + 1, upto, &mut |f| aside.write_all(f)));
        let head = first.stream(from, mid, &mut |f| sink.push(f, false));
        (head, tail.join())
    });
    let (head, tail) = match (head, tail) {
        (Err(silent @ LogError::Silent(_)), _) | (_, Ok(Err(silent @ LogError::Silent(_)))) => {
            sink.rewind()?;
            return Ok(Some(silent));
        }
        other => other,
    };
    let read = match (head, tail) {
        (Ok(()), Ok(Ok(()))) => {
            let mut file = aside.into_inner().map_err(|e| e.into_error())?;
            file.seek(SeekFrom::Start(0))?;
            let page_size = sink.txns().page_size.unwrap_or(0);
            let mut r = BufReader::with_capacity(1 << 20, file);
            let mut frame = vec![0; FRAME_HEADER + page_size];
            (mid + 1..=upto).try_for_each(|_| {
                r.read_exact(&mut frame)
                    .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))?;
                sink.push(&frame, false)
            })
        }
        _ => Ok(()),
    };
    // A file short of frames, or a frame in it that does not follow, is left to the batches
    // too; only the sink's own storage failing is an error.
    if read
        .as_ref()
        .is_err_and(|e| e.kind() != std::io::ErrorKind::InvalidData)
    {
        read?;
    }
    sink.rewind()?;
    Ok(None)
}

/// Frames counted in whole transactions, and checked against the ones before them, as every
/// [`FrameSink`] keeps them.
#[derive(Debug, Default)]
struct Txns {
    page_size: Option<usize>,
    /// Frames up to the last commit.
    frames: u64,
    /// Frames of the transaction under way, and the last of them.
    txn_frames: u64,
    txn_last: Option<u64>,
    /// The last frame of the last commit.
    last_frame: Option<u64>,
    /// The database size in pages at the last commit.
    size: u32,
}

impl Txns {
    /// The frame a batch goes on from: the one after the last commit.
    fn next(&self) -> u64 {
        self.last_frame.map_or(0, |f| f + 1)
    }

    /// Checks a frame: its header, its page size, and that it follows the frame before (in the
    /// log; a snapshot's come in any order).
    fn check(&mut self, frame: &[u8], snapshot: bool) -> std::io::Result<FrameHeader> {
        let bad = |what: String| std::io::Error::new(std::io::ErrorKind::InvalidData, what);
        let h =
            FrameHeader::parse(frame).ok_or_else(|| bad("a frame without its header".into()))?;
        let page = frame.len() - FRAME_HEADER;
        if *self.page_size.get_or_insert(page) != page || !page.is_power_of_two() || h.page_no == 0
        {
            return Err(bad(format!(
                "frame {} holds page {} of {page} bytes",
                h.frame_no, h.page_no
            )));
        }
        let expected = self.txn_last.or(self.last_frame).map(|f| f + 1);
        if !snapshot && expected.is_some_and(|e| e != h.frame_no) {
            return Err(bad(format!(
                "frame {} where frame {} was due",
                h.frame_no,
                expected.unwrap_or_default()
            )));
        }
        Ok(h)
    }

    /// Counts a checked frame once stored; true when it commits its transaction.
    fn count(&mut self, h: &FrameHeader) -> bool {
        self.txn_frames += 1;
        self.txn_last = Some(self.txn_last.map_or(h.frame_no, |l| l.max(h.frame_no)));
        if !h.is_commit() {
            return false;
        }
        self.frames += std::mem::take(&mut self.txn_frames);
        self.last_frame = self.txn_last.take().max(self.last_frame);
        self.size = h.size_after;
        true
    }

    fn rewind(&mut self) {
        self.txn_frames = 0;
        self.txn_last = None;
    }
}

/// Frames written straight into a database file, pages next to each other gathered into one
/// write, with the sum of each page kept for the sums file.
struct PageWriter {
    file: fs::File,
    sums_path: PathBuf,
    /// The sum of each page written, by page number less one.
    sums: Vec<Option<u32>>,
    /// Pages not written yet, all consecutive, the first being `run_first`.
    run: Vec<u8>,
    run_first: u32,
    txns: Txns,
}

/// Gathered pages are written once they fill this many bytes.
const RUN_BYTES: usize = 1 << 20;

impl PageWriter {
    fn create(path: &Path, sums_path: PathBuf) -> Result<PageWriter> {
        Ok(PageWriter {
            file: fs::File::create(path)?,
            sums_path,
            sums: Vec::new(),
            run: Vec::with_capacity(RUN_BYTES),
            run_first: 0,
            txns: Txns::default(),
        })
    }

    fn flush(&mut self) -> std::io::Result<()> {
        if !self.run.is_empty() {
            let at = (u64::from(self.run_first) - 1) * self.txns.page_size.unwrap_or(0) as u64;
            self.file.write_all_at(&self.run, at)?;
            self.run.clear();
        }
        Ok(())
    }

    /// Writes what is gathered, cuts the file to the last commit's size, and writes the sums
    /// file, at frame `to` (unsynced, as the database: the caller syncs both).
    fn finish(mut self, to: u64) -> std::io::Result<()> {
        self.flush()?;
        let page_size = self.txns.page_size.unwrap_or(0);
        self.file
            .set_len(u64::from(self.txns.size) * page_size as u64)?;
        let sums = self
            .sums
            .iter()
            .enumerate()
            .take(self.txns.size as usize)
            .filter_map(|(i, s)| Some((u32::try_from(i + 1).ok()?, (*s)?)))
            .collect();
        let file = fs::File::create(&self.sums_path)?;
        write_sums(
            &file,
            sums,
            Some(0),
            SumsHeader {
                page_size: page_size as u32,
                pages: self.txns.size,
                frame: to,
            },
        )
    }
}

impl FrameSink for PageWriter {
    fn txns(&self) -> &Txns {
        &self.txns
    }

    fn push(&mut self, frame: &[u8], snapshot: bool) -> std::io::Result<()> {
        let h = self.txns.check(frame, snapshot)?;
        let page = frame.len() - FRAME_HEADER;
        let run_pages = (self.run.len() / page) as u32;
        if self.run.len() + page > RUN_BYTES
            || self.run_first.checked_add(run_pages) != Some(h.page_no)
        {
            self.flush()?;
            self.run_first = h.page_no;
        }
        self.run.extend_from_slice(page_of(frame));
        let i = h.page_no as usize - 1;
        if self.sums.len() <= i {
            self.sums.resize(i + 1, None);
        }
        self.sums[i] = Some(page_sums::sum(page_of(frame)));
        self.txns.count(&h);
        Ok(())
    }

    /// Its pages stay written: they come again, the same or newer.
    fn rewind(&mut self) -> std::io::Result<()> {
        self.txns.rewind();
        Ok(())
    }
}

/// A test hook: `TURSYNC_TEST_APPLY_PAUSE_MS` sleeps that long after each page written into
/// the mirror, so a test can kill the process while a spool is half applied.
fn test_pause() -> Option<impl FnMut()> {
    let ms: u64 = std::env::var("TURSYNC_TEST_APPLY_PAUSE_MS")
        .ok()?
        .parse()
        .ok()?;
    Some(move || std::thread::sleep(std::time::Duration::from_millis(ms)))
}

fn spool_damaged(path: &Path, why: &str) -> Error {
    Error::Unexpected(format!(
        "{} is damaged ({why}); the next pull drops it with the mirror and reads the log again",
        path.display()
    ))
}

/// A spool being written: frames go to disk as they come, and the file is cut back to the last
/// whole transaction before each request, so a batch that breaks off is fetched again cleanly.
struct Spool {
    path: PathBuf,
    out: BufWriter<fs::File>,
    _aside: Aside,
    /// Bytes up to the end of the last whole transaction, and written past it.
    committed: u64,
    written: u64,
    /// Pages the transaction under way writes, and those of the whole transactions before.
    txn_pages: Vec<u32>,
    pages: BTreeSet<u32>,
    txns: Txns,
    snapshots: bool,
    /// The CRC-32 of the frames written, and of those up to the last whole transaction.
    crc: crc32fast::Hasher,
    committed_crc: crc32fast::Hasher,
}

/// Room for the spool's head, a JSON document padded with spaces.
const HEAD_BYTES: u64 = 4096;

impl Spool {
    fn create(path: PathBuf, from: Option<u64>) -> Result<Spool> {
        let aside = Aside {
            paths: vec![path.clone()],
        };
        let mut file = fs::File::create(&path)?;
        file.seek(SeekFrom::Start(HEAD_BYTES))?;
        Ok(Spool {
            path,
            out: BufWriter::with_capacity(1 << 20, file),
            _aside: aside,
            committed: HEAD_BYTES,
            written: HEAD_BYTES,
            txn_pages: Vec::new(),
            pages: BTreeSet::new(),
            txns: Txns {
                last_frame: from,
                ..Txns::default()
            },
            snapshots: false,
            crc: crc32fast::Hasher::new(),
            committed_crc: crc32fast::Hasher::new(),
        })
    }

    /// Writes the head (with the count and sum of the frames), syncs, and renames the spool
    /// to `ready`, where it counts as ready. A transaction the log did not finish stays out.
    fn finish(mut self, mut head: SpoolHead, ready: &Path) -> Result<(PathBuf, SpoolHead)> {
        self.rewind()?;
        head.frames = self.txns.frames;
        head.sum = Some(self.committed_crc.clone().finalize());
        let mut file = self
            .out
            .into_inner()
            .map_err(|e| Error::Io(e.into_error()))?;
        let text = serde_json::to_vec(&head).map_err(Error::Json)?;
        if text.len() as u64 >= HEAD_BYTES {
            return Err(Error::Unexpected("the log id is too long to record".into()));
        }
        let mut padded = text;
        padded.resize(HEAD_BYTES as usize, b' ');
        file.seek(SeekFrom::Start(0))?;
        file.write_all(&padded)?;
        file.sync_all()?;
        fs::rename(&self.path, ready)?;
        Ok((ready.to_path_buf(), head))
    }
}

impl FrameSink for Spool {
    fn txns(&self) -> &Txns {
        &self.txns
    }

    fn push(&mut self, frame: &[u8], snapshot: bool) -> std::io::Result<()> {
        let h = self.txns.check(frame, snapshot)?;
        self.out.write_all(frame)?;
        self.crc.update(frame);
        self.written += frame.len() as u64;
        self.txn_pages.push(h.page_no);
        if self.txns.count(&h) {
            self.committed = self.written;
            self.committed_crc = self.crc.clone();
            self.pages.extend(self.txn_pages.drain(..));
            self.snapshots |= snapshot;
        }
        Ok(())
    }

    /// Drops whatever follows the last whole transaction.
    fn rewind(&mut self) -> std::io::Result<()> {
        if self.written != self.committed {
            self.out.flush()?;
            self.out.get_ref().set_len(self.committed)?;
            self.out.seek(SeekFrom::Start(self.committed))?;
            self.written = self.committed;
        }
        self.crc = self.committed_crc.clone();
        self.txn_pages.clear();
        self.txns.rewind();
        Ok(())
    }
}

fn skip_head(r: &mut impl Read) -> std::io::Result<()> {
    std::io::copy(&mut r.take(HEAD_BYTES), &mut std::io::sink()).map(|_| ())
}

/// Reads a ready spool back, as a crashed run left it, checking it whole first: its head,
/// the count and sum of its frames, the page each names, and that the last one commits. `Err`
/// says why it is damaged.
fn read_spool(path: &Path) -> Result<std::result::Result<Ready, String>> {
    let damaged = |why: &str| Ok(Err(format!("{} is damaged ({why})", path.display())));
    let file = fs::File::open(path)?;
    let len = file.metadata()?.len();
    let mut r = BufReader::with_capacity(1 << 20, file);
    let mut head = vec![0; HEAD_BYTES as usize];
    if len < HEAD_BYTES {
        return damaged("shorter than its head");
    }
    r.read_exact(&mut head)?;
    let Ok(head) = serde_json::from_slice::<SpoolHead>(head.trim_ascii_end()) else {
        return damaged("its head is not one");
    };
    let Some(want) = head.sum else {
        return damaged("its head records no sum");
    };
    if !(512..=65536).contains(&head.page_size) || !head.page_size.is_power_of_two() {
        return damaged("its head names no page size");
    }
    let frame_len = (FRAME_HEADER + head.page_size) as u64;
    if head.frames == 0 || Some(len) != head.frames.checked_mul(frame_len).map(|f| f + HEAD_BYTES) {
        return damaged(&format!(
            "{len} bytes, where its head names {} frames",
            head.frames
        ));
    }
    let mut frame = vec![0; frame_len as usize];
    let (mut pages, mut to, mut size, mut last_commits) = (BTreeSet::new(), None, 0, false);
    let mut crc = crc32fast::Hasher::new();
    for _ in 0..head.frames {
        r.read_exact(&mut frame)?;
        crc.update(&frame);
        let Some(h) = FrameHeader::parse(&frame).filter(|h| h.page_no != 0) else {
            return damaged("a frame of page 0");
        };
        pages.insert(h.page_no);
        to = to.max(Some(h.frame_no));
        last_commits = h.is_commit();
        if last_commits {
            size = h.size_after;
        }
    }
    if crc.finalize() != want {
        return damaged("its frames do not match the sum in its head");
    }
    let (Some(to), true) = (to, last_commits) else {
        return damaged("its last frame commits no transaction");
    };
    Ok(Ok(Ready {
        path: path.to_path_buf(),
        fresh: head.fresh,
        head,
        from: None,
        pages,
        to,
        size,
    }))
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
    let abs = std::path::absolute(path)?;
    let mut url = url::Url::from_file_path(&abs)
        .map_err(|()| Error::Unsupported(format!("{} is not a usable path", abs.display())))?;
    url.set_query(Some(query));
    let conn = rusqlite::Connection::open_with_flags(
        url.as_str(),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY
            | rusqlite::OpenFlags::SQLITE_OPEN_URI
            | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    conn.execute_batch("BEGIN")?;
    Ok(conn)
}

/// Copies the mirror to `dst` as a database an app can use: byte for byte, but with the header
/// saying rollback journal (bytes 18 and 19 set to 1) instead of the server's WAL mode. The
/// copy is not synced: the caller does, when it is done with it.
pub fn copy_out(mirror: &Path, dst: &Path) -> Result<()> {
    fs::copy(mirror, dst)?;
    let f = fs::OpenOptions::new().write(true).open(dst)?;
    if f.metadata()?.len() >= 100 {
        f.write_all_at(&[1, 1], 18)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A mirror in a new directory holding what `sql` makes (4096-byte pages), with the sums of
    /// its pages as `apply` would record them at frame 7, and its bytes as written.
    fn sealed(sql: &str) -> (tempfile::TempDir, Mirror, Vec<u8>) {
        let dir = tempfile::tempdir().unwrap();
        let m = Mirror::new(dir.path().to_path_buf());
        rusqlite::Connection::open(m.db_path())
            .unwrap()
            .execute_batch(sql)
            .unwrap();
        let bytes = fs::read(m.db_path()).unwrap();
        let sums: BTreeMap<u32, u32> = bytes
            .chunks(4096)
            .enumerate()
            .map(|(i, p)| (i as u32 + 1, page_sums::sum(p)))
            .collect();
        let head = SumsHeader {
            page_size: 4096,
            pages: sums.len() as u32,
            frame: 7,
        };
        write_sums(
            &fs::File::create(m.sums_path()).unwrap(),
            sums,
            Some(0),
            head,
        )
        .unwrap();
        (dir, m, bytes)
    }
    use crate::remote::RemoteError;

    /// A log of frames held in memory. The first batch breaks off after `break_after` frames
    /// (once), as a dropped connection does; a batch runs to the end of the log.
    struct FakeLog {
        frames: Vec<Vec<u8>>,
        break_after: Option<usize>,
        /// Serves streams (and so forks); with `streams_break`, a stream that does not start
        /// the log breaks off after a few frames.
        streams: bool,
        streams_break: bool,
        /// Streams send nothing, as through a proxy holding them ([`LogError::Silent`]).
        streams_silent: bool,
        /// Streams asked for, by this source and its forks.
        streams_asked: std::sync::Arc<std::sync::atomic::AtomicU64>,
        /// Frames served in batches so far.
        batched: u64,
    }

    impl FakeLog {
        fn new(frames: Vec<Vec<u8>>, break_after: Option<usize>) -> FakeLog {
            FakeLog {
                frames,
                break_after,
                streams: false,
                streams_break: false,
                streams_silent: false,
                streams_asked: Default::default(),
                batched: 0,
            }
        }
    }

    const PAGE: usize = 512;

    fn frame(frame_no: u64, page_no: u32, size_after: u32) -> Vec<u8> {
        let mut f = Vec::with_capacity(FRAME_HEADER + PAGE);
        f.extend_from_slice(&frame_no.to_le_bytes());
        f.extend_from_slice(&0u64.to_le_bytes());
        f.extend_from_slice(&page_no.to_le_bytes());
        f.extend_from_slice(&size_after.to_le_bytes());
        f.extend((0..PAGE).map(|i| (i as u64 * 7 + frame_no * 31 + u64::from(page_no)) as u8));
        f
    }

    fn hello() -> Hello {
        Hello {
            log_id: "log".into(),
            generation_id: "gen".into(),
            replication_index: None,
        }
    }

    impl LogSource for FakeLog {
        fn hello(&mut self) -> Result<Hello, LogError> {
            Ok(hello())
        }

        fn frames(
            &mut self,
            next_offset: u64,
            _snapshot: bool,
            each: &mut dyn FnMut(&[u8]) -> std::io::Result<()>,
        ) -> Result<(), LogError> {
            let from = usize::try_from(next_offset).unwrap().min(self.frames.len());
            for (i, f) in self.frames[from..].iter().enumerate() {
                if self.break_after.is_some_and(|b| i == b) {
                    self.break_after = None;
                    return Err(LogError::Remote(RemoteError::Dropped {
                        url: String::new(),
                        reason: "test".into(),
                    }));
                }
                each(f)?;
                self.batched += 1;
            }
            Ok(())
        }

        fn stream(
            &mut self,
            from: u64,
            upto: u64,
            each: &mut dyn FnMut(&[u8]) -> std::io::Result<()>,
        ) -> Result<(), LogError> {
            if !self.streams {
                return Err(LogError::NotServed("test".into()));
            }
            self.streams_asked
                .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            if self.streams_silent {
                return Err(LogError::Silent(std::time::Duration::from_millis(500)));
            }
            let range = usize::try_from(from).unwrap()..=usize::try_from(upto).unwrap();
            for (i, f) in self.frames[range].iter().enumerate() {
                if self.streams_break && from > 0 && i == 10 {
                    return Err(LogError::Protocol("test".into()));
                }
                each(f)?;
            }
            Ok(())
        }

        fn fork(&self) -> Option<Box<dyn LogSource + Send + '_>> {
            self.streams.then(|| {
                Box::new(FakeLog {
                    frames: self.frames.clone(),
                    break_after: None,
                    streams_asked: self.streams_asked.clone(),
                    ..*self
                }) as Box<dyn LogSource + Send>
            })
        }

        fn retrying(
            &mut self,
            attempt: &mut dyn FnMut(&mut dyn LogSource) -> Result<(), LogError>,
        ) -> Result<(), LogError> {
            loop {
                match attempt(self) {
                    Err(LogError::Remote(_)) => continue,
                    other => return other,
                }
            }
        }
    }

    /// Three transactions: the database grows to 5 pages, then shrinks to 4; pages are
    /// written again, out of order, and some next to each other.
    fn log_frames() -> Vec<Vec<u8>> {
        vec![
            frame(0, 1, 0),
            frame(1, 2, 0),
            frame(2, 3, 3),
            frame(3, 2, 0),
            frame(4, 5, 0),
            frame(5, 4, 0),
            frame(6, 3, 5),
            frame(7, 1, 4),
        ]
    }

    /// A mirror built straight from the log is the file a spool fetched and applied makes,
    /// with the same recorded point, whether or not a batch broke off mid-transaction.
    #[test]
    fn a_built_mirror_is_the_applied_spool() {
        for break_after in [None, Some(1), Some(4), Some(7)] {
            let built = tempfile::tempdir().unwrap();
            let applied = tempfile::tempdir().unwrap();
            let a = Mirror::new(applied.path().to_path_buf());
            let mut log = FakeLog::new(log_frames(), None);
            let ready = a
                .fetch(&mut log, &hello(), &mut Streams::Try)
                .unwrap()
                .unwrap();
            a.apply(ready).unwrap();
            let b = Mirror::new(built.path().to_path_buf());
            let mut log = FakeLog::new(log_frames(), break_after);
            assert_eq!(
                b.build(&mut log, &hello(), &mut Streams::Try)
                    .unwrap()
                    .unwrap()
                    .to,
                7
            );
            let got = fs::read(b.db_path()).unwrap();
            assert_eq!(got.len(), 4 * PAGE);
            assert_eq!(got, fs::read(a.db_path()).unwrap(), "{break_after:?}");
            assert_eq!(b.state().unwrap(), a.state().unwrap());
            // The same sums, and both mirrors trusted.
            assert_eq!(
                fs::read(b.sums_path()).unwrap(),
                fs::read(a.sums_path()).unwrap()
            );
            assert!(matches!(a.health(), Ok(Some(Ok(_)))));
            assert!(matches!(b.health(), Ok(Some(Ok(_)))));
        }
    }

    /// A page changed on disk after it was written fails the read of it through SQLite, and
    /// the damage is reported for that mirror; the other pages still read.
    #[test]
    fn a_page_changed_on_disk_fails_its_read() {
        let (_dir, m, bytes) = sealed("CREATE TABLE a(x); INSERT INTO a VALUES (1);
                 CREATE TABLE b(x); INSERT INTO b VALUES (1), (2), (3), (4), (5), (6), (7), (8), (9), (10);");
        let count = |t: &str| {
            open_immutable(&m.db_path()).and_then(|c| {
                Ok(c.query_row(&format!("SELECT count(*) FROM {t}"), [], |r| {
                    r.get::<_, i64>(0)
                })?)
            })
        };
        assert_eq!(count("b").unwrap(), 10);
        assert!(m.take_damage().is_none());
        // The last page is b's root; flip a byte of it.
        let f = fs::OpenOptions::new()
            .write(true)
            .open(m.db_path())
            .unwrap();
        let at = bytes.len() - 1;
        f.write_all_at(&[bytes[at] ^ 1], at as u64).unwrap();
        assert!(count("b").is_err());
        let why = m.take_damage().unwrap();
        assert!(
            why.contains(&format!("page {} ", bytes.len() / 4096)),
            "{why}"
        );
        assert_eq!(count("a").unwrap(), 1);
        assert!(m.take_damage().is_none());
        // Without sums nothing is read.
        fs::remove_file(m.sums_path()).unwrap();
        assert!(count("a").is_err());
        assert!(m.take_damage().is_some());
    }

    /// A page size in the mirror's header changed on disk (one bit: 4096 becomes 8192) has
    /// SQLite read pages of another size: none of them passes unchecked. A sums file whose
    /// page size SQLite cannot have vouches for nothing, and nothing opens the mirror through
    /// the checking VFS for writing.
    #[test]
    fn reads_of_another_page_size_fail() {
        let (_dir, m, bytes) = sealed(
            "CREATE TABLE a(x);
                 WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 3000)
                 INSERT INTO a SELECT i FROM n;",
        );
        let count = || {
            open_immutable(&m.db_path()).and_then(|c| {
                Ok(c.query_row("SELECT count(*) FROM a", [], |r| r.get::<_, i64>(0))?)
            })
        };
        assert_eq!(count().unwrap(), 3000);
        let f = fs::OpenOptions::new()
            .write(true)
            .open(m.db_path())
            .unwrap();
        assert_eq!(bytes[16..18], [0x10, 0]);
        f.write_all_at(&[0x20], 16).unwrap();
        assert!(count().is_err());
        // Page 1, read whole to give SQLite the header, no longer matches its sum.
        let why = m.take_damage().unwrap();
        assert!(why.contains("page 1 "), "{why}");
        f.write_all_at(&[0x10], 16).unwrap();
        assert_eq!(count().unwrap(), 3000);
        // A page size of 0 in the sums: not a header.
        let s = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(m.sums_path())
            .unwrap();
        s.write_all_at(&0u32.to_le_bytes(), 16).unwrap();
        assert_eq!(SumsHeader::read(&s).ok(), Some(None));
        assert!(count().is_err());
        assert!(m.take_damage().is_some());
        // Opened for writing through the checking VFS: refused.
        let url = format!(
            "file:{}?vfs={}",
            m.db_path().display(),
            page_sums::vfs_name().unwrap()
        );
        let rw = rusqlite::Connection::open_with_flags(
            url,
            rusqlite::OpenFlags::SQLITE_OPEN_READ_WRITE | rusqlite::OpenFlags::SQLITE_OPEN_URI,
        );
        assert!(rw.is_err());
    }

    /// SQLite reads the last page of an overflow chain straight from the file, only as far as
    /// the value goes (not the whole page): that part is checked too, against the whole page,
    /// and a mirror that is intact reads whole.
    #[test]
    fn the_end_of_an_overflow_chain_is_checked() {
        // 8506 bytes: the leaf keeps a part, two overflow pages the rest, the second one
        // not full.
        let (_dir, m, bytes) = sealed(
            "CREATE TABLE a(x); INSERT INTO a VALUES (printf('%.*c', 8500, 'a') || 'needle');",
        );
        let read = || {
            open_immutable(&m.db_path())
                .and_then(|c| Ok(c.query_row("SELECT x FROM a", [], |r| r.get::<_, String>(0))?))
        };
        let whole = read().unwrap();
        assert!(whole.ends_with("aneedle") && whole.len() == 8506);
        assert!(m.take_damage().is_none());
        let at = bytes.windows(6).position(|w| w == b"needle").unwrap();
        assert!(
            at % 4096 < 4000,
            "the needle is not near the end of its page"
        );
        let f = fs::OpenOptions::new()
            .write(true)
            .open(m.db_path())
            .unwrap();
        f.write_all_at(b"N", at as u64).unwrap();
        let got = read();
        assert!(got.is_err(), "read {:?}", got.map(|s| s[8500..].to_owned()));
        assert!(m.take_damage().is_some());
    }

    /// Loading an extension on a connection to the mirror fails as SQLite's own VFS fails it
    /// (the file is not there), rather than calling through a missing function.
    #[test]
    fn loading_an_extension_through_the_checking_vfs_fails_cleanly() {
        let dir = tempfile::tempdir().unwrap();
        let m = Mirror::new(dir.path().to_path_buf());
        rusqlite::Connection::open(m.db_path())
            .unwrap()
            .execute_batch("CREATE TABLE a(x)")
            .unwrap();
        let bytes = fs::read(m.db_path()).unwrap();
        let head = SumsHeader {
            page_size: 4096,
            pages: 2,
            frame: 7,
        };
        let sums = BTreeMap::from([
            (1, page_sums::sum(&bytes[..4096])),
            (2, page_sums::sum(&bytes[4096..])),
        ]);
        write_sums(
            &fs::File::create(m.sums_path()).unwrap(),
            sums,
            Some(0),
            head,
        )
        .unwrap();
        let conn = open_immutable(&m.db_path()).unwrap();
        assert_eq!(
            conn.query_row("SELECT count(*) FROM a", [], |r| r.get::<_, i64>(0))
                .unwrap(),
            0
        );
        let name = c"/nonexistent/extension";
        let mut err: *mut std::ffi::c_char = std::ptr::null_mut();
        // SAFETY: the connection is open for the whole block; the message SQLite allocates is
        // freed with its allocator.
        let rc = unsafe {
            let db = conn.handle();
            assert_eq!(rusqlite::ffi::sqlite3_enable_load_extension(db, 1), 0);
            let rc = rusqlite::ffi::sqlite3_load_extension(
                db,
                name.as_ptr(),
                std::ptr::null(),
                &mut err,
            );
            rusqlite::ffi::sqlite3_free(err.cast());
            rc
        };
        assert_eq!(rc, rusqlite::ffi::SQLITE_ERROR);
    }

    /// A log that ends inside a transaction cannot be built: its pages are in the file.
    #[test]
    fn a_log_ending_inside_a_transaction_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let mut frames = log_frames();
        frames.truncate(5);
        let mut log = FakeLog::new(frames, None);
        let got =
            Mirror::new(dir.path().to_path_buf()).build(&mut log, &hello(), &mut Streams::Try);
        assert!(matches!(got, Err(MirrorError::Log(LogError::Protocol(_)))));
    }

    /// A batch that breaks off, before or after a commit it holds, is fetched again from its
    /// last whole transaction, and the spool applied is the mirror an unbroken batch makes.
    #[test]
    fn a_batch_that_breaks_off_goes_on_after_its_last_commit() {
        let whole = tempfile::tempdir().unwrap();
        let w = Mirror::new(whole.path().to_path_buf());
        let mut log = FakeLog::new(log_frames(), None);
        w.apply(
            w.fetch(&mut log, &hello(), &mut Streams::Try)
                .unwrap()
                .unwrap(),
        )
        .unwrap();
        for break_after in [1, 4, 7] {
            let dir = tempfile::tempdir().unwrap();
            let m = Mirror::new(dir.path().to_path_buf());
            let mut log = FakeLog::new(log_frames(), Some(break_after));
            m.apply(
                m.fetch(&mut log, &hello(), &mut Streams::Try)
                    .unwrap()
                    .unwrap(),
            )
            .unwrap();
            assert_eq!(
                fs::read(m.db_path()).unwrap(),
                fs::read(w.db_path()).unwrap()
            );
            assert_eq!(m.state().unwrap(), w.state().unwrap());
        }
    }

    /// An empty log builds nothing.
    #[test]
    fn an_empty_log_builds_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = FakeLog::new(Vec::new(), None);
        let m = Mirror::new(dir.path().to_path_buf());
        assert!(m
            .build(&mut log, &hello(), &mut Streams::Try)
            .unwrap()
            .is_none());
    }

    /// A log of `n` frames in transactions of 1 to 40 frames over a database of 60 pages.
    fn long_log(n: u64) -> Vec<Vec<u8>> {
        let mut x = 7u64;
        (0..n)
            .map(|i| {
                x = x
                    .wrapping_mul(6_364_136_223_846_793_005)
                    .wrapping_add(1_442_695_040_888_963_407);
                let commit = (x >> 59) < 1 || i + 1 == n;
                frame(i, 1 + ((x >> 33) % 60) as u32, if commit { 60 } else { 0 })
            })
            .collect()
    }

    /// A long log read in two streams at once makes the file batches make, for a mirror built
    /// or a spool applied; a stream that breaks off leaves the rest to the batches.
    #[test]
    fn a_long_log_read_in_two_streams_is_the_log_read_in_batches() {
        let n = STREAM_FRAMES * 2 + 77;
        let at = Hello {
            replication_index: Some(n - 1),
            ..hello()
        };
        let reference = tempfile::tempdir().unwrap();
        let r = Mirror::new(reference.path().to_path_buf());
        r.build(&mut FakeLog::new(long_log(n), None), &at, &mut Streams::Try)
            .unwrap();
        let want = fs::read(r.db_path()).unwrap();
        assert_eq!(want.len(), 60 * PAGE);
        for streams_break in [false, true] {
            let log = || FakeLog {
                streams: true,
                streams_break,
                ..FakeLog::new(long_log(n), None)
            };
            let built = tempfile::tempdir().unwrap();
            let b = Mirror::new(built.path().to_path_buf());
            let mut source = log();
            assert_eq!(
                b.build(&mut source, &at, &mut Streams::Try)
                    .unwrap()
                    .unwrap()
                    .to,
                n - 1
            );
            assert_eq!(
                fs::read(b.db_path()).unwrap(),
                want,
                "built, {streams_break}"
            );
            // The streams read it all, or (broken off) left the second half to the batches.
            assert_eq!(source.batched == 0, !streams_break, "{}", source.batched);
            let applied = tempfile::tempdir().unwrap();
            let a = Mirror::new(applied.path().to_path_buf());
            let ready = a
                .fetch(&mut log(), &at, &mut Streams::Try)
                .unwrap()
                .unwrap();
            a.apply(ready).unwrap();
            assert_eq!(
                fs::read(a.db_path()).unwrap(),
                want,
                "applied, {streams_break}"
            );
        }
    }

    /// Streams that send nothing leave the whole log to the batches, which make the same file,
    /// and turn streams off; once off, none is asked for.
    #[test]
    fn silent_streams_are_left_to_the_batches_and_turned_off() {
        let n = STREAM_FRAMES * 2 + 77;
        let at = Hello {
            replication_index: Some(n - 1),
            ..hello()
        };
        let reference = tempfile::tempdir().unwrap();
        let r = Mirror::new(reference.path().to_path_buf());
        r.build(&mut FakeLog::new(long_log(n), None), &at, &mut Streams::Try)
            .unwrap();
        let want = fs::read(r.db_path()).unwrap();
        for mut streams in [Streams::Try, Streams::Off("before".into())] {
            let was = streams.clone();
            let mut source = FakeLog {
                streams: true,
                streams_silent: true,
                ..FakeLog::new(long_log(n), None)
            };
            let built = tempfile::tempdir().unwrap();
            let b = Mirror::new(built.path().to_path_buf());
            let to = b.build(&mut source, &at, &mut streams).unwrap().unwrap().to;
            assert_eq!(to, n - 1);
            assert_eq!(fs::read(b.db_path()).unwrap(), want, "{was:?}");
            assert_eq!(source.batched, n, "{was:?}");
            let asked = source
                .streams_asked
                .load(std::sync::atomic::Ordering::SeqCst);
            match was {
                Streams::Try => {
                    assert_eq!(asked, 2);
                    assert!(
                        matches!(&streams, Streams::Off(why) if why.contains("sent nothing")),
                        "{streams:?}"
                    );
                }
                Streams::Off(_) => {
                    assert_eq!(asked, 0);
                    assert_eq!(streams, was);
                }
            }
        }
    }
}
