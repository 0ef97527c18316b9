//! Checksums of the mirror's pages (`.tursync/mirror.sums`), and the SQLite VFS through which
//! every page read from the mirror is checked against them.
//!
//! The mirror is trusted page for page: a pull reads theirs from it and the base takes what it
//! read. A page that changed on disk after tursync wrote it (a flipped byte, a file written
//! behind our back) would be merged silently. So every page written into the mirror, by
//! [`crate::mirror::Mirror::apply`] from a spool or by init's build, gets its CRC-32 recorded
//! here, and SQLite reads the mirror through the `tursync-sums` VFS, which wraps the default
//! one and checks each page it reads before SQLite sees it (a read of part of a page, the header
//! or the end of an overflow chain, reads the whole page, checks it and copies out the part). A page that does not match
//! fails the read with `SQLITE_IOERR_DATA` (the code SQLite's own checksum VFS uses) and is
//! recorded ([`take_damage`]), so the pull knows why its statement failed. What is checked is
//! exactly what is read: a pull that reads a few leaves checks a few pages, whatever the
//! database's size, and nothing read from the mirror escapes the check (the touched pages, the
//! rows diffed, the keys the merge looks up, the sample the spot check compares).
//!
//! ```text
//! mirror.sums   "tursync sums 1\0\0"   16 bytes
//!               page size              u32, little-endian
//!               pages                  u32: the database's size, in pages
//!               frame                  u64: the mirror's last frame (UNTRUSTED: none that counts)
//!               CRC-32 of page 1, 2, …  u32 each, little-endian
//! ```
//!
//! The header's frame and size tie the file to `mirror.json` and `mirror.db`: a mirror whose
//! three files disagree is not trusted ([`crate::mirror::Mirror::health`]).

use std::collections::hash_map::{Entry, HashMap};
use std::ffi::{c_int, c_void, CStr};
use std::fs;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

use rusqlite::ffi;

use crate::shared_pages;
use crate::vfs;

/// The sums file's first bytes.
const MAGIC: &[u8; 16] = b"tursync sums 1\0\0";
/// Bytes before the first page's sum.
pub const HEAD: u64 = 32;
/// The frame recorded when the sums cannot be vouched for (a mirror carried forward whose sums
/// were missing): such a mirror is never trusted.
pub const UNTRUSTED: u64 = u64::MAX;

/// The checksum of one page.
pub fn sum(page: &[u8]) -> u32 {
    crc32fast::hash(page)
}

/// What the header of a sums file says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub page_size: u32,
    pub pages: u32,
    pub frame: u64,
}

impl Header {
    pub fn encode(&self) -> [u8; HEAD as usize] {
        let mut out = [0; HEAD as usize];
        out[..16].copy_from_slice(MAGIC);
        out[16..20].copy_from_slice(&self.page_size.to_le_bytes());
        out[20..24].copy_from_slice(&self.pages.to_le_bytes());
        out[24..32].copy_from_slice(&self.frame.to_le_bytes());
        out
    }

    /// `None` unless the magic is there and the page size is one SQLite can have.
    fn decode(b: &[u8]) -> Option<Header> {
        if b.len() < HEAD as usize || &b[..16] != MAGIC {
            return None;
        }
        let page_size = u32::from_le_bytes(b[16..20].try_into().ok()?);
        if !(512..=65536).contains(&page_size) || !page_size.is_power_of_two() {
            return None;
        }
        Some(Header {
            page_size,
            pages: u32::from_le_bytes(b[20..24].try_into().ok()?),
            frame: u64::from_le_bytes(b[24..32].try_into().ok()?),
        })
    }

    /// Reads the header of `file`; `None` when it has none.
    pub fn read(file: &fs::File) -> std::io::Result<Option<Header>> {
        let mut b = [0; HEAD as usize];
        match file.read_exact_at(&mut b, 0) {
            Ok(()) => Ok(Header::decode(&b)),
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Ok(None),
            Err(e) => Err(e),
        }
    }
}

/// Where page `n`'s sum is.
pub fn offset(n: u32) -> u64 {
    HEAD + (u64::from(n) - 1) * 4
}

/// The length of a sums file for a database of `pages` pages.
pub fn len_for(pages: u32) -> u64 {
    HEAD + u64::from(pages) * 4
}

/// The sums file beside a mirror.
pub fn path_for(db: &Path) -> PathBuf {
    db.with_extension("sums")
}

/// Damaged pages seen by the VFS, by database path, not yet taken.
static DAMAGE: Mutex<Vec<(PathBuf, String)>> = Mutex::new(Vec::new());

fn record_damage(db: &Path, what: String) {
    if let Ok(mut d) = DAMAGE.lock() {
        d.push((db.to_path_buf(), what));
    }
}

fn same_file(a: &Path, b: &Path) -> bool {
    a == b
        || std::path::absolute(b).is_ok_and(|b| a == b)
        || fs::canonicalize(b).is_ok_and(|b| a == b)
}

/// What the VFS found wrong in `db` since the last call, if anything (the first damage seen).
pub fn take_damage(db: &Path) -> Option<String> {
    let mut d = DAMAGE.lock().ok()?;
    let mut first = None;
    d.retain(|(p, what)| {
        if same_file(p, db) {
            first.get_or_insert_with(|| what.clone());
            false
        } else {
            true
        }
    });
    first
}

/// Whether the VFS found `db` damaged since the last [`take_damage`].
pub fn damage_seen(db: &Path) -> bool {
    DAMAGE
        .lock()
        .is_ok_and(|d| d.iter().any(|(p, _)| same_file(p, db)))
}

/// Whether the VFS found any page damaged, in any mirror, that nobody took yet: nothing read
/// in this process may be committed then.
pub fn damage_pending() -> bool {
    DAMAGE.lock().map_or(true, |d| !d.is_empty())
}

/// The name of the checking VFS, registered on first use.
pub fn vfs_name() -> Result<&'static str, String> {
    static REGISTERED: OnceLock<Result<(), String>> = OnceLock::new();
    REGISTERED
        .get_or_init(|| vfs::register(VFS_NAME, x_open))
        .clone()?;
    Ok("tursync-sums")
}

const VFS_NAME: &CStr = c"tursync-sums";
/// The sums of one open mirror, read a 4 KB block at a time as pages are checked.
struct Sums {
    db: PathBuf,
    file: Result<(fs::File, Header), String>,
    blocks: HashMap<u64, Vec<u8>>,
    /// Where each page is read: `mirror.db`, or the base for the pages the mirror shares with
    /// it ([`crate::shared_pages`]).
    pages: Result<Option<shared_pages::Pages>, String>,
}

const BLOCK: u64 = 4096;

impl Sums {
    fn open(db: PathBuf) -> Sums {
        let path = path_for(&db);
        let file = match fs::File::open(&path) {
            Ok(f) => match Header::read(&f) {
                Ok(Some(h)) if h.frame != UNTRUSTED => Ok((f, h)),
                Ok(_) => Err(format!("{} is not usable", path.display())),
                Err(e) => Err(format!("{}: {e}", path.display())),
            },
            Err(e) => Err(format!("{}: {e}", path.display())),
        };
        let pages = match db.parent() {
            Some(dir) => shared_pages::Pages::open(dir),
            None => Ok(None),
        };
        Sums {
            db,
            file,
            blocks: HashMap::new(),
            pages,
        }
    }

    /// The recorded sum of page `n`.
    fn recorded(&mut self, n: u32) -> Result<u32, String> {
        let (file, h) = self.file.as_ref().map_err(Clone::clone)?;
        if n == 0 || n > h.pages {
            return Err(format!("page {n} is past the {} pages recorded", h.pages));
        }
        let at = offset(n);
        let block = at / BLOCK;
        let b = match self.blocks.entry(block) {
            Entry::Occupied(e) => e.into_mut(),
            Entry::Vacant(v) => {
                let mut b = vec![0; BLOCK as usize];
                let mut got = 0;
                while got < b.len() {
                    match file.read_at(&mut b[got..], block * BLOCK + got as u64) {
                        Ok(0) => break,
                        Ok(k) => got += k,
                        Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                        Err(e) => return Err(format!("reading the sums: {e}")),
                    }
                }
                b.truncate(got);
                v.insert(b)
            }
        };
        let i = (at % BLOCK) as usize;
        b.get(i..i + 4)
            .and_then(|s| s.try_into().ok())
            .map(u32::from_le_bytes)
            .ok_or_else(|| "the sums file is short".to_owned())
    }

    /// The page size the sums were taken at.
    fn page_size(&self) -> Result<usize, String> {
        match &self.file {
            Ok((_, h)) => Ok(h.page_size as usize),
            Err(why) => Err(why.clone()),
        }
    }

    /// Checks `buf`, read at byte `off`, as one whole page of the size the sums were taken at.
    fn check(&mut self, buf: &[u8], off: u64) -> Result<(), String> {
        let page_size = self.page_size()? as u64;
        let len = buf.len() as u64;
        if len != page_size || !off.is_multiple_of(page_size) {
            return Err(format!(
                "a read of {len} bytes at offset {off} of {} is not one page of the {page_size} bytes recorded in {}",
                self.db.display(),
                path_for(&self.db).display()
            ));
        }
        let n = u32::try_from(off / page_size + 1).map_err(|_| "page number".to_owned())?;
        let want = self.recorded(n)?;
        if sum(buf) != want {
            return Err(format!(
                "page {n} of {} does not match its checksum in {}",
                self.db.display(),
                path_for(&self.db).display()
            ));
        }
        Ok(())
    }
}

unsafe extern "C" fn x_open(
    vfs: *mut ffi::sqlite3_vfs,
    name: ffi::sqlite3_filename,
    file: *mut ffi::sqlite3_file,
    flags: c_int,
    out_flags: *mut c_int,
) -> c_int {
    // Only the mirror, read-only, comes through here: a database opened for writing would be
    // written past its sums, and one whose sums file is itself would have the descriptor on
    // it closed behind SQLite's back, dropping its locks.
    let db = match (flags & ffi::SQLITE_OPEN_MAIN_DB != 0, vfs::path_of(name)) {
        (false, _) => None,
        (true, None) => return ffi::SQLITE_CANTOPEN,
        (true, Some(db)) => {
            if flags & ffi::SQLITE_OPEN_READONLY == 0 || path_for(&db) == db {
                return ffi::SQLITE_CANTOPEN;
            }
            Some(db)
        }
    };
    let rc = vfs::open_inner(vfs, name, file, flags, out_flags);
    if rc != ffi::SQLITE_OK {
        return rc;
    }
    let state = db.map_or(std::ptr::null_mut(), |db| {
        Box::into_raw(Box::new(Sums::open(db))).cast()
    });
    vfs::opened(file, state, &METHODS)
}

/// Every page comes through [`x_read`] and is checked ([`vfs::io_methods`]).
static METHODS: ffi::sqlite3_io_methods =
    vfs::io_methods(x_close, x_read, vfs::x_write, vfs::x_truncate, vfs::x_sync);

unsafe extern "C" fn x_close(f: *mut ffi::sqlite3_file) -> c_int {
    vfs::close_with::<Sums>(f, |_| ffi::SQLITE_OK)
}

unsafe extern "C" fn x_read(
    f: *mut ffi::sqlite3_file,
    buf: *mut c_void,
    amt: c_int,
    off: i64,
) -> c_int {
    let Some(read) = vfs::methods(f).and_then(|m| m.xRead) else {
        return ffi::SQLITE_IOERR_READ;
    };
    let Some(sums) = (*f.cast::<vfs::File>()).state.cast::<Sums>().as_mut() else {
        return read(vfs::inner(f), buf, amt, off);
    };
    let (Ok(len), Ok(start)) = (usize::try_from(amt), u64::try_from(off)) else {
        return ffi::SQLITE_IOERR_READ;
    };
    let page_size = match sums.page_size() {
        Ok(size) => size,
        Err(what) => {
            record_damage(&sums.db, what);
            return ffi::SQLITE_IOERR_DATA;
        }
    };
    if len == page_size && start.is_multiple_of(page_size as u64) {
        // One whole page, the read SQLite makes of nearly every page. A short read is
        // zero-filled and checked as such.
        let rc = read_page(f, sums, buf, amt, off);
        if rc != ffi::SQLITE_OK && rc != ffi::SQLITE_IOERR_SHORT_READ {
            return rc;
        }
        let bytes = std::slice::from_raw_parts(buf.cast::<u8>(), len);
        if let Err(what) = sums.check(bytes, start) {
            record_damage(&sums.db, what);
            return ffi::SQLITE_IOERR_DATA;
        }
        return rc;
    }
    // Part of a page, or of several: the database header (SQLite reads its first 100 bytes to
    // learn the page size), the end of an overflow chain (read straight from the file, only as
    // far as the value goes). Each page it falls in is read whole and checked, and the part
    // asked for copied out: no byte escapes the sums.
    let Ok(size) = c_int::try_from(page_size) else {
        return ffi::SQLITE_IOERR_READ;
    };
    let out = std::slice::from_raw_parts_mut(buf.cast::<u8>(), len);
    let mut page = vec![0u8; page_size];
    let mut done = 0;
    while done < len {
        let at = start + done as u64;
        let first = at - at % page_size as u64;
        let Ok(first_at) = i64::try_from(first) else {
            return ffi::SQLITE_IOERR_READ;
        };
        let rc = read_page(f, sums, page.as_mut_ptr().cast(), size, first_at);
        if rc == ffi::SQLITE_IOERR_SHORT_READ {
            record_damage(
                &sums.db,
                format!(
                    "the page at offset {first} of {} ends past the end of the file",
                    sums.db.display()
                ),
            );
            return ffi::SQLITE_IOERR_DATA;
        }
        if rc != ffi::SQLITE_OK {
            return rc;
        }
        if let Err(what) = sums.check(&page, first) {
            record_damage(&sums.db, what);
            return ffi::SQLITE_IOERR_DATA;
        }
        let from = (at - first) as usize;
        let n = (page_size - from).min(len - done);
        out[done..done + n].copy_from_slice(&page[from..from + n]);
        done += n;
    }
    ffi::SQLITE_OK
}

/// Reads the whole page at `off` (`amt` bytes) from the file that holds it: `mirror.db`
/// through the wrapped VFS, the base for a page the mirror shares with it, or the spool for a
/// page still only there ([`shared_pages::InSpool`]). A page the
/// mirror cannot say where to read fails as damaged.
///
/// # Safety
/// As SQLite's `xRead`, on a file opened by [`x_open`].
unsafe fn read_page(
    f: *mut ffi::sqlite3_file,
    sums: &Sums,
    buf: *mut c_void,
    amt: c_int,
    off: i64,
) -> c_int {
    let pages = match &sums.pages {
        Ok(Some(pages)) => pages,
        Ok(None) => return vfs::x_read(f, buf, amt, off),
        Err(what) => {
            record_damage(&sums.db, what.clone());
            return ffi::SQLITE_IOERR_DATA;
        }
    };
    let (Ok(len), Ok(start)) = (usize::try_from(amt), u64::try_from(off)) else {
        return ffi::SQLITE_IOERR_READ;
    };
    let n = u32::try_from(start / len.max(1) as u64 + 1).unwrap_or(u32::MAX);
    let out = std::slice::from_raw_parts_mut(buf.cast::<u8>(), len);
    let read = match pages.from_base(n) {
        true => pages.read_base(n, out),
        false => match pages.read_in_spool(n, out) {
            Some(read) => read,
            None => return vfs::x_read(f, buf, amt, off),
        },
    };
    match read {
        Ok(()) => ffi::SQLITE_OK,
        Err(_) => ffi::SQLITE_IOERR_READ,
    }
}
