//! The records of a push or a pull in flight, which the base may lag behind.
//! `.tursync/pushed.rec`: the row changes being pushed and the stamp of the base they apply to,
//! written before anything is sent. And its twin for a pull, `.tursync/pulled.rec`
//! ([`Workspace::finish_interrupted_pull`]).
//!
//! A push killed after the remote's COMMIT but before the base moved leaves the base behind the
//! remote; if the app then edits a pushed row, the next pull would take the remote's copy of
//! that row (our own push) for a teammate's change and report a false conflict. The record lets
//! the pull recognize those rows ([`crate::merge::strip_our_push`]).
//!
//! The base moves in place, in one SQLite transaction, and only then is the record removed. So
//! the record speaks for the base it names by its stamp ([`crate::pages::Stamp`]: SQLite adds
//! one to the change counter of every transaction that writes the file): a record whose stamp
//! is not the base's is of a push the base already took in, and counts for nothing.
//!
//! ```text
//! tursync push record 1\n
//! {"base":{...stamp...},"tables":[{"name":"t","columns":["id","v"],"key":[0],"changes":2}]}\n
//! <the 2 changes of t in changeset's binary encoding> ...
//! ```
//!
//! Writing it costs what is pushed, not the size of the base.

use std::io::{BufRead, BufReader, BufWriter, Write};
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use rusqlite::{Connection, OptionalExtension};

use crate::changeset::{read_change, write_change, Changeset, RowChange, SchemaChange, TableDiff};
use crate::durable::{aside_name, remove_aside, sync_dir, Aside};
use crate::pages::Stamp;
use crate::value::Value;
use crate::workspace::Workspace;
use crate::{Context, Error, Result};

/// The two records: of a push under way, and of a pull whose working copy may have committed
/// before the base took their changes (`pulled.rec`, [`Workspace::finish_interrupted_pull`]).
#[derive(Clone, Copy)]
enum Kind {
    Push,
    Pull,
}

impl Kind {
    fn file(self) -> &'static str {
        match self {
            Kind::Push => "pushed.rec",
            Kind::Pull => "pulled.rec",
        }
    }

    fn magic(self) -> &'static str {
        match self {
            Kind::Push => "tursync push record 1",
            Kind::Pull => "tursync pull record 1",
        }
    }

    fn what(self) -> &'static str {
        match self {
            Kind::Push => "the record of a push",
            Kind::Pull => "the record of a pull",
        }
    }
}

#[derive(Serialize, Deserialize)]
struct Head {
    /// The base the changes apply to.
    base: Stamp,
    tables: Vec<TableHead>,
    /// For a pull whose their side changed the schema: no rows are recorded (they are of the
    /// new schema, which the base has not), only where theirs is kept.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    theirs: Option<TheirsKept>,
}

/// Where a pull that brings schema changes keeps the remote's database as it read it
/// (theirs), for the next run to read their changes from again if it is killed after the
/// working copy's commit and before the base took them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "in", rename_all = "snake_case")]
pub(crate) enum TheirsKept {
    /// The mirror, while it is at this frame of this log (a spool the kill left is applied
    /// first, which brings it there).
    Mirror { log_id: String, frame_no: u64 },
    /// `.tursync/pulled.db`, the copy a pull over SQL downloaded, which becomes the base.
    Download,
}

/// The file name, in the state directory, of the copy a pull over SQL downloaded
/// ([`TheirsKept::Download`]).
pub(crate) const DOWNLOAD: &str = "pulled.db";

#[derive(Serialize, Deserialize)]
struct TableHead {
    name: String,
    columns: Vec<String>,
    key: Vec<usize>,
    changes: u64,
}

impl Workspace {
    fn record_path(&self, kind: Kind) -> PathBuf {
        self.state_dir().join(kind.file())
    }

    /// The base's stamp, in a read transaction of its own.
    fn base_stamp(&self) -> Result<Stamp> {
        let base = self.open_base()?;
        crate::pages::stamp(&base)
            .during("reading the stamp of the base", self.base_path().display())?
            .ok_or_else(|| {
                Error::Workspace(format!(
                    "the base {} has no stamp (is it in WAL mode?); run `tursync verify`",
                    self.base_path().display()
                ))
            })
    }

    /// The record's head, if there is a record and it is of the base as it is now.
    fn live_record(&self, kind: Kind) -> Result<Option<Head>> {
        let path = self.record_path(kind);
        let file = match std::fs::File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => {
                return Err(e).during(
                    "opening",
                    format_args!("{} {}", kind.what(), path.display()),
                )
            }
        };
        let head = read_head(&mut BufReader::new(file), kind).during(
            "reading",
            format_args!("{} {}", kind.what(), path.display()),
        )?;
        Ok((head.base == self.base_stamp()?).then_some(head))
    }

    /// True when a push was interrupted and may have committed without moving the base.
    pub fn push_interrupted(&self) -> Result<bool> {
        Ok(self.live_record(Kind::Push)?.is_some())
    }

    /// Records the push of `cs` before it starts. Returns false, and keeps the older record,
    /// when an interrupted push left one: the base is still behind that push, and `cs` (base →
    /// working copy) holds its changes too.
    pub fn record_push_start(&self, cs: &Changeset) -> Result<bool> {
        if self.push_interrupted()? {
            return Ok(false);
        }
        self.write_record(Kind::Push, cs, None)?;
        Ok(true)
    }

    /// Writes `cs`'s row changes and the base's stamp, durably, as the record of `kind`; with
    /// `theirs`, no rows, only where theirs is kept.
    fn write_record(&self, kind: Kind, cs: &Changeset, theirs: Option<TheirsKept>) -> Result<()> {
        let path = self.record_path(kind);
        let tmp = aside_name(&self.state_dir(), kind.file());
        let _guard = Aside {
            paths: vec![tmp.clone()],
        };
        let tables = if theirs.is_some() {
            &[][..]
        } else {
            &cs.tables[..]
        };
        let head = Head {
            base: self.base_stamp()?,
            tables: tables
                .iter()
                .map(|t| TableHead {
                    name: t.table.name.clone(),
                    columns: t.columns.clone(),
                    key: t.key.clone(),
                    changes: t.changes.len() as u64,
                })
                .collect(),
            theirs,
        };
        let write = || -> Result<()> {
            let file = std::fs::File::create(&tmp)?;
            let mut w = BufWriter::with_capacity(1 << 16, file);
            writeln!(w, "{}", kind.magic())?;
            serde_json::to_writer(&mut w, &head)?;
            writeln!(w)?;
            for t in tables {
                for ch in &t.changes {
                    write_change(&mut w, ch)?;
                }
            }
            let file = w.into_inner().map_err(|e| e.into_error())?;
            file.sync_all()?;
            Ok(())
        };
        write().during("writing", format_args!("{} {}", kind.what(), tmp.display()))?;
        std::fs::rename(&tmp, &path).during("renaming into place", path.display())?;
        sync_dir(&self.state_dir())
    }

    /// What the interrupted push sent, as a changeset from the base, if one was interrupted.
    pub fn interrupted_push(&self) -> Result<Option<Changeset>> {
        self.read_record(Kind::Push)
    }

    /// The record of `kind` as a changeset from the base, if it is of the base as it is now.
    fn read_record(&self, kind: Kind) -> Result<Option<Changeset>> {
        if self.live_record(kind)?.is_none() {
            return Ok(None);
        }
        self.record_rows(kind).map(Some)
    }

    /// The row changes of the record of `kind`, as a changeset from the base; the caller has
    /// found the record to be of the base as it is now ([`Workspace::live_record`]).
    fn record_rows(&self, kind: Kind) -> Result<Changeset> {
        let path = self.record_path(kind);
        let schema = crate::schema::load(&self.open_base()?)
            .during("reading the schema of the base", self.base_path().display())?;
        let read = || -> Result<Changeset> {
            let mut r = BufReader::new(std::fs::File::open(&path)?);
            let head = read_head(&mut r, kind)?;
            let mut cs = Changeset::default();
            for t in head.tables {
                let mut changes = Vec::new();
                for _ in 0..t.changes {
                    let mut ch = RowChange::Insert(Vec::new());
                    if !read_change(&mut r, &mut ch)? {
                        return Err(damaged("it ends before its last change"));
                    }
                    changes.push(ch);
                }
                // A table the base no longer has (dropped since) has nothing to recognize.
                let Some(table) = schema.tables.iter().find(|s| s.name == t.name) else {
                    continue;
                };
                cs.tables.push(TableDiff {
                    table: table.clone(),
                    columns: t.columns,
                    key: t.key,
                    unique: Vec::new(),
                    changes,
                });
            }
            Ok(cs)
        };
        read().during(
            "reading",
            format_args!("{} {}", kind.what(), path.display()),
        )
    }

    /// Records, before the working copy commits a pull's merge, what the base is to take right
    /// after ([`Workspace::finish_interrupted_pull`]): the row changes of `theirs`, or where
    /// theirs is `kept`, to be read from there again: when their side changed the schema
    /// (their rows are of a schema the base has not yet), and always for a download, which
    /// becomes the base by a rename (a record of rows would then name a base that is gone, by a
    /// stamp that tells states of one file apart, not one file from another).
    pub(crate) fn record_pull_start(&self, theirs: &Changeset, kept: TheirsKept) -> Result<()> {
        let kept = match kept {
            TheirsKept::Download => Some(kept),
            TheirsKept::Mirror { .. } => (!theirs.schema.is_empty()).then_some(kept),
        };
        self.write_record(Kind::Pull, theirs, kept)
    }

    /// Finishes the base's part of a pull killed after its working copy's commit may have landed
    /// and before the base took their changes (`pulled.rec`, [`Workspace::record_pull_start`]).
    /// Left as it is, the base would be one pull behind the working copy: their rows would read as
    /// our edits, and a teammate who later set such a row back to the base's value would see the
    /// next pull keep the old copy and the push write it back over theirs.
    ///
    /// Whether the commit landed is read off the working copy, row by row: the base takes each of
    /// their changes the working copy holds exactly (a row with their values, or gone for their
    /// delete). A change it does not hold (the commit never landed, or the app edited that row
    /// since) stays out of the base, so it is compared again by the next pull, never overwritten.
    ///
    /// ```text
    /// record: id 1 b x'00' -> R     working copy: id 1 b = R   -> the base takes R
    /// record: id 1 b x'00' -> R     working copy: id 1 b = x'00' (no commit) -> the base keeps x'00'
    /// ```
    ///
    /// A pull that brought schema changes recorded where theirs is kept instead
    /// ([`TheirsKept`]): their changes are diffed from there again, and the base takes them
    /// only if the working copy holds every object their schema changes touched exactly as
    /// theirs defines it (their rows then as above). Otherwise (the commit never landed; the
    /// merge kept another definition; theirs is no longer kept) the base stays as it is, and
    /// the next pull compares again.
    pub(crate) fn finish_interrupted_pull(&self) -> Result<()> {
        let download = self.state_dir().join(DOWNLOAD);
        if !self.record_path(Kind::Pull).exists() {
            if download.exists() {
                remove_aside(&download);
            }
            return Ok(());
        }
        let Some(head) = self.live_record(Kind::Pull)? else {
            // One of a base that already moved on.
            return self.drop_pull_record();
        };
        let work = self.open_working_copy(true)?;
        let theirs = match &head.theirs {
            None => Some(self.record_rows(Kind::Pull)?),
            Some(kept) => self.kept_theirs(kept, &work)?,
        };
        let Some(mut theirs) = theirs else {
            drop(work);
            return self.drop_pull_record();
        };
        for t in &mut theirs.tables {
            let changes = std::mem::take(&mut t.changes);
            let mut kept = Vec::with_capacity(changes.len());
            for c in changes {
                if holds(&work, t, &c).during(
                    "reading which of the pull's changes landed in",
                    self.db_path().display(),
                )? {
                    kept.push(c);
                }
            }
            t.changes = kept;
        }
        drop(work);
        self.update_base(|conn| theirs.apply(conn)).during(
            "applying the record of a pull to",
            self.base_path().display(),
        )?;
        self.drop_pull_record()
    }

    /// Their changes since the base, read again from where a pull `kept` theirs, if the working
    /// copy holds their schema changes: `None` when it does not, or theirs is no longer kept.
    /// A copy that cannot be read (damaged, half there) counts as not kept: the base then
    /// stays as it is, as when nothing was recorded, rather than every later command failing.
    fn kept_theirs(&self, kept: &TheirsKept, work: &Connection) -> Result<Option<Changeset>> {
        let theirs_db = match kept {
            TheirsKept::Mirror { log_id, frame_no } => {
                let mirror = self.mirror();
                if mirror.recover()?.is_err() {
                    return Ok(None);
                }
                let at = mirror.health()?.and_then(|h| h.ok());
                if at.as_ref().map(|s| (&s.log_id, s.frame_no)) != Some((log_id, Some(*frame_no))) {
                    return Ok(None);
                }
                crate::mirror::open_immutable(&mirror.db_path())
            }
            TheirsKept::Download => {
                let path = self.state_dir().join(DOWNLOAD);
                if !path.exists() {
                    return Ok(None);
                }
                crate::workspace::open_snapshot(&path)
            }
        };
        let base = self.open_base()?;
        let read = theirs_db.and_then(|theirs_db| {
            let theirs = crate::diff::diff_remote(&base, &theirs_db, None)?;
            Ok(holds_schema(work, &theirs_db, &theirs)?.then_some(theirs))
        });
        Ok(read.unwrap_or(None))
    }

    /// Forgets the record of a pull once the base has taken its changes (or none landed), and
    /// the download it kept.
    pub(crate) fn drop_pull_record(&self) -> Result<()> {
        remove_aside(&self.record_path(Kind::Pull));
        remove_aside(&self.state_dir().join(DOWNLOAD));
        sync_dir(&self.state_dir())
    }

    /// Forgets the record once the base has caught up with the remote (or nothing was sent).
    pub fn drop_push_record(&self) -> Result<()> {
        remove_aside(&self.record_path(Kind::Push));
        sync_dir(&self.state_dir())
    }
}

/// Whether the working copy holds the schema changes of `theirs` as `theirs_db` has them: every
/// object a change names (under its new name and its old one) has the same type and SQL in the
/// working copy's `sqlite_schema` as in theirs, or is missing from both.
///
/// ```text
/// theirs: ColumnsAdded t   theirs_db: t = CREATE TABLE t(a, c)   work: t = CREATE TABLE t(a, c) -> holds
/// theirs: ColumnsAdded t   theirs_db: t = CREATE TABLE t(a, c)   work: t = CREATE TABLE t(a)    -> not
/// ```
fn holds_schema(work: &Connection, theirs_db: &Connection, theirs: &Changeset) -> Result<bool> {
    let q = "SELECT type, sql FROM sqlite_schema WHERE name = ?1";
    let read = |conn: &Connection, name: &str| -> Result<Vec<(String, Option<String>)>> {
        let mut st = conn.prepare_cached(q)?;
        let rows = st.query_map([name], |r| Ok((r.get(0)?, r.get(1)?)))?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    };
    for change in &theirs.schema {
        for name in schema_names(change) {
            if read(work, name)? != read(theirs_db, name)? {
                return Ok(false);
            }
        }
    }
    Ok(true)
}

/// The objects a schema change names: the table or object, and a renamed table's old name.
fn schema_names(change: &SchemaChange) -> Vec<&str> {
    match change {
        SchemaChange::TableAdded { name, .. }
        | SchemaChange::TableDropped { name, .. }
        | SchemaChange::ObjectAdded { name, .. }
        | SchemaChange::ObjectDropped { name, .. }
        | SchemaChange::ObjectChanged { name, .. } => vec![name],
        SchemaChange::ColumnsAdded { table, .. } => vec![table],
        SchemaChange::TableRebuilt { name, old_name, .. } => vec![name, old_name],
    }
}

/// Whether the working copy holds `change` as it ends: the row with exactly its values, or no
/// row under its key for a delete. A table or column the working copy lacks holds nothing.
fn holds(work: &Connection, t: &TableDiff, change: &RowChange) -> Result<bool> {
    let cols: Vec<String> = t.columns.iter().map(|c| crate::sql::ident(c)).collect();
    let key: Vec<&str> = t.key_names();
    let q = crate::sql::select(&t.table.name, &cols.join(", "), &key);
    let args: Vec<Value> = t.key_of(change.row()).into_iter().cloned().collect();
    let mut st = match work.prepare_cached(&q) {
        Ok(st) => st,
        Err(_) => return Ok(false),
    };
    let found: Option<Vec<Value>> = st
        .query_row(rusqlite::params_from_iter(&args), |r| {
            (0..cols.len())
                .map(|i| r.get_ref(i).map(Value::from_ref))
                .collect()
        })
        .optional()?;
    let locator = t.table.locator();
    let same = |a: &[Value], b: &[Value]| (0..a.len()).all(|i| Some(i) == locator || a[i] == b[i]);
    Ok(match (change, found) {
        (RowChange::Delete(_), found) => found.is_none(),
        (_, Some(row)) => same(&row, change.row()),
        (_, None) => false,
    })
}

fn read_head(r: &mut impl BufRead, kind: Kind) -> Result<Head> {
    let mut line = String::new();
    r.read_line(&mut line)?;
    if line.trim_end() != kind.magic() {
        return Err(damaged("it does not start as such a record"));
    }
    line.clear();
    r.read_line(&mut line)?;
    Ok(serde_json::from_str(&line)?)
}

fn damaged(why: &str) -> Error {
    Error::Workspace(format!(
        "{why}: it is damaged; delete it and run `tursync sync` (a pull recognizes what landed by its values)"
    ))
}
