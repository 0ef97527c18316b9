//! Row changes put aside during one read of a table for a later pass over them, so printing a
//! diff reads each table from the databases once: the first changes stay in memory, up to a
//! budget, and the rest go to an unnamed temporary file, so memory stays bounded however many
//! rows changed.
//!
//! The file holds the changes in `changeset`'s exact encoding ([`write_change`]). Only this
//! process writes and reads it.

use std::fs::File;
use std::io::{BufReader, BufWriter, Seek};

use crate::changeset::{read_change, write_change, RowChange};
use crate::Result;

/// Changes in the order they were put, in memory first and then in a file.
pub struct ChangeBuffer {
    kept: Vec<RowChange>,
    /// Bytes of memory still free for [`ChangeBuffer::kept`].
    room: usize,
    file: Option<BufWriter<File>>,
}

impl ChangeBuffer {
    /// A buffer that keeps about `budget` bytes of changes in memory.
    pub fn new(budget: usize) -> ChangeBuffer {
        ChangeBuffer {
            kept: Vec::new(),
            room: budget,
            file: None,
        }
    }

    /// Adds `ch` after the changes put so far. Once one change has gone to the file, all later
    /// ones do, so the order stays that of the puts.
    pub fn put(&mut self, ch: &RowChange) -> Result<()> {
        if self.file.is_none() {
            let size = ch.footprint();
            if size <= self.room {
                self.room -= size;
                self.kept.push(ch.clone());
                return Ok(());
            }
            self.file = Some(BufWriter::with_capacity(1 << 16, tempfile::tempfile()?));
        }
        if let Some(file) = &mut self.file {
            write_change(file, ch)?;
        }
        Ok(())
    }

    /// Calls `each` with every change put, in order, and frees them.
    pub fn drain(self, each: &mut dyn FnMut(&RowChange) -> Result<()>) -> Result<()> {
        self.kept.iter().try_for_each(&mut *each)?;
        let Some(file) = self.file else {
            return Ok(());
        };
        let mut file = file.into_inner().map_err(|e| e.into_error())?;
        file.rewind()?;
        let mut r = BufReader::with_capacity(1 << 16, file);
        // One change refilled in place: its rows and values keep their memory from one change
        // to the next.
        let mut ch = RowChange::Insert(Vec::new());
        while read_change(&mut r, &mut ch)? {
            each(&ch)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::value::Value;

    /// Every class, edge values, rows of other lengths and empty rows come back as put, in
    /// order, whether kept in memory, in the file, or split between them.
    #[test]
    fn changes_come_back_as_put() {
        let row = |i: i64| {
            vec![
                Value::Null,
                Value::Integer(i),
                Value::Integer(i64::MIN),
                Value::Real(-0.0),
                Value::Real(f64::from_bits(0x7ff0_0000_0000_0001 + i as u64)),
                Value::Text(vec![0xff, b'a', 0]),
                Value::Blob(Vec::new()),
                Value::text(""),
            ]
        };
        let changes: Vec<RowChange> = (0..50)
            .map(|i| match i % 5 {
                0 => RowChange::Insert(row(i)),
                1 => RowChange::Delete(row(i)),
                2 => RowChange::Update {
                    old: row(i),
                    new: row(-i),
                },
                // Other classes where the last change's memory is reused.
                3 => RowChange::Insert(row(i).into_iter().rev().collect()),
                _ => RowChange::Insert(Vec::new()),
            })
            .collect();
        for budget in [0, 2000, usize::MAX] {
            let mut buffer = ChangeBuffer::new(budget);
            for ch in &changes {
                buffer.put(ch).unwrap();
            }
            let mut got: Vec<RowChange> = Vec::new();
            buffer
                .drain(&mut |ch| {
                    got.push(ch.clone());
                    Ok(())
                })
                .unwrap();
            assert_eq!(got, changes, "budget {budget}");
        }
    }
}
