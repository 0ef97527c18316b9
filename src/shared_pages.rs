//! The pages the mirror shares with the base, kept once.
//!
//! After every pull from the log the base is the mirror, page for page: [`give_base`] writes
//! into the base the pages in which the mirror differs from it. Two full copies of one
//! database would cost twice its size on disk, so the mirror keeps only its own pages, those in
//! which it differs from the base, and reads every other page from `base.db`. `mirror.db` is
//! then a sparse file of the mirror's full length, and `mirror.own` says which pages it keeps:
//!
//! ```text
//! mirror.own   "tursync own 1\0\0\0"   16 bytes
//!              page size              u32, little-endian
//!              (zero)                 u32
//!              inode of base.db       u64: the base the other pages are read from
//!              bit n-1 set: page n is in mirror.db     one bit per page
//! ```
//!
//! No `mirror.own` means a mirror that keeps every page (as one built at init or from a fresh
//! log does until the next [`give_base`]). The base is never sparse: it stays a plain SQLite file
//! any client can open, and the mirror stays what may be dropped and read again from the log
//! whenever anything about it is in doubt. A `mirror.own` naming another file than `base.db`
//! (the base replaced by a rename) makes the mirror untrusted ([`crate::mirror::Mirror::health`]).
//!
//! Who keeps the invariant "a page the mirror does not keep is the base's page":
//! - the mirror's writes (a spool applied) make the pages written its own, whether written into
//!   `mirror.db` or, until the base takes them, read from the spool ([`InSpool`]);
//! - a write of SQLite's into the base (a push, a pull over SQL rows) first copies the base's
//!   page into `mirror.db`, when the mirror reads it from the base (the `tursync-base` VFS,
//!   which every connection on the base goes through); the copies and `mirror.own` are synced
//!   before the base's own sync, so before any commit of the base counts;
//! - [`give_base`] writes the mirror's own pages into the base in one transaction of the base;
//!   [`share`] then forgets them, once the mirror's own writes are synced.
//!
//! ```text
//! init                 mirror.db: page 1; 20,000 pages read from base.db
//! pull: spool applied  mirror.own: + the 40 pages the log wrote, read from the spool
//! pull: give_base      base.db takes those 40 pages; mirror.db: page 1 again, spool removed
//! push of 3 rows       mirror.db: + the base's old copies of the 5 pages the push writes
//! ```
//!
//! Every page read from the mirror, from either file, is checked against its sum in
//! `mirror.sums` ([`crate::page_sums`]): a base page the mirror should have kept and did not
//! fails its check, and the mirror is dropped.

use std::collections::HashMap;
use std::ffi::{c_int, c_void, CStr};
use std::fs;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};

use rusqlite::ffi;

use crate::durable::sync_dir;
use crate::pages::PageSet;
use crate::vfs;
use crate::{Context, Error, Result};

/// The base's file name in the state directory.
pub const BASE: &str = "base.db";
/// The mirror's pages.
const MIRROR: &str = "mirror.db";
/// Which pages the mirror keeps.
pub const OWN: &str = "mirror.own";
const MAGIC: &[u8; 16] = b"tursync own 1\0\0\0";
/// Bytes before the first bit.
const HEAD: usize = 32;
const VFS_NAME: &CStr = c"tursync-base";
/// The mirror's file holds copies of shared pages up to the database's length over this
/// ([`share`]): 2 %, well inside the workspace's 1.05× of the working copy.
const HELD: u64 = 50;

/// Which pages the mirror keeps itself, and the base it reads the others from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Own {
    pub page_size: u32,
    pub base_ino: u64,
    bits: PageSet,
}

impl Own {
    pub fn has(&self, n: u32) -> bool {
        self.bits.contains(n)
    }

    pub fn set(&mut self, n: u32) {
        self.bits.insert(n);
    }

    /// The pages kept, in order.
    fn pages(&self) -> impl Iterator<Item = u32> + '_ {
        self.bits.iter()
    }

    fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(HEAD + self.bits.as_bytes().len());
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&self.page_size.to_le_bytes());
        out.extend_from_slice(&[0; 4]);
        out.extend_from_slice(&self.base_ino.to_le_bytes());
        out.extend_from_slice(self.bits.as_bytes());
        out
    }

    /// `mirror.own` in `dir`: `Ok(None)` when there is none (the mirror keeps every page),
    /// `Err(why)` when it cannot be read.
    pub fn load(dir: &Path) -> Result<std::result::Result<Option<Own>, String>> {
        let path = dir.join(OWN);
        let bytes = match fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Ok(None)),
            Err(e) => return Err(e).during("reading", path.display()),
        };
        let damaged = |why: &str| Ok(Err(format!("{} is damaged ({why})", path.display())));
        if bytes.len() < HEAD || &bytes[..16] != MAGIC {
            return damaged("no header");
        }
        let word = |at: usize| {
            u32::from_le_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]])
        };
        let page_size = word(16);
        if !(512..=65536).contains(&page_size) || !page_size.is_power_of_two() {
            return damaged("page size");
        }
        let mut ino = [0; 8];
        ino.copy_from_slice(&bytes[24..32]);
        Ok(Ok(Some(Own {
            page_size,
            base_ino: u64::from_le_bytes(ino),
            bits: PageSet::from_bytes(bytes[HEAD..].to_vec()),
        })))
    }

    /// Writes `mirror.own` over itself, in place, synced with `sync`: for changes that any mix
    /// of old and new bytes left by a crash reads rightly (bits set for pages whose copies are
    /// already written, or cleared for pages the base holds too).
    fn rewrite(&self, dir: &Path, sync: bool) -> Result<()> {
        let path = dir.join(OWN);
        let f = fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .during("opening", path.display())?;
        let bytes = self.encode();
        f.write_all_at(&bytes, 0)
            .during("writing", path.display())?;
        f.set_len(bytes.len() as u64)
            .during("writing", path.display())?;
        if sync {
            f.sync_data().during("syncing", path.display())?;
        }
        Ok(())
    }

    /// Writes `mirror.own` aside, synced, and renames it into place.
    fn save(&self, dir: &Path) -> Result<()> {
        let path = dir.join(OWN);
        let tmp = dir.join("mirror.own.new");
        crate::durable::write_synced(&tmp, &self.encode())?;
        fs::rename(&tmp, &path).during("renaming into place", path.display())?;
        sync_dir(dir)
    }
}

impl Own {
    /// Why the mirror cannot read its shared pages from the `base.db` of `dir` whose inode is
    /// `ino` (`None`: there is none), if it cannot: `mirror.own` was written for another file.
    fn other_base(&self, dir: &Path, ino: Option<u64>) -> Option<String> {
        (ino != Some(self.base_ino)).then(|| {
            format!(
                "{} reads pages from a base that is not {}",
                dir.join(OWN).display(),
                dir.join(BASE).display()
            )
        })
    }
}

/// The pages on which the base of `dir` may differ from the mirror: those the mirror keeps
/// itself (every other page it reads from the base). `None` when that is not known (a mirror
/// that keeps every page, or a map that cannot be read): any page may differ.
pub fn kept_apart(dir: &Path) -> Result<Option<PageSet>> {
    Ok(match Own::load(dir)? {
        Ok(Some(own)) => Some(own.bits),
        _ => None,
    })
}

/// The inode of `dir`'s base, if it has one.
fn base_ino(dir: &Path) -> Option<u64> {
    fs::metadata(dir.join(BASE)).ok().map(|m| m.ino())
}

/// Why the mirror in `dir` cannot read its pages as `mirror.own` says, if it cannot.
pub fn disagrees(dir: &Path, page_size: u32) -> Result<Option<String>> {
    Ok(match Own::load(dir)? {
        Ok(None) => None,
        Err(why) => Some(why),
        Ok(Some(own)) if own.page_size != page_size => Some(format!(
            "{} is of pages of {} bytes, the mirror's are {page_size}",
            dir.join(OWN).display(),
            own.page_size
        )),
        Ok(Some(own)) => own.other_base(dir, base_ino(dir)),
    })
}

/// Removes `mirror.own` (with the mirror).
pub fn forget(dir: &Path) -> Result<()> {
    let path = dir.join(OWN);
    match fs::remove_file(&path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(e).during("removing", path.display())
        }
        _ => Ok(()),
    }
}

/// `base.db` of `dir`, opened once per file for reading the pages the mirror shares with it and
/// never closed: closing a descriptor on a database file drops every SQLite lock this process
/// holds on it.
fn base_file(dir: &Path) -> std::io::Result<Arc<fs::File>> {
    static FILES: Mutex<Vec<(PathBuf, u64, Arc<fs::File>)>> = Mutex::new(Vec::new());
    let path = dir.join(BASE);
    let ino = fs::metadata(&path)?.ino();
    let mut files = FILES
        .lock()
        .map_err(|_| std::io::Error::other("base files"))?;
    if let Some((_, _, f)) = files.iter().find(|(p, i, _)| *p == path && *i == ino) {
        return Ok(f.clone());
    }
    let f = Arc::new(fs::File::open(&path)?);
    files.push((path, ino, f.clone()));
    Ok(f)
}

/// Pages of the mirror that are still only in the spool that brought them: where each page's
/// bytes are in the spool. A pull whose base takes the mirror's pages reads them there instead
/// of writing them into `mirror.db` first ([`crate::mirror::Mirror::apply_settling`]): they go
/// from the spool into the base, and the spool, written in one stretch, is freed in one.
/// Until it is removed, the spool is what a killed run applies into `mirror.db` again, so the
/// pages are in a file whatever happens.
pub struct InSpool {
    pub file: fs::File,
    /// The byte offset of each page's last copy in the spool.
    pub at: HashMap<u32, u64>,
    pub page_size: usize,
}

impl InSpool {
    /// Reads page `n` into `out` (one page long), if the spool holds it.
    pub fn read(&self, n: u32, out: &mut [u8]) -> Option<std::io::Result<()>> {
        let at = *self.at.get(&n)?;
        Some(self.file.read_exact_at(out, at))
    }
}

/// The mirrors whose pages are partly in their spool, by state directory, for this process.
static IN_SPOOL: Mutex<Vec<(PathBuf, Arc<InSpool>)>> = Mutex::new(Vec::new());

/// The state directory as a key of [`IN_SPOOL`]: the mirror is opened by paths spelled in
/// more than one way (SQLite's absolute name, the workspace's).
fn spool_key(dir: &Path) -> PathBuf {
    fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf())
}

/// From now on, in this process, the mirror of `dir` reads the pages of `spool` from it; the
/// caller keeps them too.
pub fn read_in_spool(dir: &Path, spool: InSpool) -> Result<Arc<InSpool>> {
    let key = spool_key(dir);
    let mut held = IN_SPOOL
        .lock()
        .map_err(|_| Error::Unexpected("the spools' pages".into()))?;
    held.retain(|(d, _)| *d != key);
    let spool = Arc::new(spool);
    held.push((key, spool.clone()));
    Ok(spool)
}

/// The mirror of `dir` no longer reads pages from its spool.
pub fn not_in_spool(dir: &Path) {
    let key = spool_key(dir);
    if let Ok(mut held) = IN_SPOOL.lock() {
        held.retain(|(d, _)| *d != key);
    }
}

fn in_spool(dir: &Path) -> Option<Arc<InSpool>> {
    let held = IN_SPOOL.lock().ok()?;
    // Nearly always none: the directory's name is not resolved for nothing.
    if held.is_empty() {
        return None;
    }
    let key = spool_key(dir);
    held.iter().find(|(d, _)| *d == key).map(|(_, s)| s.clone())
}

/// Where the mirror of `dir` reads its pages: what [`crate::page_sums`]'s VFS asks for each
/// page it reads (and checks after).
pub struct Pages {
    own: Own,
    base: Arc<fs::File>,
    spool: Option<Arc<InSpool>>,
}

impl Pages {
    /// `None` when the mirror keeps every page; an error when it cannot read them.
    pub fn open(dir: &Path) -> std::result::Result<Option<Pages>, String> {
        let own = match Own::load(dir) {
            Ok(Ok(Some(own))) => own,
            Ok(Ok(None)) => return Ok(None),
            Ok(Err(why)) => return Err(why),
            Err(e) => return Err(e.to_string()),
        };
        let base = base_file(dir).map_err(|e| format!("{}: {e}", dir.join(BASE).display()))?;
        if let Some(why) = own.other_base(dir, base.metadata().map(|m| m.ino()).ok()) {
            return Err(why);
        }
        Ok(Some(Pages {
            own,
            base,
            spool: in_spool(dir),
        }))
    }

    /// Reads page `n` from the spool into `out`, if the mirror reads it there.
    pub fn read_in_spool(&self, n: u32, out: &mut [u8]) -> Option<std::io::Result<()>> {
        self.spool.as_ref()?.read(n, out)
    }

    /// Whether page `n` is read from the base instead of `mirror.db`.
    pub fn from_base(&self, n: u32) -> bool {
        !self.own.has(n)
    }

    /// Reads page `n` of the base into `out`, zeros past its end.
    pub fn read_base(&self, n: u32, out: &mut [u8]) -> std::io::Result<()> {
        let at = (u64::from(n) - 1) * self.own.page_size as u64;
        let mut got = 0;
        while got < out.len() {
            match self.base.read_at(&mut out[got..], at + got as u64) {
                Ok(0) => break,
                Ok(k) => got += k,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        out[got..].fill(0);
        Ok(())
    }
}

/// The mirror of a state directory read page by page from whichever file holds each page,
/// unchecked (the caller compares what it reads): `mirror.own` and the files opened once for
/// all the pages read.
pub struct MirrorPages {
    dir: PathBuf,
    /// Where the shared pages are read, or why they cannot be (every read then fails).
    shared: std::result::Result<Option<Pages>, String>,
    mirror: fs::File,
}

impl MirrorPages {
    /// Fails only when `mirror.db` cannot be opened.
    pub fn open(dir: &Path) -> std::result::Result<MirrorPages, String> {
        let path = dir.join(MIRROR);
        Ok(MirrorPages {
            dir: dir.to_path_buf(),
            shared: Pages::open(dir),
            mirror: fs::File::open(&path).map_err(|e| format!("{}: {e}", path.display()))?,
        })
    }

    /// Page `n`, `out.len()` bytes long.
    pub fn read(&self, n: u32, out: &mut [u8]) -> std::result::Result<(), String> {
        match &self.shared {
            Err(why) => Err(why.clone()),
            Ok(Some(p)) if p.from_base(n) => p
                .read_base(n, out)
                .map_err(|e| format!("{}: {e}", self.dir.join(BASE).display())),
            Ok(shared) => match shared.as_ref().and_then(|p| p.read_in_spool(n, out)) {
                Some(read) => read.map_err(|e| format!("the spool of {}: {e}", self.dir.display())),
                None => self
                    .mirror
                    .read_exact_at(out, (u64::from(n) - 1) * out.len() as u64)
                    .map_err(|e| format!("{}: {e}", self.dir.join(MIRROR).display())),
            },
        }
    }
}

/// Records that the mirror of `dir` now keeps `pages` itself and every page past `old_len`
/// up to `new_len` (written by a spool): in place, not synced (the spool is kept until
/// [`sync_own`] has, and applied again after a crash). Nothing to do for a mirror
/// that keeps every page.
pub fn mirror_wrote(
    dir: &Path,
    pages: impl IntoIterator<Item = u32>,
    old_len: u32,
    new_len: u32,
) -> Result<()> {
    let mut own = match Own::load(dir)? {
        Ok(Some(own)) => own,
        Ok(None) => return Ok(()),
        Err(why) => return Err(Error::Workspace(why)),
    };
    for n in pages {
        own.set(n);
    }
    for n in old_len + 1..=new_len {
        own.set(n);
    }
    own.rewrite(dir, false)
}

/// Syncs `mirror.own`, if there is one.
pub fn sync_own(dir: &Path) -> Result<()> {
    let path = dir.join(OWN);
    match fs::File::open(&path) {
        Ok(f) => f.sync_all().during("syncing", path.display()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e).during("opening", path.display()),
    }
}

/// Makes the mirror of `dir` read from the base every page but page 1: called when the base
/// holds the mirror's content page for page ([`give_base`]'s transaction; at init,
/// [`base_from_built`] makes the base of the mirror itself).
/// `mirror.own` goes first, synced (naming page 1 and the base), then the other pages are
/// punched out of `mirror.db`: until then the mirror keeps them in both files, which hold the
/// same bytes, so any mix of old and new bits a crash leaves reads the same pages.
pub fn share(dir: &Path) -> Result<()> {
    let page_size = page_size_of(&dir.join(MIRROR))?;
    let ino = base_ino(dir)
        .ok_or_else(|| Error::Workspace(format!("{} is missing", dir.join(BASE).display())))?;
    let mut own = Own {
        page_size,
        base_ino: ino,
        bits: PageSet::default(),
    };
    own.set(1);
    match Own::load(dir)? {
        // The same base: the bits are cleared in place, one sync.
        Ok(Some(old)) if old.base_ino == ino && old.page_size == page_size => {
            own.rewrite(dir, true)?
        }
        _ => own.save(dir)?,
    }
    let path = dir.join(MIRROR);
    let f = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&path)
        .during("opening", path.display())?;
    let meta = f.metadata().during("reading", path.display())?;
    let len = meta.len();
    let size = u64::from(page_size);
    // Every page but page 1 is now read from the base, so what the file holds past one page
    // is copies nobody reads. They are freed once they pass [`HELD`] of the database, all in
    // one call, not after every pull: freeing costs per stretch of the file (on a mount with
    // `discard`, about 0.1 ms each, 7 ms for the 100 pages of a small pull), and a page
    // written again over a copy still held needs no new block.
    if meta.blocks() * 512 <= size + len / HELD || punch_hole(&f, size, len).is_ok() {
        return Ok(());
    }
    // A file system that cannot punch holes: a sparse copy holding page 1 is renamed into place.
    let mut page1 = vec![0; page_size as usize];
    f.read_exact_at(&mut page1, 0)
        .during("reading page 1 of", path.display())?;
    drop(f);
    mirror_of_page1(dir, &page1, len)
}

/// Makes the mirror that `build` just wrote in `dir` (init's state directory, built aside, which
/// no connection has opened) the base, without a copy: `mirror.db` becomes `base.db`, in
/// rollback-journal mode, and a new `mirror.db` keeps page 1 as the log wrote it and reads every
/// other page from the base. It ends as a copy to the base followed by [`share`] would, without
/// writing the database a second time and then freeing it from the mirror (at 1M rows, 84 MB
/// written, synced, and punched out again in 20 ms).
///
/// ```text
/// before:  mirror.db [p1 p2 … pN] (synced)            base.db —
/// after:   mirror.db [p1 ·  … · ]  mirror.own {p1}    base.db [p1′ p2 … pN]   p1′: bytes 18–19 = 1
/// ```
///
/// A crash midway leaves a state directory that is never renamed into place: nothing to finish.
pub fn base_from_built(dir: &Path) -> Result<()> {
    let (mirror, base) = (dir.join(MIRROR), dir.join(BASE));
    let page_size = page_size_of(&mirror)?;
    let mut page1 = vec![0; page_size as usize];
    let len = fs::File::open(&mirror)
        .and_then(|f| {
            f.read_exact_at(&mut page1, 0)?;
            Ok(f.metadata()?.len())
        })
        .during("reading page 1 of", mirror.display())?;
    fs::rename(&mirror, &base).during("renaming the built mirror to", base.display())?;
    crate::mirror::set_rollback_journal(&base)?;
    crate::durable::sync_file(&base)?;
    let ino =
        base_ino(dir).ok_or_else(|| Error::Workspace(format!("{} is missing", base.display())))?;
    let mut own = Own {
        page_size,
        base_ino: ino,
        bits: PageSet::default(),
    };
    own.set(1);
    own.save(dir)?;
    mirror_of_page1(dir, &page1, len)
}

/// Writes `mirror.db` of `dir` anew: a sparse file of `len` bytes holding `page1` only, synced,
/// written aside and renamed into place.
fn mirror_of_page1(dir: &Path, page1: &[u8], len: u64) -> Result<()> {
    let path = dir.join(MIRROR);
    let new = dir.join("mirror.db.new");
    let _ = fs::remove_file(&new);
    let f = fs::OpenOptions::new()
        .create_new(true)
        .write(true)
        .open(&new)
        .during("creating", new.display())?;
    f.set_len(len).during("sizing", new.display())?;
    f.write_all_at(page1, 0).during("writing", new.display())?;
    f.sync_all().during("syncing", new.display())?;
    drop(f);
    fs::rename(&new, &path).during("renaming into place", path.display())?;
    sync_dir(dir)
}

/// Frees the bytes `from..to` of `f` on disk, keeping its length: they then read as zeros.
fn punch_hole(f: &fs::File, from: u64, to: u64) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let (Ok(off), Ok(len)) = (
        libc::off_t::try_from(from),
        libc::off_t::try_from(to - from),
    ) else {
        return Err(std::io::Error::other("offset"));
    };
    // SAFETY: a plain system call on a descriptor `f` owns; no memory is passed.
    let rc = unsafe {
        libc::fallocate(
            f.as_raw_fd(),
            libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
            off,
            len,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Makes the mirror of `dir` keep every page itself again, copying from the base those it
/// reads from it, synced, then removing `mirror.own`: before the base is replaced by another
/// file (the SQL path's download), which the mirror cannot read its pages from. Nothing to do
/// for a mirror that keeps every page, or none.
pub fn unshare(dir: &Path) -> Result<()> {
    let pages = match Pages::open(dir) {
        Ok(Some(pages)) => pages,
        Ok(None) => return Ok(()),
        // A mirror that cannot read its pages is untrusted already: the next pull drops it.
        Err(_) => return Ok(()),
    };
    let path = dir.join(MIRROR);
    let mirror = fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .during("opening", path.display())?;
    let ps = pages.own.page_size as usize;
    let len = mirror.metadata().during("reading", path.display())?.len();
    let mut page = vec![0; ps];
    for n in 1..=u32::try_from(len / ps as u64).unwrap_or(0) {
        if pages.from_base(n) {
            pages
                .read_base(n, &mut page)
                .during("reading a page of", dir.join(BASE).display())?;
            mirror
                .write_all_at(&page, (u64::from(n) - 1) * ps as u64)
                .during("writing", path.display())?;
        }
    }
    mirror.sync_all().during("syncing", path.display())?;
    forget(dir)?;
    sync_dir(dir)
}

/// Makes the base of `dir` the mirror as it is now, page for page, in one transaction of the
/// base on `conn` (opened through [`open`]): the pages the mirror keeps are written into the
/// base, the base cut or grown to the mirror's length, page 1 in rollback-journal mode and
/// with a change counter past the old base's (so the new base's stamp is one no record names).
/// [`share`] then makes the mirror read every page from the base again, once the mirror's own
/// writes are synced (until then the mirror keeps its pages in both files, which hold the same
/// bytes). `read` gives page `n` of the mirror, checked against its
/// sum: a damaged page fails the move, which then changes nothing. The caller holds the
/// workspace lock.
///
/// ```text
/// base.db: 50 pages; mirror: 52 pages, keeps 1, 17, 40, 51, 52 (the log wrote 17, 40, 51
///          and the file grew by 52), reads the rest from base.db
/// give_base -> base.db: 52 pages, 1, 17, 40, 51 and 52 written from the mirror
/// share     -> mirror.own: page 1; mirror.db: page 1, the rest holes
/// ```
pub fn give_base(
    dir: &Path,
    conn: &mut rusqlite::Connection,
    mut read: impl FnMut(u32, &mut Vec<u8>) -> Result<()>,
) -> Result<()> {
    let own = match Own::load(dir)? {
        Ok(Some(own)) => own,
        // A mirror that keeps every page gives them all, once.
        Ok(None) => {
            let path = dir.join(MIRROR);
            let len = fs::metadata(&path).during("reading", path.display())?.len();
            let page_size = page_size_of(&path)?;
            let mut own = Own {
                page_size,
                base_ino: 0,
                bits: PageSet::default(),
            };
            for n in 1..=u32::try_from(len / u64::from(page_size)).unwrap_or(0) {
                own.set(n);
            }
            own
        }
        Err(why) => return Err(Error::Workspace(why)),
    };
    let path = dir.join(MIRROR);
    let ps = own.page_size as usize;
    let len = fs::metadata(&path).during("reading", path.display())?.len();
    let pages = u32::try_from(len / ps as u64)
        .map_err(|_| Error::Unexpected(format!("{} has too many pages", path.display())))?;
    // The pages given are held in SQLite's cache up to 256 MB: past its default 2 MB, each
    // spill of dirty pages to the file syncs the journal first (at 1 % of a 1M-row table,
    // 9,000 pages given, that was 110 fsyncs instead of a handful).
    conn.execute_batch("PRAGMA cache_size = -262144")?;
    let tx = conn.transaction()?;
    let base_pages: u32 = tx.query_row("PRAGMA page_count", [], |r| r.get(0))?;
    let old_counter = tx.query_row("SELECT data FROM sqlite_dbpage WHERE pgno = 1", [], |r| {
        let page: Vec<u8> = r.get(0)?;
        Ok(page
            .get(24..28)
            .map_or(0, |c| u32::from_be_bytes([c[0], c[1], c[2], c[3]])))
    })?;
    {
        let mut put = tx.prepare("INSERT INTO sqlite_dbpage(pgno, data) VALUES (?1, ?2)")?;
        let mut page = vec![0; ps];
        // Pages past the base's end that the mirror reads from the base (zeros): written too,
        // so the base grows as the mirror did.
        let grown = (base_pages + 1..=pages).filter(|&n| !own.has(n));
        // Page 1 last, after the cut: it holds the schema's cookie, and SQLite reads the
        // schema again, from the pages as they are then, once the cookie moved. Never the
        // lock-byte page, which a database past 1 GB has and SQLite never uses (the mirror
        // counts it among the pages its file grew by).
        let lock_byte = lock_byte_page(own.page_size);
        let mut kept: Vec<u32> = own
            .pages()
            .filter(|&n| n > 1 && n <= pages)
            .chain(grown)
            .filter(|&n| n != lock_byte)
            .collect();
        if pages < base_pages {
            put.execute(rusqlite::params![pages + 1, rusqlite::types::Null])?;
        }
        kept.push(1);
        // Every page given is read as the mirror reads it, checked (page 1 too, whatever
        // `mirror.own` says of it: a page the mirror does not hold as its sum says fails).
        for n in kept {
            read(n, &mut page)?;
            if page.len() != ps {
                return Err(Error::Unexpected(format!(
                    "page {n} of {} holds {} bytes, not {ps}",
                    path.display(),
                    page.len()
                )));
            }
            if n == 1 {
                // The server's file is in WAL mode; the base is in rollback-journal mode.
                page[18] = 1;
                page[19] = 1;
                let counter = u32::from_be_bytes([page[24], page[25], page[26], page[27]]);
                let next = counter.max(old_counter).wrapping_add(1).to_be_bytes();
                page[24..28].copy_from_slice(&next);
                page[92..96].copy_from_slice(&next);
            }
            put.execute(rusqlite::params![n, &page])?;
        }
    }
    tx.commit()?;
    Ok(())
}

/// SQLite's lock-byte page: the one holding the byte at offset 1 GB (`PENDING_BYTE`), which
/// SQLite keeps for its file locks and never uses. Its pager refuses to read or write it
/// (`SQLITE_CORRUPT`), so a page-by-page copy through `sqlite_dbpage` passes over it; the file
/// of a database past 1 GB holds it all the same, unused. With pages of 4096 bytes:
///
/// ```text
/// 1073741824 / 4096 + 1 = page 262145
/// ```
fn lock_byte_page(page_size: u32) -> u32 {
    (1 << 30) / page_size.max(1) + 1
}

/// The page size a database file's header names.
fn page_size_of(path: &Path) -> Result<u32> {
    let mut h = [0; 2];
    fs::File::open(path)
        .and_then(|f| f.read_exact_at(&mut h, 16))
        .during("reading the header of", path.display())?;
    Ok(match u16::from_be_bytes(h) {
        1 => 65536,
        s => u32::from(s),
    })
}

/// The name of the base's VFS, registered on first use.
pub fn vfs_name() -> std::result::Result<&'static str, String> {
    static REGISTERED: OnceLock<std::result::Result<(), String>> = OnceLock::new();
    REGISTERED
        .get_or_init(|| vfs::register(VFS_NAME, x_open))
        .clone()?;
    Ok("tursync-base")
}

/// Opens a database file of ours with `flags` through the base's VFS: a base whose pages the
/// mirror shares gives the mirror its copy of each page before SQLite overwrites it; any other
/// file is passed on.
pub fn open(path: &Path, flags: rusqlite::OpenFlags) -> Result<rusqlite::Connection> {
    let vfs =
        vfs_name().map_err(|e| Error::Unexpected(format!("opening {}: {e}", path.display())))?;
    rusqlite::Connection::open_with_flags_and_vfs(path, flags, vfs)
        .during("opening", path.display())
}

/// A base opened for writing whose pages the mirror shares.
struct Sharing {
    own: Own,
    /// `mirror.own`, whose bits are set in place as pages are given.
    own_file: fs::File,
    mirror: fs::File,
    /// The mirror's length in pages.
    mirror_pages: u32,
    /// Pages copied into the mirror and not yet synced.
    dirty: bool,
}

impl Sharing {
    /// Gives the mirror its copy of pages `first..=last` of the base, read through `f` (the
    /// base's own file), where the mirror reads them from the base.
    unsafe fn keep(&mut self, f: *mut ffi::sqlite3_file, first: u64, last: u64) -> c_int {
        let Some(read) = vfs::methods(f).and_then(|m| m.xRead) else {
            return ffi::SQLITE_IOERR_READ;
        };
        let ps = self.own.page_size as u64;
        let mut page = vec![0u8; ps as usize];
        for n in first..=last.min(u64::from(self.mirror_pages)) {
            let n32 = n as u32;
            if self.own.has(n32) {
                continue;
            }
            let (Ok(size), Ok(at)) = (c_int::try_from(ps), i64::try_from((n - 1) * ps)) else {
                return ffi::SQLITE_IOERR_READ;
            };
            let rc = read(vfs::inner(f), page.as_mut_ptr().cast(), size, at);
            if rc != ffi::SQLITE_OK && rc != ffi::SQLITE_IOERR_SHORT_READ {
                return rc;
            }
            if self.mirror.write_all_at(&page, (n - 1) * ps).is_err() {
                return ffi::SQLITE_IOERR_WRITE;
            }
            self.own.set(n32);
            // The bit is in the file before the base's page is overwritten, so a process killed
            // at any moment leaves the mirror reading its copy (the page cache keeps the order);
            // the rollback of the base's hot journal then finds the page kept and leaves it.
            let (i, byte) = self.own.bits.byte_of(n32);
            if self
                .own_file
                .write_all_at(&[byte], (HEAD + i) as u64)
                .is_err()
            {
                return ffi::SQLITE_IOERR_WRITE;
            }
            self.dirty = true;
        }
        ffi::SQLITE_OK
    }

    /// Syncs the copies given to the mirror, then `mirror.own`.
    fn settle(&mut self) -> bool {
        if !self.dirty {
            return true;
        }
        let ok = self.mirror.sync_all().is_ok() && self.own_file.sync_all().is_ok();
        self.dirty = !ok;
        ok
    }
}

unsafe extern "C" fn x_open(
    vfs: *mut ffi::sqlite3_vfs,
    name: ffi::sqlite3_filename,
    file: *mut ffi::sqlite3_file,
    flags: c_int,
    out_flags: *mut c_int,
) -> c_int {
    // Only a connection that can write the base has copies to give the mirror.
    let writes = flags & ffi::SQLITE_OPEN_READWRITE != 0;
    let sharing = match (flags & ffi::SQLITE_OPEN_MAIN_DB != 0, vfs::path_of(name)) {
        (true, Some(path)) if writes && path.file_name() == Some(BASE.as_ref()) => {
            match path.parent().map(sharing) {
                Some(Ok(s)) => s,
                Some(Err(_)) | None => return ffi::SQLITE_CANTOPEN,
            }
        }
        _ => None,
    };
    let rc = vfs::open_inner(vfs, name, file, flags, out_flags);
    if rc != ffi::SQLITE_OK {
        return rc;
    }
    let state = sharing.map_or(std::ptr::null_mut(), |s| Box::into_raw(Box::new(s)).cast());
    vfs::opened(file, state, &METHODS)
}

/// What a connection on the base of `dir` must keep for the mirror: `None` when the mirror
/// reads nothing from it (no mirror, or one that keeps every page or reads another file).
fn sharing(dir: &Path) -> Result<Option<Sharing>> {
    let own = match Own::load(dir)? {
        Ok(Some(own)) if own.other_base(dir, base_ino(dir)).is_none() => own,
        // A damaged or stale `mirror.own` makes the mirror untrusted: it reads nothing of the
        // base that counts, and is dropped by the next pull.
        _ => return Ok(None),
    };
    let path = dir.join(MIRROR);
    let mirror = match fs::OpenOptions::new().read(true).write(true).open(&path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).during("opening", path.display()),
    };
    let len = mirror.metadata().during("reading", path.display())?.len();
    let mirror_pages = u32::try_from(len / u64::from(own.page_size)).unwrap_or(u32::MAX);
    let own_path = dir.join(OWN);
    let own_file = fs::OpenOptions::new()
        .write(true)
        .open(&own_path)
        .during("opening", own_path.display())?;
    Ok(Some(Sharing {
        own,
        own_file,
        mirror,
        mirror_pages,
        dirty: false,
    }))
}

/// Every write comes through [`x_write`] ([`vfs::io_methods`]).
static METHODS: ffi::sqlite3_io_methods =
    vfs::io_methods(x_close, vfs::x_read, x_write, x_truncate, x_sync);

/// # Safety
/// `f` is a file opened by [`x_open`].
unsafe fn sharing_of<'a>(f: *mut ffi::sqlite3_file) -> Option<&'a mut Sharing> {
    (*f.cast::<vfs::File>()).state.cast::<Sharing>().as_mut()
}

unsafe extern "C" fn x_close(f: *mut ffi::sqlite3_file) -> c_int {
    vfs::close_with::<Sharing>(f, |mut s| {
        if s.settle() {
            ffi::SQLITE_OK
        } else {
            ffi::SQLITE_IOERR_CLOSE
        }
    })
}

unsafe extern "C" fn x_write(
    f: *mut ffi::sqlite3_file,
    buf: *const c_void,
    amt: c_int,
    off: i64,
) -> c_int {
    if let Some(s) = sharing_of(f) {
        let (Ok(len), Ok(start)) = (u64::try_from(amt), u64::try_from(off)) else {
            return ffi::SQLITE_IOERR_WRITE;
        };
        let ps = u64::from(s.own.page_size);
        let rc = s.keep(f, start / ps + 1, (start + len.max(1) - 1) / ps + 1);
        if rc != ffi::SQLITE_OK {
            return rc;
        }
    }
    vfs::x_write(f, buf, amt, off)
}

unsafe extern "C" fn x_truncate(f: *mut ffi::sqlite3_file, size: i64) -> c_int {
    if let Some(s) = sharing_of(f) {
        let Ok(size) = u64::try_from(size) else {
            return ffi::SQLITE_IOERR_TRUNCATE;
        };
        let ps = u64::from(s.own.page_size);
        // Pages cut off the base that the mirror reads from it are given to it first; they are
        // synced before the truncation, which SQLite syncs only after.
        let rc = s.keep(f, size.div_ceil(ps) + 1, u64::from(s.mirror_pages));
        if rc != ffi::SQLITE_OK {
            return rc;
        }
        if !s.settle() {
            return ffi::SQLITE_IOERR_TRUNCATE;
        }
    }
    vfs::x_truncate(f, size)
}

unsafe extern "C" fn x_sync(f: *mut ffi::sqlite3_file, flags: c_int) -> c_int {
    // The mirror's copies are synced before the base's writes: a crash after the base's sync
    // could otherwise leave a base page changed whose old copy the mirror never got.
    if let Some(s) = sharing_of(f) {
        if !s.settle() {
            return ffi::SQLITE_IOERR_FSYNC;
        }
    }
    vfs::x_sync(f, flags)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Gives the base of `dir` the mirror's pages as a pull does, each read with `MirrorPages`
    /// (the tests compare what lands); returns the pages read, in order.
    fn give(dir: &Path) -> Vec<u32> {
        let mut asked = Vec::new();
        let mut conn = open(&dir.join(BASE), Default::default()).unwrap();
        give_base(dir, &mut conn, |n, out| {
            asked.push(n);
            out.resize(4096, 0);
            MirrorPages::open(dir)
                .and_then(|m| m.read(n, out))
                .map_err(Error::Workspace)
        })
        .unwrap();
        asked
    }

    /// A state directory whose base holds `rows` rows and whose mirror is a page copy of it
    /// that shares every page but page 1 with it, as init leaves them.
    fn shared(rows: i64) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path().join(BASE);
        let conn = rusqlite::Connection::open(&base).unwrap();
        conn.execute_batch(
            "CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT);
             WITH RECURSIVE c(x) AS (VALUES(1) UNION ALL SELECT x + 1 FROM c WHERE x < 2000)
             INSERT INTO t SELECT x, printf('%080d', x) FROM c;",
        )
        .unwrap();
        conn.execute("DELETE FROM t WHERE id > ?1", [rows]).unwrap();
        drop(conn);
        fs::copy(&base, dir.path().join(MIRROR)).unwrap();
        share(dir.path()).unwrap();
        dir
    }

    /// The mirror's pages as [`MirrorPages`] reads them.
    fn mirror_image(dir: &Path) -> Vec<u8> {
        let len = fs::metadata(dir.join(MIRROR)).unwrap().len();
        let mut out = Vec::new();
        let mut page = vec![0; 4096];
        for n in 1..=(len / 4096) as u32 {
            MirrorPages::open(dir).unwrap().read(n, &mut page).unwrap();
            out.extend_from_slice(&page);
        }
        out
    }

    /// A mirror just built becomes the base without a copy: the base is its bytes with the
    /// header saying rollback journal, the mirror still reads as the log wrote it, and it keeps
    /// page 1 alone, in a file that takes about one page of disk.
    #[test]
    fn a_built_mirror_becomes_the_base_and_reads_as_it_was() {
        let dir = tempfile::tempdir().unwrap();
        let mirror = dir.path().join(MIRROR);
        let conn = rusqlite::Connection::open(&mirror).unwrap();
        conn.execute_batch(
            "PRAGMA journal_mode = WAL;
             CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT);
             WITH RECURSIVE c(x) AS (VALUES(1) UNION ALL SELECT x + 1 FROM c WHERE x < 2000)
             INSERT INTO t SELECT x, printf('%080d', x) FROM c;",
        )
        .unwrap();
        drop(conn);
        let built = fs::read(&mirror).unwrap();
        assert_eq!(built[18..20], [2, 2], "a server's file, in WAL mode");
        base_from_built(dir.path()).unwrap();
        let mut want = built.clone();
        want[18..20].copy_from_slice(&[1, 1]);
        assert!(fs::read(dir.path().join(BASE)).unwrap() == want);
        assert!(
            mirror_image(dir.path()) == built,
            "the mirror reads otherwise"
        );
        let own = Own::load(dir.path()).unwrap().unwrap().unwrap();
        assert_eq!(own.pages().collect::<Vec<_>>(), [1]);
        assert_eq!(disagrees(dir.path(), 4096).unwrap(), None);
        let on_disk = fs::metadata(&mirror).unwrap().blocks() * 512;
        assert!(on_disk <= 8192, "the mirror takes {on_disk} bytes");
        assert!(!dir.path().join("mirror.db.new").exists());
        // The base opens as a database of its own, in rollback-journal mode.
        let base = open(&dir.path().join(BASE), Default::default()).unwrap();
        let mode: String = base
            .query_row("PRAGMA journal_mode", [], |r| r.get(0))
            .unwrap();
        assert_eq!(mode, "delete");
    }

    #[test]
    fn a_write_to_the_base_leaves_the_mirror_as_it_was() {
        let dir = shared(2000);
        let before = mirror_image(dir.path());
        assert_eq!(before, fs::read(dir.path().join(BASE)).unwrap());
        let conn = open(&dir.path().join(BASE), Default::default()).unwrap();
        conn.execute_batch(
            "UPDATE t SET v = 'new' WHERE id IN (10, 1000); DELETE FROM t WHERE id > 1990;",
        )
        .unwrap();
        drop(conn);
        assert_eq!(
            mirror_image(dir.path()),
            before,
            "the mirror moved with the base"
        );
        assert_ne!(fs::read(dir.path().join(BASE)).unwrap(), before);
        // What the mirror kept are the base's old copies of the pages written, no more.
        let own = Own::load(dir.path()).unwrap().unwrap().unwrap();
        let kept = own.pages().count();
        assert!((2..10).contains(&kept), "{kept} pages kept");
    }

    #[test]
    fn give_base_makes_the_base_the_mirror_page_for_page() {
        let dir = shared(2000);
        // The base moves one way (a push), the mirror another (a spool the log wrote).
        let conn = open(&dir.path().join(BASE), Default::default()).unwrap();
        conn.execute_batch("UPDATE t SET v = 'ours' WHERE id % 70 = 0")
            .unwrap();
        drop(conn);
        let mut page = vec![0; 4096];
        MirrorPages::open(dir.path())
            .unwrap()
            .read(5, &mut page)
            .unwrap();
        page[4000] ^= 0xff;
        fs::OpenOptions::new()
            .write(true)
            .open(dir.path().join(MIRROR))
            .unwrap()
            .write_all_at(&page, 4 * 4096)
            .unwrap();
        mirror_wrote(dir.path(), [5], 0, 0).unwrap();
        let mirror = mirror_image(dir.path());
        give(dir.path());
        share(dir.path()).unwrap();
        let base = fs::read(dir.path().join(BASE)).unwrap();
        assert_eq!(base.len(), mirror.len());
        // Page for page, but for page 1's header: journal mode and change counter.
        assert_eq!(base[4096..], mirror[4096..]);
        assert_eq!(base[100..4096], mirror[100..4096]);
        assert_eq!(
            Own::load(dir.path())
                .unwrap()
                .unwrap()
                .unwrap()
                .pages()
                .count(),
            1
        );
        assert_eq!(mirror_image(dir.path())[4096..], mirror[4096..]);
    }

    #[test]
    fn a_map_that_lost_page_1_never_gives_the_base_a_page_it_did_not_read() {
        let dir = shared(100);
        // `mirror.own` cut to its header: no page is the mirror's own, page 1 included.
        let own = dir.path().join(OWN);
        let bytes = fs::read(&own).unwrap();
        fs::write(&own, &bytes[..HEAD]).unwrap();
        let asked = give(dir.path());
        assert_eq!(asked, [1], "page 1 is read like any page given");
        let base = fs::read(dir.path().join(BASE)).unwrap();
        assert_eq!(&base[..16], b"SQLite format 3\0");
    }

    #[test]
    fn a_mirror_that_keeps_every_page_again_reads_nothing_from_the_base() {
        let dir = shared(2000);
        let before = mirror_image(dir.path());
        unshare(dir.path()).unwrap();
        assert!(!dir.path().join(OWN).exists());
        assert_eq!(fs::read(dir.path().join(MIRROR)).unwrap(), before);
    }

    #[test]
    fn a_stale_or_damaged_map_is_a_disagreement() {
        let dir = shared(100);
        assert_eq!(disagrees(dir.path(), 4096).unwrap(), None);
        assert!(disagrees(dir.path(), 1024).unwrap().is_some());
        // The base replaced by another file.
        let base = dir.path().join(BASE);
        fs::copy(&base, dir.path().join("other.db")).unwrap();
        fs::rename(dir.path().join("other.db"), &base).unwrap();
        assert!(disagrees(dir.path(), 4096)
            .unwrap()
            .unwrap()
            .contains("not"));
        fs::write(dir.path().join(OWN), b"garbage").unwrap();
        assert!(disagrees(dir.path(), 4096)
            .unwrap()
            .unwrap()
            .contains("damaged"));
    }
}
