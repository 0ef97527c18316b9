//! The one place that turns names and values into SQL text.
//!
//! Identifiers are always double-quoted with inner quotes doubled, so any name works: keywords,
//! spaces, quotes, Unicode. Literals are written so that SQLite parses them back into the same
//! storage class and the same bytes.

use std::fmt::Write;

use crate::value::Value;

/// `name` as a quoted SQL identifier.
pub fn ident(name: &str) -> String {
    let mut out = String::with_capacity(name.len() + 2);
    push_ident(&mut out, name);
    out
}

/// Appends `name` as a quoted SQL identifier.
pub fn push_ident(out: &mut String, name: &str) {
    out.push('"');
    for c in name.chars() {
        if c == '"' {
            out.push('"');
        }
        out.push(c);
    }
    out.push('"');
}

/// `s` as a SQL string literal.
pub fn text_literal(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    push_text(&mut out, s.as_bytes());
    out
}

/// `PRAGMA main.NAME('arg')`: a pragma of the main database about one object, in the plain form
/// rather than the table-valued `SELECT … FROM pragma_NAME(?)`, which the caller filters
/// itself. tursodb 0.7.0 stops writing later autocommit writes to its WAL once a table-valued
/// pragma ran on its one connection, so what tursync reads from a remote takes this form. The
/// argument is a plain quoted literal (no `char(…)`: a pragma takes no expression); it never
/// goes through the sqlite3 shell.
///
/// ```text
/// pragma_of("table_xinfo", "it's")  ->  PRAGMA main.table_xinfo('it''s')
/// ```
pub fn pragma_of(name: &str, arg: &str) -> String {
    let mut out = format!("PRAGMA main.{name}(");
    push_quoted(&mut out, arg);
    out.push(')');
    out
}

/// The SQL that lists the orphans of `table` (`crate::schema::Orphan`: table, rowid, parent,
/// fkid): SQLite's `foreign_key_check`, which works whether foreign keys are enforced or not.
/// Push sends it to the remote; on a server without `pragma_foreign_key_check`,
/// `remote::batonless` knows it by this exact text and writes the check out by hand.
pub fn orphans_sql(table: &str) -> String {
    format!(
        "SELECT \"table\", rowid, parent, fkid FROM pragma_foreign_key_check({})",
        text_literal(table)
    )
}

/// Whether the sqlite3 shell could alter `b` inside a quoted literal: it strips a CR before an
/// LF from every input line, and a NUL cuts a statement short in most loaders. Every control
/// character is spelled out, so no line of our SQL text carries one raw.
fn is_control(b: u8) -> bool {
    b < 0x20 || b == 0x7f
}

fn push_text(out: &mut String, bytes: &[u8]) {
    let Ok(s) = std::str::from_utf8(bytes) else {
        // TEXT that is not UTF-8 has no literal: its bytes, cast.
        out.push_str("CAST(");
        push_blob(out, bytes);
        out.push_str(" AS TEXT)");
        return;
    };
    if !s.bytes().any(is_control) {
        push_quoted(out, s);
        return;
    }
    // `('a'||char(13,10)||'b')`: plain SQL that SQLite 3.x of any version reads back to the
    // same bytes, with no raw control character left in the text.
    out.push('(');
    let mut rest = s;
    let mut first = true;
    while !rest.is_empty() {
        if !first {
            out.push_str("||");
        }
        first = false;
        let plain = rest.bytes().position(is_control).unwrap_or(rest.len());
        if plain > 0 {
            push_quoted(out, &rest[..plain]);
            rest = &rest[plain..];
            continue;
        }
        let ctl = rest
            .bytes()
            .position(|b| !is_control(b))
            .unwrap_or(rest.len());
        out.push_str("char(");
        for (i, b) in rest[..ctl].bytes().enumerate() {
            if i > 0 {
                out.push(',');
            }
            let _ = write!(out, "{b}");
        }
        out.push(')');
        rest = &rest[ctl..];
    }
    out.push(')');
}

fn push_quoted(out: &mut String, s: &str) {
    out.reserve(s.len() + 2);
    out.push('\'');
    // A quote is ASCII, never part of a multi-byte character: the runs between quotes are
    // copied in one piece each.
    let mut pieces = s.split('\'');
    if let Some(first) = pieces.next() {
        out.push_str(first);
    }
    for piece in pieces {
        out.push_str("''");
        out.push_str(piece);
    }
    out.push('\'');
}

fn push_blob(out: &mut String, b: &[u8]) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    out.reserve(b.len() * 2 + 3);
    out.push_str("X'");
    out.extend(
        b.iter()
            .flat_map(|&byte| [HEX[usize::from(byte >> 4)], HEX[usize::from(byte & 15)]])
            .map(char::from),
    );
    out.push('\'');
}

/// Appends `v` as a SQL literal that SQLite reads back as the same class and bytes.
pub fn push_literal(out: &mut String, v: &Value) {
    match v {
        Value::Null => out.push_str("NULL"),
        // The same digits as `{i}`, without the formatting machinery: printing a large diff
        // writes one per key.
        Value::Integer(i) => out.push_str(itoa::Buffer::new().format(*i)),
        Value::Real(f) => push_real(out, *f),
        Value::Text(s) => push_text(out, s),
        Value::Blob(b) => push_blob(out, b),
    }
}

/// Appends `q` with each `?` placeholder (outside quotes) replaced by the literal of the next
/// argument: the text form of a parameterized statement.
pub fn push_bound(out: &mut String, q: &str, args: &[Value]) {
    let mut args = args.iter();
    let bytes = q.as_bytes();
    // Quotes and `?` are ASCII, never part of a multi-byte character: the text between them
    // is copied in one piece, and a quoted run is skipped in one search for its end.
    let (mut at, mut copied) = (0, 0);
    while let Some(found) = bytes[at..]
        .iter()
        .position(|c| matches!(c, b'?' | b'"' | b'\'' | b'`' | b'['))
    {
        let i = at + found;
        let close = match bytes[i] {
            b'?' => {
                if let Some(v) = args.next() {
                    out.push_str(&q[copied..i]);
                    match v {
                        Value::Real(f) => push_shell_real(out, *f),
                        v => push_literal(out, v),
                    }
                    copied = i + 1;
                }
                at = i + 1;
                continue;
            }
            b'[' => b']',
            quote => quote,
        };
        match bytes[i + 1..].iter().position(|&c| c == close) {
            Some(end) => at = i + 1 + end + 1,
            None => break,
        }
    }
    out.push_str(&q[copied..]);
}

/// Appends `f` for SQL text that another SQLite reads (a dump, `diff --sql`): its shortest
/// decimal when that is `f` exactly, as a significand and a power of ten that are both exact
/// doubles (reading it is then one exact operation, on any SQLite); otherwise the expression of
/// [`push_exact_real`], with the decimal in a comment for the reader. SQLite before 3.43 reads
/// the shortest decimal of about 3 in 1,000 random doubles one bit off, and of 1 subnormal in
/// 20 (measured with 3.40, Debian's `sqlite3`).
///
/// ```text
/// 12.5      -> 1.25e1
/// 3.0       -> 3e0
/// 12.99     -> (CAST(7312719894942843 AS REAL)/562949953421312) /* 1.299e1 */
/// ```
fn push_shell_real(out: &mut String, f: f64) {
    let start = out.len();
    push_real(out, f);
    if !f.is_finite() || decimal_is_exact(&out[start..]) {
        return;
    }
    let decimal = out.split_off(start);
    push_exact_real(out, f);
    out.push_str(" /* ");
    out.push_str(&decimal);
    out.push_str(" */");
}

/// Whether `decimal` (as [`push_real`] writes a finite value: `-1.25e1`) is its value exactly,
/// as `s × 10^e` with `s` at most 2^53 and `|e|` at most 22: both exact doubles, so one
/// multiplication or division gives the value.
fn decimal_is_exact(decimal: &str) -> bool {
    let Some((mantissa, exp)) = decimal.trim_start_matches('-').split_once('e') else {
        return false;
    };
    let (mut s, mut frac) = (0u64, 0i32);
    let mut after_point = false;
    for c in mantissa.bytes() {
        match c {
            b'.' => after_point = true,
            b'0'..=b'9' => {
                let Some(next) = s
                    .checked_mul(10)
                    .and_then(|s| s.checked_add(u64::from(c - b'0')))
                else {
                    return false;
                };
                s = next;
                frac += i32::from(after_point);
            }
            _ => return false,
        }
    }
    let Ok(exp) = exp.parse::<i32>() else {
        return false;
    };
    const EXACT: u64 = 1 << 53;
    match exp - frac {
        e @ 0..=22 => 10u64
            .checked_pow(e.unsigned_abs())
            .and_then(|p| s.checked_mul(p))
            .is_some_and(|v| v <= EXACT),
        e @ -22..=-1 => s <= EXACT && s % 5u64.pow(e.unsigned_abs()) == 0,
        _ => false,
    }
}

/// Appends a SQL expression that evaluates to exactly `f`, bit for bit, on any SQLite: the
/// mantissa as an integer cast to REAL, scaled by powers of two written as integers. Every step
/// is exact in IEEE arithmetic, unlike decimal parsing (sqld parses JSON floats and SQLite parses
/// decimal literals with rounding errors in the last bit).
pub fn push_exact_real(out: &mut String, f: f64) {
    if !f.is_finite() || f == 0.0 {
        if f == 0.0 && f.is_sign_negative() {
            out.push_str("(-0.0)");
        } else {
            push_real(out, f);
        }
        return;
    }
    let bits = f.to_bits();
    let exp = ((bits >> 52) & 0x7ff) as i32;
    let frac = (bits & ((1 << 52) - 1)) as i64;
    let (mut m, mut e) = if exp == 0 {
        (frac, -1074)
    } else {
        (frac | (1 << 52), exp - 1075)
    };
    while m & 1 == 0 {
        m >>= 1;
        e += 1;
    }
    if f < 0.0 {
        m = -m;
    }
    // The digits through `itoa`, not the formatting machinery: most REALs of a large
    // `diff --sql` come here.
    let mut digits = itoa::Buffer::new();
    out.push_str("(CAST(");
    out.push_str(digits.format(m));
    out.push_str(" AS REAL)");
    let op = if e < 0 { '/' } else { '*' };
    let mut left = e.unsigned_abs();
    while left > 0 {
        let step = left.min(62);
        out.push(op);
        out.push_str(digits.format(1u64 << step));
        left -= step;
    }
    out.push(')');
}

/// Rewrites a parameterized statement so that the arguments `inline` picks travel in the text
/// instead, as expressions that evaluate to exactly that value (REALs through
/// [`push_exact_real`], TEXT through its literal, which casts bytes that are not UTF-8), and the
/// remaining placeholders (`?` or `?N`) are renumbered over the remaining arguments.
pub fn inline_args(
    q: &str,
    args: &[Value],
    inline: impl Fn(&Value) -> bool,
) -> (String, Vec<Value>) {
    if !args.iter().any(&inline) {
        return (q.to_owned(), args.to_vec());
    }
    let mut out = String::with_capacity(q.len() + 32 * args.len());
    let mut kept: Vec<Value> = Vec::new();
    let mut renumber: Vec<Option<usize>> = vec![None; args.len()];
    let (mut quote, mut next) = (None, 0usize);
    let mut chars = q.char_indices().peekable();
    while let Some((_, c)) = chars.next() {
        match (quote, c) {
            (Some(open), c) if c == open => quote = None,
            (None, '"' | '\'' | '`') => quote = Some(c),
            (None, '[') => quote = Some(']'),
            (None, '?') => {
                let mut digits = String::new();
                while let Some(&(_, d)) = chars.peek().filter(|(_, d)| d.is_ascii_digit()) {
                    digits.push(d);
                    chars.next();
                }
                let index = digits
                    .parse::<usize>()
                    .map(|n| n.saturating_sub(1))
                    .unwrap_or(next);
                next = index + 1;
                match args.get(index) {
                    Some(Value::Real(f)) if inline(&Value::Real(*f)) => {
                        push_exact_real(&mut out, *f)
                    }
                    Some(v) if inline(v) => push_literal(&mut out, v),
                    Some(v) => {
                        let n = *renumber[index].get_or_insert_with(|| {
                            kept.push(v.clone());
                            kept.len()
                        });
                        let _ = write!(out, "?{n}");
                    }
                    None => {
                        out.push('?');
                        out.push_str(&digits);
                    }
                }
                continue;
            }
            _ => {}
        }
        out.push(c);
    }
    (out, kept)
}

/// A select list that reads `cols` exactly from a server that cannot encode some values in
/// its answer (sqld fails the whole request on TEXT that is not UTF-8, and sends an infinite
/// REAL as JSON `null`): a marker column, one character per column (`t`: TEXT sent as its bytes
/// in a BLOB, `+`/`-`: an infinite REAL sent as NULL, `.`: the value as is), then the columns.
/// [`decode_exact_row`] turns such rows back into values.
pub fn exact_select_list(cols: &[String]) -> String {
    let marks: Vec<String> = cols
        .iter()
        .map(|c| {
            format!(
                "CASE WHEN typeof({c}) = 'text' THEN 't' WHEN {c} = 9e999 THEN '+' \
                 WHEN {c} = -9e999 THEN '-' ELSE '.' END"
            )
        })
        .collect();
    // concat() takes at most 127 arguments on sqld's SQLite: groups of 100, concatenated.
    let groups: Vec<String> = marks
        .chunks(100)
        .map(|g| format!("concat({})", g.join(", ")))
        .collect();
    let mut out = if groups.len() == 1 {
        groups[0].clone()
    } else {
        format!("concat({})", groups.join(", "))
    };
    for c in cols {
        let _ = write!(
            out,
            ", CASE WHEN typeof({c}) = 'text' THEN CAST({c} AS BLOB) \
             WHEN {c} IN (9e999, -9e999) THEN NULL ELSE {c} END"
        );
    }
    out
}

/// The values of a row read with [`exact_select_list`].
pub fn decode_exact_row(row: Vec<Value>) -> Result<Vec<Value>, String> {
    let mut cells = row.into_iter();
    let marks = match cells.next() {
        Some(Value::Text(m)) => m,
        other => return Err(format!("expected a marker column, got {other:?}")),
    };
    let values: Vec<Value> = cells.collect();
    if marks.len() != values.len() {
        return Err(format!(
            "{} markers for {} columns",
            marks.len(),
            values.len()
        ));
    }
    marks
        .iter()
        .zip(values)
        .map(|(m, v)| match (m, v) {
            (b't', Value::Blob(b)) => Ok(Value::Text(b)),
            (b'+', Value::Null) => Ok(Value::Real(f64::INFINITY)),
            (b'-', Value::Null) => Ok(Value::Real(f64::NEG_INFINITY)),
            (b'.', v) => Ok(v),
            (m, v) => Err(format!("marker {:?} with value {v:?}", *m as char)),
        })
        .collect()
}

/// Refuses a statement that the sqlite3 shell would not read back as written. Literals never
/// carry a raw control character ([`push_literal`]), but identifiers have no escape in SQL and
/// CREATE statements are replayed as the database holds them: a CR before an LF in them would
/// be dropped by the shell, which strips it from every input line.
pub fn check_shell_text(stmt: &str) -> crate::Result<()> {
    if stmt.contains("\r\n") {
        let shown: String = stmt.chars().take(200).collect();
        return Err(crate::Error::Unsupported(format!(
            "this statement holds a CR LF pair in a name or in its CREATE text, which the sqlite3 \
             shell would read back without the CR, so it cannot be written as SQL text: {shown:?}"
        )));
    }
    Ok(())
}

/// `v` as a SQL literal.
pub fn literal(v: &Value) -> String {
    let mut out = String::new();
    push_literal(&mut out, v);
    out
}

fn push_real(out: &mut String, f: f64) {
    if f.is_nan() {
        // SQLite never stores NaN (it becomes NULL), so one cannot come out of a database.
        out.push_str("NULL");
    } else if f.is_infinite() {
        out.push_str(if f > 0.0 { "9e999" } else { "-9e999" });
    } else {
        // Rust prints the shortest decimal that reads back to the same bits; the exponent form
        // keeps the token a REAL even when the value is whole (`1e0`, not `1`).
        let _ = write!(out, "{f:e}");
    }
}

/// The statements that write and find rows by key, built here alone, with `?` placeholders
/// that take their arguments in order. Every write names its own conflict resolution
/// (`OR ABORT`), so a table's `ON CONFLICT REPLACE` or `IGNORE` can never delete or skip rows
/// behind tursync's back.
///
/// ```text
/// insert("t", ["id", "v"], 2)         INSERT OR ABORT INTO "t" ("id", "v") VALUES (?, ?), (?, ?)
/// delete("t", ["a", "b"])             DELETE FROM "t" WHERE "a" = ? AND "b" = ?
/// update("t", ["v"], ["id"])          UPDATE OR ABORT "t" SET "v" = ? WHERE "id" = ?
/// select("t", "\"id\", \"v\"", ["id"])  SELECT "id", "v" FROM "t" WHERE "id" = ?
/// select_run("t", "*", [r#""a""#, r#""b""#], true)
///                                     SELECT * FROM "t" WHERE ("a", "b") >= (?, ?) ORDER BY "a", "b" LIMIT ?
/// key_in(["id"], 3)                   "id" IN (?, ?, ?)
/// key_in(["a", "b"], 2)               ("a", "b") IN (VALUES (?, ?), (?, ?))
/// delete_many("t", ["id"], 2)         DELETE FROM "t" WHERE "id" IN (?, ?)
/// update_many("t", ["v"], ["id"], 2)  UPDATE OR ABORT "t" SET "v" = v.column2
///                                       FROM (VALUES (?, ?), (?, ?)) AS v WHERE "t"."id" = v.column1
/// ```
pub fn insert<S: AsRef<str>>(table: &str, columns: &[S], rows: usize) -> String {
    let row = format!("({})", marks(columns.len()));
    format!(
        "INSERT OR ABORT INTO {} ({}) VALUES {}",
        ident(table),
        idents(columns).join(", "),
        vec![row.as_str(); rows].join(", ")
    )
}

/// See [`insert`].
pub fn delete<S: AsRef<str>>(table: &str, key: &[S]) -> String {
    format!("DELETE FROM {} WHERE {}", ident(table), where_key(key))
}

/// See [`insert`]: the arguments are the new values, then the key.
pub fn update<S: AsRef<str>, K: AsRef<str>>(table: &str, set: &[S], key: &[K]) -> String {
    let sets: Vec<String> = idents(set).iter().map(|c| format!("{c} = ?")).collect();
    format!(
        "UPDATE OR ABORT {} SET {} WHERE {}",
        ident(table),
        sets.join(", "),
        where_key(key)
    )
}

/// See [`insert`]: `columns` is a select list, already SQL.
pub fn select<S: AsRef<str>>(table: &str, columns: &str, key: &[S]) -> String {
    format!(
        "SELECT {columns} FROM {} WHERE {}",
        ident(table),
        where_key(key)
    )
}

/// See [`insert`]: a run of at most `limit` rows in key order, from the first whose key is at
/// least the arguments (`from`), else from the table's first row. `columns` is a select list
/// and `key` the key's expressions ([`crate::schema::Table::scan_key_exprs`]), both already SQL;
/// the arguments are the start key's values (with `from`), then the limit.
pub fn select_run<S: AsRef<str>>(table: &str, columns: &str, key: &[S], from: bool) -> String {
    let key: Vec<&str> = key.iter().map(AsRef::as_ref).collect();
    let order = key.join(", ");
    let start = match key.as_slice() {
        _ if !from => String::new(),
        [one] => format!(" WHERE {one} >= ?"),
        _ => format!(" WHERE ({order}) >= ({})", marks(key.len())),
    };
    format!(
        "SELECT {columns} FROM {}{start} ORDER BY {order} LIMIT ?",
        ident(table)
    )
}

/// See [`insert`]: a condition matching any of `rows` keys.
pub fn key_in<S: AsRef<str>>(key: &[S], rows: usize) -> String {
    let cols = idents(key);
    if let [one] = cols.as_slice() {
        return format!("{one} IN ({})", marks(rows));
    }
    let row = format!("({})", marks(cols.len()));
    format!(
        "({}) IN (VALUES {})",
        cols.join(", "),
        vec![row.as_str(); rows].join(", ")
    )
}

/// See [`insert`]: rows by key, many at once.
pub fn delete_many<S: AsRef<str>>(table: &str, key: &[S], rows: usize) -> String {
    format!("DELETE FROM {} WHERE {}", ident(table), key_in(key, rows))
}

/// See [`insert`]: many rows' `set` columns at once, each row's arguments its key, then its new
/// values. (SQLite checks UNIQUE constraints row by row here, so values swapped between rows
/// must not go through one such statement: see `TableDiff::phases`.)
pub fn update_many<S: AsRef<str>, K: AsRef<str>>(
    table: &str,
    set: &[S],
    key: &[K],
    rows: usize,
) -> String {
    let t = ident(table);
    let row = format!("({})", marks(key.len() + set.len()));
    // VALUES columns are named column1, column2…: keys first, then the new values.
    let sets: Vec<String> = idents(set)
        .iter()
        .enumerate()
        .map(|(j, c)| format!("{c} = v.column{}", key.len() + j + 1))
        .collect();
    let on: Vec<String> = idents(key)
        .iter()
        .enumerate()
        .map(|(j, k)| format!("{t}.{k} = v.column{}", j + 1))
        .collect();
    format!(
        "UPDATE OR ABORT {t} SET {} FROM (VALUES {}) AS v WHERE {}",
        sets.join(", "),
        vec![row.as_str(); rows].join(", "),
        on.join(" AND ")
    )
}

/// Sets a table's AUTOINCREMENT counter: [`SEQUENCE_DELETE`] with the table's name, then (unless
/// the counter is gone) [`SEQUENCE_INSERT`] with the name and the value.
pub const SEQUENCE_DELETE: &str = "DELETE FROM sqlite_sequence WHERE name = ?";
/// See [`SEQUENCE_DELETE`].
pub const SEQUENCE_INSERT: &str = "INSERT INTO sqlite_sequence(name, seq) VALUES (?, ?)";

/// `"a" = ? AND "b" = ?`: the condition of [`delete`], [`update`] and [`select`].
pub fn where_key<S: AsRef<str>>(key: &[S]) -> String {
    idents(key)
        .iter()
        .map(|k| format!("{k} = ?"))
        .collect::<Vec<_>>()
        .join(" AND ")
}

fn idents<S: AsRef<str>>(names: &[S]) -> Vec<String> {
    names.iter().map(|n| ident(n.as_ref())).collect()
}

fn marks(n: usize) -> String {
    vec!["?"; n].join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The bundled SQLite is built with `SQLITE_DQS=0` (.cargo/config.toml): a double-quoted
    /// name that is no column is an error, never the string itself, so no read of ours can
    /// take a column's name for its value.
    #[test]
    fn a_quoted_name_that_is_no_column_is_an_error() {
        let conn = rusqlite::Connection::open_in_memory().expect("in-memory database");
        conn.execute_batch("CREATE TABLE t(a); INSERT INTO t VALUES (1)")
            .expect("create t");
        let read = conn.query_row(&format!("SELECT {} FROM t", ident("b")), [], |r| {
            r.get::<_, rusqlite::types::Value>(0)
        });
        assert!(read.is_err(), "read {read:?}");
        let ddl = conn.execute_batch(r#"CREATE INDEX t_b ON t("b")"#);
        assert!(ddl.is_err(), "an index on a missing column: {ddl:?}");
    }

    /// The worked examples of [`insert`] and its siblings.
    #[test]
    fn statements_read_as_documented() {
        assert_eq!(
            insert("t", &["id", "v"], 2),
            r#"INSERT OR ABORT INTO "t" ("id", "v") VALUES (?, ?), (?, ?)"#
        );
        assert_eq!(
            delete("t", &["a", "b"]),
            r#"DELETE FROM "t" WHERE "a" = ? AND "b" = ?"#
        );
        assert_eq!(
            update("t", &["v"], &["id"]),
            r#"UPDATE OR ABORT "t" SET "v" = ? WHERE "id" = ?"#
        );
        assert_eq!(
            select("t", r#""id", "v""#, &["id"]),
            r#"SELECT "id", "v" FROM "t" WHERE "id" = ?"#
        );
        assert_eq!(
            select_run("t", "*", &[r#""a""#, r#""b""#], true),
            r#"SELECT * FROM "t" WHERE ("a", "b") >= (?, ?) ORDER BY "a", "b" LIMIT ?"#
        );
        assert_eq!(
            select_run("t", r#""id", "v""#, &[r#""id""#], false),
            r#"SELECT "id", "v" FROM "t" ORDER BY "id" LIMIT ?"#
        );
        assert_eq!(key_in(&["id"], 3), r#""id" IN (?, ?, ?)"#);
        assert_eq!(
            key_in(&["a", "b"], 2),
            r#"("a", "b") IN (VALUES (?, ?), (?, ?))"#
        );
        assert_eq!(
            delete_many("t", &["id"], 2),
            r#"DELETE FROM "t" WHERE "id" IN (?, ?)"#
        );
        assert_eq!(
            update_many("t", &["v"], &["id"], 2),
            r#"UPDATE OR ABORT "t" SET "v" = v.column2 FROM (VALUES (?, ?), (?, ?)) AS v WHERE "t"."id" = v.column1"#
        );
    }
    use proptest::prelude::*;

    fn parse_back(lit: &str) -> Value {
        let conn = rusqlite::Connection::open_in_memory().unwrap();
        conn.query_row(&format!("SELECT {lit}"), [], |r| r.get::<_, Value>(0))
            .unwrap()
    }

    #[test]
    fn placeholders_outside_quotes_are_bound() {
        let mut out = String::new();
        push_bound(
            &mut out,
            "UPDATE \"a?\" SET 'x?' = ? WHERE [b?] = ?",
            &[Value::Integer(1), Value::text("?")],
        );
        assert_eq!(out, "UPDATE \"a?\" SET 'x?' = 1 WHERE [b?] = '?'");
        // Doubled quotes, backticks, and a quote never closed: nothing after it is bound.
        out.clear();
        push_bound(
            &mut out,
            "SELECT \"a\"\"?\", `c?`, ? FROM t WHERE x = 'it''s ?' AND y = ? AND z = 'open ?",
            &[Value::Integer(1), Value::Integer(2), Value::Integer(3)],
        );
        assert_eq!(
            out,
            "SELECT \"a\"\"?\", `c?`, 1 FROM t WHERE x = 'it''s ?' AND y = 2 AND z = 'open ?"
        );
    }

    #[test]
    fn reals_are_inlined_exactly_and_placeholders_renumbered() {
        let args = [
            Value::Integer(7),
            Value::Real(0.1),
            Value::text("?"),
            Value::Real(-5e-324),
        ];
        // "a?" is a column (a quoted name that is no column is an error: SQLITE_DQS=0).
        let (q, kept) = inline_args(
            "SELECT ?, ?, \"a?\", ?, ?4, ?1 FROM (SELECT 8 AS \"a?\")",
            &args,
            |v| matches!(v, Value::Real(_)),
        );
        assert_eq!(kept, vec![Value::Integer(7), Value::text("?")]);
        assert!(
            q.starts_with("SELECT ?1, (CAST(") && q.ends_with(", ?1 FROM (SELECT 8 AS \"a?\")"),
            "{q}"
        );
        let conn = rusqlite::Connection::open_in_memory().unwrap();
        let row: Vec<Value> = conn
            .query_row(&q, rusqlite::params_from_iter(kept.iter()), |r| {
                (0..6).map(|i| r.get(i)).collect()
            })
            .unwrap();
        assert_eq!(row[1], Value::Real(0.1));
        assert_eq!(row[2], Value::Integer(8));
        assert_eq!(row[4], Value::Real(-5e-324));
        assert_eq!(row[3], Value::text("?"));
    }

    #[test]
    fn exact_select_reads_back_every_class() {
        let conn = rusqlite::Connection::open_in_memory().unwrap();
        conn.execute_batch(
            "CREATE TABLE t(a, b REAL, c TEXT);
             INSERT INTO t VALUES (CAST(X'e9ff' AS TEXT), 9e999, NULL), (X'00', -9e999, 'ok'),
                                  (1, -0.0, 2.5);",
        )
        .unwrap();
        let cols: Vec<String> = ["a", "b", "c"].iter().map(|c| ident(c)).collect();
        let q = format!("SELECT {} FROM t ORDER BY rowid", exact_select_list(&cols));
        let mut st = conn.prepare(&q).unwrap();
        let rows: Vec<Vec<Value>> = st
            .query_map([], |r| (0..4).map(|i| r.get::<_, Value>(i)).collect())
            .unwrap()
            .map(|r| decode_exact_row(r.unwrap()).unwrap())
            .collect();
        assert_eq!(
            rows,
            vec![
                vec![
                    Value::Text(vec![0xe9, 0xff]),
                    Value::Real(f64::INFINITY),
                    Value::Null
                ],
                vec![
                    Value::Blob(vec![0]),
                    Value::Real(f64::NEG_INFINITY),
                    Value::text("ok")
                ],
                vec![Value::Integer(1), Value::Real(0.0), Value::text("2.5")],
            ]
        );
    }

    proptest! {
        #[test]
        fn exact_real_expressions_evaluate_to_the_same_bits(bits in any::<u64>()) {
            let f = f64::from_bits(bits);
            prop_assume!(!f.is_nan());
            let mut e = String::new();
            push_exact_real(&mut e, f);
            prop_assert_eq!(parse_back(&e), Value::Real(f), "{}", e);
        }

        /// What a dump writes for a REAL reads back to the same bits, and is the plain decimal
        /// only when that is the value exactly.
        #[test]
        fn shell_reals_read_back_to_the_same_bits(
            f in prop_oneof![
                any::<u64>().prop_map(f64::from_bits),
                (1u64..(1 << 52)).prop_map(f64::from_bits),
                (-100_000i64..100_000).prop_map(|c| c as f64 / 8.0),
            ]
        ) {
            prop_assume!(!f.is_nan());
            let mut e = String::new();
            push_shell_real(&mut e, f);
            prop_assert_eq!(parse_back(&e), Value::Real(f), "{}", e);
            let mut plain = String::new();
            push_real(&mut plain, f);
            prop_assert_eq!(!e.contains("CAST"), !f.is_finite() || decimal_is_exact(&plain), "{}", e);
        }
    }

    #[test]
    fn shell_reals_are_plain_decimals_when_exact() {
        let shell = |f: f64| {
            let mut e = String::new();
            push_shell_real(&mut e, f);
            e
        };
        assert_eq!(shell(12.5), "1.25e1");
        assert_eq!(shell(3.0), "3e0");
        assert_eq!(shell(-0.0), "-0e0");
        assert_eq!(shell(f64::INFINITY), "9e999");
        assert_eq!(shell(9007199254740992.0), "9.007199254740992e15");
        assert_eq!(
            shell(12.99),
            "(CAST(7312719894942843 AS REAL)/562949953421312) /* 1.299e1 */"
        );
        // Eighths are exact decimals: 0.125 is 125 / 10^3, and 5^3 divides 125.
        for c in -1000..1000 {
            assert!(!shell(f64::from(c) / 8.0).contains("CAST"), "{c}/8");
        }
        // A subnormal SQLite 3.40 reads one bit off from its shortest decimal.
        assert!(shell(f64::from_bits(0x0009_908d_df76_bfa9)).starts_with("(CAST("));
    }

    #[test]
    fn identifiers_quote_everything() {
        assert_eq!(ident("a\"b"), "\"a\"\"b\"");
        assert_eq!(ident("select"), "\"select\"");
    }

    #[test]
    fn text_and_blob_literals_are_written_as_documented() {
        assert_eq!(literal(&Value::text("it's a 'q''")), "'it''s a ''q'''''");
        assert_eq!(literal(&Value::text("'")), "''''");
        assert_eq!(literal(&Value::text("é'€")), "'é''€'");
        assert_eq!(literal(&Value::text("")), "''");
        assert_eq!(
            literal(&Value::Blob(vec![0, 0x0f, 0xa5, 0xff])),
            "X'000FA5FF'"
        );
        assert_eq!(literal(&Value::Blob(vec![])), "X''");
    }

    proptest! {
        #[test]
        fn any_text_or_blob_reads_back_exactly(s in ".*", b in any::<Vec<u8>>()) {
            for v in [Value::text(&s), Value::Text(b.clone()), Value::Blob(b.clone())] {
                prop_assert_eq!(parse_back(&literal(&v)), v.clone(), "{}", literal(&v));
            }
        }
    }

    #[test]
    fn edge_values_read_back_exactly() {
        for v in [
            Value::Real(-0.0),
            Value::Real(0.0),
            Value::Real(5e-324),
            Value::Real(f64::MAX),
            Value::Real(f64::MIN_POSITIVE),
            Value::Real(f64::INFINITY),
            Value::Real(f64::NEG_INFINITY),
            Value::Real(1.0),
            Value::Integer(i64::MIN),
            Value::Integer(i64::MAX),
            Value::text("it's\n\t\\ \u{1F600} \u{0}x"),
            Value::text("a\r\nb\r\n\r\r\u{7f}'"),
            Value::text(""),
            Value::Text(b"Caf\xe9".to_vec()),
            Value::Text(vec![0xff, 0, 0xfe, b'\r', b'\n']),
            Value::Blob(vec![]),
            Value::Blob(vec![0, 255, 16]),
            Value::Null,
        ] {
            assert_eq!(parse_back(&literal(&v)), v, "{}", literal(&v));
        }
    }

    proptest! {
        #[test]
        fn any_finite_real_reads_back_to_the_same_bits(bits in any::<u64>()) {
            let f = f64::from_bits(bits);
            prop_assume!(f.is_finite());
            let v = Value::Real(f);
            prop_assert_eq!(parse_back(&literal(&v)), v);
        }
    }
}
