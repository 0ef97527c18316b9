//! Attacks on a long stretch of log read in several streams at once (`LogEntries`, each part
//! of the stretch on a stream of its own, the later ones kept aside until their turn), after
//! the snapshots of a compacted log too, and on an init whose built mirror becomes the base.

use std::path::Path;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use crate::common::*;
use crate::replog::{
    compacted_then_long_tail, exact, grow_past_a_compaction_then_long_tail, pull, reads,
    snapshot_files,
};

/// How many streams a long stretch is read in.
const STREAMS: usize = tursync::mirror::LOG_STREAMS as usize;

/// The frame a `LogEntries` request asks its stream to start at: the body is one gRPC-web
/// message holding a `LogOffset`, whose field 1 (a varint) is left out when it is 0.
pub(crate) fn stream_offset(body: &[u8]) -> u64 {
    let msg = body.get(5..).unwrap_or_default();
    let mut offset = 0u64;
    if msg.first() == Some(&0x08) {
        for (i, b) in msg[1..].iter().enumerate() {
            offset |= u64::from(b & 0x7f) << (7 * i);
            if b & 0x80 == 0 {
                break;
            }
        }
    }
    offset
}

/// A proxy in front of `sqld` that passes streams on as they come, except that while `plan`
/// holds a verdict for a stream's rank (0 for the part read first, straight into the mirror or
/// spool, up to the last part of the stretch), that stream gets it. The streams of one stretch
/// are asked for at once: each waits (briefly) for the others to arrive, so that its rank, the
/// order of its offset among them, is known.
pub(crate) struct StreamFaults {
    pub(crate) proxy: HookProxy,
    plan: Arc<Mutex<Vec<(usize, Verdict)>>>,
    /// The offsets of the streams asked for so far, and the verdicts they got.
    seen: Arc<Mutex<Vec<(u64, Verdict)>>>,
}

impl StreamFaults {
    pub(crate) fn start(sqld: &Sqld, plan: &[(usize, Verdict)]) -> StreamFaults {
        let plan = Arc::new(Mutex::new(plan.to_vec()));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let group = Arc::new((Mutex::new(Vec::<u64>::new()), Condvar::new()));
        let (p, s) = (plan.clone(), seen.clone());
        let proxy = HookProxy::start(&sqld.url, move |head, body| {
            if !head.contains("Log/LogEntries ") {
                return Verdict::Forward;
            }
            let offset = stream_offset(body);
            let (lock, arrived) = &*group;
            let mut offsets = lock.lock().unwrap();
            offsets.push(offset);
            arrived.notify_all();
            let until = Instant::now() + Duration::from_millis(200);
            while offsets.len() % STREAMS != 0 && Instant::now() < until {
                offsets = arrived
                    .wait_timeout(offsets, Duration::from_millis(10))
                    .unwrap()
                    .0;
            }
            let start = offsets.len() - offsets.len() % STREAMS;
            let start = if start == offsets.len() {
                start - STREAMS
            } else {
                start
            };
            let rank = offsets[start..].iter().filter(|&&o| o < offset).count();
            drop(offsets);
            let verdict = p
                .lock()
                .unwrap()
                .iter()
                .find(|(r, _)| *r == rank)
                .map_or(Verdict::Relay, |(_, v)| *v);
            s.lock().unwrap().push((offset, verdict));
            verdict
        });
        StreamFaults { proxy, plan, seen }
    }

    pub(crate) fn set_plan(&self, plan: &[(usize, Verdict)]) {
        *self.plan.lock().unwrap() = plan.to_vec();
        self.seen.lock().unwrap().clear();
        self.proxy.take_requests();
    }

    /// The streams asked for since the plan was set, and what each got.
    pub(crate) fn seen(&self) -> Vec<(u64, Verdict)> {
        self.seen.lock().unwrap().clone()
    }
}

/// Nothing but the workspace's own files is left in its state directory: no file set aside
/// under a temporary name.
pub(crate) fn nothing_left_aside(dir: &Path) {
    let odd: Vec<String> = std::fs::read_dir(dir.join(".tursync"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains("tmp") || n.ends_with(".new") || n.contains(".init"))
        .collect();
    assert!(
        odd.is_empty(),
        "left behind: {odd:?}\n{}",
        state_listing(dir)
    );
}

/// The workspace in `dir` after a run through faults: exact, with nothing left aside in
/// `.tursync/`; what `reads` says of it then (its path, its streams).
pub(crate) fn exact_and_tidy(sqld: &Sqld, dir: &Path) -> serde_json::Value {
    exact(sqld, dir);
    nothing_left_aside(dir);
    reads(sqld, dir, &sqld.rw_token)
}

/// A sqld whose log holds about 5,000 frames (rows of one page each), never compacted.
fn long_log() -> Sqld {
    let sqld = Sqld::start();
    sqld.exec(
        "CREATE TABLE t(id INTEGER PRIMARY KEY, v BLOB, n INT); CREATE INDEX t_n ON t(n);
         INSERT INTO t SELECT value, randomblob(3000), value % 97 FROM generate_series(1, 5000);",
    );
    sqld
}

/// Cut a stream's answer after this many bytes: well inside a part of over 1,000 frames of
/// 4 KB, past its first transaction's commit when the part holds one.
pub(crate) const MID_PART: usize = 2_500_000;

/// Clones of a long log through streams of which some break (mid-part, or dropped unanswered)
/// are exact, whichever part breaks: the middle ones, the last, the first, two of them. The
/// batches take over from the last commit the parts before the broken one brought, nothing is
/// left aside in the state directory, and streams stay on (none was silent).
#[test]
fn clones_whose_streams_break_in_any_part_are_exact() {
    let sqld = long_log();
    let plans: &[&[(usize, Verdict)]] = &[
        &[(1, Verdict::RelayCut(MID_PART))],
        &[(2, Verdict::Drop)],
        &[(3, Verdict::RelayCut(MID_PART))],
        &[(0, Verdict::RelayCut(MID_PART))],
        &[(1, Verdict::Drop), (3, Verdict::RelayCut(MID_PART))],
        &[(2, Verdict::RelayCut(300))],
    ];
    let faults = StreamFaults::start(&sqld, &[]);
    for plan in plans {
        faults.set_plan(plan);
        let dir = tempdir();
        ok(&sqld, dir.path(), &["init", "--url", &faults.proxy.url]);
        let seen = faults.seen();
        let requests = faults.proxy.requests();
        assert_eq!(seen.len(), STREAMS, "{plan:?}: {requests:#?}");
        assert!(
            requests.iter().any(|r| r.contains("/BatchLogEntries")),
            "{plan:?}: the batches read nothing: {seen:?} {requests:#?}"
        );
        let r = exact_and_tidy(&sqld, dir.path());
        assert_eq!(r["path"], "log", "{plan:?}: {r}");
        assert_eq!(r["streams"]["on"], true, "{plan:?}: {r}");
    }
    // One stream of the four held on the way (passed on only once whole, which a stream never
    // is): exact too, and streams are off from then on.
    faults.set_plan(&[(2, Verdict::Forward)]);
    let dir = tempdir();
    ok(&sqld, dir.path(), &["init", "--url", &faults.proxy.url]);
    let r = exact_and_tidy(&sqld, dir.path());
    assert_eq!(r["streams"]["on"], false, "{r}");
}

/// A pull of a long stretch whose middle stream breaks, and then another whose last one is
/// dropped: the spool is applied exactly, the working copy equals the remote.
#[test]
fn pulls_whose_streams_break_are_exact() {
    let sqld = long_log();
    let faults = StreamFaults::start(&sqld, &[]);
    let dir = tempdir();
    ok(&sqld, dir.path(), &["init", "--url", &faults.proxy.url]);
    exact(&sqld, dir.path());
    for (round, plan) in [
        &[(1, Verdict::RelayCut(MID_PART))][..],
        &[(3, Verdict::Drop), (2, Verdict::RelayCut(MID_PART))][..],
    ]
    .into_iter()
    .enumerate()
    {
        sqld.exec(&format!(
            "UPDATE t SET v = randomblob(3000), n = n + {round} + 1 WHERE id % 7 != {round};"
        ));
        faults.set_plan(plan);
        let read = pull(&sqld, dir.path());
        assert!(read.contains("the log"), "{read}");
        assert_eq!(faults.seen().len(), STREAMS, "{plan:?}");
        exact(&sqld, dir.path());
        nothing_left_aside(dir.path());
    }
}

/// A clone of a compacted log followed by a long stretch, whose streams after the snapshots
/// break: exact, with the stretch left to the batches from the last whole part.
#[test]
fn a_clone_whose_streams_after_the_snapshots_break_is_exact() {
    let (sqld, compacted) = compacted_then_long_tail();
    let faults = StreamFaults::start(&sqld, &[]);
    for plan in [
        &[(1, Verdict::RelayCut(MID_PART / 4))][..],
        &[(0, Verdict::Drop), (2, Verdict::RelayCut(MID_PART / 4))][..],
    ] {
        faults.set_plan(plan);
        let dir = tempdir();
        ok(&sqld, dir.path(), &["init", "--url", &faults.proxy.url]);
        assert_eq!(snapshot_files(&sqld, "snapshots"), compacted);
        read_snapshots_then_streams(&faults);
        exact(&sqld, dir.path());
        nothing_left_aside(dir.path());
    }
}

/// Since the plan was set, a snapshot was read, and a stretch in streams.
fn read_snapshots_then_streams(faults: &StreamFaults) {
    let requests = faults.proxy.requests();
    assert!(
        requests.iter().any(|r| r.ends_with("Log/Snapshot")),
        "{requests:#?}"
    );
    assert_eq!(faults.seen().len(), STREAMS, "{requests:#?}");
}

/// A workspace away while the log grew past a compaction and then a long stretch after it:
/// its pull reads the snapshots, then the stretch in streams, one of which breaks. Exact; a
/// push and a pull after it too.
#[test]
fn a_pull_after_a_long_absence_across_snapshots_and_a_broken_stream_is_exact() {
    let sqld = Sqld::start_with_args(&["--max-log-size", "16"]);
    sqld.exec("CREATE TABLE t(id INTEGER PRIMARY KEY, v BLOB); INSERT INTO t VALUES (0, x'00');");
    let faults = StreamFaults::start(&sqld, &[]);
    let dir = tempdir();
    ok(&sqld, dir.path(), &["init", "--url", &faults.proxy.url]);
    grow_past_a_compaction_then_long_tail(&sqld);
    faults.set_plan(&[(2, Verdict::RelayCut(MID_PART / 4))]);
    // A snapshot rewrites every page: the pull reads whole tables of the mirror.
    let read = pull(&sqld, dir.path());
    assert!(read.contains("mirror"), "{read}");
    read_snapshots_then_streams(&faults);
    exact(&sqld, dir.path());
    nothing_left_aside(dir.path());
    edit(dir.path(), "UPDATE t SET v = x'01' WHERE id % 100 = 0;");
    ok(&sqld, dir.path(), &["push"]);
    sqld.exec("UPDATE t SET v = x'02' WHERE id % 100 = 1;");
    pull(&sqld, dir.path());
    exact(&sqld, dir.path());
}

/// Whether a state directory being built by init in `dir` holds a file named `file`.
fn init_aside_holds(dir: &Path, file: &str) -> bool {
    std::fs::read_dir(dir).is_ok_and(|entries| {
        entries.flatten().any(|e| {
            e.file_name().to_string_lossy().starts_with(".tursync.init")
                && e.path().join(file).exists()
        })
    })
}

/// `init` killed (SIGKILL) as soon as its built mirror became the base (`base.db` appears in
/// the state directory it builds), or as the mirror of page 1 is written beside it: `init`
/// again, without `--force`, works and is exact, nothing of the killed one is left, and a push
/// and a pull after it are exact.
#[test]
fn init_killed_as_the_built_mirror_becomes_the_base_is_done_again() {
    let sqld = long_log();
    for (round, mark) in ["base.db", "mirror.own", "mirror.db.new", "base.db"]
        .into_iter()
        .enumerate()
    {
        let dir = tempdir();
        let mut child = sqld
            .tursync(dir.path())
            .args(["init", "--url", &sqld.url])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut caught = false;
        while child.try_wait().unwrap().is_none() && Instant::now() < deadline {
            if init_aside_holds(dir.path(), mark) {
                // The last round lets the rename and a little more happen.
                if round == 3 {
                    std::thread::sleep(Duration::from_micros(300));
                }
                let _ = child.kill();
                caught = true;
                break;
            }
        }
        let _ = child.wait();
        // On a loaded machine the init may end before the kill lands (or before the mark is
        // seen): then there is nothing to do again, and the rest holds of the finished one.
        let finished = dir.path().join(".tursync").exists();
        eprintln!("round {round}: killed at {mark}: {caught}, finished first: {finished}");
        if !finished {
            ok(&sqld, dir.path(), &["init", "--url", &sqld.url]);
        }
        exact(&sqld, dir.path());
        let names: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        let mut sorted = names.clone();
        sorted.sort();
        assert_eq!(sorted, [".tursync", "working_copy.db"], "{names:?}");
        nothing_left_aside(dir.path());
        ok(&sqld, dir.path(), &["status", "--json"]);
        edit(
            dir.path(),
            &format!("UPDATE t SET n = -{round} WHERE id % 50 = 0;"),
        );
        ok(&sqld, dir.path(), &["push"]);
        sqld.exec(&format!(
            "UPDATE t SET v = randomblob(3000) WHERE id % 9 = {round};"
        ));
        pull(&sqld, dir.path());
        exact(&sqld, dir.path());
    }
}

/// A Turso Sync init takes the same path: its built mirror becomes the base, and the mirror
/// keeps page 1 alone. `verify` finds nothing wrong; a pull that writes pages, a push, a
/// damaged `mirror.own` and a pull after it all end with the server's rows.
#[test]
fn a_turso_sync_init_shares_the_base_and_stays_exact() {
    let server = TursoSync::start();
    server.exec(&[
        "CREATE TABLE t(id INTEGER PRIMARY KEY, v BLOB)",
        "INSERT INTO t SELECT value, randomblob(3000) FROM generate_series(1, 600)",
    ]);
    let dir = tempdir();
    init_url(&server.url, dir.path());
    let state = dir.path().join(".tursync");
    assert!(
        state.join("mirror.own").exists(),
        "{}",
        state_listing(dir.path())
    );
    assert!(
        on_disk(&state.join("mirror.db")) <= 8192,
        "{}",
        state_listing(dir.path())
    );
    let same = |dir: &Path| server.assert_table_eq(&wc(dir), "SELECT id, v FROM t ORDER BY id");
    same(dir.path());
    let verify = |dir: &Path| {
        let out = run_ok(tursync(dir).args(["verify", "--json"]));
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        for part in [&v["base"], &v["working_copy"], &v["mirror"]["file"]] {
            assert_eq!(part["ok"], true, "{v}");
        }
    };
    verify(dir.path());
    server.exec(&["UPDATE t SET v = randomblob(3000) WHERE id % 3 = 0"]);
    run_ok(tursync(dir.path()).args(["pull"]));
    same(dir.path());
    edit(dir.path(), "UPDATE t SET v = x'01' WHERE id % 10 = 0;");
    run_ok(tursync(dir.path()).args(["push"]));
    same(dir.path());
    std::fs::write(dir.path().join(".tursync/mirror.own"), b"garbage").unwrap();
    server.exec(&["UPDATE t SET v = randomblob(3000) WHERE id % 7 = 0"]);
    run_ok(tursync(dir.path()).args(["pull"]));
    same(dir.path());
    verify(dir.path());
}
