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
    pages_of(&conn, &format!("the base of {}", wc.display()))
}

/// Every page of `conn`'s main database, in order (`what` names it in a failure).
fn pages_of(conn: &rusqlite::Connection, what: &str) -> Vec<u8> {
    let mut stmt = conn
        .prepare("SELECT data FROM sqlite_dbpage ORDER BY pgno")
        .unwrap();
    let pages = stmt
        .query_map([], |r| r.get::<_, Vec<u8>>(0))
        .unwrap()
        .collect::<Result<Vec<_>, _>>()
        .unwrap_or_else(|e| panic!("read the pages of {what}: {e}"));
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

/// The mirror of the working copy `wc` (the remote's file page for page), byte for byte as the
/// library reads it: through its checked read-only connection, from whichever file of the state
/// directory holds each page (the mirror shares its pages with the base). `None` without a
/// mirror.
pub fn mirror_image(wc: &Path) -> Option<Vec<u8>> {
    let path = wc
        .parent()
        .expect("the working copy's directory")
        .join(".tursync/mirror.db");
    if !path.exists() {
        return None;
    }
    let conn = tursync::mirror::open_immutable(&path)
        .unwrap_or_else(|e| panic!("open the mirror {}: {e}", path.display()));
    Some(pages_of(&conn, &format!("the mirror {}", path.display())))
}

/// Writes the mirror of the working copy `wc` to `dst` as a plain SQLite file in
/// rollback-journal mode (the server's is in WAL mode), for a test to check or query; returns
/// `dst`, or `None` without a mirror.
pub fn mirror_copy(wc: &Path, dst: &Path) -> Option<PathBuf> {
    let mut image = mirror_image(wc)?;
    if image.len() > 19 {
        image[18] = 1;
        image[19] = 1;
    }
    std::fs::write(dst, image)
        .unwrap_or_else(|e| panic!("write a copy of the mirror to {}: {e}", dst.display()));
    Some(dst.to_path_buf())
}

/// Makes the mirror of the working copy `wc` keep every page in `mirror.db` again, as a
/// mirror built from a fresh log does (no `mirror.own`): for a test that damages the mirror's
/// own file, as a bug or another process would, and must find the base untouched by it.
pub fn unshare_mirror(wc: &Path) {
    let image = mirror_image(wc).expect("a mirror");
    let state = wc
        .parent()
        .expect("the working copy's directory")
        .join(".tursync");
    std::fs::write(state.join("mirror.db"), image).expect("write the mirror");
    std::fs::remove_file(state.join("mirror.own")).expect("remove mirror.own");
}
