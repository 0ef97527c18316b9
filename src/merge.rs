//! The three-way merge of their changes with ours: what merges by itself, what is renumbered,
//! what is a conflict, and how a merge is applied to the working copy.
//!
//! A [`Plan`] is decided from two changesets alone (base → remote is theirs, base → working
//! copy is ours), with the two databases read only to find free keys; [`Plan::apply`] then
//! writes it inside the caller's transaction on the working copy. [`crate::pull`] owns the
//! when and the locking; this module owns the what.

use std::collections::HashMap;

use rusqlite::{Connection, OptionalExtension};
use serde::Serialize;

use crate::changeset::{Changeset, RowChange, SchemaChange, SequenceChange, TableDiff};
use crate::conflict::{Conflict, ConflictKind, MergeOptions, Outcome, Resolve};
use crate::orphans::{Gone, Orphans};
use crate::schema::{foreign_keys, parse_unique_failure, ForeignKey, UniqueFailure};
use crate::sql;
use crate::unsettled::Unsettled;
use crate::value::Value;
use crate::whole_table::Taken;

mod migrations;
mod report;
use crate::{Context, Error, Result};
use migrations::{
    carry_ours_through_theirs, carry_through_migrations, columns_added_apart, merge_schema,
    merged_triggers, merged_user_version, settle_both_reshaped, their_fixes_first, Carried,
    KeptColumn,
};
pub use report::PullReport;

/// One of our new rows moved to a key free on both sides, because their new row took its key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Renumbered {
    pub table: String,
    /// The key column as the working copy names it: its INTEGER PRIMARY KEY, or a rowid alias.
    pub column: String,
    pub from: i64,
    pub to: i64,
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
#[derive(Default)]
pub(crate) struct Plan {
    /// Our triggers, suspended while the merge applies.
    suspend: Vec<String>,
    ddl: Vec<String>,
    /// Columns they dropped that `--ours` keeps ([`KeptColumn`]).
    kept: Vec<KeptColumn>,
    /// Our changes that their new definition rejects, taken back (`--theirs`) before the DDL,
    /// and tables rebuilt to their definition (a schema conflict settled `--theirs`).
    before_ddl: Vec<(String, Vec<Value>)>,
    /// Indexes made after the DDL where missing: those of tables rebuilt to their definition.
    indexes: Vec<(String, String)>,
    /// Applied before any write of theirs, so their rows find their keys free.
    renumbers: Vec<Renumbered>,
    writes: Vec<LocalWrite>,
    sequences: Vec<SequenceChange>,
    /// The merged set of triggers, created last.
    triggers: Vec<String>,
    /// The rows their side deleted, as they were: what `--ours` restores under a row of ours
    /// that points at one.
    gone: Vec<Gone>,
    user_version: Option<i64>,
    /// Tables and schema objects a schema conflict keeps whole from one side.
    taken: Taken,
    pub(crate) conflicts: Vec<Conflict>,
    pub(crate) report: PullReport,
}

impl Plan {
    /// Plans the merge. `work` and `theirs_db` are read only to find keys free on both sides
    /// for renumbered rows, and the tables of indexes and triggers.
    ///
    /// A schema conflict that `--ours` or `--theirs` settles and no finer merge does (a table
    /// dropped, renamed, created or re-keyed on one side, say) keeps its object whole from
    /// that side ([`Taken`]), and the merge is planned again without it.
    ///
    /// `marks` are what an interrupted pull left unsettled: a change of ours to a marked schema
    /// object is a schema conflict even where theirs did not change it, settled the same way.
    pub(crate) fn new(
        ours: &Changeset,
        theirs: &Changeset,
        opts: &MergeOptions,
        work: &Connection,
        theirs_db: &Connection,
        marks: &Unsettled,
    ) -> Result<Plan> {
        let mut taken = Taken::default();
        loop {
            let stripped = if taken.is_empty() {
                None
            } else {
                Some(taken.strip(ours, theirs, work, theirs_db)?)
            };
            let (o, t) = stripped.as_ref().map_or((ours, theirs), |(o, t)| (o, t));
            let mut plan = Plan::merged(o, t, opts, work, theirs_db)?;
            for c in marks.schema_conflicts(o, t) {
                if !plan.conflicts.iter().any(|x| x.object == c.object) {
                    plan.conflicts.push(c);
                }
            }
            if taken.settle(&plan.conflicts, opts, ours, theirs) {
                continue;
            }
            // The working copy's triggers as they are, whatever the kept side's set.
            plan.suspend = ours.new_triggers.iter().map(|(n, _)| n.clone()).collect();
            plan.report.resolved += taken.len();
            plan.report.schema.extend(taken.to_json());
            plan.taken = taken;
            return Ok(plan);
        }
    }

    fn merged(
        ours: &Changeset,
        theirs: &Changeset,
        opts: &MergeOptions,
        work: &Connection,
        theirs_db: &Connection,
    ) -> Result<Plan> {
        let user_version = match merged_user_version(ours, theirs, opts) {
            Outcome::Done(v) => v,
            Outcome::Conflicts(conflicts) => {
                return Ok(Plan {
                    conflicts,
                    ..Plan::default()
                })
            }
        };
        let carried = carry_through_migrations(ours, theirs, work)?;
        let theirs = carried.as_ref().unwrap_or(theirs);
        let Carried {
            ours: ours_carried,
            tables: carried_tables,
            conflicts: dropped_edits,
            kept,
            before_ddl,
            keep_ours,
        } = carry_ours_through_theirs(ours, theirs, work, opts)?;
        let ours = ours_carried.as_ref().unwrap_or(ours);
        let mut kept = kept;
        let apart = columns_added_apart(ours, theirs);
        let mut settled = carried_tables;
        settled.extend(apart.iter().map(|k| k.table.clone()));
        kept.extend(apart);
        let both = settle_both_reshaped(ours, theirs, work, theirs_db, opts, &settled, &keep_ours)?;
        let ours = both.ours.as_ref().unwrap_or(ours);
        let theirs = both.theirs.as_ref().unwrap_or(theirs);
        let mut before_ddl = before_ddl;
        before_ddl.extend(both.rebuilds.iter().map(|q| (q.clone(), Vec::new())));
        before_ddl.extend(their_fixes_first(ours, theirs));
        let (ddl, triggers) = match (
            merge_schema(ours, theirs, &settled),
            merged_triggers(ours, theirs),
        ) {
            (Outcome::Done(ddl), Outcome::Done(triggers)) => (ddl, triggers),
            // Stops the merge before any row is looked at: no side settles it.
            (a, b) => {
                let mut conflicts = Vec::new();
                for o in [a, b] {
                    if let Outcome::Conflicts(c) = o {
                        conflicts.extend(c);
                    }
                }
                return Ok(Plan {
                    conflicts,
                    ..Plan::default()
                });
            }
        };
        let mut keys = KeySpace::new(work, theirs_db);
        let moves = Moves::decide(ours, theirs, opts, foreign_keys(work)?, &mut keys)?;
        let mut m = Merge {
            opts,
            keys,
            writes: Vec::new(),
            conflicts: Vec::new(),
            report: PullReport {
                schema_changes: ddl.len(),
                // What merge_schema applied: theirs but for the changes we made too.
                schema: theirs
                    .listed_schema()
                    .filter(|c| !ours.schema.contains(c))
                    .map(SchemaChange::to_json)
                    .collect(),
                renumbered: moves.renumbered.clone(),
                ..PullReport::default()
            },
            moves,
        };
        for t in &theirs.tables {
            let mine = ours.tables.iter().find(|o| o.table.name == t.table.name);
            m.table(t, mine)?;
        }
        let Merge {
            writes,
            mut conflicts,
            mut report,
            ..
        } = m;
        conflicts.extend(dropped_edits);
        report.applied = writes.len();
        report.resolved = conflicts.len() + both.settled.len();
        report.schema_changes += both.settled.len();
        report.schema.extend(both.to_json());
        Ok(Plan {
            suspend: Vec::new(),
            ddl,
            kept,
            before_ddl,
            indexes: both.indexes,
            renumbers: report.renumbered.clone(),
            writes,
            sequences: theirs.sequences.clone(),
            triggers,
            gone: theirs
                .tables
                .iter()
                .flat_map(|t| {
                    t.changes.iter().filter_map(move |c| match c {
                        RowChange::Delete(r) => Some(Gone {
                            table: t.table.name.clone(),
                            row: t.columns.iter().cloned().zip(r.iter().cloned()).collect(),
                        }),
                        _ => None,
                    })
                })
                .collect(),
            user_version,
            taken: Taken::default(),
            conflicts,
            report,
        })
    }

    /// Takes these statements' rows back first, before anything else of the plan: our
    /// changes of rows an interrupted pull left unsettled, settled `--theirs`
    /// ([`Unsettled::settle_rows`]).
    pub(crate) fn take_back_first(&mut self, statements: Vec<(String, Vec<Value>)>) {
        self.before_ddl.splice(0..0, statements);
    }

    /// Applies the plan inside the caller's write transaction on the working copy, and
    /// returns the conflicts met: UNIQUE ones (with [`Resolve::Refuse`] the caller then rolls
    /// back; otherwise each was settled, see [`Applier::settle`]) and foreign-key ones,
    /// which nothing settles: the caller always rolls back. Every trigger is suspended
    /// and the merged set re-created at the end, so rows arriving from the remote fire
    /// nothing (their effects arrive as rows too).
    pub(crate) fn apply(
        &mut self,
        work: &Connection,
        theirs_db: &Connection,
        merge: &MergeOptions,
    ) -> Result<Vec<Conflict>> {
        let mut unique = Vec::new();
        for name in &self.suspend {
            work.execute_batch(&format!("DROP TRIGGER {}", sql::ident(name)))
                .during("suspending trigger", format_args!("{name:?}"))?;
        }
        let changing = "changing the schema of";
        let wc = work.path().unwrap_or("the working copy");
        for (q, args) in &self.before_ddl {
            work.execute(q, rusqlite::params_from_iter(args))
                .during(changing, wc)?;
        }
        self.taken
            .apply(work, theirs_db)
            .during("taking theirs, whole, into", wc)?;
        let mut indexes = self.indexes.clone();
        for k in &self.kept {
            indexes.extend(k.set_aside(work).during(changing, wc)?);
        }
        for stmt in &self.ddl {
            work.execute_batch(stmt).during(changing, wc)?;
        }
        for k in &self.kept {
            k.restore(work).during(changing, wc)?;
        }
        for (name, create) in indexes {
            let recreate = || -> rusqlite::Result<()> {
                let there: bool = work.query_row(
                    "SELECT count(*) > 0 FROM sqlite_schema WHERE type = 'index' AND name = ?1",
                    [&name],
                    |r| r.get(0),
                )?;
                if !there {
                    work.execute_batch(&create)?;
                }
                Ok(())
            };
            recreate().during("re-creating index", format_args!("{name:?}"))?;
        }
        let fks = foreign_keys(work)?;
        let orphans = Orphans::before(
            work,
            &fks,
            self.writes
                .iter()
                .map(LocalWrite::table)
                .chain(self.renumbers.iter().map(|r| r.table.as_str())),
        )?;
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
                let table = format_args!("{:?}", w.table());
                unique.extend(
                    applier
                        .phase(phase, i, w, resolve)
                        .during("merging their changes into table", table)?,
                );
            }
        }
        self.report.applied = applier.applied;
        // A row of theirs pointing at a row we deleted, or ours at one they deleted: never
        // left behind silently, settled only as `--ours` or `--theirs` says.
        let (broken, settled) = orphans.settle(theirs_db, &self.gone, merge)?;
        unique.extend(broken);
        self.report.references = settled;
        for q in &self.sequences {
            let current = crate::workspace::sequence(work, &q.table)?;
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
enum LocalWrite {
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
    fn insert(theirs: &TableDiff, row: &[Value]) -> LocalWrite {
        LocalWrite::Insert {
            table: theirs.table.name.clone(),
            columns: theirs.columns.clone(),
            key: theirs.key.clone(),
            row: row.to_vec(),
        }
    }

    /// Their change of `set` in the row at `key`: a [`LocalWrite::Move`] when it moves a value a
    /// UNIQUE constraint of the table covers.
    fn update(
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

    fn table(&self) -> &str {
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
struct Applier<'c> {
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
    applied: usize,
}

impl<'c> Applier<'c> {
    fn new(work: &'c Connection, theirs: &'c Connection) -> Result<Applier<'c>> {
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
    fn phase(
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
                self.give_way(table, holder)?;
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
        let q = format!(
            "SELECT {} FROM {} WHERE {} AND NOT ({}) LIMIT 1",
            names
                .iter()
                .map(|k| sql::ident(k))
                .collect::<Vec<_>>()
                .join(", "),
            sql::ident(table),
            same.join(" AND "),
            sql::where_key(&names)
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
    /// changes no data. Our new rows were already renumbered by the plan ([`Locators`]).
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
    /// Our new rows renumbered before any row merges, and the references that follow them.
    moves: Moves,
    writes: Vec<LocalWrite>,
    conflicts: Vec<Conflict>,
    report: PullReport,
}

impl Merge<'_> {
    /// Merges their changes to one table with ours, row by row ([`merge_row`]), our rows read
    /// as they will be once [`Moves`] renumbered our new rows: a reference to a moved key
    /// holds its new key, and a row is matched with theirs by its key after that. Different
    /// new rows at one integer key were told apart by [`Moves::decide`] (or, with renumbering
    /// off, merge as one row and conflict where they differ).
    fn table(&mut self, theirs: &TableDiff, ours: Option<&TableDiff>) -> Result<()> {
        let table = theirs.table.name.clone();
        let resolve = self.opts.resolve_for(&table);
        let column = integer_key(theirs).filter(|_| self.opts.renumber);
        let keys = &mut self.keys;
        let mut renumber = |_: i64| -> Result<Option<i64>> {
            column.map(|col| keys.take(&table, col)).transpose()
        };
        let moved_rows: Vec<Vec<Value>> = ours
            .map(|o| o.changes.iter().map(|c| self.moves.follow(o, c)).collect())
            .unwrap_or_default();
        let mine: HashMap<String, (&RowChange, &[Value])> = ours
            .map(|o| {
                o.changes
                    .iter()
                    .zip(&moved_rows)
                    .map(|(c, r)| (o.key_text(r), (c, &r[..])))
                    .collect()
            })
            .unwrap_or_default();
        let mut locators = Locators::new(theirs, ours);
        for ch in &theirs.changes {
            let key = key_pairs(theirs, ch.row());
            let key_values: Vec<Value> = key.iter().map(|(_, v)| v.clone()).collect();
            let conflict = |kind, column: Option<String>, values: [Option<Value>; 3]| {
                let [base, ours, theirs] = values.map(|v| v.map(|v| vec![v]));
                Conflict {
                    columns: column.into_iter().collect(),
                    base,
                    ours,
                    theirs,
                    ..Conflict::new(&table, kind, key_values.clone())
                }
            };
            if let (Some(locators), RowChange::Insert(r)) = (&mut locators, ch) {
                let at = match r.get(locators.pos) {
                    Some(Value::Integer(at)) => *at,
                    other => {
                        return Err(Error::Unexpected(format!(
                            "table {table:?}: their new row has no integer rowid but {other:?}"
                        )))
                    }
                };
                let key = theirs.key_text(r);
                if !locators.make_room(&table, &key, at, &mut renumber, &mut self.report)? {
                    let column = Some(locators.column.clone());
                    let values = [None, None, Some(Value::Integer(at))];
                    self.conflicts
                        .push(conflict(ConflictKind::Row, column, values));
                    continue;
                }
            }
            if let (RowChange::Insert(tr), [Value::Integer(k)]) = (ch, &key_values[..]) {
                if self.moves.moved(&table, *k).is_some() {
                    self.writes.push(LocalWrite::insert(theirs, tr));
                    continue;
                }
            }
            let our = mine.get(&theirs.key_text(ch.row())).copied();
            let (base, theirs_row) = match ch {
                RowChange::Insert(r) => (None, Some(r.clone())),
                RowChange::Delete(r) => (Some(r.clone()), None),
                RowChange::Update { old, new } => (Some(old.clone()), Some(new.clone())),
            };
            let ours_row = match (our, ours) {
                (None, _) | (_, None) => base.clone(),
                (Some((RowChange::Delete(_), _)), _) => None,
                (Some((_, row)), Some(o)) => Some(in_layout(theirs, o, row, base.as_deref())),
            };
            let merged = merge_row(
                theirs.table.locator(),
                base.as_deref(),
                ours_row.as_deref(),
                theirs_row.as_deref(),
                resolve,
            );
            for c in merged.conflicts {
                let column = c.column.map(|i| theirs.columns[i].clone());
                let kind = if column.is_some() {
                    ConflictKind::Cell
                } else {
                    ConflictKind::Row
                };
                let note = self.moves.note(
                    ours,
                    our.map(|(ch, _)| ch.row()),
                    column.as_deref(),
                    c.ours.as_ref(),
                );
                self.conflicts.push(Conflict {
                    note,
                    ..conflict(kind, column, [c.base, c.ours, c.theirs])
                });
            }
            match merged.write {
                RowWrite::Keep => {}
                RowWrite::Insert(r) => self.writes.push(LocalWrite::insert(theirs, &r)),
                RowWrite::Delete => self.writes.push(LocalWrite::Delete {
                    table: table.clone(),
                    key,
                }),
                RowWrite::Set(set) => {
                    // A change both sides made alike, or one merged cell by cell.
                    self.report.merged += usize::from(merged.clean && our.is_some());
                    let set = set
                        .into_iter()
                        .map(|(i, v)| (theirs.columns[i].clone(), v))
                        .collect();
                    self.writes.push(LocalWrite::update(theirs, key, set));
                }
            }
        }
        Ok(())
    }
}

/// `row`, a row of ours laid out as `ours`'s columns, laid out as `theirs`'s instead: a column
/// only they have (theirs added it) holds the base's value, or theirs' for a new row, so it
/// merges as unchanged by us.
fn in_layout(
    theirs: &TableDiff,
    ours: &TableDiff,
    row: &[Value],
    base: Option<&[Value]>,
) -> Vec<Value> {
    let mine = named(ours, row);
    theirs
        .columns
        .iter()
        .enumerate()
        .map(|(i, c)| match (mine.get(c), base) {
            (Some(v), _) => v.clone(),
            (None, Some(b)) => b[i].clone(),
            (None, None) => Value::Null,
        })
        .collect()
}

/// What the working copy's row becomes in a merge.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum RowWrite {
    /// Our row stays as it is (or absent).
    Keep,
    /// Their row goes in (ours has none).
    Insert(Vec<Value>),
    Delete,
    /// These cells of our row take these values.
    Set(Vec<(usize, Value)>),
}

/// A cell (`column`) or a whole row (`None`) the two sides changed in ways that do not merge.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct RowConflict {
    pub column: Option<usize>,
    pub base: Option<Value>,
    pub ours: Option<Value>,
    pub theirs: Option<Value>,
}

/// The merge of one row.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct RowMerge {
    pub write: RowWrite,
    pub conflicts: Vec<RowConflict>,
    /// No conflict: the write is the whole merge.
    pub clean: bool,
}

/// Merges one row from its three versions alone (`None`: no such row on that side), all laid
/// out alike. Cell by cell, a value changed on one side takes that side, and one changed on both
/// sides to different values is a conflict, which `resolve` settles: [`Resolve::Theirs`] takes
/// theirs, anything else keeps ours (the caller refuses the merge for [`Resolve::Refuse`]). A
/// row deleted on one side and changed on the other is a row conflict. `locator` is a column
/// that is no data ([`crate::schema::Table::locator`]): never compared, never written by a
/// cell merge.
///
/// ```text
/// base (1, 'a', 5)  ours (1, 'b', 5)  theirs (1, 'a', 6)  -> Set [(2, 6)]           clean
/// base (1, 'a', 5)  ours (1, 'b', 5)  theirs (1, 'c', 5)  -> Keep, conflict on 1     (Ours)
/// base (1, 'a', 5)  ours None         theirs (1, 'a', 6)  -> Keep, row conflict       (Ours)
/// base (1, 'a', 5)  ours None         theirs (1, 'a', 6)  -> Insert (1, 'a', 6)       (Theirs)
/// base None         ours None         theirs (2, 'x', 0)  -> Insert (2, 'x', 0)       clean
/// base (1, 'a', 5)  ours (1, 'a', 5)  theirs None         -> Delete                   clean
/// ```
pub(crate) fn merge_row(
    locator: Option<usize>,
    base: Option<&[Value]>,
    ours: Option<&[Value]>,
    theirs: Option<&[Value]>,
    resolve: Resolve,
) -> RowMerge {
    let done = |write, conflicts: Vec<RowConflict>| RowMerge {
        write,
        clean: conflicts.is_empty(),
        conflicts,
    };
    let row_conflict = || RowConflict {
        column: None,
        base: None,
        ours: None,
        theirs: None,
    };
    match (base, ours, theirs) {
        // Theirs did nothing to the row, or both deleted it.
        (_, None, None) | (None, Some(_), None) => done(RowWrite::Keep, vec![]),
        (None, None, Some(t)) => done(RowWrite::Insert(t.to_vec()), vec![]),
        (Some(b), Some(o), None) if o == b => done(RowWrite::Delete, vec![]),
        // Deleted on one side, changed on the other.
        (Some(_), Some(_), None) => done(
            if resolve == Resolve::Theirs {
                RowWrite::Delete
            } else {
                RowWrite::Keep
            },
            vec![row_conflict()],
        ),
        (Some(b), None, Some(t)) if t == b => done(RowWrite::Keep, vec![]),
        (Some(_), None, Some(t)) => done(
            if resolve == Resolve::Theirs {
                RowWrite::Insert(t.to_vec())
            } else {
                RowWrite::Keep
            },
            vec![row_conflict()],
        ),
        // Both have the row: cell by cell.
        (b, Some(o), Some(t)) => {
            let mut set = Vec::new();
            let mut conflicts = Vec::new();
            for i in (0..t.len()).filter(|&i| Some(i) != locator) {
                let (bv, ov, tv) = (b.map(|b| &b[i]), &o[i], &t[i]);
                if tv == ov || Some(tv) == bv {
                    continue;
                }
                if Some(ov) != bv {
                    conflicts.push(RowConflict {
                        column: Some(i),
                        base: bv.cloned(),
                        ours: Some(ov.clone()),
                        theirs: Some(tv.clone()),
                    });
                    if resolve != Resolve::Theirs {
                        continue;
                    }
                }
                set.push((i, tv.clone()));
            }
            let write = if set.is_empty() {
                RowWrite::Keep
            } else {
                RowWrite::Set(set)
            };
            done(write, conflicts)
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

/// The one integer key column of a rowid table (its INTEGER PRIMARY KEY, or the hidden rowid
/// through its alias), as named in the table's data rows: the keys a renumbering may move.
///
/// ```text
/// CREATE TABLE t(id INTEGER PRIMARY KEY, v)  -> Some("id")
/// CREATE TABLE t(v)                          -> Some("rowid")   (the hidden rowid is not data)
/// CREATE TABLE t(email TEXT PRIMARY KEY, v)  -> Some("rowid")   (it only locates the row)
/// CREATE TABLE t(a, b, PRIMARY KEY(a, b)) WITHOUT ROWID -> None
/// ```
fn integer_key(t: &TableDiff) -> Option<&str> {
    match (&t.table.key, &t.key[..], t.table.locator()) {
        (_, _, Some(l)) => Some(t.columns[l].as_str()),
        (crate::schema::RowKey::Rowid { .. }, [k], None) => Some(t.columns[*k].as_str()),
        _ => None,
    }
}

/// Where our new rows sit in a table whose hidden rowid only locates rows
/// ([`crate::schema::Table::locator`]), so that their rows can take the rowids they have on
/// the remote: a rowid our row of another key holds is renumbered away, and our copy of a row
/// they added too moves to their rowid. The working copy then stays equal to the remote,
/// rowids included.
///
/// ```text
/// ours:   ('b@x' at 1) ('a@x' at 2)        theirs: ('a@x' at 1)
/// moves:  'b@x' 1 -> 3 (free on both sides), then 'a@x' 2 -> 1
/// ```
struct Locators {
    /// The locator's position in a data row, and its name.
    pos: usize,
    column: String,
    at: HashMap<i64, String>,
    of: HashMap<String, i64>,
}

impl Locators {
    fn new(theirs: &TableDiff, ours: Option<&TableDiff>) -> Option<Locators> {
        let l = theirs.table.locator()?;
        let mut me = Locators {
            pos: l,
            column: theirs.columns[l].clone(),
            at: HashMap::new(),
            of: HashMap::new(),
        };
        for ch in ours.map_or(&[][..], |o| &o.changes) {
            if let RowChange::Insert(r) = ch {
                if let Value::Integer(at) = r[l] {
                    me.at.insert(at, theirs.key_text(r));
                    me.of.insert(theirs.key_text(r), at);
                }
            }
        }
        Some(me)
    }

    /// Frees `at` for their row `key`, and moves our copy of that row there. `renumber` gives
    /// a rowid free on both sides, or `None` when renumbering is off: then the row is a
    /// conflict (`false`).
    fn make_room(
        &mut self,
        table: &str,
        key: &str,
        at: i64,
        renumber: &mut dyn FnMut(i64) -> Result<Option<i64>>,
        report: &mut PullReport,
    ) -> Result<bool> {
        let moved = |from: i64, to: i64, report: &mut PullReport| {
            report.renumbered.push(Renumbered {
                table: table.to_owned(),
                column: self.column.clone(),
                from,
                to,
            });
        };
        if let Some(holder) = self.at.get(&at).filter(|h| *h != key).cloned() {
            let Some(to) = renumber(at)? else {
                return Ok(false);
            };
            moved(at, to, report);
            self.at.remove(&at);
            self.at.insert(to, holder.clone());
            self.of.insert(holder, to);
        }
        if let Some(from) = self.of.get(key).copied().filter(|&f| f != at) {
            moved(from, at, report);
            self.at.remove(&from);
            self.at.insert(at, key.to_owned());
            self.of.insert(key.to_owned(), at);
        }
        Ok(true)
    }
}

/// Our new rows at integer keys their new rows took, decided before any row merges, and the
/// references to them in our rows. A row of ours that refers to a moved key refers to our own
/// new row, so it is ours whatever its values: it is compared with theirs as it reads after
/// the move ([`Moves::follow`]), and is moved too when their new row at its key then differs.
/// Equal values are the same row only when no reference in them moves.
///
/// ```text
/// theirs: parent(2,'bob')    child(1, parent_id 2)  grandchild(1, child_id 1)
/// ours:   parent(2,'alice')  child(1, parent_id 2)  grandchild(1, child_id 1)
/// parent 2 -> 3:   'alice' is not 'bob'
/// child 1 -> 2:    ours reads (1, parent_id 3), theirs is (1, parent_id 2)
/// grandchild 1 -> 2: ours reads (1, child_id 2), theirs is (1, child_id 1)
/// ```
///
/// [`Renumbered::apply`] later moves each row with every reference to it, in the same order.
struct Moves {
    fks: Vec<ForeignKey>,
    /// By table name in lower case: the moved key column, and our key -> its new key.
    keys: HashMap<String, (String, HashMap<i64, i64>)>,
    renumbered: Vec<Renumbered>,
}

impl Moves {
    /// Decides every move, repeating until no row of ours changes how it compares with
    /// theirs: a move can make a child of ours differ from their child at its key, and so on
    /// down a chain of references.
    fn decide(
        ours: &Changeset,
        theirs: &Changeset,
        opts: &MergeOptions,
        fks: Vec<ForeignKey>,
        keys: &mut KeySpace<'_>,
    ) -> Result<Moves> {
        let mut me = Moves {
            fks,
            keys: HashMap::new(),
            renumbered: Vec::new(),
        };
        if !opts.renumber {
            return Ok(me);
        }
        loop {
            let mut more = false;
            for t in &theirs.tables {
                let (Some(column), None) = (integer_key(t), t.table.locator()) else {
                    continue;
                };
                let Some(o) = ours.tables.iter().find(|o| o.table.name == t.table.name) else {
                    continue;
                };
                let mine: HashMap<String, &[Value]> = o
                    .changes
                    .iter()
                    .filter_map(|c| match c {
                        RowChange::Insert(r) => Some((o.key_text(r), &r[..])),
                        _ => None,
                    })
                    .collect();
                for ch in &t.changes {
                    let RowChange::Insert(tr) = ch else {
                        continue;
                    };
                    let Value::Integer(k) = tr[t.key[0]] else {
                        continue;
                    };
                    if me.moved(&t.table.name, k).is_some() {
                        continue;
                    }
                    let Some(or) = mine.get(&t.key_text(tr)) else {
                        continue;
                    };
                    if *tr != me.follow_row(o, or) {
                        let to = keys.take(&t.table.name, column)?;
                        me.keys
                            .entry(t.table.name.to_lowercase())
                            .or_insert_with(|| (column.to_owned(), HashMap::new()))
                            .1
                            .insert(k, to);
                        me.renumbered.push(Renumbered {
                            table: t.table.name.clone(),
                            column: column.to_owned(),
                            from: k,
                            to,
                        });
                        more = true;
                    }
                }
            }
            if !more {
                return Ok(me);
            }
        }
    }

    /// The key our row at `key` of `table` moves to, if it moves.
    fn moved(&self, table: &str, key: i64) -> Option<i64> {
        self.keys
            .get(&table.to_lowercase())
            .and_then(|(_, m)| m.get(&key).copied())
    }

    /// Our change's row as it reads once the moves are made: a deleted row as it was, a new
    /// or changed one with every reference to a moved key holding its new key.
    fn follow(&self, ours: &TableDiff, change: &RowChange) -> Vec<Value> {
        match change {
            RowChange::Delete(r) => r.clone(),
            RowChange::Insert(r) | RowChange::Update { new: r, .. } => self.follow_row(ours, r),
        }
    }

    /// Why a conflict's value of ours in `column` is not what the working copy holds: it
    /// refers to a new row of ours that moves. `row` is our row as the working copy holds it.
    fn note(
        &self,
        ours: Option<&TableDiff>,
        row: Option<&[Value]>,
        column: Option<&str>,
        read: Option<&Value>,
    ) -> Option<String> {
        let (ours, row, column, read) = (ours?, row?, column?, read?);
        let pos = ours.columns.iter().position(|c| c == column)?;
        let fk = self.fks.iter().find(|f| {
            f.child.eq_ignore_ascii_case(&ours.table.name) && f.from.eq_ignore_ascii_case(column)
        })?;
        let held = &row[pos];
        (held != read).then(|| {
            format!(
                "ours holds {held} in the working copy: it refers to our new row {} {held}, which is renumbered to {read} because their new row took {held}",
                fk.parent,
                held = sql::literal(held),
                read = sql::literal(read)
            )
        })
    }

    /// `row`, laid out as `ours`'s columns, with every reference to a moved key holding its
    /// new key: what [`Renumbered::apply`] makes of it.
    fn follow_row(&self, ours: &TableDiff, row: &[Value]) -> Vec<Value> {
        let mut row = row.to_vec();
        for fk in self
            .fks
            .iter()
            .filter(|f| f.child.eq_ignore_ascii_case(&ours.table.name))
        {
            let Some((column, moved)) = self.keys.get(&fk.parent.to_lowercase()) else {
                continue;
            };
            if !fk.to.eq_ignore_ascii_case(column) {
                continue;
            }
            let Some(pos) = ours
                .columns
                .iter()
                .position(|c| c.eq_ignore_ascii_case(&fk.from))
            else {
                continue;
            };
            if let Value::Integer(v) = row[pos] {
                if let Some(&to) = moved.get(&v) {
                    row[pos] = Value::Integer(to);
                }
            }
        }
        row
    }
}

/// Hands out keys for renumbered rows: free on both sides, past both maxima and both
/// AUTOINCREMENT counters of the table, one after the other.
struct KeySpace<'c> {
    /// The working copy and the remote copy.
    sides: [&'c Connection; 2],
    next: HashMap<String, i64>,
}

impl<'c> KeySpace<'c> {
    fn new(work: &'c Connection, theirs: &'c Connection) -> KeySpace<'c> {
        KeySpace {
            sides: [work, theirs],
            next: HashMap::new(),
        }
    }

    /// The next key of `col` in table `name` that is free on both sides.
    fn take(&mut self, name: &str, col: &str) -> Result<i64> {
        let next = match self.next.get(name) {
            Some(&n) => n,
            None => {
                let mut top = 0i64;
                for conn in self.sides {
                    let max: Option<i64> = conn.query_row(
                        &format!("SELECT max({}) FROM {}", sql::ident(col), sql::ident(name)),
                        [],
                        |r| r.get(0),
                    )?;
                    top = top
                        .max(max.unwrap_or(0))
                        .max(crate::workspace::sequence(conn, name)?.unwrap_or(0));
                }
                top.checked_add(1).ok_or_else(|| {
                    Error::Unsupported(format!(
                        "table {name:?}: no key is free past {top} to renumber a new row to"
                    ))
                })?
            }
        };
        self.next.insert(name.to_owned(), next.saturating_add(1));
        Ok(next)
    }
}

impl Renumbered {
    /// Moves our row to its new key, with every reference to it in the working copy (which
    /// holds only our rows at that key: theirs arrive after). A counter behind the new key
    /// follows it, so the app's next AUTOINCREMENT id is past it.
    fn apply(&self, work: &Connection, fks: &[ForeignKey]) -> Result<()> {
        let col = &self.column;
        let moved = work.execute(
            &sql::update(&self.table, &[col], &[col]),
            rusqlite::params![self.to, self.from],
        )?;
        if moved != 1 {
            return Err(Error::Unexpected(format!(
                "table {:?}: renumbering row {} to {} moved {moved} rows",
                self.table, self.from, self.to
            )));
        }
        for fk in fks.iter().filter(|f| {
            f.parent.eq_ignore_ascii_case(&self.table) && f.to.eq_ignore_ascii_case(col)
        }) {
            work.execute(
                &sql::update(&fk.child, &[&fk.from], &[&fk.from]),
                rusqlite::params![self.to, self.from],
            )?;
        }
        if crate::workspace::sequence(work, &self.table)?.is_some_and(|seq| seq < self.to) {
            crate::workspace::set_sequence(work, &self.table, Some(self.to))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    type Row = Option<Vec<Value>>;

    /// The reference model of a three-way merge, written plainly: the row both sides end up
    /// with, and whether anything conflicted.
    fn model(b: &Row, o: &Row, t: &Row, resolve: Resolve) -> (Row, bool) {
        if o == b || o == t {
            return (t.clone(), false);
        }
        if t == b {
            return (o.clone(), false);
        }
        let (Some(ov), Some(tv)) = (o, t) else {
            // Deleted on one side, changed on the other.
            return (if resolve == Resolve::Theirs { t } else { o }.clone(), true);
        };
        let mut conflict = false;
        let row = (0..tv.len())
            .map(|i| {
                let bv = b.as_ref().map(|b| &b[i]);
                if Some(&ov[i]) == bv {
                    tv[i].clone()
                } else if Some(&tv[i]) == bv || ov[i] == tv[i] {
                    ov[i].clone()
                } else {
                    conflict = true;
                    if resolve == Resolve::Theirs {
                        &tv[i]
                    } else {
                        &ov[i]
                    }
                    .clone()
                }
            })
            .collect();
        (Some(row), conflict)
    }

    fn row() -> impl Strategy<Value = Row> {
        proptest::option::of(proptest::collection::vec(
            (0..3i64).prop_map(Value::Integer),
            3,
        ))
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]
        /// `merge_row`, applied to our row, gives the model's row, and reports a conflict
        /// exactly when the model has one.
        #[test]
        fn merge_row_follows_the_model(
            b in row(), o in row(), t in row(),
            resolve in prop_oneof![Just(Resolve::Ours), Just(Resolve::Theirs), Just(Resolve::Refuse)],
        ) {
            let merged = merge_row(None, b.as_deref(), o.as_deref(), t.as_deref(), resolve);
            let result = match merged.write {
                RowWrite::Keep => o.clone(),
                RowWrite::Insert(r) => Some(r),
                RowWrite::Delete => None,
                RowWrite::Set(cells) => {
                    let mut r = o.clone().expect("a set applies to our row");
                    for (i, v) in cells {
                        r[i] = v;
                    }
                    Some(r)
                }
            };
            let (want, conflict) = model(&b, &o, &t, resolve);
            prop_assert_eq!(result, want);
            prop_assert_eq!(!merged.conflicts.is_empty(), conflict);
            prop_assert_eq!(merged.clean, !conflict);
        }
    }

    /// The locator is never compared nor written by a cell merge.
    #[test]
    fn merge_row_leaves_the_locator_alone() {
        let v = |r: [i64; 2]| r.map(Value::Integer).to_vec();
        let merged = merge_row(
            Some(0),
            Some(&v([1, 5])),
            Some(&v([7, 5])),
            Some(&v([1, 6])),
            Resolve::Refuse,
        );
        assert_eq!(merged.write, RowWrite::Set(vec![(1, Value::Integer(6))]));
        assert!(merged.clean);
    }
}
