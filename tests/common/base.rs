//! The base (the common ancestor of the three-way merge), read the one way that holds whatever
//! its storage: through the library's own read-only connection to it. Where and how its pages
//! are kept is the library's business, so a test never opens, reads or copies the files of the
//! state directory to see the base. Only the opening comes from the library: the pages are
//! SQLite's own (`sqlite_dbpage`), and every check a test makes on them stays the harness's.

use std::path::{Path, PathBuf};

/// The base of the working copy `wc`, byte for byte: its pages in order, as SQLite reads them
/// through the library's connection, inside one read transaction. Compare these, never the
/// bytes of a file in the state directory.
pub fn base_image(wc: &Path) -> Vec<u8> {
    let ws = tursync::workspace::Workspace::locate(Some(wc))
        .unwrap_or_else(|e| panic!("no workspace for {}: {e}", wc.display()));
    let conn = ws
        .open_base()
        .unwrap_or_else(|e| panic!("open the base of {}: {e}", wc.display()));
    let mut stmt = conn
        .prepare("SELECT data FROM sqlite_dbpage ORDER BY pgno")
        .unwrap();
    let pages = stmt
        .query_map([], |r| r.get::<_, Vec<u8>>(0))
        .unwrap()
        .collect::<Result<Vec<_>, _>>()
        .unwrap_or_else(|e| panic!("read the pages of the base of {}: {e}", wc.display()));
    pages.concat()
}

/// Writes the base of the working copy `wc` to `dst` as a plain SQLite file (replacing any file
/// there), for a test to open, query, check or apply SQL to; returns `dst`. Put `dst` in the
/// test's own directory, never in the state directory.
pub fn base_copy(wc: &Path, dst: &Path) -> PathBuf {
    std::fs::write(dst, base_image(wc))
        .unwrap_or_else(|e| panic!("write a copy of the base to {}: {e}", dst.display()));
    dst.to_path_buf()
}
