//! Renumbering our new rows whose integer keys their new rows took: which rows move and to
//! which keys ([`Moves`], and [`Locators`] for hidden rowids that only locate rows), keys free
//! on both sides ([`KeySpace`]), and each move made with every reference to it
//! ([`Renumbered::apply`]). It is decided for every table before any row merges, because a move
//! changes how our rows that refer to the moved one compare with theirs.

use std::collections::HashMap;

use rusqlite::Connection;
use serde::Serialize;

use crate::changeset::{Changeset, RowChange, TableDiff};
use crate::conflict::MergeOptions;
use crate::schema::ForeignKey;
use crate::sql;
use crate::value::Value;
use crate::{Error, Result};

/// One of our new rows moved to a key free on both sides, because their new row took its key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Renumbered {
    pub table: String,
    /// The key column as the working copy names it: its INTEGER PRIMARY KEY, or a rowid alias.
    pub column: String,
    pub from: i64,
    pub to: i64,
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
pub(super) fn integer_key(t: &TableDiff) -> Option<&str> {
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
pub(super) struct Locators {
    /// The locator's position in a data row, and its name.
    pub(super) pos: usize,
    pub(super) column: String,
    at: HashMap<i64, String>,
    of: HashMap<String, i64>,
}

impl Locators {
    pub(super) fn new(theirs: &TableDiff, ours: Option<&TableDiff>) -> Option<Locators> {
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
    pub(super) fn make_room(
        &mut self,
        table: &str,
        key: &str,
        at: i64,
        renumber: &mut dyn FnMut(i64) -> Result<Option<i64>>,
        renumbered: &mut Vec<Renumbered>,
    ) -> Result<bool> {
        let moved = |from: i64, to: i64, renumbered: &mut Vec<Renumbered>| {
            renumbered.push(Renumbered {
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
            moved(at, to, renumbered);
            self.at.remove(&at);
            self.at.insert(to, holder.clone());
            self.of.insert(holder, to);
        }
        if let Some(from) = self.of.get(key).copied().filter(|&f| f != at) {
            moved(from, at, renumbered);
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
pub(super) struct Moves {
    fks: Vec<ForeignKey>,
    /// By table name in lower case: the moved key column, and our key -> its new key.
    keys: HashMap<String, (String, HashMap<i64, i64>)>,
    pub(super) renumbered: Vec<Renumbered>,
}

impl Moves {
    /// Decides every move, repeating until no row of ours changes how it compares with
    /// theirs: a move can make a child of ours differ from their child at its key, and so on
    /// down a chain of references.
    pub(super) fn decide(
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
    pub(super) fn moved(&self, table: &str, key: i64) -> Option<i64> {
        self.keys
            .get(&table.to_lowercase())
            .and_then(|(_, m)| m.get(&key).copied())
    }

    /// Our change's row as it reads once the moves are made: a deleted row as it was, a new
    /// or changed one with every reference to a moved key holding its new key.
    pub(super) fn follow(&self, ours: &TableDiff, change: &RowChange) -> Vec<Value> {
        match change {
            RowChange::Delete(r) => r.clone(),
            RowChange::Insert(r) | RowChange::Update { new: r, .. } => self.follow_row(ours, r),
        }
    }

    /// Why a conflict's value of ours in `column` is not what the working copy holds: it
    /// refers to a new row of ours that moves. `row` is our row as the working copy holds it.
    pub(super) fn note(
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
pub(super) struct KeySpace<'c> {
    /// The working copy and the remote copy.
    sides: [&'c Connection; 2],
    next: HashMap<String, i64>,
}

impl<'c> KeySpace<'c> {
    pub(super) fn new(work: &'c Connection, theirs: &'c Connection) -> KeySpace<'c> {
        KeySpace {
            sides: [work, theirs],
            next: HashMap::new(),
        }
    }

    /// The next key of `col` in table `name` that is free on both sides.
    pub(super) fn take(&mut self, name: &str, col: &str) -> Result<i64> {
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
    pub(super) fn apply(&self, work: &Connection, fks: &[ForeignKey]) -> Result<()> {
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
