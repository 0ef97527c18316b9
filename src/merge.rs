//! The three-way merge of their changes with ours: what merges by itself, what is renumbered,
//! what is a conflict, and how a merge is applied to the working copy.
//!
//! A [`Plan`] is decided from two changesets alone (base → remote is theirs, base → working
//! copy is ours), with the two databases read only to find free keys; [`Plan::apply`] then
//! writes it inside the caller's transaction on the working copy. [`crate::pull`] owns the
//! when and the locking; this module owns the what.

use std::collections::HashMap;

use rusqlite::{Connection, OptionalExtension};

pub use crate::diff::ConflictKind;
use crate::diff::{Changeset, RowChange, SchemaChange, SequenceChange, TableDiff};
use crate::schema::{
    foreign_key_scope, foreign_keys, parse_unique_failure, ForeignKey, ObjectKind, Orphan,
    UniqueFailure,
};
use crate::sql;
use crate::value::Value;
use crate::{Error, Result};

/// How conflicts are settled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resolve {
    /// Report them and change nothing.
    Refuse,
    /// Keep the working copy's side.
    Ours,
    /// Take the remote's side.
    Theirs,
}

/// How a pull settles what both sides changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MergeOptions {
    /// How the conflicts of tables not named in `tables` are settled.
    pub resolve: Resolve,
    /// Per table, by name: how that table's conflicts are settled.
    pub tables: HashMap<String, Resolve>,
    /// Renumber our new rows whose integer key their new rows took, instead of reporting a
    /// conflict.
    pub renumber: bool,
}

impl MergeOptions {
    /// How the conflicts of `table` are settled.
    pub fn resolve_for(&self, table: &str) -> Resolve {
        self.tables.get(table).copied().unwrap_or(self.resolve)
    }

    /// The conflicts that stop the pull: those of tables settled by [`Resolve::Refuse`], and
    /// every foreign-key conflict, which no side settles.
    pub(crate) fn unsettled(&self, conflicts: &[MergeConflict]) -> Vec<MergeConflict> {
        conflicts
            .iter()
            .filter(|c| {
                c.kind == ConflictKind::ForeignKey || self.resolve_for(&c.table) == Resolve::Refuse
            })
            .cloned()
            .collect()
    }
}

/// One of our new rows moved to a key free on both sides, because their new row took its key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Renumbered {
    pub table: String,
    /// The key column as the working copy names it: its INTEGER PRIMARY KEY, or a rowid alias.
    pub column: String,
    pub from: i64,
    pub to: i64,
}

/// Something both sides changed in ways that do not merge. `key` is their row's key; a cell
/// conflict names its `column` and the three values; a unique conflict names the
/// `constraint` and the key of our row that holds the same values (`ours_key`); a foreign-key
/// conflict names the child row (`key`), its `column` and the `constraint` it breaks.
#[derive(Debug, Clone)]
pub struct MergeConflict {
    pub table: String,
    pub kind: ConflictKind,
    pub key: Vec<Value>,
    pub column: Option<String>,
    pub base: Option<Value>,
    pub ours: Option<Value>,
    pub theirs: Option<Value>,
    pub constraint: Option<String>,
    pub ours_key: Option<Vec<Value>>,
}

#[derive(Debug, Default, Clone)]
pub struct PullReport {
    /// False when the remote had not moved since the last sync: nothing was downloaded.
    pub downloaded: bool,
    /// How their changes were read: from the pages the replication log wrote, from whole
    /// tables (and why), or over SQL.
    pub read: Option<String>,
    /// Their row changes applied to the working copy.
    pub applied: usize,
    /// Rows changed on both sides whose cells merged without conflict.
    pub merged: usize,
    /// Conflicts settled by `--ours` or `--theirs`.
    pub resolved: usize,
    /// Their schema changes applied.
    pub schema_changes: usize,
    /// Our new rows renumbered (with every reference to them in our rows).
    pub renumbered: Vec<Renumbered>,
}

/// Removes from `theirs` the row changes that are our own interrupted push coming back: the
/// remote holds exactly the row we pushed (or lacks the row we deleted). Ours still holds that
/// change, or the app's later edit of it, which then merges as ours alone.
///
/// ```text
/// base: (3, n=3)   pushed: (3, n=-5)   remote: (3, n=-5)   working copy: (3, n=-6)
/// theirs (3, n=-5) is stripped; ours (3, n=-6) stays pending and is pushed next.
/// ```
pub(crate) fn strip_our_push(theirs: &mut Changeset, pushed: &Changeset) {
    for t in &mut theirs.tables {
        let Some(p) = pushed.tables.iter().find(|p| p.table.name == t.table.name) else {
            continue;
        };
        if p.columns != t.columns {
            continue;
        }
        let sent: HashMap<String, &RowChange> =
            p.changes.iter().map(|c| (p.key_text(c.row()), c)).collect();
        let mut changes = std::mem::take(&mut t.changes);
        changes.retain(|ch| match (ch, sent.get(&t.key_text(ch.row()))) {
            (RowChange::Delete(_), Some(RowChange::Delete(_))) => false,
            (
                RowChange::Insert(r) | RowChange::Update { new: r, .. },
                Some(RowChange::Insert(s) | RowChange::Update { new: s, .. }),
            ) => r != s,
            _ => true,
        });
        t.changes = changes;
    }
}

/// What a pull changes in the working copy, decided from ours and theirs alone.
pub(crate) struct Plan {
    /// Our triggers, suspended while the merge applies.
    suspend: Vec<String>,
    ddl: Vec<String>,
    /// Applied before any write of theirs, so their rows find their keys free.
    renumbers: Vec<Renumbered>,
    writes: Vec<Write>,
    sequences: Vec<SequenceChange>,
    /// The merged set of triggers, created last.
    triggers: Vec<String>,
    user_version: Option<i64>,
    pub(crate) conflicts: Vec<MergeConflict>,
    pub(crate) report: PullReport,
}

impl Plan {
    /// Plans the merge. `work` and `theirs_db` are read only to find keys free on both sides
    /// for renumbered rows.
    pub(crate) fn new(
        ours: &Changeset,
        theirs: &Changeset,
        opts: &MergeOptions,
        work: &Connection,
        theirs_db: &Connection,
    ) -> Result<Plan> {
        let ddl = merge_schema(ours, theirs)?;
        let mut m = Merge {
            opts,
            keys: KeySpace {
                sides: [work, theirs_db],
                next: HashMap::new(),
            },
            writes: Vec::new(),
            conflicts: Vec::new(),
            report: PullReport {
                schema_changes: ddl.len(),
                ..PullReport::default()
            },
        };
        for t in &theirs.tables {
            let mine = ours.tables.iter().find(|o| o.table.name == t.table.name);
            m.table(t, mine)?;
        }
        let Merge {
            writes,
            conflicts,
            mut report,
            ..
        } = m;
        report.applied = writes.len();
        report.resolved = conflicts.len();
        Ok(Plan {
            suspend: ours.new_triggers.iter().map(|(n, _)| n.clone()).collect(),
            ddl,
            renumbers: report.renumbered.clone(),
            writes,
            sequences: theirs.sequences.clone(),
            triggers: merged_triggers(ours, theirs)?,
            user_version: theirs.user_version.filter(|_| ours.user_version.is_none()),
            conflicts,
            report,
        })
    }

    /// Applies the plan inside the caller's write transaction on the working copy, and
    /// returns the conflicts met: UNIQUE ones (with [`Resolve::Refuse`] the caller then rolls
    /// back; otherwise each was settled, see [`Write::apply_settling`]) and foreign-key ones,
    /// which nothing settles: the caller always rolls back. Every trigger is suspended
    /// and the merged set re-created at the end, so rows arriving from the remote fire
    /// nothing (their effects arrive as rows too).
    pub(crate) fn apply(
        &mut self,
        work: &Connection,
        theirs_db: &Connection,
        merge: &MergeOptions,
    ) -> Result<Vec<MergeConflict>> {
        let mut unique = Vec::new();
        for name in &self.suspend {
            work.execute_batch(&format!("DROP TRIGGER {}", sql::ident(name)))?;
        }
        for stmt in &self.ddl {
            work.execute_batch(stmt)?;
        }
        let fks = foreign_keys(work)?;
        let scope = foreign_key_scope(
            &fks,
            self.writes
                .iter()
                .map(Write::table)
                .chain(self.renumbers.iter().map(|r| r.table.as_str())),
        );
        let before = orphans(work, &scope)?;
        for r in &self.renumbers {
            r.apply(work, &fks)?;
        }
        // Deletes, then updates, then inserts: a UNIQUE value that moves between rows (a
        // deleted row's to a new one, or a swap applied as a move) is free by the time it
        // lands.
        let mut applier = Applier::new(work, theirs_db)?;
        for phase in 0..3 {
            for (i, w) in self.writes.iter().enumerate() {
                let resolve = merge.resolve_for(w.table());
                unique.extend(applier.phase(phase, i, w, resolve)?);
            }
        }
        self.report.applied = applier.applied;
        // A row of theirs pointing at a row we deleted, or ours at one they deleted: never
        // left behind silently. Orphans that were there before are not the merge's doing.
        for (child, rowid, parent, fkid) in orphans(work, &scope)?.difference(&before) {
            unique.push(orphan_conflict(work, child, *rowid, parent, *fkid)?);
        }
        for q in &self.sequences {
            let current = sequence(work, &q.table)?;
            let value = match (current, q.new) {
                (Some(a), Some(b)) => Some(a.max(b)),
                (a, b) => b.or(a),
            };
            if value.is_some() {
                crate::workspace::set_sequence(work, &q.table, value)?;
            }
        }
        for create in &self.triggers {
            work.execute_batch(create)?;
        }
        if let Some(v) = self.user_version {
            work.pragma_update(None, "user_version", v)?;
        }
        Ok(unique)
    }
}

/// One change to make in the working copy, by column name.
enum Write {
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

impl Write {
    /// Their change of `set` in the row at `key`: a [`Write::Move`] when it moves a value a
    /// UNIQUE constraint of the table covers.
    fn update(theirs: &TableDiff, key: Vec<(String, Value)>, set: Vec<(String, Value)>) -> Write {
        let table = theirs.table.name.clone();
        let moves = theirs
            .unique
            .iter()
            .flatten()
            .any(|&c| set.iter().any(|(name, _)| *name == theirs.columns[c]));
        if moves {
            Write::Move { table, key, set }
        } else {
            Write::Update { table, key, set }
        }
    }

    fn table(&self) -> &str {
        match self {
            Write::Insert { table, .. }
            | Write::Delete { table, .. }
            | Write::Update { table, .. }
            | Write::Move { table, .. } => table,
        }
    }

    /// The key of the row this write leaves, by name.
    fn key(&self) -> Vec<(String, Value)> {
        match self {
            Write::Insert {
                columns, key, row, ..
            } => key
                .iter()
                .map(|&k| (columns[k].clone(), row[k].clone()))
                .collect(),
            Write::Delete { key, .. } | Write::Update { key, .. } | Write::Move { key, .. } => {
                key.clone()
            }
        }
    }
}

/// Applies a plan's writes to the working copy in its three phases (deletes, updates,
/// inserts), keeping the rows a [`Write::Move`] took out until it puts them back, and settling
/// the UNIQUE conflicts a write meets.
struct Applier<'c> {
    work: &'c Connection,
    /// The remote copy: what a row of ours that must give way becomes.
    theirs: &'c Connection,
    /// Data-column names of the working copy's and the remote copy's tables.
    ours_names: HashMap<String, Vec<String>>,
    theirs_names: HashMap<String, Vec<String>>,
    /// Our rows a move took out, by the write's position.
    taken: HashMap<usize, Vec<(String, Value)>>,
    /// Writes that landed.
    applied: usize,
}

impl<'c> Applier<'c> {
    fn new(work: &'c Connection, theirs: &'c Connection) -> Result<Applier<'c>> {
        let names = |conn: &Connection| -> Result<HashMap<String, Vec<String>>> {
            let mut out = HashMap::new();
            for t in crate::schema::load(conn)?.tables {
                let names = t.data_names()?;
                out.insert(t.name, names);
            }
            Ok(out)
        };
        Ok(Applier {
            work,
            theirs,
            ours_names: names(work)?,
            theirs_names: names(theirs)?,
            taken: HashMap::new(),
            applied: 0,
        })
    }

    /// One phase's part of write `i`: 0 deletes (and takes out moved rows), 1 updates, 2
    /// inserts (and puts moved rows back). Returns the UNIQUE conflict met, settled by
    /// `resolve` (see [`Applier::settle`]).
    fn phase(
        &mut self,
        phase: u8,
        i: usize,
        w: &Write,
        resolve: Resolve,
    ) -> Result<Option<MergeConflict>> {
        let row = match (phase, w) {
            (0, Write::Delete { table, key }) => {
                self.delete(table, key)?;
                self.applied += 1;
                return Ok(None);
            }
            (0, Write::Move { table, key, .. }) => {
                let ours = self.row(self.work, &self.ours_names, table, key)?.ok_or_else(|| {
                    Error::Refused(format!(
                        "table {table:?}: the row at {} that their change moves is not in the working copy",
                        key_list(key)
                    ))
                })?;
                self.delete(table, key)?;
                self.taken.insert(i, ours);
                return Ok(None);
            }
            (1, Write::Update { table, key, set }) => match self.update(table, key, set) {
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
            (2, Write::Insert { columns, row, .. }) => {
                columns.iter().cloned().zip(row.iter().cloned()).collect()
            }
            (2, Write::Move { table, set, .. }) => {
                let mut row = self.taken.get(&i).cloned().ok_or_else(|| {
                    Error::Refused(format!(
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
        w: &Write,
        target: Vec<(String, Value)>,
        ours: Option<Vec<(String, Value)>>,
        resolve: Resolve,
    ) -> Result<Option<MergeConflict>> {
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
                    return Err(Error::Refused(format!(
                        "table {table:?}: their row ({}) breaks {constraint}, and the row of ours holding the same values cannot be found to give way",
                        key_list(&key)
                    )));
                };
                self.give_way(table, holder)?;
                match w {
                    Write::Update { key, set, .. } => self.update(table, key, set)?,
                    _ => self.insert(table, &target)?,
                }
                self.applied += 1;
            }
        }
        Ok(Some(MergeConflict {
            table: table.to_owned(),
            kind: ConflictKind::Unique,
            key: key.into_iter().map(|(_, v)| v).collect(),
            column: columns.map(|c| c.join(", ")),
            base: None,
            ours: None,
            theirs: None,
            constraint: Some(constraint),
            ours_key: holder.map(|h| h.into_iter().map(|(_, v)| v).collect()),
        }))
    }

    /// Our row at `key` gives way to theirs: it becomes its remote version (keeping what only
    /// the working copy's columns hold), or goes if the remote has no such row (it is new here).
    /// A row the team shares is never deleted for it.
    fn give_way(&mut self, table: &str, key: &[(String, Value)]) -> Result<()> {
        let ours = self.row(self.work, &self.ours_names, table, key)?;
        let remote = self.row(self.theirs, &self.theirs_names, table, key)?;
        self.delete(table, key)?;
        if let (Some(mut row), Some(remote)) = (ours, remote) {
            overlay(&mut row, &remote);
            self.insert(table, &row)?;
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
                        Error::Refused(format!(
                            "table {table:?}: the constraint's column {c:?} is not in the row written"
                        ))
                    })?,
            );
        }
        let n = key.len();
        let same: Vec<String> = columns
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{} IS ?{}", sql::ident(c), n + i + 1))
            .collect();
        let q = format!(
            "SELECT {} FROM {} WHERE {} AND NOT ({}) LIMIT 1",
            key.iter()
                .map(|(k, _)| sql::ident(k))
                .collect::<Vec<_>>()
                .join(", "),
            sql::ident(table),
            same.join(" AND "),
            where_key(key, 1)
        );
        let args = key.iter().map(|(_, v)| v).chain(values.iter());
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
        let q = format!(
            "SELECT {} FROM {} WHERE {}",
            cols.join(", "),
            sql::ident(table),
            where_key(key, 1)
        );
        let values: Option<Vec<Value>> = conn
            .query_row(
                &q,
                rusqlite::params_from_iter(key.iter().map(|(_, v)| v)),
                |r| (0..names.len()).map(|i| r.get::<_, Value>(i)).collect(),
            )
            .optional()?;
        Ok(values.map(|v| names.iter().cloned().zip(v).collect()))
    }

    fn insert(&self, table: &str, row: &[(String, Value)]) -> Result<()> {
        let cols: Vec<String> = row.iter().map(|(c, _)| sql::ident(c)).collect();
        let marks: Vec<String> = (1..=row.len()).map(|i| format!("?{i}")).collect();
        let q = format!(
            "INSERT OR ABORT INTO {} ({}) VALUES ({})",
            sql::ident(table),
            cols.join(", "),
            marks.join(", ")
        );
        self.work
            .prepare_cached(&q)?
            .execute(rusqlite::params_from_iter(row.iter().map(|(_, v)| v)))?;
        Ok(())
    }

    fn delete(&self, table: &str, key: &[(String, Value)]) -> Result<()> {
        let q = format!(
            "DELETE FROM {} WHERE {}",
            sql::ident(table),
            where_key(key, 1)
        );
        self.work
            .prepare_cached(&q)?
            .execute(rusqlite::params_from_iter(key.iter().map(|(_, v)| v)))?;
        Ok(())
    }

    fn update(&self, table: &str, key: &[(String, Value)], set: &[(String, Value)]) -> Result<()> {
        let sets: Vec<String> = set
            .iter()
            .enumerate()
            .map(|(i, (c, _))| format!("{} = ?{}", sql::ident(c), i + 1))
            .collect();
        let q = format!(
            "UPDATE OR ABORT {} SET {} WHERE {}",
            sql::ident(table),
            sets.join(", "),
            where_key(key, set.len() + 1)
        );
        let args = set.iter().map(|(_, v)| v).chain(key.iter().map(|(_, v)| v));
        self.work
            .prepare_cached(&q)?
            .execute(rusqlite::params_from_iter(args))?;
        Ok(())
    }
}

/// `"a" = ?1 AND "b" = ?2`, numbering from `first`.
fn where_key(key: &[(String, Value)], first: usize) -> String {
    key.iter()
        .enumerate()
        .map(|(i, (c, _))| format!("{} = ?{}", sql::ident(c), first + i))
        .collect::<Vec<_>>()
        .join(" AND ")
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

fn named(t: &TableDiff, row: &[Value]) -> HashMap<String, Value> {
    t.columns.iter().cloned().zip(row.iter().cloned()).collect()
}

fn key_pairs(t: &TableDiff, row: &[Value]) -> Vec<(String, Value)> {
    t.key
        .iter()
        .map(|&k| (t.columns[k].clone(), row[k].clone()))
        .collect()
}

/// The merge of their changes with ours, as it is built table by table.
struct Merge<'c> {
    opts: &'c MergeOptions,
    keys: KeySpace<'c>,
    writes: Vec<Write>,
    conflicts: Vec<MergeConflict>,
    report: PullReport,
}

impl Merge<'_> {
    /// Merges their changes to one table with ours, row by row and cell by cell.
    fn table(&mut self, theirs: &TableDiff, ours: Option<&TableDiff>) -> Result<()> {
        let renumber = self.opts.renumber && integer_key(theirs).is_some();
        let keys = &mut self.keys;
        merge_table(
            theirs,
            ours,
            self.opts.resolve_for(&theirs.table.name),
            &mut self.writes,
            &mut self.conflicts,
            &mut self.report,
            &mut |_| {
                if renumber {
                    keys.take(theirs).map(Some)
                } else {
                    Ok(None)
                }
            },
        )
    }
}

/// Merges their changes to one table with ours, row by row and cell by cell. `renumber` is
/// asked about each integer key that different new rows on both sides took, and gives the
/// key ours moves to, or `None` to merge them as one row (and conflict where they differ).
fn merge_table(
    theirs: &TableDiff,
    ours: Option<&TableDiff>,
    resolve: Resolve,
    writes: &mut Vec<Write>,
    conflicts: &mut Vec<MergeConflict>,
    report: &mut PullReport,
    renumber: &mut dyn FnMut(i64) -> Result<Option<i64>>,
) -> Result<()> {
    let table = theirs.table.name.clone();
    let mine: HashMap<String, &RowChange> = ours
        .map(|o| o.changes.iter().map(|c| (o.key_text(c.row()), c)).collect())
        .unwrap_or_default();
    let mine_cols = |c: &RowChange| ours.map(|o| named(o, c.row()));
    for ch in &theirs.changes {
        let key = key_pairs(theirs, ch.row());
        let key_values: Vec<Value> = key.iter().map(|(_, v)| v.clone()).collect();
        let insert_theirs = |row: &[Value]| Write::Insert {
            table: table.clone(),
            columns: theirs.columns.clone(),
            key: theirs.key.clone(),
            row: row.to_vec(),
        };
        let Some(our) = mine.get(&theirs.key_text(ch.row())) else {
            writes.push(match ch {
                RowChange::Insert(r) => insert_theirs(r),
                RowChange::Delete(_) => Write::Delete {
                    table: table.clone(),
                    key,
                },
                RowChange::Update { old, new } => Write::update(
                    theirs,
                    key,
                    (0..new.len())
                        .filter(|&i| old[i] != new[i])
                        .map(|i| (theirs.columns[i].clone(), new[i].clone()))
                        .collect(),
                ),
            });
            continue;
        };
        if let (RowChange::Insert(tr), RowChange::Insert(or), [Value::Integer(k)]) =
            (ch, *our, &key_values[..])
        {
            if tr != or {
                if let Some(to) = renumber(*k)? {
                    report.renumbered.push(Renumbered {
                        table: table.clone(),
                        column: theirs.columns[theirs.key[0]].clone(),
                        from: *k,
                        to,
                    });
                    writes.push(insert_theirs(tr));
                    continue;
                }
            }
        }
        let row_conflict = |conflicts: &mut Vec<MergeConflict>| {
            conflicts.push(MergeConflict {
                table: table.clone(),
                kind: ConflictKind::Row,
                key: key_values.clone(),
                column: None,
                base: None,
                ours: None,
                theirs: None,
                constraint: None,
                ours_key: None,
            })
        };
        match (ch, *our) {
            (RowChange::Delete(_), RowChange::Delete(_)) => {}
            // Deleted on one side, changed on the other.
            (RowChange::Delete(_), RowChange::Update { .. }) => {
                row_conflict(conflicts);
                if resolve == Resolve::Theirs {
                    writes.push(Write::Delete {
                        table: table.clone(),
                        key,
                    });
                }
            }
            (RowChange::Update { new, .. }, RowChange::Delete(_)) => {
                row_conflict(conflicts);
                if resolve == Resolve::Theirs {
                    writes.push(insert_theirs(new));
                }
            }
            // Both changed (or both inserted) the row: merge cell by cell.
            (
                RowChange::Update { .. } | RowChange::Insert(_),
                RowChange::Update { .. } | RowChange::Insert(_),
            ) => {
                let base = match ch {
                    RowChange::Update { old, .. } => Some(named(theirs, old)),
                    _ => None,
                };
                let new = named(theirs, ch.row());
                let our_row = mine_cols(our).unwrap_or_default();
                let mut set = Vec::new();
                let mut clean = true;
                for col in &theirs.columns {
                    let (b, t) = (base.as_ref().and_then(|b| b.get(col)), new.get(col));
                    let o = our_row.get(col).or(b);
                    if t == o || t == b {
                        continue;
                    }
                    if o == b {
                        set.push((col.clone(), t.cloned().unwrap_or(Value::Null)));
                        continue;
                    }
                    clean = false;
                    conflicts.push(MergeConflict {
                        table: table.clone(),
                        kind: ConflictKind::Cell,
                        key: key_values.clone(),
                        column: Some(col.clone()),
                        base: b.cloned(),
                        ours: o.cloned(),
                        theirs: t.cloned(),
                        constraint: None,
                        ours_key: None,
                    });
                    if resolve == Resolve::Theirs {
                        set.push((col.clone(), t.cloned().unwrap_or(Value::Null)));
                    }
                }
                if clean {
                    report.merged += usize::from(!set.is_empty());
                }
                if !set.is_empty() {
                    writes.push(Write::update(theirs, key, set));
                }
            }
            // Insert against update/delete cannot happen: the base has the row or not.
            _ => row_conflict(conflicts),
        }
    }
    Ok(())
}

/// The rows of `tables` whose foreign keys point at nothing, as (table, rowid, parent, fkid).
fn orphans(
    work: &Connection,
    tables: &std::collections::BTreeSet<String>,
) -> Result<std::collections::BTreeSet<Orphan>> {
    let mut out = std::collections::BTreeSet::new();
    for t in tables {
        let mut st = work.prepare(&crate::schema::orphans_sql(t))?;
        let rows = st.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))?;
        for row in rows {
            out.insert(row?);
        }
    }
    Ok(out)
}

/// The conflict of a child row the merge would leave pointing at nothing, named by its key
/// (its INTEGER PRIMARY KEY or rowid) and the columns of the broken foreign key.
fn orphan_conflict(
    work: &Connection,
    child: &str,
    rowid: Option<i64>,
    parent: &str,
    fkid: i64,
) -> Result<MergeConflict> {
    let columns: Vec<String> = work
        .prepare("SELECT \"from\" FROM pragma_foreign_key_list(?1) WHERE id = ?2 ORDER BY seq")?
        .query_map(rusqlite::params![child, fkid], |r| r.get(0))?
        .collect::<rusqlite::Result<_>>()?;
    Ok(MergeConflict {
        table: child.to_owned(),
        kind: ConflictKind::ForeignKey,
        key: rowid.map(Value::Integer).into_iter().collect(),
        column: Some(columns.join(", ")),
        base: None,
        ours: None,
        theirs: None,
        constraint: Some(format!(
            "FOREIGN KEY {child}({}) REFERENCES {parent}",
            columns.join(", ")
        )),
        ours_key: None,
    })
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

/// The one integer key column of a rowid table (its INTEGER PRIMARY KEY, or the hidden rowid
/// through its alias), as named in the table's data rows: the keys a renumbering may move.
///
/// ```text
/// CREATE TABLE t(id INTEGER PRIMARY KEY, v)  -> Some("id")
/// CREATE TABLE t(v)                          -> Some("rowid")   (the hidden rowid is not data)
/// CREATE TABLE t(email TEXT PRIMARY KEY, v)  -> Some("rowid")   (the email stays as it is)
/// CREATE TABLE t(a, b, PRIMARY KEY(a, b)) WITHOUT ROWID -> None
/// ```
fn integer_key(t: &TableDiff) -> Option<&str> {
    match (&t.table.key, &t.key[..]) {
        (crate::schema::RowKey::Rowid { .. }, [k]) => Some(t.columns[*k].as_str()),
        _ => None,
    }
}

/// Hands out keys for renumbered rows: free on both sides, past both maxima and both
/// AUTOINCREMENT counters of the table, one after the other.
struct KeySpace<'c> {
    /// The working copy and the remote copy.
    sides: [&'c Connection; 2],
    next: HashMap<String, i64>,
}

impl KeySpace<'_> {
    fn take(&mut self, t: &TableDiff) -> Result<i64> {
        let name = &t.table.name;
        let next = match self.next.get(name) {
            Some(&n) => n,
            None => {
                let col = integer_key(t).ok_or_else(|| {
                    Error::Refused(format!("table {name:?} has no integer key to renumber"))
                })?;
                let mut top = 0i64;
                for conn in self.sides {
                    let max: Option<i64> = conn.query_row(
                        &format!("SELECT max({}) FROM {}", sql::ident(col), sql::ident(name)),
                        [],
                        |r| r.get(0),
                    )?;
                    top = top
                        .max(max.unwrap_or(0))
                        .max(sequence(conn, name)?.unwrap_or(0));
                }
                top.checked_add(1).ok_or_else(|| {
                    Error::Refused(format!(
                        "table {name:?}: no key is free past {top} to renumber a new row to"
                    ))
                })?
            }
        };
        self.next.insert(name.clone(), next.saturating_add(1));
        Ok(next)
    }
}

/// The table's AUTOINCREMENT counter, if it has one.
fn sequence(conn: &Connection, table: &str) -> Result<Option<i64>> {
    let has: bool = conn.query_row(
        "SELECT count(*) > 0 FROM sqlite_schema WHERE name = 'sqlite_sequence'",
        [],
        |r| r.get(0),
    )?;
    if !has {
        return Ok(None);
    }
    Ok(conn
        .query_row(
            "SELECT seq FROM sqlite_sequence WHERE name = ?1",
            [table],
            |r| r.get(0),
        )
        .optional()?)
}

impl Renumbered {
    /// Moves our row to its new key, with every reference to it in the working copy (which
    /// holds only our rows at that key: theirs arrive after). A counter behind the new key
    /// follows it, so the app's next AUTOINCREMENT id is past it.
    fn apply(&self, work: &Connection, fks: &[ForeignKey]) -> Result<()> {
        let t = sql::ident(&self.table);
        let col = &self.column;
        let moved = work.execute(
            &format!(
                "UPDATE OR ABORT {t} SET {0} = ?1 WHERE {0} = ?2",
                sql::ident(col)
            ),
            rusqlite::params![self.to, self.from],
        )?;
        if moved != 1 {
            return Err(Error::Refused(format!(
                "table {:?}: renumbering row {} to {} moved {moved} rows",
                self.table, self.from, self.to
            )));
        }
        for fk in fks.iter().filter(|f| {
            f.parent.eq_ignore_ascii_case(&self.table) && f.to.eq_ignore_ascii_case(col)
        }) {
            work.execute(
                &format!(
                    "UPDATE OR ABORT {} SET {1} = ?1 WHERE {1} = ?2",
                    sql::ident(&fk.child),
                    sql::ident(&fk.from)
                ),
                rusqlite::params![self.to, self.from],
            )?;
        }
        if sequence(work, &self.table)?.is_some_and(|seq| seq < self.to) {
            crate::workspace::set_sequence(work, &self.table, Some(self.to))?;
        }
        Ok(())
    }
}

/// The DDL that brings their schema changes into the working copy, or a conflict when both
/// sides changed the same object differently. Triggers are handled by [`merged_triggers`].
fn merge_schema(ours: &Changeset, theirs: &Changeset) -> Result<Vec<String>> {
    let conflict = |what: String| {
        Error::Conflict(format!(
            "{what} was changed both here and on the remote; nothing was pulled. Undo one side's change and pull again"
        ))
    };
    let ours_touches = |name: &str| {
        ours.schema.iter().any(|c| match c {
            SchemaChange::TableAdded { name: n, .. }
            | SchemaChange::TableDropped { name: n, .. }
            | SchemaChange::TableRebuilt { name: n, .. }
            | SchemaChange::ColumnsAdded { table: n, .. } => n == name,
            _ => false,
        }) || ours
            .tables
            .iter()
            .any(|t| t.table.name == name && !t.changes.is_empty())
    };
    for t in theirs.tables.iter().filter(|t| !t.changes.is_empty()) {
        let gone_here = ours.schema.iter().any(|c| match c {
            SchemaChange::TableDropped { name, .. } | SchemaChange::TableRebuilt { name, .. } => {
                name == &t.table.name
            }
            _ => false,
        });
        if gone_here {
            return Err(conflict(format!("table {:?}", t.table.name)));
        }
    }
    let mut ddl = Vec::new();
    for ch in &theirs.schema {
        if ours.schema.contains(ch) {
            continue; // the same change on both sides
        }
        match ch {
            SchemaChange::TableAdded { name, sql: create } => {
                if ours_touches(name) {
                    return Err(conflict(format!("table {name:?}")));
                }
                ddl.push(create.clone());
            }
            SchemaChange::TableDropped { name, .. } => {
                if ours_touches(name) {
                    return Err(conflict(format!("table {name:?}")));
                }
                ddl.push(format!("DROP TABLE {}", sql::ident(name)));
            }
            SchemaChange::TableRebuilt { name, new_sql, .. } => {
                if ours_touches(name) {
                    return Err(conflict(format!("table {name:?}")));
                }
                ddl.push(format!("DROP TABLE {}", sql::ident(name)));
                ddl.push(new_sql.clone());
            }
            SchemaChange::ColumnsAdded { table, columns, .. } => {
                let ours_schema = ours.schema.iter().any(|c| match c {
                    SchemaChange::TableDropped { name, .. }
                    | SchemaChange::TableRebuilt { name, .. } => name == table,
                    SchemaChange::ColumnsAdded { table: t, .. } => t == table,
                    _ => false,
                });
                if ours_schema {
                    return Err(conflict(format!("table {table:?}")));
                }
                for c in columns {
                    ddl.push(format!("ALTER TABLE {} ADD COLUMN {c}", sql::ident(table)));
                }
            }
            SchemaChange::ObjectAdded { kind, name, .. }
            | SchemaChange::ObjectDropped { kind, name, .. }
            | SchemaChange::ObjectChanged { kind, name, .. }
                if *kind != ObjectKind::Trigger =>
            {
                if ours.schema.iter().any(|c| object_named(c, *kind, name)) {
                    return Err(conflict(format!("{} {name:?}", kind.as_str())));
                }
                match ch {
                    SchemaChange::ObjectAdded { sql: create, .. } => ddl.push(create.clone()),
                    SchemaChange::ObjectChanged { new_sql, .. } => {
                        ddl.push(kind.drop_sql(name));
                        ddl.push(new_sql.clone());
                    }
                    _ => ddl.push(kind.drop_sql(name)),
                }
            }
            _ => {}
        }
    }
    // Object drops first (a dropped table takes its indexes along), then table DDL, then new
    // indexes and views, which may refer to new tables or columns. The sort is stable.
    let table_ddl = [
        "CREATE TABLE",
        "DROP TABLE",
        "ALTER TABLE",
        "CREATE VIRTUAL TABLE",
    ];
    ddl.sort_by_key(|s| {
        if s.starts_with("DROP INDEX") || s.starts_with("DROP VIEW") {
            0
        } else if table_ddl.iter().any(|p| s.starts_with(p)) {
            1
        } else {
            2
        }
    });
    Ok(ddl)
}

fn object_named(c: &SchemaChange, kind: ObjectKind, name: &str) -> bool {
    match c {
        SchemaChange::ObjectAdded {
            kind: k, name: n, ..
        }
        | SchemaChange::ObjectDropped {
            kind: k, name: n, ..
        }
        | SchemaChange::ObjectChanged {
            kind: k, name: n, ..
        } => *k == kind && n == name,
        _ => false,
    }
}

/// The working copy's triggers with their trigger changes applied.
fn merged_triggers(ours: &Changeset, theirs: &Changeset) -> Result<Vec<String>> {
    let mut set: Vec<(String, String)> = ours.new_triggers.clone();
    let base: HashMap<&str, &str> = theirs
        .base_triggers
        .iter()
        .map(|(n, s)| (n.as_str(), s.as_str()))
        .collect();
    let their_new: HashMap<&str, &str> = theirs
        .new_triggers
        .iter()
        .map(|(n, s)| (n.as_str(), s.as_str()))
        .collect();
    let our_new: HashMap<String, String> = ours.new_triggers.iter().cloned().collect();
    let names: std::collections::BTreeSet<&str> =
        base.keys().chain(their_new.keys()).copied().collect();
    for name in names {
        let (b, t, o) = (
            base.get(name).copied(),
            their_new.get(name).copied(),
            our_new.get(name).map(String::as_str),
        );
        if t == b || t == o {
            continue;
        }
        if o != b {
            return Err(Error::Conflict(format!(
                "trigger {name:?} was changed both here and on the remote; nothing was pulled"
            )));
        }
        set.retain(|(n, _)| n != name);
        if let Some(create) = t {
            set.push((name.to_owned(), create.to_owned()));
        }
    }
    Ok(set.into_iter().map(|(_, s)| s).collect())
}
