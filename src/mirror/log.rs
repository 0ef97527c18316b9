//! Reading the log into a [`FrameSink`] in whole transactions, for a spool and a build alike:
//! batches, the snapshot, a new `Hello`, and a long stretch in several streams at once.

use std::io::{BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::Path;
use std::sync::Arc;

use super::{MirrorError, Streams};
use crate::remote::replication::{FrameHeader, Hello, LogError, LogSource, FRAME_HEADER};
use crate::Context;

/// Where frames read off the log go: a spool ([`Mirror::fetch`](super::Mirror::fetch)) or a
/// mirror being built ([`Mirror::build`](super::Mirror::build)). Frames come in whole transactions; after `rewind` the transaction under
/// way is forgotten, and its frames come again.
pub(super) trait FrameSink {
    fn txns(&self) -> &Txns;
    fn push(&mut self, frame: &[u8], snapshot: bool) -> std::io::Result<()>;
    fn rewind(&mut self) -> std::io::Result<()>;
    /// What makes parts that fill this sink while the frames before them come (a later
    /// stream's, the next snapshot): a part that comes whole is then in place, with nothing to
    /// read again. `after_log` says that what comes between this sink's end and each part is
    /// log, one frame each (a stretch read in streams), rather than a snapshot of unknown
    /// length. `None`: this sink cannot take such parts, so they wait in files aside.
    fn parts(&self, after_log: bool) -> Option<Arc<dyn Parts>>;
    /// Counts the part from frame `lo` on (made by [`FrameSink::parts`], ended whole) after the
    /// frames here, which must end right before `lo` ([`Txns::follow`]).
    fn follow(&mut self, lo: u64) -> std::io::Result<()>;
}

/// Makes the parts of a sink ([`FrameSink::parts`]).
pub(super) trait Parts: Send + Sync {
    /// The part from frame `lo` on.
    fn part(&self, lo: u64) -> Box<dyn Part>;
}

/// Frames from some frame on, filling their sink at the same time as the frames before them
/// ([`FrameSink::parts`]).
pub(super) trait Part: Send {
    fn push(&mut self, frame: &[u8], snapshot: bool) -> std::io::Result<()>;
    /// Writes what it gathered and leaves what it counted for [`FrameSink::follow`].
    fn end(self: Box<Self>) -> std::io::Result<()>;
}

/// A writer of the sink's file `path` (a part's, or the sink's own) panicked while it held the
/// lock they share.
pub(super) fn panicked(path: &Path) -> std::io::Error {
    std::io::Error::other(format!("writing {}: a writer panicked", path.display()))
}

/// Names the sink's own file in an error writing it. The kind is kept: [`stream_ahead`] tells
/// frames that do not follow (`InvalidData`) from storage failing by it.
pub(super) fn writing(path: &Path) -> impl Fn(std::io::Error) -> std::io::Error + '_ {
    move |e| std::io::Error::new(e.kind(), format!("writing {}: {e}", path.display()))
}

/// Reads the log into `sink` until it is caught up: a long stretch in several streams at once
/// ([`stream_ahead`]) unless a snapshot holds its first frame ([`snapshot_first`]), then
/// batches from the frame after the sink's last commit (a batch that broke off goes on from
/// there), the snapshot when the log was compacted past that frame (and after a snapshot, the
/// next one first, then a long stretch left after the last in streams again), a new `Hello`
/// when the server forgot the session (a changed log id means it was reset), up to the frame
/// `Hello` named. Frames of a transaction the log did not finish may be left past the last
/// commit. `dir` holds what is put aside meanwhile. Streams are tried only when `streams` says
/// so; when they stay silent, it becomes [`Streams::Off`].
pub(super) fn read_log(
    log: &mut dyn LogSource,
    hello: &Hello,
    sink: &mut dyn FrameSink,
    dir: &Path,
    streams: &mut Streams,
) -> Result<(), MirrorError> {
    // A stretch from `from` long enough for streams, while they are tried: up to where it ends.
    let long = |from: u64, streams: &Streams| {
        hello
            .replication_index
            .filter(|&upto| *streams == Streams::Try && upto >= from.saturating_add(STREAM_FRAMES))
    };
    let mut snapshot = false;
    // The next frame is asked of the snapshots first, before a long stretch (a stream of a
    // frame sqld compacted would stay silent) and after a snapshot (sqld keeps several, one
    // after the other, and this spares the batch that would answer `NEED_SNAPSHOT` before
    // each); when none holds it and the stretch left is long, it is read in streams.
    let mut after_snapshot = long(sink.txns().next(), streams).is_some();
    let mut next = sink.txns().next();
    let mut hellos = 0;
    loop {
        // Up to the frame `Hello` said the log ends at: asking on would find nothing.
        if hello.replication_index.is_some_and(|upto| next > upto) {
            return Ok(());
        }
        if std::mem::take(&mut after_snapshot) {
            let tail = hello.replication_index.filter(|_| *streams == Streams::Try);
            let ends = (hello.replication_index, tail);
            let log_holds = match snapshot_first(log, sink, next, dir, ends)? {
                Snapshot::NoneHolds | Snapshot::Read(After::Log) => true,
                // The long stretch after the last snapshot came meanwhile too.
                Snapshot::Read(After::Streamed(streamed)) => {
                    if let Some(silent) = take_streamed(streamed, sink, dir)? {
                        *streams = Streams::Off(silent.to_string());
                    }
                    false
                }
                Snapshot::Read(After::Unknown) => {
                    after_snapshot = true;
                    false
                }
                // The next snapshot came meanwhile: it follows in the sink, and the one after
                // it is asked for (or, when it did not come whole, it is asked for again).
                Snapshot::Read(After::Snapshot(later, count)) => {
                    take_next_snapshot(later, count, sink)?;
                    after_snapshot = true;
                    false
                }
            };
            let from = sink.txns().next();
            if let Some(upto) = long(from, streams).filter(|_| log_holds) {
                if let Some(silent) = stream_ahead(&*log, sink, from, upto, dir)? {
                    *streams = Streams::Off(silent.to_string());
                }
            }
            next = sink.txns().next();
            continue;
        }
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
        after_snapshot = std::mem::take(&mut snapshot);
        next = sink.txns().next();
    }
}

/// What [`snapshot_first`] found.
enum Snapshot {
    /// No snapshot holds the frame: the log does.
    NoneHolds,
    /// One does, and it is in the sink; what holds the frame after it, as far as that was
    /// found out meanwhile.
    Read(After),
}

/// What holds the frame after a snapshot, asked for while the snapshot came ([`ask_after`]).
enum After {
    /// Not found out: it is asked for in turn.
    Unknown,
    /// No snapshot: the log.
    Log,
    /// The next snapshot, whole: this many frames, for the sink in turn.
    Snapshot(Later, u64),
    /// No snapshot, and the long stretch of log after it, read in streams meanwhile.
    Streamed(Streamed),
}

/// Asks for the snapshot holding frame `from`, before a long stretch is read in streams, and
/// reads it into `sink` when there is one. sqld compacts its log into snapshots, and a stream
/// asked for a frame it compacted sends nothing at all, for as long as it is left open
/// (measured; a batch answers `NEED_SNAPSHOT` at once): the streams were waited on for as long
/// as they may stay silent (half a second at least) on every clone of a compacted log, before
/// the batches found the snapshot. An answer that passes (a dropped connection, a 503) is asked
/// again, as every read of the log is; any other answer but a snapshot's frames (sqld says
/// "snapshot not found", or that it keeps no snapshot directory; a source without snapshots
/// refuses) means the log holds the frame, and costs one request before the streams.
///
/// sqld sends a snapshot's frames newest first, so its first frame says where it ends: what
/// holds the frame after that (the next snapshot, or the log) is asked for on a second
/// connection meanwhile ([`ask_after`]), and sqld reads two snapshots at once, each on a thread
/// of its own; when no snapshot holds it and the log after is long (up to `tail`, given when
/// streams are tried), that stretch is read in streams meanwhile too. That answer counts only
/// if the snapshot did end there. Nothing past `upto` (where the read ends: `Hello`'s index) is
/// asked for ahead.
///
/// ```text
/// snapshots 0–4043, 4044–8100, then the log:
///   connection 1: Snapshot(0)    → frames 4043, 4040, …, 0   → the sink
///   connection 2: Snapshot(4044) → frames 8100, …, 4044      → in place (a mirror being
///                                                               built) or a file aside (a
///                                                               spool), asked once 4043 came;
///                                                               counted in the sink after
///   then Snapshot(8101) and the one after it, alike: "snapshot not found" → the log
/// ```
fn snapshot_first(
    log: &mut dyn LogSource,
    sink: &mut dyn FrameSink,
    from: u64,
    dir: &Path,
    (upto, tail): (Option<u64>, Option<u64>),
) -> Result<Snapshot, MirrorError> {
    let before = sink.txns().frames;
    let mut none = false;
    let forks = log.fork().zip(log.fork());
    let parts = sink.parts(false);
    let (got, after) = match forks {
        Some((mut this, mut next)) => {
            let (end, ends) = std::sync::mpsc::channel();
            std::thread::scope(|s| {
                let after = s.spawn(move || {
                    ends.recv()
                        .map(|end: u64| {
                            let after = (end + 1, upto, tail);
                            (end, ask_after(&mut *next, after, dir, parts.as_deref()))
                        })
                        .ok()
                });
                let got = read_snapshot(&mut *this, sink, from, &mut none, Some(end));
                (got, after.join().ok().flatten())
            })
        }
        None => {
            // No second reader (a source that cannot have two): one snapshot after the other.
            drop(forks);
            (read_snapshot(log, sink, from, &mut none, None), None)
        }
    };
    match got {
        Ok(()) if !none && sink.txns().frames > before && sink.txns().txn_last.is_none() => {
            Ok(Snapshot::Read(match after {
                Some((end, after)) if sink.txns().last_frame == Some(end) => after,
                _ => After::Unknown,
            }))
        }
        // Storage failing on this side, or the server gone for good, is not an answer.
        Err(LogError::Sink(e)) if e.kind() != std::io::ErrorKind::InvalidData => {
            Err(LogError::Sink(e).into())
        }
        Err(e @ LogError::Remote(_)) => Err(e.into()),
        _ => {
            sink.rewind()?;
            Ok(Snapshot::NoneHolds)
        }
    }
}

/// Reads the snapshot holding frame `from` into `sink`, asked again on an answer that passes;
/// `none` says whether the answer was that no snapshot holds it. The number of the first frame
/// that comes is sent on `end`, once.
fn read_snapshot(
    log: &mut dyn LogSource,
    sink: &mut dyn FrameSink,
    from: u64,
    none: &mut bool,
    end: Option<std::sync::mpsc::Sender<u64>>,
) -> Result<(), LogError> {
    let mut end = end;
    log.retrying(&mut |log: &mut dyn LogSource| {
        sink.rewind()?;
        match log.frames(from, true, &mut |f| {
            if let (Some(h), Some(to)) = (FrameHeader::parse(f), end.take()) {
                let _ = to.send(h.frame_no);
            }
            sink.push(f, true)
        }) {
            Err(LogError::NoSnapshot(_)) => {
                *none = true;
                Ok(())
            }
            other => other,
        }
    })
}

/// What holds frame `from`, asked for on its own connection while the snapshot before it comes
/// ([`snapshot_first`]): the next snapshot, read whole into a part of the sink (`parts`) or a
/// file aside in `dir`, or none (the log holds it), and then, when the log up to `tail` is
/// long, that stretch read in streams alike ([`stream_parts`]). Any other answer (one that
/// breaks off, an error, a file that cannot be written) is left to be asked for in turn.
fn ask_after(
    log: &mut dyn LogSource,
    (from, upto, tail): (u64, Option<u64>, Option<u64>),
    dir: &Path,
    parts: Option<&dyn Parts>,
) -> After {
    // Past where the read ends nothing is asked: it would not be read in turn, and a part
    // written in place that does not count would be left there.
    if upto.is_some_and(|upto| from > upto) {
        return After::Unknown;
    }
    let Ok(mut later) = Later::new(parts, from, dir) else {
        return After::Unknown;
    };
    let mut count = 0;
    match log.frames(from, true, &mut |f| {
        count += 1;
        later.take(f, true)
    }) {
        Ok(()) if count > 0 => After::Snapshot(later, count),
        Err(LogError::NoSnapshot(_)) => match tail {
            Some(upto) if upto >= from.saturating_add(STREAM_FRAMES) => {
                match stream_parts(&*log, None, parts, from, upto, dir) {
                    Ok(Some(streamed)) => After::Streamed(streamed),
                    _ => After::Log,
                }
            }
            _ => After::Log,
        },
        _ => After::Unknown,
    }
}

/// Takes a snapshot that came meanwhile (`count` frames, in a part of the sink or a file
/// aside) into `sink`, right after the snapshot before it, and leaves the sink at its last
/// commit: past the snapshot when it is whole, before it otherwise (it is asked for again then,
/// as any answer that broke off). Only the sink's own storage failing is an error.
fn take_next_snapshot(
    later: Later,
    count: u64,
    sink: &mut dyn FrameSink,
) -> Result<(), MirrorError> {
    let lo = sink.txns().next();
    match later.into_sink(lo, count, sink, true) {
        Err(e) if e.kind() != std::io::ErrorKind::InvalidData => Err(e.into()),
        _ => Ok(sink.rewind()?),
    }
}

/// Pushes the `count` frames a file aside holds (a later stream's, or a snapshot's) into
/// `sink`, in order. A file short of frames fails as a frame that does not follow does
/// (`InvalidData`), which the caller leaves to be read again.
fn push_aside(
    file: std::fs::File,
    count: u64,
    sink: &mut dyn FrameSink,
    snapshot: bool,
) -> std::io::Result<()> {
    let page_size = sink.txns().page_size.unwrap_or(0);
    let mut r = BufReader::with_capacity(1 << 20, file);
    let mut frame = vec![0; FRAME_HEADER + page_size];
    (0..count).try_for_each(|_| {
        r.read_exact(&mut frame)
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))?;
        sink.push(&frame, snapshot)
    })
}

/// Below this many frames to read, batches are as fast as streams.
pub(super) const STREAM_FRAMES: u64 = 2048;

/// How many streams read a long stretch of log at once. sqld hands each frame of a stream from
/// a blocking thread to its async one, and with two streams both sides kept waking each other:
/// at 1M rows, alternating 6 clones each, four streams took 0.39–0.50 s where two took
/// 0.54–0.71 s, and the server spent 0.31–0.43 s of CPU serving them instead of 0.46–0.56 s.
/// Six and eight were no faster than four. The later parts go in place ([`FrameSink::parts`]),
/// so more streams cost no disk.
pub const LOG_STREAMS: u64 = 4;

/// Reads frames `from..=upto` in [`LOG_STREAMS`] streams at once, over as many consecutive
/// parts of the stretch: the first part straight into `sink`, each later one meanwhile into a
/// part of the sink (a mirror being built, a spool: [`FrameSink::parts`], which are then only
/// counted in order), or, for a sink that makes none, into a file of its own aside in `dir`,
/// then from it, in order (each file freed once read). sqld reads its log for a stream or a
/// batch one frame at a time, and sends a batch only once it is whole; several streams keep
/// several of its threads reading, so a long stretch of log comes in a fraction of the time
/// batches take. Whatever goes wrong here (a server without streams, a dropped connection)
/// leaves `sink` at its last commit before the first part that did not come whole, and the
/// batches of [`read_log`] go on from there: this is only a shortcut. Only an error of the sink
/// itself is returned; a stream that stayed silent ([`LogError::Silent`]) is given back, so the
/// caller stops trying streams.
///
/// ```text
/// frames 100..=8099, four streams:  100..=2099 → sink
///   a sink that makes parts:        2100..=4099 → part 1 ┐ written in place as they come,
///                                   4100..=6099 → part 2 ├ counted in turn once all ended
///                                   6100..=8099 → part 3 ┘ (`Txns::follow`)
/// ```
fn stream_ahead(
    log: &dyn LogSource,
    sink: &mut dyn FrameSink,
    from: u64,
    upto: u64,
    dir: &Path,
) -> Result<Option<LogError>, MirrorError> {
    let parts = sink.parts(true);
    match stream_parts(log, Some(&mut *sink), parts.as_deref(), from, upto, dir)? {
        Some(streamed) => take_streamed(streamed, sink, dir),
        None => Ok(None),
    }
}

/// Where a part after the first goes while it comes.
enum Later {
    /// A file aside, put into the sink in turn.
    Aside(BufWriter<std::fs::File>),
    /// The sink itself, out of order ([`Parts::part`]).
    Direct(Box<dyn Part>),
}

impl Later {
    /// A part of the sink from frame `lo` on when `parts` makes them, a file aside in `dir`
    /// otherwise.
    fn new(parts: Option<&dyn Parts>, lo: u64, dir: &Path) -> std::io::Result<Later> {
        Ok(match parts {
            Some(parts) => Later::Direct(parts.part(lo)),
            None => Later::Aside(BufWriter::with_capacity(
                1 << 20,
                tempfile::tempfile_in(dir)?,
            )),
        })
    }

    fn take(&mut self, frame: &[u8], snapshot: bool) -> std::io::Result<()> {
        match self {
            Later::Aside(aside) => aside.write_all(frame),
            Later::Direct(part) => part.push(frame, snapshot),
        }
    }

    /// Puts its `count` frames from frame `lo` on into `sink`, which ends right before `lo`:
    /// a part's are in place already, and the sink only counts them after its own; a file's
    /// are read back ([`push_aside`]). Frames that do not follow fail as `InvalidData`.
    fn into_sink(
        self,
        lo: u64,
        count: u64,
        sink: &mut dyn FrameSink,
        snapshot: bool,
    ) -> std::io::Result<()> {
        match self {
            Later::Direct(part) => {
                part.end()?;
                sink.follow(lo)
            }
            Later::Aside(aside) => {
                let mut file = aside.into_inner().map_err(|e| e.into_error())?;
                file.seek(SeekFrom::Start(0))?;
                push_aside(file, count, sink, snapshot)
            }
        }
    }
}

/// A stretch of log read in streams ([`stream_parts`]), waiting for the sink.
struct Streamed {
    /// Whether the first part went straight into the sink (it had no part of its own then).
    head_in_sink: bool,
    parts: Vec<(u64, u64)>,
    /// Where each part that did not go into the sink went, in order.
    later: Vec<Later>,
    /// How each part's stream ended.
    ended: Vec<Result<(), LogError>>,
}

/// Reads frames `from..=upto` in [`LOG_STREAMS`] streams at once, over as many consecutive
/// parts: the first straight into `head` when given, every other one into a part of the sink
/// when `parts_of_sink` makes them, or else into a file aside, for [`take_streamed`] to put
/// into the sink in order. `None`: the source cannot have several readers.
fn stream_parts(
    log: &dyn LogSource,
    head: Option<&mut dyn FrameSink>,
    parts_of_sink: Option<&dyn Parts>,
    from: u64,
    upto: u64,
    dir: &Path,
) -> Result<Option<Streamed>, MirrorError> {
    let Some(mut forks) = (0..LOG_STREAMS)
        .map(|_| log.fork())
        .collect::<Option<Vec<_>>>()
    else {
        return Ok(None);
    };
    let parts = split(from, upto, LOG_STREAMS);
    let head_in_sink = head.is_some();
    let mut later = parts[usize::from(head_in_sink)..]
        .iter()
        .map(|&(lo, _)| Later::new(parts_of_sink, lo, dir))
        .collect::<std::io::Result<Vec<_>>>()
        .during(ASIDE_IN, dir.display())?;
    let ended = std::thread::scope(|s| {
        let mut forks = forks.iter_mut();
        let head = head.and_then(|sink| {
            let log = forks.next()?;
            let (lo, hi) = parts[0];
            Some((log, sink, lo, hi))
        });
        let aside: Vec<_> = forks
            .zip(later.iter_mut())
            .zip(&parts[usize::from(head_in_sink)..])
            .map(|((log, part), &(lo, hi))| {
                s.spawn(move || log.stream(lo, hi, &mut |f| part.take(f, false)))
            })
            .collect();
        let head = head.map(|(log, sink, lo, hi)| log.stream(lo, hi, &mut |f| sink.push(f, false)));
        head.into_iter()
            .chain(aside.into_iter().map(|t| {
                t.join().unwrap_or_else(|_| {
                    Err(LogError::Protocol("a stream's thread panicked".into()))
                })
            }))
            .collect()
    });
    Ok(Some(Streamed {
        head_in_sink,
        parts,
        later,
        ended,
    }))
}

/// What a file aside of a stream's frames is named by in an error.
const ASIDE_IN: &str = "keeping a stream's frames aside in";

/// What putting a stretch's parts into the sink in order is named by in an error.
const PUT_IN: &str = "putting the parts of a stretch in order, from";

/// Puts a stretch read in streams into `sink`, in order, as far as its parts came whole, and
/// leaves the sink at its last commit: the batches go on from there. A stream that stayed
/// silent ([`LogError::Silent`]) puts nothing in and is given back, so the caller stops
/// trying streams; only the sink's own storage failing is an error.
fn take_streamed(
    streamed: Streamed,
    sink: &mut dyn FrameSink,
    dir: &Path,
) -> Result<Option<LogError>, MirrorError> {
    let Streamed {
        head_in_sink,
        parts,
        later,
        ended,
    } = streamed;
    let whole: Vec<bool> = ended.iter().map(Result::is_ok).collect();
    if let Some(silent) = ended.into_iter().find_map(|e| match e {
        Err(silent @ LogError::Silent(_)) => Some(silent),
        _ => None,
    }) {
        sink.rewind()?;
        return Ok(Some(silent));
    }
    // The later parts follow the head in order, as far as each came whole.
    let came = whole.iter().take_while(|w| **w).count();
    let skip = usize::from(head_in_sink);
    for (part, &(lo, hi)) in later
        .into_iter()
        .zip(&parts[skip..])
        .take(came.saturating_sub(skip))
    {
        // A file short of frames, or frames that do not follow, are left to the batches too;
        // only the sink's own storage failing is an error.
        match part.into_sink(lo, hi - lo + 1, sink, false) {
            Err(e) if e.kind() == std::io::ErrorKind::InvalidData => break,
            put => put.during(PUT_IN, dir.display())?,
        }
    }
    sink.rewind()?;
    Ok(None)
}

/// `from..=upto` cut into `n` consecutive parts, as even as they come (their lengths differ by
/// one at most): `split(100, 109, 4)` is `[(100, 101), (102, 104), (105, 106), (107, 109)]`. A
/// stretch of fewer than `n` frames is cut into as many parts as it has frames. `from <= upto`.
pub(super) fn split(from: u64, upto: u64, n: u64) -> Vec<(u64, u64)> {
    let len = upto - from + 1;
    let n = n.clamp(1, len);
    (0..n)
        .map(|i| (from + i * len / n, from + (i + 1) * len / n - 1))
        .collect()
}

/// Frames counted in whole transactions, and checked against the ones before them, as every
/// [`FrameSink`] keeps them.
#[derive(Debug, Default)]
pub(super) struct Txns {
    pub(super) page_size: Option<usize>,
    /// Frames up to the last commit.
    pub(super) frames: u64,
    /// Frames of the transaction under way, and the last of them.
    pub(super) txn_frames: u64,
    pub(super) txn_last: Option<u64>,
    /// The last frame of the last commit.
    pub(super) last_frame: Option<u64>,
    /// The database size in pages at the last commit.
    pub(super) size: u32,
}

impl Txns {
    /// The frame a batch goes on from: the one after the last commit.
    pub(super) fn next(&self) -> u64 {
        self.last_frame.map_or(0, |f| f + 1)
    }

    /// Checks a frame: its header, its page size, and that it follows the frame before (in the
    /// log; a snapshot's come in any order).
    pub(super) fn check(&mut self, frame: &[u8], snapshot: bool) -> std::io::Result<FrameHeader> {
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
    pub(super) fn count(&mut self, h: &FrameHeader) -> bool {
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

    pub(super) fn rewind(&mut self) {
        self.txn_frames = 0;
        self.txn_last = None;
    }

    /// Frames counted from frame `lo` on, the part of a stretch after the frame before it
    /// ([`Parts::part`]): the first frame must be `lo`.
    pub(super) fn starting_at(lo: u64) -> Txns {
        Txns {
            last_frame: lo.checked_sub(1),
            ..Txns::default()
        }
    }

    /// Counts a part's frames, `part` (from [`Txns::starting_at`] `lo`), as if they had
    /// followed the frames counted here, which must end right before `lo`. Its first commit
    /// ends the transaction under way here:
    ///
    /// ```text
    /// here: 100..=199, commit at 180      frames 81 (…180), 181..=199 under way
    /// part: 200..=299, commits at 210, 290 frames 91 (200..=290), 291..=299 under way
    /// then: frames 81 + 19 + 91 = 191, last commit 290, 291..=299 under way
    /// ```
    pub(super) fn follow(&mut self, part: &Txns, lo: u64) -> std::io::Result<()> {
        let bad = |what: String| std::io::Error::new(std::io::ErrorKind::InvalidData, what);
        if self.txn_last.or(self.last_frame).map(|f| f + 1) != Some(lo) {
            return Err(bad(format!("a part from frame {lo} does not follow")));
        }
        if let (Some(here), Some(there)) = (self.page_size, part.page_size) {
            if here != there {
                return Err(bad(format!(
                    "a part from frame {lo} holds pages of {there} bytes"
                )));
            }
        }
        self.page_size = self.page_size.or(part.page_size);
        if part.last_frame.is_some_and(|l| l >= lo) {
            self.frames += std::mem::take(&mut self.txn_frames) + part.frames;
            self.last_frame = part.last_frame;
            self.size = part.size;
            self.txn_frames = part.txn_frames;
            self.txn_last = part.txn_last;
        } else {
            self.txn_frames += part.txn_frames;
            self.txn_last = part.txn_last.or(self.txn_last);
        }
        Ok(())
    }
}
