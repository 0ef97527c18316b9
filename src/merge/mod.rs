//! The three-way merge of their changes with ours: what merges by itself, what is renumbered,
//! what is a conflict, and how a merge is applied to the working copy.
//!
//! A [`Plan`] is decided from two changesets alone (base → remote is theirs, base → working
//! copy is ours), with the two databases read only to find free keys; [`Plan::apply`] then
//! writes it inside the caller's transaction on the working copy. [`crate::pull`] owns the
//! when and the locking; this module owns the what: the schema side in `migrations`, the
//! renumbering of colliding new rows in `renumber`, the writes themselves in `apply`.

use std::collections::HashMap;

use rusqlite::Connection;

use crate::changeset::{Changeset, RowChange, SchemaChange, SequenceChange, TableDiff};
use crate::conflict::{Conflict, ConflictKind, MergeOptions, Outcome, Resolve};
use crate::orphans::{Gone, Orphans};
use crate::schema::foreign_keys;
use crate::sql;
use crate::unsettled::Unsettled;
use crate::value::Value;
use crate::whole_table::Taken;

mod apply;
mod migrations;
mod renumber;
mod report;
use crate::{Context, Error, Result};
use apply::{Applier, LocalWrite};
use migrations::{
    carry_ours_through_theirs, carry_through_migrations, columns_added_apart, merge_schema,
    merged_triggers, merged_user_version, settle_both_reshaped, their_fixes_first, Carried,
    KeptColumn,
};
pub use renumber::Renumbered;
use renumber::{integer_key, KeySpace, Locators, Moves};
pub use report::PullReport;

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
    /// Our changes of rows an interrupted pull left unsettled, taken back first (`--theirs`,
    /// [`Unsettled::settle_rows`]).
    take_back: Vec<(String, Vec<Value>)>,
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
            take_back: Vec::new(),
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
        self.take_back = statements;
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
        for (q, args) in &self.take_back {
            work.execute(q, rusqlite::params_from_iter(args)).map_err(|e| {
                Error::Unsupported(format!(
                    "taking back our change of a row an interrupted pull left unsettled ({q}) fails in {wc}: {e}. Another row of ours holds what the row takes back: settle that one first (edit it in the working copy), or keep ours with --ours"
                ))
            })?;
        }
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
                if !locators.make_room(
                    &table,
                    &key,
                    at,
                    &mut renumber,
                    &mut self.report.renumbered,
                )? {
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
