//! The vocabulary of a diff, apart from the engine that computes it (`diff`) and the spool that
//! puts changes aside (`spool`): both speak it, and neither depends on the other for it.
//!
//! ```text
//! base (1, 'a')  working copy (1, 'b')  -> Update { old: [1, 'a'], new: [1, 'b'] }
//! base (2, 'x')  working copy -         -> Delete([2, 'x'])
//! base -         working copy (3, 'y')  -> Insert([3, 'y'])
//! ```

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
