//! Schema conflicts settled a whole object at a time: what `--ours` and `--theirs` do when no
//! row-by-row or in-place merge applies.
//!
//! The merge settles most schema clashes by itself or column by column ([`crate::merge`]).
//! What is left are tables that one side dropped, renamed, created or gave a new row key while
//! the other changed them otherwise, and views, indexes or triggers both sides defined
//! differently. A side is then kept whole:
//!
//! ```text
//! base: memo(id, body) 3 rows   ours: DROP TABLE memo   theirs: UPDATE memo … WHERE id = 1
//!   --theirs  the working copy takes the remote's memo as it is (its rows, indexes, triggers,
//!             AUTOINCREMENT counter); our drop is undone.
//!   --ours    the remote's change of memo is not merged; the base moves to the remote as read,
//!             so the next push drops memo there (their edit goes with the table).
//! ```
//!
//! A table is taken together with every name a rename on either side links it to (`memo`
//! renamed `memo_o` here and `memo_t` there is one group of three names). Nothing of the kept
//! side is lost: `--theirs` copies the remote's tables and objects exactly (rowids included);
//! `--ours` leaves the working copy's as they are, and push carries them (a table re-created
//! under a new row key included, see [`crate::push`]).

use std::collections::BTreeSet;

use rusqlite::{Connection, OptionalExtension};

use crate::changeset::{Changeset, SchemaChange};
use crate::conflict::{Conflict, ConflictKind, MergeOptions, Resolve};
use crate::schema::ObjectKind;
use crate::sql;
use crate::value::Value;
use crate::Result;

/// What a table or schema object is, in a schema conflict's `object` (`table "memo"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Table,
    Object(ObjectKind),
}

impl Kind {
    fn of(conflict: &Conflict) -> Option<Kind> {
        let what = conflict.object.as_deref()?.split_once(' ')?.0;
        Some(match what {
            "table" => Kind::Table,
            "index" => Kind::Object(ObjectKind::Index),
            "view" => Kind::Object(ObjectKind::View),
            "trigger" => Kind::Object(ObjectKind::Trigger),
            _ => return None,
        })
    }

    fn sqlite_type(self) -> &'static str {
        match self {
            Kind::Table => "table",
            Kind::Object(k) => k.as_str(),
        }
    }
}

/// One object kept whole from one side.
#[derive(Debug, Clone)]
struct Take {
    kind: Kind,
    /// The object's names: for a table, every name a rename on either side links it to.
    names: BTreeSet<String>,
    side: Resolve,
}

/// The objects kept whole, decided from the conflicts a merge without them met.
#[derive(Debug, Clone, Default)]
pub(crate) struct Taken(Vec<Take>);

impl Taken {
    pub(crate) fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// How many conflicts were settled whole.
    pub(crate) fn len(&self) -> usize {
        self.0.len()
    }

    /// Adds the schema conflicts among `conflicts` that `opts` settles to one side. False when
    /// none is new: then the conflicts stand (a conflict that persists once its object is
    /// taken is no conflict this settles).
    pub(crate) fn settle(
        &mut self,
        conflicts: &[Conflict],
        opts: &MergeOptions,
        ours: &Changeset,
        theirs: &Changeset,
    ) -> bool {
        let mut grew = false;
        for c in conflicts.iter().filter(|c| c.kind == ConflictKind::Schema) {
            let Some(kind) = Kind::of(c) else { continue };
            let side = opts.resolve_for(&c.table);
            if side == Resolve::Refuse || self.covers(kind, &c.table) {
                continue;
            }
            let names = match kind {
                Kind::Table => linked_by_renames(&c.table, ours, theirs),
                Kind::Object(_) => BTreeSet::from([c.table.clone()]),
            };
            self.0.push(Take { kind, names, side });
            grew = true;
        }
        grew
    }

    /// For `pull --json`'s `schema` list, beside their schema changes: one entry per object
    /// kept whole, e.g. `{"change": "kept_whole", "kind": "table", "names": ["memo",
    /// "memo_t"], "side": "theirs"}`.
    pub(crate) fn to_json(&self) -> Vec<serde_json::Value> {
        self.0
            .iter()
            .map(|t| {
                serde_json::json!({
                    "change": "kept_whole",
                    "kind": t.kind.sqlite_type(),
                    "names": t.names,
                    "side": if t.side == Resolve::Theirs { "theirs" } else { "ours" },
                })
            })
            .collect()
    }

    fn covers(&self, kind: Kind, name: &str) -> bool {
        self.0
            .iter()
            .any(|t| t.kind == kind && t.names.contains(name))
    }

    /// Both changesets without what they say of the objects taken whole, so the merge sees
    /// no change of them on either side; each side's triggers on a taken table are the kept
    /// side's. `work` and `theirs_db` name the table an index or trigger is on.
    pub(crate) fn strip(
        &self,
        ours: &Changeset,
        theirs: &Changeset,
        work: &Connection,
        theirs_db: &Connection,
    ) -> Result<(Changeset, Changeset)> {
        let (mut o, mut t) = (ours.clone(), theirs.clone());
        for (cs, dbs) in [(&mut o, [work, theirs_db]), (&mut t, [theirs_db, work])] {
            let mut keep = Vec::with_capacity(cs.schema.len());
            for ch in cs.schema.drain(..) {
                if !self.touches(&ch, dbs)? {
                    keep.push(ch);
                }
            }
            cs.schema = keep;
            cs.tables
                .retain(|d| !self.covers(Kind::Table, &d.table.name));
            cs.sequences.retain(|q| !self.covers(Kind::Table, &q.table));
        }
        // Triggers are merged as a set (base, ours, theirs): the kept side's triggers on a
        // taken table, and a taken trigger, are put on both sides, so they merge as unchanged.
        let ours_triggers = on_tables(&ours.new_triggers, work)?;
        let theirs_triggers = on_tables(&theirs.new_triggers, theirs_db)?;
        for take in &self.0 {
            let (ours_of, theirs_of) = (
                triggers_of(take, &ours_triggers),
                triggers_of(take, &theirs_triggers),
            );
            let gone: BTreeSet<String> = ours_of
                .iter()
                .chain(&theirs_of)
                .map(|(n, _)| n.clone())
                .collect();
            let (kept, other) = match take.side {
                Resolve::Theirs => (theirs_of, &mut o.new_triggers),
                _ => (ours_of, &mut t.new_triggers),
            };
            other.retain(|(n, _)| !gone.contains(n));
            other.extend(kept);
        }
        Ok((o, t))
    }

    /// Whether a schema change is of an object taken whole (an index of a taken table too).
    /// `dbs`: where the side's objects are, then the other side (where an object this side
    /// dropped still is), to find the table of an index.
    fn touches(&self, ch: &SchemaChange, dbs: [&Connection; 2]) -> Result<bool> {
        Ok(match ch {
            SchemaChange::TableAdded { name, .. } | SchemaChange::TableDropped { name, .. } => {
                self.covers(Kind::Table, name)
            }
            SchemaChange::TableRebuilt { name, old_name, .. } => {
                self.covers(Kind::Table, name) || self.covers(Kind::Table, old_name)
            }
            SchemaChange::ColumnsAdded { table, .. } => self.covers(Kind::Table, table),
            SchemaChange::ObjectAdded { kind, name, sql }
            | SchemaChange::ObjectDropped { kind, name, sql }
            | SchemaChange::ObjectChanged {
                kind,
                name,
                new_sql: sql,
                ..
            } => {
                if self.covers(Kind::Object(*kind), name) {
                    return Ok(true);
                }
                if *kind != ObjectKind::Index {
                    return Ok(false);
                }
                let on = |db: &Connection| table_of(db, "index", name, sql);
                let table = match on(dbs[0])? {
                    Some(t) => Some(t),
                    None => on(dbs[1])?,
                };
                table.is_some_and(|t| self.covers(Kind::Table, &t))
            }
        })
    }

    /// Makes the working copy's objects taken `--theirs` the remote's, inside the caller's
    /// transaction (foreign keys off, triggers suspended): ours dropped, theirs created from
    /// `theirs_db` with their rows, indexes and AUTOINCREMENT counter. Triggers come with the
    /// merged set afterwards.
    pub(crate) fn apply(&self, work: &Connection, theirs_db: &Connection) -> Result<()> {
        for take in self.0.iter().filter(|t| t.side == Resolve::Theirs) {
            let ty = take.kind.sqlite_type();
            for name in &take.names {
                if sql_of(work, ty, name)?.is_some() {
                    work.execute_batch(&format!(
                        "DROP {} {}",
                        ty.to_uppercase(),
                        sql::ident(name)
                    ))?;
                }
            }
            for name in &take.names {
                let Some(create) = sql_of(theirs_db, ty, name)? else {
                    continue;
                };
                work.execute_batch(&create)?;
                if take.kind == Kind::Table {
                    copy_table(work, theirs_db, name)?;
                }
            }
        }
        Ok(())
    }
}

/// `name` and every table name a rename on either side links to it.
fn linked_by_renames(name: &str, ours: &Changeset, theirs: &Changeset) -> BTreeSet<String> {
    let mut names = BTreeSet::from([name.to_owned()]);
    loop {
        let before = names.len();
        for ch in ours.schema.iter().chain(&theirs.schema) {
            if let SchemaChange::TableRebuilt { name, old_name, .. } = ch {
                if names.contains(name) || names.contains(old_name) {
                    names.insert(name.clone());
                    names.insert(old_name.clone());
                }
            }
        }
        if names.len() == before {
            return names;
        }
    }
}

/// Each trigger with the table it is on (as `db` holds it).
fn on_tables(
    triggers: &[(String, String)],
    db: &Connection,
) -> Result<Vec<(String, String, Option<String>)>> {
    triggers
        .iter()
        .map(|(n, s)| Ok((n.clone(), s.clone(), table_of(db, "trigger", n, s)?)))
        .collect()
}

/// The triggers among `all` that `take` keeps whole: the trigger itself, or those on its
/// tables.
fn triggers_of(take: &Take, all: &[(String, String, Option<String>)]) -> Vec<(String, String)> {
    all.iter()
        .filter(|(n, _, on)| match take.kind {
            Kind::Object(ObjectKind::Trigger) => take.names.contains(n),
            Kind::Table => on.as_ref().is_some_and(|t| take.names.contains(t)),
            Kind::Object(_) => false,
        })
        .map(|(n, s, _)| (n.clone(), s.clone()))
        .collect()
}

/// The table an index or trigger is on, as `db` records it; `None` when `db` has no such
/// object with that definition.
fn table_of(db: &Connection, ty: &str, name: &str, create: &str) -> Result<Option<String>> {
    Ok(db
        .query_row(
            "SELECT tbl_name FROM sqlite_schema WHERE type = ?1 AND name = ?2 AND sql = ?3",
            [ty, name, create],
            |r| r.get(0),
        )
        .optional()?)
}

fn sql_of(db: &Connection, ty: &str, name: &str) -> Result<Option<String>> {
    Ok(db
        .query_row(
            "SELECT sql FROM sqlite_schema WHERE type = ?1 AND name = ?2",
            [ty, name],
            |r| r.get(0),
        )
        .optional()?)
}

/// Copies table `name`'s rows (rowids included), its indexes and its AUTOINCREMENT counter
/// from `from` into the just created, empty table of `work`.
fn copy_table(work: &Connection, from: &Connection, name: &str) -> Result<()> {
    let schema = crate::schema::load(from)?;
    let Some(table) = schema.tables.iter().find(|t| t.name == name) else {
        return Ok(());
    };
    let cols = table.data_names()?;
    let idents: Vec<String> = cols.iter().map(|c| sql::ident(c)).collect();
    let mut read = from.prepare(&format!(
        "SELECT {} FROM {}",
        idents.join(", "),
        sql::ident(name)
    ))?;
    let mut write = work.prepare(&sql::insert(name, &cols, 1))?;
    let mut rows = read.query([])?;
    while let Some(row) = rows.next()? {
        let values: Vec<Value> = (0..cols.len())
            .map(|i| row.get_ref(i).map(Value::from_ref))
            .collect::<rusqlite::Result<_>>()?;
        write.execute(rusqlite::params_from_iter(&values))?;
    }
    for (_, create) in crate::migration::indexes_of(from, name)? {
        work.execute_batch(&create)?;
    }
    let seq = crate::workspace::sequence(from, name)?;
    if has_sequences(work)? {
        crate::workspace::set_sequence(work, name, seq)?;
    }
    Ok(())
}

/// Whether `db` has `sqlite_sequence` (it has once any AUTOINCREMENT table was made).
fn has_sequences(db: &Connection) -> Result<bool> {
    Ok(sql_of(db, "table", "sqlite_sequence")?.is_some())
}
