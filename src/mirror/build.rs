//! Building a mirror from nothing at init: frames written straight into `mirror.db`, with no
//! spool, in a state directory nobody uses yet.

use std::fs;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use super::apply::write_sums;
use super::log::{read_log, writing, FrameSink, Txns};
use super::{Mirror, MirrorError, MirrorState, Streams};
use crate::page_sums::{self, Header as SumsHeader};
use crate::remote::replication::{page_of, Hello, LogError, LogSource, FRAME_HEADER};
use crate::{Context, Result};

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

/// Frames written straight into a database file, pages next to each other gathered into one
/// write, with the sum of each page kept for the sums file.
struct PageWriter {
    file: fs::File,
    path: PathBuf,
    sums_path: PathBuf,
    /// The sum of each page written, by page number less one.
    sums: Vec<Option<u32>>,
    /// Pages not written yet, all consecutive, the first being `run_first`.
    run: Vec<u8>,
    run_first: u32,
    txns: Txns,
    /// Bytes written since the kernel was last told to start writing them to disk.
    unstarted: usize,
}

/// Gathered pages are written once they fill this many bytes.
const RUN_BYTES: usize = 1 << 20;

/// The kernel is told to start writing the file to disk after this many bytes written
/// ([`crate::durable::start_writeback`]), so the disk works while the log is still read, and
/// the sync at the end waits only for the rest.
pub(super) const START_WRITEBACK: usize = 8 << 20;

impl PageWriter {
    fn create(path: &Path, sums_path: PathBuf) -> Result<PageWriter> {
        Ok(PageWriter {
            file: fs::File::create(path).during("creating the mirror", path.display())?,
            path: path.to_path_buf(),
            sums_path,
            sums: Vec::new(),
            run: Vec::with_capacity(RUN_BYTES),
            run_first: 0,
            txns: Txns::default(),
            unstarted: 0,
        })
    }

    fn flush(&mut self) -> std::io::Result<()> {
        if !self.run.is_empty() {
            let at = (u64::from(self.run_first) - 1) * self.txns.page_size.unwrap_or(0) as u64;
            self.file
                .write_all_at(&self.run, at)
                .map_err(writing(&self.path))?;
            self.unstarted += self.run.len();
            self.run.clear();
        }
        if self.unstarted >= START_WRITEBACK {
            self.unstarted = 0;
            crate::durable::start_writeback(&self.file);
        }
        Ok(())
    }

    /// Writes what is gathered, cuts the file to the last commit's size, and writes the sums
    /// file, at frame `to` (unsynced, as the database: the caller syncs both).
    fn finish(mut self, to: u64) -> Result<()> {
        let page_size = self.txns.page_size.unwrap_or(0);
        self.flush()?;
        self.file
            .set_len(u64::from(self.txns.size) * page_size as u64)
            .during("writing the mirror", self.path.display())?;
        let sums = self
            .sums
            .iter()
            .enumerate()
            .take(self.txns.size as usize)
            .filter_map(|(i, s)| Some((u32::try_from(i + 1).ok()?, (*s)?)))
            .collect();
        let file = fs::File::create(&self.sums_path)
            .during("creating the mirror's sums", self.sums_path.display())?;
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
        .during("writing the mirror's sums", self.sums_path.display())
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
