//! The record of a push under way, `.tursync/pushed.rec`: the row changes being pushed and the
//! stamp of the base they apply to, written before anything is sent.
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

use crate::changeset::{read_change, write_change, Changeset, RowChange, TableDiff};
use crate::durable::{aside_name, remove_aside, sync_dir, Aside};
use crate::pages::Stamp;
use crate::workspace::Workspace;
use crate::{Context, Error, Result};

const FILE: &str = "pushed.rec";
const MAGIC: &str = "tursync push record 1";

#[derive(Serialize, Deserialize)]
struct Head {
    /// The base the changes apply to.
    base: Stamp,
    tables: Vec<TableHead>,
}

#[derive(Serialize, Deserialize)]
struct TableHead {
    name: String,
    columns: Vec<String>,
    key: Vec<usize>,
    changes: u64,
}

impl Workspace {
    fn push_record_path(&self) -> PathBuf {
        self.state_dir().join(FILE)
    }

    /// The base's stamp, in a read transaction of its own.
    fn base_stamp(&self) -> Result<Stamp> {
        let base = self.open_base()?;
        crate::pages::stamp(&base)?.ok_or_else(|| {
            Error::Workspace(format!(
                "the base {} has no stamp (is it in WAL mode?); run `tursync verify`",
                self.base_path().display()
            ))
        })
    }

    /// The record's head, if there is a record and it is of the base as it is now.
    fn live_record(&self) -> Result<Option<Head>> {
        let path = self.push_record_path();
        let file = match std::fs::File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e).during("opening the record of a push", path.display()),
        };
        let head = read_head(&mut BufReader::new(file))
            .during("reading the record of a push", path.display())?;
        Ok((head.base == self.base_stamp()?).then_some(head))
    }

    /// True when a push was interrupted and may have committed without moving the base.
    pub fn push_interrupted(&self) -> Result<bool> {
        Ok(self.live_record()?.is_some())
    }

    /// Records the push of `cs` before it starts. Returns false, and keeps the older record,
    /// when an interrupted push left one: the base is still behind that push, and `cs` (base →
    /// working copy) holds its changes too.
    pub fn record_push_start(&self, cs: &Changeset) -> Result<bool> {
        if self.push_interrupted()? {
            return Ok(false);
        }
        let path = self.push_record_path();
        let tmp = aside_name(&self.state_dir(), FILE);
        let _guard = Aside {
            paths: vec![tmp.clone()],
        };
        let head = Head {
            base: self.base_stamp()?,
            tables: cs
                .tables
                .iter()
                .map(|t| TableHead {
                    name: t.table.name.clone(),
                    columns: t.columns.clone(),
                    key: t.key.clone(),
                    changes: t.changes.len() as u64,
                })
                .collect(),
        };
        let write = || -> Result<()> {
            let file = std::fs::File::create(&tmp)?;
            let mut w = BufWriter::with_capacity(1 << 16, file);
            writeln!(w, "{MAGIC}")?;
            serde_json::to_writer(&mut w, &head)?;
            writeln!(w)?;
            for t in &cs.tables {
                for ch in &t.changes {
                    write_change(&mut w, ch)?;
                }
            }
            let file = w.into_inner().map_err(|e| e.into_error())?;
            file.sync_all()?;
            Ok(())
        };
        write().during("writing the record of a push", tmp.display())?;
        std::fs::rename(&tmp, &path).during("renaming into place", path.display())?;
        sync_dir(&self.state_dir())?;
        Ok(true)
    }

    /// What the interrupted push sent, as a changeset from the base, if one was interrupted.
    pub fn interrupted_push(&self) -> Result<Option<Changeset>> {
        if self.live_record()?.is_none() {
            return Ok(None);
        }
        let path = self.push_record_path();
        let schema = crate::schema::load(&self.open_base()?)?;
        let read = || -> Result<Changeset> {
            let mut r = BufReader::new(std::fs::File::open(&path)?);
            let head = read_head(&mut r)?;
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
        Ok(Some(
            read().during("reading the record of a push", path.display())?,
        ))
    }

    /// Forgets the record once the base has caught up with the remote (or nothing was sent).
    pub fn drop_push_record(&self) -> Result<()> {
        remove_aside(&self.push_record_path());
        sync_dir(&self.state_dir())
    }
}

fn read_head(r: &mut impl BufRead) -> Result<Head> {
    let mut line = String::new();
    r.read_line(&mut line)?;
    if line.trim_end() != MAGIC {
        return Err(damaged("it does not start as a record of a push"));
    }
    line.clear();
    r.read_line(&mut line)?;
    Ok(serde_json::from_str(&line)?)
}

fn damaged(why: &str) -> Error {
    Error::Workspace(format!(
        "{why}: it is damaged; delete it and run `tursync sync` (a pull recognizes what the push landed by its values)"
    ))
}
