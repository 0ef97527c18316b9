//! The remote's schema as a push reads it ([`RemoteState`]), what each of our schema changes
//! needs of it, the DDL that applies them ([`plan_schema`]), and where a table's rows are read
//! from when the remote's table is not yet ours ([`remote_source`]).

use std::collections::HashMap;

use crate::changeset::{Changeset, DdlPhase, SchemaChange, TableDiff};
use crate::conflict::{Conflict, Outcome};
use crate::schema::{ObjectKind, SchemaError};
use crate::sql;
use crate::value::Value;
use crate::{Error, Result};

/// The select list that reads a table's rows on the remote in the changeset's row layout, or
/// `None` when the remote cannot hold any of its rows yet: the table is missing, or it is to be
/// rebuilt (dropped and re-created, rows and all). A table still lacking columns that
/// `ADD COLUMN` appended reads their defaults instead, as its rows will after the ALTER.
/// Where and how a table's rows are read on the remote: the table, the select list, and the
/// key columns' names there.
pub(super) struct Source {
    pub(super) table: String,
    pub(super) cols: Vec<String>,
    pub(super) keys: Vec<String>,
}

/// The remote's rows of `t` are read from: the table as we have it, or, for a table migrated
/// here (rebuilt, renamed) whose remote table is still in the base's form, that old table, as
/// the rebuild will carry its rows. `None`: the remote has no rows of it to compare. An error
/// when the remote's definition is one the changeset does not know.
pub(super) fn remote_source(
    cs: &Changeset,
    t: &TableDiff,
    remote: &RemoteState,
) -> Result<Option<Source>> {
    let same = |cols: Vec<String>| Source {
        table: t.table.name.clone(),
        cols,
        keys: t.key_names().iter().map(|k| k.to_string()).collect(),
    };
    // A table migrated here whose remote table is still in the base's form: its rows are
    // read from the old table as the rebuild will carry them.
    for ch in &cs.schema {
        if let SchemaChange::TableRebuilt {
            name,
            old_name,
            old_sql,
            columns,
            ..
        } = ch
        {
            if name != &t.table.name
                || remote.sql_of("table", old_name) != Some(old_sql.as_str())
                || (old_name != name && remote.sql_of("table", name).is_some())
            {
                continue;
            }
            let Some(map) = columns.as_ref() else {
                return Ok(None);
            };
            let Some(keys) = t
                .key
                .iter()
                .map(|&k| map.get(k).and_then(|(_, o)| o.clone()))
                .collect::<Option<Vec<String>>>()
            else {
                return Ok(None);
            };
            return Ok(Some(Source {
                table: old_name.clone(),
                cols: crate::migration::carried_select(&t.table, map),
                keys,
            }));
        }
    }
    let Some(remote_sql) = remote.sql_of("table", &t.table.name) else {
        return Ok(None);
    };
    let plain = || t.columns.iter().map(|c| sql::ident(c)).collect::<Vec<_>>();
    if remote_sql == t.table.sql {
        return Ok(Some(same(plain())));
    }
    for ch in &cs.schema {
        match ch {
            SchemaChange::TableRebuilt { name, .. } if name == &t.table.name => return Ok(None),
            SchemaChange::ColumnsAdded {
                table,
                columns,
                old_sql,
            } if table == &t.table.name && remote_sql == old_sql => {
                let all = &t.table.columns;
                let appended: Vec<_> = all[all.len().saturating_sub(columns.len())..]
                    .iter()
                    .filter(|c| !c.generated)
                    .collect();
                let old_count = t.columns.len().saturating_sub(appended.len());
                let mut cols: Vec<String> = t.columns[..old_count]
                    .iter()
                    .map(|c| sql::ident(c))
                    .collect();
                cols.extend(
                    appended
                        .iter()
                        .map(|c| c.default.clone().unwrap_or_else(|| "NULL".into())),
                );
                return Ok(Some(same(cols)));
            }
            _ => {}
        }
    }
    // Only a definition that differs from ours by references to a table renamed here (the
    // rename rewrites them) has our columns; any other is someone else's change, which
    // [`plan_schema`] reports as a conflict before rows are read. Never read by a column name
    // the remote's table may lack: sqld takes a double-quoted name that is no column for a
    // string, and the row would seem to hold the column's name.
    let renames = cs.renamed_tables();
    if crate::changeset::with_renamed_references(remote_sql, &renames) == t.table.sql {
        return Ok(Some(same(plain())));
    }
    Err(Error::Unexpected(format!(
        "table {:?} on the remote is defined as {remote_sql:?}, which is neither the base's nor the working copy's \
         definition, so its rows cannot be compared with ours; nothing was pushed. Run `tursync pull` to bring the remote's change in, then push again",
        t.table.name
    )))
}

/// The SQL text of the remote's tables, indexes, views and triggers, which is all of its schema
/// a push compares (read with [`SCHEMA_SQL`]). The same objects as [`crate::schema::load`]
/// lists: no internal tables, no automatic indexes.
#[derive(Debug, Default)]
pub(super) struct SchemaTexts {
    /// (type, name, SQL)
    objects: Vec<(String, String, String)>,
    pub(super) has_sequence: bool,
}

pub(super) const SCHEMA_SQL: &str =
    "SELECT type, name, tbl_name, sql FROM sqlite_schema ORDER BY rowid";

impl SchemaTexts {
    pub(super) fn from_rows(rows: Vec<Vec<Value>>) -> Result<SchemaTexts> {
        let mut out = SchemaTexts::default();
        for row in rows {
            let [ty, name, tbl, sqltext] = &row[..] else {
                return Err(SchemaError::Malformed(format!("sqlite_schema row {row:?}")).into());
            };
            let name = crate::schema::text(name, "sqlite_schema.name")?;
            if name.eq_ignore_ascii_case("sqlite_sequence") {
                out.has_sequence = true;
                continue;
            }
            let tbl = crate::schema::text(tbl, "sqlite_schema.tbl_name")?;
            let Value::Text(_) = sqltext else { continue };
            if crate::schema::is_internal(&name) || crate::schema::is_internal(&tbl) {
                continue;
            }
            out.objects.push((
                crate::schema::text(ty, "sqlite_schema.type")?,
                name,
                crate::schema::text(sqltext, "sqlite_schema.sql")?,
            ));
        }
        Ok(out)
    }

    /// A local database's (the base's: what the remote holds unless someone changed it).
    pub(super) fn read_local(conn: &rusqlite::Connection) -> Result<SchemaTexts> {
        let mut q = conn.prepare(SCHEMA_SQL)?;
        let rows = q
            .query_map([], |r| (0..4).map(|i| r.get::<_, Value>(i)).collect())?
            .collect::<rusqlite::Result<Vec<Vec<Value>>>>()?;
        SchemaTexts::from_rows(rows)
    }
}

/// The remote as a push transaction finds it: the SQL text of its schema and its AUTOINCREMENT
/// counters.
pub(super) struct RemoteState {
    pub(super) schema: SchemaTexts,
    pub(super) sequences: HashMap<String, i64>,
}

impl RemoteState {
    /// The SQL text of the remote's `ty` ("table", "index", "view", "trigger") named `name`.
    pub(super) fn sql_of(&self, ty: &str, name: &str) -> Option<&str> {
        self.schema
            .objects
            .iter()
            .find(|(t, n, _)| t == ty && n == name)
            .map(|(_, _, sql)| sql.as_str())
    }

    /// The remote's triggers, as (name, SQL).
    pub(super) fn triggers(&self) -> Vec<(String, String)> {
        self.schema
            .objects
            .iter()
            .filter(|(t, ..)| t == ObjectKind::Trigger.as_str())
            .map(|(_, name, sql)| (name.clone(), sql.clone()))
            .collect()
    }
}

/// The counters `SELECT name, seq FROM sqlite_sequence` returned.
pub(super) fn sequences_found(rows: Vec<Vec<Value>>) -> Result<HashMap<String, i64>> {
    let mut out = HashMap::new();
    for r in rows {
        match r.as_slice() {
            [name, Value::Integer(v)] => {
                out.insert(
                    crate::schema::text(name, "remote sqlite_sequence.name")?,
                    *v,
                );
            }
            _ => {
                return Err(
                    SchemaError::Malformed(format!("remote sqlite_sequence row {r:?}")).into(),
                )
            }
        }
    }
    Ok(out)
}

/// How much of a schema change the remote still needs, as a push transaction finds it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Needs {
    All,
    /// Already there: a re-run, or a later transaction of a split push.
    Nothing,
    /// Only its new form: an index of a table that was rebuilt (with the same definition) on
    /// the remote went with it.
    NewForm,
}

/// Compares a schema change with the remote's object: it must be in the base's form (then
/// the change is needed) or already in the working copy's (then nothing is). Anything else is
/// someone else's change of the same object: a conflict. A rebuilt table is refused outright:
/// re-creating it would replace every row in it, including rows others changed since the last
/// sync, which no per-row check covers.
fn remote_needs(ch: &SchemaChange, cs: &Changeset, remote: &RemoteState) -> Result<Outcome<Needs>> {
    let has = |ty: &str, name: &str| remote.sql_of(ty, name);
    let conflict = |ty: &str, name: &str| Ok(Outcome::Conflicts(vec![Conflict::schema(ty, name)]));
    let needs = match ch {
        SchemaChange::TableAdded { name, sql: create } => match has("table", name) {
            None => Needs::All,
            Some(s) if s == create => Needs::Nothing,
            Some(_) => return conflict("table", name),
        },
        SchemaChange::TableDropped { name, sql: old } => match has("table", name) {
            Some(s) if s == old => Needs::All,
            None => Needs::Nothing,
            Some(_) => return conflict("table", name),
        },
        SchemaChange::TableRebuilt {
            name,
            old_name,
            old_sql,
            new_sql,
            ..
        } => {
            let renamed = old_name != name;
            let (at_old, at_new) = (has("table", old_name), has("table", name));
            if at_new == Some(new_sql.as_str()) && (!renamed || at_old.is_none()) {
                Needs::Nothing
            } else if at_old == Some(old_sql.as_str()) && (!renamed || at_new.is_none()) {
                // Re-created under a new row key: every row is replaced, so the push first
                // checks that the remote's rows are still the base's ([`recreated_unchanged`]).
                Needs::All
            } else {
                let theirs = at_old.filter(|_| renamed).or(at_new).or(at_old);
                return Ok(Outcome::Conflicts(vec![Conflict::definitions(
                    "table",
                    name,
                    old_sql,
                    Some(new_sql),
                    theirs,
                )]));
            }
        }
        SchemaChange::ColumnsAdded { table, old_sql, .. } => {
            let new_sql = cs
                .tables
                .iter()
                .find(|t| &t.table.name == table)
                .map(|t| t.table.sql.as_str());
            match has("table", table) {
                Some(s) if Some(s) == new_sql => Needs::Nothing,
                Some(s) if s == old_sql => Needs::All,
                _ => return conflict("table", table),
            }
        }
        // Triggers are compared as a set (see plan_schema).
        SchemaChange::ObjectAdded { kind, .. }
        | SchemaChange::ObjectDropped { kind, .. }
        | SchemaChange::ObjectChanged { kind, .. }
            if *kind == ObjectKind::Trigger =>
        {
            Needs::Nothing
        }
        SchemaChange::ObjectDropped {
            kind,
            name,
            sql: old,
        } => match has(kind.as_str(), name) {
            Some(s) if s == old => Needs::All,
            None => Needs::Nothing,
            Some(_) => return conflict(kind.as_str(), name),
        },
        SchemaChange::ObjectChanged {
            kind,
            name,
            old_sql,
            new_sql,
        } => match has(kind.as_str(), name) {
            Some(s) if s == old_sql => Needs::All,
            Some(s) if s == new_sql && old_sql != new_sql => Needs::Nothing,
            None if old_sql == new_sql => Needs::NewForm,
            _ => return conflict(kind.as_str(), name),
        },
        SchemaChange::ObjectAdded {
            kind,
            name,
            sql: create,
        } => match has(kind.as_str(), name) {
            None => Needs::All,
            Some(s) if s == create => Needs::Nothing,
            Some(_) => return conflict(kind.as_str(), name),
        },
    };
    Ok(Outcome::Done(needs))
}

/// DDL for the schema changes the remote still needs, split around the row changes. A push cut
/// into transactions must leave the remote, after any one of them, in a state a re-run (or a
/// pull) understands: every object either as in the base or as in the working copy, never
/// missing. So views change at once in the first transaction (a definition holds no rows), while
/// changed indexes keep their old form until the last one, which drops them and builds the
/// new ones over the final rows.
pub(super) struct SchemaPlan {
    /// First transaction, before its rows: trigger and object drops, then table DDL.
    pub(super) before: Vec<String>,
    /// First transaction, after its rows: new and changed views.
    pub(super) views: Vec<String>,
    /// Last transaction, before its rows: the old versions of changed indexes.
    pub(super) index_drops: Vec<String>,
    /// Last transaction, after its rows: new and changed indexes, then triggers.
    pub(super) after: Vec<String>,
}

/// Plans the DDL from the remote's schema as this transaction finds it: objects already in their
/// new form (a re-run, or a later transaction of a split push) need nothing.
/// A schema change the remote no longer allows (someone else changed the same object) is the
/// conflict it returns instead.
pub(super) fn plan_schema(cs: &Changeset, remote: &RemoteState) -> Result<Outcome<SchemaPlan>> {
    let has = |ty: &str, name: &str| remote.sql_of(ty, name);
    // Object drops go before table DDL (a dropped table takes its indexes with it).
    let mut drops = Vec::new();
    let mut before = Vec::new();
    let mut views = Vec::new();
    let mut index_drops = Vec::new();
    let mut after = Vec::new();
    // Triggers: the remote's must be the base's or already the working copy's.
    let mut base_tr = cs.base_triggers.clone();
    let mut new_tr = cs.new_triggers.clone();
    let mut remote_tr = remote.triggers();
    base_tr.sort();
    new_tr.sort();
    remote_tr.sort();
    if remote_tr != base_tr && remote_tr != new_tr {
        // Name one trigger the remote has otherwise than the base.
        let odd = remote_tr
            .iter()
            .find(|t| !base_tr.contains(t))
            .or_else(|| base_tr.iter().find(|t| !remote_tr.contains(t)))
            .map_or("", |(name, _)| name.as_str());
        return Ok(Outcome::Conflicts(vec![Conflict::schema("trigger", odd)]));
    }
    for (name, _) in &remote_tr {
        drops.push(format!("DROP TRIGGER {}", sql::ident(name)));
    }
    for ch in &cs.schema {
        let needed = match remote_needs(ch, cs, remote)? {
            Outcome::Done(needed) => needed,
            Outcome::Conflicts(c) => return Ok(Outcome::Conflicts(c)),
        };
        let (index, changed_index) = match ch {
            SchemaChange::ObjectAdded { kind, .. } => (*kind == ObjectKind::Index, false),
            SchemaChange::ObjectChanged { kind, .. } => {
                (*kind == ObjectKind::Index, *kind == ObjectKind::Index)
            }
            _ => (false, false),
        };
        for (phase, q) in ch.statements() {
            match (needed, phase) {
                (Needs::Nothing, _) => {}
                (Needs::NewForm, DdlPhase::DropObjects | DdlPhase::Tables) => {}
                // A changed index keeps its old form until the last transaction.
                (_, DdlPhase::DropObjects) if changed_index => index_drops.push(q),
                (_, DdlPhase::DropObjects) => drops.push(q),
                (_, DdlPhase::Tables) => before.push(q),
                (_, DdlPhase::CreateObjects) if index => after.push(q),
                (_, DdlPhase::CreateObjects) => views.push(q),
            }
        }
    }
    // Rows may only go into tables whose definition is the one they were diffed against.
    let renames = cs.renamed_tables();
    for t in cs.tables.iter().filter(|t| !t.changes.is_empty()) {
        let reshaped = cs.schema.iter().any(|c| match c {
            SchemaChange::TableAdded { name, .. } | SchemaChange::TableRebuilt { name, .. } => {
                name == &t.table.name
            }
            SchemaChange::ColumnsAdded { table, .. } => table == &t.table.name,
            _ => false,
        });
        // A table whose references to a renamed table the rename itself rewrites.
        let follows = |s: &str| {
            !renames.is_empty()
                && crate::changeset::with_renamed_references(s, &renames) == t.table.sql
        };
        if !reshaped && !has("table", &t.table.name).is_some_and(|s| s == t.table.sql || follows(s))
        {
            return Ok(Outcome::Conflicts(vec![Conflict::schema(
                "table",
                &t.table.name,
            )]));
        }
    }
    for (_, create) in &cs.new_triggers {
        after.push(create.clone());
    }
    drops.extend(before);
    Ok(Outcome::Done(SchemaPlan {
        before: drops,
        views,
        index_drops,
        after,
    }))
}
