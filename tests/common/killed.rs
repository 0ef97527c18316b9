//! Pulls killed at a chosen moment around their working copy's commit (a test hook holds them
//! there), and what the kill tests check afterwards.

use std::path::Path;
use std::process::Child;
use std::time::{Duration, Instant};

use super::{
    assert_nothing_pending, assert_same_database, base_copy, local_query, mirror_copy, text, Cell,
    Sqld,
};

/// Where a pull is killed: before its working copy's commit (its record written), or after
/// that commit (its record renamed `pulled.landed`) and before the base took their changes,
/// once `landed` (a query on the working copy answering one row `1`) says the commit is there.
/// `BeforeRename`: killed there too, then `pulled.landed` renamed back to `pulled.rec`, which
/// is what a kill between the commit and the rename leaves (or a power cut that lost the
/// rename): the next run must tell from the working copy whether the commit landed.
#[derive(Clone, Copy)]
pub enum Moment<'a> {
    Before,
    After(&'a str),
    BeforeRename(&'a str),
}

/// Runs `pull ARGS` in `dir` (over SQL when `sql_path`) and kills it (SIGKILL) at `moment`. A
/// record an earlier kill left may be there: for `Before`, the moment is when a record
/// different from that one is in place.
pub fn kill_pull_at(sqld: &Sqld, dir: &Path, args: &[&str], moment: Moment, sql_path: bool) {
    let rec = dir.join(".tursync/pulled.rec");
    // Renamed so right after the working copy's commit.
    let after_commit = dir.join(".tursync/pulled.landed");
    assert!(!after_commit.exists(), "a landed record is already there");
    let old = std::fs::read(&rec).ok();
    let (var, landed) = match moment {
        Moment::Before => ("TURSYNC_TEST_PULL_PAUSE_BEFORE_COMMIT_MS", None),
        Moment::After(q) | Moment::BeforeRename(q) => {
            ("TURSYNC_TEST_PULL_PAUSE_AFTER_COMMIT_MS", Some(q))
        }
    };
    let mut child = sqld
        .tursync_over(dir, "pull", sql_path)
        .args(args)
        .env(var, "60000")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let wc = dir.join("working_copy.db");
    let there = || match landed {
        None => std::fs::read(&rec)
            .ok()
            .is_some_and(|now| Some(&now) != old.as_ref()),
        Some(q) => after_commit.exists() && local_query(&wc, q) == [[Cell::Integer(1)]],
    };
    while !there() {
        if let Ok(Some(status)) = child.try_wait() {
            panic!("the pull {args:?} ended ({status}) before the moment to kill it");
        }
        assert!(
            Instant::now() < deadline,
            "the pull {args:?} never got there"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    kill(&mut child);
    if let Moment::BeforeRename(_) = moment {
        std::fs::rename(&after_commit, &rec).unwrap();
    }
}

pub fn kill(child: &mut Child) {
    child.kill().unwrap();
    child.wait().unwrap();
}

/// `tursync ARGS --json` in `dir` (over SQL when `sql_path`): its exit code and report (for
/// `sync`, which prints one per step, the one with conflicts, else the last). Output that is
/// not JSON comes back as a string, for the assertion to show.
pub fn json(
    sqld: &Sqld,
    dir: &Path,
    args: &[&str],
    sql_path: bool,
) -> (Option<i32>, serde_json::Value) {
    let out = sqld
        .tursync_over(dir, args[0], sql_path)
        .args(&args[1..])
        .arg("--json")
        .output()
        .unwrap();
    let reports: Result<Vec<serde_json::Value>, _> =
        serde_json::Deserializer::from_slice(&out.stdout)
            .into_iter()
            .collect();
    let report = match reports {
        Ok(reports) if !reports.is_empty() => reports
            .iter()
            .find(|r| r.get("conflicts").is_some())
            .or(reports.last())
            .cloned()
            .unwrap(),
        _ => serde_json::Value::String(text(&out)),
    };
    (out.status.code(), report)
}

/// Both sides hold the same database, nothing is pending or unsettled, and every database
/// file of the workspace (working copy, base, mirror) passes `PRAGMA integrity_check`.
pub fn settled(sqld: &Sqld, dir: &Path) {
    let wc = dir.join("working_copy.db");
    assert_same_database(sqld, &wc);
    assert_nothing_pending(dir);
    assert!(
        !dir.join(".tursync/unsettled.json").exists(),
        "marks are left after settling"
    );
    let base = base_copy(&wc, &dir.join("base-copy.db"));
    // Over SQL there is no mirror.
    let mirror = mirror_copy(&wc, &dir.join("mirror-copy.db"));
    for path in [Some(wc), Some(base), mirror].into_iter().flatten() {
        assert_eq!(
            local_query(&path, "PRAGMA integrity_check"),
            [[Cell::text("ok")]],
            "{}",
            path.display()
        );
    }
}
