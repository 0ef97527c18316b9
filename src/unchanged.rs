//! Whether the remote's rows of a table are still exactly the base's, read inside the push's
//! transaction.
//!
//! A push checks the rows it touches one by one. A table re-created here under a new row key
//! (its primary key changed, or it became WITHOUT ROWID keyed on another column) touches every
//! row: its rows cannot be matched across the change, so the push drops the remote's table and
//! inserts ours. That is safe only while nobody changed a row of it since the last sync, which
//! is what this checks: every row, and no row more.
//!
//! ```text
//! base     memo: (1,'b1') (2,'b2') (3,'b3')
//! remote   memo: (1,'b1') (2,'b2') (3,'b3')           -> unchanged: drop, create, insert ours
//! remote   memo: (1,'b1-T') (2,'b2') (3,'b3')         -> changed: a conflict, nothing pushed
//! remote   memo: (1,'b1') (2,'b2') (3,'b3') (7,'b7')  -> changed (a row more)
//! ```
//!
//! Both sides are read in key order, in pages of bounded size (each page a statement of its
//! own request, since sqld answers at most 10 MB), so memory stays bounded whatever the size.
//! The cost follows the table, which the push rewrites whole anyway.

use rusqlite::Connection;

use crate::remote::{Stmt, StmtResult};
use crate::schema::Table;
use crate::sql;
use crate::value::Value;
use crate::Result;

/// Bytes of base rows per page read from the remote (its answer is about as large).
const PAGE_BYTES: usize = 2 << 20;

/// Whether the remote's `table` (as defined in the base and still on the remote) holds exactly
/// the base's rows. `send` runs statements in the push's transaction and returns their results.
pub(crate) fn rows_unchanged(
    base: &Connection,
    table: &Table,
    mut send: impl FnMut(Vec<Stmt>) -> Result<Vec<StmtResult>>,
) -> Result<bool> {
    let names = table.data_names()?;
    let cols: Vec<String> = names.iter().map(|c| sql::ident(c)).collect();
    let order = table.key_exprs()?.join(", ");
    let from = sql::ident(&table.name);
    // A hidden rowid that only locates a row is no data: the remote may hold the row elsewhere.
    let locator = table.locator();
    let data = |row: &[Value]| -> Vec<Value> {
        row.iter()
            .enumerate()
            .filter(|(i, _)| Some(*i) != locator)
            .map(|(_, v)| v.clone())
            .collect()
    };
    let count: i64 = base.query_row(&format!("SELECT count(*) FROM {from}"), [], |r| r.get(0))?;
    let counted = send(vec![Stmt {
        sql: format!("SELECT count(*) FROM {from}"),
        args: vec![],
        want_rows: true,
    }])?;
    if counted
        .first()
        .and_then(|r| r.rows.first())
        .map(Vec::as_slice)
        != Some(&[Value::Integer(count)])
    {
        return Ok(false);
    }
    let mut st = base.prepare(&format!(
        "SELECT {} FROM {from} ORDER BY {order}",
        cols.join(", ")
    ))?;
    let mut rows = st.query([])?;
    let mut page: Vec<Vec<Value>> = Vec::new();
    let (mut bytes, mut offset) = (0, 0);
    loop {
        let next = rows.next()?;
        if let Some(r) = next {
            let row: Vec<Value> = (0..names.len())
                .map(|i| r.get_ref(i).map(Value::from_ref))
                .collect::<rusqlite::Result<_>>()?;
            bytes += row
                .iter()
                .map(crate::remote::proto::json_size)
                .sum::<usize>()
                + 8;
            page.push(row);
            if bytes < PAGE_BYTES {
                continue;
            }
        }
        if page.is_empty() {
            return Ok(true);
        }
        let q = format!(
            "SELECT {} FROM {from} ORDER BY {order} LIMIT {} OFFSET {offset}",
            sql::exact_select_list(&cols),
            page.len()
        );
        let answer = send(vec![Stmt {
            sql: q,
            args: vec![],
            want_rows: true,
        }])?;
        let theirs = match answer.into_iter().next() {
            Some(r) => r.exact_rows()?,
            None => return Ok(false),
        };
        if theirs.len() != page.len() || theirs.iter().zip(&page).any(|(t, b)| data(t) != data(b)) {
            return Ok(false);
        }
        offset += page.len();
        page.clear();
        bytes = 0;
        if next.is_none() {
            return Ok(true);
        }
    }
}
