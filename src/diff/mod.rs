//! The diff engine: the changes between two local databases, as a [`Changeset`]. The base is
//! diffed against the working copy (what push sends, what `tursync diff` prints) or against the
//! mirror of the remote ([`diff_remote`], what a pull brings in).
//!
//! Rows are matched by identity — the rowid, or the primary key of a WITHOUT ROWID table —
//! with a merge join of two scans in key order, so each side is read once, sequentially.
//! Values are compared by storage class and exact bytes ([`crate::Value`]'s equality), and the
//! loop compares borrowed values, allocating only for rows that changed. Where a table allows,
//! the same join runs over raw B-tree records instead (`walk`), with the SQL join as its
//! reference and fallback.
//!
//! The join hands each change to a consumer as it finds it ([`Diff`]): the [`Changeset`] that
//! push and pull hold in memory is one consumer, and `diff --sql` / `diff --json`, which print
//! as they read, are others, through the one renderer both kinds of row source share
//! ([`crate::changeset::render`]).

use std::cell::{Cell, RefCell, RefMut};
use std::cmp::Ordering;
use std::collections::BTreeMap;

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
use crate::pages;
use crate::schema::{self, ObjectKind, RowKey, Schema, Table};
use crate::sql;
use crate::touched::Rows;
use crate::value::{cmp_value, Value};
use crate::{Context, Error, Result};

mod walk;
use walk::{merge_pages, Leaves};

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
    /// A second connection to the working copy, which reads half of a large table's leaves
    /// while `work` reads the other half ([`pages::DbFile::sum_leaves`]).
    beside: RefCell<Beside>,
}

/// The least leaves a table had for its leaves to be read by two connections at once. Below
/// it the whole walk takes under 2 ms (about 1.7 µs a leaf, measured at 3M rows), and opening
/// a second connection, preparing its read and starting a thread would take back much of the
/// half it saves.
const BESIDE_LEAVES: usize = 1024;

/// The second connection to the working copy ([`Diff::beside`]).
enum Beside {
    /// Not needed yet.
    NotYet,
    Open(Connection),
    /// It could not be opened: one connection reads, as it would anyway.
    Unavailable,
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
            beside: RefCell::new(Beside::NotYet),
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

    /// The second connection to the working copy, opened on first need; `None` unless `work`
    /// is in a read transaction that wrote nothing, the only state in which both can read the
    /// same snapshot ([`pages::DbFile::sum_leaves`]). A second connection that cannot be
    /// opened (an in-memory database, say) only leaves the reading to `work`, as below
    /// [`BESIDE_LEAVES`].
    fn beside(&self) -> Option<RefMut<'_, Connection>> {
        let state = self.work.transaction_state(Some(rusqlite::MAIN_DB));
        if !matches!(state, Ok(rusqlite::TransactionState::Read)) {
            return None;
        }
        let mut beside = self.beside.borrow_mut();
        if let Beside::NotYet = *beside {
            *beside = open_beside(self.work).map_or(Beside::Unavailable, Beside::Open);
        }
        RefMut::filter_map(beside, |b| match b {
            Beside::Open(conn) => Some(conn),
            _ => None,
        })
        .ok()
    }
}

/// A read-only connection to `work`'s file that never waits for a lock: a writer of the app
/// waiting for its exclusive lock keeps new readers out while it waits for `work`'s shared
/// lock to go, so waiting here would only hold both up.
fn open_beside(work: &Connection) -> Option<Connection> {
    let path = work.path().filter(|p| !p.is_empty())?;
    let flags =
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let conn = Connection::open_with_flags(path, flags).ok()?;
    conn.busy_timeout(std::time::Duration::ZERO).ok()?;
    Some(conn)
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
                    let known = self.known.and_then(|k| {
                        Some((
                            k.head.page_size,
                            k.head.usable,
                            k.tables.get(&d.table.name)?,
                        ))
                    });
                    let mut beside = known
                        .filter(|(_, _, leaves)| leaves.len() >= BESIDE_LEAVES)
                        .and_then(|_| self.beside());
                    let leaves = Leaves {
                        summing: self.summing,
                        known,
                        beside: beside.as_deref_mut(),
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
mod tests;
