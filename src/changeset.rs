//! What a diff finds, apart from the engine that finds it (`diff`), the buffer that holds
//! changes for a later pass (`change_buffer`) and the renderings (`changeset::render`): a [`Changeset`] holds the
//! schema changes, each table's row changes ([`TableDiff`]), counters and triggers; a
//! [`RowChange`] is one row, with its exact binary encoding, which the diff's change buffer and the
//! record of a push share. Push, pull and merge read and write this vocabulary only.
//!
//! ```text
//! base (1, 'a')  working copy (1, 'b')  -> Update { old: [1, 'a'], new: [1, 'b'] }
//! base (2, 'x')  working copy -         -> Delete([2, 'x'])
//! base -         working copy (3, 'y')  -> Insert([3, 'y'])
//! ```

use std::collections::BTreeMap;
use std::io::{Read, Write};

use crate::schema::{ObjectKind, Table};
use crate::sql;
use crate::value::Value;

pub mod render;

/// One row that differs. Rows are laid out as [`crate::schema::Table::data_columns`] of the working copy's
/// table: the hidden rowid first when the table has one, then the stored columns.
#[derive(Debug, Clone, PartialEq)]
pub enum RowChange {
    Insert(Vec<Value>),
    Delete(Vec<Value>),
    /// Full rows on both sides: push checks the whole base row, while output names only the
    /// columns that changed ([`RowChange::changed_columns`]).
    Update {
        old: Vec<Value>,
        new: Vec<Value>,
    },
}

impl RowChange {
    /// The row whose key identifies this change.
    pub fn row(&self) -> &[Value] {
        match self {
            RowChange::Insert(r) | RowChange::Delete(r) => r,
            RowChange::Update { new, .. } => new,
        }
    }

    /// The row as it was in the base: `None` for an insert.
    pub fn old(&self) -> Option<&[Value]> {
        match self {
            RowChange::Delete(r) | RowChange::Update { old: r, .. } => Some(r),
            RowChange::Insert(_) => None,
        }
    }

    /// The row as it is after the change: `None` for a delete.
    pub fn new_row(&self) -> Option<&[Value]> {
        match self {
            RowChange::Insert(r) | RowChange::Update { new: r, .. } => Some(r),
            RowChange::Delete(_) => None,
        }
    }

    /// About how many bytes of memory the change takes.
    pub(crate) fn footprint(&self) -> usize {
        let row = |r: &[Value]| {
            r.iter()
                .map(|v| {
                    std::mem::size_of::<Value>()
                        + match v {
                            Value::Text(b) | Value::Blob(b) => b.len(),
                            _ => 0,
                        }
                })
                .sum::<usize>()
        };
        std::mem::size_of::<RowChange>()
            + match self {
                RowChange::Insert(r) | RowChange::Delete(r) => row(r),
                RowChange::Update { old, new } => row(old) + row(new),
            }
    }

    /// Positions of the values an update changes (none for an insert or a delete), without
    /// allocating: printing asks once per row.
    pub fn changed_columns(&self) -> impl Iterator<Item = usize> + '_ {
        let (old, new): (&[Value], &[Value]) = match self {
            RowChange::Update { old, new } => (old, new),
            _ => (&[], &[]),
        };
        (0..new.len()).filter(move |&i| old[i] != new[i])
    }
}

const INSERT: u8 = 0;
const DELETE: u8 = 1;
const UPDATE: u8 = 2;

/// Writes `ch` in the file encoding: a kind byte, then its rows; a row as a value count and its
/// values; a value as a class byte and its bytes (integers and the bits of reals as 8 bytes
/// little-endian, text and blobs as an 8-byte length and the bytes). Exact for every value.
pub(crate) fn write_change(w: &mut impl Write, ch: &RowChange) -> std::io::Result<()> {
    match ch {
        RowChange::Insert(row) => {
            w.write_all(&[INSERT])?;
            write_row(w, row)
        }
        RowChange::Delete(row) => {
            w.write_all(&[DELETE])?;
            write_row(w, row)
        }
        RowChange::Update { old, new } => {
            w.write_all(&[UPDATE])?;
            write_row(w, old)?;
            write_row(w, new)
        }
    }
}

fn write_row(w: &mut impl Write, row: &[Value]) -> std::io::Result<()> {
    w.write_all(&(row.len() as u64).to_le_bytes())?;
    for v in row {
        match v {
            Value::Null => w.write_all(&[0])?,
            Value::Integer(i) => {
                w.write_all(&[1])?;
                w.write_all(&i.to_le_bytes())?;
            }
            Value::Real(f) => {
                w.write_all(&[2])?;
                w.write_all(&f.to_bits().to_le_bytes())?;
            }
            Value::Text(b) | Value::Blob(b) => {
                w.write_all(&[if matches!(v, Value::Text(_)) { 3 } else { 4 }])?;
                w.write_all(&(b.len() as u64).to_le_bytes())?;
                w.write_all(b)?;
            }
        }
    }
    Ok(())
}

/// Reads the next change of the file into `ch`, reusing its memory; false at the end.
pub(crate) fn read_change(r: &mut impl Read, ch: &mut RowChange) -> std::io::Result<bool> {
    let mut kind = [0u8];
    if r.read(&mut kind)? == 0 {
        return Ok(false);
    }
    let (mut a, mut b) = match std::mem::replace(ch, RowChange::Insert(Vec::new())) {
        RowChange::Insert(a) | RowChange::Delete(a) => (a, Vec::new()),
        RowChange::Update { old, new } => (old, new),
    };
    read_row(r, &mut a)?;
    *ch = match kind[0] {
        INSERT => RowChange::Insert(a),
        DELETE => RowChange::Delete(a),
        UPDATE => {
            read_row(r, &mut b)?;
            RowChange::Update { old: a, new: b }
        }
        _ => return Err(damaged()),
    };
    Ok(true)
}

/// Reads a row into `row`, reusing the memory of the text and blob values it held.
fn read_row(r: &mut impl Read, row: &mut Vec<Value>) -> std::io::Result<()> {
    let n = read_len(r)?;
    if n > row.len() {
        row.resize(n.min(row.len() + (1 << 16)), Value::Null);
    }
    row.truncate(n);
    for i in 0..n {
        let mut class = [0u8];
        r.read_exact(&mut class)?;
        let v = match class[0] {
            0 => Value::Null,
            1 => Value::Integer(i64::from_le_bytes(read8(r)?)),
            2 => Value::Real(f64::from_bits(u64::from_le_bytes(read8(r)?))),
            c @ (3 | 4) => {
                let len = read_len(r)?;
                // No SQLite value is longer than 2^31 bytes.
                if len > 1 << 31 {
                    return Err(damaged());
                }
                let mut b = match row.get_mut(i).map(|v| std::mem::replace(v, Value::Null)) {
                    Some(Value::Text(b) | Value::Blob(b)) => b,
                    _ => Vec::new(),
                };
                b.clear();
                b.resize(len, 0);
                r.read_exact(&mut b)?;
                if c == 3 {
                    Value::Text(b)
                } else {
                    Value::Blob(b)
                }
            }
            _ => return Err(damaged()),
        };
        match row.get_mut(i) {
            Some(slot) => *slot = v,
            None => row.push(v),
        }
    }
    Ok(())
}

fn read8(r: &mut impl Read) -> std::io::Result<[u8; 8]> {
    let mut b = [0u8; 8];
    r.read_exact(&mut b)?;
    Ok(b)
}

fn read_len(r: &mut impl Read) -> std::io::Result<usize> {
    usize::try_from(u64::from_le_bytes(read8(r)?)).map_err(|_| damaged())
}

fn damaged() -> std::io::Error {
    std::io::Error::new(
        std::io::ErrorKind::InvalidData,
        "a file of row changes (a diff's change buffer, or the record of a push) is damaged",
    )
}

/// One step of the order that applies a table's changes safely ([`TableDiff::phases`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Deletes, and the old rows of updates that move a unique value.
    Deletes,
    /// Updates that move no unique value, applied in place.
    Updates,
    /// Inserts, and the new rows of updates that move a unique value.
    Inserts,
}

impl Phase {
    pub const ALL: [Phase; 3] = [Phase::Deletes, Phase::Updates, Phase::Inserts];
}

/// Which of a table's changes a read yields: all of them, or one phase's. A read for one
/// phase decodes only rows that phase can hold, so printing a table with too many changes to
/// keep reads it once per phase at little more than the cost of one read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pick {
    All,
    Only(Phase),
}

impl Pick {
    /// Whether `ch`, a change of `t`, is one this pick yields.
    ///
    /// ```text
    /// t(id INTEGER PRIMARY KEY, pos INT UNIQUE, v)
    /// Update {old: [1, 5, 'a'], new: [1, 5, 'b']}  -> Only(Updates)
    /// Update {old: [1, 5, 'a'], new: [1, 6, 'a']}  -> Only(Deletes) and Only(Inserts)
    /// ```
    pub fn takes(self, t: &TableDiff, ch: &RowChange) -> bool {
        match (self, ch) {
            (Pick::All, _)
            | (Pick::Only(Phase::Deletes), RowChange::Delete(_))
            | (Pick::Only(Phase::Inserts), RowChange::Insert(_)) => true,
            (Pick::Only(Phase::Deletes | Phase::Inserts), RowChange::Update { old, new }) => {
                t.moves_unique(old, new)
            }
            (Pick::Only(Phase::Updates), RowChange::Update { old, new }) => {
                !t.moves_unique(old, new)
            }
            _ => false,
        }
    }

    /// Whether rows only in the base can be taken: a read skips them undecoded otherwise.
    pub(crate) fn deletes(self) -> bool {
        matches!(self, Pick::All | Pick::Only(Phase::Deletes))
    }

    /// Whether rows only in the working copy can be taken.
    pub(crate) fn inserts(self) -> bool {
        matches!(self, Pick::All | Pick::Only(Phase::Inserts))
    }

    /// Whether rows on both sides must be compared: an update may be taken.
    pub(crate) fn updates(self, t: &TableDiff) -> bool {
        matches!(self, Pick::All | Pick::Only(Phase::Updates)) || !t.unique.is_empty()
    }
}

/// A row's identity as text: its key's values as exact SQL literals, each closed by U+0001,
/// so that keys compare as strings. `key_text(&[Integer(1), Text("a")])` is `"1\u{1}'a'\u{1}"`.
pub fn key_text<'a>(key: impl IntoIterator<Item = &'a Value>) -> String {
    let mut s = String::new();
    for v in key {
        sql::push_literal(&mut s, v);
        s.push('\u{1}');
    }
    s
}

/// The row changes of one table.
#[derive(Debug, Clone)]
pub struct TableDiff {
    /// The table as it is in the working copy.
    pub table: Table,
    /// Unquoted names of the values in a row.
    pub columns: Vec<String>,
    /// Positions of the key values within a row.
    pub key: Vec<usize>,
    /// Per UNIQUE constraint or unique index of the table, the positions within a row of the
    /// values it covers (all of them for an index on expressions).
    pub unique: Vec<Vec<usize>>,
    pub changes: Vec<RowChange>,
}

impl TableDiff {
    pub fn counts(&self) -> (usize, usize, usize) {
        let mut c = (0, 0, 0);
        for ch in &self.changes {
            match ch {
                RowChange::Insert(_) => c.0 += 1,
                RowChange::Update { .. } => c.1 += 1,
                RowChange::Delete(_) => c.2 += 1,
            }
        }
        c
    }

    /// The key of `row` as text, to match rows of two sides exactly (each value as its SQL
    /// literal, so class and bytes count).
    pub fn key_text(&self, row: &[Value]) -> String {
        key_text(self.key_of(row))
    }

    /// The key columns' names, in key order.
    pub fn key_names(&self) -> Vec<&str> {
        self.key.iter().map(|&k| self.columns[k].as_str()).collect()
    }

    pub fn key_of<'a>(&self, row: &'a [Value]) -> Vec<&'a Value> {
        self.key.iter().map(|&k| &row[k]).collect()
    }

    /// Whether an update changes a value some UNIQUE constraint covers. Such an update is
    /// applied as a delete and an insert, after every plain update, so that values swapped or
    /// rotated between rows never meet halfway: SQLite checks UNIQUE row by row.
    pub fn moves_unique(&self, old: &[Value], new: &[Value]) -> bool {
        self.unique
            .iter()
            .any(|cols| cols.iter().any(|&c| old.get(c) != new.get(c)))
    }

    /// Where each of `changes` goes in the order that applies a table's changes safely:
    /// deletes (with updates that move unique values), plain updates, then inserts (with those
    /// updates' new rows).
    pub fn phases<'a>(&self, changes: impl IntoIterator<Item = &'a RowChange>) -> Phases<'a> {
        let (mut deletes, mut updates, mut inserts) = (Vec::new(), Vec::new(), Vec::new());
        for ch in changes {
            if Pick::Only(Phase::Deletes).takes(self, ch) {
                deletes.extend(ch.old());
            }
            if Pick::Only(Phase::Updates).takes(self, ch) {
                updates.push(ch);
            }
            if Pick::Only(Phase::Inserts).takes(self, ch) {
                inserts.push(ch.row());
            }
        }
        (deletes, updates, inserts)
    }
}

/// Rows to delete, updates to apply in place, rows to insert: [`TableDiff::phases`].
pub type Phases<'a> = (Vec<&'a [Value]>, Vec<&'a RowChange>, Vec<&'a [Value]>);

/// A change to the schema.
#[derive(Debug, Clone, PartialEq)]
pub enum SchemaChange {
    TableAdded {
        name: String,
        sql: String,
    },
    TableDropped {
        name: String,
        sql: String,
    },
    /// Columns appended with `ALTER TABLE … ADD COLUMN`, each as its column definition;
    /// `old_sql` is the table's definition before, which push expects on the remote.
    ColumnsAdded {
        table: String,
        columns: Vec<String>,
        old_sql: String,
    },
    /// Any other change to a table's definition, or a renamed table (`old_name`): the table
    /// is rebuilt the way SQLite's 12-step procedure does it. With `columns`, the rows are
    /// carried: for each data column of the new table ([`Table::data_names`]), the old
    /// table's column it is copied from (`None`: it takes its default), and the row changes
    /// are diffed against the old rows so carried. Without (the row key changed), the table
    /// is dropped and re-created, and all its rows come again as inserts.
    TableRebuilt {
        name: String,
        old_name: String,
        old_sql: String,
        new_sql: String,
        columns: Option<Vec<(String, Option<String>)>>,
        /// What kind of migration it is, for people and scripts (`table_renamed`, `column_renamed`,
        /// `column_dropped`, `rebuilt`, `recreated`: the diff's `rebuild_kind`).
        kind: &'static str,
        /// The old table's columns no new column takes its values from.
        dropped: Vec<String>,
    },
    ObjectAdded {
        kind: ObjectKind,
        name: String,
        sql: String,
    },
    ObjectDropped {
        kind: ObjectKind,
        name: String,
        sql: String,
    },
    ObjectChanged {
        kind: ObjectKind,
        name: String,
        old_sql: String,
        new_sql: String,
    },
}

/// When a schema change's statements run relative to the rows. diff --sql, push and pull all
/// follow this one order ([`ordered_ddl`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum DdlPhase {
    /// Indexes and views dropped (changed ones too, in their old form): first, since a
    /// dropped table takes its indexes along and a view may name a table about to change.
    DropObjects,
    /// Tables created, dropped, rebuilt or given new columns.
    Tables,
    /// Indexes and views created (changed ones in their new form): after the rows where a
    /// writer has rows, so an index is built once over the final rows and a view may name a
    /// new table or column.
    CreateObjects,
}

impl SchemaChange {
    /// The objects this change names: the table or object, and a renamed table's old name.
    pub fn names(&self) -> Vec<&str> {
        match self {
            SchemaChange::TableAdded { name, .. }
            | SchemaChange::TableDropped { name, .. }
            | SchemaChange::ObjectAdded { name, .. }
            | SchemaChange::ObjectDropped { name, .. }
            | SchemaChange::ObjectChanged { name, .. } => vec![name],
            SchemaChange::ColumnsAdded { table, .. } => vec![table],
            SchemaChange::TableRebuilt { name, old_name, .. } => vec![name, old_name],
        }
    }

    /// The statements of this change, each with its phase. Triggers are no part of it: every
    /// writer drops them all first and re-creates the final set last, so none fires on rows.
    ///
    /// ```text
    /// TableRebuilt t            -> (Tables, DROP TABLE "t"), (Tables, CREATE TABLE t(…))
    /// ColumnsAdded t [b INT]    -> (Tables, ALTER TABLE "t" ADD COLUMN b INT)
    /// ObjectChanged index i     -> (DropObjects, DROP INDEX IF EXISTS "i"), (CreateObjects, CREATE INDEX i …)
    /// ObjectAdded trigger x     -> nothing
    /// ```
    pub fn statements(&self) -> Vec<(DdlPhase, String)> {
        use DdlPhase::*;
        match self {
            SchemaChange::TableAdded { sql, .. } => vec![(Tables, sql.clone())],
            SchemaChange::TableDropped { name, .. } => {
                vec![(Tables, format!("DROP TABLE {}", sql::ident(name)))]
            }
            SchemaChange::TableRebuilt {
                name,
                old_name,
                new_sql,
                columns,
                kind,
                dropped,
                ..
            } => rebuild_statements(name, old_name, new_sql, columns.as_deref(), kind, dropped)
                .into_iter()
                .map(|q| (Tables, q))
                .collect(),
            SchemaChange::ColumnsAdded { table, columns, .. } => columns
                .iter()
                .map(|c| {
                    (
                        Tables,
                        format!("ALTER TABLE {} ADD COLUMN {c}", sql::ident(table)),
                    )
                })
                .collect(),
            SchemaChange::ObjectAdded { kind, .. }
            | SchemaChange::ObjectDropped { kind, .. }
            | SchemaChange::ObjectChanged { kind, .. }
                if *kind == ObjectKind::Trigger =>
            {
                vec![]
            }
            SchemaChange::ObjectAdded { sql, .. } => vec![(CreateObjects, sql.clone())],
            SchemaChange::ObjectDropped { kind, name, .. } => {
                vec![(DropObjects, kind.drop_sql(name))]
            }
            SchemaChange::ObjectChanged {
                kind,
                name,
                new_sql,
                ..
            } => vec![
                (DropObjects, kind.drop_sql(name)),
                (CreateObjects, new_sql.clone()),
            ],
        }
    }
}

/// The statements that turn table `old` into `name` (`new_sql`), so that the stored
/// definition comes out exactly as `new_sql`: SQLite's own ALTER for a renamed table, renamed
/// or dropped columns (it edits the CREATE text the way it did in the working copy), and
/// otherwise SQLite's 12-step procedure: the new table under a temporary name, the rows copied
/// by `columns`, the old table dropped, the new one renamed (which leaves its definition as
/// `CREATE TABLE "name"…`, the form the app's own 12-step left: see [`twelve_step_form`]);
/// a definition of another form is rebuilt through a temporary copy of the rows instead
/// ([`exact_rebuild_statements`]).
/// The caller turns foreign keys off beforehand (DROP TABLE would delete child rows).
///
/// ```text
/// column_dropped  ALTER TABLE "t" DROP COLUMN "c"
/// column_renamed  ALTER TABLE "t" RENAME COLUMN "a" TO b
/// table_renamed   ALTER TABLE "t" RENAME TO "u"
/// rebuilt         CREATE TABLE "t__tursync_new"(…); INSERT INTO "t__tursync_new"("id", "b")
///                 SELECT "id", "a" FROM "t"; DROP TABLE "t"; ALTER TABLE "t__tursync_new" RENAME TO "t"
/// recreated       DROP TABLE "t"; CREATE TABLE t(…)
/// ```
fn rebuild_statements(
    name: &str,
    old: &str,
    new_sql: &str,
    columns: Option<&[(String, Option<String>)]>,
    kind: &str,
    dropped: &[String],
) -> Vec<String> {
    let Some(columns) = columns else {
        return vec![
            format!("DROP TABLE {}", sql::ident(old)),
            new_sql.to_owned(),
        ];
    };
    let table = sql::ident(old);
    match kind {
        "table_renamed" => {
            return vec![format!(
                "ALTER TABLE {table} RENAME TO {}",
                sql::ident(name)
            )]
        }
        "column_dropped" => {
            return dropped
                .iter()
                .map(|c| format!("ALTER TABLE {table} DROP COLUMN {}", sql::ident(c)))
                .collect()
        }
        "column_renamed" => {
            return columns
                .iter()
                .filter_map(|(n, o)| o.as_ref().filter(|o| *o != n).map(|o| (n, o)))
                .map(|(n, o)| {
                    // SQLite writes the new name as the statement spells it: bare if the
                    // working copy's definition has it bare.
                    let bare = !new_sql.contains(&sql::ident(n))
                        && n.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
                        && !n.starts_with(|c: char| c.is_ascii_digit());
                    let to = if bare { n.clone() } else { sql::ident(n) };
                    format!(
                        "ALTER TABLE {table} RENAME COLUMN {} TO {to}",
                        sql::ident(o)
                    )
                })
                .collect();
        }
        _ => {}
    }
    let aside = format!("{name}__tursync_new");
    let copied: Vec<(&String, &String)> = columns
        .iter()
        .filter_map(|(n, o)| o.as_ref().map(|o| (n, o)))
        .collect();
    let create = match twelve_step_form(name, new_sql) {
        Some(rest) => format!("CREATE TABLE {}{rest}", sql::ident(&aside)),
        None => return exact_rebuild_statements(name, &table, new_sql, &copied),
    };
    let mut out = vec![create];
    if !copied.is_empty() {
        let list = |f: &dyn Fn(&(&String, &String)) -> String| {
            copied.iter().map(f).collect::<Vec<_>>().join(", ")
        };
        out.push(format!(
            "INSERT INTO {}({}) SELECT {} FROM {table}",
            sql::ident(&aside),
            list(&|(n, _)| sql::ident(n)),
            list(&|(_, o)| sql::ident(o)),
        ));
    }
    out.push(format!("DROP TABLE {table}"));
    out.push(format!(
        "ALTER TABLE {} RENAME TO {}",
        sql::ident(&aside),
        sql::ident(name)
    ));
    out
}

/// A rebuild that ends in exactly `new_sql` whatever its form: the rows set aside in an
/// untyped table of their own (which keeps every value as it is; sqld refuses TEMP tables,
/// and the push's one transaction never shows it), the old table dropped,
/// `new_sql` run as it is, the rows copied back (taking the new columns' affinity). Used
/// when `new_sql` does not have the form a rename would leave ([`twelve_step_form`]).
///
/// ```text
/// CREATE TABLE "t__tursync_old"("id", "b"); INSERT INTO "t__tursync_old" SELECT "id", "a" FROM "t";
/// DROP TABLE "t"; CREATE TABLE t(…); INSERT INTO "t"("id", "b") SELECT "id", "b" FROM "t__tursync_old";
/// DROP TABLE "t__tursync_old"
/// ```
pub(crate) fn exact_rebuild_statements(
    name: &str,
    old_table: &str,
    new_sql: &str,
    copied: &[(&String, &String)],
) -> Vec<String> {
    let kept = sql::ident(&format!("{name}__tursync_old"));
    let list = |f: &dyn Fn(&(&String, &String)) -> String| {
        copied.iter().map(f).collect::<Vec<_>>().join(", ")
    };
    if copied.is_empty() {
        return vec![format!("DROP TABLE {old_table}"), new_sql.to_owned()];
    }
    let names = list(&|(n, _)| sql::ident(n));
    vec![
        format!("CREATE TABLE {kept}({names})"),
        format!(
            "INSERT INTO {kept} SELECT {} FROM {old_table}",
            list(&|(_, o)| sql::ident(o))
        ),
        format!("DROP TABLE {old_table}"),
        new_sql.to_owned(),
        format!(
            "INSERT INTO {}({names}) SELECT {names} FROM {kept}",
            sql::ident(name)
        ),
        format!("DROP TABLE {kept}"),
    ]
}

/// The rest of `new_sql` after `CREATE TABLE "name"`, when it has the form that SQLite's
/// `ALTER TABLE … RENAME TO` gives a definition (the last step of the 12-step procedure):
/// then a rebuild through a temporary name ends in exactly `new_sql`.
pub(crate) fn twelve_step_form<'a>(name: &str, new_sql: &'a str) -> Option<&'a str> {
    new_sql.strip_prefix(&format!("CREATE TABLE {}", sql::ident(name)))
}

/// `old_sql` with its references to tables renamed (new name -> old name) rewritten as
/// `ALTER TABLE … RENAME TO` rewrites them in every other table (`REFERENCES "new"`).
pub(crate) fn with_renamed_references(old_sql: &str, renamed: &BTreeMap<String, String>) -> String {
    let mut out = old_sql.to_owned();
    for (new, old) in renamed {
        for spelled in [old.clone(), sql::ident(old)] {
            for sep in [" ", ""] {
                let from = format!("REFERENCES {spelled}{sep}");
                let to = format!("REFERENCES {}{sep}", sql::ident(new));
                if sep.is_empty() && !out.contains(&format!("{from}(")) {
                    continue;
                }
                out = out.replace(&format!("{from}("), &format!("{to}("));
                out = out.replace(&format!("{from} "), &format!("{to} "));
            }
        }
    }
    out
}

/// The statements of `changes` in the one DDL order: by [`DdlPhase`], and within a phase in
/// the changes' own order.
pub fn ordered_ddl<'a>(
    changes: impl IntoIterator<Item = &'a SchemaChange>,
) -> Vec<(DdlPhase, String)> {
    let mut all: Vec<(DdlPhase, String)> = changes
        .into_iter()
        .flat_map(SchemaChange::statements)
        .collect();
    all.sort_by_key(|(phase, _)| *phase);
    all
}

/// An AUTOINCREMENT counter that moved.
#[derive(Debug, Clone, PartialEq)]
pub struct SequenceChange {
    pub table: String,
    pub old: Option<i64>,
    pub new: Option<i64>,
}

/// Everything that differs between a base and a working copy.
#[derive(Debug, Clone, Default)]
pub struct Changeset {
    pub schema: Vec<SchemaChange>,
    pub tables: Vec<TableDiff>,
    pub sequences: Vec<SequenceChange>,
    /// Triggers of both sides, to drop before applying rows and re-create after, so no
    /// trigger fires twice (the changeset already holds what the working copy's triggers did).
    pub base_triggers: Vec<(String, String)>,
    pub new_triggers: Vec<(String, String)>,
    pub user_version: Option<i64>,
}

impl Changeset {
    pub fn is_empty(&self) -> bool {
        self.schema.is_empty()
            && self.sequences.is_empty()
            && self.user_version.is_none()
            && self.tables.iter().all(|t| t.changes.is_empty())
    }

    /// The tables renamed here, new name to old: what [`with_renamed_references`] rewrites.
    pub fn renamed_tables(&self) -> std::collections::BTreeMap<String, String> {
        self.schema
            .iter()
            .filter_map(|c| match c {
                SchemaChange::TableRebuilt { name, old_name, .. } if name != old_name => {
                    Some((name.clone(), old_name.clone()))
                }
                _ => None,
            })
            .collect()
    }

    /// The updates and deletes of rows in tables a 12-step rebuild of this changeset carries
    /// (kind `rebuilt`), as statements on the old table, to run before the rebuild's DDL; the
    /// row changes then apply again after it, finding them there (updates and deletes by key are
    /// idempotent). A rebuild may add a constraint only these row changes let the old rows meet
    /// (duplicates fixed, then UNIQUE added): run on the old rows alone, it would fail. `keep`
    /// says which changes to take (the table in its new layout, the old table's name, the
    /// change).
    ///
    /// ```text
    /// base: (1,'c1') (2,'c1')   change: UPDATE code='c2' WHERE id=2, then code TEXT UNIQUE
    ///   -> UPDATE "memo" SET "code" = ? WHERE "id" IS ?   ['c2', 2]   (before the rebuild)
    /// ```
    pub fn fixes_before_rebuilds(
        &self,
        keep: impl Fn(&TableDiff, &str, &RowChange) -> bool,
    ) -> Vec<(String, Vec<Value>)> {
        let mut out = Vec::new();
        for ch in &self.schema {
            let SchemaChange::TableRebuilt {
                name,
                old_name,
                columns: Some(map),
                kind,
                ..
            } = ch
            else {
                continue;
            };
            if *kind != "rebuilt" {
                continue;
            }
            let Some(t) = self.tables.iter().find(|t| &t.table.name == name) else {
                continue;
            };
            // Each column of the new layout with the old column it comes from.
            let from: Vec<Option<&String>> = t
                .columns
                .iter()
                .map(|c| {
                    map.iter()
                        .find(|(n, _)| n == c)
                        .and_then(|(_, o)| o.as_ref())
                })
                .collect();
            let Some(key): Option<Vec<&String>> = t.key.iter().map(|&k| from[k]).collect() else {
                continue;
            };
            let cond = key
                .iter()
                .map(|k| format!("{} IS ?", sql::ident(k)))
                .collect::<Vec<_>>()
                .join(" AND ");
            let table = sql::ident(old_name);
            for c in &t.changes {
                if !keep(t, old_name, c) {
                    continue;
                }
                let key_args: Vec<Value> = t.key_of(c.row()).into_iter().cloned().collect();
                match c {
                    RowChange::Delete(_) => {
                        out.push((format!("DELETE FROM {table} WHERE {cond}"), key_args));
                    }
                    RowChange::Update { old, new } => {
                        let (mut set, mut args) = (Vec::new(), Vec::new());
                        for (i, o) in from.iter().enumerate() {
                            if let Some(o) = o {
                                if old[i] != new[i] {
                                    set.push(format!("{} = ?", sql::ident(o)));
                                    args.push(new[i].clone());
                                }
                            }
                        }
                        if set.is_empty() {
                            continue;
                        }
                        args.extend(key_args);
                        out.push((
                            format!("UPDATE {table} SET {} WHERE {cond}", set.join(", ")),
                            args,
                        ));
                    }
                    RowChange::Insert(_) => {}
                }
            }
        }
        out
    }

    /// The schema changes a person would call changes, for reports: all but the indexes
    /// re-made unchanged only because their table was rebuilt (an `ObjectChanged` whose old
    /// and new definitions are the same), which the statements need and nobody made.
    ///
    /// ```text
    /// rebuilt table notes, index notes_title unchanged  ->  [~ table notes: rebuilt]
    /// ```
    pub fn listed_schema(&self) -> impl Iterator<Item = &SchemaChange> {
        self.schema.iter().filter(|c| {
            !matches!(c, SchemaChange::ObjectChanged { old_sql, new_sql, .. } if old_sql == new_sql)
        })
    }

    /// Row changes plus schema changes: what "N changes to push" counts.
    pub fn change_count(&self) -> usize {
        self.change_count_with(self.tables.iter().map(|t| t.changes.len()).sum())
    }

    /// [`Changeset::change_count`] with `rows` row changes, counted elsewhere (a diff that
    /// counts its rows as it reads them).
    pub(crate) fn change_count_with(&self, rows: usize) -> usize {
        self.listed_schema().count() + rows + usize::from(self.user_version.is_some())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The one DDL order: object drops, then tables, then object creates, each phase in the
    /// changes' own order; triggers are left to the writers.
    #[test]
    fn ddl_comes_in_phase_order() {
        let index = |sql: &str| SchemaChange::ObjectChanged {
            kind: ObjectKind::Index,
            name: "i".into(),
            old_sql: "CREATE INDEX i ON t(a)".into(),
            new_sql: sql.into(),
        };
        let changes = [
            index("CREATE INDEX i ON t(b)"),
            SchemaChange::ColumnsAdded {
                table: "t".into(),
                columns: vec!["b INT".into()],
                old_sql: String::new(),
            },
            SchemaChange::ObjectAdded {
                kind: ObjectKind::Trigger,
                name: "x".into(),
                sql: "CREATE TRIGGER x …".into(),
            },
            SchemaChange::TableDropped {
                name: "old".into(),
                sql: String::new(),
            },
        ];
        let got: Vec<String> = ordered_ddl(&changes).into_iter().map(|(_, q)| q).collect();
        assert_eq!(
            got,
            [
                r#"DROP INDEX IF EXISTS "i""#,
                r#"ALTER TABLE "t" ADD COLUMN b INT"#,
                r#"DROP TABLE "old""#,
                "CREATE INDEX i ON t(b)",
            ]
        );
    }
}
