//! Turso Sync's page pull (`/pull-updates`, [`crate::remote::turso_sync`]) as a source of
//! frames for the mirror ([`crate::mirror`]), so a pull from a Turso Sync server takes the
//! replication log's path: spooled aside, applied, recovered after a crash, summed, and read
//! from the pages it wrote, the same code for both.
//!
//! One answer is one transaction: its pages become frames numbered on from the mirror's last,
//! the last of them committing at the database size the answer's header gives. A mirror with
//! no frame yet is bootstrapped (every page asked for), and must get every page of that size;
//! so must an answer that replaces the client's copy (`ReplaceBase`). The revision an answer
//! reaches is recorded with the mirror (the spool's head, then `mirror.json`), and the next
//! pull asks for the pages changed since.
//!
//! A revision is the server's, opaque to the protocol. tursodb's is its WAL's frame count,
//! which starts again from 0 when the WAL is checkpointed: a revision the server no longer
//! knows may name another history there, and an answer from it would leave pages out
//! silently. So before an answer that moves the revision on is taken, the pages of the last
//! few frames up to the mirror's revision are asked for again (the server's pages at that same
//! revision) and compared with the mirror's bytes: a difference, an error for that revision,
//! or another revision in reply is [`TursoSyncError::Reset`], after which the caller drops the
//! mirror and the next pull bootstraps. An answer with no page at the mirror's revision costs
//! one request; it cannot tell a history that reached the very same revision again, which the
//! next change then shows. Revisions that are not frame counts (not decimal) are not compared:
//! there, as for Turso's own sync engine, the server says `ReplaceBase` when the client's copy
//! cannot be carried forward.

use std::path::Path;

use crate::mirror::{Mirror, MirrorState};
use crate::remote::replication::{Hello, LogError, LogSource, FRAME_HEADER};
use crate::remote::turso_sync::{ApplyMode, TursoSync, TursoSyncError};
use crate::remote::{Remote, RemoteError};

/// The log id of a mirror of Turso Sync's pages. There is one history per server: a reset
/// drops the mirror (the next pull bootstraps) rather than naming a new one.
pub const LOG_ID: &str = "turso-sync";

/// How many frames back from the mirror's revision the pages compared with it reach: each is
/// a page or so, and any of them differs after a reset.
const WITNESS_FRAMES: u64 = 8;

/// Turso Sync's `/pull-updates` on a [`Remote`], feeding the mirror in state directory `dir`.
pub struct TursoPages<'r> {
    remote: &'r Remote,
    mirror: Mirror,
    /// The revision the last answer reached: the source is caught up once one came (an answer
    /// holds every page up to the server's newest revision).
    reached: Option<String>,
}

impl<'r> TursoPages<'r> {
    pub fn new(remote: &'r Remote, mirror: Mirror) -> TursoPages<'r> {
        TursoPages {
            remote,
            mirror,
            reached: None,
        }
    }

    /// The revision a carried-forward mirror is at, before the frame `next`.
    fn since(&self, next: u64) -> Result<String, TursoSyncError> {
        let reset = |why: String| TursoSyncError::Reset {
            revision: "?".into(),
            why,
        };
        match self.mirror.state() {
            Ok(Some(MirrorState {
                log_id,
                frame_no: Some(frame),
                revision: Some(revision),
                ..
            })) if log_id == LOG_ID && frame + 1 == next => Ok(revision),
            Ok(_) => Err(reset(format!(
                "the mirror records no revision to go on from at frame {next}"
            ))),
            Err(e) => Err(reset(e.to_string())),
        }
    }

    /// Asks again for the pages of the last few frames up to `revision` and compares them with
    /// the mirror, which is at that revision: `Reset` unless the server gives the same.
    fn witness(&self, revision: &str) -> Result<(), TursoSyncError> {
        let Ok(frames) = revision.parse::<u64>() else {
            return Ok(());
        };
        let from = frames.saturating_sub(WITNESS_FRAMES);
        let from = (from > 0).then(|| from.to_string());
        let path = self.mirror.db_path();
        let dir = path.parent().unwrap_or(Path::new("."));
        // From whichever file holds each page: the mirror shares pages with the base.
        let pages = crate::shared_pages::MirrorPages::open(dir)
            .map_err(|e| TursoSyncError::Sink(std::io::Error::other(e)))?;
        let sync = TursoSync::new(self.remote);
        let mut differs = None;
        let mut ours = Vec::new();
        let answer = self.remote.retrying(|| {
            differs = None;
            sync.pull(from.as_deref(), Some(revision), &mut |id, page| {
                ours.resize(page.len(), 0);
                let same = u32::try_from(id + 1).is_ok_and(|n| pages.read(n, &mut ours).is_ok())
                    && ours == page;
                if !same {
                    differs.get_or_insert(id + 1);
                }
                Ok(())
            })
        });
        let why = match answer {
            Ok(head) if head.revision != revision => {
                format!(
                    "asked for it, the server answered revision {}",
                    head.revision
                )
            }
            Ok(_) => match differs {
                None => return Ok(()),
                Some(page) => format!("page {page} at that revision is not the mirror's"),
            },
            Err(TursoSyncError::Remote(RemoteError::Http { status, message })) => {
                format!("asked for it, the server answered HTTP {status}: {message}")
            }
            Err(e) => return Err(e),
        };
        Err(TursoSyncError::Reset {
            revision: revision.to_owned(),
            why,
        })
    }
}

/// Writes the frame header the mirror reads ([`crate::remote::replication::FrameHeader`]) in
/// front of a page held in `frame`.
fn set_header(frame: &mut [u8], frame_no: u64, page_no: u32, size_after: u32) {
    frame[..8].copy_from_slice(&frame_no.to_le_bytes());
    frame[16..20].copy_from_slice(&page_no.to_le_bytes());
    frame[20..24].copy_from_slice(&size_after.to_le_bytes());
}

impl LogSource for TursoPages<'_> {
    /// Nothing to ask: Turso Sync has no session, and the revision to go on from is the
    /// mirror's.
    fn hello(&mut self) -> Result<Hello, LogError> {
        Ok(Hello {
            log_id: LOG_ID.to_owned(),
            generation_id: String::new(),
            replication_index: None,
        })
    }

    fn frames(
        &mut self,
        next: u64,
        snapshot: bool,
        each: &mut dyn FnMut(&[u8]) -> std::io::Result<()>,
    ) -> Result<(), LogError> {
        if self.reached.is_some() {
            return Ok(());
        }
        if snapshot {
            return Err(LogError::Protocol("Turso Sync serves no snapshot".into()));
        }
        let since = match next {
            0 => None,
            next => Some(self.since(next)?),
        };
        // Each page is held back until the next one comes, so the last can commit.
        let mut held: Vec<u8> = Vec::new();
        let mut frame_no = next;
        let mut seen: Vec<bool> = Vec::new();
        let mut got = 0u64;
        let sync = TursoSync::new(self.remote);
        let head = sync.pull(since.as_deref(), None, &mut |id, page| {
            let page_no = u32::try_from(id + 1).map_err(|_| {
                std::io::Error::new(std::io::ErrorKind::InvalidData, "a page id past 2^32")
            })?;
            let i = id as usize;
            if seen.len() <= i {
                seen.resize(i + 1, false);
            }
            if !std::mem::replace(&mut seen[i], true) {
                got += 1;
            }
            if !held.is_empty() {
                each(&held)?;
                frame_no += 1;
            }
            held.clear();
            held.resize(FRAME_HEADER, 0);
            held.extend_from_slice(page);
            set_header(&mut held, frame_no, page_no, 0);
            Ok(())
        })?;
        if since.is_none() || head.apply_mode == ApplyMode::ReplaceBase {
            if got != head.db_size {
                return Err(TursoSyncError::Incomplete {
                    got,
                    size: head.db_size,
                }
                .into());
            }
        } else if let Some(since) = since.as_deref().filter(|s| *s != head.revision) {
            self.witness(since)?;
        }
        if !held.is_empty() {
            let size = u32::try_from(head.db_size)
                .ok()
                .filter(|&s| s > 0)
                .ok_or_else(|| {
                    LogError::Protocol(format!(
                        "pages of a database of {} pages from /pull-updates",
                        head.db_size
                    ))
                })?;
            let page_no = u32::from_le_bytes([held[16], held[17], held[18], held[19]]);
            set_header(&mut held, frame_no, page_no, size);
            each(&held)?;
        }
        self.reached = Some(head.revision);
        Ok(())
    }

    fn revision(&self) -> Option<String> {
        self.reached.clone()
    }

    /// The mirror's frames are numbered here, and tursodb's answers carry no replication
    /// index: a spot check could never conclude, so none is asked for.
    fn frames_are_server_index(&self) -> bool {
        false
    }

    fn retrying(
        &mut self,
        attempt: &mut dyn FnMut(&mut dyn LogSource) -> Result<(), LogError>,
    ) -> Result<(), LogError> {
        let remote = self.remote;
        remote.retrying(|| attempt(self))
    }
}
