//! Row changes put aside during one read of a table for a later pass over them, so printing a
//! diff reads each table from the databases once: the first changes stay in memory, up to a
//! budget, and the rest go to an unnamed temporary file, so memory stays bounded however many
//! rows changed.
//!
//! The file holds each change as a kind byte and its rows; each row as a value count and its
//! values; each value as a class byte and its bytes (integers and the bits of reals as 8 bytes
//! little-endian, text and blobs as an 8-byte length and the bytes). Only this process writes
//! and reads it, so the format needs no version.

use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Seek, Write};

use crate::changeset::RowChange;
use crate::value::Value;
use crate::Result;

/// Changes in the order they were put, in memory first and then in a file.
pub struct Spool {
    kept: Vec<RowChange>,
    /// Bytes of memory still free for [`Spool::kept`].
    room: usize,
    file: Option<BufWriter<File>>,
}

impl Spool {
    /// A spool that keeps about `budget` bytes of changes in memory.
    pub fn new(budget: usize) -> Spool {
        Spool {
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

const INSERT: u8 = 0;
const DELETE: u8 = 1;
const UPDATE: u8 = 2;

fn write_change(w: &mut impl Write, ch: &RowChange) -> std::io::Result<()> {
    match ch {
        RowChange::Insert(row) => {
            w.write_all(&[INSERT])?;
            write_row(w, row)
        }
        RowChange::Delete(row) => {
            w.write_all(&[DELETE])?;
            write_row(w, row)
        }
        RowChange::Update { old, new } => {
            w.write_all(&[UPDATE])?;
            write_row(w, old)?;
            write_row(w, new)
        }
    }
}

fn write_row(w: &mut impl Write, row: &[Value]) -> std::io::Result<()> {
    w.write_all(&(row.len() as u64).to_le_bytes())?;
    for v in row {
        match v {
            Value::Null => w.write_all(&[0])?,
            Value::Integer(i) => {
                w.write_all(&[1])?;
                w.write_all(&i.to_le_bytes())?;
            }
            Value::Real(f) => {
                w.write_all(&[2])?;
                w.write_all(&f.to_bits().to_le_bytes())?;
            }
            Value::Text(b) | Value::Blob(b) => {
                w.write_all(&[if matches!(v, Value::Text(_)) { 3 } else { 4 }])?;
                w.write_all(&(b.len() as u64).to_le_bytes())?;
                w.write_all(b)?;
            }
        }
    }
    Ok(())
}

/// Reads the next change of the file into `ch`, reusing its memory; false at the end.
fn read_change(r: &mut impl Read, ch: &mut RowChange) -> std::io::Result<bool> {
    let mut kind = [0u8];
    if r.read(&mut kind)? == 0 {
        return Ok(false);
    }
    let (mut a, mut b) = match std::mem::replace(ch, RowChange::Insert(Vec::new())) {
        RowChange::Insert(a) | RowChange::Delete(a) => (a, Vec::new()),
        RowChange::Update { old, new } => (old, new),
    };
    read_row(r, &mut a)?;
    *ch = match kind[0] {
        INSERT => RowChange::Insert(a),
        DELETE => RowChange::Delete(a),
        UPDATE => {
            read_row(r, &mut b)?;
            RowChange::Update { old: a, new: b }
        }
        _ => return Err(damaged()),
    };
    Ok(true)
}

/// Reads a row into `row`, reusing the memory of the text and blob values it held.
fn read_row(r: &mut impl Read, row: &mut Vec<Value>) -> std::io::Result<()> {
    let n = read_len(r)?;
    if n > row.len() {
        row.resize(n.min(row.len() + (1 << 16)), Value::Null);
    }
    row.truncate(n);
    for i in 0..n {
        let mut class = [0u8];
        r.read_exact(&mut class)?;
        let v = match class[0] {
            0 => Value::Null,
            1 => Value::Integer(i64::from_le_bytes(read8(r)?)),
            2 => Value::Real(f64::from_bits(u64::from_le_bytes(read8(r)?))),
            c @ (3 | 4) => {
                let len = read_len(r)?;
                // No SQLite value is longer than 2^31 bytes.
                if len > 1 << 31 {
                    return Err(damaged());
                }
                let mut b = match row.get_mut(i).map(|v| std::mem::replace(v, Value::Null)) {
                    Some(Value::Text(b) | Value::Blob(b)) => b,
                    _ => Vec::new(),
                };
                b.clear();
                b.resize(len, 0);
                r.read_exact(&mut b)?;
                if c == 3 {
                    Value::Text(b)
                } else {
                    Value::Blob(b)
                }
            }
            _ => return Err(damaged()),
        };
        match row.get_mut(i) {
            Some(slot) => *slot = v,
            None => row.push(v),
        }
    }
    Ok(())
}

fn read8(r: &mut impl Read) -> std::io::Result<[u8; 8]> {
    let mut b = [0u8; 8];
    r.read_exact(&mut b)?;
    Ok(b)
}

fn read_len(r: &mut impl Read) -> std::io::Result<usize> {
    usize::try_from(u64::from_le_bytes(read8(r)?)).map_err(|_| damaged())
}

fn damaged() -> std::io::Error {
    std::io::Error::new(
        std::io::ErrorKind::InvalidData,
        "the temporary file of staged row changes is damaged",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

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
            let mut spool = Spool::new(budget);
            for ch in &changes {
                spool.put(ch).unwrap();
            }
            let mut got: Vec<RowChange> = Vec::new();
            spool
                .drain(&mut |ch| {
                    got.push(ch.clone());
                    Ok(())
                })
                .unwrap();
            assert_eq!(got, changes, "budget {budget}");
        }
    }
}
