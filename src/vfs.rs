//! What every SQLite VFS of tursync shares: it wraps the default VFS, keeps the default's file
//! after its own, and passes on whatever it does not change. [`crate::page_sums`] changes the
//! reads of the mirror; [`crate::base_pages`] the reads and writes of a base that keeps only its
//! own pages.

use std::ffi::{c_char, c_int, c_void, CStr};

use rusqlite::ffi;

/// One open file: SQLite's `sqlite3_file`, the wrapper's own state, and the wrapped VFS's file
/// after them.
#[repr(C)]
pub struct File {
    pub base: ffi::sqlite3_file,
    /// The wrapper's state for this file; null when it only passes the file on.
    pub state: *mut c_void,
}

/// The wrapped file lives this many bytes into ours, 8-byte aligned.
const INNER_AT: usize = std::mem::size_of::<File>().next_multiple_of(8);

/// # Safety
/// `f` points to a `File` allocated with the VFS's `szOsFile`.
pub unsafe fn inner(f: *mut ffi::sqlite3_file) -> *mut ffi::sqlite3_file {
    f.cast::<u8>().add(INNER_AT).cast()
}

/// A wrapper's `xOpen`.
pub type XOpen = unsafe extern "C" fn(
    *mut ffi::sqlite3_vfs,
    ffi::sqlite3_filename,
    *mut ffi::sqlite3_file,
    c_int,
    *mut c_int,
) -> c_int;

/// Opens `name` with the wrapped VFS into the inner part of `file`, leaving ours unset (so SQLite
/// will not call our close on a failure). The caller sets `state` and `pMethods` after.
///
/// # Safety
/// As SQLite's `xOpen`: `file` has the VFS's `szOsFile` bytes.
pub unsafe fn open_inner(
    vfs: *mut ffi::sqlite3_vfs,
    name: ffi::sqlite3_filename,
    file: *mut ffi::sqlite3_file,
    flags: c_int,
    out_flags: *mut c_int,
) -> c_int {
    let r = root(vfs);
    let f = file.cast::<File>();
    (*f).base.pMethods = std::ptr::null();
    (*f).state = std::ptr::null_mut();
    let Some(open) = (*r).xOpen else {
        return ffi::SQLITE_CANTOPEN;
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
    }
    rc
}

/// Finishes a wrapper's `xOpen` after [`open_inner`] succeeded: `state` (a boxed value of the
/// wrapper's, or null) and `methods` become the file's.
///
/// # Safety
/// `file` was opened by [`open_inner`].
pub unsafe fn opened(
    file: *mut ffi::sqlite3_file,
    state: *mut c_void,
    methods: &'static ffi::sqlite3_io_methods,
) -> c_int {
    let f = file.cast::<File>();
    (*f).state = state;
    (*f).base.pMethods = methods;
    ffi::SQLITE_OK
}

/// A wrapper's `xClose`: its state of type `T`, if any, is taken back and handed to `finish`
/// (which returns an error code, or `SQLITE_OK`), then the wrapped file is closed. The first
/// error is returned.
///
/// # Safety
/// `f` was opened by a wrapper whose state, when not null, is a `Box<T>`.
pub unsafe fn close_with<T>(
    f: *mut ffi::sqlite3_file,
    finish: impl FnOnce(Box<T>) -> c_int,
) -> c_int {
    let file = f.cast::<File>();
    let mut rc = ffi::SQLITE_OK;
    if !(*file).state.is_null() {
        let state = Box::from_raw((*file).state.cast::<T>());
        (*file).state = std::ptr::null_mut();
        rc = finish(state);
    }
    let closed = match methods(f).and_then(|m| m.xClose) {
        Some(x) => x(inner(f)),
        None => ffi::SQLITE_OK,
    };
    if rc == ffi::SQLITE_OK {
        closed
    } else {
        rc
    }
}

/// SQLite's `xClose`, `xTruncate` and `xSync` as a wrapper gives them.
pub type XFile = unsafe extern "C" fn(*mut ffi::sqlite3_file) -> c_int;
pub type XRead = unsafe extern "C" fn(*mut ffi::sqlite3_file, *mut c_void, c_int, i64) -> c_int;
pub type XWrite = unsafe extern "C" fn(*mut ffi::sqlite3_file, *const c_void, c_int, i64) -> c_int;
pub type XTruncate = unsafe extern "C" fn(*mut ffi::sqlite3_file, i64) -> c_int;
pub type XSync = unsafe extern "C" fn(*mut ffi::sqlite3_file, c_int) -> c_int;

/// A wrapper's file methods: its own close, read, write, truncate and sync, every other call
/// passed on. Version 2: shared memory is passed on, memory-mapped I/O (version 3) is not
/// offered, so every read and write comes through the wrapper's own.
pub const fn io_methods(
    close: XFile,
    read: XRead,
    write: XWrite,
    truncate: XTruncate,
    sync: XSync,
) -> ffi::sqlite3_io_methods {
    ffi::sqlite3_io_methods {
        iVersion: 2,
        xClose: Some(close),
        xRead: Some(read),
        xWrite: Some(write),
        xTruncate: Some(truncate),
        xSync: Some(sync),
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
    }
}

/// The path of a main database SQLite opens, `None` for a temporary one.
///
/// # Safety
/// `name` is null or a filename SQLite passed to `xOpen`.
pub unsafe fn path_of(name: ffi::sqlite3_filename) -> Option<std::path::PathBuf> {
    use std::os::unix::ffi::OsStrExt;
    (!name.is_null()).then(|| {
        std::path::PathBuf::from(std::ffi::OsStr::from_bytes(CStr::from_ptr(name).to_bytes()))
    })
}

pub fn root(vfs: *mut ffi::sqlite3_vfs) -> *mut ffi::sqlite3_vfs {
    // SAFETY: our VFS's `pAppData` is the wrapped VFS, set once at registration.
    unsafe { (*vfs).pAppData.cast() }
}

pub fn register(name: &'static CStr, open: XOpen) -> Result<(), String> {
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
            zName: name.as_ptr(),
            pAppData: root.cast(),
            xOpen: Some(open),
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
            rc => Err(format!("registering the VFS {name:?} failed ({rc})")),
        }
    }
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

/// The wrapped file's methods.
pub unsafe fn methods(f: *mut ffi::sqlite3_file) -> Option<&'static ffi::sqlite3_io_methods> {
    (*inner(f)).pMethods.as_ref()
}

pub unsafe extern "C" fn x_read(
    f: *mut ffi::sqlite3_file,
    buf: *mut c_void,
    amt: c_int,
    off: i64,
) -> c_int {
    match methods(f).and_then(|m| m.xRead) {
        Some(x) => x(inner(f), buf, amt, off),
        None => ffi::SQLITE_IOERR_READ,
    }
}

pub unsafe extern "C" fn x_write(
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

pub unsafe extern "C" fn x_truncate(f: *mut ffi::sqlite3_file, size: i64) -> c_int {
    match methods(f).and_then(|m| m.xTruncate) {
        Some(x) => x(inner(f), size),
        None => ffi::SQLITE_IOERR_TRUNCATE,
    }
}

pub unsafe extern "C" fn x_sync(f: *mut ffi::sqlite3_file, flags: c_int) -> c_int {
    match methods(f).and_then(|m| m.xSync) {
        Some(x) => x(inner(f), flags),
        None => ffi::SQLITE_IOERR_FSYNC,
    }
}

pub unsafe extern "C" fn x_file_size(f: *mut ffi::sqlite3_file, size: *mut i64) -> c_int {
    match methods(f).and_then(|m| m.xFileSize) {
        Some(x) => x(inner(f), size),
        None => ffi::SQLITE_IOERR_FSTAT,
    }
}

pub unsafe extern "C" fn x_lock(f: *mut ffi::sqlite3_file, lock: c_int) -> c_int {
    match methods(f).and_then(|m| m.xLock) {
        Some(x) => x(inner(f), lock),
        None => ffi::SQLITE_IOERR_LOCK,
    }
}

pub unsafe extern "C" fn x_unlock(f: *mut ffi::sqlite3_file, lock: c_int) -> c_int {
    match methods(f).and_then(|m| m.xUnlock) {
        Some(x) => x(inner(f), lock),
        None => ffi::SQLITE_IOERR_UNLOCK,
    }
}

pub unsafe extern "C" fn x_check_reserved_lock(
    f: *mut ffi::sqlite3_file,
    out: *mut c_int,
) -> c_int {
    match methods(f).and_then(|m| m.xCheckReservedLock) {
        Some(x) => x(inner(f), out),
        None => ffi::SQLITE_IOERR_CHECKRESERVEDLOCK,
    }
}

pub unsafe extern "C" fn x_file_control(
    f: *mut ffi::sqlite3_file,
    op: c_int,
    arg: *mut c_void,
) -> c_int {
    match methods(f).and_then(|m| m.xFileControl) {
        Some(x) => x(inner(f), op, arg),
        None => ffi::SQLITE_NOTFOUND,
    }
}

pub unsafe extern "C" fn x_sector_size(f: *mut ffi::sqlite3_file) -> c_int {
    match methods(f).and_then(|m| m.xSectorSize) {
        Some(x) => x(inner(f)),
        None => 4096,
    }
}

pub unsafe extern "C" fn x_device_characteristics(f: *mut ffi::sqlite3_file) -> c_int {
    match methods(f).and_then(|m| m.xDeviceCharacteristics) {
        Some(x) => x(inner(f)),
        None => 0,
    }
}

pub unsafe extern "C" fn x_shm_map(
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

pub unsafe extern "C" fn x_shm_lock(
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

pub unsafe extern "C" fn x_shm_barrier(f: *mut ffi::sqlite3_file) {
    if let Some(x) = methods(f)
        .filter(|m| m.iVersion >= 2)
        .and_then(|m| m.xShmBarrier)
    {
        x(inner(f))
    }
}

pub unsafe extern "C" fn x_shm_unmap(f: *mut ffi::sqlite3_file, delete: c_int) -> c_int {
    match methods(f)
        .filter(|m| m.iVersion >= 2)
        .and_then(|m| m.xShmUnmap)
    {
        Some(x) => x(inner(f), delete),
        None => ffi::SQLITE_OK,
    }
}
