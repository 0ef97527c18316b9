//! What stops a push or a pull: one conflict type for both, the outcome that carries it, and
//! how a pull is told to settle conflicts ([`MergeOptions`]).
//!
//! A conflict is never an error: the operation ran as it should and found that both sides
//! changed the same thing, so it changed nothing anywhere. Push, pull, sync and watch return an
//! [`Outcome`], and the command line turns its conflicts into exit code 3 in one place.

use std::collections::HashMap;

use serde::ser::{SerializeMap, Serializer};
use serde::Serialize;

use crate::value::Value;

/// What two sides disagree on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConflictKind {
    /// The same cell changed to different values.
    Cell,
    /// A row deleted on one side and changed on the other, or changed differently on both.
    Row,
    /// Two rows hold the same values under a UNIQUE constraint.
    Unique,
    /// A row would point, through a foreign key, at a row that is gone.
    ForeignKey,
    /// The same schema object (a table, index, view or trigger) changed on both sides.
    Schema,
}

impl ConflictKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ConflictKind::Cell => "cell",
            ConflictKind::Row => "row",
            ConflictKind::Unique => "unique",
            ConflictKind::ForeignKey => "foreign_key",
            ConflictKind::Schema => "schema",
        }
    }
}

/// Something both sides changed in ways that do not merge, named so a person can find it:
/// the table, the row by its identity (the declared key), what kind of disagreement, and the
/// values of `columns` on each side.
///
/// ```text
/// cell:        columns ["name"], base ["Ann"], ours ["Ann B"], theirs ["Ann A"]
/// row:         columns = every data column, base/ours/theirs the whole rows (None: no row there)
/// unique:      columns = the constraint's, constraint "UNIQUE constraint failed: users.email",
///              ours_key = the key of our row holding the same values
/// foreign key: key = the child row, columns = its foreign key, constraint names the parent
/// schema:      table "t", object "table \"t\"", nothing else
/// any:         note, when a value needs a word: "ours refers to our new row parent 2, which
///              is renumbered to 3 (their new row took 2)"
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct Conflict {
    pub table: String,
    pub kind: ConflictKind,
    pub key: Vec<Value>,
    pub columns: Vec<String>,
    pub base: Option<Vec<Value>>,
    pub ours: Option<Vec<Value>>,
    pub theirs: Option<Vec<Value>>,
    pub constraint: Option<String>,
    pub ours_key: Option<Vec<Value>>,
    /// The schema object of a schema conflict, as `table "t"` or `trigger "x"`.
    pub object: Option<String>,
    /// What a person needs to read the values right, e.g. that ours refers to a new row of
    /// ours that the merge renumbers, so it reads with the new key.
    pub note: Option<String>,
}

impl Conflict {
    /// A conflict of `kind` on the row `key` of `table`, with nothing else said yet.
    pub fn new(table: &str, kind: ConflictKind, key: Vec<Value>) -> Conflict {
        Conflict {
            table: table.to_owned(),
            kind,
            key,
            columns: Vec::new(),
            base: None,
            ours: None,
            theirs: None,
            constraint: None,
            ours_key: None,
            object: None,
            note: None,
        }
    }

    /// The same schema object, `what` ("table", "index", "view", "trigger") `name`, changed
    /// on both sides. `table` holds its name.
    pub fn schema(what: &str, name: &str) -> Conflict {
        Conflict {
            object: Some(format!("{what} {name:?}")),
            ..Conflict::new(name, ConflictKind::Schema, Vec::new())
        }
    }
}

impl Conflict {
    /// A schema conflict that shows the object's definitions: in the base, ours and theirs
    /// (`None`: gone on that side), as the one column `definition`.
    pub fn definitions(
        what: &str,
        name: &str,
        base: &str,
        ours: Option<&str>,
        theirs: Option<&str>,
    ) -> Conflict {
        let side = |s: Option<&str>| s.map(|s| vec![Value::text(s)]);
        Conflict {
            columns: vec!["definition".into()],
            base: side(Some(base)),
            ours: side(ours),
            theirs: side(theirs),
            ..Conflict::schema(what, name)
        }
    }
}

/// A conflict as `--json` shows it: a cell conflict's `base`/`ours`/`theirs` are the cell's
/// values; any other's are whole rows by column name (null where that side has no row).
/// `column` names the columns in question in one string (null for a row conflict).
impl Serialize for Conflict {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let column = (self.kind != ConflictKind::Row && !self.columns.is_empty())
            .then(|| self.columns.join(", "));
        let mut m = s.serialize_map(Some(12))?;
        m.serialize_entry("table", &self.table)?;
        m.serialize_entry("kind", self.kind.as_str())?;
        m.serialize_entry("key", &self.key)?;
        m.serialize_entry("column", &column)?;
        m.serialize_entry("columns", &self.columns)?;
        m.serialize_entry("base", &Side(self, self.base.as_deref()))?;
        m.serialize_entry("ours", &Side(self, self.ours.as_deref()))?;
        m.serialize_entry("theirs", &Side(self, self.theirs.as_deref()))?;
        m.serialize_entry("constraint", &self.constraint)?;
        m.serialize_entry("ours_key", &self.ours_key)?;
        m.serialize_entry("object", &self.object)?;
        m.serialize_entry("note", &self.note)?;
        m.end()
    }
}

/// One side's values of a conflict, as its JSON shows them.
struct Side<'a>(&'a Conflict, Option<&'a [Value]>);

impl Serialize for Side<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match (self.0.kind, self.1) {
            (_, None) => s.serialize_none(),
            (ConflictKind::Cell, Some(r)) => r.first().serialize(s),
            (_, Some(r)) => s.collect_map(self.0.columns.iter().zip(r)),
        }
    }
}

/// How an operation that can meet conflicts ended: done, or stopped by conflicts with nothing
/// changed on either side.
#[must_use]
#[derive(Debug)]
pub enum Outcome<R> {
    Done(R),
    Conflicts(Vec<Conflict>),
}

impl<R> Outcome<R> {
    pub fn is_done(&self) -> bool {
        matches!(self, Outcome::Done(_))
    }

    pub fn map<S>(self, f: impl FnOnce(R) -> S) -> Outcome<S> {
        match self {
            Outcome::Done(r) => Outcome::Done(f(r)),
            Outcome::Conflicts(c) => Outcome::Conflicts(c),
        }
    }
}

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
    /// every schema conflict, which no side settles yet. A foreign-key conflict reaches this
    /// only when its side could not settle it (`crate::orphans`): it stops the pull too.
    pub(crate) fn unsettled(&self, conflicts: &[Conflict]) -> Vec<Conflict> {
        conflicts
            .iter()
            .filter(|c| {
                matches!(c.kind, ConflictKind::ForeignKey | ConflictKind::Schema)
                    || self.resolve_for(&c.table) == Resolve::Refuse
            })
            .cloned()
            .collect()
    }
}
