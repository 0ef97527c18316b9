//! The SQL of every push kept in `.tursync/pushes/`, the newest [`PUSH_LOGS_KEPT`] within
//! [`PUSH_LOGS_BYTES`].

use std::path::{Path, PathBuf};

use crate::remote::Stmt;
use crate::sql;
use crate::{Context, Result};

pub(super) fn log_stmt(log: &mut String, s: &Stmt) {
    log.push_str(&s.sql);
    if !s.args.is_empty() {
        log.push_str("\n  -- args: ");
        for (i, v) in s.args.iter().enumerate() {
            if i > 0 {
                log.push_str(", ");
            }
            sql::push_literal(log, v);
        }
    }
    log.push_str(";\n");
}

/// How many pushes `.tursync/pushes/` keeps, newest first, and how many bytes at most (the
/// newest is kept whatever its size): enough to find out what recent pushes sent, bounded
/// however long `watch` runs.
const PUSH_LOGS_KEPT: usize = 50;

const PUSH_LOGS_BYTES: u64 = 16 << 20;

/// Writes `log` as the newest file of `dir` and removes the oldest past [`PUSH_LOGS_KEPT`]
/// files or [`PUSH_LOGS_BYTES`] bytes. Files are named by the time in milliseconds, zero-padded
/// so names sort by age, and a counter when two pushes share a millisecond:
///
/// ```text
/// 00000001796419704782.sql  00000001796419704782-1.sql  00000001796419704865.sql
/// ```
pub(super) fn keep_push_log(dir: &Path, log: &str) -> Result<PathBuf> {
    std::fs::create_dir_all(dir).during("creating the push log directory", dir.display())?;
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0);
    let mut path = dir.join(format!("{stamp:020}.sql"));
    for n in 1.. {
        if !path.exists() {
            break;
        }
        path = dir.join(format!("{stamp:020}-{n}.sql"));
    }
    std::fs::write(&path, log).during("writing the push log", path.display())?;
    let mut logs: Vec<(PathBuf, u64)> = std::fs::read_dir(dir)
        .during("listing the push log", dir.display())?
        .filter_map(|e| e.ok())
        .map(|e| (e.path(), e.metadata().map(|m| m.len()).unwrap_or(0)))
        .filter(|(p, _)| p.extension().is_some_and(|x| x == "sql"))
        .collect();
    // Newest first; the names of an older version (unpadded milliseconds) sort as older.
    logs.sort_by(|a, b| {
        let key = |p: &Path| {
            let name = p.file_stem().and_then(|s| s.to_str()).unwrap_or("");
            let (ms, n) = name.split_once('-').unwrap_or((name, "0"));
            (
                ms.parse::<u128>().unwrap_or(0),
                n.parse::<u64>().unwrap_or(0),
            )
        };
        key(&b.0).cmp(&key(&a.0))
    });
    let mut bytes = 0u64;
    for (i, (p, len)) in logs.iter().enumerate() {
        bytes += len;
        if i > 0 && (i >= PUSH_LOGS_KEPT || bytes > PUSH_LOGS_BYTES) {
            std::fs::remove_file(p).during("removing an old push log", p.display())?;
        }
    }
    Ok(path)
}
