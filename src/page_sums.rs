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
use std::ffi::{c_char, c_int, c_void, CStr};
use std::fs;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

use rusqlite::ffi;

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
    REGISTERED.get_or_init(register).clone()?;
    Ok("tursync-sums")
}

const VFS_NAME: &CStr = c"tursync-sums";

/// One open file: SQLite's `sqlite3_file`, what is checked, and the wrapped VFS's file after.
#[repr(C)]
struct File {
    base: ffi::sqlite3_file,
    /// The main database's sums; null for any other file.
    sums: *mut Sums,
}

/// The wrapped file lives this many bytes into ours, 8-byte aligned.
const INNER_AT: usize = std::mem::size_of::<File>().next_multiple_of(8);

/// # Safety
/// `f` points to a `File` allocated with the VFS's `szOsFile`.
unsafe fn inner(f: *mut ffi::sqlite3_file) -> *mut ffi::sqlite3_file {
    f.cast::<u8>().add(INNER_AT).cast()
}

/// The sums of one open mirror, read a 4 KB block at a time as pages are checked.
struct Sums {
    db: PathBuf,
    file: Result<(fs::File, Header), String>,
    blocks: HashMap<u64, Vec<u8>>,
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
        Sums {
            db,
            file,
            blocks: HashMap::new(),
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

fn root(vfs: *mut ffi::sqlite3_vfs) -> *mut ffi::sqlite3_vfs {
    // SAFETY: our VFS's `pAppData` is the wrapped VFS, set once at registration.
    unsafe { (*vfs).pAppData.cast() }
}

fn register() -> Result<(), String> {
    // SAFETY: `sqlite3_vfs_find` with a null name returns the default VFS, which lives as long
    // as the process; the VFS registered is leaked, so it does too.
    unsafe {
        if ffi::sqlite3_initialize() != ffi::SQLITE_OK {
            return Err("SQLite failed to initialize".into());
        }
        let root = ffi::sqlite3_vfs_find(std::ptr::null());
        if root.is_null() {
            return Err("SQLite has no default VFS".into());
        }
        let size = c_int::try_from(INNER_AT).map_err(|_| "file size".to_owned())?;
        let vfs = Box::leak(Box::new(ffi::sqlite3_vfs {
            iVersion: 2,
            szOsFile: size + (*root).szOsFile,
            mxPathname: (*root).mxPathname,
            pNext: std::ptr::null_mut(),
            zName: VFS_NAME.as_ptr(),
            pAppData: root.cast(),
            xOpen: Some(x_open),
            xDelete: Some(x_delete),
            xAccess: Some(x_access),
            xFullPathname: Some(x_full_pathname),
            // SQLite calls these without looking whether they are there (to load an extension):
            // passed on, as everything but the reads.
            xDlOpen: Some(x_dl_open),
            xDlError: Some(x_dl_error),
            xDlSym: Some(x_dl_sym),
            xDlClose: Some(x_dl_close),
            xRandomness: Some(x_randomness),
            xSleep: Some(x_sleep),
            xCurrentTime: Some(x_current_time),
            xGetLastError: Some(x_get_last_error),
            xCurrentTimeInt64: Some(x_current_time_int64),
            xSetSystemCall: None,
            xGetSystemCall: None,
            xNextSystemCall: None,
        }));
        match ffi::sqlite3_vfs_register(vfs, 0) {
            ffi::SQLITE_OK => Ok(()),
            rc => Err(format!("registering the checking VFS failed ({rc})")),
        }
    }
}

unsafe extern "C" fn x_open(
    vfs: *mut ffi::sqlite3_vfs,
    name: ffi::sqlite3_filename,
    file: *mut ffi::sqlite3_file,
    flags: c_int,
    out_flags: *mut c_int,
) -> c_int {
    let r = root(vfs);
    let f = file.cast::<File>();
    (*f).base.pMethods = std::ptr::null();
    (*f).sums = std::ptr::null_mut();
    let Some(open) = (*r).xOpen else {
        return ffi::SQLITE_CANTOPEN;
    };
    // Only the mirror, read-only, comes through here: a database opened for writing would be
    // written past its sums, and one whose sums file is itself would have the descriptor on
    // it closed behind SQLite's back, dropping its locks.
    let main_db = flags & ffi::SQLITE_OPEN_MAIN_DB != 0;
    let db = match (main_db, name.is_null()) {
        (false, _) => None,
        (true, true) => return ffi::SQLITE_CANTOPEN,
        (true, false) => {
            use std::os::unix::ffi::OsStrExt;
            let db = PathBuf::from(std::ffi::OsStr::from_bytes(CStr::from_ptr(name).to_bytes()));
            if flags & ffi::SQLITE_OPEN_READONLY == 0 || path_for(&db) == db {
                return ffi::SQLITE_CANTOPEN;
            }
            Some(db)
        }
    };
    // The wrapped file's methods are then set only by its own open.
    (*inner(file)).pMethods = std::ptr::null();
    let rc = open(r, name, inner(file), flags, out_flags);
    if rc != ffi::SQLITE_OK {
        // A VFS may leave its methods set on a failed open, to be closed: SQLite will not call
        // our close (ours are unset), so the wrapped file is closed here.
        if let Some(close) = methods(file).and_then(|m| m.xClose) {
            close(inner(file));
        }
        return rc;
    }
    if let Some(db) = db {
        (*f).sums = Box::into_raw(Box::new(Sums::open(db)));
    }
    (*f).base.pMethods = &METHODS;
    ffi::SQLITE_OK
}

unsafe extern "C" fn x_delete(
    vfs: *mut ffi::sqlite3_vfs,
    name: *const c_char,
    sync: c_int,
) -> c_int {
    let r = root(vfs);
    match (*r).xDelete {
        Some(x) => x(r, name, sync),
        None => ffi::SQLITE_IOERR_DELETE,
    }
}

unsafe extern "C" fn x_access(
    vfs: *mut ffi::sqlite3_vfs,
    name: *const c_char,
    flags: c_int,
    out: *mut c_int,
) -> c_int {
    let r = root(vfs);
    match (*r).xAccess {
        Some(x) => x(r, name, flags, out),
        None => ffi::SQLITE_IOERR_ACCESS,
    }
}

unsafe extern "C" fn x_full_pathname(
    vfs: *mut ffi::sqlite3_vfs,
    name: *const c_char,
    n: c_int,
    out: *mut c_char,
) -> c_int {
    let r = root(vfs);
    match (*r).xFullPathname {
        Some(x) => x(r, name, n, out),
        None => ffi::SQLITE_CANTOPEN,
    }
}

unsafe extern "C" fn x_dl_open(vfs: *mut ffi::sqlite3_vfs, name: *const c_char) -> *mut c_void {
    let r = root(vfs);
    match (*r).xDlOpen {
        Some(x) => x(r, name),
        None => std::ptr::null_mut(),
    }
}

unsafe extern "C" fn x_dl_error(vfs: *mut ffi::sqlite3_vfs, n: c_int, out: *mut c_char) {
    let r = root(vfs);
    if let Some(x) = (*r).xDlError {
        x(r, n, out)
    }
}

/// What `xDlSym` returns: the symbol found, as SQLite types it.
type DlSym = unsafe extern "C" fn(*mut ffi::sqlite3_vfs, *mut c_void, *const c_char);

unsafe extern "C" fn x_dl_sym(
    vfs: *mut ffi::sqlite3_vfs,
    handle: *mut c_void,
    symbol: *const c_char,
) -> Option<DlSym> {
    let r = root(vfs);
    (*r).xDlSym.and_then(|x| x(r, handle, symbol))
}

unsafe extern "C" fn x_dl_close(vfs: *mut ffi::sqlite3_vfs, handle: *mut c_void) {
    let r = root(vfs);
    if let Some(x) = (*r).xDlClose {
        x(r, handle)
    }
}

unsafe extern "C" fn x_randomness(vfs: *mut ffi::sqlite3_vfs, n: c_int, out: *mut c_char) -> c_int {
    let r = root(vfs);
    match (*r).xRandomness {
        Some(x) => x(r, n, out),
        None => 0,
    }
}

unsafe extern "C" fn x_sleep(vfs: *mut ffi::sqlite3_vfs, us: c_int) -> c_int {
    let r = root(vfs);
    match (*r).xSleep {
        Some(x) => x(r, us),
        None => 0,
    }
}

unsafe extern "C" fn x_current_time(vfs: *mut ffi::sqlite3_vfs, out: *mut f64) -> c_int {
    let r = root(vfs);
    match (*r).xCurrentTime {
        Some(x) => x(r, out),
        None => ffi::SQLITE_ERROR,
    }
}

unsafe extern "C" fn x_get_last_error(
    vfs: *mut ffi::sqlite3_vfs,
    n: c_int,
    out: *mut c_char,
) -> c_int {
    let r = root(vfs);
    match (*r).xGetLastError {
        Some(x) => x(r, n, out),
        None => 0,
    }
}

unsafe extern "C" fn x_current_time_int64(vfs: *mut ffi::sqlite3_vfs, out: *mut i64) -> c_int {
    let r = root(vfs);
    match (*r).xCurrentTimeInt64 {
        Some(x) => x(r, out),
        None => ffi::SQLITE_ERROR,
    }
}

/// Version 2: shared memory is passed on, memory-mapped reads (version 3) are not offered, so
/// every page comes through [`x_read`] and is checked.
static METHODS: ffi::sqlite3_io_methods = ffi::sqlite3_io_methods {
    iVersion: 2,
    xClose: Some(x_close),
    xRead: Some(x_read),
    xWrite: Some(x_write),
    xTruncate: Some(x_truncate),
    xSync: Some(x_sync),
    xFileSize: Some(x_file_size),
    xLock: Some(x_lock),
    xUnlock: Some(x_unlock),
    xCheckReservedLock: Some(x_check_reserved_lock),
    xFileControl: Some(x_file_control),
    xSectorSize: Some(x_sector_size),
    xDeviceCharacteristics: Some(x_device_characteristics),
    xShmMap: Some(x_shm_map),
    xShmLock: Some(x_shm_lock),
    xShmBarrier: Some(x_shm_barrier),
    xShmUnmap: Some(x_shm_unmap),
    xFetch: None,
    xUnfetch: None,
};

/// The wrapped file's methods.
unsafe fn methods(f: *mut ffi::sqlite3_file) -> Option<&'static ffi::sqlite3_io_methods> {
    (*inner(f)).pMethods.as_ref()
}

unsafe extern "C" fn x_close(f: *mut ffi::sqlite3_file) -> c_int {
    let file = f.cast::<File>();
    if !(*file).sums.is_null() {
        drop(Box::from_raw((*file).sums));
        (*file).sums = std::ptr::null_mut();
    }
    match methods(f).and_then(|m| m.xClose) {
        Some(x) => x(inner(f)),
        None => ffi::SQLITE_OK,
    }
}

unsafe extern "C" fn x_read(
    f: *mut ffi::sqlite3_file,
    buf: *mut c_void,
    amt: c_int,
    off: i64,
) -> c_int {
    let Some(read) = methods(f).and_then(|m| m.xRead) else {
        return ffi::SQLITE_IOERR_READ;
    };
    let Some(sums) = (*f.cast::<File>()).sums.as_mut() else {
        return read(inner(f), buf, amt, off);
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
        let rc = read(inner(f), buf, amt, off);
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
        let rc = read(inner(f), page.as_mut_ptr().cast(), size, first_at);
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

unsafe extern "C" fn x_write(
    f: *mut ffi::sqlite3_file,
    buf: *const c_void,
    amt: c_int,
    off: i64,
) -> c_int {
    match methods(f).and_then(|m| m.xWrite) {
        Some(x) => x(inner(f), buf, amt, off),
        None => ffi::SQLITE_IOERR_WRITE,
    }
}

unsafe extern "C" fn x_truncate(f: *mut ffi::sqlite3_file, size: i64) -> c_int {
    match methods(f).and_then(|m| m.xTruncate) {
        Some(x) => x(inner(f), size),
        None => ffi::SQLITE_IOERR_TRUNCATE,
    }
}

unsafe extern "C" fn x_sync(f: *mut ffi::sqlite3_file, flags: c_int) -> c_int {
    match methods(f).and_then(|m| m.xSync) {
        Some(x) => x(inner(f), flags),
        None => ffi::SQLITE_IOERR_FSYNC,
    }
}

unsafe extern "C" fn x_file_size(f: *mut ffi::sqlite3_file, size: *mut i64) -> c_int {
    match methods(f).and_then(|m| m.xFileSize) {
        Some(x) => x(inner(f), size),
        None => ffi::SQLITE_IOERR_FSTAT,
    }
}

unsafe extern "C" fn x_lock(f: *mut ffi::sqlite3_file, lock: c_int) -> c_int {
    match methods(f).and_then(|m| m.xLock) {
        Some(x) => x(inner(f), lock),
        None => ffi::SQLITE_IOERR_LOCK,
    }
}

unsafe extern "C" fn x_unlock(f: *mut ffi::sqlite3_file, lock: c_int) -> c_int {
    match methods(f).and_then(|m| m.xUnlock) {
        Some(x) => x(inner(f), lock),
        None => ffi::SQLITE_IOERR_UNLOCK,
    }
}

unsafe extern "C" fn x_check_reserved_lock(f: *mut ffi::sqlite3_file, out: *mut c_int) -> c_int {
    match methods(f).and_then(|m| m.xCheckReservedLock) {
        Some(x) => x(inner(f), out),
        None => ffi::SQLITE_IOERR_CHECKRESERVEDLOCK,
    }
}

unsafe extern "C" fn x_file_control(
    f: *mut ffi::sqlite3_file,
    op: c_int,
    arg: *mut c_void,
) -> c_int {
    match methods(f).and_then(|m| m.xFileControl) {
        Some(x) => x(inner(f), op, arg),
        None => ffi::SQLITE_NOTFOUND,
    }
}

unsafe extern "C" fn x_sector_size(f: *mut ffi::sqlite3_file) -> c_int {
    match methods(f).and_then(|m| m.xSectorSize) {
        Some(x) => x(inner(f)),
        None => 4096,
    }
}

unsafe extern "C" fn x_device_characteristics(f: *mut ffi::sqlite3_file) -> c_int {
    match methods(f).and_then(|m| m.xDeviceCharacteristics) {
        Some(x) => x(inner(f)),
        None => 0,
    }
}

unsafe extern "C" fn x_shm_map(
    f: *mut ffi::sqlite3_file,
    pg: c_int,
    size: c_int,
    extend: c_int,
    out: *mut *mut c_void,
) -> c_int {
    match methods(f)
        .filter(|m| m.iVersion >= 2)
        .and_then(|m| m.xShmMap)
    {
        Some(x) => x(inner(f), pg, size, extend, out),
        None => ffi::SQLITE_IOERR_SHMMAP,
    }
}

unsafe extern "C" fn x_shm_lock(
    f: *mut ffi::sqlite3_file,
    off: c_int,
    n: c_int,
    flags: c_int,
) -> c_int {
    match methods(f)
        .filter(|m| m.iVersion >= 2)
        .and_then(|m| m.xShmLock)
    {
        Some(x) => x(inner(f), off, n, flags),
        None => ffi::SQLITE_IOERR_SHMLOCK,
    }
}

unsafe extern "C" fn x_shm_barrier(f: *mut ffi::sqlite3_file) {
    if let Some(x) = methods(f)
        .filter(|m| m.iVersion >= 2)
        .and_then(|m| m.xShmBarrier)
    {
        x(inner(f))
    }
}

unsafe extern "C" fn x_shm_unmap(f: *mut ffi::sqlite3_file, delete: c_int) -> c_int {
    match methods(f)
        .filter(|m| m.iVersion >= 2)
        .and_then(|m| m.xShmUnmap)
    {
        Some(x) => x(inner(f), delete),
        None => ffi::SQLITE_OK,
    }
}
