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
//! A pull's record also holds the working copy under their keys before and after its merge
//! ([`Expected`]), and is renamed once the working copy's commit landed
//! ([`Workspace::pull_landed`]), so the next run knows, or can tell, whether it did.
//!
//! ```text
//! tursync push record 1\n
//! {"base":{...stamp...},"tables":[{"name":"t","columns":["id","v"],"key":[0],"changes":2}]}\n
//! <the 2 changes of t in changeset's binary encoding> ...
//!
//! tursync pull record 2\n
//! {"base":{...},"tables":[{"name":"t","columns":["id","v"],"key":[0],"changes":1,"expected":1}]}\n
//! <their 1 change of t> <the row under its key before the merge> <and after it>
//!   (each an insert of the row found, or a delete where there was none)
//! ```
//!
//! Writing it costs what is pushed, not the size of the base.

use std::io::{BufRead, BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use rusqlite::{Connection, OptionalExtension, Transaction, TransactionBehavior};

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
            Kind::Pull => "tursync pull record 2",
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
    /// For a pull: the schema objects their schema changes name, in the working copy before
    /// and after the merge applied.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    schema: Vec<SchemaEntry>,
    /// For a pull: the working copy's stamp under its write lock before the merge (`None` in
    /// WAL mode, which has none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    work_before: Option<Stamp>,
}

/// One schema object a pull's schema changes name, as the working copy held it under the
/// pull's write lock before its merge applied (`before`) and after (`after`): `None` when
/// there was no such object.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct SchemaEntry {
    name: String,
    before: Option<Definition>,
    after: Option<Definition>,
}

/// A schema object's `type` and `sql` in `sqlite_schema` (`sql` is NULL for an index SQLite
/// made for a constraint).
type Definition = (String, Option<String>);

/// The working copy under a pull's write lock, before its merge applies and again just
/// before its commit ([`Workspace::record_pull_start`]): its stamp before; per table of
/// theirs, the rows under the keys of their changes before and after (each an insert where
/// there is a row, their change's row in a delete where there is none), or `None` when the
/// working copy's table lacks their columns; and the schema objects their schema changes name.
/// A row the merge wrote reads differently before and after; the next run tells from these
/// whether a killed pull's commit landed ([`Workspace::finish_interrupted_pull`]).
#[derive(Default)]
pub(crate) struct Expected {
    work_before: Option<Stamp>,
    tables: Vec<Option<Around>>,
    schema: Vec<SchemaEntry>,
}

/// One table's rows under the keys of their changes, before and after the merge, and the
/// positions of their columns the working copy lacked at either time (never compared).
struct Around {
    before: Vec<RowChange>,
    after: Vec<RowChange>,
    missing: Vec<usize>,
}

impl Expected {
    /// The working copy as the merge finds it, under the write lock: completed by
    /// [`Expected::after`] once the merge applied.
    pub(crate) fn before(work: &Connection, theirs: &Changeset) -> Result<Expected> {
        let mut names: Vec<&str> = theirs.schema.iter().flat_map(SchemaChange::names).collect();
        names.sort_unstable();
        names.dedup();
        let schema = names
            .into_iter()
            .map(|name| {
                Ok(SchemaEntry {
                    name: name.to_owned(),
                    before: definition(work, name)?,
                    after: None,
                })
            })
            .collect::<Result<_>>()?;
        Ok(Expected {
            work_before: crate::pages::stamp(work)?,
            tables: rows_under_keys(work, theirs)?
                .into_iter()
                .map(|held| {
                    held.map(|h| Around {
                        before: h.rows,
                        after: Vec::new(),
                        missing: h.missing,
                    })
                })
                .collect(),
            schema,
        })
    }

    /// What the merge left in `work`, read after it applied `theirs`, inside its transaction.
    pub(crate) fn after(mut self, work: &Connection, theirs: &Changeset) -> Result<Expected> {
        for e in &mut self.schema {
            e.after = definition(work, &e.name)?;
        }
        for (t, after) in self.tables.iter_mut().zip(rows_under_keys(work, theirs)?) {
            *t = match (t.take(), after) {
                (Some(mut around), Some(after)) => {
                    around.after = after.rows;
                    around.missing.extend(after.missing);
                    around.missing.sort_unstable();
                    around.missing.dedup();
                    Some(around)
                }
                _ => None,
            };
        }
        Ok(self)
    }
}

/// Per table of `theirs`, the rows `conn` holds under the keys of their changes, with the
/// positions of their columns it lacks ([`Reader`]), or `None` for a table it cannot read.
fn rows_under_keys(conn: &Connection, theirs: &Changeset) -> Result<Vec<Option<Held>>> {
    let mut tables = Vec::with_capacity(theirs.tables.len());
    for t in &theirs.tables {
        let Some(reader) = Reader::new(conn, &t.table.name, &t.columns, &t.key)? else {
            tables.push(None);
            continue;
        };
        tables.push(Some(reader.held(
            conn,
            &t.key,
            t.changes.iter().map(RowChange::row),
        )?));
    }
    Ok(tables)
}

/// Rows of one table read under keys: each an insert where there is a row, a delete (of the
/// key's change's row) where there is none; `missing`: positions of the columns the table
/// lacks, read as NULL and never compared.
struct Held {
    rows: Vec<RowChange>,
    missing: Vec<usize>,
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

/// The name `pulled.rec` takes once the working copy's commit landed ([`Workspace::pull_landed`]).
const LANDED: &str = "pulled.landed";

/// The file name, in the state directory, of the copy a pull over SQL downloaded
/// ([`TheirsKept::Download`]).
pub(crate) const DOWNLOAD: &str = "pulled.db";

/// A record read whole: its head, then per table its changes and (for a pull) the rows its
/// merge left ([`Expected`]; `None` for a table that could not be read).
struct Body {
    head: Head,
    changes: Vec<Vec<RowChange>>,
    /// Per table, the rows before and after the merge ([`Expected`]).
    expected: Vec<Option<Around>>,
}

#[derive(Serialize, Deserialize)]
struct TableHead {
    name: String,
    columns: Vec<String>,
    key: Vec<usize>,
    changes: u64,
    /// For a pull: how many rows of [`Expected`] follow all the changes, or `None` when the
    /// working copy's table could not be read with these columns.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    expected: Option<u64>,
    /// For a pull: positions of the columns the working copy lacked before or after the merge.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    missing: Vec<usize>,
}

impl Workspace {
    fn record_path(&self, kind: Kind) -> PathBuf {
        self.state_dir().join(kind.file())
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
        self.write_record(Kind::Push, cs, None, Expected::default())?;
        Ok(true)
    }

    /// Writes `cs`'s row changes and the base's stamp, durably, as the record of `kind`; with
    /// `theirs`, not their rows, only where theirs is kept; and what a pull's merge left in the
    /// working copy (`expected`, empty for a push).
    fn write_record(
        &self,
        kind: Kind,
        cs: &Changeset,
        theirs: Option<TheirsKept>,
        expected: Expected,
    ) -> Result<()> {
        let path = self.record_path(kind);
        let tmp = aside_name(&self.state_dir(), kind.file());
        let _guard = Aside {
            paths: vec![tmp.clone()],
        };
        let rows_kept = theirs.is_none();
        let Expected {
            work_before,
            tables: expected_rows,
            schema,
        } = expected;
        let head = Head {
            base: self.base_stamp()?,
            tables: cs
                .tables
                .iter()
                .enumerate()
                .map(|(i, t)| {
                    let around = expected_rows.get(i).and_then(Option::as_ref);
                    TableHead {
                        name: t.table.name.clone(),
                        columns: t.columns.clone(),
                        key: t.key.clone(),
                        changes: if rows_kept { t.changes.len() as u64 } else { 0 },
                        expected: around.map(|a| a.before.len() as u64),
                        missing: around.map(|a| a.missing.clone()).unwrap_or_default(),
                    }
                })
                .collect(),
            theirs,
            schema,
            work_before,
        };
        let write = || -> Result<()> {
            let file = std::fs::File::create(&tmp)?;
            let mut w = BufWriter::with_capacity(1 << 16, file);
            writeln!(w, "{}", kind.magic())?;
            serde_json::to_writer(&mut w, &head)?;
            writeln!(w)?;
            if rows_kept {
                for t in &cs.tables {
                    for ch in &t.changes {
                        write_change(&mut w, ch)?;
                    }
                }
            }
            for around in expected_rows.iter().flatten() {
                for ch in around.before.iter().chain(&around.after) {
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
        let path = self.record_path(kind);
        if !path.exists() {
            return Ok(None);
        }
        let body = self.read_body(kind, &path)?;
        if body.head.base != self.base_stamp()? {
            return Ok(None);
        }
        self.record_rows(&body.head.tables, body.changes).map(Some)
    }

    /// A record's row changes (`changes`, per table of `tables`), as a changeset from the base;
    /// the caller has found the record to be of the base as it is now.
    fn record_rows(&self, tables: &[TableHead], changes: Vec<Vec<RowChange>>) -> Result<Changeset> {
        let schema = crate::schema::load(&self.open_base()?)
            .during("reading the schema of the base", self.base_path().display())?;
        let mut cs = Changeset::default();
        for (t, changes) in tables.iter().zip(changes) {
            // A table the base no longer has (dropped since) has nothing to recognize.
            let Some(table) = schema.tables.iter().find(|s| s.name == t.name) else {
                continue;
            };
            cs.tables.push(TableDiff {
                table: table.clone(),
                columns: t.columns.clone(),
                key: t.key.clone(),
                unique: Vec::new(),
                changes,
            });
        }
        Ok(cs)
    }

    /// The whole record of `kind`.
    fn read_body(&self, kind: Kind, path: &Path) -> Result<Body> {
        let read = || -> Result<_> {
            let mut r = BufReader::new(std::fs::File::open(path)?);
            let head = read_head(&mut r, kind)?;
            let mut run = |n: u64| -> Result<Vec<RowChange>> {
                let mut changes = Vec::new();
                for _ in 0..n {
                    let mut ch = RowChange::Insert(Vec::new());
                    if !read_change(&mut r, &mut ch)? {
                        return Err(damaged("it ends before its last change"));
                    }
                    changes.push(ch);
                }
                Ok(changes)
            };
            let changes = head
                .tables
                .iter()
                .map(|t| run(t.changes))
                .collect::<Result<Vec<_>>>()?;
            let expected = head
                .tables
                .iter()
                .map(|t| {
                    t.expected
                        .map(|n| {
                            Ok(Around {
                                before: run(n)?,
                                after: run(n)?,
                                missing: t.missing.clone(),
                            })
                        })
                        .transpose()
                })
                .collect::<Result<Vec<_>>>()?;
            Ok(Body {
                head,
                changes,
                expected,
            })
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
    /// stamp that tells states of one file apart, not one file from another). And the working
    /// copy around the merge (`expected`), from which the next run tells whether a commit
    /// killed before [`Workspace::pull_landed`] landed.
    pub(crate) fn record_pull_start(
        &self,
        theirs: &Changeset,
        kept: TheirsKept,
        expected: Expected,
    ) -> Result<()> {
        let kept = match kept {
            TheirsKept::Download => Some(kept),
            TheirsKept::Mirror { .. } => (!theirs.schema.is_empty()).then_some(kept),
        };
        self.write_record(Kind::Pull, theirs, kept, expected)
    }

    /// Marks the pull's record as of a working copy whose commit landed, right after that
    /// commit: `pulled.rec` becomes `pulled.landed`, synced, so that only a kill or a power cut
    /// in the moment between the commit and this leaves `pulled.rec` after a commit that
    /// landed (never the other way: the commit was synced first).
    pub(crate) fn pull_landed(&self) -> Result<()> {
        let (from, to) = (self.record_path(Kind::Pull), self.state_dir().join(LANDED));
        std::fs::rename(&from, &to).during("renaming into place", to.display())?;
        sync_dir(&self.state_dir())
    }

    /// The record of a pull the base may lag behind, and whether its working copy's commit is
    /// known to have landed.
    fn pull_record(&self) -> Option<(PathBuf, bool)> {
        let landed = self.state_dir().join(LANDED);
        if landed.exists() {
            return Some((landed, true));
        }
        let path = self.record_path(Kind::Pull);
        path.exists().then_some((path, false))
    }

    /// Finishes the base's part of a pull killed between its working copy's commit and the
    /// base's update (`pulled.rec`, [`Workspace::record_pull_start`]). Left as it is, the base
    /// would be one pull behind the working copy: their rows would read as our edits, and a
    /// teammate who later set such a row back to the base's value would see the next pull keep
    /// the old copy and the push write it back over theirs.
    ///
    /// Whether that commit landed decides what the base takes, and is known for certain when
    /// the record was renamed after it (`pulled.landed`, [`Workspace::pull_landed`]): then
    /// the base takes their changes whole, and what the app wrote since is ours. Otherwise
    /// (killed between the record and that rename) the working copy tells
    /// ([`landed_by_evidence`]); a commit that did not land leaves the base as it is, and the
    /// next pull merges again as if the killed one had never run.
    ///
    /// ```text
    /// pulled.landed                      -> the base takes their changes
    /// pulled.rec, stamp as before merge  -> nothing committed since: the base stays
    /// pulled.rec, a row the merge wrote holds what it wrote -> landed: the base takes them
    /// pulled.rec, every row it wrote holds what it was      -> did not land: the base stays
    /// ```
    ///
    /// A row the working copy holds against that evidence (landed, yet this row as before the
    /// merge: the app set it back, or its commit of the same value as theirs made the evidence)
    /// is marked unsettled ([`crate::unsettled`]), as is a schema object held otherwise than
    /// the merge left it (but for columns appended since): a difference of ours there is a
    /// conflict until `--ours` or `--theirs` settles it. A record that cannot be read, or whose
    /// kept theirs is gone, marks everything, and the base stays.
    pub(crate) fn finish_interrupted_pull(&self) -> Result<()> {
        let download = self.state_dir().join(DOWNLOAD);
        let Some((path, flagged)) = self.pull_record() else {
            if download.exists() {
                remove_aside(&download);
            }
            return Ok(());
        };
        let everything = || -> Result<()> {
            crate::unsettled::Unsettled::add(
                &self.state_dir(),
                crate::unsettled::Unsettled {
                    everything: true,
                    ..Default::default()
                },
            )?;
            self.drop_pull_record()
        };
        let base = self.base_stamp()?;
        let Body {
            head,
            changes,
            expected,
        } = match self.read_body(Kind::Pull, &path) {
            Ok(record) => record,
            Err(e) if is_damage(&e) => return everything(),
            Err(e) => return Err(e),
        };
        if head.base != base {
            // One of a base that already moved on.
            return self.drop_pull_record();
        }
        let work = self.open_working_copy(true)?;
        let wc = self.db_path();
        let now = Now::read(&work, &head, &expected).during(
            "reading what the working copy holds of the pull in",
            wc.display(),
        )?;
        drop(work);
        if !flagged && !landed_by_evidence(&head, &expected, &now) {
            return self.drop_pull_record();
        }
        let theirs = match &head.theirs {
            None => Some(self.record_rows(&head.tables, changes)?),
            Some(kept) => self.kept_theirs(kept)?,
        };
        let Some(theirs) = theirs else {
            return everything();
        };
        if !flagged {
            crate::unsettled::Unsettled::add(
                &self.state_dir(),
                against_evidence(&head, &expected, &now),
            )?;
        }
        self.base_moves()?;
        self.update_base(|conn| theirs.apply(conn)).during(
            "applying the record of a pull to",
            self.base_path().display(),
        )?;
        self.drop_pull_record()
    }

    /// Their changes since the base, read again from where a pull `kept` theirs: `None` when
    /// theirs is no longer kept, or cannot be read (damaged, half there).
    fn kept_theirs(&self, kept: &TheirsKept) -> Result<Option<Changeset>> {
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
        let read =
            theirs_db.and_then(|theirs_db| crate::diff::diff_remote(&base, &theirs_db, None));
        Ok(read.ok())
    }

    /// What a killed push or pull left, in words, for `status` (which changes nothing, so
    /// says what the next pull or push will do).
    pub(crate) fn interrupted(&self) -> Vec<String> {
        let mut out = Vec::new();
        if self.record_path(Kind::Push).exists() {
            out.push("a push: the next pull recognizes the rows it may have sent".to_owned());
        }
        match self.pull_record() {
            Some((_, true)) => out.push("a pull, after its commit into the working copy: the next pull or push lets the base take its changes".to_owned()),
            Some((_, false)) => out.push("a pull, around its commit into the working copy: the next pull or push finds whether it landed, and finishes it if it did".to_owned()),
            None => {}
        }
        match crate::unsettled::Unsettled::load(&self.state_dir()) {
            Ok(marks) if marks.is_empty() => {}
            Ok(marks) => out.push(format!(
                "unsettled: {}; `tursync pull` lists where ours differs, `--ours` or `--theirs` settles them",
                marks.describe()
            )),
            Err(e) => out.push(format!("unsettled: unknown ({e})")),
        }
        out
    }

    /// Forgets the record of a pull once the base has taken its changes (or none landed), and
    /// the download it kept.
    pub(crate) fn drop_pull_record(&self) -> Result<()> {
        self.remove_pull_files();
        sync_dir(&self.state_dir())
    }

    /// Removes the record of a pull (under either name) and its download; the caller syncs
    /// the state directory.
    fn remove_pull_files(&self) {
        remove_aside(&self.record_path(Kind::Pull));
        remove_aside(&self.state_dir().join(LANDED));
        remove_aside(&self.state_dir().join(DOWNLOAD));
    }

    /// Forgets, once a pull moved the base, every record the base may have lagged behind (the
    /// push's, the pull's and its download) and the marks of what was unsettled (the pull
    /// settled them all, or it would have stopped), with one sync of the directory.
    pub(crate) fn forget_after_pull(&self) -> Result<()> {
        remove_aside(&self.record_path(Kind::Push));
        self.remove_pull_files();
        crate::unsettled::Unsettled::forget(&self.state_dir());
        sync_dir(&self.state_dir())
    }

    /// Forgets the record once the base has caught up with the remote (or nothing was sent).
    pub fn drop_push_record(&self) -> Result<()> {
        remove_aside(&self.record_path(Kind::Push));
        sync_dir(&self.state_dir())
    }
}

/// What the working copy holds now of a killed pull: the schema objects its record names,
/// per table the rows under its keys (`None`: the table cannot be read), and its stamp.
struct Now {
    schema: Vec<Option<Definition>>,
    tables: Vec<Option<Held>>,
    stamp: Option<Stamp>,
}

impl Now {
    fn read(work: &Connection, head: &Head, expected: &[Option<Around>]) -> Result<Now> {
        let read = Transaction::new_unchecked(work, TransactionBehavior::Deferred)?;
        let schema = head
            .schema
            .iter()
            .map(|e| definition(work, &e.name))
            .collect::<Result<Vec<_>>>()?;
        let mut tables = Vec::with_capacity(head.tables.len());
        for (t, around) in head.tables.iter().zip(expected) {
            let reader = match around {
                Some(_) => Reader::new(work, &t.name, &t.columns, &t.key)?,
                None => None,
            };
            let (Some(around), Some(reader)) = (around, reader) else {
                tables.push(None);
                continue;
            };
            tables.push(Some(reader.held(
                work,
                &t.key,
                around.after.iter().map(RowChange::row),
            )?));
        }
        let stamp = crate::pages::stamp(work)?;
        read.commit()?;
        Ok(Now {
            schema,
            tables,
            stamp,
        })
    }
}

/// Whether two reads of one row agree: both no row, or rows equal but in the positions
/// `missing` (columns one of the reads lacked).
fn same(a: &RowChange, b: &RowChange, missing: &[usize]) -> bool {
    match (a, b) {
        (RowChange::Insert(a), RowChange::Insert(b)) => {
            (0..a.len().min(b.len())).all(|i| missing.contains(&i) || a[i] == b[i])
        }
        (RowChange::Insert(_), _) | (_, RowChange::Insert(_)) => false,
        _ => true,
    }
}

/// Each row of a table read before the merge, after it, and now, with the positions of the
/// columns any of the three reads lacked.
fn each_row<'a>(
    around: &'a Around,
    now: &'a Held,
) -> impl Iterator<Item = (&'a RowChange, &'a RowChange, &'a RowChange, Vec<usize>)> {
    around
        .before
        .iter()
        .zip(&around.after)
        .zip(&now.rows)
        .map(move |((b, a), n)| {
            let mut missing = around.missing.clone();
            missing.extend(&now.missing);
            (b, a, n, missing)
        })
}

/// Whether a pull's commit, killed before it could say so, landed, as the working copy tells:
/// not when its stamp is the one recorded before the merge (nothing committed since, ours
/// included; rollback-journal mode only); not when every schema object the merge changed is as
/// before it; and, when the merge wrote rows, only if one of them holds what it wrote. A merge
/// that wrote nothing left the working copy as it was either way.
///
/// ```text
/// wrote id 1: x'00' -> x'01'   now x'01'         -> landed
/// wrote id 1: x'00' -> x'01'   now x'00'         -> not (or the app set it back: see
///                                                   `against_evidence` for the other way)
/// wrote id 1: x'00' -> x'01'   now x'02'         -> not: an app edit the pull never saw is a
///                                                   conflict for the next pull to find
/// ```
fn landed_by_evidence(head: &Head, expected: &[Option<Around>], now: &Now) -> bool {
    if head.work_before.is_some() && head.work_before == now.stamp {
        return false;
    }
    let schema_changed = head.schema.iter().any(|e| e.before != e.after);
    let schema_as_before = head
        .schema
        .iter()
        .zip(&now.schema)
        .all(|(e, n)| *n == e.before);
    if schema_changed && schema_as_before {
        return false;
    }
    let mut wrote = false;
    for (around, now) in expected.iter().zip(&now.tables) {
        let (Some(around), Some(now)) = (around, now) else {
            continue;
        };
        for (b, a, n, missing) in each_row(around, now) {
            if !same(b, a, &missing) {
                wrote = true;
                if same(n, a, &missing) {
                    return true;
                }
            }
        }
    }
    !wrote
}

/// What a commit judged landed by evidence holds against it, to be settled by hand: rows the
/// merge wrote that hold what they were before, tables that cannot be read, and schema
/// objects held otherwise than the merge left them (but for columns appended since).
fn against_evidence(
    head: &Head,
    expected: &[Option<Around>],
    now: &Now,
) -> crate::unsettled::Unsettled {
    let mut marks = marked_rows(head, expected, now, |b, a, n, missing| {
        !same(b, a, missing) && same(n, b, missing)
    });
    for (e, n) in head.schema.iter().zip(&now.schema) {
        if *n != e.after && !columns_appended(e.after.as_ref(), n.as_ref()) {
            marks.objects.insert(e.name.clone());
        }
    }
    marks
}

/// The rows of the record that `pick` picks (given them before the merge, after it, now, and
/// the positions not compared), marked, and each table that cannot be read.
fn marked_rows(
    head: &Head,
    expected: &[Option<Around>],
    now: &Now,
    pick: impl Fn(&RowChange, &RowChange, &RowChange, &[usize]) -> bool,
) -> crate::unsettled::Unsettled {
    let mut marks = crate::unsettled::Unsettled::default();
    for ((t, around), now) in head.tables.iter().zip(expected).zip(&now.tables) {
        let (Some(around), Some(now)) = (around, now) else {
            marks.objects.insert(t.name.clone());
            continue;
        };
        for (b, a, n, missing) in each_row(around, now) {
            if pick(b, a, n, &missing) {
                let key = t.key.iter().map(|&k| &a.row()[k]);
                marks
                    .rows
                    .entry(t.name.clone())
                    .or_default()
                    .insert(crate::changeset::key_text(key));
            }
        }
    }
    marks
}

/// Reads rows of one table by key as the values of `columns`, whichever of them the table
/// has now: a column it lacks (their new column, before their migration landed) reads as NULL
/// and is listed in `missing`.
struct Reader {
    sql: String,
    /// The positions, in `columns`, of the values read, in order.
    read: Vec<usize>,
    width: usize,
    missing: Vec<usize>,
}

impl Reader {
    /// `None` when the table is not there, or lacks a column of the key.
    fn new(
        conn: &Connection,
        table: &str,
        columns: &[String],
        key: &[usize],
    ) -> Result<Option<Reader>> {
        let mut st = conn.prepare(&crate::sql::pragma_of("table_xinfo", table))?;
        let names: Vec<String> = st
            .query_map([], |r| r.get(1))?
            .collect::<rusqlite::Result<_>>()?;
        // A hidden rowid is a value of the diff's rows under the name that reaches it.
        let has = |c: &str| {
            names.iter().any(|n| n.eq_ignore_ascii_case(c))
                || ["rowid", "_rowid_", "oid"]
                    .iter()
                    .any(|a| a.eq_ignore_ascii_case(c))
        };
        if names.is_empty() || !key.iter().all(|&k| has(&columns[k])) {
            return Ok(None);
        }
        let (read, missing): (Vec<usize>, Vec<usize>) =
            (0..columns.len()).partition(|&i| has(&columns[i]));
        let cols: Vec<String> = read
            .iter()
            .map(|&i| crate::sql::ident(&columns[i]))
            .collect();
        let key_names: Vec<&str> = key.iter().map(|&k| columns[k].as_str()).collect();
        let sql = crate::sql::select(table, &cols.join(", "), &key_names);
        // A table that cannot be read so (a WITHOUT ROWID table now, say) is not read.
        if conn.prepare_cached(&sql).is_err() {
            return Ok(None);
        }
        Ok(Some(Reader {
            sql,
            read,
            width: columns.len(),
            missing,
        }))
    }

    /// The rows under the keys of `rows` (whose key values sit at `key`), each an insert of
    /// the row found, or a delete of the given row where there is none.
    fn held<'r>(
        self,
        conn: &Connection,
        key: &[usize],
        rows: impl Iterator<Item = &'r [Value]>,
    ) -> Result<Held> {
        let mut held = Vec::new();
        for row in rows {
            let at: Vec<Value> = key.iter().map(|&k| row[k].clone()).collect();
            held.push(match self.read(conn, &at)? {
                Some(found) => RowChange::Insert(found),
                None => RowChange::Delete(row.to_vec()),
            });
        }
        Ok(Held {
            rows: held,
            missing: self.missing,
        })
    }

    /// The row under `key`, if there is one.
    fn read(&self, conn: &Connection, key: &[Value]) -> Result<Option<Vec<Value>>> {
        let mut st = conn.prepare_cached(&self.sql)?;
        Ok(st
            .query_row(rusqlite::params_from_iter(key), |r| {
                let mut row = vec![Value::Null; self.width];
                for (i, &at) in self.read.iter().enumerate() {
                    row[at] = Value::from_ref(r.get_ref(i)?);
                }
                Ok(row)
            })
            .optional()?)
    }
}

/// A schema object's definition in `conn`, if there is one named `name`.
fn definition(conn: &Connection, name: &str) -> Result<Option<Definition>> {
    Ok(conn
        .prepare_cached("SELECT type, sql FROM sqlite_schema WHERE name = ?1")?
        .query_row([name], |r| Ok((r.get(0)?, r.get(1)?)))
        .optional()?)
}

/// Whether `now` is the table `after` with columns appended (`ALTER TABLE … ADD COLUMN` puts
/// `, <definition>` right after the last column): the merge's definition is there, grown by a
/// later change of ours.
///
/// ```text
/// after: CREATE TABLE t(a, c)       now: CREATE TABLE t(a, c, d INTEGER)  -> true
/// after: CREATE TABLE t(a, c)       now: CREATE TABLE t(a)                -> false
/// ```
fn columns_appended(after: Option<&Definition>, now: Option<&Definition>) -> bool {
    let (Some((t1, Some(after))), Some((t2, Some(now)))) = (after, now) else {
        return false;
    };
    if t1 != "table" || t2 != "table" || now.len() <= after.len() {
        return false;
    }
    let head = after
        .char_indices()
        .zip(now.chars())
        .find(|((_, a), b)| a != b)
        .map_or(after.len(), |((i, _), _)| i);
    let rest = &after[head..];
    now.ends_with(rest) && now[head..now.len() - rest.len()].starts_with(", ")
}

/// Whether `e`, met reading a record, says the record is damaged (cut short, not such a
/// record, not JSON) rather than that it could not be read.
fn is_damage(e: &Error) -> bool {
    match e.root() {
        Error::Workspace(_) | Error::Json(_) | Error::Unexpected(_) => true,
        Error::Io(e) => matches!(
            e.kind(),
            std::io::ErrorKind::UnexpectedEof | std::io::ErrorKind::InvalidData
        ),
        _ => false,
    }
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

/// A record that cannot be read. A damaged pull record is never reported (it marks
/// everything unsettled instead); for a push record the advice holds: without it, a row the
/// interrupted push landed and the app edited since shows as a conflict, nothing is overwritten.
fn damaged(why: &str) -> Error {
    Error::Workspace(format!(
        "{why}: it is damaged; delete it and run `tursync pull`: a row the interrupted push may have sent and the app edited since then shows as a conflict"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(sql: &str) -> Option<Definition> {
        Some(("table".into(), Some(sql.into())))
    }

    #[test]
    fn columns_appended_is_alter_table_add_column_and_nothing_else() {
        let after = table("CREATE TABLE t(a, c)");
        for (now, appended) in [
            ("CREATE TABLE t(a, c, d INTEGER)", true),
            ("CREATE TABLE t(a, c, d, e)", true),
            ("CREATE TABLE t(a)", false),
            ("CREATE TABLE t(a, c)", false),
            ("CREATE TABLE t(a, d, c)", false),
            ("CREATE TABLE t(a, cd)", false),
            ("CREATE TABLE u(a, c, d)", false),
        ] {
            assert_eq!(
                columns_appended(after.as_ref(), table(now).as_ref()),
                appended,
                "{now}"
            );
        }
        let strict = table("CREATE TABLE t(a INT, é TEXT) STRICT");
        let grown = table("CREATE TABLE t(a INT, é TEXT, d INT) STRICT");
        assert!(columns_appended(strict.as_ref(), grown.as_ref()));
        let index = Some(("index".into(), Some("CREATE INDEX i ON t(a)".into())));
        assert!(!columns_appended(
            index.as_ref(),
            table("CREATE INDEX i ON t(a), b").as_ref()
        ));
    }
}
