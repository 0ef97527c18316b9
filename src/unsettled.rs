//! What an interrupted pull left unsettled (`.tursync/unsettled.json`): rows and schema
//! objects of the working copy that tursync cannot tell to be our edits rather than a pull's
//! change that never landed.
//!
//! A pull killed around its working copy's commit leaves its record (`crate::in_flight`), and
//! the next run finds whether that commit landed: for certain when the record was renamed after
//! it, otherwise from what the working copy holds. A commit judged landed that way may still
//! hold a row against the judgement (a row the merge wrote that reads as before: the app set it
//! back, or the judgement is wrong), and such rows and schema objects are marked here; a
//! record that cannot be read, or whose kept copy of theirs is gone, marks everything. For a
//! marked row any difference of ours from the base is a conflict, even where the remote did
//! not change the row since: the next pull stops on it and `--ours` or `--theirs` settles it,
//! and a push refuses it until then.
//!
//! ```text
//! record (not renamed): the merge wrote t id 1 x'00' -> x'01', and id 2 x'00' -> x'01'
//! now: id 1 = x'01', id 2 = x'00'   -> landed (id 1 says so); id 2 marked: ours x'00'
//!                                      against the base's x'01' is a conflict, whatever
//!                                      the remote holds
//! ```
//!
//! The marks are forgotten once a pull succeeds (`Workspace::forget_after_pull`): it met every
//! marked row that still differs and each was settled (or it would have stopped). They are
//! not a cache: deleting the file by hand forgets what it marks.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::changeset::{Changeset, RowChange, SchemaChange, TableDiff};
use crate::conflict::{Conflict, ConflictKind, MergeOptions, Resolve};
use crate::durable::{remove_aside, save_json};
use crate::value::Value;
use crate::{Context, Result};

/// The file, in the state directory.
const FILE: &str = "unsettled.json";

/// Rows and schema objects whose difference from the base is not known to be ours.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Unsettled {
    /// Every difference is (the record of the interrupted pull could not be read).
    #[serde(default)]
    pub(crate) everything: bool,
    /// Schema objects (tables, indexes, views, triggers) by name: any change of ours to one,
    /// and to any row of a table among them.
    #[serde(default)]
    pub(crate) objects: BTreeSet<String>,
    /// Rows by table, each by its key's text ([`crate::changeset::key_text`]).
    #[serde(default)]
    pub(crate) rows: BTreeMap<String, BTreeSet<String>>,
    /// Whether `verify --repair` marked some of them (the base read again from a remote that
    /// had moved), which their conflicts say instead of blaming an interrupted pull.
    #[serde(default)]
    pub(crate) repaired: bool,
}

impl Unsettled {
    pub(crate) fn is_empty(&self) -> bool {
        !self.everything && self.objects.is_empty() && self.rows.is_empty()
    }

    /// The marks in `dir`; none when there is no file. A file that cannot be read marks
    /// everything: which rows it named is unknown, and settling them all loses nothing.
    pub(crate) fn load(dir: &Path) -> Result<Unsettled> {
        let path = dir.join(FILE);
        match std::fs::read(&path) {
            Ok(bytes) => Ok(serde_json::from_slice(&bytes).unwrap_or(Unsettled {
                everything: true,
                ..Unsettled::default()
            })),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Unsettled::default()),
            Err(e) => Err(e).during("reading", path.display()),
        }
    }

    /// Adds `more` to the marks in `dir`, durably.
    pub(crate) fn add(dir: &Path, more: Unsettled) -> Result<()> {
        if more.is_empty() {
            return Ok(());
        }
        let mut all = Unsettled::load(dir)?;
        all.everything |= more.everything;
        all.repaired |= more.repaired;
        all.objects.extend(more.objects);
        for (t, keys) in more.rows {
            all.rows.entry(t).or_default().extend(keys);
        }
        save_json(dir, FILE, &all)
    }

    /// The rows and schema objects `cs` changes: after a base read again from a remote that
    /// moved since the last sync (`verify --repair`), the old base's differences from it, each
    /// either theirs not yet merged or what damaged the old base.
    pub(crate) fn of(cs: &Changeset) -> Unsettled {
        let mut marks = Unsettled {
            repaired: true,
            ..Unsettled::default()
        };
        for c in &cs.schema {
            marks
                .objects
                .extend(c.names().into_iter().map(str::to_owned));
        }
        for t in cs.tables.iter().filter(|t| !t.changes.is_empty()) {
            let keys = marks.rows.entry(t.table.name.clone()).or_default();
            keys.extend(t.changes.iter().map(|ch| t.key_text(ch.row())));
        }
        marks
    }

    /// Forgets the marks in `dir`, once a pull settled them; the caller syncs `dir`.
    pub(crate) fn forget(dir: &Path) {
        remove_aside(&dir.join(FILE));
    }

    /// The marks in words: `every difference of ours`, or `2 rows of "t", table "u"`.
    pub(crate) fn describe(&self) -> String {
        if self.everything {
            return "every difference of ours from the base".to_owned();
        }
        let mut parts: Vec<String> = self
            .rows
            .iter()
            .map(|(t, keys)| {
                let n = keys.len();
                format!("{n} row{} of {t:?}", if n == 1 { "" } else { "s" })
            })
            .collect();
        parts.extend(self.objects.iter().map(|o| format!("{o:?}, whole")));
        parts.join(", ")
    }

    /// What a conflict of a marked row or object says of why it is one.
    fn note(&self) -> &'static str {
        if self.repaired {
            REPAIRED
        } else {
            NOTE
        }
    }

    fn covers_object(&self, name: &str) -> bool {
        self.everything || self.objects.contains(name)
    }

    fn covers_row(&self, table: &str, key: &str) -> bool {
        self.covers_object(table) || self.rows.get(table).is_some_and(|k| k.contains(key))
    }

    /// The schema objects our schema changes name that are marked, each with its kind, when
    /// their side did not change that object: each is a schema conflict until settled. (Where
    /// they changed it too, the merge compares the two changes as always.)
    pub(crate) fn schema_conflicts(&self, ours: &Changeset, theirs: &Changeset) -> Vec<Conflict> {
        let mut out = Vec::new();
        let theirs_names: Vec<&str> = theirs.schema.iter().flat_map(SchemaChange::names).collect();
        for change in &ours.schema {
            let names = change.names();
            if names.iter().any(|n| theirs_names.contains(n)) {
                continue;
            }
            let what = match change {
                SchemaChange::ObjectAdded { kind, .. }
                | SchemaChange::ObjectDropped { kind, .. }
                | SchemaChange::ObjectChanged { kind, .. } => kind.as_str(),
                _ => "table",
            };
            if let Some(name) = names.into_iter().find(|n| self.covers_object(n)) {
                let mut c = Conflict::schema(what, name);
                c.note = Some(self.note().into());
                if !out.contains(&c) {
                    out.push(c);
                }
            }
        }
        out
    }

    /// Our row changes that are marked, as conflicts (one per row), where their side did not
    /// change the row to the very same values.
    pub(crate) fn row_conflicts(&self, ours: &Changeset, theirs: &Changeset) -> Vec<Conflict> {
        let mut out = Vec::new();
        self.each_marked(ours, theirs, |t, ch, theirs_row| {
            out.push(row_conflict(t, ch, theirs_row, self.note()));
        });
        out
    }

    /// Settles the marked rows of a pull as `opts` says, in the changesets the merge plans
    /// from: a row settled `--ours` leaves their change of it out (the push sends ours); one
    /// settled `--theirs` leaves our change out and returns the statement that takes it back
    /// in the working copy (their change, if any, then applies as usual). Returns the
    /// conflicts left (rows of tables settled by neither side) and the statements.
    pub(crate) fn settle_rows(
        &self,
        ours: &mut Changeset,
        theirs: &mut Changeset,
        opts: &MergeOptions,
    ) -> (Vec<Conflict>, Vec<(String, Vec<Value>)>) {
        let mut drop_ours: HashSet<(String, String)> = HashSet::new();
        let mut drop_theirs: HashSet<(String, String)> = HashSet::new();
        let mut take_back = Vec::new();
        let mut left = Vec::new();
        self.each_marked(ours, theirs, |t, ch, theirs_row| {
            let name = t.table.name.clone();
            let key = t.key_text(ch.row());
            match opts.resolve_for(&name) {
                Resolve::Refuse => left.push(row_conflict(t, ch, theirs_row, self.note())),
                Resolve::Ours => {
                    drop_theirs.insert((name, key));
                }
                Resolve::Theirs => {
                    take_back.push(take_back_sql(t, ch));
                    drop_ours.insert((name, key));
                }
            }
        });
        retain_rows(ours, &drop_ours);
        retain_rows(theirs, &drop_theirs);
        (left, take_back)
    }

    /// Calls `f` with each of our marked row changes, and their new row for it (`Some(None)`
    /// when they deleted it, `None` when they did not change it), unless theirs is the same.
    fn each_marked(
        &self,
        ours: &Changeset,
        theirs: &Changeset,
        mut f: impl FnMut(&TableDiff, &RowChange, Option<Option<Vec<Value>>>),
    ) {
        if self.is_empty() {
            return;
        }
        for t in &ours.tables {
            let name = &t.table.name;
            if !self.covers_object(name) && !self.rows.contains_key(name) {
                continue;
            }
            let their_table = theirs.tables.iter().find(|x| &x.table.name == name);
            let their_rows: BTreeMap<String, &RowChange> = their_table
                .map(|x| x.changes.iter().map(|c| (x.key_text(c.row()), c)).collect())
                .unwrap_or_default();
            for ch in &t.changes {
                let key = t.key_text(ch.row());
                if !self.covers_row(name, &key) {
                    continue;
                }
                let theirs_row = their_rows
                    .get(&key)
                    .map(|c| c.new_row().map(<[Value]>::to_vec));
                if let Some(row) = &theirs_row {
                    if row.as_deref() == ch.new_row() {
                        continue;
                    }
                }
                f(t, ch, theirs_row);
            }
        }
    }
}

const NOTE: &str = "an interrupted pull left this unsettled: tursync cannot tell whether ours is an edit made here or the pull's change that did not land; `tursync pull --ours` keeps ours (the push then sends it), `--theirs` takes the remote's";
const REPAIRED: &str = "the damaged base was read again from a remote that had moved (`verify --repair`), and the old base held this otherwise: tursync cannot tell whether ours is an edit made here or a change of theirs the old base missed; `tursync pull --ours` keeps ours (the push then sends it), `--theirs` takes the remote's";

/// The conflict of our marked change `ch` of a row of `t`, with their new row for it
/// (`Some(None)`: they deleted it; `None`: they did not change it, so theirs is the base's),
/// saying `note` of why it is one.
fn row_conflict(
    t: &TableDiff,
    ch: &RowChange,
    theirs_row: Option<Option<Vec<Value>>>,
    note: &str,
) -> Conflict {
    let base = ch.old().map(<[Value]>::to_vec);
    let mut c = Conflict::new(
        &t.table.name,
        ConflictKind::Row,
        t.key_of(ch.row()).into_iter().cloned().collect(),
    );
    c.columns = t.columns.clone();
    c.ours = ch.new_row().map(<[Value]>::to_vec);
    c.theirs = theirs_row.unwrap_or_else(|| base.clone());
    c.base = base;
    c.note = Some(note.into());
    c
}

/// The statement that puts the working copy's row back as the base has it: ours `ch` undone.
fn take_back_sql(t: &TableDiff, ch: &RowChange) -> (String, Vec<Value>) {
    let name = &t.table.name;
    let key_names = t.key_names();
    let key: Vec<Value> = t.key_of(ch.row()).into_iter().cloned().collect();
    match ch {
        RowChange::Insert(_) => (crate::sql::delete(name, &key_names), key),
        RowChange::Delete(old) => (crate::sql::insert(name, &t.columns, 1), old.clone()),
        RowChange::Update { old, .. } => {
            let mut args = old.clone();
            args.extend(key);
            (crate::sql::update(name, &t.columns, &key_names), args)
        }
    }
}

fn retain_rows(cs: &mut Changeset, drop: &HashSet<(String, String)>) {
    if drop.is_empty() {
        return;
    }
    for t in &mut cs.tables {
        let name = t.table.name.clone();
        let changes = std::mem::take(&mut t.changes);
        t.changes = changes
            .into_iter()
            .filter(|c| !drop.contains(&(name.clone(), t.key_text(c.row()))))
            .collect();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn marks_that_cannot_be_read_mark_everything() {
        let dir = tempfile::tempdir().unwrap();
        assert!(Unsettled::load(dir.path()).unwrap().is_empty());
        std::fs::write(dir.path().join(FILE), b"{\"rows\": [garbage").unwrap();
        assert!(Unsettled::load(dir.path()).unwrap().everything);
        Unsettled::forget(dir.path());
        assert!(Unsettled::load(dir.path()).unwrap().is_empty());
    }

    #[test]
    fn marks_add_up_and_name_rows_by_key() {
        let dir = tempfile::tempdir().unwrap();
        let key = crate::changeset::key_text(&[Value::Integer(1)]);
        let mut one = Unsettled::default();
        one.rows.entry("t".into()).or_default().insert(key.clone());
        Unsettled::add(dir.path(), one).unwrap();
        let mut two = Unsettled::default();
        two.objects.insert("u".into());
        Unsettled::add(dir.path(), two).unwrap();
        let all = Unsettled::load(dir.path()).unwrap();
        assert!(all.covers_row("t", &key));
        assert!(!all.covers_row("t", &crate::changeset::key_text(&[Value::Integer(2)])));
        assert!(all.covers_row("u", "anything"));
        assert!(!all.everything);
    }
}
