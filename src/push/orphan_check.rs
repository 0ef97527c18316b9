//! Whether a push leaves a row pointing at nothing through a foreign key: checked in the batch
//! itself, or, once that check failed, read to name the rows ([`OrphanCheck`]).

use super::rows::stmt;
use super::{send, Run, Txn};
use crate::conflict::{Conflict, ConflictKind};
use crate::remote::{Stmt, StmtResult, Stream};
use crate::schema::Orphan;
use crate::value::Value;
use crate::{Error, Result};

/// The reads of the rows of `tables` on the remote whose foreign keys point at nothing, as
/// (table, rowid, parent, fkid).
pub(super) fn orphan_reads(tables: &std::collections::BTreeSet<String>) -> Vec<Stmt> {
    tables
        .iter()
        .map(|t| stmt(crate::sql::orphans_sql(t), vec![], true))
        .collect()
}

/// The orphans [`orphan_reads`] returned.
pub(super) fn orphans_found(
    results: impl IntoIterator<Item = StmtResult>,
) -> Result<std::collections::BTreeSet<Orphan>> {
    let mut out = std::collections::BTreeSet::new();
    let text = crate::schema::text;
    for res in results {
        for row in res.rows {
            let [t, rowid, p, Value::Integer(fkid)] = &row[..] else {
                return Err(Error::Unexpected(format!(
                    "unexpected foreign_key_check row from the remote: {row:?}"
                )));
            };
            let rowid = match rowid {
                Value::Integer(r) => Some(*r),
                _ => None,
            };
            out.insert((
                text(t, "foreign_key_check table")?,
                rowid,
                text(p, "foreign_key_check parent")?,
                *fkid,
            ));
        }
    }
    Ok(out)
}

/// An orphan as the row [`orphan_reads`] returns for it.
fn orphan_row((table, rowid, parent, fkid): &Orphan) -> Vec<Value> {
    vec![
        Value::text(table),
        rowid.map_or(Value::Null, Value::Integer),
        Value::text(parent),
        Value::Integer(*fkid),
    ]
}

/// How the last transaction of a push finds the orphans its writes would leave.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum OrphanCheck {
    /// A step of the batch that fails when there is one beyond those found before the push:
    /// nothing more to send when there is none.
    InBatch,
    /// Read after the writes (a trial batch, rolled back), to report each one.
    Read,
}

/// The orphans the whole push adds on the remote (beyond those its first transaction found),
/// as foreign-key conflicts. Checked in the last transaction, so a parent and its children's
/// deletes may land in different transactions: kept as a check of the batch
/// ([`OrphanCheck::InBatch`], no conflict here then), or read after the writes.
pub(super) fn new_orphans(
    stream: &mut Stream<'_>,
    txn: &Txn<'_, '_>,
    run: &mut Run<'_>,
    how: OrphanCheck,
) -> Result<Vec<Conflict>> {
    let Some(before) = run.orphans_before.as_ref() else {
        return Err(Error::Unexpected(
            "the push reached its last transaction without reading the remote's orphans in its first".into(),
        ));
    };
    if how == OrphanCheck::InBatch {
        for (read, table) in orphan_reads(txn.fk_scope).into_iter().zip(txn.fk_scope) {
            let allowed = before
                .iter()
                .filter(|o| &o.0 == table)
                .map(orphan_row)
                .collect();
            stream.check(read, allowed)?;
        }
        return Ok(Vec::new());
    }
    let now = if txn.fk_scope.is_empty() {
        Default::default()
    } else {
        orphans_found(send(stream, orphan_reads(txn.fk_scope))?)?
    };
    Ok(now
        .difference(before)
        .map(|(child, rowid, parent, _)| Conflict {
            constraint: Some(format!("FOREIGN KEY of {child} REFERENCES {parent}")),
            ..Conflict::new(
                child,
                ConflictKind::ForeignKey,
                rowid.map(Value::Integer).into_iter().collect(),
            )
        })
        .collect())
}
