//! Attacks on the snapshot after each one, asked for while that one comes (on a second
//! connection), and on the long log after the last snapshot, streamed meanwhile.

use std::path::Path;
use std::process::Output;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::attack7::{exact_and_tidy, nothing_left_aside, stream_offset, StreamFaults, MID_PART};
use crate::common::*;
use crate::replog::{
    compacted_then_long_tail, exact, keep_inserting, long_compacted_log, pull, relaying_streams,
};

/// `tursync ARGS` in `dir`, asserted to exit 0 within `secs` seconds (killed and failed
/// otherwise: a hang is a failure, not a stuck test run).
fn ok_within(sqld: &Sqld, dir: &Path, args: &[&str], secs: u64) -> Output {
    let mut child = sqld
        .tursync(dir)
        .args(args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let until = Instant::now() + Duration::from_secs(secs);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > until {
            child.kill().unwrap();
            let out = child.wait_with_output().unwrap();
            panic!("tursync {args:?} still ran after {secs} s\n{}", text(&out));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "tursync {args:?}: {}", text(&out));
    out
}

/// A gRPC status no snapshot answer carries: INTERNAL, trailers-only.
const INTERNAL: &str = "HTTP/1.1 200 OK\r\ncontent-type: application/grpc-web+proto\r\ngrpc-status: 13\r\ngrpc-message: bogus\r\nContent-Length: 0\r\nConnection: close\r\n\r\n";
/// A successful answer without a single frame.
const EMPTY_OK: &str = "HTTP/1.1 200 OK\r\ncontent-type: application/grpc-web+proto\r\ngrpc-status: 0\r\nContent-Length: 0\r\nConnection: close\r\n\r\n";
/// sqld's answer when no snapshot holds the frame asked for.
const NOT_FOUND: &str = "HTTP/1.1 200 OK\r\ncontent-type: application/grpc-web+proto\r\ngrpc-status: 14\r\ngrpc-message: snapshot not found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n";
/// An HTTP 500 with a body that is no gRPC at all.
const HTTP_500: &str =
    "HTTP/1.1 500 Internal Server Error\r\nContent-Length: 5\r\nConnection: close\r\n\r\noops!";

/// A proxy that gives `fault` to the first `Snapshot` asked for a frame past 0 (on a clone,
/// the look for the snapshot after the first, asked while the first comes), once; a fault
/// that is `None` stalls that request for `stall` before it is forwarded.
fn read_ahead_fault(
    sqld: &Sqld,
    fault: Option<Verdict>,
    stall: Duration,
) -> (HookProxy, Arc<AtomicUsize>) {
    let faulted = Arc::new(AtomicUsize::new(0));
    let f = faulted.clone();
    let proxy = HookProxy::start(&sqld.url, move |head, body| {
        if head.contains("Log/Snapshot ")
            && stream_offset(body) > 0
            && f.fetch_add(1, Ordering::SeqCst) == 0
        {
            return match fault {
                Some(v) => v,
                None => {
                    std::thread::sleep(stall);
                    Verdict::Forward
                }
            };
        }
        if head.contains("Log/LogEntries ") {
            return Verdict::Relay;
        }
        Verdict::Forward
    });
    (proxy, faulted)
}

/// A clone of a long compacted log whose look for the next snapshot (asked while the first
/// comes) fails in any way: dropped, cut mid-body or in its head, a bogus gRPC status, an
/// empty success, an HTTP 500, a stall of a few seconds. Each clone ends in bounded time,
/// exact, with nothing left aside, and streams stay on (nothing was silent).
#[test]
fn a_clone_whose_look_ahead_snapshot_fails_is_exact() {
    let sqld = long_compacted_log();
    let faults: &[(&str, Option<Verdict>)] = &[
        ("drop", Some(Verdict::Drop)),
        ("cut mid-body", Some(Verdict::Cut(300_000))),
        ("cut in the head", Some(Verdict::Cut(40))),
        ("internal", Some(Verdict::Answer(INTERNAL))),
        ("empty ok", Some(Verdict::Answer(EMPTY_OK))),
        ("http 500", Some(Verdict::Answer(HTTP_500))),
        ("not found", Some(Verdict::Answer(NOT_FOUND))),
        ("stall", None),
    ];
    for (what, fault) in faults {
        let (proxy, faulted) = read_ahead_fault(&sqld, *fault, Duration::from_secs(3));
        let dir = tempdir();
        ok_within(&sqld, dir.path(), &["init", "--url", &proxy.url], 60);
        assert!(
            faulted.load(Ordering::SeqCst) > 0,
            "{what}: no snapshot past 0 asked: {:#?}",
            proxy.requests()
        );
        let r = exact_and_tidy(&sqld, dir.path());
        assert_eq!(r["path"], "log", "{what}: {r}");
        assert_eq!(r["streams"]["on"], true, "{what}: {r}");
    }
}

/// A clone of a compacted log then a long stretch, whose streams (asked while the last
/// snapshot comes) break or are held: exact, nothing left aside; a held stream turns streams
/// off, a broken one does not.
#[test]
fn a_clone_whose_streams_during_the_snapshot_break_or_are_held_is_exact() {
    let (sqld, _) = compacted_then_long_tail();
    let faults = StreamFaults::start(&sqld, &[]);
    for (plan, on) in [
        (&[(0, Verdict::RelayCut(MID_PART / 4))][..], true),
        (&[(3, Verdict::Drop)][..], true),
        (&[(2, Verdict::Forward)][..], false),
    ] {
        faults.set_plan(plan);
        let dir = tempdir();
        ok_within(&sqld, dir.path(), &["init", "--url", &faults.proxy.url], 60);
        streamed_exactly(&sqld, dir.path(), &faults, plan, on);
    }
}

/// After a run through `faults` with `plan`: a stretch was read in streams, the workspace in
/// `dir` is exact with nothing left aside, and streams are `on` or not.
fn streamed_exactly(
    sqld: &Sqld,
    dir: &Path,
    faults: &StreamFaults,
    plan: &[(usize, Verdict)],
    on: bool,
) {
    assert_eq!(
        faults.seen().len(),
        tursync::mirror::LOG_STREAMS as usize,
        "{plan:?}: {:#?}",
        faults.proxy.requests()
    );
    let r = exact_and_tidy(sqld, dir);
    assert_eq!(r["streams"]["on"], on, "{plan:?}: {r}");
}

/// Inserts rows `first..first + n` of one page each into `t`, in transactions of 500.
fn grow(sqld: &Sqld, first: u32, n: u32) {
    for from in (first..first + n).step_by(500) {
        let to = (from + 499).min(first + n - 1);
        sqld.exec(&format!(
            "INSERT INTO t SELECT value, randomblob(3000) FROM generate_series({from}, {to})"
        ));
    }
}

/// Waits for sqld to have compacted into more than `before` snapshots, with nothing left to
/// compact; returns how many it keeps.
fn compacted_past(sqld: &Sqld, before: usize) -> usize {
    let until = Instant::now() + Duration::from_secs(30);
    loop {
        let n = crate::replog::snapshot_files(sqld, "snapshots");
        if n > before && crate::replog::snapshot_files(sqld, "to_compact") == 0 {
            return n;
        }
        assert!(Instant::now() < until, "sqld never compacted past {before}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A sqld that compacts its log past 16 MB, holding table `t(id, v)` with one row.
fn one_row_compacting_at_16_mb() -> Sqld {
    let sqld = Sqld::start_with_args(&["--max-log-size", "16"]);
    sqld.exec("CREATE TABLE t(id INTEGER PRIMARY KEY, v BLOB); INSERT INTO t VALUES (0, x'00');");
    sqld
}

/// Grows `t` of [`one_row_compacting_at_16_mb`] from row `first`, one transaction of 500 pages
/// at a time, until sqld compacts its log after one of them, so the log after starts about
/// empty (at most one more transaction: the compaction may be seen late), then waits for the
/// snapshot. The next row and the snapshots kept then. A stretch grown after it stays in the
/// log as long as it is under 14 MB.
fn grow_until_compacted(sqld: &Sqld, mut first: u32, snapshots: usize) -> (u32, usize) {
    loop {
        grow(sqld, first, 500);
        first += 500;
        if crate::replog::snapshot_files(sqld, "to_compact") > 0
            || crate::replog::snapshot_files(sqld, "snapshots") > snapshots
        {
            return (first, compacted_past(sqld, snapshots));
        }
        assert!(first < 20_000, "sqld never compacted past {snapshots}");
    }
}

/// Grows `t` of [`one_row_compacting_at_16_mb`] until sqld compacted its log three times
/// ([`grow_until_compacted`]); the next row and the snapshots kept then.
fn three_compactions(sqld: &Sqld) -> (u32, usize) {
    (0..3).fold((1, 0), |(first, snapshots), _| {
        grow_until_compacted(sqld, first, snapshots)
    })
}

/// A workspace away while the log grew past several compactions, then a long stretch: the
/// pull reads the snapshots (each next one asked while one comes), then the stretch in
/// streams. Exact, nothing left aside; and a pull after it too.
#[test]
fn a_pull_across_several_snapshots_then_a_long_stretch_is_exact() {
    let sqld = one_row_compacting_at_16_mb();
    let proxy = relaying_streams(&sqld);
    let dir = tempdir();
    ok(&sqld, dir.path(), &["init", "--url", &proxy.url]);
    let (next, snapshots) = three_compactions(&sqld);
    grow(&sqld, next, 2200);
    proxy.take_requests();
    let read = pull(&sqld, dir.path());
    let requests = proxy.take_requests();
    let snaps = requests
        .iter()
        .filter(|r| r.ends_with("Log/Snapshot"))
        .count();
    assert!(snaps >= 2, "{read}: {snapshots} snapshots: {requests:#?}");
    let r = exact_and_tidy(&sqld, dir.path());
    assert_eq!(r["streams"]["on"], true, "{r}");
    sqld.exec("UPDATE t SET v = x'02' WHERE id % 100 = 1;");
    pull(&sqld, dir.path());
    exact(&sqld, dir.path());
}

/// Clones of a compacted log then a long stretch while a teammate keeps writing (sqld
/// compacting the log every few transactions, so the snapshot after the one coming, and the
/// stretch streamed meanwhile, are asked for across compactions): every clone ends in bounded
/// time, and once the writes stop a pull makes each exact, with nothing left aside.
#[test]
fn clones_of_a_long_stretch_while_sqld_compacts_end_exact() {
    let (sqld, _) = compacted_then_long_tail();
    let proxy = relaying_streams(&sqld);
    let (stop, writer) = keep_inserting(&sqld, 100_000, 440, 100_000 + 40 * 440);
    let dirs: Vec<TempDir> = (0..2).map(|_| tempdir()).collect();
    for d in &dirs {
        ok_within(&sqld, d.path(), &["init", "--url", &proxy.url], 60);
    }
    stop.store(true, Ordering::SeqCst);
    writer.join().unwrap();
    for d in &dirs {
        ok_within(&sqld, d.path(), &["pull"], 60);
        exact(&sqld, d.path());
        nothing_left_aside(d.path());
    }
}

/// A pull across several snapshots (into the spool, which drops what follows its last commit)
/// whose looks for the next snapshot are cut mid-body and dropped: the `Snapshot` requests
/// after the first of each pair fail in turn. Exact, in bounded time, nothing left aside.
#[test]
fn a_pull_across_several_snapshots_whose_looks_ahead_fail_is_exact() {
    let sqld = one_row_compacting_at_16_mb();
    let asked = Arc::new(AtomicUsize::new(0));
    let seen = asked.clone();
    let proxy = HookProxy::start(&sqld.url, move |head, _| {
        if head.contains("Log/Snapshot ") {
            match seen.fetch_add(1, Ordering::SeqCst) {
                1 => return Verdict::Cut(300_000),
                3 => return Verdict::Drop,
                _ => {}
            }
        }
        Verdict::Forward
    });
    let dir = tempdir();
    ok(&sqld, dir.path(), &["init", "--url", &proxy.url]);
    let (_, snapshots) = three_compactions(&sqld);
    sqld.exec("UPDATE t SET v = x'01' WHERE id % 50 = 0;");
    asked.store(0, Ordering::SeqCst);
    ok_within(&sqld, dir.path(), &["pull"], 60);
    assert!(
        asked.load(Ordering::SeqCst) > 3,
        "{snapshots} snapshots: {:#?}",
        proxy.requests()
    );
    exact(&sqld, dir.path());
    nothing_left_aside(dir.path());
}

/// A clone of a log compacted into several snapshots then a long stretch, whose look for the
/// second snapshot is answered "snapshot not found" though sqld keeps it (as sqld answers while
/// it writes one): the streams asked meanwhile of frames the log no longer holds are not taken,
/// the snapshots are read in turn, then the stretch; exact, streams still on.
#[test]
fn a_clone_told_no_next_snapshot_that_exists_reads_it_in_turn() {
    let sqld = one_row_compacting_at_16_mb();
    let (next, snapshots) = three_compactions(&sqld);
    grow(&sqld, next, 2200);
    let (proxy, faulted) =
        read_ahead_fault(&sqld, Some(Verdict::Answer(NOT_FOUND)), Duration::ZERO);
    let dir = tempdir();
    ok_within(&sqld, dir.path(), &["init", "--url", &proxy.url], 60);
    assert!(faulted.load(Ordering::SeqCst) > 0, "{snapshots}");
    let r = exact_and_tidy(&sqld, dir.path());
    assert_eq!(r["streams"]["on"], true, "{r}");
}

/// Pulls across a compaction then a long stretch (the stretch streamed while the last snapshot
/// comes, into the spool), whose first part breaks, then one whose stream is held: exact, and
/// streams are off only after the held one.
#[test]
fn pulls_whose_streams_during_the_snapshot_break_or_are_held_are_exact() {
    let sqld = one_row_compacting_at_16_mb();
    let faults = StreamFaults::start(&sqld, &[]);
    let dir = tempdir();
    ok(&sqld, dir.path(), &["init", "--url", &faults.proxy.url]);
    let mut snapshots = 0;
    let mut first = 1;
    for (plan, on) in [
        (&[(0, Verdict::RelayCut(MID_PART / 4))][..], true),
        (&[(1, Verdict::Forward)][..], false),
    ] {
        let next;
        (next, snapshots) = grow_until_compacted(&sqld, first, snapshots);
        grow(&sqld, next, 2200);
        first = next + 2200;
        faults.set_plan(plan);
        ok_within(&sqld, dir.path(), &["pull"], 60);
        assert_eq!(
            crate::replog::snapshot_files(&sqld, "snapshots"),
            snapshots,
            "sqld compacted the stretch too"
        );
        streamed_exactly(&sqld, dir.path(), &faults, plan, on);
    }
}
