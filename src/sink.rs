//! The two things a copy is written into ([`Sink`]): a new SQLite file ([`LocalSink`]: the
//! working copy, the base, a download) and SQL text ([`SqlSink`]: `tursync dump`).
//!
//! `sqlite3 new.db < dump.sql` loads the text. Unlike SQLite's `.dump` and sqld's `/dump`,
//! every insert names the rowid, so rowid tables without an INTEGER PRIMARY KEY keep their row
//! identities, and REAL values are written so they read back to the same bits (`-0.0` too).

use std::io::Write;
use std::path::{Path, PathBuf};

use crate::clone::Sink;
use crate::schema::Table;
use crate::sql;
use crate::value::Value;
use crate::{Context, Error, Result};

/// Writes a copy into a new SQLite file as fast as SQLite allows: no journal and no syncs while
/// building, because a half-built file is thrown away, never used. [`LocalSink::finish`] puts
/// the file back in the normal rollback-journal mode every driver expects; it does not sync it:
/// the caller syncs the finished file before renaming it into place (`workspace::init`).
pub struct LocalSink {
    conn: rusqlite::Connection,
    path: PathBuf,
}

impl LocalSink {
    pub fn create(path: &Path) -> Result<LocalSink> {
        let conn = rusqlite::Connection::open(path).during("creating", path.display())?;
        // Rows arrive in any table order, and the bundled SQLite enforces foreign keys by
        // default: the copy is checked as a whole by the source, not row by row here.
        // `BEGIN` and `COMMIT` as text, not a `rusqlite::Transaction`: the transaction spans
        // the sink's life, from here to `finish`, and a `Transaction` borrows the connection
        // the sink owns. The pragmas must run outside it, before and after.
        conn.execute_batch("PRAGMA foreign_keys = OFF; PRAGMA journal_mode = OFF; PRAGMA synchronous = OFF; BEGIN;")
            .during("creating", path.display())?;
        conn.set_prepared_statement_cache_capacity(256);
        Ok(LocalSink {
            conn,
            path: path.to_path_buf(),
        })
    }

    pub fn finish(self) -> Result<()> {
        let finishing = "finishing the copy in";
        self.conn
            .execute_batch("COMMIT; PRAGMA journal_mode = DELETE; PRAGMA synchronous = FULL;")
            .during(finishing, self.path.display())?;
        self.conn
            .close()
            .map_err(|(_, e)| Error::Local(e))
            .during(finishing, self.path.display())?;
        Ok(())
    }
}

impl Sink for LocalSink {
    fn create(&mut self, sql: &str) -> Result<()> {
        self.conn.execute_batch(sql).map_err(|e| {
            Error::Unsupported(format!(
                "cannot create this object locally: {e}\n  {sql}\n(a virtual table needs its module, such as fts5 or rtree, in the bundled SQLite)"
            ))
        })
    }

    fn clear(&mut self, table: &Table) -> Result<()> {
        self.conn
            .execute(&format!("DELETE FROM {}", sql::ident(&table.name)), [])?;
        Ok(())
    }

    fn insert(&mut self, table: &Table, rows: &[Vec<Value>]) -> Result<()> {
        if rows.is_empty() {
            return Ok(());
        }
        let q = sql::insert(&table.name, &table.data_names()?, 1);
        let mut st = self.conn.prepare_cached(&q)?;
        for row in rows {
            st.execute(rusqlite::params_from_iter(row.iter()))?;
        }
        Ok(())
    }

    fn pragma(&mut self, name: &str, value: i64) -> Result<()> {
        self.conn.pragma_update(None, name, value)?;
        Ok(())
    }
}

/// Writes a copy as SQL statements.
pub struct SqlSink<W: Write> {
    out: W,
    line: String,
}

impl<W: Write> SqlSink<W> {
    /// Starts the script: one transaction, foreign keys off so load order cannot matter.
    pub fn new(mut out: W) -> Result<SqlSink<W>> {
        out.write_all(b"PRAGMA foreign_keys=OFF;\nBEGIN TRANSACTION;\n")?;
        Ok(SqlSink {
            out,
            line: String::new(),
        })
    }

    pub fn finish(mut self) -> Result<W> {
        self.out.write_all(b"COMMIT;\n")?;
        self.out.flush()?;
        Ok(self.out)
    }
}

impl<W: Write> Sink for SqlSink<W> {
    fn create(&mut self, sql: &str) -> Result<()> {
        sql::check_shell_text(sql)?;
        writeln!(self.out, "{sql};")?;
        Ok(())
    }

    fn clear(&mut self, table: &Table) -> Result<()> {
        writeln!(self.out, "DELETE FROM {};", sql::ident(&table.name))?;
        Ok(())
    }

    fn insert(&mut self, table: &Table, rows: &[Vec<Value>]) -> Result<()> {
        let q = sql::insert(&table.name, &table.data_names()?, 1);
        for row in rows {
            self.line.clear();
            sql::push_bound(&mut self.line, &q, row);
            self.line.push(';');
            sql::check_shell_text(&self.line)?;
            self.line.push('\n');
            self.out.write_all(self.line.as_bytes())?;
        }
        Ok(())
    }

    fn pragma(&mut self, name: &str, value: i64) -> Result<()> {
        if value != 0 {
            writeln!(self.out, "PRAGMA {name}={value};")?;
        }
        Ok(())
    }
}
