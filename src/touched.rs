//! Which rows a mirror advance may have changed, read off the pages it wrote.
//!
//! A row can only differ between the mirror before and after an advance if it sits on a table
//! leaf that was written, or on a leaf that joined or left its table's B-tree (a freed leaf need
//! not be written). So the rows to compare are the cells of those leaves: read from the mirror
//! before the advance is applied ([`Before`]) for the old rows, and after it for the new. A
//! leaf that left the tree without being written still holds its old bytes afterwards. Interior
//! pages, found by walking each B-tree down to the level above its leaves, are few and cheap.
//!
//! Every written page must be accounted for: a page of some B-tree, a freelist page, or an
//! overflow page of a cell on a written leaf. Anything else (an overflow page rewritten in
//! place under an unchanged leaf, a pointer map), a changed schema, or a written page of a
//! WITHOUT ROWID table or of a virtual table's shadow table, and the answer is
//! [`Touched::Everything`]: the caller then compares whole tables.

use std::collections::{BTreeMap, BTreeSet};

use rusqlite::Connection;

use crate::pages::{be16, be32, children_of, local_payload, varint, DbFile, PageError, PageSet};
use crate::schema::{self, RowKey};
use crate::Result;

/// The rows of one table to compare.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rows {
    /// These rowids, sorted.
    Ids(Vec<i64>),
    /// So many of its leaves were written that reading the whole table is cheaper.
    All,
}

/// What a diff of base and mirror must look at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Touched {
    /// Only these tables, and only these rows of them.
    Tables(BTreeMap<String, Rows>),
    /// Everything, for this reason.
    Everything(String),
}

/// Past this share of a table's leaves written, the whole table is read instead.
const WHOLE_TABLE_SHARE: usize = 4;

/// What the mirror held before an advance: its catalog, each rowid table's leaves, and the
/// rowids on the leaves the advance overwrites.
pub struct Before {
    catalog: Vec<(String, String, i64)>,
    tables: BTreeMap<u32, OldTable>,
    written: PageSet,
    /// The pages on which the base may differ from the mirror before the advance (`None`:
    /// not known), and the mirror's length in pages then: pages past it are the base's alone.
    apart: Option<PageSet>,
    pages: u32,
    /// Whether the base holds the mirror's rows before the advance, every one of them: then a
    /// row whose cell did not change is the base's row, and only rows whose cells changed are
    /// compared.
    exact: bool,
}

impl Before {
    /// Whether the base's page `p` may hold other rows than the mirror's page `p` held.
    fn base_apart(&self, p: u32) -> bool {
        p > self.pages || self.apart.as_ref().is_none_or(|a| a.contains(p))
    }
}

/// A rowid table's B-tree before the advance.
struct OldTable {
    /// Its leaves in key order, and the same as a set.
    leaves: Vec<u32>,
    leaf_set: PageSet,
    /// The rows on the leaves the advance overwrites; `None` when it overwrites so many of
    /// them that the table is read whole ([`mostly`]), which needs none of its rows.
    rows: Option<Cells>,
}

/// Whether `part` leaves of `whole` are so many that reading the whole table is cheaper than
/// comparing their rows one by one ([`WHOLE_TABLE_SHARE`]).
///
/// ```text
/// 1 % of 1M rows updated: every leaf written  -> mostly: the table is read whole, and the
///                                                cells of its leaves are never kept
/// 100 rows updated: 100 leaves of 14,000      -> not: those 100 leaves' rows are compared
/// ```
fn mostly(part: usize, whole: usize) -> bool {
    part * WHOLE_TABLE_SHARE > whole
}

/// The rows on some leaves of a table: each rowid with its cell's bytes (the record's size,
/// the rowid and the record, all on the leaf), or `None` where the bytes are not kept: a
/// record that spills onto overflow pages (an update can rewrite those pages under a cell of
/// the same bytes), every row when the base may hold other rows than the mirror (after our
/// push: the base holds our rows, the mirror the remote's before them, and a row the
/// teammate sets back, or one we inserted and they delete, looks unchanged in the mirror), or
/// past [`CELL_BYTES`]. A row whose bytes are the same before and after the advance is then
/// the same row in the base and after; one without bytes is compared by the diff.
///
/// ```text
/// leaf 7 before: 41 -> 05 29 ..'ann'   42 -> 05 2a ..'bob'
/// leaf 7 after:  41 -> 05 29 ..'ann'   42 -> 05 2a ..'bea'   43 -> 05 2b ..'cy'
/// rows to compare: 42 (other bytes), 43 (new); not 41
/// ```
struct Cells {
    rows: BTreeMap<i64, Option<Vec<u8>>>,
    /// Bytes kept so far, against [`CELL_BYTES`].
    kept: usize,
    /// Whether bytes are kept at all.
    keep: bool,
}

impl Cells {
    fn new(keep: bool) -> Cells {
        Cells {
            rows: BTreeMap::new(),
            kept: 0,
            keep,
        }
    }

    fn add(&mut self, rowid: i64, cell: Option<&[u8]>) {
        let keep = self.keep;
        let cell = cell
            .filter(|c| keep && self.kept + c.len() <= CELL_BYTES)
            .map(|c| {
                self.kept += c.len();
                c.to_vec()
            });
        match self.rows.entry(rowid) {
            std::collections::btree_map::Entry::Vacant(v) => {
                v.insert(cell);
            }
            // One rowid met twice (a leaf read both as left and as joined, or a damaged
            // tree): compared by the diff unless both say the same.
            std::collections::btree_map::Entry::Occupied(mut o) => {
                if *o.get() != cell {
                    o.insert(None);
                }
            }
        }
    }
}

/// The rowids whose rows may differ between the rows `before` (in parts) and `after`.
fn differing(before: &[&Cells], after: &Cells) -> Vec<i64> {
    let mut ids = BTreeSet::new();
    for (id, cell) in before.iter().flat_map(|c| &c.rows) {
        match (cell, after.rows.get(id)) {
            (Some(a), Some(Some(b))) if a == b => {}
            _ => {
                ids.insert(*id);
            }
        }
    }
    ids.extend(
        after
            .rows
            .keys()
            .filter(|id| !before.iter().any(|c| c.rows.contains_key(id))),
    );
    ids.into_iter().collect()
}

/// The cells' bytes kept for comparing, on each side of one advance: past this, rows are
/// compared by the diff instead (memory stays bounded however many leaves the log wrote).
const CELL_BYTES: usize = 16 << 20;

impl Before {
    /// Reads the mirror about to be advanced by writing the pages `written`; `apart` are the
    /// pages on which the base may differ from it (`None`: any page; see
    /// [`crate::shared_pages::kept_apart`]). When that is page 1 alone (whose header the base
    /// writes its own way), the base holds every row of the mirror, and only the rows whose
    /// cells the advance changes are compared.
    pub fn read(
        mirror: &Connection,
        written: BTreeSet<u32>,
        apart: Option<PageSet>,
    ) -> Result<Result<Before, String>> {
        match read_before(mirror, written, apart) {
            Ok(b) => Ok(Ok(b)),
            Err(Walk::Page(PageError::Sqlite(e))) => Err(e.into()),
            Err(Walk::Page(e)) => Ok(Err(e.to_string())),
            Err(Walk::Other(e)) => Err(e),
        }
    }
}

/// Finds the rows the advance from `before` to `mirror` (read inside a read transaction) can
/// have changed against `base`.
///
/// The base holds the mirror's rows before the advance, but for our pushes since: those rows
/// are on pages the base does not share with the mirror ([`Before::read`]'s `apart`), and a row
/// we inserted that the teammate then deleted is in neither the mirror before nor after, only
/// in the base. So the rows on those of the base's leaves are compared too.
///
/// ```text
/// base at the mirror's point X; we push row 9001 (base page 40, kept apart)
/// log after X: our insert of 9001 on page 40, the teammate's delete of it
/// mirror at X: page 40 without 9001    mirror after: page 40 without 9001
/// rows to compare: those on page 40 of the mirror before and after, and of the base: 9001
/// ```
pub fn touched(before: &Before, mirror: &Connection, base: &Connection) -> Result<Touched> {
    match walk(before, mirror, base) {
        Ok(t) => Ok(t),
        Err(Walk::Page(PageError::Sqlite(e))) => Err(e.into()),
        Err(Walk::Page(e)) => Ok(Touched::Everything(e.to_string())),
        Err(Walk::Other(e)) => Err(e),
    }
}

enum Walk {
    Page(PageError),
    Other(crate::Error),
}

impl From<PageError> for Walk {
    fn from(e: PageError) -> Walk {
        Walk::Page(e)
    }
}

impl From<rusqlite::Error> for Walk {
    fn from(e: rusqlite::Error) -> Walk {
        Walk::Page(PageError::Sqlite(e))
    }
}

fn everything(why: impl Into<String>) -> std::result::Result<Touched, Walk> {
    Ok(Touched::Everything(why.into()))
}

/// `sqlite_schema` as (type and SQL, name, root page), in a fixed order.
fn catalog(c: &Connection) -> rusqlite::Result<Vec<(String, String, i64)>> {
    let mut st =
        c.prepare("SELECT type, name, rootpage, sql FROM sqlite_schema ORDER BY type, name")?;
    let rows = st.query_map([], |r| {
        Ok((
            format!(
                "{}\0{}",
                r.get::<_, String>(0)?,
                r.get::<_, Option<String>>(3)?.unwrap_or_default()
            ),
            r.get::<_, String>(1)?,
            r.get::<_, Option<i64>>(2)?.unwrap_or(0),
        ))
    })?;
    rows.collect()
}

/// Every B-tree of the catalog: whether it is a table's, its name and its root page.
fn roots(catalog: &[(String, String, i64)]) -> impl Iterator<Item = (bool, &str, u32)> {
    catalog
        .iter()
        .filter(|(_, _, root)| *root > 0)
        .map(|(ty, name, root)| (ty.starts_with("table\0"), name.as_str(), *root as u32))
        .chain([(true, "sqlite_schema", 1)])
}

fn read_before(
    mirror: &Connection,
    written: BTreeSet<u32>,
    apart: Option<PageSet>,
) -> std::result::Result<Before, Walk> {
    let written: PageSet = written.into_iter().collect();
    let exact = apart.as_ref().is_some_and(|a| a.iter().all(|p| p == 1));
    let pages: u32 = mirror.query_row("PRAGMA page_count", [], |r| r.get(0))?;
    let catalog = catalog(mirror)?;
    let db = DbFile::open(mirror)?;
    let mut page = Vec::new();
    let mut tables = BTreeMap::new();
    for (_, _, root) in roots(&catalog) {
        let tree = Tree::walk(&db, root)?;
        if tree.index {
            continue;
        }
        let overwritten: Vec<u32> = tree
            .leaves
            .iter()
            .copied()
            .filter(|&p| written.contains(p))
            .collect();
        // Keeping the cells of most of a table's leaves (a copy of each, some 70 a leaf) cost
        // more than the whole table's read that follows anyway.
        let rows = match mostly(overwritten.len(), tree.leaves.len()) {
            true => None,
            false => {
                let mut rows = Cells::new(exact);
                for &p in &overwritten {
                    cells(&db, p, &mut page, Some(&mut rows), None)?;
                }
                Some(rows)
            }
        };
        let leaf_set = tree.leaves.iter().copied().collect();
        tables.insert(
            root,
            OldTable {
                leaves: tree.leaves,
                leaf_set,
                rows,
            },
        );
    }
    Ok(Before {
        catalog,
        tables,
        written,
        apart,
        pages,
        exact,
    })
}

fn walk(
    before: &Before,
    mirror: &Connection,
    base: &Connection,
) -> std::result::Result<Touched, Walk> {
    let written = &before.written;
    if before.apart.is_none() {
        return everything("which pages the base shares with the mirror is not known");
    }
    // The base's file and catalog, read only when it keeps leaves apart from the mirror's.
    let base_side = match before.exact {
        true => None,
        false => Some((DbFile::open(base)?, catalog(base)?)),
    };
    let objects = catalog(mirror)?;
    if before.catalog != objects {
        return everything("the schema changed");
    }
    let mdb = DbFile::open(mirror)?;
    let mut page = Vec::new();
    mdb.read(1, &mut page)?;
    if be32(&page, 52).unwrap_or(1) != 0 {
        return everything("the database keeps pointer maps (auto-vacuum)");
    }
    let pages: u32 = mirror.query_row("PRAGMA page_count", [], |r| r.get(0))?;
    let tables = schema::load(mirror).map_err(|e| Walk::Other(e.into()))?;
    let kind = |name: &str| tables.tables.iter().find(|t| t.name == name);

    // Every page met: each written page must be one of them.
    let mut accounted = freelist(&mdb, pages)?;
    let mut out = BTreeMap::new();
    for (is_table, name, root) in roots(&objects) {
        let new = Tree::walk(&mdb, root)?;
        accounted.extend(new.interior.iter().chain(&new.leaves).copied());
        let old = before.tables.get(&root);
        if new.index || old.is_none() {
            let touched = new
                .interior
                .iter()
                .chain(&new.leaves)
                .any(|&p| written.contains(p));
            if is_table && (touched || old.is_some()) {
                return everything(format!("WITHOUT ROWID table {name:?} changed"));
            }
            continue;
        }
        let Some(old) = old else {
            continue;
        };
        let new_leaves: PageSet = new.leaves.iter().copied().collect();
        let new_cand: Vec<u32> = new
            .leaves
            .iter()
            .copied()
            .filter(|&p| written.contains(p) || !old.leaf_set.contains(p))
            .collect();
        // Leaves that left the tree unwritten still hold their old cells.
        let gone: Vec<u32> = old
            .leaves
            .iter()
            .copied()
            .filter(|&p| !written.contains(p) && !new_leaves.contains(p))
            .collect();
        let old_rows = old.rows.as_ref();
        if new_cand.is_empty() && gone.is_empty() && old_rows.is_some_and(|r| r.rows.is_empty()) {
            continue;
        }
        // For a table whose rows are not compared one by one: the written leaves are read only
        // for the overflow pages of their cells, which every written page must be accounted for.
        let account_overflow = |page: &mut Vec<u8>, accounted: &mut PageSet| {
            new_cand
                .iter()
                .try_for_each(|&p| cells(&mdb, p, page, None, Some(accounted)))
        };
        match kind(name) {
            // Internal tables and sqlite_sequence: no rows of theirs are diffed here.
            None => {
                account_overflow(&mut page, &mut accounted)?;
                continue;
            }
            Some(t) if t.shadow || t.key == RowKey::Virtual => {
                return everything(format!("shadow table {name:?} of a virtual table changed"))
            }
            Some(t) if !matches!(t.key, RowKey::Rowid { .. }) => {
                return everything(format!("table {name:?} has no rowid"))
            }
            Some(_) => {}
        }
        if gone.iter().any(|p| *p > pages) {
            return everything("the file shrank past a freed leaf");
        }
        let old_cand = old.leaves.iter().filter(|&&p| written.contains(p)).count() + gone.len();
        let whole = mostly(
            old_cand + new_cand.len(),
            old.leaves.len() + new.leaves.len(),
        );
        let old_rows = match old_rows {
            Some(rows) if !whole => rows,
            _ => {
                account_overflow(&mut page, &mut accounted)?;
                out.insert(name.to_owned(), Rows::All);
                continue;
            }
        };
        let mut after = Cells::new(before.exact);
        for &p in &new_cand {
            cells(&mdb, p, &mut page, Some(&mut after), Some(&mut accounted))?;
        }
        // The rows before: those on the leaves written, and on those that left unwritten.
        let mut left = Cells::new(before.exact);
        for &p in &gone {
            cells(&mdb, p, &mut page, Some(&mut left), None)?;
        }
        // The rows on the base's leaves kept apart from the mirror's.
        let mut ours = Cells::new(false);
        if let Some((base_db, base_catalog)) = &base_side {
            for (_, _, root) in roots(base_catalog).filter(|(t, n, _)| *t && *n == name) {
                let tree = Tree::walk(base_db, root)?;
                for &p in tree.leaves.iter().filter(|&&p| before.base_apart(p)) {
                    cells(base_db, p, &mut page, Some(&mut ours), None)?;
                }
            }
        }
        out.insert(
            name.to_owned(),
            Rows::Ids(differing(&[old_rows, &left, &ours], &after)),
        );
    }
    if let Some(p) = written
        .iter()
        .find(|&p| p <= pages && !accounted.contains(p))
    {
        return everything(format!("page {p} changed outside every B-tree walked"));
    }
    Ok(Touched::Tables(out))
}

/// A B-tree's pages: interior ones, then its leaves (read only from their parents).
struct Tree {
    interior: Vec<u32>,
    leaves: Vec<u32>,
    index: bool,
}

impl Tree {
    /// Walks level by level; all leaves of a B-tree are at one depth, so the first child of a
    /// level says whether the level is made of leaves.
    fn walk(db: &DbFile<'_>, root: u32) -> std::result::Result<Tree, PageError> {
        let mut page = Vec::new();
        db.read(root, &mut page)?;
        let (leaf, index) = page_kind(&page, root)?;
        let mut tree = Tree {
            interior: Vec::new(),
            leaves: Vec::new(),
            index,
        };
        if leaf {
            tree.leaves.push(root);
            return Ok(tree);
        }
        let mut level = vec![root];
        for _ in 0..64 {
            tree.interior.extend(&level);
            let mut children = Vec::new();
            for &p in &level {
                db.read(p, &mut page)?;
                children_of(&page, p, &mut children)?;
            }
            let Some(&first) = children.first() else {
                return Err(PageError::Layout("an interior page without children"));
            };
            db.read(first, &mut page)?;
            if page_kind(&page, first)?.0 {
                tree.leaves = children;
                return Ok(tree);
            }
            level = children;
        }
        Err(PageError::Layout("B-tree too deep"))
    }
}

/// Whether a B-tree page is a leaf, and whether it belongs to an index B-tree.
fn page_kind(page: &[u8], n: u32) -> std::result::Result<(bool, bool), PageError> {
    match page.get(if n == 1 { 100 } else { 0 }) {
        Some(0x0d) => Ok((true, false)),
        Some(0x05) => Ok((false, false)),
        Some(0x0a) => Ok((true, true)),
        Some(0x02) => Ok((false, true)),
        _ => Err(PageError::Layout("not a B-tree page")),
    }
}

/// Adds the rows of table leaf `n` to `rows`, when given; with `overflow`, marks the overflow
/// pages of its cells.
fn cells(
    db: &DbFile<'_>,
    n: u32,
    page: &mut Vec<u8>,
    mut rows: Option<&mut Cells>,
    overflow: Option<&mut PageSet>,
) -> std::result::Result<(), PageError> {
    db.read(n, page)?;
    let hdr = if n == 1 { 100 } else { 0 };
    let bad = || PageError::Layout("table leaf cell");
    let count = be16(page, hdr + 3).ok_or_else(bad)?;
    let mut chains = Vec::new();
    for i in 0..count {
        let at = be16(page, hdr + 8 + 2 * i).ok_or_else(bad)?;
        let (size, a) = varint(page.get(at..).unwrap_or(&[])).ok_or_else(bad)?;
        let (rowid, b) = varint(page.get(at + a..).unwrap_or(&[])).ok_or_else(bad)?;
        let size = usize::try_from(size).map_err(|_| bad())?;
        let local = local_payload(db.usable(), size);
        let whole = (local == size)
            .then(|| page.get(at..at + a + b + size))
            .flatten();
        if local == size && whole.is_none() {
            return Err(bad());
        }
        if let Some(rows) = rows.as_deref_mut() {
            rows.add(rowid, whole);
        }
        if overflow.is_some() && local < size {
            chains.push((
                be32(page, at + a + b + local).ok_or_else(bad)?,
                size - local,
            ));
        }
    }
    if let Some(acc) = overflow {
        let per_page = db.usable() - 4;
        let mut buf = Vec::new();
        for (mut next, mut left) in chains {
            while left > 0 {
                if next == 0 || !acc.insert(next) {
                    return Err(PageError::Layout("overflow chain"));
                }
                db.read(next, &mut buf)?;
                next = be32(&buf, 0).ok_or_else(bad)?;
                left = left.saturating_sub(per_page);
            }
        }
    }
    Ok(())
}

/// Every freelist page: trunks and the leaves they list.
fn freelist(db: &DbFile<'_>, pages: u32) -> std::result::Result<PageSet, PageError> {
    let mut page = Vec::new();
    db.read(1, &mut page)?;
    let bad = || PageError::Layout("freelist");
    let mut trunk = be32(&page, 32).ok_or_else(bad)?;
    let mut out = PageSet::default();
    while trunk != 0 {
        if trunk > pages || !out.insert(trunk) {
            return Err(bad());
        }
        db.read(trunk, &mut page)?;
        let n = be32(&page, 4).ok_or_else(bad)? as usize;
        for i in 0..n {
            out.insert(be32(&page, 8 + 4 * i).ok_or_else(bad)?);
        }
        trunk = be32(&page, 0).ok_or_else(bad)?;
    }
    Ok(out)
}
