//! The changes between two local databases (the base snapshot and the working copy), as a
//! [`Changeset`] that push and pull apply and that `tursync diff` prints.
//!
//! Rows are matched by identity — the rowid, or the primary key of a WITHOUT ROWID table —
//! with a merge join of two scans in key order, so each side is read once, sequentially.
//! Values are compared by storage class and exact bytes ([`crate::Value`]'s equality), and the
//! loop compares borrowed values, allocating only for rows that changed.

use std::cmp::Ordering;
use std::collections::BTreeMap;

use rusqlite::types::ValueRef;
use rusqlite::Connection;

use crate::pages::{self, DbFile, Layout, PageError, Scan};
use crate::schema::{self, Column, ObjectKind, RowKey, Schema, Table};
use crate::sql;
use crate::touched::Rows;
use crate::value::Value;
use crate::{Error, Result};

/// What two sides disagree on, in a conflict report.
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
}

impl ConflictKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ConflictKind::Cell => "cell",
            ConflictKind::Row => "row",
            ConflictKind::Unique => "unique",
            ConflictKind::ForeignKey => "foreign_key",
        }
    }
}

/// One row that differs. Rows are laid out as [`Table::data_columns`] of the working copy's
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

    pub fn changed_columns(&self) -> Vec<usize> {
        match self {
            RowChange::Update { old, new } => {
                (0..new.len()).filter(|&i| old[i] != new[i]).collect()
            }
            _ => vec![],
        }
    }
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
        let mut s = String::new();
        for &k in &self.key {
            sql::push_literal(&mut s, &row[k]);
            s.push('\u{1}');
        }
        s
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
            match ch {
                RowChange::Delete(r) => deletes.push(&r[..]),
                RowChange::Insert(r) => inserts.push(&r[..]),
                RowChange::Update { old, new } if self.moves_unique(old, new) => {
                    deletes.push(&old[..]);
                    inserts.push(&new[..]);
                }
                RowChange::Update { .. } => updates.push(ch),
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
    /// Any other change to a table's definition: the table is dropped and re-created, and all
    /// its rows come again as inserts.
    TableRebuilt {
        name: String,
        old_sql: String,
        new_sql: String,
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

    /// Row changes plus schema changes: what "N changes to push" counts.
    pub fn change_count(&self) -> usize {
        self.schema.len()
            + self.tables.iter().map(|t| t.changes.len()).sum::<usize>()
            + usize::from(self.user_version.is_some())
    }
}

/// Which tables to diff.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    pub table: Option<String>,
}

impl Filter {
    fn wants(&self, name: &str) -> bool {
        self.table.as_deref().is_none_or(|t| t == name)
    }
}

/// Diffs `base` against `work`. Call it inside a read transaction on `work` so the diff is
/// one consistent snapshot even while the app writes.
pub fn diff(base: &Connection, work: &Connection, filter: &Filter) -> Result<Changeset> {
    diff_some(base, work, filter, None)
}

/// Like [`diff`], but reads only the rows `touched` names ([`crate::touched`]): a table it
/// leaves out has no changes, the rows it lists are read by rowid from both sides and go
/// through the same key-ordered merge. Schema, counters and `user_version` are compared whole.
pub fn diff_touched(
    base: &Connection,
    work: &Connection,
    touched: &BTreeMap<String, Rows>,
) -> Result<Changeset> {
    diff_some(base, work, &Filter::default(), Some(touched))
}

fn diff_some(
    base: &Connection,
    work: &Connection,
    filter: &Filter,
    only: Option<&BTreeMap<String, Rows>>,
) -> Result<Changeset> {
    let old = schema::load(base)?;
    let new = schema::load(work)?;
    refuse_unsupported(&new)?;
    let mut cs = Changeset::default();
    let old_tables: BTreeMap<&str, &Table> = old
        .tables
        .iter()
        .filter(|t| !t.shadow)
        .map(|t| (t.name.as_str(), t))
        .collect();
    let new_tables: BTreeMap<&str, &Table> = new
        .tables
        .iter()
        .filter(|t| !t.shadow)
        .map(|t| (t.name.as_str(), t))
        .collect();

    for t in old
        .tables
        .iter()
        .filter(|t| !t.shadow && filter.wants(&t.name))
    {
        if !new_tables.contains_key(t.name.as_str()) {
            cs.schema.push(SchemaChange::TableDropped {
                name: t.name.clone(),
                sql: t.sql.clone(),
            });
        }
    }
    for t in new
        .tables
        .iter()
        .filter(|t| !t.shadow && filter.wants(&t.name))
    {
        let t = diffable(t);
        let diff = match old_tables.get(t.name.as_str()).map(|o| diffable(o)) {
            None => {
                cs.schema.push(SchemaChange::TableAdded {
                    name: t.name.clone(),
                    sql: t.sql.clone(),
                });
                all_rows(work, &t)?
            }
            Some(o) if o.sql == t.sql => match only.map(|m| m.get(t.name.as_str())) {
                None | Some(Some(Rows::All)) => merge(base, &o, work, &t, &[], None)?,
                Some(None) => table_diff(&t)?,
                Some(Some(Rows::Ids(ids))) => merge(base, &o, work, &t, &[], Some(ids))?,
            },
            Some(o) => match added_columns(&o, &t) {
                Some((defs, added)) => {
                    cs.schema.push(SchemaChange::ColumnsAdded {
                        table: t.name.clone(),
                        columns: defs,
                        old_sql: o.sql.clone(),
                    });
                    merge(base, &o, work, &t, &added, None)?
                }
                None => {
                    cs.schema.push(SchemaChange::TableRebuilt {
                        name: t.name.clone(),
                        old_sql: o.sql.clone(),
                        new_sql: t.sql.clone(),
                    });
                    all_rows(work, &t)?
                }
            },
        };
        let mut diff = diff;
        diff.unique = unique_positions(work, &diff)?;
        cs.tables.push(diff);
    }

    diff_objects(&old, &new, filter, &mut cs);
    // Dropping a table drops its indexes: a rebuilt table needs even its unchanged ones again.
    let rebuilt: Vec<String> = cs
        .schema
        .iter()
        .filter_map(|c| match c {
            SchemaChange::TableRebuilt { name, .. } => Some(name.clone()),
            _ => None,
        })
        .collect();
    for o in new
        .objects
        .iter()
        .filter(|o| o.kind == ObjectKind::Index && rebuilt.contains(&o.table))
    {
        let listed = cs.schema.iter().any(|c| match c {
            SchemaChange::ObjectAdded { kind, name, .. }
            | SchemaChange::ObjectChanged { kind, name, .. } => *kind == o.kind && name == &o.name,
            _ => false,
        });
        if !listed {
            cs.schema.push(SchemaChange::ObjectChanged {
                kind: o.kind,
                name: o.name.clone(),
                old_sql: o.sql.clone(),
                new_sql: o.sql.clone(),
            });
        }
    }
    if filter.table.is_none() {
        cs.sequences = diff_sequences(base, &old, work, &new)?;
        if old.user_version != new.user_version {
            cs.user_version = Some(new.user_version);
        }
    }
    let triggers = |s: &Schema| {
        s.objects
            .iter()
            .filter(|o| o.kind == ObjectKind::Trigger)
            .map(|o| (o.name.clone(), o.sql.clone()))
            .collect::<Vec<_>>()
    };
    cs.base_triggers = triggers(&old);
    cs.new_triggers = triggers(&new);
    Ok(cs)
}

/// The UNIQUE constraints and unique indexes of `d`'s table in `conn`, as positions in its
/// rows. An index on expressions covers every position: any change may move its values.
///
/// ```text
/// CREATE TABLE it(id INTEGER PRIMARY KEY, pos INT UNIQUE, v)   -> [[1]]
/// CREATE UNIQUE INDEX it_v ON it(lower(v))                     -> [[1], [0, 1, 2]]
/// ```
fn unique_positions(conn: &Connection, d: &TableDiff) -> Result<Vec<Vec<usize>>> {
    if d.table.key == RowKey::Virtual {
        return Ok(Vec::new());
    }
    let mut st = conn.prepare(
        "SELECT l.name, i.name FROM pragma_index_list(?1) l JOIN pragma_index_info(l.name) i
         WHERE l.\"unique\" ORDER BY l.seq, i.seqno",
    )?;
    let mut rows = st.query([&d.table.name])?;
    let mut out: Vec<(String, Vec<usize>)> = Vec::new();
    while let Some(r) = rows.next()? {
        let index: String = r.get(0)?;
        let column: Option<String> = r.get(1)?;
        let positions: Vec<usize> = match column {
            Some(c) => d.columns.iter().position(|n| *n == c).into_iter().collect(),
            None => (0..d.columns.len()).collect(),
        };
        match out.last_mut() {
            Some((name, cols)) if *name == index => cols.extend(positions),
            _ => out.push((index, positions)),
        }
    }
    Ok(out.into_iter().map(|(_, cols)| cols).collect())
}

/// FTS5 tables whose text lives elsewhere (external content) or nowhere (contentless) cannot
/// be diffed through the table itself, and diffing their shadow tables would corrupt the index.
fn refuse_unsupported(s: &Schema) -> Result<()> {
    for t in s.tables.iter().filter(|t| t.key == RowKey::Virtual) {
        let squashed: String = t
            .sql
            .to_ascii_lowercase()
            .chars()
            .filter(|c| !c.is_whitespace())
            .collect();
        if squashed.contains("usingfts5") && squashed.contains("content=") {
            return Err(Error::Refused(format!(
                "virtual table {:?} is an external-content or contentless FTS5 table; tursync cannot diff it safely. \
                 Use a regular FTS5 table, or keep it out of the synced database",
                t.name
            )));
        }
    }
    Ok(())
}

/// A virtual table is diffed through itself, by rowid, never through its shadow tables.
fn diffable(t: &Table) -> Table {
    let mut t = t.clone();
    if t.key == RowKey::Virtual {
        t.key = RowKey::Rowid {
            ipk: None,
            alias: Some("rowid".into()),
        };
    }
    t
}

fn table_diff(t: &Table) -> Result<TableDiff> {
    Ok(TableDiff {
        table: t.clone(),
        columns: t.data_names()?,
        key: t.key_positions(),
        unique: Vec::new(),
        changes: Vec::new(),
    })
}

/// The scan both sides of a merge use: data columns in key order. Keys of WITHOUT ROWID
/// tables are ordered by BINARY collation whatever the column's, so [`cmp_key`] can follow.
/// With `by_rowid`, only the rows whose rowid is in the JSON array bound to `?1`.
fn scan_sql(t: &Table, extra: &[String], by_rowid: bool) -> Result<String> {
    let mut cols = t.data_columns()?;
    cols.extend(extra.iter().cloned());
    let order: Vec<String> = match t.key {
        RowKey::Primary(_) => t
            .key_exprs()?
            .into_iter()
            .map(|k| format!("{k} COLLATE BINARY"))
            .collect(),
        _ => t.key_exprs()?,
    };
    let only = if by_rowid {
        format!(
            " WHERE {} IN (SELECT value FROM json_each(?1))",
            t.key_exprs()?[0]
        )
    } else {
        String::new()
    };
    Ok(format!(
        "SELECT {} FROM {}{only} ORDER BY {}",
        cols.join(", "),
        sql::ident(&t.name),
        order.join(", ")
    ))
}

fn all_rows(work: &Connection, t: &Table) -> Result<TableDiff> {
    let mut d = table_diff(t)?;
    let mut st = work.prepare(&scan_sql(t, &[], false)?)?;
    let n = st.column_count();
    let mut rows = st.query([])?;
    while let Some(r) = rows.next()? {
        d.changes.push(RowChange::Insert(owned(r, n)?));
    }
    Ok(d)
}

fn owned(r: &rusqlite::Row<'_>, n: usize) -> rusqlite::Result<Vec<Value>> {
    (0..n).map(|i| r.get_ref(i).map(Value::from_ref)).collect()
}

/// The merge join. `added` are SQL expressions giving, on the base side, the values that
/// columns appended by `ADD COLUMN` hold in old rows (their defaults). With `ids`, only the
/// rows of a rowid table with those rowids.
fn merge(
    base: &Connection,
    old: &Table,
    work: &Connection,
    new: &Table,
    added: &[String],
    ids: Option<&[i64]>,
) -> Result<TableDiff> {
    if added.is_empty() && old.sql == new.sql && ids.is_none() {
        if let Some(d) = merge_pages(base, work, new)? {
            return Ok(d);
        }
    }
    let mut d = table_diff(new)?;
    let key = d.key.clone();
    let mut bst = base.prepare(&scan_sql(old, added, ids.is_some())?)?;
    let mut wst = work.prepare(&scan_sql(new, &[], ids.is_some())?)?;
    let n = wst.column_count();
    if bst.column_count() != n {
        return Err(Error::Refused(format!(
            "table {:?}: cannot line up old and new columns",
            new.name
        )));
    }
    let ids = ids
        .map(|ids| serde_json::to_string(ids).map_err(|e| Error::Refused(e.to_string())))
        .transpose()?;
    let mut brows = bst.query(rusqlite::params_from_iter(&ids))?;
    let mut wrows = wst.query(rusqlite::params_from_iter(&ids))?;
    let mut b = brows.next()?;
    let mut w = wrows.next()?;
    loop {
        let ord = match (b, w) {
            (None, None) => break,
            (Some(_), None) => Ordering::Less,
            (None, Some(_)) => Ordering::Greater,
            (Some(br), Some(wr)) => cmp_key(br, wr, &key)?,
        };
        match ord {
            Ordering::Less => {
                if let Some(br) = b {
                    d.changes.push(RowChange::Delete(owned(br, n)?));
                }
                b = brows.next()?;
            }
            Ordering::Greater => {
                if let Some(wr) = w {
                    d.changes.push(RowChange::Insert(owned(wr, n)?));
                }
                w = wrows.next()?;
            }
            Ordering::Equal => {
                if let (Some(br), Some(wr)) = (b, w) {
                    if !same_row(br, wr, n)? {
                        d.changes.push(RowChange::Update {
                            old: owned(br, n)?,
                            new: owned(wr, n)?,
                        });
                    }
                }
                b = brows.next()?;
                w = wrows.next()?;
            }
        }
    }
    Ok(d)
}

/// SQLite's REAL affinity rule for a declared type: integers stored in such a column read
/// back as reals.
fn real_affinity(decl: &str) -> bool {
    let d = decl.to_ascii_uppercase();
    !["INT", "CHAR", "CLOB", "TEXT", "BLOB"]
        .iter()
        .any(|k| d.contains(k))
        && ["REAL", "FLOA", "DOUB"].iter().any(|k| d.contains(k))
}

fn root_page(conn: &Connection, table: &str) -> Result<Option<u32>> {
    use rusqlite::OptionalExtension;
    Ok(conn
        .query_row(
            "SELECT rootpage FROM sqlite_schema WHERE type = 'table' AND name = ?1",
            [table],
            |r| r.get(0),
        )
        .optional()?)
}

/// The merge join over raw B-tree records: identical record bytes are identical rows, so only
/// rows whose bytes differ are decoded and compared as values. Applies to plain rowid tables
/// (no generated columns, not virtual); returns `None` to fall back to the SQL scan whenever
/// anything is out of the ordinary. Pages come through each connection's pager, inside its
/// read transaction ([`crate::pages`]): the snapshot its SQL sees, WAL frames included.
fn merge_pages(base: &Connection, work: &Connection, t: &Table) -> Result<Option<TableDiff>> {
    let RowKey::Rowid { ipk, .. } = t.key else {
        return Ok(None);
    };
    let is_virtual = t
        .sql
        .get(..14)
        .is_some_and(|p| p.eq_ignore_ascii_case("CREATE VIRTUAL"));
    if is_virtual || t.columns.iter().any(|c| c.generated) {
        return Ok(None);
    }
    let (Some(broot), Some(wroot)) = (root_page(base, &t.name)?, root_page(work, &t.name)?) else {
        return Ok(None);
    };
    let layout = Layout {
        hidden_rowid: t.has_hidden_rowid(),
        ipk,
        real: t
            .columns
            .iter()
            .map(|c| real_affinity(&c.decl_type))
            .collect(),
    };
    let d = table_diff(t)?;
    let walk = || {
        let (bdb, wdb) = (DbFile::open(base)?, DbFile::open(work)?);
        merge_records(bdb.scan(broot)?, wdb.scan(wroot)?, d, &layout)
    };
    match walk() {
        Ok(d) => Ok(d),
        Err(e) if e.falls_back() => Ok(None),
        Err(e) => Err(Error::Refused(format!(
            "table {:?}: reading its pages: {e}",
            t.name
        ))),
    }
}

/// The loop of [`merge_pages`], filling `d`: `None` when a record does not decode to the
/// table's layout.
fn merge_records(
    mut bs: Scan<'_>,
    mut ws: Scan<'_>,
    mut d: TableDiff,
    layout: &Layout,
) -> std::result::Result<Option<TableDiff>, PageError> {
    let decode =
        |row: Option<(i64, &[u8])>| row.and_then(|(id, rec)| pages::decode(id, rec, layout));
    let (mut b, mut w) = (bs.next_row()?, ws.next_row()?);
    loop {
        let ord = match (b, w) {
            (None, None) => break,
            (Some(_), None) => Ordering::Less,
            (None, Some(_)) => Ordering::Greater,
            (Some((bid, _)), Some((wid, _))) => bid.cmp(&wid),
        };
        if ord != Ordering::Greater {
            if ord == Ordering::Less {
                let Some(old) = decode(b) else {
                    return Ok(None);
                };
                d.changes.push(RowChange::Delete(old));
            } else if b.map(|r| r.1) != w.map(|r| r.1) {
                let (Some(old), Some(new)) = (decode(b), decode(w)) else {
                    return Ok(None);
                };
                if old != new {
                    d.changes.push(RowChange::Update { old, new });
                }
            }
            b = bs.next_row()?;
        }
        if ord != Ordering::Less {
            if ord == Ordering::Greater {
                let Some(new) = decode(w) else {
                    return Ok(None);
                };
                d.changes.push(RowChange::Insert(new));
            }
            w = ws.next_row()?;
        }
    }
    Ok(Some(d))
}

fn same_row(a: &rusqlite::Row<'_>, b: &rusqlite::Row<'_>, n: usize) -> rusqlite::Result<bool> {
    for i in 0..n {
        if !crate::value::exact_eq(a.get_ref(i)?, b.get_ref(i)?) {
            return Ok(false);
        }
    }
    Ok(true)
}

fn cmp_key(
    a: &rusqlite::Row<'_>,
    b: &rusqlite::Row<'_>,
    key: &[usize],
) -> rusqlite::Result<Ordering> {
    for &k in key {
        let o = cmp_value(a.get_ref(k)?, b.get_ref(k)?);
        if o != Ordering::Equal {
            return Ok(o);
        }
    }
    Ok(Ordering::Equal)
}

/// SQLite's ORDER BY order under BINARY collation: NULL, then numbers (integers and reals
/// compared by value), then text, then blobs, each by bytes.
pub fn cmp_value(a: ValueRef<'_>, b: ValueRef<'_>) -> Ordering {
    fn rank(v: &ValueRef<'_>) -> u8 {
        match v {
            ValueRef::Null => 0,
            ValueRef::Integer(_) | ValueRef::Real(_) => 1,
            ValueRef::Text(_) => 2,
            ValueRef::Blob(_) => 3,
        }
    }
    match (a, b) {
        (ValueRef::Integer(x), ValueRef::Integer(y)) => x.cmp(&y),
        (ValueRef::Real(x), ValueRef::Real(y)) => x.partial_cmp(&y).unwrap_or(Ordering::Equal),
        (ValueRef::Integer(i), ValueRef::Real(r)) => int_real_cmp(i, r),
        (ValueRef::Real(r), ValueRef::Integer(i)) => int_real_cmp(i, r).reverse(),
        (ValueRef::Text(x), ValueRef::Text(y)) | (ValueRef::Blob(x), ValueRef::Blob(y)) => x.cmp(y),
        (x, y) => rank(&x).cmp(&rank(&y)),
    }
}

/// Compares an integer with a real exactly, as SQLite does, even where the integer has no
/// exact f64.
fn int_real_cmp(i: i64, r: f64) -> Ordering {
    if r.is_nan() {
        return Ordering::Greater;
    }
    // ±2^63: beyond them no i64 compares equal.
    if r < -9_223_372_036_854_775_808.0 {
        return Ordering::Greater;
    }
    if r >= 9_223_372_036_854_775_808.0 {
        return Ordering::Less;
    }
    let t = r.trunc() as i64;
    match i.cmp(&t) {
        Ordering::Equal => (0.0f64)
            .partial_cmp(&(r - r.trunc()))
            .unwrap_or(Ordering::Equal),
        o => o,
    }
}

/// Recognizes a table changed only by `ALTER TABLE … ADD COLUMN`: SQLite splices
/// `, <column definition>` into the CREATE text, so the new text is the old one with that
/// piece inserted and the old columns come first, unchanged. Returns the definitions, and the
/// values old rows read in the new columns.
fn added_columns(old: &Table, new: &Table) -> Option<(Vec<String>, Vec<String>)> {
    if old.columns.len() >= new.columns.len()
        || new.columns[..old.columns.len()] != old.columns[..]
        || old.key != new.key
    {
        return None;
    }
    let (o, n) = (old.sql.as_bytes(), new.sql.as_bytes());
    let prefix = o.iter().zip(n).take_while(|(a, b)| a == b).count();
    let suffix = o[prefix..]
        .iter()
        .rev()
        .zip(n[prefix..].iter().rev())
        .take_while(|(a, b)| a == b)
        .count();
    if prefix + suffix != o.len() {
        return None;
    }
    let inserted = new.sql.get(prefix..n.len() - suffix)?;
    let inserted = inserted.strip_prefix(", ")?;
    let defs = split_top_level(inserted);
    let appended: &[Column] = &new.columns[old.columns.len()..];
    if defs.len() != appended.len() {
        return None;
    }
    let values = appended
        .iter()
        .filter(|c| !c.generated)
        .map(|c| c.default.clone().unwrap_or_else(|| "NULL".into()))
        .collect();
    Some((defs, values))
}

/// Splits `a INT, b TEXT DEFAULT 'x,y', c CHECK (c IN (1,2))` at its top-level commas.
fn split_top_level(s: &str) -> Vec<String> {
    let mut parts = Vec::new();
    let (mut depth, mut quote, mut start) = (0i32, None::<char>, 0);
    for (i, c) in s.char_indices() {
        match (quote, c) {
            (Some(q), c) if c == q || (q == '[' && c == ']') => quote = None,
            (Some(_), _) => {}
            (None, '\'' | '"' | '`' | '[') => quote = Some(c),
            (None, '(') => depth += 1,
            (None, ')') => depth -= 1,
            (None, ',') if depth == 0 => {
                parts.push(s[start..i].trim().to_owned());
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(s[start..].trim().to_owned());
    parts
}

fn diff_objects(old: &Schema, new: &Schema, filter: &Filter, cs: &mut Changeset) {
    let wanted = |o: &&schema::Object| filter.wants(&o.table);
    for o in old.objects.iter().filter(wanted) {
        match new
            .objects
            .iter()
            .find(|n| n.kind == o.kind && n.name == o.name)
        {
            None => cs.schema.push(SchemaChange::ObjectDropped {
                kind: o.kind,
                name: o.name.clone(),
                sql: o.sql.clone(),
            }),
            Some(n) if n.sql != o.sql => cs.schema.push(SchemaChange::ObjectChanged {
                kind: o.kind,
                name: o.name.clone(),
                old_sql: o.sql.clone(),
                new_sql: n.sql.clone(),
            }),
            Some(_) => {}
        }
    }
    for n in new.objects.iter().filter(wanted) {
        if !old
            .objects
            .iter()
            .any(|o| o.kind == n.kind && o.name == n.name)
        {
            cs.schema.push(SchemaChange::ObjectAdded {
                kind: n.kind,
                name: n.name.clone(),
                sql: n.sql.clone(),
            });
        }
    }
}

fn sequences(conn: &Connection, s: &Schema) -> Result<BTreeMap<String, i64>> {
    if !s.has_sequence {
        return Ok(BTreeMap::new());
    }
    let mut st = conn.prepare("SELECT name, seq FROM sqlite_sequence")?;
    let rows = st.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

fn diff_sequences(
    base: &Connection,
    old: &Schema,
    work: &Connection,
    new: &Schema,
) -> Result<Vec<SequenceChange>> {
    let (a, b) = (sequences(base, old)?, sequences(work, new)?);
    let mut out = Vec::new();
    for name in a.keys().chain(b.keys().filter(|k| !a.contains_key(*k))) {
        let (o, n) = (a.get(name).copied(), b.get(name).copied());
        // A counter only ever grows; one lower here than in the base is the remote's higher
        // counter that push kept, not a change to send.
        let lowered = matches!((o, n), (Some(o), Some(n)) if n < o);
        if o != n && !lowered {
            out.push(SequenceChange {
                table: name.clone(),
                old: o,
                new: n,
            });
        }
    }
    Ok(out)
}

/// Receives statements one at a time: SQL with `?` placeholders, and their arguments.
pub type Emit<'a> = dyn FnMut(&str, &[Value]) -> Result<()> + 'a;

impl TableDiff {
    /// Emits this table's row statements: deletes, then updates, then inserts, so a unique
    /// value that moved from a deleted row to a new one never collides. Statements of one
    /// shape share their SQL text, so a caller can prepare each shape once.
    fn row_statements(&self, emit: &mut Emit<'_>) -> Result<()> {
        let name = sql::ident(&self.table.name);
        let where_key = self
            .key
            .iter()
            .map(|&k| format!("{} = ?", sql::ident(&self.columns[k])))
            .collect::<Vec<_>>()
            .join(" AND ");
        let delete = format!("DELETE FROM {name} WHERE {where_key}");
        let (deletes, updates, inserts) = self.phases(&self.changes);
        let mut args = Vec::new();
        for old in deletes {
            args.clear();
            args.extend(self.key.iter().map(|&k| old[k].clone()));
            emit(&delete, &args)?;
        }
        for ch in updates {
            if let RowChange::Update { new, .. } = ch {
                let cols = ch.changed_columns();
                // Rows that differ only in what no column shows (none today) update nothing:
                // `SET` with an empty list is not SQL.
                if cols.is_empty() {
                    continue;
                }
                let sets = cols
                    .iter()
                    .map(|&c| format!("{} = ?", sql::ident(&self.columns[c])))
                    .collect::<Vec<_>>()
                    .join(", ");
                args.clear();
                args.extend(cols.iter().chain(&self.key).map(|&c| new[c].clone()));
                emit(
                    &format!("UPDATE OR ABORT {name} SET {sets} WHERE {where_key}"),
                    &args,
                )?;
            }
        }
        let cols: Vec<String> = self.columns.iter().map(|c| sql::ident(c)).collect();
        let marks = vec!["?"; cols.len()].join(",");
        let insert = format!(
            "INSERT OR ABORT INTO {name}({}) VALUES({marks})",
            cols.join(",")
        );
        for new in inserts {
            emit(&insert, new)?;
        }
        Ok(())
    }
}

impl Changeset {
    /// Emits the statements that turn a copy of the base into the working copy, in one
    /// transaction. Every trigger is dropped first and re-created last, so none fires while
    /// rows are applied; foreign keys are off, so order and cascades cannot interfere.
    pub fn statements(&self, emit: &mut Emit<'_>) -> Result<()> {
        if self.is_empty() {
            return Ok(());
        }
        let mut ddl = |q: &str| emit(q, &[]);
        ddl("PRAGMA foreign_keys=OFF")?;
        ddl("BEGIN TRANSACTION")?;
        for (name, _) in &self.base_triggers {
            ddl(&format!("DROP TRIGGER IF EXISTS {}", sql::ident(name)))?;
        }
        for ch in &self.schema {
            match ch {
                SchemaChange::ObjectDropped { kind, name, .. }
                | SchemaChange::ObjectChanged { kind, name, .. }
                    if *kind != ObjectKind::Trigger =>
                {
                    ddl(&kind.drop_sql(name))?;
                }
                _ => {}
            }
        }
        for ch in &self.schema {
            match ch {
                SchemaChange::TableDropped { name, .. } => {
                    ddl(&format!("DROP TABLE {}", sql::ident(name)))?
                }
                SchemaChange::TableRebuilt { name, new_sql, .. } => {
                    ddl(&format!("DROP TABLE {}", sql::ident(name)))?;
                    ddl(new_sql)?;
                }
                SchemaChange::TableAdded { sql: create, .. } => ddl(create)?,
                SchemaChange::ColumnsAdded { table, columns, .. } => {
                    for c in columns {
                        ddl(&format!("ALTER TABLE {} ADD COLUMN {c}", sql::ident(table)))?;
                    }
                }
                _ => {}
            }
        }
        for t in &self.tables {
            t.row_statements(emit)?;
        }
        for q in &self.sequences {
            let name = Value::text(&q.table);
            emit(
                "DELETE FROM sqlite_sequence WHERE name = ?",
                std::slice::from_ref(&name),
            )?;
            if let Some(n) = q.new {
                emit(
                    "INSERT INTO sqlite_sequence(name, seq) VALUES (?, ?)",
                    &[name, Value::Integer(n)],
                )?;
            }
        }
        let mut ddl = |q: &str| emit(q, &[]);
        for ch in &self.schema {
            match ch {
                SchemaChange::ObjectAdded {
                    kind, sql: create, ..
                }
                | SchemaChange::ObjectChanged {
                    kind,
                    new_sql: create,
                    ..
                } if *kind != ObjectKind::Trigger => ddl(create)?,
                _ => {}
            }
        }
        for (_, create) in &self.new_triggers {
            ddl(create)?;
        }
        if let Some(v) = self.user_version {
            ddl(&format!("PRAGMA user_version={v}"))?;
        }
        ddl("COMMIT")
    }

    /// SQL text that, run by the sqlite3 CLI on a copy of the base, yields the working copy.
    pub fn write_sql(&self, out: &mut dyn std::io::Write) -> Result<()> {
        let mut line = String::new();
        self.statements(&mut |q, args| {
            line.clear();
            sql::push_bound(&mut line, q, args);
            sql::check_shell_text(&line)?;
            line.push_str(";\n");
            out.write_all(line.as_bytes())?;
            Ok(())
        })
    }

    /// Applies the changeset to `conn` (a copy of the base) with prepared statements: one
    /// parse per statement shape, however many rows.
    pub fn apply(&self, conn: &Connection) -> Result<()> {
        conn.set_prepared_statement_cache_capacity(256);
        self.statements(&mut |q, args| {
            conn.prepare_cached(q)?
                .execute(rusqlite::params_from_iter(args.iter()))?;
            Ok(())
        })
    }

    /// The changeset for scripts: every value typed as in Hrana (`{"type":"integer","value":"1"}`),
    /// so storage classes survive.
    pub fn to_json(&self) -> serde_json::Value {
        use serde_json::json;
        let obj = |cols: &[String], row: &[Value], which: &mut dyn Iterator<Item = usize>| {
            let mut m = serde_json::Map::new();
            for i in which {
                m.insert(cols[i].clone(), json!(row[i]));
            }
            serde_json::Value::Object(m)
        };
        let tables: Vec<_> = self
            .tables
            .iter()
            .filter(|t| !t.changes.is_empty())
            .map(|t| {
                let (ins, upd, del) = t.counts();
                let changes: Vec<_> = t
                    .changes
                    .iter()
                    .map(|ch| {
                        let key: Vec<&Value> = t.key_of(ch.row());
                        match ch {
                            RowChange::Insert(r) => json!({"op": "insert", "key": key, "row": obj(&t.columns, r, &mut (0..r.len()))}),
                            RowChange::Delete(r) => json!({"op": "delete", "key": key, "old": obj(&t.columns, r, &mut (0..r.len()))}),
                            RowChange::Update { old, new } => {
                                let mut set = serde_json::Map::new();
                                for c in ch.changed_columns() {
                                    set.insert(t.columns[c].clone(), json!({"old": old[c], "new": new[c]}));
                                }
                                json!({"op": "update", "key": key, "set": set})
                            }
                        }
                    })
                    .collect();
                json!({
                    "table": t.table.name,
                    "key": t.key.iter().map(|&k| &t.columns[k]).collect::<Vec<_>>(),
                    "inserted": ins, "updated": upd, "deleted": del,
                    "changes": changes,
                })
            })
            .collect();
        let schema: Vec<_> = self
            .schema
            .iter()
            .map(|c| match c {
                SchemaChange::TableAdded { name, sql } => json!({"change": "table_added", "name": name, "sql": sql}),
                SchemaChange::TableDropped { name, sql } => json!({"change": "table_dropped", "name": name, "sql": sql}),
                SchemaChange::ColumnsAdded { table, columns, .. } => json!({"change": "columns_added", "name": table, "columns": columns}),
                SchemaChange::TableRebuilt { name, old_sql, new_sql } => json!({"change": "table_changed", "name": name, "old_sql": old_sql, "new_sql": new_sql}),
                SchemaChange::ObjectAdded { kind, name, sql } => json!({"change": format!("{}_added", kind.as_str()), "name": name, "sql": sql}),
                SchemaChange::ObjectDropped { kind, name, sql } => json!({"change": format!("{}_dropped", kind.as_str()), "name": name, "sql": sql}),
                SchemaChange::ObjectChanged { kind, name, old_sql, new_sql } => json!({"change": format!("{}_changed", kind.as_str()), "name": name, "old_sql": old_sql, "new_sql": new_sql}),
            })
            .collect();
        json!({
            "schema": schema,
            "tables": tables,
            "sequences": self.sequences.iter().map(|q| json!({"table": q.table, "old": q.old, "new": q.new})).collect::<Vec<_>>(),
            "user_version": self.user_version,
            "changes": self.change_count(),
        })
    }
}

impl SchemaChange {
    /// One line for people: `+ table foo`, `~ index bar`.
    pub fn describe(&self) -> String {
        match self {
            SchemaChange::TableAdded { name, .. } => format!("+ table {name}"),
            SchemaChange::TableDropped { name, .. } => format!("- table {name}"),
            SchemaChange::ColumnsAdded { table, columns, .. } => {
                format!("~ table {table}: added {}", columns.join(", "))
            }
            SchemaChange::TableRebuilt { name, .. } => {
                format!("~ table {name}: definition changed")
            }
            SchemaChange::ObjectAdded { kind, name, .. } => format!("+ {} {name}", kind.as_str()),
            SchemaChange::ObjectDropped { kind, name, .. } => format!("- {} {name}", kind.as_str()),
            SchemaChange::ObjectChanged { kind, name, .. } => format!("~ {} {name}", kind.as_str()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_order_like_sqlite() {
        use ValueRef::*;
        assert_eq!(cmp_value(Integer(1), Real(1.5)), Ordering::Less);
        assert_eq!(cmp_value(Real(2.0), Integer(2)), Ordering::Equal);
        assert_eq!(
            cmp_value(Integer(i64::MAX), Real(9_223_372_036_854_775_808.0)),
            Ordering::Less
        );
        assert_eq!(cmp_value(Null, Integer(i64::MIN)), Ordering::Less);
        assert_eq!(cmp_value(Text(b"a"), Blob(b"")), Ordering::Less);
        assert_eq!(cmp_value(Integer(-1), Real(-0.5)), Ordering::Less);
    }

    #[test]
    fn splits_column_definitions() {
        assert_eq!(
            split_top_level("a INT, b TEXT DEFAULT 'x,y', c CHECK (c IN (1,2))"),
            vec!["a INT", "b TEXT DEFAULT 'x,y'", "c CHECK (c IN (1,2))"]
        );
    }
}
