//! The page walk: the merge join of two tables' raw B-tree leaves ([`merge_pages`]), which
//! compares record bytes, decodes only rows whose bytes differ, and passes over leaves both
//! files share, or, given the working copy's leaves from the last push, reads only the leaves
//! that changed ([`merge_changed`]). It is the fast path of [`super::Diff`]'s reads, kept apart
//! from the SQL merge join it must agree with, to which it falls back when anything is out of
//! the ordinary.

use std::cmp::Ordering;
use std::collections::{HashMap, HashSet, VecDeque};

use rusqlite::Connection;

use super::{owned, Consumer};
use crate::changeset::{Pick, RowChange, TableDiff};
use crate::pages::{self, DbFile, Layout, Leaf, PageError, Scan};
use crate::schema::RowKey;
use crate::sql;
use crate::value::Value;
use crate::{Error, Result};

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
pub(super) fn merge_pages(
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
    let mut beside = leaves.beside;
    let walked = (|| {
        let wdb = DbFile::open(work)?;
        let layout = (wdb.page_size() as u32, wdb.usable() as u32);
        let mut now = None;
        if let Some((page_size, usable, old)) = leaves.known {
            if (page_size, usable) == layout {
                let leaves = wdb.sum_leaves(wroot, beside.take())?;
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
pub(super) struct Leaves<'a> {
    /// Keep the leaves read.
    pub(super) summing: bool,
    /// The table's leaves when the working copy held exactly the base's rows, with the page
    /// size and usable bytes of the file they were read from.
    pub(super) known: Option<(u32, u32, &'a Vec<Leaf>)>,
    /// A second connection to the working copy that reads half of the leaves
    /// ([`crate::pages::DbFile::sum_leaves`]).
    pub(super) beside: Option<&'a mut Connection>,
}

/// What a page walk did: leaves passed over, and the working copy's leaves when asked, with
/// its page size and usable bytes.
pub(super) struct Walk {
    pub(super) skipped: u64,
    pub(super) leaves: Option<(u32, u32, Vec<Leaf>)>,
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
