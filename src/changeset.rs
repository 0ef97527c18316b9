//! The vocabulary of a diff, apart from the engine that computes it (`diff`) and the spool that
//! puts changes aside (`spool`): both speak it, and neither depends on the other for it.
//!
//! ```text
//! base (1, 'a')  working copy (1, 'b')  -> Update { old: [1, 'a'], new: [1, 'b'] }
//! base (2, 'x')  working copy -         -> Delete([2, 'x'])
//! base -         working copy (3, 'y')  -> Insert([3, 'y'])
//! ```

use std::io::{Read, Write};

use crate::value::Value;

/// One row that differs. Rows are laid out as [`crate::schema::Table::data_columns`] of the working copy's
/// table: the hidden rowid first when the table has one, then the stored columns.
#[derive(Debug, Clone, PartialEq)]
pub enum RowChange {
    Insert(Vec<Value>),
    Delete(Vec<Value>),
    /// Full rows on both sides: push checks the whole base row, while output names only the
    /// columns that changed ([`RowChange::changed_columns`]).
    Update {
        old: Vec<Value>,
        new: Vec<Value>,
    },
}

impl RowChange {
    /// The row whose key identifies this change.
    pub fn row(&self) -> &[Value] {
        match self {
            RowChange::Insert(r) | RowChange::Delete(r) => r,
            RowChange::Update { new, .. } => new,
        }
    }

    /// The row as it was in the base: `None` for an insert.
    pub fn old(&self) -> Option<&[Value]> {
        match self {
            RowChange::Delete(r) | RowChange::Update { old: r, .. } => Some(r),
            RowChange::Insert(_) => None,
        }
    }

    /// About how many bytes of memory the change takes.
    pub(crate) fn footprint(&self) -> usize {
        let row = |r: &[Value]| {
            r.iter()
                .map(|v| {
                    std::mem::size_of::<Value>()
                        + match v {
                            Value::Text(b) | Value::Blob(b) => b.len(),
                            _ => 0,
                        }
                })
                .sum::<usize>()
        };
        std::mem::size_of::<RowChange>()
            + match self {
                RowChange::Insert(r) | RowChange::Delete(r) => row(r),
                RowChange::Update { old, new } => row(old) + row(new),
            }
    }

    /// Positions of the values an update changes (none for an insert or a delete), without
    /// allocating: printing asks once per row.
    pub fn changed_columns(&self) -> impl Iterator<Item = usize> + '_ {
        let (old, new): (&[Value], &[Value]) = match self {
            RowChange::Update { old, new } => (old, new),
            _ => (&[], &[]),
        };
        (0..new.len()).filter(move |&i| old[i] != new[i])
    }
}

const INSERT: u8 = 0;
const DELETE: u8 = 1;
const UPDATE: u8 = 2;

/// Writes `ch` in the file encoding: a kind byte, then its rows; a row as a value count and its
/// values; a value as a class byte and its bytes (integers and the bits of reals as 8 bytes
/// little-endian, text and blobs as an 8-byte length and the bytes). Exact for every value.
pub(crate) fn write_change(w: &mut impl Write, ch: &RowChange) -> std::io::Result<()> {
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
pub(crate) fn read_change(r: &mut impl Read, ch: &mut RowChange) -> std::io::Result<bool> {
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
        "a file of row changes (a diff's spool, or the record of a push) is damaged",
    )
}
