//! How a plan's row changes are written into the working copy: each one by column name
//! ([`LocalWrite`]), applied in three phases by [`Applier`], which takes out and puts back the
//! rows a move carries and settles the UNIQUE conflicts a write meets. Deciding a merge reads
//! the databases only to find free keys; everything here writes, inside the caller's
//! transaction, so it is kept apart from the deciding.

use std::collections::HashMap;

use rusqlite::{Connection, OptionalExtension};

use super::renumber::KeySpace;
use crate::changeset::TableDiff;
use crate::conflict::{Conflict, ConflictKind, Resolve};
use crate::schema::{parse_unique_failure, UniqueFailure};
use crate::sql;
use crate::value::Value;
use crate::{Error, Result};

/// One change to make in the working copy, by column name.
pub(super) enum LocalWrite {
    Insert {
        table: String,
        columns: Vec<String>,
        /// Positions of the key in `row`.
        key: Vec<usize>,
        row: Vec<Value>,
    },
    Delete {
        table: String,
        key: Vec<(String, Value)>,
    },
    Update {
        table: String,
        key: Vec<(String, Value)>,
        set: Vec<(String, Value)>,
    },
    /// An update that moves a value some UNIQUE constraint covers: the row is taken out with
    /// the deletes and put back, with `set` over it, with the inserts, so values swapped or
    /// rotated between rows never meet halfway (SQLite checks UNIQUE row by row).
    Move {
        table: String,
        key: Vec<(String, Value)>,
        set: Vec<(String, Value)>,
    },
}

impl LocalWrite {
    /// Their row `row` goes in.
    pub(super) fn insert(theirs: &TableDiff, row: &[Value]) -> LocalWrite {
        LocalWrite::Insert {
            table: theirs.table.name.clone(),
            columns: theirs.columns.clone(),
            key: theirs.key.clone(),
            row: row.to_vec(),
        }
    }

    /// Their change of `set` in the row at `key`: a [`LocalWrite::Move`] when it moves a value a
    /// UNIQUE constraint of the table covers.
    pub(super) fn update(
        theirs: &TableDiff,
        key: Vec<(String, Value)>,
        set: Vec<(String, Value)>,
    ) -> LocalWrite {
        let table = theirs.table.name.clone();
        let moves = theirs
            .unique
            .iter()
            .flatten()
            .any(|&c| set.iter().any(|(name, _)| *name == theirs.columns[c]));
        if moves {
            LocalWrite::Move { table, key, set }
        } else {
            LocalWrite::Update { table, key, set }
        }
    }

    pub(super) fn table(&self) -> &str {
        match self {
            LocalWrite::Insert { table, .. }
            | LocalWrite::Delete { table, .. }
            | LocalWrite::Update { table, .. }
            | LocalWrite::Move { table, .. } => table,
        }
    }

    /// The key of the row this write leaves, by name.
    fn key(&self) -> Vec<(String, Value)> {
        match self {
            LocalWrite::Insert {
                columns, key, row, ..
            } => key
                .iter()
                .map(|&k| (columns[k].clone(), row[k].clone()))
                .collect(),
            LocalWrite::Delete { key, .. }
            | LocalWrite::Update { key, .. }
            | LocalWrite::Move { key, .. } => key.clone(),
        }
    }
}

/// Applies a plan's writes to the working copy in its three phases (deletes, updates,
/// inserts), keeping the rows a [`LocalWrite::Move`] took out until it puts them back, and settling
/// the UNIQUE conflicts a write meets.
pub(super) struct Applier<'c> {
    work: &'c Connection,
    /// The remote copy: what a row of ours that must give way becomes.
    theirs: &'c Connection,
    /// Data-column names of the working copy's and the remote copy's tables.
    ours_names: HashMap<String, Vec<String>>,
    theirs_names: HashMap<String, Vec<String>>,
    /// The working copy's tables whose hidden rowid only locates rows, with its name.
    locators: HashMap<String, String>,
    /// Rowids free on both sides, for rows of ours moved out of their rows' way.
    keys: KeySpace<'c>,
    /// Our rows a move took out, by the write's position.
    taken: HashMap<usize, Vec<(String, Value)>>,
    /// Writes that landed.
    pub(super) applied: usize,
}

impl<'c> Applier<'c> {
    pub(super) fn new(work: &'c Connection, theirs: &'c Connection) -> Result<Applier<'c>> {
        let mut locators = HashMap::new();
        let mut ours_names = HashMap::new();
        for t in crate::schema::load(work)?.tables {
            let names = t.data_names()?;
            if let Some(l) = t.locator() {
                locators.insert(t.name.clone(), names[l].clone());
            }
            ours_names.insert(t.name, names);
        }
        let mut theirs_names = HashMap::new();
        for t in crate::schema::load(theirs)?.tables {
            theirs_names.insert(t.name.clone(), t.data_names()?);
        }
        Ok(Applier {
            work,
            theirs,
            locators,
            keys: KeySpace::new(work, theirs),
            ours_names,
            theirs_names,
            taken: HashMap::new(),
            applied: 0,
        })
    }

    /// One phase's part of write `i`: 0 deletes (and takes out moved rows), 1 updates, 2
    /// inserts (and puts moved rows back). Returns the UNIQUE conflict met, settled by
    /// `resolve` (see [`Applier::settle`]).
    pub(super) fn phase(
        &mut self,
        phase: u8,
        i: usize,
        w: &LocalWrite,
        resolve: Resolve,
    ) -> Result<Option<Conflict>> {
        let row = match (phase, w) {
            (0, LocalWrite::Delete { table, key }) => {
                self.delete(table, key)?;
                self.applied += 1;
                return Ok(None);
            }
            (0, LocalWrite::Move { table, key, .. }) => {
                let ours = self.row(self.work, &self.ours_names, table, key)?.ok_or_else(|| {
                    Error::Unexpected(format!(
                        "table {table:?}: the row at {} that their change moves is not in the working copy",
                        key_list(key)
                    ))
                })?;
                self.delete(table, key)?;
                self.taken.insert(i, ours);
                return Ok(None);
            }
            (1, LocalWrite::Update { table, key, set }) => match self.update(table, key, set) {
                Ok(()) => {
                    self.applied += 1;
                    return Ok(None);
                }
                Err(e) => {
                    // Only a row that is there can break a constraint by being updated.
                    let Some(mut target) = self.row(self.work, &self.ours_names, table, key)?
                    else {
                        return Err(e);
                    };
                    overlay(&mut target, set);
                    return self.settle(e, w, target, None, resolve);
                }
            },
            (2, LocalWrite::Insert { columns, row, .. }) => {
                columns.iter().cloned().zip(row.iter().cloned()).collect()
            }
            (2, LocalWrite::Move { table, set, .. }) => {
                let mut row = self.taken.get(&i).cloned().ok_or_else(|| {
                    Error::Unexpected(format!(
                        "table {table:?}: a moved row was put back without being taken out"
                    ))
                })?;
                overlay(&mut row, set);
                row
            }
            _ => return Ok(None),
        };
        match self.insert(w.table(), &row) {
            Ok(()) => {
                self.applied += 1;
                Ok(None)
            }
            Err(e) => {
                let ours = self.taken.get(&i).cloned();
                self.settle(e, w, row, ours, resolve)
            }
        }
    }

    /// Settles a write that failed with `e`, which gave its row the values `target`: a UNIQUE
    /// constraint another row of ours holds is a conflict. [`Resolve::Theirs`]: our row gives
    /// way (it takes its remote version, or goes if it is new here) and the write is made;
    /// [`Resolve::Ours`]: the write is left out, and a moved row goes back as it was (`ours`),
    /// so nothing of ours is lost and nothing of theirs is deleted; [`Resolve::Refuse`]: the
    /// caller rolls back.
    fn settle(
        &mut self,
        e: Error,
        w: &LocalWrite,
        target: Vec<(String, Value)>,
        ours: Option<Vec<(String, Value)>>,
        resolve: Resolve,
    ) -> Result<Option<Conflict>> {
        let constraint = match &e {
            Error::Local(le) => match unique_violation(le) {
                Some(c) => c,
                None => return Err(e),
            },
            _ => return Err(e),
        };
        let table = w.table();
        let key = w.key();
        let columns = constraint_columns(self.work, &constraint)?;
        let holder = match &columns {
            Some(cols) => self.holder(table, cols, &key, &target)?,
            None => None,
        };
        match resolve {
            Resolve::Refuse => {}
            Resolve::Ours => {
                if let Some(ours) = ours {
                    self.insert(table, &ours)?;
                }
            }
            Resolve::Theirs => {
                let Some(holder) = &holder else {
                    return Err(Error::Unexpected(format!(
                        "table {table:?}: their row ({}) breaks {constraint}, and the row of ours holding the same values cannot be found to give way",
                        key_list(&key)
                    )));
                };
                self.give_way(table, holder, &key)?;
                match w {
                    LocalWrite::Update { key, set, .. } => self.update(table, key, set)?,
                    _ => self.insert(table, &target)?,
                }
                self.applied += 1;
            }
        }
        Ok(Some(Conflict {
            columns: columns.unwrap_or_default(),
            constraint: Some(constraint),
            ours_key: holder.map(|h| h.into_iter().map(|(_, v)| v).collect()),
            ..Conflict::new(
                table,
                ConflictKind::Unique,
                key.into_iter().map(|(_, v)| v).collect(),
            )
        }))
    }

    /// Our row at `key` gives way to theirs (the row they write at `theirs_key`): it becomes its
    /// remote version (keeping what only the working copy's columns hold), or goes if the remote
    /// has no such row (it is new here), or if its remote version is the very row they write
    /// (the same key under the key's collation, as 'A' and 'a' under NOCASE). A row the team
    /// shares is never deleted for it.
    fn give_way(
        &mut self,
        table: &str,
        key: &[(String, Value)],
        theirs_key: &[(String, Value)],
    ) -> Result<()> {
        let ours = self.row(self.work, &self.ours_names, table, key)?;
        let remote = self.row(self.theirs, &self.theirs_names, table, key)?;
        self.delete(table, key)?;
        if let (Some(mut row), Some(remote)) = (ours, remote) {
            let theirs_row = theirs_key
                .iter()
                .all(|(k, v)| remote.iter().any(|(n, r)| n == k && r == v));
            if !theirs_row {
                overlay(&mut row, &remote);
                self.insert(table, &row)?;
            }
        }
        Ok(())
    }

    /// The key of the other row of `table` that holds, in `columns`, the values `target` has.
    fn holder(
        &self,
        table: &str,
        columns: &[String],
        key: &[(String, Value)],
        target: &[(String, Value)],
    ) -> Result<Option<Vec<(String, Value)>>> {
        let mut values = Vec::new();
        for c in columns {
            values.push(
                target
                    .iter()
                    .find(|(n, _)| n == c)
                    .map(|(_, v)| v.clone())
                    .ok_or_else(|| {
                        Error::Unexpected(format!(
                            "table {table:?}: the constraint's column {c:?} is not in the row written"
                        ))
                    })?,
            );
        }
        let n = key.len();
        let same: Vec<String> = columns
            .iter()
            .map(|c| format!("{} IS ?", sql::ident(c)))
            .collect();
        let names = names_of(key);
        // Another row is one whose key differs byte for byte: under a NOCASE key, our 'A'
        // holds what their 'a' needs, and is the row to give way.
        let itself: Vec<String> = names
            .iter()
            .map(|k| format!("{} IS ? COLLATE BINARY", sql::ident(k)))
            .collect();
        let q = format!(
            "SELECT {} FROM {} WHERE {} AND NOT ({}) LIMIT 1",
            names
                .iter()
                .map(|k| sql::ident(k))
                .collect::<Vec<_>>()
                .join(", "),
            sql::ident(table),
            same.join(" AND "),
            itself.join(" AND ")
        );
        let args = values.iter().chain(key.iter().map(|(_, v)| v));
        let found: Option<Vec<Value>> = self
            .work
            .query_row(&q, rusqlite::params_from_iter(args), |r| {
                (0..n).map(|i| r.get::<_, Value>(i)).collect()
            })
            .optional()?;
        Ok(found.map(|vals| key.iter().map(|(k, _)| k.clone()).zip(vals).collect()))
    }

    /// The row of `table` at `key` in `conn`, by data-column name.
    fn row(
        &self,
        conn: &Connection,
        names: &HashMap<String, Vec<String>>,
        table: &str,
        key: &[(String, Value)],
    ) -> Result<Option<Vec<(String, Value)>>> {
        let Some(names) = names.get(table) else {
            return Ok(None);
        };
        let cols: Vec<String> = names.iter().map(|c| sql::ident(c)).collect();
        let q = sql::select(table, &cols.join(", "), &names_of(key));
        let values: Option<Vec<Value>> = conn
            .query_row(
                &q,
                rusqlite::params_from_iter(key.iter().map(|(_, v)| v)),
                |r| (0..names.len()).map(|i| r.get::<_, Value>(i)).collect(),
            )
            .optional()?;
        Ok(values.map(|v| names.iter().cloned().zip(v).collect()))
    }

    fn insert(&mut self, table: &str, row: &[(String, Value)]) -> Result<()> {
        self.free_locator(table, row)?;
        let q = sql::insert(table, &names_of(row), 1);
        self.work
            .prepare_cached(&q)?
            .execute(rusqlite::params_from_iter(row.iter().map(|(_, v)| v)))?;
        Ok(())
    }

    /// Makes room for `row`'s hidden rowid in a table where it only locates rows: a row of
    /// another key still holding it here (its rowid moved on one side alone, by a `REPLACE`)
    /// moves past both sides' largest rowid. Nothing can refer to a hidden rowid, so the move
    /// changes no data. Our new rows were already renumbered by the plan
    /// ([`super::renumber::Locators`]).
    fn free_locator(&mut self, table: &str, row: &[(String, Value)]) -> Result<()> {
        let Some(col) = self.locators.get(table) else {
            return Ok(());
        };
        let Some((_, at)) = row.iter().find(|(c, _)| c == col) else {
            return Ok(());
        };
        let held: bool = self
            .work
            .prepare_cached(&sql::select(table, "count(*)", &[col]))?
            .query_row([at], |r| r.get(0))?;
        if !held {
            return Ok(());
        }
        let to = self.keys.take(table, col)?;
        self.work.execute(
            &sql::update(table, &[col], &[col]),
            rusqlite::params![to, at],
        )?;
        Ok(())
    }

    fn delete(&self, table: &str, key: &[(String, Value)]) -> Result<()> {
        let q = sql::delete(table, &names_of(key));
        self.work
            .prepare_cached(&q)?
            .execute(rusqlite::params_from_iter(key.iter().map(|(_, v)| v)))?;
        Ok(())
    }

    fn update(&self, table: &str, key: &[(String, Value)], set: &[(String, Value)]) -> Result<()> {
        let q = sql::update(table, &names_of(set), &names_of(key));
        let args = set.iter().map(|(_, v)| v).chain(key.iter().map(|(_, v)| v));
        self.work
            .prepare_cached(&q)?
            .execute(rusqlite::params_from_iter(args))?;
        Ok(())
    }
}

/// The names of a named row or key, in order.
fn names_of(named: &[(String, Value)]) -> Vec<&str> {
    named.iter().map(|(c, _)| c.as_str()).collect()
}

fn key_list(key: &[(String, Value)]) -> String {
    key.iter()
        .map(|(_, v)| sql::literal(v))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Sets in `row` every value `over` has for one of its columns.
fn overlay(row: &mut [(String, Value)], over: &[(String, Value)]) {
    for (name, v) in row.iter_mut() {
        if let Some((_, o)) = over.iter().find(|(n, _)| n == name) {
            *v = o.clone();
        }
    }
}

/// The constraint a write broke, when it is a UNIQUE (or PRIMARY KEY) constraint: SQLite's
/// own wording, e.g. `UNIQUE constraint failed: users.email`.
fn unique_violation(e: &rusqlite::Error) -> Option<String> {
    match e {
        rusqlite::Error::SqliteFailure(f, msg)
            if f.extended_code == rusqlite::ffi::SQLITE_CONSTRAINT_UNIQUE
                || f.extended_code == rusqlite::ffi::SQLITE_CONSTRAINT_PRIMARYKEY =>
        {
            Some(msg.clone().unwrap_or_else(|| f.to_string()))
        }
        _ => None,
    }
}

/// The columns a broken UNIQUE constraint covers, from SQLite's message: `… failed: t.a, t.b`
/// names them; `… failed: index 'i'` names an index, whose columns are read (`None` when it
/// is on expressions).
fn constraint_columns(work: &Connection, message: &str) -> Result<Option<Vec<String>>> {
    match parse_unique_failure(message) {
        None => Ok(None),
        Some(UniqueFailure::Columns { columns, .. }) => {
            Ok(Some(columns.into_iter().map(str::to_owned).collect()))
        }
        Some(UniqueFailure::Index(index)) => {
            let names: Vec<Option<String>> = work
                .prepare("SELECT name FROM pragma_index_info(?1) ORDER BY seqno")?
                .query_map([index], |r| r.get(0))?
                .collect::<rusqlite::Result<_>>()?;
            Ok(names.into_iter().collect())
        }
    }
}
