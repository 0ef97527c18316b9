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

use std::cell::Cell;
use std::cmp::Ordering;
use std::collections::BTreeMap;

use rusqlite::Connection;

use crate::change_buffer::ChangeBuffer;
use crate::changeset::render::{Each, RowSource};
use crate::changeset::{
    with_renamed_references, Changeset, Pick, RowChange, SchemaChange, SequenceChange, TableDiff,
};
use crate::pages::{self, DbFile, Layout, PageError, Scan};
use crate::schema::{self, Column, ObjectKind, RowKey, Schema, Table};
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
    /// Leaf pages passed over as byte-identical on both sides ([`pages::skip_shared_leaf`]).
    leaves_skipped: Cell<u64>,
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
        })
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

/// For each data column of `new`, the data column of `old` its values come from, when the
/// rows of `old` can be carried into `new` row for row: by name (case-insensitive), else, in
/// tables of as many columns, the column at the same position that no other column took by
/// name (a renamed column); a hidden rowid from the hidden rowid. `None` when the row key
/// does not follow (a different kind of key, or key columns that come from elsewhere): then
/// rows cannot be matched across the change.
pub(crate) fn carried_columns(old: &Table, new: &Table) -> Option<Vec<(String, Option<String>)>> {
    if old.key == RowKey::Virtual || new.key == RowKey::Virtual || old.shadow || new.shadow {
        return None;
    }
    let old_names = old.data_names().ok()?;
    let new_names = new.data_names().ok()?;
    let same_shape = old.columns.len() == new.columns.len();
    let by_name = |n: &str| old.stored().find(|(_, c)| c.name.eq_ignore_ascii_case(n));
    let mut map = Vec::with_capacity(new_names.len());
    for (i, n) in new_names.iter().enumerate() {
        if i == 0 && new.has_hidden_rowid() {
            if !old.has_hidden_rowid() {
                return None;
            }
            map.push((n.clone(), Some(old_names[0].clone())));
            continue;
        }
        let from = match by_name(n) {
            Some((_, c)) => Some(c.name.clone()),
            None if same_shape => {
                let p = new.columns.iter().position(|c| &c.name == n)?;
                let c = &old.columns[p];
                let taken = new
                    .columns
                    .iter()
                    .any(|nc| nc.name.eq_ignore_ascii_case(&c.name));
                (!c.generated && !taken).then(|| c.name.clone())
            }
            None => None,
        };
        map.push((n.clone(), from));
    }
    let kind = |t: &Table| match &t.key {
        RowKey::Rowid { ipk, declared, .. } => (1, ipk.is_some(), declared.len()),
        RowKey::Primary(cols) => (2, false, cols.len()),
        RowKey::Virtual => (0, false, 0),
    };
    let (ok, nk) = (old.key_positions(), new.key_positions());
    let follows = kind(old) == kind(new)
        && ok.len() == nk.len()
        && ok
            .iter()
            .zip(&nk)
            .all(|(&o, &n)| map[n].1.as_deref() == Some(old_names[o].as_str()));
    follows.then_some(map)
}

/// The select list that reads the old table's rows as the rebuilt table `new` holds them,
/// by `map` ([`carried_columns`]): each copied column, or the new column's default.
pub(crate) fn carried_select(new: &Table, map: &[(String, Option<String>)]) -> Vec<String> {
    map.iter()
        .map(|(n, from)| match from {
            Some(o) => sql::ident(o),
            None => new
                .columns
                .iter()
                .find(|c| &c.name == n)
                .and_then(|c| c.default.clone())
                .unwrap_or_else(|| "NULL".into()),
        })
        .collect()
}

/// What kind of migration turned `old` into `new`, carried by `map` ([`carried_columns`]):
///
/// ```text
/// table_renamed     ALTER TABLE … RENAME TO (columns unchanged)
/// column_renamed    ALTER TABLE … RENAME COLUMN (every column kept, some under a new name)
/// column_dropped    ALTER TABLE … DROP COLUMN (the other columns unchanged)
/// rebuilt           any other change of the definition (the 12-step procedure), rows carried
/// recreated         the row key changed: rows cannot be matched, the table is made anew
/// ```
fn rebuild_kind(
    old: &Table,
    new: &Table,
    map: Option<&[(String, Option<String>)]>,
) -> &'static str {
    let Some(map) = map else {
        return "recreated";
    };
    let old_count = old.data_names().map_or(0, |n| n.len());
    let carried = map.iter().filter(|(_, o)| o.is_some()).count();
    let renamed = map
        .iter()
        .any(|(n, o)| o.as_ref().is_some_and(|o| !o.eq_ignore_ascii_case(n)));
    let all_carried = carried == map.len();
    let types_same = |a: &Table, b: &Table| {
        b.columns.iter().all(|c| {
            a.columns
                .iter()
                .any(|o| o.decl_type == c.decl_type && o.pk == c.pk && o.generated == c.generated)
        })
    };
    // SQLite's ALTER edits the definition's text and nothing else: the other columns'
    // definitions (types, NOT NULL, CHECK…) must read as before, or it is a rebuild.
    let (old_parts, new_parts) = (column_parts(&old.sql), column_parts(&new.sql));
    let tail = |p: &str| {
        let p = p.trim_start();
        let end = p.find(char::is_whitespace).unwrap_or(p.len());
        p[end..].trim().to_owned()
    };
    let renamed_alike = match (&old_parts, &new_parts) {
        (Some(o), Some(n)) => {
            o.len() == n.len() && o.iter().zip(n).all(|(a, b)| tail(a) == tail(b))
        }
        _ => false,
    };
    let dropped_alike = match (&old_parts, &new_parts) {
        (Some(o), Some(n)) => {
            let kept: Vec<&String> = o
                .iter()
                .filter(|p| {
                    let first = p.split_whitespace().next().unwrap_or("");
                    let first =
                        first.trim_matches(|c| c == '"' || c == '`' || c == '[' || c == ']');
                    map.iter().any(|(_, from)| {
                        from.as_deref()
                            .is_some_and(|f| f.eq_ignore_ascii_case(first))
                    }) || !old
                        .columns
                        .iter()
                        .any(|c| c.name.eq_ignore_ascii_case(first))
                })
                .collect();
            kept.len() == n.len() && kept.iter().zip(n).all(|(a, b)| a.trim() == b.trim())
        }
        _ => false,
    };
    if old.name != new.name && all_carried && carried == old_count && !renamed {
        "table_renamed"
    } else if renamed && all_carried && carried == old_count && renamed_alike {
        "column_renamed"
    } else if !renamed
        && all_carried
        && carried < old_count
        && types_same(old, new)
        && dropped_alike
    {
        "column_dropped"
    } else {
        "rebuilt"
    }
}

/// Whether SQLite's own ALTER statements (`alters`, for a renamed table or a renamed or dropped
/// column) turn `old`'s definition into exactly `new`'s, tried on the definition alone in an
/// in-memory database. ALTER edits the text only where it must, so a definition that differs
/// elsewhere (the name quoted otherwise, spacing, a type) is a rebuild, which makes the text
/// exact: whoever applies the change must end with the very definition the other side has.
///
/// ```text
/// CREATE TABLE t(id, x, v)      -> CREATE TABLE t(id, v)       ALTER … DROP COLUMN "x": exact
/// CREATE TABLE t(id, x, v)      -> CREATE TABLE "t"(id, v)     not exact: rebuilt
/// ```
fn leaves_exactly(old: &Table, new: &Table, alters: &[String]) -> bool {
    let Ok(mem) = Connection::open_in_memory() else {
        return false;
    };
    let tried = mem.execute_batch(&old.sql).and_then(|()| {
        for q in alters {
            mem.execute_batch(q)?;
        }
        mem.query_row(
            "SELECT sql FROM sqlite_schema WHERE type = 'table' AND name = ?1",
            [&new.name],
            |r| r.get::<_, String>(0),
        )
    });
    tried.is_ok_and(|sql| sql == new.sql)
}

/// The column definitions and table constraints of a `CREATE TABLE` statement, trimmed: the
/// text between its first `(` and last `)`, split at top-level commas.
fn column_parts(create: &str) -> Option<Vec<String>> {
    let (open, close) = (create.find('(')?, create.rfind(')')?);
    let inner = create.get(open + 1..close)?;
    Some(
        split_top_level(inner)
            .into_iter()
            .map(|p| p.trim().to_owned())
            .collect(),
    )
}

/// Tables renamed between `old` and `new` (`ALTER TABLE … RENAME TO`), as new name -> old
/// name: a table gone from `old` and a table new in `new` whose definition is exactly what
/// RENAME TO leaves of the old one ([`renamed_form`]). When several gone tables fit, the one
/// on the same root page (RENAME TO keeps the table's B-tree where it is), else none: a
/// dropped and a created table, whose rows then come as a drop and a create.
///
/// ```text
/// old: CREATE TABLE memo(id INTEGER PRIMARY KEY, b)   new: CREATE TABLE "memo_t"(id INTEGER PRIMARY KEY, b)  -> memo_t <- memo
/// old: CREATE TABLE other(x)                          new: CREATE TABLE big(x)                               -> none
/// ```
fn renamed_tables(
    base: &Connection,
    old: &BTreeMap<&str, &Table>,
    work: &Connection,
    new: &BTreeMap<&str, &Table>,
) -> Result<BTreeMap<String, String>> {
    let roots = |conn: &Connection| -> Result<BTreeMap<String, i64>> {
        let mut st =
            conn.prepare("SELECT name, rootpage FROM sqlite_schema WHERE type = 'table'")?;
        let rows = st.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    };
    let gone: Vec<&&Table> = old
        .iter()
        .filter(|(n, _)| !new.contains_key(*n))
        .map(|(_, t)| t)
        .collect();
    let added: Vec<&&Table> = new
        .iter()
        .filter(|(n, _)| !old.contains_key(*n))
        .map(|(_, t)| t)
        .collect();
    let mut out = BTreeMap::new();
    if gone.is_empty() || added.is_empty() {
        return Ok(out);
    }
    let (old_roots, new_roots) = (roots(base)?, roots(work)?);
    for n in added {
        let fits: Vec<&&&Table> = gone
            .iter()
            .filter(|o| {
                renamed_form(&o.sql, &o.name, &n.name).as_deref() == Some(n.sql.as_str())
                    && !out.values().any(|v| v == &o.name)
            })
            .collect();
        let pick = match fits.as_slice() {
            [one] => Some(one),
            many => many.iter().find(|o| {
                old_roots.contains_key(&o.name) && old_roots.get(&o.name) == new_roots.get(&n.name)
            }),
        };
        if let Some(o) = pick {
            out.insert(n.name.clone(), o.name.clone());
        }
    }
    Ok(out)
}

/// The definition `ALTER TABLE old RENAME TO new` leaves of `old_sql`: the name after `CREATE
/// TABLE` replaced by the new one, double-quoted, and the table's references to itself
/// rewritten; the rest as it was. `None` when `old_sql` does not read `CREATE TABLE name…`.
///
/// ```text
/// CREATE TABLE memo (id, p REFERENCES memo)  ->  CREATE TABLE "memo_t" (id, p REFERENCES "memo_t")
/// ```
fn renamed_form(old_sql: &str, old_name: &str, new_name: &str) -> Option<String> {
    let after = old_sql.strip_prefix("CREATE TABLE ")?;
    let end = match after.chars().next()? {
        q @ ('"' | '`' | '\'') => {
            let mut chars = after.char_indices().skip(1).peekable();
            let mut end = None;
            while let Some((i, c)) = chars.next() {
                if c == q {
                    if chars.peek().map(|&(_, n)| n) == Some(q) {
                        chars.next();
                        continue;
                    }
                    end = Some(i + 1);
                    break;
                }
            }
            end?
        }
        '[' => after.find(']')? + 1,
        _ => after
            .find(|c: char| !(c.is_alphanumeric() || c == '_' || c == '$' || !c.is_ascii()))
            .unwrap_or(after.len()),
    };
    let form = format!("CREATE TABLE {}{}", sql::ident(new_name), &after[end..]);
    let itself = BTreeMap::from([(new_name.to_owned(), old_name.to_owned())]);
    Some(with_renamed_references(&form, &itself))
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
                    if let Some(skipped) = merge_pages(self.base, self.work, d, pick, consumer)? {
                        self.leaves_skipped.set(self.leaves_skipped.get() + skipped);
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
/// Returns how many leaves were passed over, or `None` to fall back to the SQL scan when
/// anything is out of the ordinary before the first change went out. Changes already given to
/// `consumer` cannot be taken back, so from then on a page that cannot be read is an error; a
/// record that does not decode (a short one from before an `ADD COLUMN`, say) is read through
/// SQL by its rowid instead, so it never stops a walk.
fn merge_pages(
    base: &Connection,
    work: &Connection,
    d: &TableDiff,
    pick: Pick,
    consumer: &mut Consumer<'_>,
) -> Result<Option<u64>> {
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
    let mut yielded = false;
    let walked = (|| {
        let (bdb, wdb) = (DbFile::open(base)?, DbFile::open(work)?);
        let sides = Sides {
            base: (bdb.scan(broot)?, base),
            work: (wdb.scan(wroot)?, work),
        };
        merge_records(sides, d, &records, pick, &mut |ch| {
            yielded = true;
            consumer(ch)
        })
    })();
    match walked {
        Ok(skipped) => Ok(Some(skipped)),
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
    sides: Sides<'_>,
    d: &TableDiff,
    records: &Records,
    pick: Pick,
    consumer: &mut Consumer<'_>,
) -> Result<u64, Stop> {
    let ((mut bs, bconn), (mut ws, wconn)) = (sides.base, sides.work);
    let mut give = |ch: RowChange| consumer(ch).map_err(Stop::Other);
    let mut skipped = 0;
    while pages::skip_shared_leaf(&mut bs, &mut ws)? {
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
                while pages::skip_shared_leaf(&mut bs, &mut ws)? {
                    skipped += 1;
                }
                b = bs.next_row()?;
                w = ws.next_row()?;
            }
        }
    }
    Ok(skipped)
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::changeset::Phase;

    /// As the sqlite3 shell shows after each `ALTER TABLE … RENAME TO`.
    #[test]
    fn renamed_form_is_what_rename_to_leaves() {
        for (old, name, new, want) in [
            (
                "CREATE TABLE memo (id INTEGER PRIMARY KEY, p REFERENCES memo(id))",
                "memo",
                "memo_t",
                "CREATE TABLE \"memo_t\" (id INTEGER PRIMARY KEY, p REFERENCES \"memo_t\"(id))",
            ),
            (
                "CREATE TABLE [br x](a)",
                "br x",
                "brx2",
                "CREATE TABLE \"brx2\"(a)",
            ),
            (
                "CREATE TABLE \"q\"\"t\"(a)",
                "q\"t",
                "q2",
                "CREATE TABLE \"q2\"(a)",
            ),
        ] {
            assert_eq!(renamed_form(old, name, new).as_deref(), Some(want), "{old}");
        }
    }

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
        let d = Diff::new(base, work, &Filter::default()).unwrap();
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

    /// Random edits to a page copy of the base, few and many: the page walk, leaves passed
    /// over, short records and all, finds exactly what the SQL merge join finds, phase by
    /// phase.
    #[test]
    fn random_edits_diff_like_the_sql_merge_join() {
        let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = move |n: u64| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed % n
        };
        let mut skipped_somewhere = false;
        for round in 0..12 {
            let count = [1, 3, 10, 60][round % 4];
            let mut edits = String::new();
            for _ in 0..count {
                let id = next(6200);
                let value = match next(6) {
                    0 => "NULL".to_owned(),
                    1 => format!("{}", next(1000)),
                    2 => format!("{}.5", next(1000)),
                    3 => format!("'text {}'", next(1000)),
                    4 => format!("randomblob({})", 1 + next(30)),
                    _ => format!("zeroblob({})", 4000 + next(12000)),
                };
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

    #[test]
    fn splits_column_definitions() {
        assert_eq!(
            split_top_level("a INT, b TEXT DEFAULT 'x,y', c CHECK (c IN (1,2))"),
            vec!["a INT", "b TEXT DEFAULT 'x,y'", "c CHECK (c IN (1,2))"]
        );
    }
}
