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
use crate::workspace::{open_snapshot, Workspace};
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

    /// 5 when a file is damaged, else 4 on drift, else 0.
    pub fn exit_code(&self) -> u8 {
        if !self.intact() {
            5
        } else if self.drift() {
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
        Ok(())
    }

    /// What to do about a damaged file or drift, for a person.
    pub fn advice(&self) -> Option<&'static str> {
        match self.exit_code() {
            5 => Some("A file is damaged. Keep a copy of it, save what you can (`tursync diff --sql > mine.sql`, `sqlite3 working_copy.db .recover`), then make a fresh working copy with `tursync init --force`."),
            4 => Some("The base no longer matches the remote, so diffs and merges would be wrong. Save unpushed work (`tursync diff --sql > mine.sql`), then `tursync init --force` and re-apply it."),
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

/// `verify --json`: `{"working_copy": .., "base": .., "remote": .., "mirror": .., "exit_code": 0}`.
impl Serialize for VerifyReport {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(Some(5))?;
        m.serialize_entry("working_copy", &self.working_copy)?;
        m.serialize_entry("base", &self.base)?;
        m.serialize_entry("remote", &self.remote)?;
        m.serialize_entry("mirror", &self.mirror)?;
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

/// Checks the workspace. Holds the workspace lock, so no push or pull moves the base meanwhile;
/// the working copy is read in one read transaction beside the app.
pub fn verify(
    ws: &Workspace,
    remote: &Remote,
    opts: FetchOptions,
    progress: &Progress,
) -> Result<VerifyReport> {
    let _lock = ws.lock()?;
    let work = ws.open_working_copy(true)?;
    let working_copy = integrity(&work, ws.db_path())?;
    drop(work);
    let base_conn = ws.open_base()?;
    let base = integrity(&base_conn, ws.base_path())?;
    if !base.ok() {
        return Ok(VerifyReport {
            working_copy,
            base,
            remote: RemoteCheck::Skipped,
            mirror: None,
        });
    }
    let recorded = ws.sync_state()?.replication_index;
    let before = remote.replication_index()?;
    let copy = ws.download(remote, opts, progress)?;
    let after = remote.replication_index()?;
    let theirs = open_snapshot(&copy.path)?;
    let differences = diff::diff(&base_conn, &theirs, &diff::Filter::default()).during(
        "comparing the base with the remote's copy",
        copy.path.display(),
    )?;
    let at = |point: Option<u64>, differences| {
        if point.is_some() && before == point && after == point {
            RemoteCheck::AtSyncPoint { differences }
        } else {
            RemoteCheck::Moved { differences }
        }
    };
    let mirror = ws.mirror();
    // A mirror whose files disagree is not checked: the next pull drops it and reads the log
    // again.
    let mirror = match mirror.health()? {
        Some(Ok(state)) => {
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
    Ok(VerifyReport {
        working_copy,
        base,
        remote: at(recorded, differences),
        mirror,
    })
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
