//! The mirror's files as the log and the checking VFS make them.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::FileExt;

use super::apply::write_sums;
use super::log::{split, STREAM_FRAMES};
use super::*;
use crate::remote::replication::{FrameHeader, Hello, LogError, LogSource, FRAME_HEADER};

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
    /// Serves streams (and so forks); with `streams_break` set, a stream starting at that
    /// frame or past it breaks off after a few frames.
    streams: bool,
    streams_break: Option<u64>,
    /// The stream starting at this frame, and only it, breaks off after a few frames.
    one_stream_breaks: Option<u64>,
    /// Streams send nothing, as through a proxy holding them ([`LogError::Silent`]).
    streams_silent: bool,
    /// Streams asked for, by this source and its forks.
    streams_asked: std::sync::Arc<std::sync::atomic::AtomicU64>,
    /// Frames served in batches so far.
    batched: u64,
    /// Batches serve no frame past this one, as a server behind the one that sent the streams.
    batches_end: Option<u64>,
    /// Stretches of the log compacted into snapshots, as sqld serves them: each the newest
    /// copy of every page it wrote, newest first, the last saying the size; none holds a frame
    /// past them ("snapshot not found"); a batch of a frame in one is told `NEED_SNAPSHOT`
    /// and a stream of it sends nothing. Empty: sqld with no snapshot directory.
    compacted: Vec<(u64, u64)>,
    /// sqld compacts the log while the clone goes on: snapshots and batches see `compacted`
    /// only once streams were asked for, and the streams, under way already, serve it all.
    compacted_meanwhile: bool,
    /// Snapshots served, by this source and its forks. The first one waits, after its first
    /// frame, up to two seconds for another snapshot or a stream to be asked for, and says
    /// whether one was in `overlapped`.
    snapshots_asked: std::sync::Arc<std::sync::atomic::AtomicU64>,
    overlapped: std::sync::Arc<std::sync::atomic::AtomicBool>,
    /// Given the first frames of a stretch's parts: each stream waits for the streams of the
    /// parts after its own to end first, so the parts end last to first. The first frames of
    /// the streams, in the order they ended.
    reversed: Option<Vec<u64>>,
    /// Given the first frames of a stretch's parts: each stream waits for the streams of the
    /// parts before its own to end first, so the parts end first to last.
    forward: Option<Vec<u64>>,
    /// The stream starting at this frame serves each frame cut to a page of this many bytes,
    /// as a server of another page size would.
    stream_page: Option<(u64, usize)>,
    ended: std::sync::Arc<(std::sync::Mutex<Vec<u64>>, std::sync::Condvar)>,
    /// A snapshot asked for from that frame on breaks off after a few frames, once (by this
    /// source and its forks), as a dropped connection does.
    snapshots_break: Option<u64>,
    /// The snapshot asked for from this very frame answers a gRPC status after a few frames,
    /// once (by this source and its forks): an answer that is not asked again.
    snapshot_refused: Option<u64>,
    /// Whether a snapshot broke off or was refused so (the one time either does).
    snapshot_broke: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl FakeLog {
    fn new(frames: Vec<Vec<u8>>, break_after: Option<usize>) -> FakeLog {
        FakeLog {
            frames,
            break_after,
            streams: false,
            streams_break: None,
            one_stream_breaks: None,
            streams_silent: false,
            streams_asked: Default::default(),
            batched: 0,
            batches_end: None,
            compacted: Vec::new(),
            compacted_meanwhile: false,
            snapshots_asked: Default::default(),
            overlapped: Default::default(),
            reversed: None,
            forward: None,
            stream_page: None,
            ended: Default::default(),
            snapshots_break: None,
            snapshot_refused: None,
            snapshot_broke: Default::default(),
        }
    }

    fn compacted_at(&self, frame: u64) -> Option<(u64, u64)> {
        let streamed = self.streams_asked.load(std::sync::atomic::Ordering::SeqCst) > 0;
        if self.compacted_meanwhile && !streamed {
            return None;
        }
        self.compacted
            .iter()
            .copied()
            .find(|&(a, b)| (a..=b).contains(&frame))
    }

    /// The snapshot holding frame `from`, as sqld sends it from that frame on.
    fn snapshot(
        &self,
        from: u64,
        each: &mut dyn FnMut(&[u8]) -> std::io::Result<()>,
    ) -> Result<(), LogError> {
        use std::sync::atomic::Ordering::SeqCst;
        let Some((_, end)) = self.compacted_at(from) else {
            return Err(LogError::NoSnapshot(RemoteError::Dropped {
                url: String::new(),
                reason: "snapshot not found".into(),
            }));
        };
        let first = self.snapshots_asked.fetch_add(1, SeqCst) == 0;
        let mut pages = std::collections::HashSet::new();
        let range = usize::try_from(from).unwrap()..=usize::try_from(end).unwrap();
        let mut newest: Vec<Vec<u8>> = self.frames[range]
            .iter()
            .rev()
            .filter(|f| pages.insert(FrameHeader::parse(f).unwrap().page_no))
            .cloned()
            .collect();
        let last = newest.len() - 1;
        let breaks = self.snapshots_break.is_some_and(|at| from >= at)
            && !self.snapshot_broke.swap(true, SeqCst);
        let refused =
            self.snapshot_refused == Some(from) && !self.snapshot_broke.swap(true, SeqCst);
        for (i, f) in newest.iter_mut().enumerate() {
            if refused && i == 4 {
                return Err(LogError::Status {
                    code: 13,
                    message: "test".into(),
                });
            }
            if breaks && i == 4 {
                return Err(LogError::Remote(RemoteError::Dropped {
                    url: String::new(),
                    reason: "test".into(),
                }));
            }
            f[20..24].copy_from_slice(&(if i == last { 60u32 } else { 0 }).to_le_bytes());
            each(f)?;
            if first && i == 0 {
                let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
                let other = || {
                    self.snapshots_asked.load(SeqCst) >= 2 || self.streams_asked.load(SeqCst) > 0
                };
                while !other() && std::time::Instant::now() < deadline {
                    std::thread::sleep(std::time::Duration::from_millis(1));
                }
                self.overlapped.store(other(), SeqCst);
            }
        }
        Ok(())
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
        snapshot: bool,
        each: &mut dyn FnMut(&[u8]) -> std::io::Result<()>,
    ) -> Result<(), LogError> {
        if snapshot && !self.compacted.is_empty() {
            return self.snapshot(next_offset, each);
        }
        if snapshot {
            // Nothing compacted: sqld's answer when it keeps no snapshot.
            return Err(LogError::Status {
                code: 13,
                message: "No such file or directory (os error 2)".into(),
            });
        }
        if self.compacted_at(next_offset).is_some() {
            return Err(LogError::NeedSnapshot);
        }
        let end = self
            .batches_end
            .map_or(self.frames.len(), |e| usize::try_from(e).unwrap() + 1);
        let from = usize::try_from(next_offset).unwrap().min(end);
        for (i, f) in self.frames[from..end].iter().enumerate() {
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
        if self.streams_silent || (self.compacted_at(from).is_some() && !self.compacted_meanwhile) {
            return Err(LogError::Silent(std::time::Duration::from_millis(500)));
        }
        let (ended, turn) = &*self.ended;
        // The streams of the parts after this one (`reversed`) or before it (`forward`) end
        // first: as many as there are of them.
        let first = [
            (&self.reversed, "after", std::cmp::Ordering::Greater),
            (&self.forward, "before", std::cmp::Ordering::Less),
        ];
        for (starts, which, side) in first {
            let Some(starts) = starts else { continue };
            let others = starts.iter().filter(|lo| lo.cmp(&&from) == side).count();
            let (ended, _) = turn
                .wait_timeout_while(
                    ended.lock().unwrap(),
                    std::time::Duration::from_secs(5),
                    |ended| ended.len() < others,
                )
                .unwrap();
            assert_eq!(
                ended.len(),
                others,
                "the streams {which} frame {from} did not end"
            );
        }
        let page = self
            .stream_page
            .filter(|&(at, _)| at == from)
            .map_or(usize::MAX, |(_, page)| FRAME_HEADER + page);
        let range = usize::try_from(from).unwrap()..=usize::try_from(upto).unwrap();
        let streamed = (|| {
            for (i, f) in self.frames[range].iter().enumerate() {
                let breaks = self.streams_break.is_some_and(|at| from >= at)
                    || self.one_stream_breaks == Some(from);
                if breaks && i == 10 {
                    return Err(LogError::Protocol("test".into()));
                }
                each(&f[..page.min(f.len())])?;
            }
            Ok(())
        })();
        ended.lock().unwrap().push(from);
        turn.notify_all();
        streamed
    }

    fn fork(&self) -> Option<Box<dyn LogSource + Send + '_>> {
        self.streams.then(|| {
            Box::new(FakeLog {
                frames: self.frames.clone(),
                break_after: None,
                streams_asked: self.streams_asked.clone(),
                compacted: self.compacted.clone(),
                snapshots_asked: self.snapshots_asked.clone(),
                overlapped: self.overlapped.clone(),
                reversed: self.reversed.clone(),
                forward: self.forward.clone(),
                ended: self.ended.clone(),
                snapshot_broke: self.snapshot_broke.clone(),
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
        open_immutable(&m.db_path())
            .and_then(|c| Ok(c.query_row("SELECT count(*) FROM a", [], |r| r.get::<_, i64>(0))?))
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
    let (_dir, m, bytes) =
        sealed("CREATE TABLE a(x); INSERT INTO a VALUES (printf('%.*c', 8500, 'a') || 'needle');");
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
        let rc =
            rusqlite::ffi::sqlite3_load_extension(db, name.as_ptr(), std::ptr::null(), &mut err);
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
    let got = Mirror::new(dir.path().to_path_buf()).build(&mut log, &hello(), &mut Streams::Try);
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
    sized_log(n, |_| 60)
}

/// A log of `n` frames in transactions of 1 to 40 frames, frame `i` over a database of
/// `size(i)` pages, writing a page within it; a change of size ends a transaction.
fn sized_log(n: u64, size: impl Fn(u64) -> u32) -> Vec<Vec<u8>> {
    let mut x = 7u64;
    (0..n)
        .map(|i| {
            x = x
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            let commit = (x >> 59) < 1 || i + 1 == n || size(i + 1) != size(i);
            let page = 1 + ((x >> 33) % u64::from(size(i))) as u32;
            frame(i, page, if commit { size(i) } else { 0 })
        })
        .collect()
}

/// The `Hello` that names the end of a long log of `n` frames, and the mirror file its
/// batches make (no streams): what every way of reading that log must make.
fn built_in_batches(n: u64) -> (Hello, Vec<u8>) {
    let at = Hello {
        replication_index: Some(n - 1),
        ..hello()
    };
    let reference = tempfile::tempdir().unwrap();
    let r = Mirror::new(reference.path().to_path_buf());
    r.build(&mut FakeLog::new(long_log(n), None), &at, &mut Streams::Try)
        .unwrap();
    (at, fs::read(r.db_path()).unwrap())
}

/// A long log read in several streams at once makes the file batches make, for a mirror
/// built or a spool applied. A stream that breaks off leaves the rest to the batches, from the
/// last commit before its part: the parts before it still count, and only the rest is read
/// again.
#[test]
fn a_long_log_read_in_several_streams_is_the_log_read_in_batches() {
    let n = STREAM_FRAMES * 2 + 77;
    let (_, want) = built_in_batches(n);
    assert_eq!(want.len(), 60 * PAGE);
    let frames = long_log(n);
    // What the batches read when the streams from frame `from` on break off.
    let batched_from = |from: u64| {
        let last_commit = frames[..usize::try_from(from).unwrap()]
            .iter()
            .rposition(|f| FrameHeader::parse(f).unwrap().size_after != 0);
        n - last_commit.map_or(0, |c| c as u64 + 1)
    };
    let parts = split(0, n - 1, LOG_STREAMS);
    assert_eq!(parts.len(), 4);
    for (streams_break, batched) in [
        (None, 0),
        // Every stream but the first.
        (Some(1), batched_from(parts[1].0)),
        // The last one only: the two before it are read from their files.
        (Some(parts[3].0), batched_from(parts[3].0)),
    ] {
        let source = built_and_applied(n, &format!("{streams_break:?}"), || FakeLog {
            streams: true,
            streams_break,
            ..FakeLog::new(long_log(n), None)
        });
        assert_eq!(source.batched, batched, "{streams_break:?}");
        assert_eq!(
            source
                .streams_asked
                .load(std::sync::atomic::Ordering::SeqCst),
            LOG_STREAMS
        );
    }
}

/// Parts of a stretch that end last to first make the file batches make: a mirror being
/// built takes each part's pages where they go as they come, and a page one part wrote is
/// never written over by an older frame of a part before it.
#[test]
fn parts_that_end_last_to_first_make_the_file_batches_make() {
    let n = STREAM_FRAMES * 2 + 77;
    let starts: Vec<u64> = split(0, n - 1, LOG_STREAMS).iter().map(|p| p.0).collect();
    // Pages the long log writes in more than one part: the ones an older frame could spoil.
    let parts_of = |page: u32| {
        let mut parts: Vec<usize> = long_log(n)
            .iter()
            .map(|f| FrameHeader::parse(f).unwrap())
            .filter(|h| h.page_no == page)
            .map(|h| starts.iter().filter(|&&lo| lo <= h.frame_no).count())
            .collect();
        parts.dedup();
        parts.len()
    };
    assert!((1..=60).filter(|&p| parts_of(p) > 1).count() > 50);
    let source = built_and_applied(n, "parts ending last to first", || FakeLog {
        streams: true,
        reversed: Some(starts.clone()),
        ..FakeLog::new(long_log(n), None)
    });
    assert_eq!(source.batched, 0);
    let mut last_to_first = starts.clone();
    last_to_first.reverse();
    assert_eq!(*source.ended.0.lock().unwrap(), last_to_first);
}

/// The frames of the long log of `n` frames that commit.
fn commits(n: u64) -> Vec<u64> {
    long_log(n)
        .iter()
        .map(|f| FrameHeader::parse(f).unwrap())
        .filter(|h| h.size_after != 0)
        .map(|h| h.frame_no)
        .collect()
}

/// The long log of `n` frames as `log` serves it, read by a mirror built and by a spool
/// applied: both must make the file batches make of the same log served plainly (`what` names
/// the case). The source the build read, for what it counted.
fn built_and_applied(n: u64, what: &str, log: impl Fn() -> FakeLog) -> FakeLog {
    let (at, want) = built_in_batches(n);
    let mut source = log();
    let (_built, b, to) = built_from(&mut source, &at);
    assert_eq!(to, n - 1, "{what}");
    assert!(fs::read(b.db_path()).unwrap() == want, "built, {what}");
    assert_eq!(sums_that_differ(&b), Vec::<u32>::new(), "built, {what}");
    let applied = tempfile::tempdir().unwrap();
    let a = Mirror::new(applied.path().to_path_buf());
    let mut fetched = log();
    let ready = a
        .fetch(&mut fetched, &at, &mut Streams::Try)
        .unwrap()
        .unwrap();
    a.apply(ready).unwrap();
    assert!(fs::read(a.db_path()).unwrap() == want, "applied, {what}");
    // The spool takes what the streams brought as the build does: nothing read again.
    assert_eq!(
        fetched.batched, source.batched,
        "batches of the spool, {what}"
    );
    source
}

/// The pages of `m` whose sum in `mirror.sums` is not the page's on disk (or that the sums do
/// not count); the header must say the file's size.
fn sums_that_differ(m: &Mirror) -> Vec<u32> {
    let db = fs::read(m.db_path()).unwrap();
    let sums = fs::read(m.sums_path()).unwrap();
    let head = SumsHeader::read(&fs::File::open(m.sums_path()).unwrap())
        .unwrap()
        .unwrap();
    let size = head.page_size as usize;
    assert_eq!(db.len(), head.pages as usize * size);
    assert_eq!(sums.len() as u64, page_sums::len_for(head.pages));
    (1..=head.pages)
        .filter(|&p| {
            let at = page_sums::offset(p) as usize;
            let page = &db[(p as usize - 1) * size..p as usize * size];
            sums[at..at + 4] != page_sums::sum(page).to_le_bytes()
        })
        .collect()
}

/// [`built_and_applied`] of the long log compacted into the snapshots `compacted`, with streams.
fn built_and_applied_compacted(n: u64, compacted: &[(u64, u64)]) -> FakeLog {
    built_and_applied(n, "compacted", || FakeLog {
        streams: true,
        compacted: compacted.to_vec(),
        ..FakeLog::new(long_log(n), None)
    })
}

/// A log compacted into five snapshots, then a long stretch: the snapshot after each is asked
/// for while the one before still comes (on a second reader), the stretch is read in streams,
/// and the file is the one batches make of the same log never compacted, built or applied.
#[test]
fn the_next_snapshot_is_asked_for_while_one_comes() {
    let n = STREAM_FRAMES * 2 + 77;
    let commits = commits(n);
    // Each snapshot ends at the last commit before the next 380 frames; the log after the last
    // is past 2048 frames.
    let mut compacted = Vec::new();
    for k in 1..=5u64 {
        let start = compacted.last().map_or(0, |&(_, b): &(u64, u64)| b + 1);
        let end = *commits.iter().filter(|&&c| c < k * 380).max().unwrap();
        assert!(end >= start, "no commit in snapshot {k}");
        compacted.push((start, end));
    }
    assert!(n > compacted[4].1 + 1 + STREAM_FRAMES);
    let source = built_and_applied_compacted(n, &compacted);
    let overlapped = source.overlapped.load(std::sync::atomic::Ordering::SeqCst);
    assert!(
        overlapped,
        "the second snapshot was asked for only after the first"
    );
    // Five snapshots, each asked for once; the log after them in streams.
    assert_eq!(
        source
            .snapshots_asked
            .load(std::sync::atomic::Ordering::SeqCst),
        5
    );
    assert_eq!(source.batched, 0);
}

/// A log compacted into one snapshot, then a long stretch: the stretch is read in streams while
/// the snapshot still comes, and the file is the one batches make of the same log never
/// compacted, built or applied.
#[test]
fn the_long_log_after_a_snapshot_is_streamed_while_it_comes() {
    let n = STREAM_FRAMES * 2 + 77;
    let end = *commits(n).iter().filter(|&&c| c < 1500).max().unwrap();
    assert!(n > end + 1 + STREAM_FRAMES);
    let source = built_and_applied_compacted(n, &[(0, end)]);
    let overlapped = source.overlapped.load(std::sync::atomic::Ordering::SeqCst);
    assert!(overlapped, "the log was streamed only after the snapshot");
    assert_eq!(
        source
            .streams_asked
            .load(std::sync::atomic::Ordering::SeqCst),
        LOG_STREAMS
    );
    assert_eq!(source.batched, 0);
}

/// `split`'s parts cover the stretch in order, with no gap and no overlap.
#[test]
fn a_stretch_is_split_into_consecutive_parts() {
    assert_eq!(
        split(100, 109, 4),
        [(100, 101), (102, 104), (105, 106), (107, 109)]
    );
    assert_eq!(split(5, 6, 4), [(5, 5), (6, 6)]);
    for (from, upto) in [(0, 2047), (7, 5000), (3, 3)] {
        let parts = split(from, upto, LOG_STREAMS);
        assert_eq!(parts[0].0, from);
        assert_eq!(parts.last().unwrap().1, upto);
        assert!(parts
            .windows(2)
            .all(|w| w[1].0 == w[0].1 + 1 && w[0].0 <= w[0].1));
    }
}

/// Streams that send nothing leave the whole log to the batches, which make the same file,
/// and turn streams off; once off, none is asked for.
#[test]
fn silent_streams_are_left_to_the_batches_and_turned_off() {
    let n = STREAM_FRAMES * 2 + 77;
    let (at, want) = built_in_batches(n);
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
                assert_eq!(asked, LOG_STREAMS);
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

/// A file error names the step and the file: a state file another program replaced by a
/// directory, and a copy into a directory that is not there.
#[test]
fn file_errors_name_the_step_and_the_path() {
    let dir = tempfile::tempdir().unwrap();
    let m = Mirror::new(dir.path().to_path_buf());
    let state = dir.path().join(STATE);
    fs::create_dir(&state).unwrap();
    let e = m.state().unwrap_err().to_string();
    assert!(
        e.starts_with(&format!("reading the mirror's state {}: ", state.display())),
        "{e}"
    );
    let dst = dir.path().join("gone").join("copy.db");
    let e = copy_out(&m.db_path(), &dst).unwrap_err().to_string();
    assert!(
        e.starts_with(&format!("copying the mirror to {}: ", dst.display())),
        "{e}"
    );
}

/// A mirror built in a new directory from `source` up to `at`, and the frame it is at.
fn built_from(source: &mut FakeLog, at: &Hello) -> (tempfile::TempDir, Mirror, u64) {
    let dir = tempfile::tempdir().unwrap();
    let m = Mirror::new(dir.path().to_path_buf());
    let to = m.build(source, at, &mut Streams::Try).unwrap().unwrap().to;
    (dir, m, to)
}

/// The streams of a stretch came, all but the second whole, and the batches that read it again
/// from the last commit before it end early (a server behind the one that sent the streams):
/// the later parts' pages, newer than anything the batches read, are in the file. The build
/// fails rather than give a mirror at the batches' last commit holding them, as a log that
/// cannot be read as one point now (`init` clones over SQL, and the next pull reads the log
/// again).
#[test]
fn a_build_whose_parts_outrun_its_last_commit_fails() {
    let n = STREAM_FRAMES * 2 + 77;
    let starts: Vec<u64> = split(0, n - 1, LOG_STREAMS).iter().map(|p| p.0).collect();
    let at = Hello {
        replication_index: Some(n - 1),
        ..hello()
    };
    // The batches end at the last commit before the third part, or inside a transaction: a
    // mirror at that commit would read whole, with the later parts' pages in it.
    let at_commit = *commits(n).iter().filter(|&&c| c < starts[2]).max().unwrap();
    for batches_end in [at_commit, starts[2] - 1] {
        let mut source = FakeLog {
            streams: true,
            one_stream_breaks: Some(starts[1]),
            batches_end: Some(batches_end),
            ..FakeLog::new(long_log(n), None)
        };
        let dir = tempfile::tempdir().unwrap();
        let m = Mirror::new(dir.path().to_path_buf());
        match m.build(&mut source, &at, &mut Streams::Try) {
            Err(MirrorError::Log(LogError::Uneven(frame))) => assert!(frame >= starts[2]),
            other => panic!("batches to {batches_end}: built {other:?}"),
        }
        assert!(source.batched > 0);
    }
}

/// The file the first `to + 1` frames of the long log of `n` frames make, read in batches:
/// the log applied in order up to frame `to`.
fn applied_up_to(n: u64, to: u64) -> Vec<u8> {
    let dir = tempfile::tempdir().unwrap();
    let m = Mirror::new(dir.path().to_path_buf());
    let mut frames = long_log(n);
    frames.truncate(usize::try_from(to).unwrap() + 1);
    let at = Hello {
        replication_index: Some(to),
        ..hello()
    };
    let built = m.build(&mut FakeLog::new(frames, None), &at, &mut Streams::Try);
    assert_eq!(built.unwrap().unwrap().to, to);
    fs::read(m.db_path()).unwrap()
}

/// `Hello` names the last frame of the first snapshot, and sqld compacted the log past it into a
/// second snapshot meanwhile (writes went on during the clone). Nothing past `Hello` is asked
/// for ahead: a second snapshot read into the mirror in place and then not counted (it broke
/// off, or the first was refused half-way and read again) would have been left there, pages
/// newer than the frame the mirror says it is at, each matching its sum. With `Hello` past the
/// second snapshot, it is asked for while the first comes and goes in place, and the same
/// breaks are healed by reading it again in turn. Every way, the mirror is the log applied in
/// order up to the frame it says it is at, and every page matches its sum.
#[test]
fn a_next_snapshot_past_hello_read_in_place_counts_only_with_the_one_before() {
    let n = STREAM_FRAMES * 2 + 77;
    let commits = commits(n);
    let first = *commits.iter().filter(|&&c| c < 2500).max().unwrap();
    let second = *commits.iter().filter(|&&c| c < 3500).max().unwrap();
    assert!(first >= STREAM_FRAMES && second > first + 100);
    let mut wrong = Vec::new();
    // What breaks, where Hello is, and whether the second snapshot is then asked for while the
    // first comes and a snapshot breaks off.
    for (what, snapshots_break, snapshot_refused, hello_at, ahead, broke) in [
        ("whole", None, None, first, false, false),
        // Never asked for: it does not break.
        (
            "the second dropped",
            Some(first + 1),
            None,
            first,
            false,
            false,
        ),
        ("the first refused", None, Some(0), first, false, true),
        // Hello past the second snapshot: it is asked for again in turn.
        (
            "the second dropped, Hello past it",
            Some(first + 1),
            None,
            second,
            true,
            true,
        ),
        (
            "the first refused, Hello past the second",
            None,
            Some(0),
            second,
            true,
            true,
        ),
    ] {
        let at = Hello {
            replication_index: Some(hello_at),
            ..hello()
        };
        let mut source = FakeLog {
            streams: true,
            compacted: vec![(0, first), (first + 1, second)],
            snapshots_break,
            snapshot_refused,
            ..FakeLog::new(long_log(n), None)
        };
        let (_dir, m, to) = built_from(&mut source, &at);
        assert_eq!(
            source.overlapped.load(std::sync::atomic::Ordering::SeqCst),
            ahead,
            "{what}: whether the second snapshot was asked for while the first came"
        );
        assert_eq!(
            source
                .snapshot_broke
                .load(std::sync::atomic::Ordering::SeqCst),
            broke,
            "{what}: whether a snapshot broke off"
        );
        // Every case is tried before the test fails, so its message names each one that is wrong.
        if fs::read(m.db_path()).unwrap() != applied_up_to(n, to) {
            wrong.push(format!("{what}: not the log applied up to frame {to}"));
        }
        if !matches!(m.health(), Ok(Some(Ok(_)))) {
            wrong.push(format!("{what}: not healthy"));
        }
        let differ = sums_that_differ(&m);
        if !differ.is_empty() {
            wrong.push(format!("{what}: pages {differ:?} do not match their sums"));
        }
    }
    assert_eq!(wrong, Vec::<String>::new());
}

/// Parts that end last to first, the second breaking off after a few frames once the two after
/// it came whole: their pages, and the few of the broken part, are in place already, newer than
/// the first part's; the batches read again from the last commit before the broken part, over
/// the pages the later parts wrote, and the file is the one batches make, every page matching
/// its sum.
#[test]
fn a_middle_part_that_breaks_after_later_parts_came_whole_is_read_again_in_batches() {
    let n = STREAM_FRAMES * 2 + 77;
    let starts: Vec<u64> = split(0, n - 1, LOG_STREAMS).iter().map(|p| p.0).collect();
    let frames = long_log(n);
    let last_commit = frames[..usize::try_from(starts[1]).unwrap()]
        .iter()
        .rposition(|f| FrameHeader::parse(f).unwrap().size_after != 0)
        .unwrap() as u64;
    let source = built_and_applied(n, "the second part broke off", || FakeLog {
        streams: true,
        reversed: Some(starts.clone()),
        one_stream_breaks: Some(starts[1]),
        ..FakeLog::new(long_log(n), None)
    });
    assert_eq!(source.batched, n - last_commit - 1);
    let mut last_to_first = starts.clone();
    last_to_first.reverse();
    assert_eq!(*source.ended.0.lock().unwrap(), last_to_first);
}

/// A log of `n` frames over a database that shrinks and grows across the parts of a stretch:
/// 60 pages in the first quarter, 30 in the second, 60 in the third, 40 in the last.
fn shrinking_log(n: u64) -> Vec<Vec<u8>> {
    sized_log(n, |i| [60, 30, 60, 40][usize::try_from(i * 4 / n).unwrap()])
}

/// A database that shrinks and grows across the parts of a stretch, read in streams whose parts
/// end last to first, whole or with the third breaking off: the third part writes pages past
/// the size the second leaves, and past the final size the fourth leaves; the file is the one
/// batches make, cut to the last commit's size, every page matching its sum.
#[test]
fn a_database_that_shrinks_across_parts_is_cut_to_its_last_size() {
    let n = STREAM_FRAMES * 2 + 77;
    let at = Hello {
        replication_index: Some(n - 1),
        ..hello()
    };
    let reference = tempfile::tempdir().unwrap();
    let r = Mirror::new(reference.path().to_path_buf());
    r.build(
        &mut FakeLog::new(shrinking_log(n), None),
        &at,
        &mut Streams::Try,
    )
    .unwrap();
    let want = fs::read(r.db_path()).unwrap();
    assert_eq!(want.len(), 40 * PAGE);
    let starts: Vec<u64> = split(0, n - 1, LOG_STREAMS).iter().map(|p| p.0).collect();
    for one_stream_breaks in [None, Some(starts[2])] {
        let mut source = FakeLog {
            streams: true,
            reversed: Some(starts.clone()),
            one_stream_breaks,
            ..FakeLog::new(shrinking_log(n), None)
        };
        let (_dir, m, to) = built_from(&mut source, &at);
        assert_eq!(to, n - 1);
        assert!(
            fs::read(m.db_path()).unwrap() == want,
            "{one_stream_breaks:?}"
        );
        assert_eq!(
            sums_that_differ(&m),
            Vec::<u32>::new(),
            "{one_stream_breaks:?}"
        );
        assert_eq!(source.batched == 0, one_stream_breaks.is_none());
    }
}

/// sqld compacts the log into a snapshot while a stretch is read in streams, and the third part
/// breaks off after the fourth came whole: the batches from the last commit before the third
/// part are told `NEED_SNAPSHOT`, and the snapshot, read over pages the later parts wrote in
/// place, holds each page as new as they or newer. The file is the one batches make of the log
/// never compacted, every page matching its sum.
#[test]
fn a_log_compacted_while_its_parts_come_is_read_from_the_snapshot_over_them() {
    let n = STREAM_FRAMES * 2 + 77;
    let (at, want) = built_in_batches(n);
    let starts: Vec<u64> = split(0, n - 1, LOG_STREAMS).iter().map(|p| p.0).collect();
    // The snapshot ends inside the fourth part.
    let end = *commits(n)
        .iter()
        .filter(|&&c| c < starts[3] + 200)
        .max()
        .unwrap();
    assert!(end > starts[3]);
    let mut source = FakeLog {
        streams: true,
        reversed: Some(starts.clone()),
        one_stream_breaks: Some(starts[2]),
        compacted: vec![(0, end)],
        compacted_meanwhile: true,
        ..FakeLog::new(long_log(n), None)
    };
    let (_dir, m, to) = built_from(&mut source, &at);
    assert_eq!(to, n - 1);
    assert!(fs::read(m.db_path()).unwrap() == want);
    assert_eq!(sums_that_differ(&m), Vec::<u32>::new());
    // The snapshot was read, and the log after it in batches.
    assert!(
        source
            .snapshots_asked
            .load(std::sync::atomic::Ordering::SeqCst)
            >= 1
    );
    assert_eq!(source.batched, n - 1 - end);
}

/// The spool `m` fetches from `log` up to `at`, its bytes as synced, and what `read_spool`
/// makes of it (as a run killed right after the fetch left it) checked against what the fetch
/// said it holds.
fn fetched_spool(m: &Mirror, log: &mut FakeLog, at: &Hello, what: &str) -> (Ready, Vec<u8>) {
    let ready = m.fetch(log, at, &mut Streams::Try).unwrap().unwrap();
    let bytes = fs::read(&ready.path).unwrap();
    match spool::read_spool(&ready.path).unwrap() {
        Ok(read) => {
            assert_eq!(
                (read.to, read.size, &read.pages),
                (ready.to, ready.size, &ready.pages),
                "read back, {what}"
            );
        }
        Err(why) => panic!("read back, {what}: {why}"),
    }
    (ready, bytes)
}

/// A mirror in a new directory at the long log's commit `k` (read in batches), or none.
fn mirror_at(n: u64, k: Option<u64>) -> (tempfile::TempDir, Mirror) {
    let dir = tempfile::tempdir().unwrap();
    let m = Mirror::new(dir.path().to_path_buf());
    if let Some(k) = k {
        let mut frames = long_log(n);
        frames.truncate(usize::try_from(k).unwrap() + 1);
        let at = Hello {
            replication_index: Some(k),
            ..hello()
        };
        let mut log = FakeLog::new(frames, None);
        let ready = m.fetch(&mut log, &at, &mut Streams::Try).unwrap().unwrap();
        m.apply(ready).unwrap();
    }
    (dir, m)
}

/// A case of [`SpoolMade::check`]: what it is, whether the streams of the parts end last to
/// first or first to last, and the part whose stream breaks off.
type StreamCase = (&'static str, bool, bool, Option<u64>);

/// What a spool of the long log of `n` frames (compacted into `compacted`) read in streams over
/// `starts` up to `at` is checked against: the spool's bytes, the mirror it applies to (`r`)
/// and that mirror's file.
struct SpoolMade<'a> {
    n: u64,
    at: &'a Hello,
    starts: &'a [u64],
    compacted: &'a [(u64, u64)],
    bytes: &'a [u8],
    r: &'a Mirror,
    want: &'a [u8],
}

impl SpoolMade<'_> {
    /// Fetches into a mirror at `from` ([`mirror_at`]) the log served in [`LOG_STREAMS`]
    /// streams as `case` says, and checks the spool is byte for byte the reference's, reads
    /// back whole, and applies to the same mirror, every page matching its sum. The source, for
    /// what it counted.
    fn check(&self, from: Option<u64>, case: StreamCase) -> FakeLog {
        let (what, reversed, forward, one_stream_breaks) = case;
        let what = format!("{what}, from {from:?}");
        let (_dir, m) = mirror_at(self.n, from);
        let mut log = FakeLog {
            streams: true,
            compacted: self.compacted.to_vec(),
            reversed: reversed.then(|| self.starts.to_vec()),
            forward: forward.then(|| self.starts.to_vec()),
            one_stream_breaks,
            ..FakeLog::new(long_log(self.n), None)
        };
        let (ready, bytes) = fetched_spool(&m, &mut log, self.at, &what);
        assert_eq!(
            log.streams_asked.load(std::sync::atomic::Ordering::SeqCst),
            LOG_STREAMS,
            "{what}"
        );
        assert_eq!(log.batched == 0, one_stream_breaks.is_none(), "{what}");
        assert_eq!(bytes.len(), self.bytes.len(), "{what}");
        assert!(bytes == self.bytes, "spool, {what}");
        m.apply(ready).unwrap();
        assert!(
            fs::read(m.db_path()).unwrap() == self.want,
            "applied, {what}"
        );
        assert_eq!(m.state().unwrap(), self.r.state().unwrap(), "{what}");
        assert_eq!(sums_that_differ(&m), Vec::<u32>::new(), "{what}");
        log
    }
}

/// A spool fetched with a stretch's later parts in place, first or carrying a mirror forward
/// (from its last commit on), is byte for byte the spool batches make: the same head, frames
/// and sum; it reads back whole as a killed run leaves it, and applies to the mirror batches
/// make. So whether the parts end first to last or last to first, and whichever part breaks
/// off: one after the first (a rewind after nothing was followed), or the third after the
/// fourth came whole (a rewind after the second was followed, over bytes of the fourth and of
/// the broken third written past the last commit).
#[test]
fn a_spool_with_parts_in_place_is_the_spool_batches_make() {
    // Parts of over a megabyte: a part's first megabyte is on disk before it ends.
    let n = 10_000;
    let (at, want) = built_in_batches(n);
    let k = *commits(n).iter().filter(|&&c| c < 500).max().unwrap();
    assert!(n > k + 1 + STREAM_FRAMES);
    for from in [None, Some(k)] {
        let (_reference, r) = mirror_at(n, from);
        let mut plain = FakeLog::new(long_log(n), None);
        let (ready, reference) = fetched_spool(&r, &mut plain, &at, "batches");
        r.apply(ready).unwrap();
        assert!(
            fs::read(r.db_path()).unwrap() == want,
            "batches from {from:?}"
        );
        let first = from.map_or(0, |k| k + 1);
        let starts: Vec<u64> = split(first, n - 1, LOG_STREAMS)
            .iter()
            .map(|p| p.0)
            .collect();
        for case in [
            ("whole", false, false, None),
            ("last to first", true, false, None),
            ("first to last", false, true, None),
            ("the second broke", false, true, Some(starts[1])),
            ("third broke, last first", true, false, Some(starts[2])),
            ("last broke, first last", false, true, Some(starts[3])),
        ] {
            let made = SpoolMade {
                n,
                at: &at,
                starts: &starts,
                compacted: &[],
                bytes: &reference,
                r: &r,
                want: &want,
            };
            made.check(from, case);
        }
    }
}

/// The stream of the second part of a long stretch serves pages of 256 bytes where the log's
/// are 512 (a server of another page size), and ends after the first part's stream: its frames,
/// placed by their own length, land inside the first part's, which were already written. The
/// part is refused ([`Txns::follow`]) and the batches read on from the first part's last
/// commit; the spool must hold only the frames it counted, byte for byte the spool batches
/// make, read back whole and applied to the mirror batches make. The first part is long enough
/// (over a megabyte) that the spool wrote most of it before the second part's stream ended. A
/// mirror built from the same log, whose parts write pages where their numbers put them, must
/// end as exact.
#[test]
fn a_part_of_another_page_size_leaves_the_spool_batches_make() {
    let n = 10_000;
    let (at, want) = built_in_batches(n);
    let starts: Vec<u64> = split(0, n - 1, LOG_STREAMS).iter().map(|p| p.0).collect();
    assert!(starts[1] * (FRAME_HEADER + PAGE) as u64 > 1 << 20);
    let (_reference, r) = mirror_at(n, None);
    let (_, reference) = fetched_spool(&r, &mut FakeLog::new(long_log(n), None), &at, "batches");
    // The second part's stream serves pages of 256 bytes, and ends after the first's.
    let log = || FakeLog {
        streams: true,
        forward: Some(starts.clone()),
        stream_page: Some((starts[1], 256)),
        ..FakeLog::new(long_log(n), None)
    };
    let (_dir, m) = mirror_at(n, None);
    let mut log_read = log();
    let ready = m
        .fetch(&mut log_read, &at, &mut Streams::Try)
        .unwrap()
        .unwrap();
    assert!(log_read.batched > 0);
    let bytes = fs::read(&ready.path).unwrap();
    assert_eq!(bytes.len(), reference.len());
    let frame_len = FRAME_HEADER + PAGE;
    let head = spool::HEAD_BYTES as usize;
    let differ: Vec<usize> = (0..(bytes.len() - head) / frame_len)
        .filter(|&i| {
            let at = head + i * frame_len;
            bytes[at..at + frame_len] != reference[at..at + frame_len]
        })
        .collect();
    // Every check is made before the test fails, so its message names each one that is wrong.
    let mut wrong = Vec::new();
    if let (Some(first), Some(last)) = (differ.first(), differ.last()) {
        wrong.push(format!(
            "{} frames of the spool from frame {first} to {last} are not the ones batches fetch",
            differ.len()
        ));
    }
    if let Err(why) = spool::read_spool(&ready.path).unwrap() {
        wrong.push(format!("read back: {why}"));
    }
    match m.apply(ready) {
        Ok(_) if fs::read(m.db_path()).unwrap() != want => {
            wrong.push("applied: not the mirror batches make".into())
        }
        Ok(_) => {}
        Err(e) => wrong.push(format!("applied: {e}")),
    }
    // A mirror built from the same log takes the part's pages by their own length too.
    let (_built, b) = mirror_at(n, None);
    match b.build(&mut log(), &at, &mut Streams::Try) {
        Ok(Some(built)) if fs::read(b.db_path()).unwrap() != want => wrong.push(format!(
            "built: not the mirror batches make, at {}",
            built.to
        )),
        Ok(Some(_)) => {}
        other => wrong.push(format!("built: {other:?}")),
    }
    assert_eq!(wrong, Vec::<String>::new());
}

/// A log compacted into two snapshots, then a long stretch: the second snapshot comes while the
/// first does (aside), and the stretch after it is read in streams with its later parts in place
/// in the spool, right after the snapshots' frames. Whole, or with a part broken off (parts
/// ending either way), the spool is byte for byte the one a reader of one connection makes of
/// the same log (the snapshots, then batches), reads back whole, and applies to the mirror
/// batches make of the log never compacted.
#[test]
fn a_stretch_after_snapshots_in_a_spool_is_the_spool_one_reader_makes() {
    let n = STREAM_FRAMES * 2 + 77;
    let (at, want) = built_in_batches(n);
    let commits = commits(n);
    let first = *commits.iter().filter(|&&c| c < 1000).max().unwrap();
    let second = *commits.iter().filter(|&&c| c < 1500).max().unwrap();
    assert!(second > first && n > second + 1 + STREAM_FRAMES);
    let compacted = vec![(0, first), (first + 1, second)];
    let (_reference, r) = mirror_at(n, None);
    let mut one = FakeLog {
        compacted: compacted.clone(),
        ..FakeLog::new(long_log(n), None)
    };
    let (ready, reference) = fetched_spool(&r, &mut one, &at, "one reader");
    assert_eq!(one.batched, n - 1 - second);
    r.apply(ready).unwrap();
    assert!(fs::read(r.db_path()).unwrap() == want);
    let starts: Vec<u64> = split(second + 1, n - 1, LOG_STREAMS)
        .iter()
        .map(|p| p.0)
        .collect();
    let made = SpoolMade {
        n,
        at: &at,
        starts: &starts,
        compacted: &compacted,
        bytes: &reference,
        r: &r,
        want: &want,
    };
    for case in [
        ("whole", false, false, None),
        ("second broke, last first", true, false, Some(starts[1])),
        ("third broke, first last", false, true, Some(starts[2])),
    ] {
        let log = made.check(None, case);
        assert_eq!(
            log.snapshots_asked
                .load(std::sync::atomic::Ordering::SeqCst),
            2,
            "{}: the two snapshots (none holds the frame after them)",
            case.0
        );
    }
}

/// The long log of `n` frames with every frame a transaction of its own: each part of a stretch
/// ends at a commit.
fn one_frame_txns(n: u64) -> Vec<Vec<u8>> {
    let mut frames = long_log(n);
    for f in &mut frames {
        f[20..24].copy_from_slice(&60u32.to_le_bytes());
    }
    frames
}

/// The second part of a stretch breaks off after the two after it came whole, written in place
/// in the spool past its last commit, and the batches that read on from there end before them
/// (a server behind the one that sent the streams), at a commit or inside a transaction, or,
/// every frame a transaction, with the spool at a commit each time it is cut back: the spool
/// holds none of the later parts' bytes, byte for byte the spool those batches make alone, and
/// applies to the mirror they make.
#[test]
fn a_spool_whose_batches_end_before_its_later_parts_holds_none_of_them() {
    // Parts of over a megabyte: a part's first megabyte is on disk before it ends.
    let n = 10_000;
    let at = Hello {
        replication_index: Some(n - 1),
        ..hello()
    };
    let starts: Vec<u64> = split(0, n - 1, LOG_STREAMS).iter().map(|p| p.0).collect();
    assert!((starts[3] - starts[2]) * (FRAME_HEADER + PAGE) as u64 > 1 << 20);
    let commit = *commits(n).iter().filter(|&&c| c < starts[2]).max().unwrap();
    assert!(commit > starts[1] + 10 && commit + 1 < starts[2]);
    let long: fn(u64) -> Vec<Vec<u8>> = long_log;
    let one: fn(u64) -> Vec<Vec<u8>> = one_frame_txns;
    for (frames, batches_end, to) in [
        (long, commit, commit),
        (long, commit + 1, commit),
        (one, starts[1] + 20, starts[1] + 20),
    ] {
        let (_reference, r) = mirror_at(n, None);
        let mut plain = FakeLog {
            batches_end: Some(batches_end),
            ..FakeLog::new(frames(n), None)
        };
        let (ready, reference) = fetched_spool(&r, &mut plain, &at, "batches");
        r.apply(ready).unwrap();
        let (_dir, m) = mirror_at(n, None);
        let mut log = FakeLog {
            streams: true,
            reversed: Some(starts.clone()),
            one_stream_breaks: Some(starts[1]),
            batches_end: Some(batches_end),
            ..FakeLog::new(frames(n), None)
        };
        let what = format!("batches ending at {batches_end}");
        let (ready, bytes) = fetched_spool(&m, &mut log, &at, &what);
        assert!(log.batched > 0, "{what}");
        assert_eq!(ready.to, to, "{what}");
        assert_eq!(bytes.len(), reference.len(), "{what}");
        assert!(bytes == reference, "spool, {what}");
        m.apply(ready).unwrap();
        assert!(
            fs::read(m.db_path()).unwrap() == fs::read(r.db_path()).unwrap(),
            "applied, {what}"
        );
        assert_eq!(sums_that_differ(&m), Vec::<u32>::new(), "{what}");
    }
}
