//! Reading a rowid table's B-tree page by page, so a diff can compare rows as raw record bytes
//! and decode only the rows that differ.
//!
//! SQLite's record format is canonical for a given value, so two identical record payloads are
//! two identical rows; that turns the diff's hot loop into a `memcmp`. Only rows whose bytes
//! differ are decoded (and then compared as values, so a different encoding of the same row is
//! not a change). The layout follows <https://www.sqlite.org/fileformat2.html>.
//!
//! Pages come through the connection's own pager, from the `sqlite_dbpage` virtual table, never
//! from a file handle of ours: POSIX locks belong to the process, and closing any descriptor on
//! a database file drops every lock SQLite holds on it, which lets an app write under an open
//! transaction and corrupts the file. Read inside the connection's read transaction, the pages
//! are that transaction's snapshot, WAL frames included. Anything unusual (another text
//! encoding, generated columns, short records, a build without `sqlite_dbpage`) makes the
//! caller fall back to the SQL scan.

use rusqlite::{CachedStatement, Connection, Statement};
use serde::{Deserialize, Serialize};

use crate::value::Value;

const PAGE_SQL: &str = "SELECT data FROM sqlite_dbpage WHERE pgno = ?1";

/// The bits of the database header a B-tree walk needs, read through `conn`.
pub struct DbFile<'c> {
    conn: &'c Connection,
    page_size: usize,
    usable: usize,
    /// Header bytes 18–19 say rollback-journal mode.
    rollback: bool,
}

/// What a database file's header says of the file's state, to tell cheaply that nobody wrote
/// it since a known point, so that what was learned of its rows then still holds.
///
/// In rollback-journal mode SQLite adds one to the file change counter (header offset 24) in
/// every transaction that writes the file, whichever connection or process commits it. A
/// restore through the backup API also moves the schema cookie (offset 40); the page count
/// (28) and the free-list count (36) come along as a cross-check. In WAL mode commits leave the
/// counter alone, so a file in WAL mode has no stamp; and a file only gets into WAL mode by a
/// write that moves the counter, so a stamp taken in rollback mode also notices a trip through
/// WAL mode.
///
/// ```text
/// stamp S of a file in rollback mode
/// any connection: UPDATE t SET v = 1          -> stamp S' != S (counter + 1)
/// any connection: BEGIN; SELECT …; COMMIT     -> stamp S
/// any connection: PRAGMA journal_mode = WAL   -> no stamp
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stamp {
    change_counter: u32,
    schema_cookie: u32,
    pages: u32,
    free_pages: u32,
}

/// The stamp of `conn`'s main database in its current read transaction; `None` for a file in
/// WAL mode or a build that cannot read raw pages. Only the header counts: a database that
/// holds nothing yet (no text encoding chosen, as an empty remote's base) has a stamp too.
pub fn stamp(conn: &Connection) -> std::result::Result<Option<Stamp>, rusqlite::Error> {
    let read = conn
        .prepare_cached(PAGE_SQL)
        .map_err(PageError::Unavailable)
        .and_then(|mut pages| Header::read(&mut pages));
    match read {
        Ok(header) => Ok(header.stamp),
        Err(PageError::Sqlite(e)) => Err(e),
        Err(_) => Ok(None),
    }
}

/// Page 1, checked to be a SQLite 3 file of a usable page size, and the stamp it carries.
struct Header {
    page: Vec<u8>,
    page_size: usize,
    reserved: usize,
    /// Bytes 18 and 19 are 1: rollback-journal mode.
    rollback: bool,
    stamp: Option<Stamp>,
}

impl Header {
    fn read(pages: &mut Statement<'_>) -> Result<Header> {
        let mut header = Vec::new();
        read_page(pages, 1, None, &mut header)?;
        if header.get(..16) != Some(b"SQLite format 3\0") {
            return Err(PageError::Layout("not a SQLite 3 file"));
        }
        let raw = u16::from_be_bytes([header[16], header[17]]) as usize;
        let page_size = if raw == 1 { 65536 } else { raw };
        let reserved = header[20] as usize;
        if !page_size.is_power_of_two()
            || !(512..=65536).contains(&page_size)
            || page_size - reserved < 480
            || header.len() != page_size
        {
            return Err(PageError::Layout("page size"));
        }
        // Bytes 18 and 19 are 1 in rollback-journal mode, 2 in WAL mode.
        let rollback = header[18] == 1 && header[19] == 1;
        let stamp = rollback
            .then(|| {
                Some(Stamp {
                    change_counter: be32(&header, 24)?,
                    schema_cookie: be32(&header, 40)?,
                    pages: be32(&header, 28)?,
                    free_pages: be32(&header, 36)?,
                })
            })
            .flatten();
        Ok(Header {
            page: header,
            page_size,
            reserved,
            rollback,
            stamp,
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum PageError {
    #[error(transparent)]
    Sqlite(#[from] rusqlite::Error),
    /// This SQLite was built without `SQLITE_ENABLE_DBPAGE_VTAB`.
    #[error("raw pages cannot be read: {0}")]
    Unavailable(rusqlite::Error),
    #[error("unexpected database file layout: {0}")]
    Layout(&'static str),
}

impl PageError {
    /// True when the SQL scan should be used instead: the file or the build is out of the
    /// ordinary, not the database failing.
    pub fn falls_back(&self) -> bool {
        !matches!(self, PageError::Sqlite(_))
    }
}

type Result<T> = std::result::Result<T, PageError>;

impl<'c> DbFile<'c> {
    /// Reads the header of `conn`'s main database. Call it inside a read transaction, which
    /// every later page read then shares.
    pub fn open(conn: &'c Connection) -> Result<DbFile<'c>> {
        let mut pages = conn
            .prepare_cached(PAGE_SQL)
            .map_err(PageError::Unavailable)?;
        let Header {
            page: header,
            page_size,
            reserved,
            rollback,
            ..
        } = Header::read(&mut pages)?;
        // Text encoding 1 is UTF-8, the only one decoded here.
        if u32::from_be_bytes([header[56], header[57], header[58], header[59]]) != 1 {
            return Err(PageError::Layout("text encoding is not UTF-8"));
        }
        Ok(DbFile {
            conn,
            page_size,
            usable: page_size - reserved,
            rollback,
        })
    }

    /// Reads page `n` into `buf`.
    pub fn read(&self, n: u32, buf: &mut Vec<u8>) -> Result<()> {
        let mut pages = self.conn.prepare_cached(PAGE_SQL)?;
        read_page(&mut pages, n, Some(self.page_size), buf)
    }

    pub fn page_size(&self) -> usize {
        self.page_size
    }

    /// The bytes of a page that hold content (the page size less the reserved bytes).
    pub fn usable(&self) -> usize {
        self.usable
    }

    /// Every leaf of the table B-tree rooted at `root`, in key order, as a [`Scan::summing`]
    /// walk keeps them.
    ///
    /// With `beside`, a second connection to this file outside any transaction, half of the
    /// root's children are walked on it, in a thread of its own: reading the pages is most of
    /// a push's cost in a large database, and two cores read twice as many. Pass it only while
    /// ours is in a read transaction that wrote nothing; `beside` then reads the same snapshot.
    /// In rollback-journal mode the shared lock of ours keeps any writer from committing until
    /// `beside` has read its pages; in WAL mode `beside` opens the snapshot of ours
    /// ([`WalSnapshot`]). If `beside` cannot read (a writer waiting for its exclusive lock
    /// refuses new readers, say), its half is walked here after ours.
    ///
    /// ```text
    /// root 2: children 3 4 5 6 (interior)      ours:   3 4  -> leaves 10..19, 20..29
    ///                                           beside: 5 6  -> leaves 30..39, 40..49
    /// result: the leaves of 3, 4, 5, 6, in that order, as one walk from 2 gives them
    /// ```
    pub fn sum_leaves(&self, root: u32, beside: Option<&mut Connection>) -> Result<Vec<Leaf>> {
        let Some(beside) = beside else {
            return self.walk_leaves(&[root]);
        };
        let mut page = Vec::new();
        self.read(root, &mut page)?;
        let top = Frame::new(root, page)?;
        if top.leaf {
            return self.walk_leaves(&[root]);
        }
        let snapshot = match self.rollback {
            true => None,
            false => match WalSnapshot::of(self.conn) {
                Some(snapshot) => Some(snapshot),
                None => return self.walk_leaves(&[root]),
            },
        };
        let mut children = Vec::new();
        children_of(&top.page, root, &mut children)?;
        let (ours, theirs) = children.split_at(children.len() / 2);
        let layout = (self.page_size, self.usable);
        let (mine, helped) = std::thread::scope(|s| {
            let helper = s.spawn(move || -> Result<Vec<Leaf>> {
                if snapshot.is_some() {
                    // A connection opens the WAL on its first read: until then it has none to
                    // open a snapshot in, and `sqlite3_snapshot_open` fails (SQLITE_ERROR).
                    beside.query_row("PRAGMA schema_version", [], |_| Ok(()))?;
                }
                // Its first read takes the shared lock; it ends with the walk, so that no lock
                // of this connection outlasts it (a pull writes the working copy next).
                let read = beside.transaction()?;
                if let Some(snapshot) = snapshot {
                    snapshot.open_in(&read)?;
                }
                let db = DbFile::open(&read)?;
                if (db.page_size, db.usable) != layout {
                    return Err(PageError::Layout(
                        "the second reader sees another page layout",
                    ));
                }
                db.walk_leaves(theirs)
            });
            (self.walk_leaves(ours), helper.join())
        });
        let mut leaves = mine?;
        match helped {
            Ok(Ok(more)) => leaves.extend(more),
            _ => leaves.extend(self.walk_leaves(theirs)?),
        }
        Ok(leaves)
    }

    /// The leaves of the B-trees rooted at `roots`, one after the other.
    fn walk_leaves(&self, roots: &[u32]) -> Result<Vec<Leaf>> {
        let mut leaves = Vec::new();
        for &root in roots {
            let mut walk = self.scan(root)?.summing();
            while walk.pass_leaf()? {}
            leaves.extend(walk.take_leaves().unwrap_or_default());
        }
        Ok(leaves)
    }

    /// Walks the table B-tree rooted at `root` in rowid order.
    pub fn scan(&self, root: u32) -> Result<Scan<'c>> {
        Ok(Scan {
            pages: self.conn.prepare_cached(PAGE_SQL)?,
            page_size: self.page_size,
            usable: self.usable,
            stack: Vec::new(),
            root: Some(root),
            spare: Vec::new(),
            payload: Vec::new(),
            leaves: None,
        })
    }
}

/// The snapshot a read transaction on a WAL-mode file reads (`sqlite3_snapshot_get`): another
/// connection to the file that opens it (`sqlite3_snapshot_open`) reads exactly the same
/// pages, whatever was committed since. The read transaction it was taken in keeps it
/// available: no checkpoint goes past a snapshot still read.
struct WalSnapshot(*mut rusqlite::ffi::sqlite3_snapshot);

// SAFETY: a snapshot is a plain allocation of SQLite's, tied to no thread or connection; it is
// used by one thread at a time (it moves into the thread that opens it, and is freed there).
unsafe impl Send for WalSnapshot {}

impl WalSnapshot {
    /// The snapshot `conn` reads; `None` unless it is in a read transaction on a file in WAL
    /// mode.
    fn of(conn: &Connection) -> Option<WalSnapshot> {
        let mut snapshot = std::ptr::null_mut();
        // SAFETY: the handle is `conn`'s, alive for the call; SQLite writes the pointer only
        // on success.
        let rc = unsafe {
            rusqlite::ffi::sqlite3_snapshot_get(conn.handle(), c"main".as_ptr(), &mut snapshot)
        };
        (rc == rusqlite::ffi::SQLITE_OK && !snapshot.is_null()).then_some(WalSnapshot(snapshot))
    }

    /// Makes `conn`, inside a transaction that has read nothing yet, read this snapshot.
    fn open_in(&self, conn: &Connection) -> Result<()> {
        // SAFETY: both pointers are alive for the call.
        let rc = unsafe {
            rusqlite::ffi::sqlite3_snapshot_open(conn.handle(), c"main".as_ptr(), self.0)
        };
        match rc {
            rusqlite::ffi::SQLITE_OK => Ok(()),
            rc => Err(PageError::Sqlite(rusqlite::Error::SqliteFailure(
                rusqlite::ffi::Error::new(rc),
                Some("opening the first reader's snapshot".into()),
            ))),
        }
    }
}

impl Drop for WalSnapshot {
    fn drop(&mut self) {
        // SAFETY: the pointer came from `sqlite3_snapshot_get` and is freed once, here.
        unsafe { rusqlite::ffi::sqlite3_snapshot_free(self.0) }
    }
}

/// Reads page `n` into `buf` through the pager. `page_size` is checked when known.
fn read_page(
    pages: &mut Statement<'_>,
    n: u32,
    page_size: Option<usize>,
    buf: &mut Vec<u8>,
) -> Result<()> {
    if n == 0 {
        return Err(PageError::Layout("page 0"));
    }
    let mut rows = pages.query([n])?;
    let row = rows.next()?.ok_or(PageError::Layout("page past the end"))?;
    let data = row
        .get_ref(0)?
        .as_blob()
        .map_err(|_| PageError::Layout("page is not a blob"))?;
    if page_size.is_some_and(|size| size != data.len()) {
        return Err(PageError::Layout("page of another size"));
    }
    buf.clear();
    buf.extend_from_slice(data);
    Ok(())
}

/// The child pages of interior page `n` (of a table or an index B-tree), right-most last.
pub(crate) fn children_of(page: &[u8], n: u32, out: &mut Vec<u32>) -> Result<()> {
    let hdr = if n == 1 { 100 } else { 0 };
    let bad = || PageError::Layout("interior page");
    let cells = be16(page, hdr + 3).ok_or_else(bad)?;
    for i in 0..=cells {
        out.push(interior_child(page, hdr, cells, i).ok_or_else(bad)?);
    }
    Ok(())
}

/// Child `i` of an interior page whose header starts at `hdr` and which has `cells` cells: the
/// left child of cell `i` (its first four bytes), or past the last cell the right-most pointer
/// (header bytes 8–11).
fn interior_child(page: &[u8], hdr: usize, cells: usize, i: usize) -> Option<u32> {
    if i == cells {
        be32(page, hdr + 8)
    } else {
        be32(page, be16(page, hdr + 12 + 2 * i)?)
    }
}

pub(crate) fn varint(b: &[u8]) -> Option<(i64, usize)> {
    let mut v: u64 = 0;
    for i in 0..9 {
        let byte = *b.get(i)?;
        if i == 8 {
            return Some((((v << 8) | byte as u64) as i64, 9));
        }
        v = (v << 7) | (byte & 0x7f) as u64;
        if byte & 0x80 == 0 {
            return Some((v as i64, i + 1));
        }
    }
    None
}

pub(crate) fn be16(b: &[u8], at: usize) -> Option<usize> {
    Some(u16::from_be_bytes([*b.get(at)?, *b.get(at + 1)?]) as usize)
}

pub(crate) fn be32(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_be_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

/// A set of page numbers, one bit each: page `n` is bit `(n - 1) % 8` of byte `(n - 1) / 8`,
/// the layout `mirror.own` keeps on disk ([`crate::shared_pages`]). A walk of a file's B-trees
/// marks every page it meets in one of these, which costs a bit a page where a tree of numbers
/// costs an allocation. Page 0 does not exist: it is in no set, and inserting it answers that it
/// was there already, so a walk that meets it fails as on a page met twice.
///
/// ```text
/// insert 1, 3, 10  ->  bytes [0b0000_0101, 0b0000_0010]
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PageSet {
    bits: Vec<u8>,
}

impl PageSet {
    pub fn from_bytes(bits: Vec<u8>) -> PageSet {
        PageSet { bits }
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.bits
    }

    pub fn contains(&self, n: u32) -> bool {
        let Some(i) = n.checked_sub(1).map(|i| i as usize) else {
            return false;
        };
        self.bits
            .get(i / 8)
            .is_some_and(|b| b & (1 << (i % 8)) != 0)
    }

    /// Adds page `n`; whether it was not in the set before.
    pub fn insert(&mut self, n: u32) -> bool {
        let Some(i) = n.checked_sub(1).map(|i| i as usize) else {
            return false;
        };
        if self.bits.len() <= i / 8 {
            self.bits.resize(i / 8 + 1, 0);
        }
        let was = self.bits[i / 8] & (1 << (i % 8)) != 0;
        self.bits[i / 8] |= 1 << (i % 8);
        !was
    }

    /// Where page `n`'s bit is: the byte's offset and its value (for a write in place).
    pub fn byte_of(&self, n: u32) -> (usize, u8) {
        let i = n.saturating_sub(1) as usize / 8;
        (i, self.bits.get(i).copied().unwrap_or(0))
    }

    /// The pages in the set, in order. Empty bytes are passed over whole: a set of a few pages
    /// in a large file (the mirror's own, the pages a pull wrote) is mostly empty bytes.
    pub fn iter(&self) -> impl Iterator<Item = u32> + '_ {
        let set = self.bits.iter().enumerate().filter(|(_, b)| **b != 0);
        set.flat_map(|(i, b)| {
            (0..8)
                .filter(move |k| b & (1 << k) != 0)
                .map(move |k| (i * 8 + k + 1) as u32)
        })
    }
}

impl FromIterator<u32> for PageSet {
    fn from_iter<I: IntoIterator<Item = u32>>(pages: I) -> PageSet {
        let mut set = PageSet::default();
        set.extend(pages);
        set
    }
}

impl Extend<u32> for PageSet {
    fn extend<I: IntoIterator<Item = u32>>(&mut self, pages: I) {
        for n in pages {
            self.insert(n);
        }
    }
}

/// One page being walked: its bytes, where its header starts, and the next cell to visit.
struct Frame {
    pgno: u32,
    page: Vec<u8>,
    hdr: usize,
    next: usize,
    cells: usize,
    leaf: bool,
}

/// A rowid-ordered walk over a table B-tree.
pub struct Scan<'c> {
    pages: CachedStatement<'c>,
    page_size: usize,
    usable: usize,
    stack: Vec<Frame>,
    root: Option<u32>,
    spare: Vec<Vec<u8>>,
    payload: Vec<u8>,
    /// Every leaf the walk reached, in key order, when asked for ([`Scan::summing`]).
    leaves: Option<Vec<Leaf>>,
}

/// What a table leaf held, in a few bytes: its page number, a 64-bit hash of its bytes, and
/// the rowids of its first and last rows. In a B-tree the leaves split the keys into ranges,
/// so the rows a leaf held are exactly the rows whose rowids lie in its range; a leaf with the
/// same number and bytes later holds the same rows still, unless a row spills to overflow
/// pages (which its bytes do not cover: see [`skip_shared_leaf`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Leaf {
    pub pgno: u32,
    pub sum: u64,
    /// The rowids of the first and last rows; `None` for a leaf without rows.
    pub rows: Option<(i64, i64)>,
    /// A row of the leaf spills to overflow pages.
    pub spills: bool,
}

impl Leaf {
    /// Whether `now`, a leaf read later, holds the rows this one held: same page, same
    /// bytes, and no row on overflow pages.
    pub fn kept_in(&self, now: &Leaf) -> bool {
        self.pgno == now.pgno && self.sum == now.sum && !self.spills && !now.spills
    }
}

/// The hash of a page's bytes that tells a changed leaf from an unchanged one. 64 bits of a
/// fast, well mixed hash with a fixed seed: two different pages take one for the other with a
/// chance of about 2^-64, and it costs a fraction of reading the page.
pub fn page_sum(page: &[u8]) -> u64 {
    use std::hash::BuildHasher;
    foldhash::quality::FixedState::with_seed(0x7475_7273_796e_6331).hash_one(page)
}

impl Scan<'_> {
    fn read_page(&mut self, n: u32, buf: &mut Vec<u8>) -> Result<()> {
        read_page(&mut self.pages, n, Some(self.page_size), buf)
    }

    fn push(&mut self, n: u32) -> Result<()> {
        let mut page = self.spare.pop().unwrap_or_default();
        self.read_page(n, &mut page)?;
        let frame = Frame::new(n, page)?;
        if let (true, Some(leaves)) = (frame.leaf, &mut self.leaves) {
            leaves.push(frame.summary(self.usable)?);
        }
        self.stack.push(frame);
        if self.stack.len() > 64 {
            return Err(PageError::Layout("B-tree too deep"));
        }
        Ok(())
    }

    /// Makes the walk keep a [`Leaf`] of every leaf it reaches.
    pub fn summing(mut self) -> Self {
        self.leaves = Some(Vec::new());
        self
    }

    /// The leaves reached so far, in key order, when [`Scan::summing`].
    pub fn take_leaves(&mut self) -> Option<Vec<Leaf>> {
        self.leaves.take()
    }

    /// Steps past the rest of the leaf the walk stands in, or the next one, without reading
    /// its rows; false at the end of the walk.
    pub fn pass_leaf(&mut self) -> Result<bool> {
        if !self.settle()? {
            return Ok(false);
        }
        self.pop();
        Ok(true)
    }

    fn pop(&mut self) {
        if let Some(done) = self.stack.pop() {
            self.spare.push(done.page);
        }
    }

    /// Descends to the next cell to visit: true when the top of the stack is a leaf with a
    /// cell left, false at the end of the walk.
    fn settle(&mut self) -> Result<bool> {
        if let Some(root) = self.root.take() {
            self.push(root)?;
        }
        loop {
            let Some(top) = self.stack.last_mut() else {
                return Ok(false);
            };
            if top.leaf && top.next < top.cells {
                return Ok(true);
            }
            if top.leaf || top.next > top.cells {
                self.pop();
                continue;
            }
            let i = top.next;
            top.next += 1;
            let child = top.child(i)?;
            self.push(child)?;
        }
    }

    /// The leaf the walk stands at the start of: its next row is the leaf's first.
    fn at_leaf_start(&mut self) -> Result<Option<&Frame>> {
        Ok(if self.settle()? {
            self.stack.last().filter(|f| f.next == 0)
        } else {
            None
        })
    }

    /// The next row: its rowid and its record payload (valid until the next call).
    pub fn next_row(&mut self) -> Result<Option<(i64, &[u8])>> {
        if !self.settle()? {
            return Ok(None);
        }
        let u = self.usable;
        let Some(last) = self.stack.len().checked_sub(1) else {
            return Ok(None);
        };
        let top = &mut self.stack[last];
        let at = top.cell(top.next)?;
        top.next += 1;
        let page = &self.stack[last].page;
        let (size, a) =
            varint(page.get(at..).unwrap_or(&[])).ok_or(PageError::Layout("payload size"))?;
        let (rowid, b) =
            varint(page.get(at + a..).unwrap_or(&[])).ok_or(PageError::Layout("rowid"))?;
        let start = at + a + b;
        let size = usize::try_from(size).map_err(|_| PageError::Layout("payload size"))?;
        let local = local_payload(u, size);
        if local == size {
            let bytes = self.stack[last]
                .page
                .get(start..start + size)
                .ok_or(PageError::Layout("payload"))?;
            return Ok(Some((rowid, bytes)));
        }
        let page = &self.stack[last].page;
        self.payload.clear();
        self.payload.extend_from_slice(
            page.get(start..start + local)
                .ok_or(PageError::Layout("payload"))?,
        );
        let mut next = be32(page, start + local).ok_or(PageError::Layout("overflow pointer"))?;
        let mut page = self.spare.pop().unwrap_or_default();
        let mut hops = 0;
        while self.payload.len() < size {
            hops += 1;
            if next == 0 || hops > 1 << 24 {
                return Err(PageError::Layout("overflow chain"));
            }
            self.read_page(next, &mut page)?;
            next = be32(&page, 0).ok_or(PageError::Layout("overflow page"))?;
            let take = (size - self.payload.len()).min(u - 4);
            self.payload.extend_from_slice(&page[4..4 + take]);
        }
        self.spare.push(page);
        Ok(Some((rowid, &self.payload)))
    }
}

impl Frame {
    /// Page `n` of a table B-tree, `page` its bytes, before its first cell.
    fn new(n: u32, page: Vec<u8>) -> Result<Frame> {
        let hdr = if n == 1 { 100 } else { 0 };
        let leaf = match page.get(hdr) {
            Some(0x0d) => true,
            Some(0x05) => false,
            _ => return Err(PageError::Layout("not a table B-tree page")),
        };
        let cells = be16(&page, hdr + 3).ok_or(PageError::Layout("short page"))?;
        Ok(Frame {
            pgno: n,
            page,
            hdr,
            next: 0,
            cells,
            leaf,
        })
    }

    /// An interior page's child `i`: cell `i`'s left child, or past the last cell the
    /// right-most pointer.
    fn child(&self, i: usize) -> Result<u32> {
        interior_child(&self.page, self.hdr, self.cells, i)
            .ok_or(PageError::Layout("child pointer"))
    }

    /// The [`Leaf`] of this leaf page.
    fn summary(&self, usable: usize) -> Result<Leaf> {
        let rowid = |i: usize| -> Result<i64> {
            let at = self.cell(i)?;
            let (_, a) = varint(self.page.get(at..).unwrap_or(&[]))
                .ok_or(PageError::Layout("payload size"))?;
            Ok(varint(self.page.get(at + a..).unwrap_or(&[]))
                .ok_or(PageError::Layout("rowid"))?
                .0)
        };
        let rows = match self.cells {
            0 => None,
            n => Some((rowid(0)?, rowid(n - 1)?)),
        };
        Ok(Leaf {
            pgno: self.pgno,
            sum: page_sum(&self.page),
            rows,
            spills: self.spills(usable)?,
        })
    }

    /// Where cell `i` of this page starts.
    fn cell(&self, i: usize) -> Result<usize> {
        let header_len = if self.leaf { 8 } else { 12 };
        be16(&self.page, self.hdr + header_len + 2 * i).ok_or(PageError::Layout("cell pointer"))
    }

    /// Whether a cell of this leaf holds only the start of its payload, the rest being on
    /// overflow pages.
    fn spills(&self, usable: usize) -> Result<bool> {
        for i in 0..self.cells {
            let at = self.cell(i)?;
            let (size, _) = varint(self.page.get(at..).unwrap_or(&[]))
                .ok_or(PageError::Layout("payload size"))?;
            if usize::try_from(size).map_or(true, |s| s > max_local(usable)) {
                return Ok(true);
            }
        }
        Ok(false)
    }
}

/// The largest payload a table leaf cell holds without overflow pages.
fn max_local(usable: usize) -> usize {
    usable - 35
}

/// Steps both walks past the leaf they stand at the start of when it is the same page on both
/// sides (same number, same bytes) and returns true: its rows are the same on both sides, so
/// none of its cells need reading. A copy of the base that the working copy still mostly is
/// shares most of its leaves.
///
/// A leaf with a cell that spills to overflow pages is never passed over: its bytes hold only
/// the start of that payload and the number of its first overflow page, and SQLite reuses
/// freed page numbers, so equal leaf bytes can lead to different overflow pages.
///
/// ```text
/// base: leaf 7 [rows 1..40]   work: leaf 7 [rows 1..40], same bytes  -> passed over
/// base: leaf 8 [rows 41..80]  work: leaf 8, row 52 updated            -> walked row by row
/// ```
pub fn skip_shared_leaf(a: &mut Scan<'_>, b: &mut Scan<'_>) -> Result<bool> {
    let usable = a.usable;
    let (Some(fa), Some(fb)) = (a.at_leaf_start()?, b.at_leaf_start()?) else {
        return Ok(false);
    };
    if fa.pgno != fb.pgno || fa.page != fb.page || fa.spills(usable)? {
        return Ok(false);
    }
    a.pop();
    b.pop();
    Ok(true)
}

/// How many bytes of a table leaf cell's payload of `size` bytes sit on its page; the rest is
/// on overflow pages (the file format's rule for table B-tree leaves).
pub(crate) fn local_payload(usable: usize, size: usize) -> usize {
    if size <= max_local(usable) {
        return size;
    }
    let min_local = (usable - 12) * 32 / 255 - 23;
    let k = min_local + (size - min_local) % (usable - 4);
    if k <= max_local(usable) {
        k
    } else {
        min_local
    }
}

/// How to turn a record into a data row (the layout of [`crate::schema::Table::data_columns`]).
pub struct Layout {
    /// The hidden rowid comes first in the data row.
    pub hidden_rowid: bool,
    /// Record position of the INTEGER PRIMARY KEY, whose record value is NULL: the rowid.
    pub ipk: Option<usize>,
    /// Per record column: does it have REAL affinity (integers read back as reals)?
    pub real: Vec<bool>,
}

/// Decodes a record into a data row, or `None` when it does not match the layout (a short
/// record from before an `ADD COLUMN`, say): the caller then reads the row through SQL.
pub fn decode(rowid: i64, rec: &[u8], layout: &Layout) -> Option<Vec<Value>> {
    let (header_len, mut h) = varint(rec)?;
    let header_len = usize::try_from(header_len).ok()?;
    let mut body = header_len;
    let mut row = Vec::with_capacity(layout.real.len() + 1);
    if layout.hidden_rowid {
        row.push(Value::Integer(rowid));
    }
    let mut col = 0;
    while h < header_len {
        let (serial, n) = varint(rec.get(h..header_len)?)?;
        h += n;
        let int = |len: usize, body: usize| -> Option<i64> {
            let bytes = rec.get(body..body + len)?;
            let mut v: i64 = if bytes[0] & 0x80 != 0 { -1 } else { 0 };
            for &b in bytes {
                v = (v << 8) | b as i64;
            }
            Some(v)
        };
        let (value, len) = match serial {
            0 => (Value::Null, 0),
            1..=4 => (Value::Integer(int(serial as usize, body)?), serial as usize),
            5 => (Value::Integer(int(6, body)?), 6),
            6 => (Value::Integer(int(8, body)?), 8),
            7 => (Value::Real(f64::from_bits(int(8, body)? as u64)), 8),
            8 => (Value::Integer(0), 0),
            9 => (Value::Integer(1), 0),
            s if s >= 12 && s % 2 == 0 => {
                let len = ((s - 12) / 2) as usize;
                (Value::Blob(rec.get(body..body + len)?.to_vec()), len)
            }
            s if s >= 13 => {
                let len = ((s - 13) / 2) as usize;
                (Value::Text(rec.get(body..body + len)?.to_vec()), len)
            }
            _ => return None,
        };
        body += len;
        let value = match value {
            Value::Null if Some(col) == layout.ipk => Value::Integer(rowid),
            Value::Integer(i) if *layout.real.get(col)? => Value::Real(i as f64),
            v => v,
        };
        row.push(value);
        col += 1;
    }
    (col == layout.real.len()).then_some(row)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_page_set_keeps_the_layout_of_mirror_own() {
        let mut set: PageSet = [1, 3, 10].into_iter().collect();
        assert_eq!(set.as_bytes(), &[0b0000_0101, 0b0000_0010]);
        assert!(set.contains(3) && !set.contains(2) && !set.contains(11));
        assert!(!set.insert(10), "10 was there");
        assert!(set.insert(9));
        assert_eq!(set.byte_of(9), (1, 0b0000_0011));
        assert_eq!(set.iter().collect::<Vec<_>>(), [1, 3, 9, 10]);
        // Page 0 is never in a set, and inserting it is refused like a page met twice.
        assert!(!set.contains(0) && !set.insert(0));
        assert_eq!(PageSet::from_bytes(set.as_bytes().to_vec()), set);
    }

    /// Walks a table through `sqlite_dbpage` in both journal modes, with un-checkpointed WAL
    /// frames and a writer committing after the read began: the walk sees exactly the reader's
    /// snapshot, as SQLite's own SELECT does.
    fn walks_and_decodes_like_sqlite(journal_mode: &str) {
        let dir = std::env::temp_dir().join(format!(
            "tursync-pages-{journal_mode}-{}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("t.db");
        let conn = Connection::open(&path).unwrap();
        conn.pragma_update(None, "journal_mode", journal_mode)
            .unwrap();
        conn.execute_batch(
            "PRAGMA wal_autocheckpoint = 0;
             CREATE TABLE t(a, b REAL, c TEXT);
             WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 3000)
             INSERT INTO t(rowid, a, b, c) SELECT i * 3 - 5000, i, i % 7, printf('%.*c', i % 50, 'x') FROM n;
             INSERT INTO t(rowid, a, b, c) VALUES (9223372036854775807, -1, -0.0, 'é'), (-9223372036854775808, 1.5, 2, NULL);
             INSERT INTO t(rowid, a, b, c) VALUES (2, randomblob(20000), 5e-324, printf('%.*c', 9000, 'y'));",
        )
        .unwrap();
        let root = reading_t(&conn);
        if journal_mode == "wal" {
            // A commit after our snapshot began: the walk must not see it.
            let writer = Connection::open(&path).unwrap();
            writer
                .execute_batch("UPDATE t SET c = 'later' WHERE rowid % 2 = 0; DELETE FROM t WHERE rowid > 0 AND rowid < 100;")
                .unwrap();
        }
        let db = DbFile::open(&conn).unwrap();
        let mut scan = db.scan(root).unwrap();
        let layout = Layout {
            hidden_rowid: true,
            ipk: None,
            real: vec![false, true, false],
        };
        let mut st = conn
            .prepare("SELECT rowid, a, b, c FROM t ORDER BY rowid")
            .unwrap();
        let mut rows = st.query([]).unwrap();
        let mut n = 0;
        while let Some(r) = rows.next().unwrap() {
            let expected: Vec<Value> = (0..4).map(|i| r.get(i).unwrap()).collect();
            let (rowid, rec) = scan.next_row().unwrap().expect("as many rows as SQLite");
            assert_eq!(decode(rowid, rec, &layout).unwrap(), expected);
            n += 1;
        }
        assert!(scan.next_row().unwrap().is_none());
        assert_eq!(n, 3003);
        drop(rows);
        drop((st, scan, db));
        conn.execute_batch("COMMIT").unwrap();
        drop(conn);
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// A database that holds nothing has chosen no text encoding yet (header bytes 56..60 are
    /// zero): it still has a stamp, and a write moves it. (An empty remote's base is such a
    /// file; a pull record needs its stamp.)
    #[test]
    fn a_database_that_holds_nothing_has_a_stamp() {
        let path = std::env::temp_dir().join(format!("tursync-empty-{}", std::process::id()));
        let _ = std::fs::remove_file(&path);
        let conn = rusqlite::Connection::open(&path).unwrap();
        conn.execute_batch("VACUUM").unwrap();
        let empty = stamp(&conn).unwrap();
        assert!(empty.is_some());
        conn.execute_batch("CREATE TABLE t(a)").unwrap();
        let written = stamp(&conn).unwrap();
        assert!(written.is_some() && written != empty);
        drop(conn);
        let _ = std::fs::remove_file(&path);
    }

    /// Two connections sum a three-level table's leaves as one walk does: every leaf once, in
    /// key order, from the first one's snapshot. In WAL mode a writer commits after that
    /// snapshot began, and the second connection must not see it. In rollback-journal mode,
    /// when the second one cannot read (a writer waits for its exclusive lock, which keeps new
    /// readers out), ours reads its half.
    fn two_connections_sum_the_leaves_as_one_walk(journal_mode: &str) {
        let dir = std::env::temp_dir().join(format!(
            "tursync-beside-{journal_mode}-{}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("t.db");
        // Nobody waits for a lock here (rusqlite's default is 5 s), as the diff's second
        // connection does not.
        let open = || {
            let conn = Connection::open(&path).unwrap();
            conn.busy_timeout(std::time::Duration::ZERO).unwrap();
            conn
        };
        let ours = open();
        ours.pragma_update(None, "page_size", 1024).unwrap();
        ours.pragma_update(None, "journal_mode", journal_mode)
            .unwrap();
        // In WAL mode the table stays in the WAL, so ours reads through it: a reader of a fully
        // checkpointed WAL reads the file alone, the next commit restarts the WAL, and its
        // snapshot can no longer be opened (SQLITE_ERROR_SNAPSHOT: ours then reads both halves).
        ours.pragma_update(None, "wal_autocheckpoint", 0).unwrap();
        ours.execute_batch(
            "CREATE TABLE t(a INTEGER PRIMARY KEY, b);
             WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 40000)
             INSERT INTO t SELECT i, printf('%.*c', 40 + i % 60, 'x') FROM n;",
        )
        .unwrap();
        let root = reading_t(&ours);
        let db = DbFile::open(&ours).unwrap();
        assert_eq!(db.rollback, journal_mode == "delete");
        let one = db.sum_leaves(root, None).unwrap();
        assert!(one.len() > 2000, "{} leaves", one.len());
        let mut root_page = Vec::new();
        db.read(root, &mut root_page).unwrap();
        let mut children = Vec::new();
        children_of(&root_page, root, &mut children).unwrap();
        let grandchild = children[0];
        let mut page = Vec::new();
        db.read(grandchild, &mut page).unwrap();
        assert!(!Frame::new(grandchild, page).unwrap().leaf, "three levels");
        let rows: Vec<(i64, i64)> = one.iter().map(|l| l.rows.unwrap()).collect();
        assert!(rows.windows(2).all(|w| w[0].1 < w[1].0), "in key order");
        assert_eq!((rows[0].0, rows[rows.len() - 1].1), (1, 40000));

        let writer = open();
        let count = |conn: &Connection| {
            conn.query_row("SELECT count(*) FROM t", [], |r| r.get::<_, i64>(0))
        };
        if journal_mode == "wal" {
            writer
                .execute_batch("DELETE FROM t WHERE a % 3 = 0")
                .unwrap();
            assert_eq!(
                count(&open()).unwrap(),
                26667,
                "a new reader sees the commit"
            );
        }
        let mut beside = open();
        assert_eq!(db.sum_leaves(root, Some(&mut beside)).unwrap(), one);
        // Its read ended with the walk: it holds no lock.
        assert!(beside.is_autocommit());
        // And it did read its half, rather than leave it to ours: a fresh connection too.
        let read = pages_read(&beside);
        assert!(
            read as usize > one.len() / 3,
            "the second connection read {read} pages of {} leaves",
            one.len()
        );

        if journal_mode == "delete" {
            writer
                .execute_batch("BEGIN IMMEDIATE; UPDATE t SET b = 'y' WHERE a % 7 = 0;")
                .unwrap();
            // Our shared lock keeps its commit out, and its pending lock any new reader.
            assert!(writer.execute_batch("COMMIT").is_err());
            assert!(count(&open()).is_err());
            assert_eq!(db.sum_leaves(root, Some(&mut beside)).unwrap(), one);
            writer.execute_batch("ROLLBACK").unwrap();
        }
        drop((db, writer, beside));
        ours.execute_batch("COMMIT").unwrap();
        drop(ours);
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// The pages `conn` read from its file (its page cache's misses).
    /// The root page of table `t`, with a read transaction of `conn` open on it.
    fn reading_t(conn: &Connection) -> u32 {
        let root = conn
            .query_row(
                "SELECT rootpage FROM sqlite_schema WHERE name = 't'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        conn.execute_batch("BEGIN; SELECT count(*) FROM t;")
            .unwrap();
        root
    }

    fn pages_read(conn: &Connection) -> i32 {
        let (mut now, mut high) = (0, 0);
        // SAFETY: the handle is alive for the call; SQLite writes both integers.
        let rc = unsafe {
            rusqlite::ffi::sqlite3_db_status(
                conn.handle(),
                rusqlite::ffi::SQLITE_DBSTATUS_CACHE_MISS,
                &mut now,
                &mut high,
                0,
            )
        };
        assert_eq!(rc, rusqlite::ffi::SQLITE_OK);
        now
    }

    #[test]
    fn two_connections_sum_the_leaves_as_one_walk_in_rollback_journal_mode() {
        two_connections_sum_the_leaves_as_one_walk("delete");
    }

    #[test]
    fn two_connections_sum_the_leaves_as_one_walk_in_wal_mode() {
        two_connections_sum_the_leaves_as_one_walk("wal");
    }

    #[test]
    fn walks_and_decodes_like_sqlite_in_rollback_journal_mode() {
        walks_and_decodes_like_sqlite("delete");
    }

    #[test]
    fn walks_and_decodes_like_sqlite_in_wal_mode() {
        walks_and_decodes_like_sqlite("wal");
    }
}
