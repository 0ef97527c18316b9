//! What the text of every report shares: counts that agree with their number, and sizes for
//! people. Each report renders itself next to where it is produced (`verify`, `status`,
//! `watch`, and the [`Report`]s of push and pull); the command line only chooses between its
//! text and its JSON.

use std::fmt;
use std::io::Write;
use std::time::Duration;

/// What a finished push or pull says it did: as one line of JSON (`--json`), or as text for a
/// person naming the remote and how long it took.
pub trait Report {
    fn json(&self) -> serde_json::Value;
    fn write_text(
        &self,
        out: &mut dyn Write,
        remote: &dyn fmt::Display,
        elapsed: Duration,
    ) -> std::io::Result<()>;
}

/// `1 change`, `2 changes`.
pub fn count(n: usize, what: &str) -> String {
    format!("{n} {what}{}", if n == 1 { "" } else { "s" })
}

/// `512 B`, `1.5 KiB`, `3.0 MiB`, `1.2 GiB`.
pub fn human_bytes(b: u64) -> String {
    match b {
        b if b >= 1 << 30 => format!("{:.1} GiB", b as f64 / (1u64 << 30) as f64),
        b if b >= 1 << 20 => format!("{:.1} MiB", b as f64 / (1u64 << 20) as f64),
        b if b >= 1 << 10 => format!("{:.1} KiB", b as f64 / 1024.0),
        b => format!("{b} B"),
    }
}
