//! What a push did ([`PushReport`]), and how it says so: its JSON (`push --json`) and its text
//! for a person.

use std::fmt;
use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use serde::Serialize;

use crate::report::{count, Report};

/// What a push did. In JSON (`push --json`), each field under its own name but `log`, which
/// [`PushReport::json`] words.
#[derive(Debug, Default, Clone, Serialize)]
pub struct PushReport {
    pub changes: usize,
    /// Row changes sent.
    pub applied: usize,
    /// Row changes the remote already had (a re-run after a crash).
    pub skipped: usize,
    pub requests: u64,
    pub transactions: usize,
    /// Where the SQL of this push was kept.
    #[serde(skip)]
    pub log: Option<PathBuf>,
    /// Our schema changes sent, each as `diff --json` shows it.
    pub schema: Vec<serde_json::Value>,
}

impl Report for PushReport {
    /// The line `push --json` prints: every field, `"pushed"` (whether anything was), and
    /// `"log"` (where the SQL of this push was kept, or null).
    fn json(&self) -> serde_json::Value {
        let mut v = serde_json::to_value(self).expect("a push report is plain data");
        v["pushed"] = serde_json::json!(self.changes > 0);
        v["log"] = serde_json::json!(self.log.as_ref().map(|p| p.display().to_string()));
        v
    }

    /// The report for a person: what went to `remote` in `elapsed`, and, when it went as
    /// several transactions, that running push again finishes one that stopped midway.
    fn write_text(
        &self,
        out: &mut dyn Write,
        remote: &dyn fmt::Display,
        elapsed: Duration,
    ) -> std::io::Result<()> {
        if self.changes == 0 {
            return writeln!(out, "nothing to push");
        }
        writeln!(
            out,
            "pushed {} to {remote} in {:.1}s ({} applied, {} already there; {})",
            count(self.changes, "change"),
            elapsed.as_secs_f64(),
            count(self.applied, "row"),
            self.skipped,
            count(self.requests as usize, "request")
        )?;
        if self.transactions > 1 {
            writeln!(
                out,
                "note: the push was large, so it went as {} transactions; had it stopped midway, running push again would finish it",
                self.transactions
            )?;
        }
        Ok(())
    }
}

/// What `push --dry-run` prints: the SQL the push would apply, as `diff --sql` writes it, under
/// a comment that says how many changes and that nothing was sent.
///
/// ```text
/// -- dry run: 1 changes would be applied as below; nothing was sent
/// PRAGMA foreign_keys=OFF;
/// BEGIN TRANSACTION;
/// INSERT OR ABORT INTO "t" ("id", "v") VALUES (3, 'c');
/// COMMIT;
/// ```
pub fn write_dry_run(cs: &crate::changeset::Changeset, out: &mut dyn Write) -> crate::Result<()> {
    if cs.is_empty() {
        writeln!(out, "-- nothing to push")?;
        return Ok(());
    }
    writeln!(
        out,
        "-- dry run: {} changes would be applied as below; nothing was sent",
        cs.change_count()
    )?;
    cs.write_sql(out)
}
