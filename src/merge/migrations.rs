//! The schema side of the merge: their migrations with our row edits carried through them
//! (and ours with theirs), both sides' changes of one table settled by `--ours`/`--theirs`,
//! `user_version`, their DDL (or the conflict), and the merged set of triggers. [`super::Plan`]
//! calls these before any row merges.

use std::collections::HashMap;

use rusqlite::Connection;

use crate::changeset::RowChange;
use crate::changeset::{ordered_ddl, Changeset, SchemaChange, TableDiff};
use crate::conflict::{Conflict, ConflictKind, MergeOptions, Outcome, Resolve};
use crate::schema::ObjectKind;
use crate::sql;
use crate::value::Value;
use crate::{Context, Error, Result};

/// Their row changes to tables that only our side migrated (a dropped or renamed column, a
/// renamed table, a 12-step rebuild that carries rows: [`SchemaChange::TableRebuilt`] with
/// columns), carried into the table as we have it now: each row in the new layout, a dropped
/// column's values left out, a new column's default filled in (evaluated in `work`), an
/// update that only touched a dropped column gone. `None` when there is nothing to carry.
/// The remote's table did not change; only its rows did, so this is no schema conflict.
pub(super) fn carry_through_migrations(
    ours: &Changeset,
    theirs: &Changeset,
    work: &Connection,
) -> Result<Option<Changeset>> {
    let mut out: Option<Changeset> = None;
    for ch in &ours.schema {
        let SchemaChange::TableRebuilt {
            name,
            old_name,
            columns: Some(map),
            ..
        } = ch
        else {
            continue;
        };
        let theirs_reshaped = theirs.schema.iter().any(|c| match c {
            SchemaChange::TableAdded { name: n, .. }
            | SchemaChange::TableDropped { name: n, .. }
            | SchemaChange::TableRebuilt { name: n, .. }
            | SchemaChange::ColumnsAdded { table: n, .. } => n == old_name || n == name,
            _ => false,
        });
        let (Some(ti), Some(mine)) = (
            theirs
                .tables
                .iter()
                .position(|t| &t.table.name == old_name && !t.changes.is_empty()),
            ours.tables.iter().find(|t| &t.table.name == name),
        ) else {
            continue;
        };
        if theirs_reshaped {
            continue;
        }
        let cs = out.get_or_insert_with(|| theirs.clone());
        let old = &cs.tables[ti];
        let project = Projection::from_map(map, &old.columns, &mine.table, work, |o| {
            format!("table {old_name:?}: column {o:?} of the old table is missing from the remote's rows")
        })?;
        let changes = old
            .changes
            .iter()
            .filter_map(|c| project.change(c))
            .collect();
        let mut moved = mine.clone();
        moved.changes = changes;
        cs.tables[ti] = moved;
    }
    Ok(out)
}

/// Our row changes to tables that only their side migrated (a dropped or renamed column, a
/// renamed table, a 12-step rebuild that carries rows), carried into their new layout the way
/// their DDL, run in the working copy, carries our rows: each row in the new layout, a dropped
/// column's values left out, a new column's default filled in (evaluated in `work`).
/// Returns our changeset so carried (`None`: nothing to carry), the tables carried (their new
/// names), and our edits of a column they dropped: each a conflict on that column, settled as
/// the table's [`Resolve`] says (see [`KeptColumn`]).
pub(super) fn carry_ours_through_theirs(
    ours: &Changeset,
    theirs: &Changeset,
    work: &Connection,
    opts: &MergeOptions,
) -> Result<Carried> {
    let mut carried = Carried::default();
    for ch in &theirs.schema {
        let SchemaChange::TableRebuilt {
            name,
            old_name,
            columns: Some(map),
            dropped,
            ..
        } = ch
        else {
            continue;
        };
        let ours_reshaped = ours.schema.iter().any(|c| match c {
            SchemaChange::TableAdded { name: n, .. }
            | SchemaChange::TableDropped { name: n, .. }
            | SchemaChange::TableRebuilt { name: n, .. }
            | SchemaChange::ColumnsAdded { table: n, .. } => n == old_name || n == name,
            _ => false,
        });
        let (Some(oi), Some(new)) = (
            ours.tables
                .iter()
                .position(|t| &t.table.name == old_name && !t.changes.is_empty()),
            theirs.tables.iter().find(|t| &t.table.name == name),
        ) else {
            continue;
        };
        if ours_reshaped {
            continue;
        }
        let old = &ours.tables[oi];
        let kept_before = carried.kept.len();
        let project = Projection::from_map(map, &old.columns, &new.table, work, |o| {
            format!("table {old_name:?}: column {o:?} of the base's table is missing from our rows")
        })?;
        let gone: Vec<usize> = dropped
            .iter()
            .filter_map(|d| old.columns.iter().position(|c| c == d))
            .collect();
        let resolve = opts.resolve_for(old_name);
        let mut kept = Vec::new();
        for c in &old.changes {
            let RowChange::Update { old: was, new: now } = c else {
                continue;
            };
            for &g in &gone {
                if was[g] == now[g] {
                    continue;
                }
                let mut conflict = Conflict::new(
                    old_name,
                    ConflictKind::Cell,
                    old.key_of(now).into_iter().cloned().collect(),
                );
                conflict.columns = vec![old.columns[g].clone()];
                conflict.base = Some(vec![was[g].clone()]);
                conflict.ours = Some(vec![now[g].clone()]);
                conflict.note = Some(format!(
                    "column {:?} was dropped on the remote; --theirs lets our edit go with it, --ours keeps the column (added back at the end of the table) with our values",
                    old.columns[g]
                ));
                carried.conflicts.push(conflict);
                if resolve == Resolve::Ours && !kept.contains(&g) {
                    kept.push(g);
                }
            }
        }
        for g in kept {
            let column = old.table.columns.iter().find(|c| c.name == old.columns[g]);
            let Some(column) = column else { continue };
            carried.kept.push(KeptColumn {
                table: name.clone(),
                old_table: old_name.clone(),
                key: old.key_names().iter().map(|k| k.to_string()).collect(),
                column: column.name.clone(),
                definition: column_definition(column),
                drop_first: false,
            });
        }
        // Each carried change with the index of ours it comes from.
        let mut changes: Vec<(usize, RowChange)> = old
            .changes
            .iter()
            .enumerate()
            .filter_map(|(i, c)| project.change(c).map(|c| (i, c)))
            .collect();
        // A row of ours their new definition rejects (NOT NULL, CHECK, a type in a STRICT
        // table): a conflict naming the constraint. `--theirs` takes our change back before
        // their DDL runs (our new row goes, our edited row returns to the base's values).
        let rest = match ch {
            SchemaChange::TableRebuilt { new_sql, kind, .. } if *kind == "rebuilt" => {
                crate::changeset::twelve_step_form(name, new_sql)
                    .or_else(|| new_sql.strip_prefix(&format!("CREATE TABLE {name}")))
                    .filter(|rest| rest.starts_with('(') || rest.starts_with(' '))
            }
            _ => None,
        };
        if let Some(rest) = rest {
            let beside = Beside {
                table: old_name,
                select: crate::migration::carried_select(&new.table, map),
                key: old.key_names().iter().map(|k| k.to_string()).collect(),
                ours: old
                    .changes
                    .iter()
                    .map(|c| old.key_of(c.row()).into_iter().cloned().collect())
                    .collect(),
            };
            let rejected = rejected_rows(work, name, rest, &new.columns, &changes, &beside)?;
            // `--ours` keeps our definition of the table: their change of it is not made
            // here, and the next push rebuilds the remote's table to ours.
            let keep_ours = resolve == Resolve::Ours && !rejected.is_empty() && name == old_name;
            if keep_ours {
                carried.kept.truncate(kept_before);
            }
            for (at, constraint) in rejected.into_iter().rev() {
                let (i, now) = (changes[at].0, changes[at].1.row().to_vec());
                let mut conflict = Conflict::new(
                    old_name,
                    ConflictKind::Row,
                    new.key_of(&now).into_iter().cloned().collect(),
                );
                conflict.columns = new.columns.clone();
                conflict.ours = Some(now);
                conflict.constraint = Some(constraint.clone());
                conflict.note = Some(format!(
                    "their new definition of table {name:?} rejects our row ({constraint}): --theirs takes our change of it back, --ours keeps our definition of the table (the push rebuilds the remote's to it); or edit the row so it meets the constraint, then sync"
                ));
                carried.conflicts.push(conflict);
                if resolve != Resolve::Theirs {
                    continue;
                }
                let ours_row = old.changes[i].row();
                let key: Vec<Value> = old.key_of(ours_row).into_iter().cloned().collect();
                let cond = old
                    .key_names()
                    .iter()
                    .map(|k| format!("{} IS ?", sql::ident(k)))
                    .collect::<Vec<_>>()
                    .join(" AND ");
                let table = sql::ident(old_name);
                carried.before_ddl.push(match &old.changes[i] {
                    RowChange::Update { old: base, .. } => {
                        let set = old
                            .columns
                            .iter()
                            .map(|c| format!("{} = ?", sql::ident(c)))
                            .collect::<Vec<_>>()
                            .join(", ");
                        let mut args = base.clone();
                        args.extend(key);
                        (format!("UPDATE {table} SET {set} WHERE {cond}"), args)
                    }
                    _ => (format!("DELETE FROM {table} WHERE {cond}"), key),
                });
                changes.remove(at);
            }
            if keep_ours {
                carried.keep_ours.push(name.clone());
                continue;
            }
        }
        let changes = changes.into_iter().map(|(_, c)| c).collect();
        let cs = carried.ours.get_or_insert_with(|| ours.clone());
        let mut moved = new.clone();
        moved.changes = changes;
        cs.tables[oi] = moved;
        carried.tables.push(name.clone());
    }
    Ok(carried)
}

/// The changes (by position) among `changes` whose new row a table defined as `CREATE TABLE
/// x{rest}` rejects, each with SQLite's message naming the constraint (the probe's name
/// replaced by `table`'s). Each row is tried alone in a temporary table of that definition
/// first: its own constraints (NOT NULL, CHECK, types in a STRICT table). Then, when the
/// definition has a UNIQUE constraint, beside the rows their rebuild carries from `beside`
/// (the working copy's other rows of the table): a row of ours that takes a value another row
/// holds.
///
/// ```text
/// theirs: CREATE TABLE memo(id INTEGER PRIMARY KEY, body, code TEXT UNIQUE)   (was code TEXT)
/// working copy memo: (1,'b1','c1') (2,'b2','c2')   ours: INSERT (9,'b9','c1')
///   -> [(0, "UNIQUE constraint failed: memo.code")]
/// ```
fn rejected_rows(
    work: &Connection,
    table: &str,
    rest: &str,
    columns: &[String],
    changes: &[(usize, RowChange)],
    beside: &Beside<'_>,
) -> Result<Vec<(usize, String)>> {
    let probe = "temp.tursync_probe";
    work.execute_batch(&format!(
        "DROP TABLE IF EXISTS {probe}; CREATE TEMP TABLE tursync_probe{rest}"
    ))?;
    let idents: Vec<String> = columns.iter().map(|c| sql::ident(c)).collect();
    let insert = format!(
        "INSERT INTO {probe}({}) VALUES ({})",
        idents.join(", "),
        vec!["?"; columns.len()].join(", ")
    );
    let named = |msg: Option<String>, e: &rusqlite::ffi::Error| {
        msg.unwrap_or_else(|| e.to_string())
            .replace("tursync_probe.", &format!("{table}."))
    };
    let try_insert = |row: &[Value]| -> Result<Option<String>> {
        match work.execute(&insert, rusqlite::params_from_iter(row)) {
            Ok(_) => Ok(None),
            Err(rusqlite::Error::SqliteFailure(e, msg))
                if e.code == rusqlite::ErrorCode::ConstraintViolation =>
            {
                Ok(Some(named(msg, &e)))
            }
            Err(e) => Err(e.into()),
        }
    };
    let mut out = Vec::new();
    for (at, (_, c)) in changes.iter().enumerate() {
        if matches!(c, RowChange::Delete(_)) {
            continue;
        }
        if let Some(msg) = try_insert(c.row())? {
            out.push((at, msg));
        }
        work.execute_batch(&format!("DELETE FROM {probe}"))?;
    }
    if rest.to_ascii_uppercase().contains("UNIQUE") && beside.fill(work, probe, &idents)? {
        for (at, (_, c)) in changes.iter().enumerate() {
            if matches!(c, RowChange::Delete(_)) || out.iter().any(|(a, _)| *a == at) {
                continue;
            }
            if let Some(msg) = try_insert(c.row())? {
                out.push((at, msg));
            }
        }
        out.sort_by_key(|(at, _)| *at);
    }
    work.execute_batch(&format!(
        "DROP TABLE {probe}; DROP TABLE IF EXISTS temp.tursync_ours"
    ))?;
    Ok(out)
}

/// The working copy's rows of a table their rebuild carries, but those our changes touch, as
/// the rebuild lays them out: what a row of ours must fit beside ([`rejected_rows`]).
struct Beside<'a> {
    /// The working copy's table (the old name).
    table: &'a str,
    /// What the rebuild selects from it ([`crate::migration::carried_select`]).
    select: Vec<String>,
    /// Its key columns, and the keys of the rows our changes touch.
    key: Vec<String>,
    ours: Vec<Vec<Value>>,
}

impl Beside<'_> {
    /// Fills `probe` with these rows. False when they do not fit by themselves (the rows the
    /// working copy holds break the constraint before any change of ours): nothing of ours to
    /// name then.
    fn fill(&self, work: &Connection, probe: &str, columns: &[String]) -> Result<bool> {
        let key: Vec<String> = self.key.iter().map(|k| sql::ident(k)).collect();
        let cols: Vec<String> = (0..key.len()).map(|i| format!("k{i}")).collect();
        work.execute_batch(&format!(
            "DROP TABLE IF EXISTS temp.tursync_ours; CREATE TEMP TABLE tursync_ours({})",
            cols.join(", ")
        ))?;
        let mut add = work.prepare(&format!(
            "INSERT INTO temp.tursync_ours VALUES ({})",
            vec!["?"; key.len()].join(", ")
        ))?;
        for k in &self.ours {
            add.execute(rusqlite::params_from_iter(k))?;
        }
        let copy = format!(
            "INSERT INTO {probe}({}) SELECT {} FROM main.{} WHERE ({}) NOT IN (SELECT {} FROM temp.tursync_ours)",
            columns.join(", "),
            self.select.join(", "),
            sql::ident(self.table),
            key.join(", "),
            cols.join(", ")
        );
        match work.execute(&copy, []) {
            Ok(_) => Ok(true),
            Err(rusqlite::Error::SqliteFailure(e, _))
                if e.code == rusqlite::ErrorCode::ConstraintViolation =>
            {
                Ok(false)
            }
            Err(e) => Err(e.into()),
        }
    }
}

/// A table's definition changed on both sides in ways that do not merge, settled by `--ours` or
/// `--theirs` ([`settle_both_reshaped`]).
pub(super) struct BothReshaped {
    /// Our changeset with, per table settled `--theirs`, our schema change of it gone and our
    /// row changes in their layout.
    pub(super) ours: Option<Changeset>,
    /// Their changeset with, per table settled `--ours`, their schema change of it gone and
    /// their row changes in our layout; per table settled `--theirs`, their schema change of
    /// it gone too (the working copy's table is rebuilt to their definition first).
    pub(super) theirs: Option<Changeset>,
    /// Statements that rebuild our table to their definition (`--theirs`), before the DDL.
    pub(super) rebuilds: Vec<String>,
    /// Their indexes of the tables rebuilt so, made after the DDL where missing.
    pub(super) indexes: Vec<(String, String)>,
    /// The tables settled, each with the side kept.
    pub(super) settled: Vec<(String, Resolve)>,
}

impl BothReshaped {
    /// For `pull --json`'s `schema` list: each table settled, e.g. `{"change":
    /// "definition_settled", "name": "notes", "side": "ours"}`.
    pub(super) fn to_json(&self) -> Vec<serde_json::Value> {
        self.settled
            .iter()
            .map(|(name, side)| {
                serde_json::json!({
                    "change": "definition_settled",
                    "name": name,
                    "side": if *side == Resolve::Theirs { "theirs" } else { "ours" },
                })
            })
            .collect()
    }
}

/// The name of the table a schema change reshapes in place (not renamed, not dropped or added).
fn reshaped_in_place(c: &SchemaChange) -> Option<&str> {
    match c {
        SchemaChange::TableRebuilt {
            name,
            old_name,
            columns: Some(_),
            ..
        } if name == old_name => Some(name),
        SchemaChange::ColumnsAdded { table, .. } => Some(table),
        _ => None,
    }
}

/// `from`'s row changes laid out as `to`'s columns, by column name (case-insensitive); a
/// column `from` lacks takes `to`'s default (evaluated in `work`). `None` when a key column of
/// `to` is missing from `from`: rows cannot be matched.
fn by_name(from: &TableDiff, to: &TableDiff, work: &Connection) -> Result<Option<Vec<RowChange>>> {
    let mut picks = Vec::with_capacity(to.columns.len());
    for (i, c) in to.columns.iter().enumerate() {
        match from.columns.iter().position(|f| f.eq_ignore_ascii_case(c)) {
            Some(p) => picks.push(Ok(p)),
            None if to.key.contains(&i) => return Ok(None),
            None => picks.push(Err(Projection::default_of(&to.table, c, work)?)),
        }
    }
    let project = Projection(picks);
    Ok(Some(
        from.changes
            .iter()
            .filter_map(|c| project.change(c))
            .collect(),
    ))
}

/// How rows of one layout read in another: each value from a position of the old row, or a
/// value of its own (a new column's DEFAULT, evaluated once).
///
/// ```text
/// old (id, a, b), new (id, b, c DEFAULT 7), map id<-id, b<-b, c<-none
///   -> [Ok(0), Ok(2), Err(7)]:  (1, 'x', 'y')  ->  (1, 'y', 7)
/// ```
struct Projection(Vec<std::result::Result<usize, Value>>);

impl Projection {
    /// From a migration's column map (each new column and the old column it comes from, if
    /// any): an old column missing from `old` is an error that `missing` words.
    fn from_map(
        map: &[(String, Option<String>)],
        old: &[String],
        new: &crate::schema::Table,
        work: &Connection,
        missing: impl Fn(&str) -> String,
    ) -> Result<Projection> {
        let mut picks = Vec::with_capacity(map.len());
        for (new_col, from) in map {
            picks.push(match from {
                Some(o) => match old.iter().position(|c| c == o) {
                    Some(p) => Ok(p),
                    None => return Err(Error::Unexpected(missing(o))),
                },
                None => Err(Projection::default_of(new, new_col, work)?),
            });
        }
        Ok(Projection(picks))
    }

    /// The DEFAULT of `column` of `table`, evaluated in `work` (NULL without one).
    fn default_of(table: &crate::schema::Table, column: &str, work: &Connection) -> Result<Value> {
        let default = table
            .columns
            .iter()
            .find(|c| c.name == column)
            .and_then(|c| c.default.clone())
            .unwrap_or_else(|| "NULL".into());
        Ok(work.query_row(&format!("SELECT {default}"), [], |r| {
            r.get_ref(0).map(Value::from_ref)
        })?)
    }

    fn row(&self, row: &[Value]) -> Vec<Value> {
        self.0
            .iter()
            .map(|p| match p {
                Ok(i) => row[*i].clone(),
                Err(v) => v.clone(),
            })
            .collect()
    }

    /// `change` laid out anew; `None` for an update that changes nothing once laid out (it
    /// touched only columns the new layout lacks).
    fn change(&self, change: &RowChange) -> Option<RowChange> {
        match change {
            RowChange::Insert(r) => Some(RowChange::Insert(self.row(r))),
            RowChange::Delete(r) => Some(RowChange::Delete(self.row(r))),
            RowChange::Update { old, new } => {
                let (old, new) = (self.row(old), self.row(new));
                (old != new).then_some(RowChange::Update { old, new })
            }
        }
    }
}

/// Tables whose definition both sides changed, differently and in place, settled as the
/// table's [`Resolve`] says, and tables in `keep_ours` (their rebuild rejects rows of ours,
/// settled `--ours`), which keep our definition. `--ours` keeps our definition: their schema change of it is not
/// made here, their row changes are merged in our layout, and the next push rebuilds the
/// remote's table to our definition, its rows carried. `--theirs` takes their definition: the
/// working copy's table is rebuilt to it (our rows carried by column name), and our row
/// changes merged in their layout. A refused one stays a schema conflict ([`merge_schema`]).
pub(super) fn settle_both_reshaped(
    ours: &Changeset,
    theirs: &Changeset,
    work: &Connection,
    theirs_db: &Connection,
    opts: &MergeOptions,
    skip: &[String],
    keep_ours: &[String],
) -> Result<BothReshaped> {
    let mut out = BothReshaped {
        ours: None,
        theirs: None,
        rebuilds: Vec::new(),
        indexes: Vec::new(),
        settled: Vec::new(),
    };
    for their_change in &theirs.schema {
        let Some(name) = reshaped_in_place(their_change) else {
            continue;
        };
        if skip.iter().any(|t| t == name) {
            continue;
        }
        let forced = keep_ours.iter().any(|t| t == name);
        let our_change = ours
            .schema
            .iter()
            .find(|c| reshaped_in_place(c) == Some(name));
        match our_change {
            None if !forced => continue,
            Some(c) if c == their_change => continue,
            _ => {}
        }
        let resolve = opts.resolve_for(name);
        let (Some(mine), Some(their_t)) = (
            ours.tables.iter().find(|t| t.table.name == name),
            theirs.tables.iter().find(|t| t.table.name == name),
        ) else {
            continue;
        };
        let not_this = |c: &SchemaChange| reshaped_in_place(c) != Some(name);
        let resolve = if forced { Resolve::Ours } else { resolve };
        match resolve {
            Resolve::Refuse => continue,
            Resolve::Ours => {
                let Some(changes) = by_name(their_t, mine, work)? else {
                    continue;
                };
                let cs = out.theirs.get_or_insert_with(|| theirs.clone());
                cs.schema.retain(not_this);
                let mut moved = mine.clone();
                moved.changes = changes;
                if let Some(t) = cs.tables.iter_mut().find(|t| t.table.name == name) {
                    *t = moved;
                }
            }
            Resolve::Theirs => {
                let Some(changes) = by_name(mine, their_t, work)? else {
                    continue;
                };
                let copied: Vec<(String, String)> = their_t
                    .columns
                    .iter()
                    .filter_map(|c| {
                        mine.columns
                            .iter()
                            .find(|m| m.eq_ignore_ascii_case(c))
                            .map(|m| (c.clone(), m.clone()))
                    })
                    .collect();
                let refs: Vec<(&String, &String)> = copied.iter().map(|(a, b)| (a, b)).collect();
                out.rebuilds
                    .extend(crate::changeset::exact_rebuild_statements(
                        name,
                        &sql::ident(name),
                        &their_t.table.sql,
                        &refs,
                    ));
                out.indexes
                    .extend(crate::migration::indexes_of(theirs_db, name)?);
                let cs = out.ours.get_or_insert_with(|| ours.clone());
                cs.schema.retain(not_this);
                let mut moved = their_t.clone();
                moved.changes = changes;
                if let Some(t) = cs.tables.iter_mut().find(|t| t.table.name == name) {
                    *t = moved;
                }
                let cs = out.theirs.get_or_insert_with(|| theirs.clone());
                cs.schema.retain(not_this);
            }
        }
        out.settled.push((name.to_owned(), resolve));
    }
    Ok(out)
}

/// Their updates and deletes of rows we did not change, in tables their 12-step rebuild
/// carries, to apply before their DDL runs in the working copy
/// ([`Changeset::fixes_before_rebuilds`]). Rows we changed are left to the merge after the
/// DDL, so nothing of ours is overwritten before it is compared.
pub(super) fn their_fixes_first(ours: &Changeset, theirs: &Changeset) -> Vec<(String, Vec<Value>)> {
    let ours_keys: std::collections::HashSet<(String, String)> = ours
        .tables
        .iter()
        .flat_map(|o| {
            o.changes
                .iter()
                .map(|c| (o.table.name.clone(), o.key_text(c.row())))
        })
        .collect();
    theirs.fixes_before_rebuilds(|t, old_name, c| {
        let key = t.key_text(c.row());
        !ours_keys.contains(&(t.table.name.clone(), key.clone()))
            && !ours_keys.contains(&(old_name.to_owned(), key))
    })
}

/// The `user_version` the working copy takes from their side (`None`: it keeps its own). Both
/// sides set different values: the same migration when both made the same schema changes
/// (then the larger value stays), otherwise a schema conflict on `user_version` that
/// `--theirs` (their value) or `--ours` (ours, which the next push sends) settles.
pub(super) fn merged_user_version(
    ours: &Changeset,
    theirs: &Changeset,
    opts: &MergeOptions,
) -> Outcome<Option<i64>> {
    let (o, t) = match (ours.user_version, theirs.user_version) {
        (None, t) => return Outcome::Done(t),
        (Some(_), None) => return Outcome::Done(None),
        (Some(o), Some(t)) if o == t => return Outcome::Done(None),
        (Some(o), Some(t)) => (o, t),
    };
    let same_migration = !ours.schema.is_empty()
        && ours.schema.len() == theirs.schema.len()
        && ours.schema.iter().all(|c| theirs.schema.contains(c));
    if same_migration {
        return Outcome::Done((t > o).then_some(t));
    }
    match opts.resolve {
        Resolve::Theirs => Outcome::Done(Some(t)),
        Resolve::Ours => Outcome::Done(None),
        Resolve::Refuse => Outcome::Conflicts(vec![Conflict {
            columns: vec!["user_version".into()],
            ours: Some(vec![Value::Integer(o)]),
            theirs: Some(vec![Value::Integer(t)]),
            note: Some(
                "both sides set PRAGMA user_version, to different values, with different schema changes: \
                 --theirs takes theirs, --ours keeps ours"
                    .into(),
            ),
            ..Conflict::schema("pragma", "user_version")
        }]),
    }
}

/// What [`carry_ours_through_theirs`] found.
#[derive(Default)]
pub(super) struct Carried {
    pub(super) ours: Option<Changeset>,
    pub(super) tables: Vec<String>,
    pub(super) conflicts: Vec<Conflict>,
    pub(super) kept: Vec<KeptColumn>,
    /// Our changes taken back before their DDL runs: statements with their arguments.
    pub(super) before_ddl: Vec<(String, Vec<Value>)>,
    /// Tables whose definition `--ours` keeps, since theirs rejects rows of ours.
    pub(super) keep_ours: Vec<String>,
}

/// A column of ours moved to the end of the table around their DDL: its values are set aside
/// before their DDL runs, the column added back (`ALTER TABLE … ADD COLUMN`, after any columns
/// they added) and the values restored. Two cases: a column they dropped that `--ours` keeps,
/// because we edited it (added back with its type and default); a column we added while they
/// added others to the same table (dropped first, then added back with its own definition,
/// so the table reads as theirs with ours appended, as the remote will once we push).
#[derive(Debug, Clone)]
pub(super) struct KeptColumn {
    pub(super) table: String,
    pub(super) old_table: String,
    pub(super) key: Vec<String>,
    pub(super) column: String,
    pub(super) definition: String,
    /// Ours alone has the column: it is dropped here before their DDL runs.
    pub(super) drop_first: bool,
}

impl KeptColumn {
    fn aside(&self) -> String {
        sql::ident(&format!("tursync_kept_{}_{}", self.table, self.column))
    }

    /// Before their DDL: the column's values, by row key, in a temporary table; with
    /// `drop_first`, the table's indexes dropped (returned, to be made again) and the column.
    pub(super) fn set_aside(&self, work: &Connection) -> Result<Vec<(String, String)>> {
        let keys: Vec<String> = self.key.iter().map(|k| sql::ident(k)).collect();
        let table = sql::ident(&self.old_table);
        let col = sql::ident(&self.column);
        work.execute_batch(&format!(
            "DROP TABLE IF EXISTS temp.{aside}; CREATE TEMP TABLE {aside} AS SELECT {keys}, {col} AS v FROM {table}",
            aside = self.aside(),
            keys = keys.join(", "),
        ))?;
        let mut indexes = Vec::new();
        if self.drop_first {
            indexes = crate::migration::indexes_of(work, &self.old_table)?;
            for (name, _) in &indexes {
                work.execute_batch(&format!("DROP INDEX {}", sql::ident(name)))?;
            }
            work.execute_batch(&format!("ALTER TABLE {table} DROP COLUMN {col}"))
                .during(
                    "moving our new column after theirs, in table",
                    format_args!("{:?}", self.old_table),
                )?;
        }
        Ok(indexes)
    }

    /// After their DDL: the column added back and its values restored.
    pub(super) fn restore(&self, work: &Connection) -> Result<()> {
        let table = sql::ident(&self.table);
        let aside = self.aside();
        let matches: Vec<String> = self
            .key
            .iter()
            .map(|k| format!("{aside}.{k} IS {table}.{k}", k = sql::ident(k)))
            .collect();
        work.execute_batch(&format!(
            "ALTER TABLE {table} ADD COLUMN {def};
             UPDATE {table} SET {col} = (SELECT v FROM {aside} WHERE {m}) WHERE EXISTS (SELECT 1 FROM {aside} WHERE {m});
             DROP TABLE temp.{aside};",
            def = self.definition,
            col = sql::ident(&self.column),
            m = matches.join(" AND "),
        ))
        .during(
            "adding our column back after their change, in table",
            format_args!("{:?}", self.table),
        )?;
        Ok(())
    }
}

/// Columns both sides added to one table, each side its own: ours, to be moved after theirs
/// ([`KeptColumn`]). `None` when both added a column of one name (then it is a conflict, or
/// the same change, which needs nothing).
pub(super) fn columns_added_apart(ours: &Changeset, theirs: &Changeset) -> Vec<KeptColumn> {
    let mut out = Vec::new();
    for ch in &theirs.schema {
        let SchemaChange::ColumnsAdded {
            table,
            columns: their_defs,
            old_sql,
        } = ch
        else {
            continue;
        };
        let Some(SchemaChange::ColumnsAdded {
            columns: our_defs,
            old_sql: our_old,
            ..
        }) = ours
            .schema
            .iter()
            .find(|c| matches!(c, SchemaChange::ColumnsAdded { table: t, .. } if t == table))
        else {
            continue;
        };
        let (Some(mine), Some(theirs_t)) = (
            ours.tables.iter().find(|t| &t.table.name == table),
            theirs.tables.iter().find(|t| &t.table.name == table),
        ) else {
            continue;
        };
        let added = &mine.table.columns[mine.table.columns.len().saturating_sub(our_defs.len())..];
        let clash = added.iter().any(|c| {
            theirs_t
                .table
                .columns
                .iter()
                .any(|t| t.name.eq_ignore_ascii_case(&c.name))
        });
        if our_old != old_sql || their_defs == our_defs || clash || added.len() != our_defs.len() {
            continue;
        }
        for (c, def) in added.iter().zip(our_defs) {
            out.push(KeptColumn {
                table: table.clone(),
                old_table: table.clone(),
                key: mine.key_names().iter().map(|k| k.to_string()).collect(),
                column: c.name.clone(),
                definition: def.clone(),
                drop_first: true,
            });
        }
    }
    out
}

/// A column's definition as `ALTER TABLE … ADD COLUMN` takes it: its name, declared type and
/// default (other constraints are not kept).
fn column_definition(c: &crate::schema::Column) -> String {
    let mut def = sql::ident(&c.name);
    if !c.decl_type.is_empty() {
        def.push(' ');
        def.push_str(&c.decl_type);
    }
    if let Some(d) = &c.default {
        def.push_str(&format!(" DEFAULT {d}"));
    }
    def
}

/// The definitions of table `name` for a schema conflict: in the base (from whichever side's
/// change names it), ours and theirs (`None`: dropped on that side).
fn table_conflict(name: &str, ours: &Changeset, theirs: &Changeset) -> Conflict {
    let base = ours
        .schema
        .iter()
        .chain(&theirs.schema)
        .find_map(|c| match c {
            SchemaChange::TableDropped { name: n, sql } if n == name => Some(sql.as_str()),
            SchemaChange::TableRebuilt {
                old_name: n,
                old_sql,
                ..
            } if n == name => Some(old_sql.as_str()),
            SchemaChange::ColumnsAdded {
                table: n, old_sql, ..
            } if n == name => Some(old_sql.as_str()),
            _ => None,
        });
    fn side<'a>(cs: &'a Changeset, name: &str) -> Option<&'a str> {
        let renamed_to = cs.schema.iter().find_map(|c| match c {
            SchemaChange::TableRebuilt {
                name: n, old_name, ..
            } if old_name == name => Some(n.as_str()),
            _ => None,
        });
        let n = renamed_to.unwrap_or(name);
        cs.tables
            .iter()
            .find(|t| t.table.name == n)
            .map(|t| t.table.sql.as_str())
    }
    match base {
        Some(base) => {
            Conflict::definitions("table", name, base, side(ours, name), side(theirs, name))
        }
        None => Conflict::schema("table", name),
    }
}

/// The DDL that brings their schema changes into the working copy, or the conflict when both
/// sides changed the same object differently. Triggers are handled by [`merged_triggers`].
///
/// `carried`: tables they migrated that our row changes were carried into
/// ([`carry_ours_through_theirs`]), and tables both sides added different columns to
/// ([`columns_added_apart`]): no clash.
pub(super) fn merge_schema(
    ours: &Changeset,
    theirs: &Changeset,
    carried: &[String],
) -> Outcome<Vec<String>> {
    // A table renamed here is touched under both its names.
    let ours_touches = |name: &str| {
        ours.schema.iter().any(|c| match c {
            SchemaChange::TableAdded { name: n, .. }
            | SchemaChange::TableDropped { name: n, .. }
            | SchemaChange::ColumnsAdded { table: n, .. } => n == name,
            SchemaChange::TableRebuilt {
                name: n, old_name, ..
            } => n == name || old_name == name,
            _ => false,
        }) || ours
            .tables
            .iter()
            .any(|t| t.table.name == name && !t.changes.is_empty())
    };
    for t in theirs.tables.iter().filter(|t| !t.changes.is_empty()) {
        // A table we migrated carrying its rows took their rows along
        // ([`carry_through_migrations`]); one we dropped or re-created did not.
        let gone_here = ours.schema.iter().any(|c| match c {
            SchemaChange::TableDropped { name, .. }
            | SchemaChange::TableRebuilt {
                name,
                columns: None,
                ..
            } => name == &t.table.name,
            SchemaChange::TableRebuilt { old_name, name, .. } => {
                old_name == &t.table.name && old_name != name
            }
            _ => false,
        });
        if gone_here {
            return Outcome::Conflicts(vec![table_conflict(&t.table.name, ours, theirs)]);
        }
    }
    let mut ddl = Vec::new();
    for ch in &theirs.schema {
        if ours.schema.contains(ch) {
            continue; // the same change on both sides
        }
        let clash = match ch {
            SchemaChange::TableRebuilt { name, .. } if carried.contains(name) => None,
            SchemaChange::TableAdded { name, .. } | SchemaChange::TableDropped { name, .. } => {
                ours_touches(name).then_some(("table", name))
            }
            // Their rename clashes with anything of ours under the old name or the new.
            SchemaChange::TableRebuilt { name, old_name, .. } => {
                if ours_touches(old_name) {
                    Some(("table", old_name))
                } else {
                    ours_touches(name).then_some(("table", name))
                }
            }
            SchemaChange::ColumnsAdded { table, .. } if carried.contains(table) => None,
            SchemaChange::ColumnsAdded { table, .. } => ours
                .schema
                .iter()
                .any(|c| match c {
                    SchemaChange::TableDropped { name, .. } => name == table,
                    SchemaChange::TableRebuilt { name, old_name, .. } => {
                        name == table || old_name == table
                    }
                    SchemaChange::ColumnsAdded { table: t, .. } => t == table,
                    _ => false,
                })
                .then_some(("table", table)),
            SchemaChange::ObjectAdded { kind, name, .. }
            | SchemaChange::ObjectDropped { kind, name, .. }
            | SchemaChange::ObjectChanged { kind, name, .. } => (*kind != ObjectKind::Trigger
                && ours.schema.iter().any(|c| object_named(c, *kind, name)))
            .then_some((kind.as_str(), name)),
        };
        if let Some((what, name)) = clash {
            return Outcome::Conflicts(vec![if what == "table" {
                table_conflict(name, ours, theirs)
            } else {
                Conflict::schema(what, name)
            }]);
        }
        ddl.push(ch);
    }
    Outcome::Done(ordered_ddl(ddl).into_iter().map(|(_, q)| q).collect())
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
pub(super) fn merged_triggers(ours: &Changeset, theirs: &Changeset) -> Outcome<Vec<String>> {
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
            return Outcome::Conflicts(vec![Conflict::schema("trigger", name)]);
        }
        set.retain(|(n, _)| n != name);
        if let Some(create) = t {
            set.push((name.to_owned(), create.to_owned()));
        }
    }
    Outcome::Done(set.into_iter().map(|(_, s)| s).collect())
}
