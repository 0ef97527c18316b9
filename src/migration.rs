//! What kind of schema change turned one table into another: columns added (`ADD COLUMN`), a
//! table renamed, columns renamed or dropped (SQLite's ALTER), any other change (SQLite's 12-step
//! rebuild, rows carried column by column), or a new row key (rows cannot be matched).
//!
//! Push, pull and `diff --sql` all replay a migration the other side made; whoever replays it
//! must end with the very definition the other side has, byte for byte, or the two sides'
//! schemas drift apart. So a change is taken for an ALTER only when SQLite's own ALTER leaves
//! exactly that text ([`leaves_exactly`], [`renamed_form`]); anything else is rebuilt, which
//! writes the definition as it is.

use std::collections::BTreeMap;

use rusqlite::Connection;

use crate::changeset::with_renamed_references;
use crate::schema::{Column, RowKey, Table};
use crate::sql;
use crate::Result;

/// For each data column of `new`, the data column of `old` its values come from, when the
/// rows of `old` can be carried into `new` row for row: by name (case-insensitive), else, in
/// tables of as many columns, the column at the same position that no other column took by
/// name (a renamed column); a hidden rowid from the hidden rowid. `None` when the row key
/// does not follow (a different kind of key, or key columns that come from elsewhere): then
/// rows cannot be matched across the change.
pub(crate) fn carried_columns(old: &Table, new: &Table) -> Option<Vec<(String, Option<String>)>> {
    if old.key == RowKey::Virtual || new.key == RowKey::Virtual || old.shadow || new.shadow {
        return None;
    }
    let old_names = old.data_names().ok()?;
    let new_names = new.data_names().ok()?;
    let same_shape = old.columns.len() == new.columns.len();
    let by_name = |n: &str| old.stored().find(|(_, c)| c.name.eq_ignore_ascii_case(n));
    let mut map = Vec::with_capacity(new_names.len());
    for (i, n) in new_names.iter().enumerate() {
        if i == 0 && new.has_hidden_rowid() {
            if !old.has_hidden_rowid() {
                return None;
            }
            map.push((n.clone(), Some(old_names[0].clone())));
            continue;
        }
        let from = match by_name(n) {
            Some((_, c)) => Some(c.name.clone()),
            None if same_shape => {
                let p = new.columns.iter().position(|c| &c.name == n)?;
                let c = &old.columns[p];
                let taken = new
                    .columns
                    .iter()
                    .any(|nc| nc.name.eq_ignore_ascii_case(&c.name));
                (!c.generated && !taken).then(|| c.name.clone())
            }
            None => None,
        };
        map.push((n.clone(), from));
    }
    let kind = |t: &Table| match &t.key {
        RowKey::Rowid { ipk, declared, .. } => (1, ipk.is_some(), declared.len()),
        RowKey::Primary(cols) => (2, false, cols.len()),
        RowKey::Virtual => (0, false, 0),
    };
    let (ok, nk) = (old.key_positions(), new.key_positions());
    let follows = kind(old) == kind(new)
        && ok.len() == nk.len()
        && ok
            .iter()
            .zip(&nk)
            .all(|(&o, &n)| map[n].1.as_deref() == Some(old_names[o].as_str()));
    follows.then_some(map)
}

/// The select list that reads the old table's rows as the rebuilt table `new` holds them,
/// by `map` ([`carried_columns`]): each copied column, or the new column's default.
pub(crate) fn carried_select(new: &Table, map: &[(String, Option<String>)]) -> Vec<String> {
    map.iter()
        .map(|(n, from)| match from {
            Some(o) => sql::ident(o),
            None => new
                .columns
                .iter()
                .find(|c| &c.name == n)
                .and_then(|c| c.default.clone())
                .unwrap_or_else(|| "NULL".into()),
        })
        .collect()
}

/// What kind of migration turned `old` into `new`, carried by `map` ([`carried_columns`]):
///
/// ```text
/// table_renamed     ALTER TABLE … RENAME TO (columns unchanged)
/// column_renamed    ALTER TABLE … RENAME COLUMN (every column kept, some under a new name)
/// column_dropped    ALTER TABLE … DROP COLUMN (the other columns unchanged)
/// rebuilt           any other change of the definition (the 12-step procedure), rows carried
/// recreated         the row key changed: rows cannot be matched, the table is made anew
/// ```
pub(crate) fn rebuild_kind(
    old: &Table,
    new: &Table,
    map: Option<&[(String, Option<String>)]>,
) -> &'static str {
    let Some(map) = map else {
        return "recreated";
    };
    let old_count = old.data_names().map_or(0, |n| n.len());
    let carried = map.iter().filter(|(_, o)| o.is_some()).count();
    let renamed = map
        .iter()
        .any(|(n, o)| o.as_ref().is_some_and(|o| !o.eq_ignore_ascii_case(n)));
    let all_carried = carried == map.len();
    let types_same = |a: &Table, b: &Table| {
        b.columns.iter().all(|c| {
            a.columns
                .iter()
                .any(|o| o.decl_type == c.decl_type && o.pk == c.pk && o.generated == c.generated)
        })
    };
    // SQLite's ALTER edits the definition's text and nothing else: the other columns'
    // definitions (types, NOT NULL, CHECK…) must read as before, or it is a rebuild.
    let (old_parts, new_parts) = (column_parts(&old.sql), column_parts(&new.sql));
    let tail = |p: &str| {
        let p = p.trim_start();
        let end = p.find(char::is_whitespace).unwrap_or(p.len());
        p[end..].trim().to_owned()
    };
    let renamed_alike = match (&old_parts, &new_parts) {
        (Some(o), Some(n)) => {
            o.len() == n.len() && o.iter().zip(n).all(|(a, b)| tail(a) == tail(b))
        }
        _ => false,
    };
    let dropped_alike = match (&old_parts, &new_parts) {
        (Some(o), Some(n)) => {
            let kept: Vec<&String> = o
                .iter()
                .filter(|p| {
                    let first = p.split_whitespace().next().unwrap_or("");
                    let first =
                        first.trim_matches(|c| c == '"' || c == '`' || c == '[' || c == ']');
                    map.iter().any(|(_, from)| {
                        from.as_deref()
                            .is_some_and(|f| f.eq_ignore_ascii_case(first))
                    }) || !old
                        .columns
                        .iter()
                        .any(|c| c.name.eq_ignore_ascii_case(first))
                })
                .collect();
            kept.len() == n.len() && kept.iter().zip(n).all(|(a, b)| a.trim() == b.trim())
        }
        _ => false,
    };
    if old.name != new.name && all_carried && carried == old_count && !renamed {
        "table_renamed"
    } else if renamed && all_carried && carried == old_count && renamed_alike {
        "column_renamed"
    } else if !renamed
        && all_carried
        && carried < old_count
        && types_same(old, new)
        && dropped_alike
    {
        "column_dropped"
    } else {
        "rebuilt"
    }
}

/// Whether SQLite's own ALTER statements (`alters`, for a renamed table or a renamed or dropped
/// column) turn `old`'s definition into exactly `new`'s, tried on the definition alone in an
/// in-memory database. ALTER edits the text only where it must, so a definition that differs
/// elsewhere (the name quoted otherwise, spacing, a type) is a rebuild, which makes the text
/// exact: whoever applies the change must end with the very definition the other side has.
///
/// ```text
/// CREATE TABLE t(id, x, v)      -> CREATE TABLE t(id, v)       ALTER … DROP COLUMN "x": exact
/// CREATE TABLE t(id, x, v)      -> CREATE TABLE "t"(id, v)     not exact: rebuilt
/// ```
pub(crate) fn leaves_exactly(old: &Table, new: &Table, alters: &[String]) -> bool {
    let Ok(mem) = Connection::open_in_memory() else {
        return false;
    };
    let tried = mem.execute_batch(&old.sql).and_then(|()| {
        for q in alters {
            mem.execute_batch(q)?;
        }
        mem.query_row(
            "SELECT sql FROM sqlite_schema WHERE type = 'table' AND name = ?1",
            [&new.name],
            |r| r.get::<_, String>(0),
        )
    });
    tried.is_ok_and(|sql| sql == new.sql)
}

/// The indexes of table `table` in `conn`, as (name, `CREATE INDEX` statement) in the order
/// `sqlite_schema` holds them; those SQLite makes for a constraint (no statement) left out, as
/// the table's own definition makes them again. What a migration that rebuilds the table, or
/// drops a column from it, or a table copied whole must make again.
pub(crate) fn indexes_of(conn: &Connection, table: &str) -> Result<Vec<(String, String)>> {
    let mut st = conn.prepare(
        "SELECT name, sql FROM sqlite_schema WHERE type = 'index' AND tbl_name = ?1 AND sql IS NOT NULL",
    )?;
    let rows = st.query_map([table], |r| Ok((r.get(0)?, r.get(1)?)))?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

/// The column definitions and table constraints of a `CREATE TABLE` statement, trimmed: the
/// text between its first `(` and last `)`, split at top-level commas.
fn column_parts(create: &str) -> Option<Vec<String>> {
    let (open, close) = (create.find('(')?, create.rfind(')')?);
    let inner = create.get(open + 1..close)?;
    Some(
        split_top_level(inner)
            .into_iter()
            .map(|p| p.trim().to_owned())
            .collect(),
    )
}

/// Tables renamed between `old` and `new` (`ALTER TABLE … RENAME TO`), as new name -> old
/// name: a table gone from `old` and a table new in `new` whose definition is exactly what
/// RENAME TO leaves of the old one ([`renamed_form`]). When several gone tables fit, the one
/// on the same root page (RENAME TO keeps the table's B-tree where it is), else none: a
/// dropped and a created table, whose rows then come as a drop and a create.
///
/// ```text
/// old: CREATE TABLE memo(id INTEGER PRIMARY KEY, b)   new: CREATE TABLE "memo_t"(id INTEGER PRIMARY KEY, b)  -> memo_t <- memo
/// old: CREATE TABLE other(x)                          new: CREATE TABLE big(x)                               -> none
/// ```
pub(crate) fn renamed_tables(
    base: &Connection,
    old: &BTreeMap<&str, &Table>,
    work: &Connection,
    new: &BTreeMap<&str, &Table>,
) -> Result<BTreeMap<String, String>> {
    let roots = |conn: &Connection| -> Result<BTreeMap<String, i64>> {
        let mut st =
            conn.prepare("SELECT name, rootpage FROM sqlite_schema WHERE type = 'table'")?;
        let rows = st.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    };
    let gone: Vec<&&Table> = old
        .iter()
        .filter(|(n, _)| !new.contains_key(*n))
        .map(|(_, t)| t)
        .collect();
    let added: Vec<&&Table> = new
        .iter()
        .filter(|(n, _)| !old.contains_key(*n))
        .map(|(_, t)| t)
        .collect();
    let mut out = BTreeMap::new();
    if gone.is_empty() || added.is_empty() {
        return Ok(out);
    }
    let (old_roots, new_roots) = (roots(base)?, roots(work)?);
    for n in added {
        let fits: Vec<&&&Table> = gone
            .iter()
            .filter(|o| {
                renamed_form(&o.sql, &o.name, &n.name).as_deref() == Some(n.sql.as_str())
                    && !out.values().any(|v| v == &o.name)
            })
            .collect();
        let pick = match fits.as_slice() {
            [one] => Some(one),
            many => many.iter().find(|o| {
                old_roots.contains_key(&o.name) && old_roots.get(&o.name) == new_roots.get(&n.name)
            }),
        };
        if let Some(o) = pick {
            out.insert(n.name.clone(), o.name.clone());
        }
    }
    Ok(out)
}

/// The definition `ALTER TABLE old RENAME TO new` leaves of `old_sql`: the name after `CREATE
/// TABLE` replaced by the new one, double-quoted, and the table's references to itself
/// rewritten; the rest as it was. `None` when `old_sql` does not read `CREATE TABLE name…`.
///
/// ```text
/// CREATE TABLE memo (id, p REFERENCES memo)  ->  CREATE TABLE "memo_t" (id, p REFERENCES "memo_t")
/// ```
fn renamed_form(old_sql: &str, old_name: &str, new_name: &str) -> Option<String> {
    let after = old_sql.strip_prefix("CREATE TABLE ")?;
    let end = match after.chars().next()? {
        q @ ('"' | '`' | '\'') => {
            let mut chars = after.char_indices().skip(1).peekable();
            let mut end = None;
            while let Some((i, c)) = chars.next() {
                if c == q {
                    if chars.peek().map(|&(_, n)| n) == Some(q) {
                        chars.next();
                        continue;
                    }
                    end = Some(i + 1);
                    break;
                }
            }
            end?
        }
        '[' => after.find(']')? + 1,
        _ => after
            .find(|c: char| !(c.is_alphanumeric() || c == '_' || c == '$' || !c.is_ascii()))
            .unwrap_or(after.len()),
    };
    let form = format!("CREATE TABLE {}{}", sql::ident(new_name), &after[end..]);
    let itself = BTreeMap::from([(new_name.to_owned(), old_name.to_owned())]);
    Some(with_renamed_references(&form, &itself))
}

/// Recognizes a table changed only by `ALTER TABLE … ADD COLUMN`: SQLite splices
/// `, <column definition>` into the CREATE text, so the new text is the old one with that
/// piece inserted and the old columns come first, unchanged. Returns the definitions, and the
/// values old rows read in the new columns.
pub(crate) fn added_columns(old: &Table, new: &Table) -> Option<(Vec<String>, Vec<String>)> {
    if old.columns.len() >= new.columns.len()
        || new.columns[..old.columns.len()] != old.columns[..]
        || old.key != new.key
    {
        return None;
    }
    let (o, n) = (old.sql.as_bytes(), new.sql.as_bytes());
    let prefix = o.iter().zip(n).take_while(|(a, b)| a == b).count();
    let suffix = o[prefix..]
        .iter()
        .rev()
        .zip(n[prefix..].iter().rev())
        .take_while(|(a, b)| a == b)
        .count();
    if prefix + suffix != o.len() {
        return None;
    }
    let inserted = new.sql.get(prefix..n.len() - suffix)?;
    let inserted = inserted.strip_prefix(", ")?;
    let defs = split_top_level(inserted);
    let appended: &[Column] = &new.columns[old.columns.len()..];
    if defs.len() != appended.len() {
        return None;
    }
    let values = appended
        .iter()
        .filter(|c| !c.generated)
        .map(|c| c.default.clone().unwrap_or_else(|| "NULL".into()))
        .collect();
    Some((defs, values))
}

/// Splits `a INT, b TEXT DEFAULT 'x,y', c CHECK (c IN (1,2))` at its top-level commas.
fn split_top_level(s: &str) -> Vec<String> {
    let mut parts = Vec::new();
    let (mut depth, mut quote, mut start) = (0i32, None::<char>, 0);
    for (i, c) in s.char_indices() {
        match (quote, c) {
            (Some(q), c) if c == q || (q == '[' && c == ']') => quote = None,
            (Some(_), _) => {}
            (None, '\'' | '"' | '`' | '[') => quote = Some(c),
            (None, '(') => depth += 1,
            (None, ')') => depth -= 1,
            (None, ',') if depth == 0 => {
                parts.push(s[start..i].trim().to_owned());
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(s[start..].trim().to_owned());
    parts
}

#[cfg(test)]
mod tests {
    use super::*;

    /// As the sqlite3 shell shows after each `ALTER TABLE … RENAME TO`.
    #[test]
    fn renamed_form_is_what_rename_to_leaves() {
        for (old, name, new, want) in [
            (
                "CREATE TABLE memo (id INTEGER PRIMARY KEY, p REFERENCES memo(id))",
                "memo",
                "memo_t",
                "CREATE TABLE \"memo_t\" (id INTEGER PRIMARY KEY, p REFERENCES \"memo_t\"(id))",
            ),
            (
                "CREATE TABLE [br x](a)",
                "br x",
                "brx2",
                "CREATE TABLE \"brx2\"(a)",
            ),
            (
                "CREATE TABLE \"q\"\"t\"(a)",
                "q\"t",
                "q2",
                "CREATE TABLE \"q2\"(a)",
            ),
        ] {
            assert_eq!(renamed_form(old, name, new).as_deref(), Some(want), "{old}");
        }
    }

    #[test]
    fn splits_column_definitions() {
        assert_eq!(
            split_top_level("a INT, b TEXT DEFAULT 'x,y', c CHECK (c IN (1,2))"),
            vec!["a INT", "b TEXT DEFAULT 'x,y'", "c CHECK (c IN (1,2))"]
        );
    }
}
