//! What a pull did ([`PullReport`]), and how it says so: its JSON (`pull --json`) and its
//! text for a person.

use std::fmt;
use std::io::Write;
use std::time::Duration;

use serde::Serialize;

use super::Renumbered;
use crate::orphans::ReferenceSettled;
use crate::report::{count, Report};

/// In JSON (`pull --json`), each field under its own name.
#[derive(Debug, Default, Clone, Serialize)]
pub struct PullReport {
    /// False when the remote had not moved since the last sync: nothing was downloaded.
    pub downloaded: bool,
    /// How their changes were read: from the pages the replication log wrote, from whole
    /// tables (and why), or over SQL.
    pub read: Option<String>,
    /// Their row changes applied to the working copy.
    pub applied: usize,
    /// Rows changed on both sides whose cells merged without conflict.
    pub merged: usize,
    /// Conflicts settled by `--ours` or `--theirs`.
    pub resolved: usize,
    /// Their schema changes applied.
    pub schema_changes: usize,
    /// Our new rows renumbered (with every reference to them in our rows).
    pub renumbered: Vec<Renumbered>,
    /// Rows restored or changed to settle references a merge broke (`--ours`, `--theirs`).
    pub references: Vec<ReferenceSettled>,
    /// Their schema changes applied, each as `diff --json` shows it.
    pub schema: Vec<serde_json::Value>,
}

/// Past this many renumbered rows or settled references, the text names how many more.
const LISTED: usize = 20;

impl Report for PullReport {
    /// The line `pull --json` prints: every field, and `"pulled": true`.
    fn json(&self) -> serde_json::Value {
        let mut v = serde_json::to_value(self).expect("a pull report is plain data");
        v["pulled"] = serde_json::json!(true);
        v
    }

    /// The report for a person: what came from `remote` in `elapsed`, then the references
    /// settled and the rows renumbered (the first few of each, and how many more).
    fn write_text(
        &self,
        out: &mut dyn Write,
        remote: &dyn fmt::Display,
        elapsed: Duration,
    ) -> std::io::Result<()> {
        if !self.downloaded {
            return writeln!(
                out,
                "the remote has not changed since the last sync; nothing to pull"
            );
        }
        writeln!(
            out,
            "pulled from {remote} in {:.1}s: {} applied ({} merged cell by cell), {}{}",
            elapsed.as_secs_f64(),
            count(self.applied, "row change"),
            self.merged,
            count(self.schema_changes, "schema change"),
            if self.resolved > 0 {
                format!(", {} conflicts settled", self.resolved)
            } else {
                String::new()
            }
        )?;
        if !self.references.is_empty() {
            writeln!(
                out,
                "settled {} that pointed at a deleted row:",
                count(self.references.len(), "reference")
            )?;
            let lit = crate::sql::literal;
            for s in self.references.iter().take(LISTED) {
                let key: Vec<String> = s
                    .key
                    .iter()
                    .map(|(c, v)| format!("{c} = {}", lit(v)))
                    .collect();
                writeln!(
                    out,
                    "  {} ({}): {}",
                    s.table,
                    key.join(", "),
                    s.action.as_str()
                )?;
            }
            write_rest(out, self.references.len())?;
        }
        if !self.renumbered.is_empty() {
            writeln!(
                out,
                "renumbered {} of ours, whose keys others' new rows took (references to them followed):",
                count(self.renumbered.len(), "new row")
            )?;
            for n in self.renumbered.iter().take(LISTED) {
                writeln!(out, "  {}.{}: {} -> {}", n.table, n.column, n.from, n.to)?;
            }
            write_rest(out, self.renumbered.len())?;
        }
        Ok(())
    }
}

/// After the first [`LISTED`] of `n` items: how many more there are, and where to see them.
fn write_rest(out: &mut dyn Write, n: usize) -> std::io::Result<()> {
    if n > LISTED {
        writeln!(out, "  … and {} more (use --json for all)", n - LISTED)?;
    }
    Ok(())
}
