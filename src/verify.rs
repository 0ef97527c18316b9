//! `tursync verify`: whether the working copy and the base are intact SQLite files, and
//! whether the base still equals the remote at the recorded sync point.
//!
//! This is what a user runs when something looks wrong. It reads everything: SQLite's
//! `integrity_check` of both files, then the whole remote, diffed against the base. The remote
//! cannot be read as it was at an older point, so the comparison is conclusive only when the
//! remote has not moved since the last sync (its replication index before and after the read
//! equals the recorded one); otherwise the differences are reported as not yet pulled.
//! The mirror of the replication log, when there is one, gets the same checks against the same
//! read of the remote, conclusive when the remote is at the mirror's frame.
//!
//! `verify --repair` then mends what it found damaged, or drifted, without a fresh working
//! copy: the read of the remote becomes the base, and the mirror goes (the next pull reads it
//! again from the log). The working copy is never written. When the remote stood at the sync
//! point throughout the read, the copy is exactly what the base should be, so every difference
//! of the working copy from it is ours, as before the damage. When it moved, the rows in which
//! the old base differs from the copy are others' changes not yet merged or the damage, and
//! which is not known: those rows are marked unsettled ([`crate::unsettled`]), each difference
//! of ours there a conflict until `--ours` or `--theirs` settles it, so nothing is overwritten
//! on a guess; a row the old base holds as the remote does is ours to push as before. An old
//! base too damaged to be read row by row marks every difference.
//!
//! ```text
//! base.db: row 1500 flipped      verify: exit 5, "run `tursync verify --repair`"
//! verify --repair, remote at the sync point   -> base = the remote's copy, mirror removed
//! sync                                        -> our edit of row 1500 pushed
//! ```

use std::fmt;
use std::io::Write;
use std::path::PathBuf;

use serde::ser::{SerializeMap, Serializer};
use serde::Serialize;

use crate::changeset::Changeset;
use crate::clone::FetchOptions;
use crate::diff;
use crate::mirror::open_immutable;
use crate::progress::Progress;
use crate::remote::Remote;
use crate::report::count;
use crate::unsettled::Unsettled;
use crate::workspace::{open_snapshot, RemoteCopy, SyncState, Workspace};
use crate::{Context, Result};

/// What `PRAGMA integrity_check` said of one file: no problems means intact.
#[derive(Debug)]
pub struct Integrity {
    pub file: PathBuf,
    pub problems: Vec<String>,
}

impl Integrity {
    pub fn ok(&self) -> bool {
        self.problems.is_empty()
    }
}

/// How the base compares with the remote.
#[derive(Debug)]
pub enum RemoteCheck {
    /// The base is damaged, so it was not compared.
    Skipped,
    /// The remote is at the recorded sync point; `differences` is what the base lacks or holds
    /// beyond it: drift, when not empty.
    AtSyncPoint { differences: Changeset },
    /// The remote moved since the last sync (or no sync point was recorded): `differences`
    /// are others' changes not yet pulled, not drift.
    Moved { differences: Changeset },
}

/// The mirror: intact or not, and how it compares with the remote (at the mirror's frame).
#[derive(Debug, Serialize)]
pub struct MirrorCheck {
    #[serde(rename = "file")]
    pub integrity: Integrity,
    pub frame_no: Option<u64>,
    pub remote: RemoteCheck,
}

#[derive(Debug)]
pub struct VerifyReport {
    pub working_copy: Integrity,
    pub base: Integrity,
    pub remote: RemoteCheck,
    pub mirror: Option<MirrorCheck>,
    /// What `--repair` changed, when it changed anything.
    pub repaired: Option<Repaired>,
}

/// What `verify --repair` changed.
#[derive(Debug, Serialize)]
pub struct Repaired {
    /// The base was replaced by the remote's copy this run read (otherwise only the mirror
    /// was wrong).
    pub base: bool,
    /// Rows were marked unsettled, each difference of the working copy from the new base
    /// there a conflict until settled: the remote moved since the last sync, so whether the old
    /// base's differences from it were theirs or the damage is not known.
    pub unsettled: bool,
}

impl VerifyReport {
    /// Drift: the base differs from the remote at the very sync point it records, or the
    /// mirror from the remote at its frame.
    pub fn drift(&self) -> bool {
        let drifted = |r: &RemoteCheck| matches!(r, RemoteCheck::AtSyncPoint { differences } if !differences.is_empty());
        drifted(&self.remote) || self.mirror.as_ref().is_some_and(|m| drifted(&m.remote))
    }

    /// Whether every file checked is intact.
    pub fn intact(&self) -> bool {
        self.working_copy.ok()
            && self.base.ok()
            && self.mirror.as_ref().is_none_or(|m| m.integrity.ok())
    }

    /// 5 when a file is damaged, else 4 on drift, else 0; 0 once `--repair` mended the base
    /// and the mirror (the working copy it never mends).
    pub fn exit_code(&self) -> u8 {
        if !self.working_copy.ok() || (self.repaired.is_none() && !self.intact()) {
            5
        } else if self.repaired.is_none() && self.drift() {
            4
        } else {
            0
        }
    }

    /// The report for a person, one line per file and per comparison, the differences
    /// indented beneath; `remote` names the remote.
    pub fn write_text(
        &self,
        out: &mut dyn Write,
        remote: &dyn fmt::Display,
    ) -> std::io::Result<()> {
        let files = [("working copy", &self.working_copy), ("base", &self.base)];
        let mirror = self.mirror.as_ref().map(|m| ("mirror", &m.integrity));
        for (what, i) in files.into_iter().chain(mirror) {
            if i.ok() {
                writeln!(out, "{what} {}: intact", i.file.display())?;
            } else {
                writeln!(out, "{what} {}: DAMAGED", i.file.display())?;
                for p in i.problems.iter().take(20) {
                    writeln!(out, "  {p}")?;
                }
            }
        }
        let base = [
            "not compared, the base is damaged",
            "equals the base at the last sync point",
            "DRIFT: the remote has not moved since the last sync, yet differs from the base:",
            "moved since the last sync; not pulled yet:",
        ];
        self.remote
            .write_text(out, &format!("remote {remote}"), base, true)?;
        if let Some(m) = &self.mirror {
            let equal = format!("equals the remote at frame {:?}", m.frame_no);
            let mirror = [
                "not compared, it is damaged",
                &equal,
                "DRIFT: the remote is at the mirror's frame, yet differs from it:",
                "behind the remote; the next pull brings it up to date",
            ];
            m.remote.write_text(out, "mirror", mirror, false)?;
        }
        if let Some(r) = &self.repaired {
            let base = if r.base {
                "the base is the remote's copy read now"
            } else {
                "the base is intact and equals the remote"
            };
            writeln!(
                out,
                "repaired: {base}; the mirror was removed, the next pull reads it again from the log"
            )?;
        }
        Ok(())
    }

    /// What to do about a damaged file or drift, or after a repair, for a person.
    pub fn advice(&self) -> Option<&'static str> {
        match (&self.repaired, self.exit_code()) {
            // Only the app's own file is beyond a repair of ours.
            (_, 5) if !self.working_copy.ok() => Some("The working copy is damaged. Keep a copy of it and save what you can (`sqlite3 working_copy.db .recover`, `tursync diff --sql > mine.sql`), then make a fresh working copy with `tursync init --force` and apply what you saved."),
            (Some(r), _) if r.unsettled => Some("The remote moved since the last sync, so in the rows where the old base differed from it, whether the working copy's differences are yours is not known: `tursync sync` lists each as a conflict, and `tursync sync --ours` or `--theirs` settles them (nothing is overwritten before); the rest is pushed as before."),
            (Some(_), _) => Some("Run `tursync sync`: what the working copy holds beyond the remote is pushed as before."),
            (None, 5) => Some("The base or the mirror is damaged, so diffs and merges against it would be wrong. Run `tursync verify --repair`: it reads the remote again as the base and removes the mirror, leaving the working copy as it is; then `tursync sync`."),
            (None, 4) => Some("The base no longer matches the remote, so diffs and merges would be wrong. Run `tursync verify --repair`: it reads the remote again as the base, leaving the working copy as it is; then `tursync sync`."),
            _ => None,
        }
    }
}

impl RemoteCheck {
    /// One line for the comparison of `name` with the remote, saying `says[0]` when it was
    /// skipped, `says[1]` when equal, `says[2]` on drift and `says[3]` when the remote moved,
    /// the differences indented beneath (those of a remote that moved only when `list_moved`).
    fn write_text(
        &self,
        out: &mut dyn Write,
        name: &str,
        says: [&str; 4],
        list_moved: bool,
    ) -> std::io::Result<()> {
        let (said, listed) = match self {
            RemoteCheck::Skipped => (says[0], None),
            RemoteCheck::AtSyncPoint { differences } if differences.is_empty() => (says[1], None),
            RemoteCheck::AtSyncPoint { differences } => (says[2], Some(differences)),
            RemoteCheck::Moved { differences } => {
                (says[3], Some(differences).filter(|_| list_moved))
            }
        };
        writeln!(out, "{name}: {said}")?;
        for d in listed.map(differences).unwrap_or_default() {
            writeln!(out, "  {d}")?;
        }
        Ok(())
    }
}

/// `verify --json`: `{"working_copy": .., "base": .., "remote": .., "mirror": .., "repaired":
/// null, "exit_code": 0}` (`"repaired": {"base": true, "unsettled": false}` after a repair).
impl Serialize for VerifyReport {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(Some(6))?;
        m.serialize_entry("working_copy", &self.working_copy)?;
        m.serialize_entry("base", &self.base)?;
        m.serialize_entry("remote", &self.remote)?;
        m.serialize_entry("mirror", &self.mirror)?;
        m.serialize_entry("repaired", &self.repaired)?;
        m.serialize_entry("exit_code", &self.exit_code())?;
        m.end()
    }
}

/// `{"path": "/w/app.db", "ok": false, "problems": ["row 3 missing from index i"]}`.
impl Serialize for Integrity {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(Some(3))?;
        m.serialize_entry("path", &self.file.display().to_string())?;
        m.serialize_entry("ok", &self.ok())?;
        m.serialize_entry("problems", &self.problems)?;
        m.end()
    }
}

/// `{"compared": false}`, `{"compared": true, "moved": false, "drift": [..]}` or
/// `{"compared": true, "moved": true, "not_pulled": [..]}`.
impl Serialize for RemoteCheck {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(None)?;
        match self {
            RemoteCheck::Skipped => m.serialize_entry("compared", &false)?,
            RemoteCheck::AtSyncPoint { differences: cs } => {
                m.serialize_entry("compared", &true)?;
                m.serialize_entry("moved", &false)?;
                m.serialize_entry("drift", &differences(cs))?;
            }
            RemoteCheck::Moved { differences: cs } => {
                m.serialize_entry("compared", &true)?;
                m.serialize_entry("moved", &true)?;
                m.serialize_entry("not_pulled", &differences(cs))?;
            }
        }
        m.end()
    }
}

/// One way the base (or the mirror) and the remote differ, as the JSON lists it and the text
/// prints it.
#[derive(Debug, Serialize)]
#[serde(untagged)]
pub enum Difference<'a> {
    /// `{"schema": "+ table t"}`.
    Schema { schema: String },
    /// `{"table": "t", "only_on_remote": 1, "differ": 0, "only_in_base": 2}`.
    Table {
        table: &'a str,
        only_on_remote: usize,
        differ: usize,
        only_in_base: usize,
    },
    /// `{"sequence": "t", "base": 3, "remote": 5}`.
    Sequence {
        sequence: &'a str,
        base: Option<i64>,
        remote: Option<i64>,
    },
}

/// The differences a diff from the base (or the mirror) to the remote found: schema changes,
/// then tables whose rows differ, then counters.
pub fn differences(cs: &Changeset) -> Vec<Difference<'_>> {
    let schema = cs.listed_schema().map(|c| Difference::Schema {
        schema: c.describe(),
    });
    let tables = cs.tables.iter().filter(|t| !t.changes.is_empty()).map(|t| {
        let (only_on_remote, differ, only_in_base) = t.counts();
        Difference::Table {
            table: &t.table.name,
            only_on_remote,
            differ,
            only_in_base,
        }
    });
    let sequences = cs.sequences.iter().map(|q| Difference::Sequence {
        sequence: &q.table,
        base: q.old,
        remote: q.new,
    });
    schema.chain(tables).chain(sequences).collect()
}

impl fmt::Display for Difference<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Difference::Schema { schema } => f.write_str(schema),
            Difference::Table {
                table,
                only_on_remote,
                differ,
                only_in_base,
            } => write!(
                f,
                "table {table}: {} only on the remote, {} only in the base, {} differ",
                count(*only_on_remote, "row"),
                count(*only_in_base, "row"),
                count(*differ, "row")
            ),
            Difference::Sequence {
                sequence,
                base,
                remote,
            } => write!(
                f,
                "AUTOINCREMENT counter of {sequence}: base {base:?}, remote {remote:?}"
            ),
        }
    }
}

/// Checks the workspace, and with `repair` mends the base and the mirror when they are
/// damaged or drifted (see the module's documentation). Holds the workspace lock, so no push or
/// pull moves the base meanwhile; the working copy is read in one read transaction beside the
/// app.
pub fn verify(
    ws: &Workspace,
    remote: &Remote,
    opts: FetchOptions,
    progress: &Progress,
    repair: bool,
) -> Result<VerifyReport> {
    let _lock = ws.lock()?;
    let work = ws.open_working_copy(true)?;
    let working_copy = integrity(&work, ws.db_path())?;
    drop(work);
    let base_conn = ws.open_base()?;
    let base = integrity(&base_conn, ws.base_path())?;
    if !base.ok() && !repair {
        return Ok(VerifyReport {
            working_copy,
            base,
            remote: RemoteCheck::Skipped,
            mirror: None,
            repaired: None,
        });
    }
    let recorded = ws.sync_state()?.replication_index;
    let before = remote.replication_index()?;
    let copy = ws.download(remote, opts, progress)?;
    let after = remote.replication_index()?;
    let theirs = open_snapshot(&copy.path)?;
    // Whether the remote stood at `point` throughout the read.
    let stood_at = |point: Option<u64>| point.is_some() && before == point && after == point;
    let at_sync_point = stood_at(recorded);
    let at = |point: Option<u64>, differences| {
        if stood_at(point) {
            RemoteCheck::AtSyncPoint { differences }
        } else {
            RemoteCheck::Moved { differences }
        }
    };
    // A damaged base is not compared (its rows cannot be read as they were), nor is the mirror
    // that may share its pages.
    let remote_check = if base.ok() {
        let differences = diff::diff(&base_conn, &theirs, &diff::Filter::default()).during(
            "comparing the base with the remote's copy",
            copy.path.display(),
        )?;
        at(recorded, differences)
    } else {
        RemoteCheck::Skipped
    };
    let mirror = ws.mirror();
    // A mirror whose files disagree is not checked: the next pull drops it and reads the log
    // again.
    let mirror = match mirror.health()? {
        Some(Ok(state)) if base.ok() => {
            let conn = open_immutable(&mirror.db_path())?;
            let integrity = integrity(&conn, mirror.db_path())?;
            let remote = if integrity.ok() {
                at(
                    state.frame_no,
                    diff::diff(&conn, &theirs, &diff::Filter::default()).during(
                        "comparing the mirror with the remote's copy",
                        copy.path.display(),
                    )?,
                )
            } else {
                RemoteCheck::Skipped
            };
            Some(MirrorCheck {
                integrity,
                frame_no: state.frame_no,
                remote,
            })
        }
        _ => None,
    };
    let mut report = VerifyReport {
        working_copy,
        base,
        remote: remote_check,
        mirror,
        repaired: None,
    };
    if repair && report.working_copy.ok() && report.exit_code() != 0 {
        drop((base_conn, theirs));
        // The base stands: it was read whole and equals the remote at the sync point.
        let base_stands = report.base.ok()
            && matches!(&report.remote, RemoteCheck::AtSyncPoint { differences } if differences.is_empty());
        let marks = match &report.remote {
            _ if base_stands || at_sync_point => Unsettled::default(),
            RemoteCheck::Moved { differences } => Unsettled::of(differences),
            _ => Unsettled {
                everything: true,
                repaired: true,
                ..Unsettled::default()
            },
        };
        let index = if before == after { before } else { None };
        report.repaired = Some(mend(ws, (!base_stands).then_some(copy), marks, index)?);
    }
    Ok(report)
}

/// Removes the mirror and, given `copy` (the remote read by this run), makes it the base,
/// with `marks` marked unsettled first (so whatever a crash then leaves, they stay
/// conflicts). `index`: the remote's replication index the copy is of, if known. The caller
/// holds the workspace lock and no connection on the base.
fn mend(
    ws: &Workspace,
    copy: Option<RemoteCopy>,
    marks: Unsettled,
    index: Option<u64>,
) -> Result<Repaired> {
    let unsettled = !marks.is_empty();
    Unsettled::add(&ws.state_dir(), marks)?;
    // The base stands on no mirror once it goes.
    let state = ws.sync_state()?;
    ws.save_sync_state(&SyncState {
        base_at: None,
        base_stamp: None,
        ..state
    })?;
    ws.mirror().remove()?;
    let base = copy.is_some();
    if let Some(copy) = copy {
        ws.replace_base_with(&copy.path)?;
        // Records of a push or a pull the old base lagged behind: the remote's copy holds
        // whatever of them landed, and the working copy's differences from it are what is left.
        ws.drop_push_record()?;
        ws.drop_pull_record()?;
        let state = ws.sync_state()?;
        ws.save_sync_state(&SyncState {
            replication_index: index,
            ..state
        })?;
    }
    Ok(Repaired { base, unsettled })
}

/// `PRAGMA integrity_check` of `conn`'s database. A file too damaged to be checked at all is
/// a problem found, not a failure of the check.
fn integrity(conn: &rusqlite::Connection, file: PathBuf) -> Result<Integrity> {
    let run = || -> rusqlite::Result<Vec<String>> {
        conn.prepare("PRAGMA integrity_check")?
            .query_map([], |r| r.get::<_, String>(0))?
            .collect()
    };
    let problems = match run() {
        Ok(lines) if lines == ["ok"] => Vec::new(),
        Ok(lines) => lines,
        Err(rusqlite::Error::SqliteFailure(e, msg))
            if matches!(
                e.code,
                rusqlite::ErrorCode::DatabaseCorrupt | rusqlite::ErrorCode::NotADatabase
            ) || e.extended_code == rusqlite::ffi::SQLITE_IOERR_DATA =>
        {
            // A page of the mirror that does not match its sum (`page_sums`).
            if let Some(why) = crate::page_sums::take_damage(&file) {
                return Ok(Integrity {
                    file,
                    problems: vec![why],
                });
            }
            vec![msg.unwrap_or_else(|| e.to_string())]
        }
        Err(e) => return Err(e.into()),
    };
    Ok(Integrity { file, problems })
}
