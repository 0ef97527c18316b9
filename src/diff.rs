//! The diff engine: the changes between two local databases, as a [`Changeset`]. The base is
//! diffed against the working copy (what push sends, what `tursync diff` prints) or against the
//! mirror of the remote ([`diff_remote`], what a pull brings in).
//!
//! Rows are matched by identity — the rowid, or the primary key of a WITHOUT ROWID table —
//! with a merge join of two scans in key order, so each side is read once, sequentially.
//! Values are compared by storage class and exact bytes ([`crate::Value`]'s equality), and the
//! loop compares borrowed values, allocating only for rows that changed.
//!
//! The join hands each change to a consumer as it finds it ([`Diff`]): the [`Changeset`] that
//! push and pull hold in memory is one consumer, and `diff --sql` / `diff --json`, which print
//! as they read, are others, through the one renderer both kinds of row source share
//! ([`crate::changeset::render`]).

use std::cell::{Cell, RefCell};
use std::cmp::Ordering;
use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};

use rusqlite::Connection;

use crate::change_buffer::ChangeBuffer;
use crate::changeset::render::{Counts, Each, RowSource};
use crate::changeset::{
    with_renamed_references, Changeset, Pick, RowChange, SchemaChange, SequenceChange, TableDiff,
};
use crate::leaf_sums::{LeafSums, Walked};
use crate::migration::{
    added_columns, carried_columns, carried_select, leaves_exactly, rebuild_kind, renamed_tables,
};
use crate::pages::{self, DbFile, Layout, Leaf, PageError, Scan};
use crate::schema::{self, ObjectKind, RowKey, Schema, Table};
use crate::sql;
use crate::touched::Rows;
use crate::value::{cmp_value, Value};
use crate::{Context, Error, Result};

/// Receives row changes as a read yields them.
type Consumer<'a> = dyn FnMut(RowChange) -> Result<()> + 'a;

#[derive(Debug, Clone, Default)]
pub struct Filter {
    pub table: Option<String>,
}

impl Filter {
    fn wants(&self, name: &str) -> bool {
        self.table.as_deref().is_none_or(|t| t == name)
    }
}

/// Diffs `base` against `work` into a [`Changeset`] held in memory, for push and pull. Call it
/// inside a read transaction on `work` so the diff is one consistent snapshot even while the
/// app writes.
pub fn diff(base: &Connection, work: &Connection, filter: &Filter) -> Result<Changeset> {
    Diff::new(base, work, filter)?.changeset()
}

/// The remote's changes since the base, from `mirror`, a page copy of the remote, for a base
/// that then takes them and must stay equal to the mirror: unlike [`diff`], a hidden rowid
/// that only locates a row ([`Table::locator`]) counts, so the base follows the remote's
/// rowids exactly (the merge itself never compares it).
///
/// With `touched` ([`crate::touched`]), only the rows it names are read: a table it leaves
/// out has no changes, the rows it lists are read by rowid from both sides and go through the
/// same key-ordered merge. Schema, counters and `user_version` are compared whole.
pub fn diff_remote(
    base: &Connection,
    mirror: &Connection,
    touched: Option<&BTreeMap<String, Rows>>,
) -> Result<Changeset> {
    Diff::against(base, mirror, &Filter::default(), Against::Remote(touched))?.changeset()
}

/// A diff whose schema part is known and whose row changes are read from the two databases
/// when asked for, one table at a time, so `diff --sql` and `diff --json` print as they read:
/// memory is bounded by one table's scan, not by the number of changes.
///
/// ```text
/// let d = Diff::new(&base, &work, &Filter::default())?;  // schemas, counters, triggers
/// d.write_sql(&mut out)?;                                 // rows read and printed as they come
/// let cs = d.changeset()?;                                // or held in memory, for push
/// ```
pub struct Diff<'c> {
    base: &'c Connection,
    work: &'c Connection,
    /// Everything but the row changes: every table's `changes` is empty.
    outline: Changeset,
    /// How each table of `outline` is read.
    reads: Vec<Read>,
    /// Leaf pages passed over as byte-identical on both sides ([`pages::skip_shared_leaf`]), or
    /// as unchanged since `known`.
    leaves_skipped: Cell<u64>,
    /// Whether to keep the working copy's leaves as they are read ([`Diff::summing`]).
    summing: bool,
    /// The working copy's leaves when it held exactly the base's rows, checked against the
    /// base's stamp: the tables it covers are read from the leaves that changed since.
    known: Option<&'c LeafSums>,
    /// The working copy's leaves of every table read whole from its pages, for the next diff.
    walked: RefCell<Walked>,
}

/// The base side of a merge join.
struct Old {
    table: Table,
    /// The table's locator when it is no data here ([`diff`]); `None` when it counts
    /// ([`diff_remote`]).
    locator: Option<usize>,
    /// SQL expressions giving the values that columns appended by `ADD COLUMN` hold in old
    /// rows (their defaults).
    added: Vec<String>,
    /// The whole select list, when the table was rebuilt: its old rows as the new table
    /// holds them ([`carried_select`]).
    select: Option<Vec<String>>,
    /// Just the rows of these rowids, as a JSON array ([`diff_remote`]).
    only: Option<String>,
}

/// Where a table's row changes come from.
enum Read {
    /// The table is new or was rebuilt: every row of the working copy is an insert.
    AllNew,
    /// A merge join of both sides.
    Merge(Box<Old>),
    /// Nothing of the table can have changed ([`diff_remote`]).
    Untouched,
}

impl<'c> Diff<'c> {
    /// Compares the schemas, counters and triggers of `base` and `work`; rows are read later.
    pub fn new(base: &'c Connection, work: &'c Connection, filter: &Filter) -> Result<Diff<'c>> {
        Diff::against(base, work, filter, Against::WorkingCopy)
    }

    fn against(
        base: &'c Connection,
        work: &'c Connection,
        filter: &Filter,
        against: Against<'_>,
    ) -> Result<Diff<'c>> {
        let (outline, reads) = outline(base, work, filter, against)?;
        Ok(Diff {
            base,
            work,
            outline,
            reads,
            leaves_skipped: Cell::new(0),
            summing: false,
            known: None,
            walked: RefCell::new(Walked::default()),
        })
    }

    /// Reads the tables `known` covers from the leaves that changed since, if `known` stands
    /// for this base (its stamp) and is of this file's page layout; otherwise `known` is
    /// ignored.
    pub fn knowing(mut self, known: Option<&'c LeafSums>) -> Result<Diff<'c>> {
        let base = pages::stamp(self.base)?;
        self.known = known.filter(|k| Some(k.head.base) == base);
        Ok(self)
    }

    /// Keeps the working copy's leaves as the rows are read ([`Diff::walked`]).
    pub fn summing(mut self) -> Diff<'c> {
        self.summing = true;
        self
    }

    /// The working copy's leaves of the tables read so far from its pages ([`Diff::summing`]).
    pub fn walked(&self) -> Walked {
        self.walked.borrow().clone()
    }
}

/// What the base is diffed against.
#[derive(Clone, Copy)]
enum Against<'a> {
    /// The working copy ([`diff`], [`Diff::new`]).
    WorkingCopy,
    /// The remote's mirror ([`diff_remote`]), with the rows to read (`None`: all of them).
    Remote(Option<&'a BTreeMap<String, Rows>>),
}

/// The diff of `base` against `work` but the rows (every table's `changes` empty), and how
/// each table's rows are read.
fn outline(
    base: &Connection,
    work: &Connection,
    filter: &Filter,
    against: Against<'_>,
) -> Result<(Changeset, Vec<Read>)> {
    let (touched, remote) = match against {
        Against::WorkingCopy => (None, false),
        Against::Remote(touched) => (touched, true),
    };
    // The remote's locators count: a base that takes its changes follows its rowids.
    let locator = |t: &Table| if remote { None } else { t.locator() };
    let old = schema::load(base)?;
    let new = schema::load(work)?;
    refuse_unsupported(&new)?;
    let mut cs = Changeset::default();
    let mut reads = Vec::new();
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

    let renamed = renamed_tables(base, &old_tables, work, &new_tables)?;
    for t in old
        .tables
        .iter()
        .filter(|t| !t.shadow && filter.wants(&t.name))
    {
        if !new_tables.contains_key(t.name.as_str()) && !renamed.values().any(|o| o == &t.name) {
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
        let before = old_tables.get(t.name.as_str()).or_else(|| {
            renamed
                .get(&t.name)
                .and_then(|o| old_tables.get(o.as_str()))
        });
        let read = match before.map(|o| diffable(o)) {
            None => {
                cs.schema.push(SchemaChange::TableAdded {
                    name: t.name.clone(),
                    sql: t.sql.clone(),
                });
                Read::AllNew
            }
            Some(o)
                if o.sql == t.sql
                    || (o.name == t.name
                        && !renamed.is_empty()
                        && with_renamed_references(&o.sql, &renamed) == t.sql) =>
            {
                match touched.map(|m| m.get(t.name.as_str())) {
                    None | Some(Some(Rows::All)) => Read::Merge(Box::new(Old {
                        locator: locator(&o),
                        table: o,
                        added: Vec::new(),
                        select: None,
                        only: None,
                    })),
                    Some(None) => Read::Untouched,
                    Some(Some(Rows::Ids(ids))) => Read::Merge(Box::new(Old {
                        locator: locator(&o),
                        table: o,
                        added: Vec::new(),
                        select: None,
                        only: Some(serde_json::to_string(ids)?),
                    })),
                }
            }
            Some(o) => match added_columns(&o, &t).filter(|_| o.name == t.name) {
                Some((defs, added)) => {
                    cs.schema.push(SchemaChange::ColumnsAdded {
                        table: t.name.clone(),
                        columns: defs,
                        old_sql: o.sql.clone(),
                    });
                    Read::Merge(Box::new(Old {
                        locator: locator(&o),
                        table: o,
                        added,
                        select: None,
                        only: None,
                    }))
                }
                None => {
                    let columns = carried_columns(&o, &t);
                    let read = match &columns {
                        Some(map) => Read::Merge(Box::new(Old {
                            locator: locator(&o),
                            select: Some(carried_select(&t, map)),
                            table: o.clone(),
                            added: Vec::new(),
                            only: None,
                        })),
                        None => Read::AllNew,
                    };
                    let dropped: Vec<String> = o
                        .stored()
                        .map(|(_, c)| c.name.clone())
                        .filter(|c| {
                            !columns
                                .iter()
                                .flatten()
                                .any(|(_, from)| from.as_ref() == Some(c))
                        })
                        .collect();
                    let mut change = SchemaChange::TableRebuilt {
                        kind: rebuild_kind(&o, &t, columns.as_deref()),
                        dropped,
                        name: t.name.clone(),
                        old_name: o.name.clone(),
                        old_sql: o.sql.clone(),
                        new_sql: t.sql.clone(),
                        columns,
                    };
                    let alters: Vec<String> =
                        change.statements().into_iter().map(|(_, q)| q).collect();
                    if let SchemaChange::TableRebuilt { kind, .. } = &mut change {
                        if *kind != "rebuilt"
                            && *kind != "recreated"
                            && !leaves_exactly(&o, &t, &alters)
                        {
                            *kind = "rebuilt";
                        }
                    }
                    cs.schema.push(change);
                    read
                }
            },
        };
        let mut diff = table_diff(&t)?;
        diff.unique = unique_positions(work, &diff)?;
        cs.tables.push(diff);
        reads.push(read);
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
    Ok((cs, reads))
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
            return Err(Error::Unsupported(format!(
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
            declared: Vec::new(),
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

/// The scan both sides of a merge use: data columns in key order. Declared keys (WITHOUT
/// ROWID or not) are ordered by BINARY collation whatever the column's, so [`cmp_key`] can
/// follow.
///
/// With `by_rowid`, only the rows whose rowid is in the JSON array bound to `?1`.
fn scan_sql(t: &Table, extra: &[String], by_rowid: bool) -> Result<String> {
    let mut cols = t.data_columns()?;
    cols.extend(extra.iter().cloned());
    scan_sql_of(t, cols, by_rowid)
}

/// [`scan_sql`] with the select list given.
fn scan_sql_of(t: &Table, cols: Vec<String>, by_rowid: bool) -> Result<String> {
    let declared = t.locator().is_some() || matches!(t.key, RowKey::Primary(_));
    let order: Vec<String> = t
        .key_exprs()?
        .into_iter()
        .map(|k| {
            if declared {
                format!("{k} COLLATE BINARY")
            } else {
                k
            }
        })
        .collect();
    // The B-tree's own key of a rowid table is its rowid.
    let only = if by_rowid {
        format!(
            " WHERE {} IN (SELECT value FROM json_each(?1))",
            t.scan_key_exprs()?[0]
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

impl Diff<'_> {
    /// The diff without reading a row: for a working copy known to hold exactly the base's
    /// rows ([`crate::workspace::Clean`]), whose schemas, counters and triggers may still
    /// differ. Every table's `changes` is empty.
    pub fn into_outline(self) -> Changeset {
        self.outline
    }

    /// The whole diff, held in memory.
    pub fn changeset(&self) -> Result<Changeset> {
        let mut cs = self.outline.clone();
        for (i, t) in cs.tables.iter_mut().enumerate() {
            self.read(i, Pick::All, &mut |ch| {
                t.changes.push(ch);
                Ok(())
            })?;
        }
        Ok(cs)
    }

    /// [`Changeset::write_summary`] of [`Diff::changeset`], counting each table's rows as they
    /// are read instead of holding them: memory stays flat however many rows changed, and
    /// nothing is built only to be freed.
    pub fn write_summary(&self, out: &mut dyn std::io::Write, color: bool) -> Result<()> {
        let counts = (0..self.outline.tables.len())
            .map(|i| {
                let mut c = Counts::default();
                self.read(i, Pick::All, &mut |ch| {
                    c.add(&ch);
                    Ok(())
                })?;
                Ok(c)
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(self.outline.write_summary_counted(&counts, out, color)?)
    }

    /// [`Changeset::write_sql`], printing each table's rows as they are read.
    pub fn write_sql(&self, out: &mut dyn std::io::Write) -> Result<()> {
        self.outline.write_sql_from(&self.printing(), out)
    }

    /// [`Changeset::write_json`], printing each table's rows as they are read.
    pub fn write_json(&self, out: &mut dyn std::io::Write) -> Result<()> {
        self.outline.write_json_from(&self.printing(), out)
    }

    fn printing(&self) -> Printing<'_> {
        Printing {
            diff: self,
            budget: KEPT_BYTES,
            buffered: std::cell::RefCell::new(None),
        }
    }

    /// How many leaf pages the reads so far passed over as byte-identical on both sides: the
    /// fast path for a working copy that is mostly a page copy of the base, made visible to
    /// tests and benchmarks.
    pub fn leaves_skipped(&self) -> u64 {
        self.leaves_skipped.get()
    }

    /// Reads the changes of table `i` that `pick` takes, in key order.
    fn read(&self, i: usize, pick: Pick, consumer: &mut Consumer<'_>) -> Result<()> {
        let d = &self.outline.tables[i];
        self.read_table(i, pick, consumer)
            .during("diffing table", format_args!("{:?}", d.table.name))
    }

    fn read_table(&self, i: usize, pick: Pick, consumer: &mut Consumer<'_>) -> Result<()> {
        let d = &self.outline.tables[i];
        match &self.reads[i] {
            Read::AllNew => all_rows(self.work, d, pick, consumer),
            Read::Untouched => Ok(()),
            Read::Merge(old) => {
                if old.added.is_empty() && old.table.sql == d.table.sql && old.only.is_none() {
                    let leaves = Leaves {
                        summing: self.summing,
                        known: self.known.and_then(|k| {
                            Some((
                                k.head.page_size,
                                k.head.usable,
                                k.tables.get(&d.table.name)?,
                            ))
                        }),
                    };
                    if let Some(walk) =
                        merge_pages(self.base, self.work, d, pick, consumer, leaves)?
                    {
                        self.leaves_skipped
                            .set(self.leaves_skipped.get() + walk.skipped);
                        if let Some((page_size, usable, leaves)) = walk.leaves {
                            let mut w = self.walked.borrow_mut();
                            (w.page_size, w.usable) = (page_size, usable);
                            w.tables.insert(d.table.name.clone(), leaves);
                        }
                        return Ok(());
                    }
                }
                merge(self.base, old, self.work, d, pick, consumer)
            }
        }
    }
}

/// How much memory printing gives the changes it puts aside between reads of a table.
const KEPT_BYTES: usize = 4 << 20;

/// A [`Diff`] read for printing. Each table is read from the databases once: the changes the
/// caller asks for first are printed as they come, and those it asks for next are put aside
/// in [`ChangeBuffer`]s, in memory up to [`KEPT_BYTES`] and in a temporary file past that, so memory
/// stays bounded whatever the changes and no page is read twice.
///
/// ```text
/// --sql:   read All (print deletes; put updates, inserts aside) -> updates, inserts from buffers
/// --json:  read All (count; put all aside) -> print all from the buffer
/// ```
struct Printing<'a> {
    diff: &'a Diff<'a>,
    /// [`KEPT_BYTES`], but for tests.
    budget: usize,
    buffered: std::cell::RefCell<Option<Buffered>>,
}

/// The changes the last read that put any aside put aside: of which table, and one buffer per
/// pick asked for next, in the order asked.
struct Buffered {
    table: usize,
    buffers: Vec<(Pick, ChangeBuffer)>,
}

impl RowSource for Printing<'_> {
    fn changes(&self, i: usize, pick: Pick, next: &[Pick], each: &mut Each<'_>) -> Result<()> {
        let put_aside = match &mut *self.buffered.borrow_mut() {
            Some(a) if a.table == i && a.buffers.first().is_some_and(|s| s.0 == pick) => {
                Some(a.buffers.remove(0).1)
            }
            _ => None,
        };
        if let Some(buffer) = put_aside {
            return buffer.drain(each);
        }
        if !next.is_empty() {
            // Whatever an earlier read put aside is no longer asked for.
            *self.buffered.borrow_mut() = None;
        }
        let t = &self.diff.outline.tables[i];
        let share = self.budget / next.len().max(1);
        let mut buffers: Vec<(Pick, ChangeBuffer)> = next
            .iter()
            .map(|&p| (p, ChangeBuffer::new(share)))
            .collect();
        let reading = if next.is_empty() { pick } else { Pick::All };
        self.diff.read(i, reading, &mut |ch| {
            if pick.takes(t, &ch) {
                each(&ch)?;
            }
            for (p, buffer) in &mut buffers {
                if p.takes(t, &ch) {
                    buffer.put(&ch)?;
                }
            }
            Ok(())
        })?;
        // A read that puts nothing aside leaves what an earlier one did for its next reader.
        if !buffers.is_empty() {
            *self.buffered.borrow_mut() = Some(Buffered { table: i, buffers });
        }
        Ok(())
    }
}

/// Every row of the working copy's table, as inserts.
fn all_rows(
    work: &Connection,
    d: &TableDiff,
    pick: Pick,
    consumer: &mut Consumer<'_>,
) -> Result<()> {
    if !pick.inserts() {
        return Ok(());
    }
    let mut st = work.prepare(&scan_sql(&d.table, &[], false)?)?;
    let n = st.column_count();
    let mut rows = st.query([])?;
    while let Some(r) = rows.next()? {
        consumer(RowChange::Insert(owned(r, n)?))?;
    }
    Ok(())
}

fn owned(r: &rusqlite::Row<'_>, n: usize) -> rusqlite::Result<Vec<Value>> {
    (0..n).map(|i| r.get_ref(i).map(Value::from_ref)).collect()
}

/// The merge join of two SQL scans in key order: the reference, and the way every table the
/// raw pages cannot serve is read.
fn merge(
    base: &Connection,
    old: &Old,
    work: &Connection,
    d: &TableDiff,
    pick: Pick,
    consumer: &mut Consumer<'_>,
) -> Result<()> {
    let key = &d.key;
    let locator = old.locator;
    let only = old.only.as_deref();
    let base_sql = match &old.select {
        Some(cols) => scan_sql_of(&old.table, cols.clone(), only.is_some())?,
        None => scan_sql(&old.table, &old.added, only.is_some())?,
    };
    let mut bst = base.prepare(&base_sql)?;
    let mut wst = work.prepare(&scan_sql(&d.table, &[], only.is_some())?)?;
    let n = wst.column_count();
    if bst.column_count() != n {
        return Err(Error::Unexpected(format!(
            "table {:?}: cannot line up old and new columns",
            d.table.name
        )));
    }
    let mut brows = bst.query(rusqlite::params_from_iter(only))?;
    let mut wrows = wst.query(rusqlite::params_from_iter(only))?;
    let mut b = brows.next()?;
    let mut w = wrows.next()?;
    loop {
        let ord = match (b, w) {
            (None, None) => break,
            (Some(_), None) => Ordering::Less,
            (None, Some(_)) => Ordering::Greater,
            (Some(br), Some(wr)) => cmp_key(br, wr, key)?,
        };
        match ord {
            Ordering::Less => {
                if let (true, Some(br)) = (pick.deletes(), b) {
                    consumer(RowChange::Delete(owned(br, n)?))?;
                }
                b = brows.next()?;
            }
            Ordering::Greater => {
                if let (true, Some(wr)) = (pick.inserts(), w) {
                    consumer(RowChange::Insert(owned(wr, n)?))?;
                }
                w = wrows.next()?;
            }
            Ordering::Equal => {
                if let (Some(br), Some(wr)) = (b, w) {
                    if pick.updates(d) && !same_row(br, wr, n, locator)? {
                        let old = owned(br, n)?;
                        let mut new = owned(wr, n)?;
                        // A new rowid alone is no change (an app's REPLACE gives one), so an
                        // update keeps the row where it is.
                        if let Some(l) = locator {
                            new[l] = old[l].clone();
                        }
                        let ch = RowChange::Update { old, new };
                        if pick.takes(d, &ch) {
                            consumer(ch)?;
                        }
                    }
                }
                b = brows.next()?;
                w = wrows.next()?;
            }
        }
    }
    Ok(())
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
/// rows whose bytes differ are decoded and compared as values, and leaf pages the two files
/// share are passed over whole. Applies to plain rowid tables (no generated columns, not
/// virtual) matched by their rowid. Pages come through each connection's pager, inside its
/// read transaction ([`crate::pages`]): the snapshot its SQL sees, WAL frames included.
///
/// With the working copy's leaves from when it held exactly the base's rows (`leaves.known`),
/// the base is not walked at all: the working copy's leaves are read and hashed, and only those
/// whose bytes changed are decoded and compared with the base's rows of the leaves that
/// changed or went, read by rowid range ([`merge_changed`]).
///
/// Returns how many leaves were passed over (and the working copy's leaves, when
/// `leaves.summing`), or `None` to fall back to the SQL scan when anything is out of the
/// ordinary before the first change went out. Changes already given to `consumer` cannot be
/// taken back, so from then on a page that cannot be read is an error; a record that does not
/// decode (a short one from before an `ADD COLUMN`, say) is read through SQL by its rowid
/// instead, so it never stops a walk.
fn merge_pages(
    base: &Connection,
    work: &Connection,
    d: &TableDiff,
    pick: Pick,
    consumer: &mut Consumer<'_>,
    leaves: Leaves<'_>,
) -> Result<Option<Walk>> {
    let t = &d.table;
    // Rows of a table with a declared key are matched by it, not in rowid order.
    let (RowKey::Rowid { ipk, .. }, None) = (&t.key, t.locator()) else {
        return Ok(None);
    };
    let ipk = *ipk;
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
    let rowid = match ipk {
        Some(c) => sql::ident(&t.columns[c].name),
        None => sql::ident(t.rowid_alias()?),
    };
    let records = Records {
        layout: Layout {
            hidden_rowid: t.has_hidden_rowid(),
            ipk,
            real: t
                .columns
                .iter()
                .map(|c| real_affinity(&c.decl_type))
                .collect(),
        },
        by_rowid: format!(
            "SELECT {} FROM {} WHERE {rowid} = ?1",
            t.data_columns()?.join(", "),
            sql::ident(&t.name)
        ),
    };
    let by_range = format!(
        "SELECT {rowid}, {} FROM {} WHERE {rowid} BETWEEN ?1 AND ?2 ORDER BY {rowid}",
        t.data_columns()?.join(", "),
        sql::ident(&t.name)
    );
    let mut yielded = false;
    let mut give = |ch| {
        yielded = true;
        consumer(ch)
    };
    let walked = (|| {
        let wdb = DbFile::open(work)?;
        let layout = (wdb.page_size() as u32, wdb.usable() as u32);
        let mut now = None;
        if let Some((page_size, usable, old)) = leaves.known {
            if (page_size, usable) == layout {
                let mut ws = wdb.scan(wroot)?.summing();
                while ws.pass_leaf()? {}
                let leaves = ws.take_leaves().unwrap_or_default();
                let plan = Changed::plan(old, &leaves);
                now = Some(leaves);
                if let Some(plan) = plan {
                    let sides = ChangedSides {
                        work: (&wdb, work),
                        base: (base, &by_range),
                    };
                    merge_changed(&plan, sides, d, &records, pick, &mut give)?;
                    return Ok(Walk {
                        skipped: plan.kept,
                        leaves: now.map(|l| (layout.0, layout.1, l)),
                    });
                }
            }
        }
        let bdb = DbFile::open(base)?;
        let mut ws = wdb.scan(wroot)?;
        if leaves.summing && now.is_none() {
            ws = ws.summing();
        }
        let mut sides = Sides {
            base: (bdb.scan(broot)?, base),
            work: (ws, work),
        };
        let skipped = merge_records(&mut sides, d, &records, pick, &mut give)?;
        let now = now.or_else(|| sides.work.0.take_leaves());
        Ok(Walk {
            skipped,
            leaves: now
                .filter(|_| leaves.summing)
                .map(|l| (layout.0, layout.1, l)),
        })
    })();
    match walked {
        Ok(walk) => Ok(Some(walk)),
        Err(Stop::Other(e)) => Err(e),
        Err(Stop::Page(e)) if e.falls_back() && !yielded => Ok(None),
        Err(Stop::Page(e)) => Err(Error::Unexpected(format!(
            "table {:?}: reading its pages: {e}",
            t.name
        ))),
    }
}

/// Why a page walk stopped early: its pages, or anything else (the consumer, a row read by SQL).
enum Stop {
    Page(PageError),
    Other(Error),
}

impl From<PageError> for Stop {
    fn from(e: PageError) -> Stop {
        Stop::Page(e)
    }
}

impl From<rusqlite::Error> for Stop {
    fn from(e: rusqlite::Error) -> Stop {
        Stop::Other(e.into())
    }
}

/// Each side's walk, with the connection it reads through.
struct Sides<'c> {
    base: (Scan<'c>, &'c Connection),
    work: (Scan<'c>, &'c Connection),
}

/// Turns a table's records into data rows.
struct Records {
    layout: Layout,
    /// Reads one data row by rowid, for a record the layout does not fit.
    by_rowid: String,
}

impl Records {
    fn row(&self, conn: &Connection, (rowid, rec): (i64, &[u8])) -> Result<Vec<Value>, Stop> {
        if let Some(row) = pages::decode(rowid, rec, &self.layout) {
            return Ok(row);
        }
        let mut st = conn.prepare_cached(&self.by_rowid)?;
        let n = st.column_count();
        Ok(st.query_row([rowid], |r| owned(r, n))?)
    }
}

/// The loop of [`merge_pages`]: gives `consumer` the changes `pick` takes, and returns how many
/// leaves it passed over.
fn merge_records(
    sides: &mut Sides<'_>,
    d: &TableDiff,
    records: &Records,
    pick: Pick,
    consumer: &mut Consumer<'_>,
) -> Result<u64, Stop> {
    let ((bs, bconn), (ws, wconn)) = (&mut sides.base, &mut sides.work);
    let (bconn, wconn) = (*bconn, *wconn);
    let mut give = |ch: RowChange| consumer(ch).map_err(Stop::Other);
    let mut skipped = 0;
    while pages::skip_shared_leaf(bs, ws)? {
        skipped += 1;
    }
    let (mut b, mut w) = (bs.next_row()?, ws.next_row()?);
    loop {
        let ord = match (b, w) {
            (None, None) => break,
            (Some(_), None) => Ordering::Less,
            (None, Some(_)) => Ordering::Greater,
            (Some((bid, _)), Some((wid, _))) => bid.cmp(&wid),
        };
        match ord {
            Ordering::Less => {
                if let (true, Some(br)) = (pick.deletes(), b) {
                    give(RowChange::Delete(records.row(bconn, br)?))?;
                }
                b = bs.next_row()?;
            }
            Ordering::Greater => {
                if let (true, Some(wr)) = (pick.inserts(), w) {
                    give(RowChange::Insert(records.row(wconn, wr)?))?;
                }
                w = ws.next_row()?;
            }
            Ordering::Equal => {
                if let (Some(br), Some(wr)) = (b, w) {
                    if br.1 != wr.1 && pick.updates(d) {
                        let (old, new) = (records.row(bconn, br)?, records.row(wconn, wr)?);
                        if old != new {
                            let ch = RowChange::Update { old, new };
                            if pick.takes(d, &ch) {
                                give(ch)?;
                            }
                        }
                    }
                }
                while pages::skip_shared_leaf(bs, ws)? {
                    skipped += 1;
                }
                b = bs.next_row()?;
                w = ws.next_row()?;
            }
        }
    }
    Ok(skipped)
}

/// What [`merge_pages`] knows and keeps of the working copy's leaves.
struct Leaves<'a> {
    /// Keep the leaves read.
    summing: bool,
    /// The table's leaves when the working copy held exactly the base's rows, with the page
    /// size and usable bytes of the file they were read from.
    known: Option<(u32, u32, &'a Vec<Leaf>)>,
}

/// What a page walk did: leaves passed over, and the working copy's leaves when asked, with
/// its page size and usable bytes.
struct Walk {
    skipped: u64,
    leaves: Option<(u32, u32, Vec<Leaf>)>,
}

/// Which rows can differ between the base and the working copy, from the working copy's
/// leaves then (`old`, when it held exactly the base's rows) and now.
#[derive(Debug, PartialEq)]
struct Changed {
    /// The working copy's leaves that are not kept from then, with rows, in key order.
    leaves: Vec<u32>,
    /// The rowid ranges of the leaves then that are not kept now, adjacent ones joined, in key
    /// order: the base's rows in them are the only ones that can differ.
    ranges: Vec<(i64, i64)>,
    /// How many leaves are kept.
    kept: u64,
}

impl Changed {
    /// `None` when either list is not in strict key order (not read from one B-tree), or when
    /// so much changed that walking both files costs less than reading the base's rows by
    /// range.
    fn plan(old: &[Leaf], now: &[Leaf]) -> Option<Changed> {
        let ordered = |leaves: &[Leaf]| {
            let mut ranges = leaves.iter().filter_map(|l| l.rows);
            let mut prev: Option<i64> = None;
            ranges.all(|(first, last)| {
                let ok = first <= last && prev.is_none_or(|p| p < first);
                prev = Some(last);
                ok
            })
        };
        if !ordered(old) || !ordered(now) {
            return None;
        }
        let then: HashMap<u32, &Leaf> = old.iter().map(|l| (l.pgno, l)).collect();
        let mut kept = HashSet::new();
        let mut leaves = Vec::new();
        for l in now {
            match then.get(&l.pgno) {
                Some(o) if o.kept_in(l) => {
                    kept.insert(l.pgno);
                }
                _ if l.rows.is_some() => leaves.push(l.pgno),
                _ => {}
            }
        }
        if leaves.len() > 64 && leaves.len() * 4 > now.len() {
            return None;
        }
        let mut ranges: Vec<(i64, i64)> = Vec::new();
        let mut joined = false;
        for o in old {
            if kept.contains(&o.pgno) {
                joined = false;
                continue;
            }
            let Some((first, last)) = o.rows else {
                continue;
            };
            match ranges.last_mut() {
                Some(r) if joined => r.1 = last,
                _ => ranges.push((first, last)),
            }
            joined = true;
        }
        Some(Changed {
            leaves,
            ranges,
            kept: kept.len() as u64,
        })
    }
}

/// The two sides of [`merge_changed`]: the working copy's file and connection, and the base's
/// connection with its statement reading a rowid range in key order.
struct ChangedSides<'a, 'c> {
    work: (&'a DbFile<'c>, &'c Connection),
    base: (&'c Connection, &'a str),
}

/// The merge join of the working copy's rows on the leaves that changed with the base's rows
/// in the ranges of the leaves that changed or went ([`Changed`]). Every other row is on a leaf
/// kept from when both files held the same rows, so it is the same on both sides.
fn merge_changed(
    plan: &Changed,
    sides: ChangedSides<'_, '_>,
    d: &TableDiff,
    records: &Records,
    pick: Pick,
    consumer: &mut Consumer<'_>,
) -> Result<(), Stop> {
    let ((wdb, wconn), (bconn, by_range)) = (sides.work, sides.base);
    let mut give = |ch: RowChange| consumer(ch).map_err(Stop::Other);
    let mut st = bconn.prepare_cached(by_range)?;
    let n = st.column_count() - 1;
    let mut ranges = plan.ranges.iter();
    let mut olds: VecDeque<(i64, Vec<Value>)> = VecDeque::new();
    let mut next_old = || -> Result<Option<(i64, Vec<Value>)>, Stop> {
        while olds.is_empty() {
            let Some(&(first, last)) = ranges.next() else {
                return Ok(None);
            };
            let mut rows = st.query([first, last])?;
            while let Some(r) = rows.next()? {
                let values = (1..=n)
                    .map(|i| r.get_ref(i).map(Value::from_ref))
                    .collect::<rusqlite::Result<Vec<Value>>>()?;
                olds.push_back((r.get(0)?, values));
            }
        }
        Ok(olds.pop_front())
    };
    let mut leaves = plan.leaves.iter();
    let mut scan: Option<Scan<'_>> = None;
    let mut next_new = || -> Result<Option<(i64, Vec<u8>)>, Stop> {
        loop {
            if let Some(s) = &mut scan {
                if let Some((rowid, rec)) = s.next_row()? {
                    return Ok(Some((rowid, rec.to_vec())));
                }
            }
            match leaves.next() {
                Some(&pgno) => scan = Some(wdb.scan(pgno)?),
                None => return Ok(None),
            }
        }
    };
    let (mut b, mut w) = (next_old()?, next_new()?);
    loop {
        let ord = match (&b, &w) {
            (None, None) => break,
            (Some(_), None) => Ordering::Less,
            (None, Some(_)) => Ordering::Greater,
            (Some((bid, _)), Some((wid, _))) => bid.cmp(wid),
        };
        match ord {
            Ordering::Less => {
                if let (true, Some((_, old))) = (pick.deletes(), b) {
                    give(RowChange::Delete(old))?;
                }
                b = next_old()?;
            }
            Ordering::Greater => {
                if let (true, Some((rowid, rec))) = (pick.inserts(), &w) {
                    give(RowChange::Insert(records.row(wconn, (*rowid, rec))?))?;
                }
                w = next_new()?;
            }
            Ordering::Equal => {
                if let (true, Some((_, old)), Some((rowid, rec))) = (pick.updates(d), b, &w) {
                    let new = records.row(wconn, (*rowid, rec))?;
                    if old != new {
                        let ch = RowChange::Update { old, new };
                        if pick.takes(d, &ch) {
                            give(ch)?;
                        }
                    }
                }
                b = next_old()?;
                w = next_new()?;
            }
        }
    }
    Ok(())
}

/// Whether two rows hold the same data: every value but the `locator` (a hidden rowid that
/// only locates the row, [`Table::locator`]) equal in class and bytes.
fn same_row(
    a: &rusqlite::Row<'_>,
    b: &rusqlite::Row<'_>,
    n: usize,
    locator: Option<usize>,
) -> rusqlite::Result<bool> {
    for i in (0..n).filter(|&i| Some(i) != locator) {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::changeset::Phase;

    /// A scratch directory with `base.db`, made by `setup`, and `work.db`, a byte copy of it
    /// then changed by `edit`: the working copy right after an init, then edited.
    fn copies(
        name: &str,
        setup: impl FnOnce(&Connection),
        edit: impl FnOnce(&Connection),
    ) -> (std::path::PathBuf, Connection, Connection) {
        let dir = std::env::temp_dir().join(format!("tursync-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let (base, work) = (dir.join("base.db"), dir.join("work.db"));
        setup(&Connection::open(&base).unwrap());
        std::fs::copy(&base, &work).unwrap();
        edit(&Connection::open(&work).unwrap());
        let (b, w) = (
            Connection::open(&base).unwrap(),
            Connection::open(&work).unwrap(),
        );
        w.execute_batch("BEGIN").unwrap();
        (dir, b, w)
    }

    /// Diffs `base` against `work` and checks every table's changes, and each phase's, against
    /// the SQL merge join (the reference). Returns the changeset and the leaves its one read
    /// of every table passed over.
    fn diff_like_the_reference(base: &Connection, work: &Connection) -> (Changeset, u64) {
        diff_knowing_like_the_reference(base, work, None)
    }

    /// [`diff_like_the_reference`], the diff reading the tables `known` covers from the leaves
    /// that changed since.
    fn diff_knowing_like_the_reference(
        base: &Connection,
        work: &Connection,
        known: Option<&LeafSums>,
    ) -> (Changeset, u64) {
        let d = Diff::new(base, work, &Filter::default())
            .unwrap()
            .knowing(known)
            .unwrap()
            .summing();
        let cs = d.changeset().unwrap();
        let skipped = d.leaves_skipped();
        for (i, t) in d.outline.tables.iter().enumerate() {
            let Read::Merge(old) = &d.reads[i] else {
                continue;
            };
            let mut reference = Vec::new();
            merge(base, old, work, t, Pick::All, &mut |ch| {
                reference.push(ch);
                Ok(())
            })
            .unwrap();
            assert_eq!(cs.tables[i].changes, reference, "table {}", t.table.name);
            for phase in Phase::ALL {
                let mut got = Vec::new();
                d.read(i, Pick::Only(phase), &mut |ch| {
                    got.push(ch);
                    Ok(())
                })
                .unwrap();
                let want: Vec<_> = reference
                    .iter()
                    .filter(|ch| Pick::Only(phase).takes(t, ch))
                    .cloned()
                    .collect();
                assert_eq!(got, want, "table {}, {phase:?}", t.table.name);
            }
        }
        // Printed as the rows are read, whether the changes put aside for a table's later
        // passes stay in memory or go to a file: byte for byte what the changeset in memory
        // prints.
        let (mut summary, mut summary2) = (Vec::new(), Vec::new());
        cs.write_summary(&mut summary, true).unwrap();
        d.write_summary(&mut summary2, true).unwrap();
        assert_eq!(
            String::from_utf8_lossy(&summary),
            String::from_utf8_lossy(&summary2)
        );
        let (mut sql, mut json) = (Vec::new(), Vec::new());
        cs.write_sql(&mut sql).unwrap();
        cs.write_json(&mut json).unwrap();
        for budget in [0, 3000, KEPT_BYTES] {
            let printing = Printing {
                diff: &d,
                budget,
                buffered: std::cell::RefCell::new(None),
            };
            let (mut sql2, mut json2) = (Vec::new(), Vec::new());
            d.outline.write_sql_from(&printing, &mut sql2).unwrap();
            d.outline.write_json_from(&printing, &mut json2).unwrap();
            assert!(sql == sql2, "SQL printed with {budget} bytes in memory");
            assert!(json == json2, "JSON printed with {budget} bytes in memory");
        }
        (cs, skipped)
    }

    const TABLE: &str = "CREATE TABLE t(id INTEGER PRIMARY KEY, a, b REAL, c TEXT, u INT UNIQUE);
        WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 3000)
        INSERT INTO t SELECT i * 2, i, i % 7, printf('row %d', i),
            CASE WHEN i % 10 = 0 THEN i END FROM n;
        INSERT INTO t(id, a) VALUES (1001, zeroblob(9000)), (3001, randomblob(20000));";

    #[test]
    fn leaves_both_files_share_are_passed_over() {
        let (dir, b, w) = copies(
            "shared-leaves",
            |c| c.execute_batch(TABLE).unwrap(),
            |c| {
                c.execute_batch(
                    "UPDATE t SET c = 'edited' WHERE id = 3000; DELETE FROM t WHERE id = 5000;
                     INSERT INTO t(id, a) VALUES (100000, 'new');",
                )
                .unwrap()
            },
        );
        // Table leaves start with 0x0d; page 1 starts with the file header, and `t` is the
        // only table.
        let leaves: i64 = w
            .query_row(
                "SELECT count(*) FROM sqlite_dbpage WHERE substr(data, 1, 1) = x'0d'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        let leaves = leaves as u64;
        let (cs, skipped) = diff_like_the_reference(&b, &w);
        assert_eq!(cs.tables[0].counts(), (1, 1, 1));
        // Three edited leaves, two holding rows that spill to overflow pages, and the pages
        // a split or a merge may touch: every other leaf is passed over.
        assert!(skipped > 0, "no leaf passed over");
        assert!(
            skipped + 12 >= leaves,
            "{skipped} of {leaves} leaves passed over"
        );
        let (unchanged, b2, w2) = copies("unchanged", |c| c.execute_batch(TABLE).unwrap(), |_| {});
        let (cs, all) = diff_like_the_reference(&b2, &w2);
        assert!(cs.is_empty());
        // Every leaf but the two holding spilled rows.
        assert_eq!(all + 2, leaves, "leaves passed over in identical copies");
        let _ = std::fs::remove_dir_all(dir);
        let _ = std::fs::remove_dir_all(unchanged);
    }

    /// The leaf holding a spilled row is the same in both files, but its overflow page is not:
    /// the leaf must be read, not passed over.
    #[test]
    fn a_leaf_is_not_passed_over_when_its_overflow_pages_differ() {
        let marker = "6d61726b6572"; // "marker"
        let (dir, b, w) = copies(
            "overflow",
            |c| {
                c.execute_batch(&format!(
                    "CREATE TABLE t(id INTEGER PRIMARY KEY, v);
                     INSERT INTO t VALUES (1, 'small'), (2, zeroblob(6000) || x'{marker}'), (3, 'x');"
                ))
                .unwrap()
            },
            |c| {
                let (pgno, mut data): (i64, Vec<u8>) = c
                    .query_row(
                        &format!("SELECT pgno, data FROM sqlite_dbpage WHERE instr(data, x'{marker}') > 0"),
                        [],
                        |r| Ok((r.get(0)?, r.get(1)?)),
                    )
                    .unwrap();
                let at = data.windows(6).position(|x| x == b"marker").unwrap();
                data[at] = b'M';
                c.execute(
                    "UPDATE sqlite_dbpage SET data = ?2 WHERE pgno = ?1",
                    rusqlite::params![pgno, data],
                )
                .unwrap();
            },
        );
        let (cs, _) = diff_like_the_reference(&b, &w);
        assert_eq!(cs.tables[0].counts(), (0, 1, 0));
        let _ = std::fs::remove_dir_all(dir);
    }

    /// A xorshift generator: `next(n)` is below `n`.
    fn xorshift(mut seed: u64) -> impl FnMut(u64) -> u64 {
        move |n| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed % n
        }
    }

    /// A value as SQL: NULL, an integer, a real, a text, a small blob, or a blob that spills
    /// to overflow pages.
    fn random_value(next: &mut impl FnMut(u64) -> u64) -> String {
        match next(6) {
            0 => "NULL".to_owned(),
            1 => format!("{}", next(1000)),
            2 => format!("{}.5", next(1000)),
            3 => format!("'text {}'", next(1000)),
            4 => format!("randomblob({})", 1 + next(30)),
            _ => format!("zeroblob({})", 4000 + next(12000)),
        }
    }

    /// Random edits to a page copy of the base, few and many: the page walk, leaves passed
    /// over, short records and all, finds exactly what the SQL merge join finds, phase by
    /// phase.
    #[test]
    fn random_edits_diff_like_the_sql_merge_join() {
        let mut next = xorshift(0x9e37_79b9_7f4a_7c15);
        let mut skipped_somewhere = false;
        for round in 0..12 {
            let count = [1, 3, 10, 60][round % 4];
            let mut edits = String::new();
            for _ in 0..count {
                let id = next(6200);
                let value = random_value(&mut next);
                edits.push_str(&match next(5) {
                    0 => format!("UPDATE OR REPLACE t SET a = {value} WHERE id = {id};"),
                    1 => format!("UPDATE OR REPLACE t SET u = {} WHERE id = {id};", next(300)),
                    2 => format!("DELETE FROM t WHERE id = {id};"),
                    3 => format!("INSERT OR REPLACE INTO t(id, a, b) VALUES ({id}, {value}, 1);"),
                    _ => format!("UPDATE t SET b = b + 1, c = NULL WHERE id = {id};"),
                });
            }
            // Odd rounds add a column after the rows were written: their records are short,
            // and each changed one is read through SQL by rowid.
            let added = ["", "ALTER TABLE t ADD COLUMN z DEFAULT 'added';"][round % 2];
            let (dir, b, w) = copies(
                "random",
                |c| c.execute_batch(&format!("{TABLE}{added}")).unwrap(),
                |c| c.execute_batch(&edits).unwrap(),
            );
            let (_, skipped) = diff_like_the_reference(&b, &w);
            skipped_somewhere |= skipped > 0;
            let _ = std::fs::remove_dir_all(dir);
        }
        assert!(skipped_somewhere);
    }

    /// The leaves of the file at `path` as a diff reads them, standing for that file as a
    /// base: what a push records when the working copy holds exactly the base's rows.
    fn leaves_of(path: &std::path::Path) -> LeafSums {
        let (a, b) = (
            Connection::open(path).unwrap(),
            Connection::open(path).unwrap(),
        );
        b.execute_batch("BEGIN").unwrap();
        let d = Diff::new(&a, &b, &Filter::default()).unwrap().summing();
        assert!(d.changeset().unwrap().is_empty());
        let base = pages::stamp(&a).unwrap().unwrap();
        d.walked().standing_for(base)
    }

    /// Random edits after the working copy's leaves were recorded, small and large, with rows
    /// spilling to overflow pages, leaves split, merged and freed, a VACUUM renumbering every
    /// page, and rows written back unchanged: reading only the leaves that changed finds
    /// exactly what the SQL merge join finds, phase by phase.
    #[test]
    fn leaves_changed_since_they_were_recorded_diff_like_the_sql_merge_join() {
        let mut next = xorshift(0x2545_f491_4f6c_dd1d);
        let mut kept_somewhere = false;
        for round in 0..16 {
            let count = [1, 4, 30, 400][round % 4];
            let mut edits = String::new();
            for _ in 0..count {
                let id = next(6400);
                let value = random_value(&mut next);
                edits.push_str(&match next(7) {
                    0 => format!("UPDATE OR REPLACE t SET a = {value} WHERE id = {id};"),
                    1 => format!("DELETE FROM t WHERE id BETWEEN {id} AND {id} + {};", next(200)),
                    2 => format!("INSERT OR REPLACE INTO t(id, a, b) VALUES ({id}, {value}, 1);"),
                    3 => format!("INSERT OR IGNORE INTO t(id, a) VALUES ({}, {value});", -(id as i64)),
                    4 => format!("UPDATE t SET a = a, b = b WHERE id = {id};"),
                    5 => format!(
                        "DELETE FROM t WHERE id = {id}; INSERT INTO t SELECT * FROM t2 WHERE id = {id};"
                    ),
                    _ => format!("UPDATE t SET b = b + 1, c = NULL WHERE id = {id};"),
                });
            }
            if round % 5 == 4 {
                edits.push_str("VACUUM;");
            }
            let (dir, b, w) = copies(
                "known-leaves",
                |c| {
                    c.execute_batch(&format!("{TABLE} CREATE TABLE t2 AS SELECT * FROM t;"))
                        .unwrap()
                },
                |c| c.execute_batch(&edits).unwrap(),
            );
            let known = leaves_of(&dir.join("base.db"));
            assert!(known.tables.contains_key("t"));
            let (_, kept) = diff_knowing_like_the_reference(&b, &w, Some(&known));
            kept_somewhere |= kept > 0;
            let _ = std::fs::remove_dir_all(dir);
        }
        assert!(kept_somewhere, "no leaf was ever kept");
    }

    /// Leaves recorded for another base, or for a file of another page size, are not used:
    /// the diff walks both files.
    #[test]
    fn leaves_of_another_base_or_page_size_are_ignored() {
        let (dir, b, w) = copies(
            "other-leaves",
            |c| c.execute_batch(TABLE).unwrap(),
            |c| {
                c.execute_batch("UPDATE t SET c = 'x' WHERE id = 40")
                    .unwrap()
            },
        );
        // The working copy's leaves as edited, standing for the working copy: the base does
        // not hold their rows, and were they used, the change would go unseen.
        w.execute_batch("COMMIT").unwrap();
        let mut known = leaves_of(&dir.join("work.db"));
        w.execute_batch("BEGIN").unwrap();
        let (cs, _) = diff_knowing_like_the_reference(&b, &w, Some(&known));
        assert_eq!(cs.tables[0].counts(), (0, 1, 0));
        known.head.page_size = 8192;
        known.head.base = pages::stamp(&b).unwrap().unwrap();
        let (cs, _) = diff_knowing_like_the_reference(&b, &w, Some(&known));
        assert_eq!(cs.tables[0].counts(), (0, 1, 0));
        let _ = std::fs::remove_dir_all(dir);
    }

    /// Several changed tables, one with a UNIQUE column whose values rotate: each table's
    /// passes are served from what its one read put aside, and JSON's count of the last table
    /// still serves its print after the other tables were read again.
    #[test]
    fn several_tables_print_like_the_changeset() {
        let (dir, b, w) = copies(
            "several",
            |c| {
                c.execute_batch(&format!(
                    "{TABLE}
                     CREATE TABLE s(id INTEGER PRIMARY KEY, u TEXT UNIQUE, v);
                     INSERT INTO s VALUES (1, 'a', 1), (2, 'b', 2), (3, 'c', 3), (4, 'd', 4), (6, 'f', 6);"
                ))
                .unwrap()
            },
            |c| {
                c.execute_batch(
                    "UPDATE t SET c = 'edited' WHERE id % 7 = 0; DELETE FROM t WHERE id % 11 = 0;
                     INSERT INTO t(id, a) VALUES (100000, 'new');
                     UPDATE s SET u = 'x' WHERE id = 1; UPDATE s SET u = 'a' WHERE id = 2;
                     UPDATE s SET u = 'b' WHERE id = 3; UPDATE s SET u = 'c' WHERE id = 1;
                     UPDATE s SET v = 40 WHERE id = 4; DELETE FROM s WHERE id = 6;
                     INSERT INTO s VALUES (5, 'e', 5);",
                )
                .unwrap()
            },
        );
        let (cs, _) = diff_like_the_reference(&b, &w);
        assert!(cs.tables.iter().all(|t| !t.changes.is_empty()));
        let _ = std::fs::remove_dir_all(dir);
    }
}
