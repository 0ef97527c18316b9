//! Writing a ready spool into the mirror: its pages, the sums of them, and the new point,
//! synced on a thread while the pull goes on ([`Settling`]).

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::io::{BufReader, Read};
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::Arc;

use super::spool::{skip_head, spool_damaged, Ready, HEAD_BYTES};
use super::{Mirror, MirrorState};
use crate::durable;
use crate::page_sums::{self, Header as SumsHeader};
use crate::remote::replication::{page_of, FrameHeader, FRAME_HEADER};
use crate::shared_pages;
use crate::test_hook;
use crate::{Context, Error, Result};

impl Mirror {
    /// Writes a ready spool into the mirror, syncs it, records the new point and deletes the
    /// spool. Safe to repeat after a crash at any point.
    pub fn apply(&self, ready: Ready) -> Result<MirrorState> {
        self.settle(ready, false)?.wait()
    }

    /// [`Mirror::apply`], returning once the pages are readable: the file is synced, the new
    /// point recorded and the spool deleted on a thread meanwhile, so the sync overlaps the
    /// pull's own work. Until [`Settling::wait`] or [`Settling::given`] says it is done,
    /// `mirror.json` still names the old point and the spool is kept, so a crash before then is
    /// finished by [`Mirror::recover`] as after any interrupted apply.
    ///
    /// A mirror that shares its pages with the base ([`shared_pages`]) does not write the
    /// spool's pages into `mirror.db` at all: it reads them from the spool, in this process
    /// ([`shared_pages::read_in_spool`]), and marks them its own as if written. A pull whose
    /// base then takes the mirror's pages ([`Settling::given`]) moves them from the spool into
    /// the base: written once instead of twice, and freed with the spool, in one stretch,
    /// instead of page by page out of `mirror.db` (on a mount with `discard`, 0.3 s for the
    /// ~9,000 pages of a 1 % pull of 1M rows). Otherwise [`Settling::wait`] writes them into
    /// `mirror.db` as [`Mirror::apply`] does.
    ///
    /// ```text
    /// apply_settling   spool: pages 1, 7, 9   mirror.own: + 1, 7, 9   mirror.db: unwritten
    /// merge            the mirror's connections read 1, 7, 9 from the spool (checked by sums)
    /// give_base        base.db takes 1, 7, 9 (read from the spool)
    /// given            mirror.db: page 1 written; mirror.json: new point; mirror.own: page 1;
    ///                  the spool removed
    /// ```
    pub fn apply_settling(&self, ready: Ready) -> Result<Settling> {
        let in_spool =
            !ready.head.fresh && matches!(shared_pages::Own::load(&self.dir)?, Ok(Some(_)));
        self.settle(ready, in_spool)
    }

    /// [`Mirror::apply_settling`], the pages written into `mirror.db` unless `in_spool`.
    fn settle(&self, ready: Ready, in_spool: bool) -> Result<Settling> {
        let page_size = ready.head.page_size;
        // A spool that starts afresh rewrites the whole file: the mirror keeps every page.
        if ready.head.fresh {
            shared_pages::forget(&self.dir)?;
        }
        let old_len = fs::metadata(self.db_path())
            .map(|m| m.len() / page_size as u64)
            .unwrap_or(0);
        let db = fs::OpenOptions::new()
            .create(true)
            .truncate(ready.head.fresh)
            .read(true)
            .write(true)
            .open(self.db_path())
            .during("opening the mirror", self.db_path().display())?;
        let sums_file = fs::OpenOptions::new()
            .create(true)
            .truncate(ready.head.fresh)
            .read(true)
            .write(true)
            .open(self.sums_path())
            .during("opening the mirror's sums", self.sums_path().display())?;
        let reading = "reading the spool";
        let file = fs::File::open(&ready.path).during(reading, ready.path.display())?;
        let mut r = BufReader::with_capacity(1 << 20, file);
        skip_head(&mut r).during(reading, ready.path.display())?;
        // The sums carried forward, when they vouch for the mirror this spool continues.
        let carried = match ready.head.fresh {
            true => Some(0),
            false => SumsHeader::read(&sums_file)
                .during(
                    "reading the head of the mirror's sums",
                    self.sums_path().display(),
                )?
                .filter(|h| h.frame != page_sums::UNTRUSTED && h.page_size as usize == page_size)
                .map(|h| h.pages),
        };
        let mut sums = BTreeMap::new();
        let mut written = Vec::new();
        let mut at = HashMap::new();
        let mut frame = vec![0; FRAME_HEADER + page_size];
        // A test hook: sleeps after each page, so a test can kill a half-applied spool.
        let mut pause = test_hook::sleeper("TURSYNC_TEST_APPLY_PAUSE_MS");
        let mut crc = crc32fast::Hasher::new();
        loop {
            match r.read_exact(&mut frame) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => break,
                Err(e) => return Err(e).during(reading, ready.path.display()),
            }
            crc.update(&frame);
            let h = FrameHeader::parse(&frame)
                .filter(|h| h.page_no != 0)
                .ok_or_else(|| spool_damaged(&ready.path, "a frame of page 0"))?;
            if in_spool {
                let frames = written.len() as u64;
                let offset = HEAD_BYTES + frames * frame.len() as u64 + FRAME_HEADER as u64;
                at.insert(h.page_no, offset);
            } else {
                db.write_all_at(
                    page_of(&frame),
                    (u64::from(h.page_no) - 1) * page_size as u64,
                )
                .during("applying the spool to the mirror", self.db_path().display())?;
            }
            sums.insert(h.page_no, page_sums::sum(page_of(&frame)));
            written.push(h.page_no);
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
        db.set_len(u64::from(ready.size) * page_size as u64)
            .during("applying the spool to the mirror", self.db_path().display())?;
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
        )
        .during("writing the mirror's sums", self.sums_path().display())?;
        // The pages written, and those the file grew by, are the mirror's own from now on.
        shared_pages::mirror_wrote(
            &self.dir,
            written,
            u32::try_from(old_len).unwrap_or(u32::MAX),
            ready.size,
        )?;
        let state = MirrorState {
            log_id: ready.head.log_id.clone(),
            generation_id: ready.head.generation_id.clone(),
            frame_no: Some(ready.to),
            revision: ready.head.revision.clone(),
        };
        let spool = match in_spool {
            true => {
                // The pages are read where the frames were: the spool's file, already open.
                let pages = shared_pages::InSpool {
                    file: r.into_inner(),
                    at,
                    page_size,
                };
                let pages = shared_pages::read_in_spool(&self.dir, pages)?;
                Some((ready.path.clone(), pages))
            }
            false => None,
        };
        let (mirror, recorded) = (Mirror::new(self.dir.clone()), state.clone());
        let sync = std::thread::spawn(move || -> Result<()> {
            db.sync_all()
                .during("syncing the mirror", mirror.db_path().display())?;
            drop(db);
            sums_file
                .sync_all()
                .during("syncing the mirror's sums", mirror.sums_path().display())?;
            drop(sums_file);
            shared_pages::sync_own(&mirror.dir)?;
            if in_spool {
                // The spool holds pages no other file does until the base takes them.
                return Ok(());
            }
            mirror.save_state(&recorded)?;
            fs::remove_file(&ready.path)
                .during("removing the applied spool", ready.path.display())?;
            durable::sync_dir(&mirror.dir)
        });
        Ok(Settling {
            state,
            mirror: Mirror::new(self.dir.clone()),
            spool,
            sync: Some(sync),
        })
    }
}

/// Writes the sums of the pages written (`sums`, by page), cuts the file to `head.pages` and
/// writes its header. A page the database grew by past the `carried` size that no frame wrote
/// reads as zeros, and gets the sum of zeros. Pages next to each other are written at once.
pub(super) fn write_sums(
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

/// A mirror whose new pages are readable and being synced ([`Mirror::apply_settling`]).
#[must_use = "the mirror's new point is recorded only once `wait` or `given` returns"]
pub struct Settling {
    state: MirrorState,
    mirror: Mirror,
    /// The spool whose pages the mirror reads there instead of from `mirror.db`, and they.
    spool: Option<(PathBuf, Arc<shared_pages::InSpool>)>,
    sync: Option<std::thread::JoinHandle<Result<()>>>,
}

impl Settling {
    /// The mirror's state once settled.
    pub fn state(&self) -> &MirrorState {
        &self.state
    }

    /// Waits until the pages are synced and the new point recorded. Pages still in the spool
    /// are written into `mirror.db` first, as [`Mirror::apply`] writes them.
    pub fn wait(mut self) -> Result<MirrorState> {
        self.join()?;
        if self.spool.take().is_some() {
            shared_pages::not_in_spool(&self.mirror.dir);
            // A spool damaged since it was written is dropped with the mirror by the next
            // pull, as after a crash.
            if let Err(why) = self.mirror.recover()? {
                return Err(Error::Unexpected(why));
            }
        }
        Ok(self.state.clone())
    }

    /// [`Settling::wait`] once the base took every page of the mirror
    /// ([`shared_pages::give_base`]): the mirror then shares all of them but page 1 with the
    /// base ([`shared_pages::share`]). Pages still in the spool are not written into
    /// `mirror.db`, but page 1, which the mirror keeps: the spool is removed only once
    /// `mirror.own` no longer names them, so until then a crash applies it again.
    pub fn given(mut self) -> Result<MirrorState> {
        // A test hook: sleeps before each step, so a test can kill the pull between two.
        let mut pause = test_hook::sleeper("TURSYNC_TEST_GIVEN_PAUSE_MS");
        let mut step = || pause.as_mut().map_or((), |p| p());
        step();
        self.join()?;
        let dir = self.mirror.dir.clone();
        let Some((spool, pages)) = self.spool.take() else {
            shared_pages::share(&dir)?;
            return Ok(self.state.clone());
        };
        let mut page1 = vec![0; pages.page_size];
        let read = pages.read(1, &mut page1);
        shared_pages::not_in_spool(&dir);
        step();
        if let Some(read) = read {
            read.during("reading page 1 from", spool.display())?;
            let path = self.mirror.db_path();
            let db = fs::OpenOptions::new()
                .write(true)
                .open(&path)
                .during("opening the mirror", path.display())?;
            db.write_all_at(&page1, 0)
                .and_then(|()| db.sync_all())
                .during("writing page 1 of the mirror", path.display())?;
        }
        step();
        self.mirror.save_state(&self.state)?;
        step();
        shared_pages::share(&dir)?;
        step();
        fs::remove_file(&spool).during("removing the applied spool", spool.display())?;
        durable::sync_dir(&dir)?;
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
    /// [`Mirror::recover`], and so do pages still in it.
    fn drop(&mut self) {
        let _ = self.join();
        if self.spool.take().is_some() {
            shared_pages::not_in_spool(&self.mirror.dir);
        }
    }
}
