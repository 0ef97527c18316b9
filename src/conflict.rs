//! What stops a push or a pull: one conflict type for both, the outcome that carries it, and
//! how a pull is told to settle conflicts ([`MergeOptions`]).
//!
//! A conflict is never an error: the operation ran as it should and found that both sides
//! changed the same thing, so it changed nothing anywhere. Push, pull, sync and watch return an
//! [`Outcome`], and the command line turns its conflicts into exit code 3 in one place.

use std::collections::HashMap;
use std::io::Write;

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

/// Which operation met conflicts: it decides the wording and what to do next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// `interrupted`: an earlier push may have reached the remote without the base knowing.
    Push {
        interrupted: bool,
    },
    Pull,
}

/// Conflicts that stopped a push or a pull, as the operation reports them: as `--json`
/// (`{"pulled": false, "conflicts": [..]}`, or `{"pushed": false, "conflicts": [..],
/// "earlier_push_interrupted": false}`) or for a person ([`Stopped::write_text`]).
#[derive(Debug, Clone, Copy)]
pub struct Stopped<'a> {
    pub op: Op,
    pub conflicts: &'a [Conflict],
}

impl Stopped<'_> {
    /// Writes this report's entries into a JSON object under way (one of `watch --json`'s
    /// events holds them beside its own).
    pub(crate) fn entries<M: SerializeMap>(&self, m: &mut M) -> Result<(), M::Error> {
        match self.op {
            Op::Push { interrupted } => {
                m.serialize_entry("pushed", &false)?;
                m.serialize_entry("conflicts", self.conflicts)?;
                m.serialize_entry("earlier_push_interrupted", &interrupted)
            }
            Op::Pull => {
                m.serialize_entry("pulled", &false)?;
                m.serialize_entry("conflicts", self.conflicts)
            }
        }
    }
}

impl Serialize for Stopped<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(None)?;
        self.entries(&mut m)?;
        m.end()
    }
}

impl Stopped<'_> {
    /// The conflicts for a person: a line or two each (50 at most), then what to do.
    pub fn write_text(&self, out: &mut dyn Write) -> std::io::Result<()> {
        let (op, conflicts) = (self.op, self.conflicts);
        let n = conflicts.len();
        let s = if n == 1 { "" } else { "s" };
        match op {
            Op::Push { .. } => writeln!(out,
                "conflict: {n} row{s} changed both here and on the remote since the last sync; nothing was pushed"
            )?,
            Op::Pull => writeln!(out,
                "conflict: {n} change{s} made both here and on the remote; nothing was pulled"
            )?,
        }
        // The remote's side is "theirs" in a merge, "remote" against a push.
        let (ours, theirs) = match op {
            Op::Push { .. } => ("local", "remote"),
            Op::Pull => ("ours", "theirs"),
        };
        let lit = crate::sql::literal;
        let list = |vs: &[Value]| vs.iter().map(lit).collect::<Vec<_>>().join(", ");
        for c in conflicts.iter().take(50) {
            let (table, key) = (&c.table, list(&c.key));
            match c.kind {
                ConflictKind::ForeignKey => writeln!(
                    out,
                    "  table {table}, key ({key}): its foreign key would point at nothing ({})",
                    c.constraint.as_deref().unwrap_or("a FOREIGN KEY")
                )?,
                ConflictKind::Schema => {
                    let object = c.object.as_deref().unwrap_or(table);
                    match op {
                        Op::Push { .. } => {
                            writeln!(out, "  {object} changed on the remote since your last sync")?
                        }
                        Op::Pull => {
                            writeln!(out, "  {object} was changed both here and on the remote")?
                        }
                    }
                    let def = |side: &Option<Vec<Value>>| match side.as_deref() {
                        Some([Value::Text(t)]) => String::from_utf8_lossy(t).into_owned(),
                        _ => "(none: dropped)".to_owned(),
                    };
                    if c.columns == ["definition"] {
                        writeln!(out, "    base:    {}", def(&c.base))?;
                        writeln!(out, "    {:<8} {}", format!("{ours}:"), def(&c.ours))?;
                        writeln!(out, "    {:<8} {}", format!("{theirs}:"), def(&c.theirs))?;
                    }
                }
                ConflictKind::Unique => {
                    // The other row holding the same values: ours in a merge, the remote's
                    // against a push.
                    let other = c
                        .ours_key
                        .as_deref()
                        .or(c.theirs.as_deref())
                        .map_or("?".to_owned(), list);
                    writeln!(out,
                        "  table {table}, key ({key}): {}; the other row holding the same values: ({other})",
                        c.constraint.as_deref().unwrap_or("a UNIQUE constraint")
                    )?;
                }
                ConflictKind::Cell => {
                    let cell = |v: &Option<Vec<Value>>| {
                        v.as_ref()
                            .and_then(|v| v.first())
                            .map_or("-".to_owned(), lit)
                    };
                    writeln!(
                        out,
                        "  table {table}, key ({key}), column {}: base {}, {ours} {}, {theirs} {}",
                        c.columns.join(", "),
                        cell(&c.base),
                        cell(&c.ours),
                        cell(&c.theirs)
                    )?;
                }
                ConflictKind::Row if c.columns.is_empty() => writeln!(
                    out,
                    "  table {table}, key ({key}): deleted on one side, changed on the other"
                )?,
                ConflictKind::Row => {
                    writeln!(out, "  table {table}, key ({key})")?;
                    let state = |r: &Option<Vec<Value>>| {
                        if r.is_some() {
                            "present"
                        } else {
                            "absent"
                        }
                    };
                    if c.base.is_none() || c.ours.is_none() || c.theirs.is_none() {
                        writeln!(
                            out,
                            "    row: base {}, {ours} {}, {theirs} {}",
                            state(&c.base),
                            state(&c.ours),
                            state(&c.theirs)
                        )?;
                    }
                    for (i, col) in c.columns.iter().enumerate() {
                        let cell = |r: &Option<Vec<Value>>| {
                            r.as_ref().map_or("-".to_owned(), |r| lit(&r[i]))
                        };
                        let (b, o, t) = (cell(&c.base), cell(&c.ours), cell(&c.theirs));
                        if !(b == o && o == t) {
                            writeln!(out, "    {col}: base {b}, {ours} {o}, {theirs} {t}")?;
                        }
                    }
                }
            }
            if let Some(note) = &c.note {
                writeln!(out, "    ({note})")?;
            }
        }
        if n > 50 {
            writeln!(out, "  … and {} more (use --json for all)", n - 50)?;
        }
        let any = |kind| conflicts.iter().any(|c| c.kind == kind);
        match op {
            Op::Push { interrupted } => {
                if any(ConflictKind::Schema) {
                    writeln!(out, "Nothing was pushed. Run `tursync pull` to bring the remote's change in first.")?;
                } else if any(ConflictKind::ForeignKey) {
                    writeln!(out, "Nothing changed on the remote. A row we deleted (or re-keyed) is still referenced there by a row others added: pull to bring that row in, then restore the parent or delete the child, and push again.")?;
                } else if conflicts
                    .iter()
                    .any(|c| c.base.is_none() && c.ours.is_some() && c.theirs.is_some())
                {
                    writeln!(out, "Some of your new rows took keys that new rows on the remote took meanwhile. Push never renumbers: run `tursync sync`, which renumbers your new rows (and the references to them) and pushes them.")?;
                } else {
                    writeln!(out, "Nothing changed on either side in this transaction. Run `tursync pull` to merge the remote's changes (it reports the same rows), then push again.")?;
                }
                if interrupted {
                    writeln!(out, "An earlier push was interrupted and may have reached the remote without the base knowing: run `tursync sync`, which settles that first.")?;
                }
            }
            Op::Pull if any(ConflictKind::Schema) => {
                writeln!(out, "Nothing changed. Both sides changed the same schema object (definitions shown above where known). A table both sides reshaped in place is settled by `tursync sync --theirs` (their definition, our rows merged onto it) or `--ours` (our definition, pushed with their rows carried; `--theirs TABLE` for one table). Otherwise undo one side's change (in the working copy, or on the remote itself) or make both the same, then pull again.")?
            }
            Op::Pull => writeln!(out, "Nothing changed. Settle them with `tursync pull --ours` or `--theirs` (or table by table: `--theirs TABLE`), or edit the working copy and pull again. For a foreign-key conflict, the side you keep decides whether the deleted parent stays deleted (its ON DELETE action then applies to the rows pointing at it) or comes back with what its delete took along; `tursync help pull` says more.")?,
        }
        Ok(())
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
