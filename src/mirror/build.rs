//! Building a mirror from nothing at init: frames written straight into `mirror.db`, with no
//! spool, in a state directory nobody uses yet.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use super::apply::write_sums;
use super::log::{panicked, read_log, writing, FrameSink, Part, Parts, Txns};
use super::{Mirror, MirrorError, MirrorState, Streams};
use crate::page_sums::{self, Header as SumsHeader};
use crate::remote::replication::{page_of, Hello, LogError, LogSource, FRAME_HEADER};
use crate::{Context, Error, Result};

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
        let mut out = PageWriter::create(&self.db_path())?;
        read_log(log, hello, &mut out, &self.dir, streams)?;
        // Parts that did not count are read again in turn, up to where the read ends: a
        // frame newer than the last one read in order would mean one was left, its pages in
        // the file.
        out.flush()?;
        let read = out.txns.txn_last.or(out.txns.last_frame);
        if let Some(newest) = out.newest()?.filter(|&n| read < Some(n)) {
            return Err(LogError::Uneven(newest).into());
        }
        if out.txns.txn_last.is_some() {
            // Pages of a transaction without its commit are in the file.
            return Err(LogError::Protocol("the log ended inside a transaction".into()).into());
        }
        let Some(to) = out.txns.last_frame.filter(|_| out.txns.frames > 0) else {
            return Ok(None);
        };
        out.finish(to, &self.sums_path())?;
        self.save_state(&MirrorState {
            log_id: hello.log_id.clone(),
            generation_id: hello.generation_id.clone(),
            frame_no: Some(to),
            revision: log.revision(),
        })?;
        Ok(Some(Built { to }))
    }
}

/// The mirror's file being built, shared by the sink and the parts of a stretch read in
/// streams at once ([`FrameSink::parts`]), each writing its pages where they go as they come. A
/// page is written only by a frame newer than the one that wrote it last, so the file ends as
/// the log applied in order leaves it, whatever order the parts' writes took:
///
/// ```text
/// frames 100..=299 in two parts; page 7 is written by frames 150 and 260
///   part 2 writes page 7 from frame 260 first        → page 7 at 260
///   part 1 comes to frame 150: older than 260         → passed over
/// the file: page 7 as frame 260 left it, as in order
/// ```
struct Pages {
    file: fs::File,
    path: PathBuf,
    written: Mutex<Written>,
    /// What each part that ended counted, by its first frame, for [`FrameSink::follow`].
    ended: Mutex<BTreeMap<u64, Txns>>,
}

/// What [`Pages`] wrote, under its lock.
#[derive(Default)]
struct Written {
    /// By page number less one: the frame that wrote the page last, and the page's sum (16
    /// bytes a page while the mirror is built: 20 MB for a database of 5 GB).
    last: Vec<Option<(u64, u32)>>,
    /// Bytes written since the kernel was last told to start writing them to disk.
    unstarted: usize,
}

/// Frames written into [`Pages`], pages next to each other gathered into one write: the sink
/// itself, or one part of a stretch.
struct PageWriter {
    pages: Arc<Pages>,
    /// Pages not written yet, all consecutive, the first being `run_first`, with the frame and
    /// the sum of each.
    run: Vec<u8>,
    run_frames: Vec<(u64, u32)>,
    run_first: u32,
    txns: Txns,
}

/// Gathered pages are written once they fill this many bytes.
const RUN_BYTES: usize = 1 << 20;

/// The kernel is told to start writing the file to disk after this many bytes written
/// ([`crate::durable::start_writeback`]), so the disk works while the log is still read, and
/// the sync at the end waits only for the rest.
pub(super) const START_WRITEBACK: usize = 8 << 20;

impl PageWriter {
    fn create(path: &Path) -> Result<PageWriter> {
        let pages = Pages {
            file: fs::File::create(path).during("creating the mirror", path.display())?,
            path: path.to_path_buf(),
            written: Mutex::default(),
            ended: Mutex::default(),
        };
        Ok(PageWriter::on(Arc::new(pages), Txns::default()))
    }

    /// A writer of `pages` that counts its frames in `txns`.
    fn on(pages: Arc<Pages>, txns: Txns) -> PageWriter {
        PageWriter {
            pages,
            run: Vec::with_capacity(RUN_BYTES),
            run_frames: Vec::new(),
            run_first: 0,
            txns,
        }
    }

    /// Writes the gathered pages that are newer than what wrote them last.
    fn flush(&mut self) -> std::io::Result<()> {
        if self.run.is_empty() {
            return Ok(());
        }
        let Pages {
            file,
            path,
            written,
            ..
        } = &*self.pages;
        let ps = self.txns.page_size.unwrap_or(0);
        let mut written = written.lock().map_err(|_| panicked(path))?;
        let first_page = (self.run_first - 1) as usize;
        let n = self.run_frames.len();
        if written.last.len() < first_page + n {
            written.last.resize(first_page + n, None);
        }
        let newer = |written: &Written, i: usize| {
            written.last[first_page + i].is_none_or(|(last, _)| last < self.run_frames[i].0)
        };
        let mut i = 0;
        while i < n {
            if !newer(&written, i) {
                i += 1;
                continue;
            }
            let first = i;
            while i < n && newer(&written, i) {
                i += 1;
            }
            let at = (first_page + first) as u64 * ps as u64;
            file.write_all_at(&self.run[first * ps..i * ps], at)
                .map_err(writing(path))?;
            // Recorded once written: a page whose write failed is written when it comes again.
            for (j, &(frame, sum)) in self.run_frames.iter().enumerate().take(i).skip(first) {
                written.last[first_page + j] = Some((frame, sum));
            }
            written.unstarted += (i - first) * ps;
        }
        if written.unstarted >= START_WRITEBACK {
            written.unstarted = 0;
            crate::durable::start_writeback(file);
        }
        self.run.clear();
        self.run_frames.clear();
        Ok(())
    }

    /// The newest frame written into the file, by any writer: a build must not end before it
    /// ([`Mirror::build`]).
    fn newest(&self) -> std::io::Result<Option<u64>> {
        let written = (self.pages.written.lock()).map_err(|_| panicked(&self.pages.path))?;
        Ok(written.last.iter().flatten().map(|&(frame, _)| frame).max())
    }

    /// Checks a frame against the ones before it and gathers its page.
    fn take(&mut self, frame: &[u8], snapshot: bool) -> std::io::Result<()> {
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
        self.run_frames
            .push((h.frame_no, page_sums::sum(page_of(frame))));
        self.txns.count(&h);
        Ok(())
    }

    /// Writes what is gathered, cuts the file to the last commit's size, and writes the sums
    /// file, at frame `to` (unsynced, as the database: the caller syncs both).
    fn finish(mut self, to: u64, sums_path: &Path) -> Result<()> {
        let page_size = self.txns.page_size.unwrap_or(0);
        self.flush()?;
        let Pages {
            file,
            path,
            written,
            ..
        } = &*self.pages;
        file.set_len(u64::from(self.txns.size) * page_size as u64)
            .during("writing the mirror", path.display())?;
        let written = written
            .lock()
            .map_err(|_| Error::Unexpected(panicked(path).to_string()))?;
        let sums = written
            .last
            .iter()
            .enumerate()
            .take(self.txns.size as usize)
            .filter_map(|(i, w)| Some((u32::try_from(i + 1).ok()?, (*w)?.1)))
            .collect();
        let file = fs::File::create(sums_path)
            .during("creating the mirror's sums", sums_path.display())?;
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
        .during("writing the mirror's sums", sums_path.display())
    }
}

impl FrameSink for PageWriter {
    fn txns(&self) -> &Txns {
        &self.txns
    }

    fn push(&mut self, frame: &[u8], snapshot: bool) -> std::io::Result<()> {
        self.take(frame, snapshot)
    }

    /// Its pages stay written: they come again, the same or newer.
    fn rewind(&mut self) -> std::io::Result<()> {
        self.txns.rewind();
        Ok(())
    }

    /// Every part writes into the same file, each page only over an older frame's, wherever
    /// it comes in the log.
    fn parts(&self, _after_log: bool) -> Option<Arc<dyn Parts>> {
        if let Ok(mut ended) = self.pages.ended.lock() {
            ended.clear();
        }
        Some(Arc::new(Arc::clone(&self.pages)))
    }

    fn follow(&mut self, lo: u64) -> std::io::Result<()> {
        let part = (self.pages.ended.lock())
            .map_err(|_| panicked(&self.pages.path))?
            .remove(&lo)
            .ok_or_else(|| std::io::Error::other(format!("no part from frame {lo} ended")))?;
        self.txns.follow(&part, lo)
    }
}

/// A part of a stretch from frame `lo` on, written into the mirror's file as it comes.
struct PartWriter {
    lo: u64,
    out: PageWriter,
}

impl Parts for Arc<Pages> {
    fn part(&self, lo: u64) -> Box<dyn Part> {
        Box::new(PartWriter {
            lo,
            out: PageWriter::on(Arc::clone(self), Txns::starting_at(lo)),
        })
    }
}

impl Part for PartWriter {
    fn push(&mut self, frame: &[u8], snapshot: bool) -> std::io::Result<()> {
        self.out.take(frame, snapshot)
    }

    fn end(mut self: Box<Self>) -> std::io::Result<()> {
        self.out.flush()?;
        let txns = std::mem::take(&mut self.out.txns);
        (self.out.pages.ended.lock())
            .map_err(|_| panicked(&self.out.pages.path))?
            .insert(self.lo, txns);
        Ok(())
    }
}
