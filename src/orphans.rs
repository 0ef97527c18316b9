//! Rows a merge leaves pointing at nothing through a foreign key, and how `--ours` and
//! `--theirs` settle them.
//!
//! A merge breaks a reference when one side deleted a parent row and the other side pointed a
//! row at it (a new child, or a child moved under it). Which side deleted the parent tells the
//! two ways out:
//!
//! ```text
//! ours deleted parent 1, theirs added child 30 -> 1
//!   --theirs  restores parent 1 from the remote, with the rows our delete took with it
//!             (its children there that the working copy lacks): the working copy equals
//!             the remote again
//!   --ours    keeps our delete and applies the foreign key's ON DELETE action to child 30:
//!             CASCADE, NO ACTION and RESTRICT delete it (the parent can stay deleted no
//!             other way), SET NULL and SET DEFAULT set its reference; the next push sends it
//! theirs deleted parent 2, ours added child 50 -> 2
//!   --ours    restores parent 2 as it was before their delete, with the rows their delete
//!             took with it; the next push puts them back on the remote
//!   --theirs  keeps their delete and applies the ON DELETE action to child 50
//! ```
//!
//! Every row restored or changed is reported ([`ReferenceSettled`]). A reference that neither
//! side's rows can mend (a parent neither side has) stays a conflict.

use std::collections::{BTreeSet, HashMap, HashSet};

use rusqlite::Connection;
use serde::Serialize;

use crate::conflict::{Conflict, ConflictKind, MergeOptions, Resolve};
use crate::schema::{foreign_key_scope, ForeignKey, Orphan, Table};
use crate::sql;
use crate::sql::orphans_sql;
use crate::value::Value;
use crate::{Context, Result};

/// A row changed to settle a broken reference, by its table and its key.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ReferenceSettled {
    pub table: String,
    /// The row's key by column name: its declared primary key, else its rowid. In JSON, an
    /// object column → value.
    #[serde(serialize_with = "key_object")]
    pub key: Vec<(String, Value)>,
    /// In JSON, as [`ReferenceAction::as_str`] words it (`"set null"`).
    #[serde(serialize_with = "action_words")]
    pub action: ReferenceAction,
}

fn key_object<S: serde::Serializer>(key: &[(String, Value)], s: S) -> Result<S::Ok, S::Error> {
    s.collect_map(key.iter().map(|(c, v)| (c, v)))
}

fn action_words<S: serde::Serializer>(a: &ReferenceAction, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(a.as_str())
}

/// What was done to a row to settle a broken reference.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ReferenceAction {
    /// A deleted row put back: the parent, or a row that was deleted with it.
    Restored,
    /// A row pointing at a parent that stays deleted, deleted with it.
    Deleted,
    /// A reference to a parent that stays deleted, set to NULL.
    SetNull,
    /// A reference to a parent that stays deleted, set to its column's default.
    SetDefault,
}

impl ReferenceAction {
    pub fn as_str(self) -> &'static str {
        match self {
            ReferenceAction::Restored => "restored",
            ReferenceAction::Deleted => "deleted",
            ReferenceAction::SetNull => "set null",
            ReferenceAction::SetDefault => "set default",
        }
    }
}

/// A row their side deleted, as it was: what `--ours` puts back under a child of ours.
#[derive(Debug, Clone)]
pub(crate) struct Gone {
    pub table: String,
    pub row: Vec<(String, Value)>,
}

/// The rows that point at nothing, watched over the tables a merge touched: those that were
/// there before are the app's own and never the merge's doing.
pub(crate) struct Orphans<'c> {
    work: &'c Connection,
    fks: &'c [ForeignKey],
    scope: BTreeSet<String>,
    before: BTreeSet<Orphan>,
}

impl<'c> Orphans<'c> {
    /// Takes note of the orphans there are now in the tables whose foreign keys a change to
    /// `touched` may break.
    pub(crate) fn before<'a>(
        work: &'c Connection,
        fks: &'c [ForeignKey],
        touched: impl IntoIterator<Item = &'a str>,
    ) -> Result<Orphans<'c>> {
        let mut me = Orphans {
            work,
            fks,
            scope: BTreeSet::new(),
            before: BTreeSet::new(),
        };
        me.widen(touched)?;
        Ok(me)
    }

    /// Watches the tables a change to `touched` may break too, taking note of their orphans
    /// as they are before that change.
    fn widen<'a>(&mut self, touched: impl IntoIterator<Item = &'a str>) -> Result<()> {
        let more: Vec<String> = foreign_key_scope(self.fks, touched)
            .into_iter()
            .filter(|t| !self.scope.contains(t))
            .collect();
        for t in more {
            self.before.extend(orphans_of(self.work, &t)?);
            self.scope.insert(t);
        }
        Ok(())
    }

    /// The orphans the changes since [`Orphans::before`] made.
    fn new_ones(&self) -> Result<Vec<Orphan>> {
        let mut now = BTreeSet::new();
        for t in &self.scope {
            now.extend(orphans_of(self.work, t)?);
        }
        Ok(now.difference(&self.before).cloned().collect())
    }

    /// Settles every orphan the merge made, table by table as `merge` says, and returns
    /// the conflicts left (each unsettled orphan: the caller rolls back) and what was done.
    /// `theirs_db` is the remote as read; `gone` the rows their side deleted.
    pub(crate) fn settle(
        mut self,
        theirs_db: &Connection,
        gone: &[Gone],
        merge: &MergeOptions,
    ) -> Result<(Vec<Conflict>, Vec<ReferenceSettled>)> {
        let tables: HashMap<String, Table> = crate::schema::load(self.work)?
            .tables
            .into_iter()
            .map(|t| (t.name.to_lowercase(), t))
            .collect();
        let mut done = Vec::new();
        let mut seen = HashSet::new();
        // Each round mends what the last one broke (a child deleted under a grandchild, a
        // parent restored under a deleted grandparent); a round that mends nothing ends it.
        loop {
            let new = self.new_ones()?;
            if new.is_empty() {
                return Ok((Vec::new(), done));
            }
            let mut conflicts = Vec::new();
            let mut mended = false;
            let groups: BTreeSet<(String, i64)> =
                new.iter().map(|(c, _, _, id)| (c.clone(), *id)).collect();
            for (child, id) in groups {
                let fk = Reference::new(self.fks, &child, id)?;
                let resolve = merge.resolve_for(&child);
                // The rows the merge left pointing at nothing; an orphan the app made before
                // stays as it was. A WITHOUT ROWID child has no rowid to tell them apart by.
                let rows: Option<Vec<i64>> = new
                    .iter()
                    .filter(|(c, _, _, i)| *c == child && *i == id)
                    .map(|(_, rowid, _, _)| *rowid)
                    .collect();
                let alias = match &rows {
                    Some(_) => Some(table_of(&tables, &child)?.rowid_alias()?.to_owned()),
                    None => None,
                };
                let only = alias.as_deref().zip(rows.as_deref());
                for missing in fk.missing(self.work, only)? {
                    let source = match resolve {
                        Resolve::Refuse => None,
                        Resolve::Theirs => fk
                            .parent_row(theirs_db, &tables, &missing)?
                            .map(|row| Source::Restore(From::Remote(theirs_db), row))
                            .or_else(|| fk.gone_row(gone, &missing).map(|_| Source::Act)),
                        Resolve::Ours => match fk.parent_row(theirs_db, &tables, &missing)? {
                            Some(_) => Some(Source::Act),
                            None => fk
                                .gone_row(gone, &missing)
                                .map(|g| Source::Restore(From::Gone(gone), g.row.clone())),
                        },
                    };
                    let step = (
                        child.clone(),
                        id,
                        missing.iter().map(sql::literal).collect::<Vec<_>>(),
                    );
                    let settled = match source {
                        Some(_) if !seen.insert(step) => false,
                        Some(Source::Restore(from, row)) => {
                            self.widen([fk.parent.as_str()])?;
                            Restorer {
                                work: self.work,
                                fks: self.fks,
                                tables: &tables,
                                from,
                                done: &mut done,
                            }
                            .restore(&fk.parent, row)?
                        }
                        Some(Source::Act) => {
                            self.widen([child.as_str()])?;
                            fk.act(self.work, &tables, &missing, &mut done)?;
                            true
                        }
                        None => false,
                    };
                    if settled {
                        mended = true;
                    } else {
                        conflicts.extend(fk.conflicts(self.work, &tables, &missing)?);
                    }
                }
            }
            if !conflicts.is_empty() || !mended {
                return Ok((conflicts, done));
            }
        }
    }
}

/// Whether a parent that is missing comes back, from where, or stays missing.
enum Source<'g> {
    /// It comes back as `from` has it: the remote (our side deleted it), or as their side's
    /// delete found it.
    Restore(From<'g>, Vec<(String, Value)>),
    /// It stays deleted: the ON DELETE action applies to the rows pointing at it.
    Act,
}

fn orphans_of(work: &Connection, table: &str) -> Result<Vec<Orphan>> {
    let mut st = work.prepare(&orphans_sql(table))?;
    let rows = st.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

/// One foreign key of a child table, all its columns.
struct Reference {
    child: String,
    parent: String,
    from: Vec<String>,
    to: Vec<String>,
    on_delete: String,
}

impl Reference {
    fn new(fks: &[ForeignKey], child: &str, id: i64) -> Result<Reference> {
        let cols: Vec<&ForeignKey> = fks
            .iter()
            .filter(|f| f.child == child && f.id == id)
            .collect();
        let first = cols.first().ok_or_else(|| {
            crate::Error::Unexpected(format!(
                "table {child:?}: SQLite reported its foreign key {id}, which it does not list"
            ))
        })?;
        Ok(Reference {
            child: child.to_owned(),
            parent: first.parent.clone(),
            from: cols.iter().map(|f| f.from.clone()).collect(),
            to: cols.iter().map(|f| f.to.clone()).collect(),
            on_delete: first.on_delete.to_ascii_uppercase(),
        })
    }

    /// The parent keys the child's rows point at that the parent table lacks; of the rows
    /// `only` names by rowid (through the alias it gives), when it names some.
    fn missing(&self, work: &Connection, only: Option<(&str, &[i64])>) -> Result<Vec<Vec<Value>>> {
        let from: Vec<String> = self.from.iter().map(|c| sql::ident(c)).collect();
        let matches: Vec<String> = self
            .to
            .iter()
            .zip(&from)
            .map(|(t, f)| format!("p.{} = c.{f}", sql::ident(t)))
            .collect();
        let rows = match only {
            Some((alias, rowids)) => format!(
                " AND c.{} IN ({})",
                sql::ident(alias),
                rowids
                    .iter()
                    .map(|r| r.to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            None => String::new(),
        };
        let q = format!(
            "SELECT DISTINCT {} FROM {} c WHERE {}{rows} AND NOT EXISTS (SELECT 1 FROM {} p WHERE {})",
            from.iter()
                .map(|f| format!("c.{f}"))
                .collect::<Vec<_>>()
                .join(", "),
            sql::ident(&self.child),
            from.iter()
                .map(|f| format!("c.{f} IS NOT NULL"))
                .collect::<Vec<_>>()
                .join(" AND "),
            sql::ident(&self.parent),
            matches.join(" AND "),
        );
        let mut st = work.prepare(&q)?;
        let n = self.from.len();
        let rows = st.query_map([], |r| (0..n).map(|i| r.get::<_, Value>(i)).collect())?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// The parent row at `key` in `conn`, by data-column name.
    fn parent_row(
        &self,
        conn: &Connection,
        tables: &HashMap<String, Table>,
        key: &[Value],
    ) -> Result<Option<Vec<(String, Value)>>> {
        let names = data_names(tables, &self.parent)?;
        select_rows(conn, &self.parent, &names, &self.to, key)
            .map(|mut rows| (!rows.is_empty()).then(|| rows.swap_remove(0)))
    }

    /// The row their side deleted at `key` of the parent table, if they deleted one.
    fn gone_row<'g>(&self, gone: &'g [Gone], key: &[Value]) -> Option<&'g Gone> {
        gone.iter()
            .find(|g| g.table.eq_ignore_ascii_case(&self.parent) && holds(&g.row, &self.to, key))
    }

    /// Applies the ON DELETE action to the child's rows pointing at `key`.
    fn act(
        &self,
        work: &Connection,
        tables: &HashMap<String, Table>,
        key: &[Value],
        done: &mut Vec<ReferenceSettled>,
    ) -> Result<()> {
        let table = table_of(tables, &self.child)?;
        let key_names = key_names(table)?;
        let rows = select_rows(work, &self.child, &key_names, &self.from, key)?;
        let action = match self.on_delete.as_str() {
            "SET NULL" => ReferenceAction::SetNull,
            "SET DEFAULT" => ReferenceAction::SetDefault,
            _ => ReferenceAction::Deleted,
        };
        let q = match action {
            ReferenceAction::Deleted => sql::delete(&self.child, &self.from),
            _ => {
                let set: Vec<String> = self
                    .from
                    .iter()
                    .map(|c| {
                        let default = table
                            .columns
                            .iter()
                            .find(|col| col.name.eq_ignore_ascii_case(c))
                            .and_then(|col| col.default.clone())
                            .filter(|_| action == ReferenceAction::SetDefault)
                            .unwrap_or_else(|| "NULL".to_owned());
                        format!("{} = ({default})", sql::ident(c))
                    })
                    .collect();
                let wheres = placeholders(&self.from, 1);
                format!(
                    "UPDATE {} SET {} WHERE {}",
                    sql::ident(&self.child),
                    set.join(", "),
                    wheres.join(" AND ")
                )
            }
        };
        work.execute(&q, rusqlite::params_from_iter(key))
            .during("applying ON DELETE to the rows of table", &self.child)?;
        done.extend(rows.into_iter().map(|key| ReferenceSettled {
            table: self.child.clone(),
            key,
            action,
        }));
        Ok(())
    }

    /// The conflict of each of the child's rows pointing at `key`.
    fn conflicts(
        &self,
        work: &Connection,
        tables: &HashMap<String, Table>,
        key: &[Value],
    ) -> Result<Vec<Conflict>> {
        let names = key_names(table_of(tables, &self.child)?)?;
        Ok(select_rows(work, &self.child, &names, &self.from, key)?
            .into_iter()
            .map(|row| Conflict {
                constraint: Some(format!(
                    "FOREIGN KEY {}({}) REFERENCES {}",
                    self.child,
                    self.from.join(", "),
                    self.parent
                )),
                columns: self.from.clone(),
                ..Conflict::new(
                    &self.child,
                    ConflictKind::ForeignKey,
                    row.into_iter().map(|(_, v)| v).collect(),
                )
            })
            .collect())
    }
}

/// Where restored rows come from.
#[derive(Clone, Copy)]
enum From<'g> {
    /// The remote as read: the rows our side deleted.
    Remote(&'g Connection),
    /// The rows their side deleted.
    Gone(&'g [Gone]),
}

/// Puts deleted rows back into the working copy, each with the rows that were deleted with it.
struct Restorer<'a> {
    work: &'a Connection,
    fks: &'a [ForeignKey],
    tables: &'a HashMap<String, Table>,
    from: From<'a>,
    done: &'a mut Vec<ReferenceSettled>,
}

impl Restorer<'_> {
    /// Restores `row` into `table` (if the working copy lacks it), then every row of `from`
    /// that points at it and that the working copy lacks: what the delete took with it.
    /// Returns false when the row cannot go back (a UNIQUE value of it is taken).
    fn restore(&mut self, table: &str, row: Vec<(String, Value)>) -> Result<bool> {
        let t = table_of(self.tables, table)?;
        let key_names = key_names(t)?;
        let key: Vec<(String, Value)> = key_names
            .iter()
            .filter_map(|k| row.iter().find(|(c, _)| c == k).cloned())
            .collect();
        if key.len() != key_names.len() {
            return Ok(false);
        }
        let present: bool = self
            .work
            .prepare_cached(&sql::select(table, "count(*) > 0", &key_names))?
            .query_row(
                rusqlite::params_from_iter(key.iter().map(|(_, v)| v)),
                |r| r.get(0),
            )?;
        if present {
            return Ok(true);
        }
        let names: Vec<&str> = row.iter().map(|(c, _)| c.as_str()).collect();
        let inserted = self.work.execute(
            &sql::insert(table, &names, 1),
            rusqlite::params_from_iter(row.iter().map(|(_, v)| v)),
        );
        match inserted {
            Ok(_) => {}
            Err(rusqlite::Error::SqliteFailure(f, _))
                if f.code == rusqlite::ErrorCode::ConstraintViolation =>
            {
                return Ok(false)
            }
            Err(e) => return Err(e).during("restoring a deleted row of table", table),
        }
        self.done.push(ReferenceSettled {
            table: t.name.clone(),
            key,
            action: ReferenceAction::Restored,
        });
        let children: Vec<&ForeignKey> = self
            .fks
            .iter()
            .filter(|f| f.parent.eq_ignore_ascii_case(table))
            .collect();
        let ids: BTreeSet<(&str, i64)> =
            children.iter().map(|f| (f.child.as_str(), f.id)).collect();
        for (child, id) in ids {
            let fk = Reference::new(self.fks, child, id)?;
            let Some(values): Option<Vec<Value>> = fk
                .to
                .iter()
                .map(|c| {
                    row.iter()
                        .find(|(n, _)| n.eq_ignore_ascii_case(c))
                        .map(|(_, v)| v.clone())
                })
                .collect()
            else {
                continue;
            };
            let rows = match self.from {
                From::Remote(conn) => {
                    let names = data_names(self.tables, child)?;
                    select_rows(conn, child, &names, &fk.from, &values)?
                }
                From::Gone(gone) => gone
                    .iter()
                    .filter(|g| {
                        g.table.eq_ignore_ascii_case(child) && holds(&g.row, &fk.from, &values)
                    })
                    .map(|g| g.row.clone())
                    .collect(),
            };
            for r in rows {
                if self.restore(child, r.clone())? {
                    self.relink(child, &fk, &r, &values)?;
                }
            }
        }
        Ok(true)
    }

    /// Points `row` of `table`, which the working copy holds, back at the restored parent
    /// `values` when its reference there is empty: what a SET NULL (or the app) did with the
    /// delete is undone with it.
    fn relink(
        &mut self,
        table: &str,
        fk: &Reference,
        row: &[(String, Value)],
        values: &[Value],
    ) -> Result<()> {
        let key_names = key_names(table_of(self.tables, table)?)?;
        let key: Vec<(String, Value)> = key_names
            .iter()
            .filter_map(|k| row.iter().find(|(c, _)| c == k).cloned())
            .collect();
        let set = placeholders(&fk.from, 1);
        let key_columns: Vec<String> = key.iter().map(|(c, _)| c.clone()).collect();
        let wheres: Vec<String> = placeholders(&key_columns, values.len() + 1)
            .into_iter()
            .chain(fk.from.iter().map(|c| format!("{} IS NULL", sql::ident(c))))
            .collect();
        let q = format!(
            "UPDATE {} SET {} WHERE {}",
            sql::ident(table),
            set.join(", "),
            wheres.join(" AND ")
        );
        let args = values.iter().chain(key.iter().map(|(_, v)| v));
        let changed = self
            .work
            .execute(&q, rusqlite::params_from_iter(args))
            .during("pointing a row back at its restored parent in table", table)?;
        if changed > 0 {
            self.done.push(ReferenceSettled {
                table: table_of(self.tables, table)?.name.clone(),
                key,
                action: ReferenceAction::Restored,
            });
        }
        Ok(())
    }
}

/// `"a" = ?1`, `"b" = ?2`, … for `columns`, numbered from `first`.
fn placeholders(columns: &[String], first: usize) -> Vec<String> {
    columns
        .iter()
        .enumerate()
        .map(|(i, c)| format!("{} = ?{}", sql::ident(c), first + i))
        .collect()
}

/// Whether `row` holds `values` in `columns`.
fn holds(row: &[(String, Value)], columns: &[String], values: &[Value]) -> bool {
    columns.iter().zip(values).all(|(c, v)| {
        row.iter()
            .any(|(n, rv)| n.eq_ignore_ascii_case(c) && rv == v)
    })
}

fn table_of<'t>(tables: &'t HashMap<String, Table>, name: &str) -> Result<&'t Table> {
    tables.get(&name.to_lowercase()).ok_or_else(|| {
        crate::Error::Unexpected(format!(
            "table {name:?} is named by a foreign key but is not in the working copy"
        ))
    })
}

fn data_names(tables: &HashMap<String, Table>, name: &str) -> Result<Vec<String>> {
    Ok(table_of(tables, name)?.data_names()?)
}

/// The names of the columns that identify a row of `t`: its declared key, else its rowid.
fn key_names(t: &Table) -> Result<Vec<String>> {
    let names = t.data_names()?;
    Ok(t.key_positions()
        .into_iter()
        .map(|p| names[p].clone())
        .collect())
}

/// The rows of `table` in `conn` whose `columns` hold `values`, as `names` by name.
fn select_rows(
    conn: &Connection,
    table: &str,
    names: &[String],
    columns: &[String],
    values: &[Value],
) -> Result<Vec<Vec<(String, Value)>>> {
    let cols: Vec<String> = names.iter().map(|c| sql::ident(c)).collect();
    let q = sql::select(table, &cols.join(", "), columns);
    let mut st = conn.prepare_cached(&q)?;
    let rows = st.query_map(rusqlite::params_from_iter(values), |r| {
        (0..names.len())
            .map(|i| Ok((names[i].clone(), r.get::<_, Value>(i)?)))
            .collect::<rusqlite::Result<Vec<_>>>()
    })?;
    let rows: Vec<Vec<(String, Value)>> = rows.collect::<rusqlite::Result<_>>()?;
    Ok(rows)
}
