//! SQL text that rebuilds a database exactly, rowids included.
//!
//! `sqlite3 new.db < dump.sql` loads it. Unlike SQLite's `.dump` and sqld's `/dump`, every
//! insert names the rowid, so rowid tables without an INTEGER PRIMARY KEY keep their row
//! identities, and REAL values are written so they read back to the same bits (`-0.0` too).

use std::io::Write;

use crate::clone::Sink;
use crate::schema::Table;
use crate::sql;
use crate::value::Value;
use crate::Result;

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
        let head = format!(
            "INSERT INTO {}({}) VALUES(",
            sql::ident(&table.name),
            table.data_columns()?.join(",")
        );
        for row in rows {
            self.line.clear();
            self.line.push_str(&head);
            for (i, v) in row.iter().enumerate() {
                if i > 0 {
                    self.line.push(',');
                }
                sql::push_literal(&mut self.line, v);
            }
            self.line.push_str(");");
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
