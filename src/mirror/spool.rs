//! The spool: frames fetched off the log and synced before any is written into the mirror, so
//! an apply a crash cut short is finished from it ([`Mirror::recover`]).

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::{BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

use super::log::{panicked, read_log, writing, FrameSink, Part, Parts, Txns};
use super::{Mirror, MirrorError, Streams, SPOOL};
use crate::durable::{self, Aside};
use crate::remote::replication::{FrameHeader, Hello, LogSource, FRAME_HEADER};
use crate::{Context, Error, Result};

/// What a ready spool starts with: enough to apply it after a crash.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct SpoolHead {
    pub(super) log_id: String,
    pub(super) generation_id: String,
    /// The mirror is started again from nothing (a first fetch or a reset log).
    pub(super) fresh: bool,
    pub(super) page_size: usize,
    /// The frames after the head, and the CRC-32 of their bytes: a spool that does not hold
    /// exactly these (cut short, a byte changed, written by a version that recorded neither)
    /// is damaged, and never applied.
    #[serde(default)]
    frames: u64,
    #[serde(default)]
    pub(super) sum: Option<u32>,
    /// The revision the frames reach, recorded with the frame once applied.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) revision: Option<String>,
}

/// Frames fetched, synced and ready to be written into the mirror.
#[derive(Debug)]
pub struct Ready {
    pub(super) path: PathBuf,
    pub(super) head: SpoolHead,
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

impl Mirror {
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
        // The frames of a mirror carried forward are of its page size: the parts of a stretch
        // are placed by it.
        let page_size = carried.and_then(|_| self.page_size());
        let mut spool = Spool::create(durable::aside_name(&self.dir, SPOOL), from, page_size)?;
        read_log(log, &hello, &mut spool, &self.dir, streams)?;
        let Some(to) = spool
            .counted
            .txns
            .last_frame
            .filter(|_| spool.counted.txns.frames > 0)
        else {
            return Ok(None);
        };
        let head = SpoolHead {
            log_id: hello.log_id,
            generation_id: hello.generation_id,
            fresh: carried.is_none(),
            page_size: spool.counted.txns.page_size.unwrap_or(4096),
            frames: 0,
            sum: None,
            revision: log.revision(),
        };
        let (pages, size) = (
            std::mem::take(&mut spool.counted.pages),
            spool.counted.txns.size,
        );
        let fresh = head.fresh || spool.counted.snapshots;
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
}

pub(super) fn spool_damaged(path: &Path, why: &str) -> Error {
    Error::Unexpected(format!(
        "{} is damaged ({why}); the next pull drops it with the mirror and reads the log again",
        path.display()
    ))
}

/// A spool being written: frames go to disk as they come, and the file is cut back to the last
/// whole transaction before each request, so a batch that breaks off is fetched again cleanly.
/// The later parts of a stretch read in streams are written in place, each where its frames go
/// ([`SpoolPart`]), and counted once every part before them came whole.
struct Spool {
    path: PathBuf,
    out: BufWriter<fs::File>,
    _aside: Aside,
    counted: Counted,
    /// What each part that ended counted, by its first frame: where it starts in the file, and
    /// its counts, for [`FrameSink::follow`].
    ended: Arc<Mutex<BTreeMap<u64, (u64, Counted)>>>,
}

/// Frames written to a spool, counted in whole transactions: what the spool keeps, and each part
/// written into it in place (whose bytes count from its own start).
#[derive(Default)]
struct Counted {
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

impl Counted {
    /// Counts a frame checked ([`Txns::check`]) and written.
    fn took(&mut self, frame: &[u8], h: &FrameHeader, snapshot: bool) {
        self.crc.update(frame);
        self.written += frame.len() as u64;
        self.txn_pages.push(h.page_no);
        if self.txns.count(h) {
            self.committed = self.written;
            self.committed_crc = self.crc.clone();
            self.pages.extend(self.txn_pages.drain(..));
            self.snapshots |= snapshot;
        }
    }

    /// Counts `part` (the frames from `lo` on, written from byte `start` on) after the frames
    /// counted here, which must end right there ([`Txns::follow`]). Its bytes and sums follow
    /// ours:
    ///
    /// ```text
    /// here:  bytes 4096..=12_287, committed up to 8192; crc of them
    /// part:  from byte 12_288, 8192 bytes, committed up to 4096 of them; its own crc
    /// then:  written 20_480, committed 16_384; crc = ours then the part's (`combine`)
    /// ```
    fn follow(&mut self, part: Counted, lo: u64, start: u64) -> std::io::Result<()> {
        if start != self.written {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!(
                    "a part from frame {lo} starts at byte {start}, not {}",
                    self.written
                ),
            ));
        }
        self.txns.follow(&part.txns, lo)?;
        if part.committed > 0 {
            self.committed = start + part.committed;
            self.committed_crc = self.crc.clone();
            self.committed_crc.combine(&part.committed_crc);
            self.pages.extend(self.txn_pages.drain(..));
            self.pages.extend(part.pages);
            self.txn_pages = part.txn_pages;
        } else {
            self.txn_pages.extend(part.txn_pages);
        }
        self.crc.combine(&part.crc);
        self.written = start + part.written;
        self.snapshots |= part.snapshots;
        Ok(())
    }
}

/// Room for the spool's head, a JSON document padded with spaces.
pub(super) const HEAD_BYTES: u64 = 4096;

impl Spool {
    /// A spool of the frames after frame `from`, each of `page_size` when it is known (a frame
    /// of another size is refused).
    fn create(path: PathBuf, from: Option<u64>, page_size: Option<usize>) -> Result<Spool> {
        let aside = Aside {
            paths: vec![path.clone()],
        };
        let mut file = fs::File::create(&path).during("creating the spool", path.display())?;
        file.seek(SeekFrom::Start(HEAD_BYTES))
            .during("writing the spool", path.display())?;
        Ok(Spool {
            path,
            out: BufWriter::with_capacity(1 << 20, file),
            _aside: aside,
            counted: Counted {
                committed: HEAD_BYTES,
                written: HEAD_BYTES,
                txns: Txns {
                    last_frame: from,
                    page_size,
                    ..Txns::default()
                },
                ..Counted::default()
            },
            ended: Arc::default(),
        })
    }

    /// Writes the head (with the count and sum of the frames), syncs, and renames the spool
    /// to `ready`, where it counts as ready. A transaction the log did not finish stays out.
    fn finish(mut self, mut head: SpoolHead, ready: &Path) -> Result<(PathBuf, SpoolHead)> {
        self.rewind()
            .during("writing the spool", self.path.display())?;
        head.frames = self.counted.txns.frames;
        head.sum = Some(self.counted.committed_crc.clone().finalize());
        let mut file = self
            .out
            .into_inner()
            .map_err(|e| e.into_error())
            .during("writing the spool", self.path.display())?;
        let text = serde_json::to_vec(&head).map_err(Error::Json)?;
        if text.len() as u64 >= HEAD_BYTES {
            return Err(Error::Unexpected("the log id is too long to record".into()));
        }
        let mut padded = text;
        padded.resize(HEAD_BYTES as usize, b' ');
        file.seek(SeekFrom::Start(0))
            .and_then(|_| file.write_all(&padded))
            .and_then(|()| file.sync_all())
            .during("writing the spool", self.path.display())?;
        fs::rename(&self.path, ready).during("renaming into place", ready.display())?;
        Ok((ready.to_path_buf(), head))
    }
}

impl FrameSink for Spool {
    fn txns(&self) -> &Txns {
        &self.counted.txns
    }

    fn push(&mut self, frame: &[u8], snapshot: bool) -> std::io::Result<()> {
        let h = self.counted.txns.check(frame, snapshot)?;
        self.out.write_all(frame).map_err(writing(&self.path))?;
        self.counted.took(frame, &h, snapshot);
        Ok(())
    }

    /// Drops whatever follows the last whole transaction in the file, a part's written in place
    /// and never counted too.
    fn rewind(&mut self) -> std::io::Result<()> {
        let named = writing(&self.path);
        self.out.flush().map_err(&named)?;
        let c = &mut self.counted;
        let len = self.out.get_ref().metadata().map_err(&named)?.len();
        if c.written != c.committed || len > c.committed {
            self.out.get_ref().set_len(c.committed).map_err(&named)?;
            self.out
                .seek(SeekFrom::Start(c.committed))
                .map_err(&named)?;
            c.written = c.committed;
        }
        c.crc = c.committed_crc.clone();
        c.txn_pages.clear();
        c.txns.rewind();
        Ok(())
    }

    /// Parts of a stretch of log that follows the last whole transaction: each frame's place in
    /// the file is known from its number, once the frames' size is known (a spool carrying a
    /// mirror forward takes only frames of its page size). Not after a snapshot, whose length
    /// is known only once it came.
    fn parts(&self, after_log: bool) -> Option<Arc<dyn Parts>> {
        let c = &self.counted;
        let page_size = c.txns.page_size?;
        if !after_log || c.written != c.committed || c.txns.txn_last.is_some() {
            return None;
        }
        let file = self.out.get_ref().try_clone().ok()?;
        if let Ok(mut ended) = self.ended.lock() {
            ended.clear();
        }
        Some(Arc::new(SpoolParts {
            file: Arc::new(file),
            path: self.path.clone(),
            at: c.written,
            next: c.txns.next(),
            page_size,
            ended: Arc::clone(&self.ended),
        }))
    }

    fn follow(&mut self, lo: u64) -> std::io::Result<()> {
        let named = writing(&self.path);
        let (start, part) = (self.ended.lock())
            .map_err(|_| panicked(&self.path))?
            .remove(&lo)
            .ok_or_else(|| std::io::Error::other(format!("no part from frame {lo} ended")))?;
        self.out.flush().map_err(&named)?;
        self.counted.follow(part, lo, start)?;
        self.out
            .seek(SeekFrom::Start(self.counted.written))
            .map_err(&named)?;
        Ok(())
    }
}

/// Makes the parts of a stretch of log written into a spool in place ([`Spool::parts`]): frame
/// `next` goes at byte `at`, and each frame after it one frame's length (of `page_size`) further.
struct SpoolParts {
    file: Arc<fs::File>,
    path: PathBuf,
    at: u64,
    next: u64,
    page_size: usize,
    ended: Arc<Mutex<BTreeMap<u64, (u64, Counted)>>>,
}

impl Parts for SpoolParts {
    fn part(&self, lo: u64) -> Box<dyn Part> {
        let frame_len = (FRAME_HEADER + self.page_size) as u64;
        Box::new(SpoolPart {
            lo,
            file: Arc::clone(&self.file),
            path: self.path.clone(),
            start: self.at + lo.saturating_sub(self.next) * frame_len,
            buf: Vec::new(),
            flushed: 0,
            counted: Counted {
                txns: Txns {
                    page_size: Some(self.page_size),
                    ..Txns::starting_at(lo)
                },
                ..Counted::default()
            },
            ended: Arc::clone(&self.ended),
        })
    }
}

/// Frames `lo..` of a stretch, written into the spool from byte `start` on: where they go once
/// the frames before them came, every frame one size (a frame of another size is refused
/// before it is written).
struct SpoolPart {
    lo: u64,
    file: Arc<fs::File>,
    path: PathBuf,
    start: u64,
    /// Frames gathered for one write, and the bytes written before them.
    buf: Vec<u8>,
    flushed: u64,
    counted: Counted,
    ended: Arc<Mutex<BTreeMap<u64, (u64, Counted)>>>,
}

impl SpoolPart {
    fn flush(&mut self) -> std::io::Result<()> {
        if !self.buf.is_empty() {
            self.file
                .write_all_at(&self.buf, self.start + self.flushed)
                .map_err(writing(&self.path))?;
            self.flushed += self.buf.len() as u64;
            self.buf.clear();
        }
        Ok(())
    }
}

impl Part for SpoolPart {
    fn push(&mut self, frame: &[u8], snapshot: bool) -> std::io::Result<()> {
        let h = self.counted.txns.check(frame, snapshot)?;
        self.buf.extend_from_slice(frame);
        self.counted.took(frame, &h, snapshot);
        if self.buf.len() >= 1 << 20 {
            self.flush()?;
        }
        Ok(())
    }

    fn end(mut self: Box<Self>) -> std::io::Result<()> {
        self.flush()?;
        let counted = std::mem::take(&mut self.counted);
        (self.ended.lock())
            .map_err(|_| panicked(&self.path))?
            .insert(self.lo, (self.start, counted));
        Ok(())
    }
}

pub(super) fn skip_head(r: &mut impl Read) -> std::io::Result<()> {
    std::io::copy(&mut r.take(HEAD_BYTES), &mut std::io::sink()).map(|_| ())
}

/// Reads a ready spool back, as a crashed run left it, checking it whole first: its head,
/// the count and sum of its frames, the page each names, and that the last one commits. `Err`
/// says why it is damaged.
pub(super) fn read_spool(path: &Path) -> Result<std::result::Result<Ready, String>> {
    let damaged = |why: &str| Ok(Err(format!("{} is damaged ({why})", path.display())));
    let reading = "reading the spool";
    let file = fs::File::open(path).during(reading, path.display())?;
    let len = file.metadata().during(reading, path.display())?.len();
    let mut r = BufReader::with_capacity(1 << 20, file);
    let mut head = vec![0; HEAD_BYTES as usize];
    if len < HEAD_BYTES {
        return damaged("shorter than its head");
    }
    r.read_exact(&mut head).during(reading, path.display())?;
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
        r.read_exact(&mut frame).during(reading, path.display())?;
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
