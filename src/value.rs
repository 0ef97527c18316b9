//! A SQLite value that never loses its storage class.
//!
//! Every comparison in tursync goes through [`Value`]'s equality, which looks at the storage
//! class and the exact bytes: `1`, `1.0` and `'1'` are three different values, and so are
//! `0.0` and `-0.0`. SQL's own `=` and `IS` would call some of those equal and silently drop a
//! change.
//!
//! TEXT is kept as bytes: SQLite does not check that TEXT is UTF-8, and apps written in C or
//! OCaml store raw Latin-1 or binary in it. Turning such bytes into U+FFFD would push altered
//! text and leave a row that differs forever.

use std::cmp::Ordering;

use rusqlite::types::{FromSql, FromSqlResult, ToSqlOutput, ValueRef};
use rusqlite::ToSql;

/// One SQLite value, by storage class.
#[derive(Debug, Clone)]
pub enum Value {
    Null,
    Integer(i64),
    Real(f64),
    /// The bytes SQLite holds, which are usually but not always UTF-8.
    Text(Vec<u8>),
    Blob(Vec<u8>),
}

impl Value {
    /// TEXT from a Rust string.
    pub fn text(s: &str) -> Value {
        Value::Text(s.as_bytes().to_vec())
    }

    /// The name SQLite's `typeof()` gives this value.
    pub fn type_name(&self) -> &'static str {
        match self {
            Value::Null => "null",
            Value::Integer(_) => "integer",
            Value::Real(_) => "real",
            Value::Text(_) => "text",
            Value::Blob(_) => "blob",
        }
    }

    /// Borrows a value out of a SQLite row without losing its class.
    pub fn from_ref(v: ValueRef<'_>) -> Value {
        match v {
            ValueRef::Null => Value::Null,
            ValueRef::Integer(i) => Value::Integer(i),
            ValueRef::Real(f) => Value::Real(f),
            ValueRef::Text(t) => Value::Text(t.to_vec()),
            ValueRef::Blob(b) => Value::Blob(b.to_vec()),
        }
    }
}

/// Storage class and exact bytes (REAL by its bit pattern), on borrowed values, so the diff's
/// hot loop compares without allocating.
pub fn exact_eq(a: ValueRef<'_>, b: ValueRef<'_>) -> bool {
    match (a, b) {
        (ValueRef::Null, ValueRef::Null) => true,
        (ValueRef::Integer(x), ValueRef::Integer(y)) => x == y,
        (ValueRef::Real(x), ValueRef::Real(y)) => x.to_bits() == y.to_bits(),
        (ValueRef::Text(x), ValueRef::Text(y)) => x == y,
        (ValueRef::Blob(x), ValueRef::Blob(y)) => x == y,
        _ => false,
    }
}

impl Value {
    fn as_value_ref(&self) -> ValueRef<'_> {
        match self {
            Value::Null => ValueRef::Null,
            Value::Integer(i) => ValueRef::Integer(*i),
            Value::Real(f) => ValueRef::Real(*f),
            Value::Text(s) => ValueRef::Text(s),
            Value::Blob(b) => ValueRef::Blob(b),
        }
    }
}

/// SQLite's ORDER BY order under BINARY collation: NULL, then numbers (integers and reals
/// compared by value), then text, then blobs, each by bytes.
pub fn cmp_value(a: ValueRef<'_>, b: ValueRef<'_>) -> Ordering {
    fn rank(v: &ValueRef<'_>) -> u8 {
        match v {
            ValueRef::Null => 0,
            ValueRef::Integer(_) | ValueRef::Real(_) => 1,
            ValueRef::Text(_) => 2,
            ValueRef::Blob(_) => 3,
        }
    }
    match (a, b) {
        (ValueRef::Integer(x), ValueRef::Integer(y)) => x.cmp(&y),
        (ValueRef::Real(x), ValueRef::Real(y)) => x.partial_cmp(&y).unwrap_or(Ordering::Equal),
        (ValueRef::Integer(i), ValueRef::Real(r)) => int_real_cmp(i, r),
        (ValueRef::Real(r), ValueRef::Integer(i)) => int_real_cmp(i, r).reverse(),
        (ValueRef::Text(x), ValueRef::Text(y)) | (ValueRef::Blob(x), ValueRef::Blob(y)) => x.cmp(y),
        (x, y) => rank(&x).cmp(&rank(&y)),
    }
}

/// Compares an integer with a real exactly, as SQLite does, even where the integer has no
/// exact f64.
fn int_real_cmp(i: i64, r: f64) -> Ordering {
    if r.is_nan() {
        return Ordering::Greater;
    }
    // ±2^63: beyond them no i64 compares equal.
    if r < -9_223_372_036_854_775_808.0 {
        return Ordering::Greater;
    }
    if r >= 9_223_372_036_854_775_808.0 {
        return Ordering::Less;
    }
    let t = r.trunc() as i64;
    match i.cmp(&t) {
        Ordering::Equal => (0.0f64)
            .partial_cmp(&(r - r.trunc()))
            .unwrap_or(Ordering::Equal),
        o => o,
    }
}

/// Equality by storage class and exact bytes ([`exact_eq`]).
impl PartialEq for Value {
    fn eq(&self, other: &Value) -> bool {
        exact_eq(self.as_value_ref(), other.as_value_ref())
    }
}

impl Eq for Value {}

impl ToSql for Value {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Ok(ToSqlOutput::Borrowed(self.as_value_ref()))
    }
}

impl FromSql for Value {
    fn column_result(v: ValueRef<'_>) -> FromSqlResult<Self> {
        Ok(Value::from_ref(v))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_order_like_sqlite() {
        use ValueRef::*;
        assert_eq!(cmp_value(Integer(1), Real(1.5)), Ordering::Less);
        assert_eq!(cmp_value(Real(2.0), Integer(2)), Ordering::Equal);
        assert_eq!(
            cmp_value(Integer(i64::MAX), Real(9_223_372_036_854_775_808.0)),
            Ordering::Less
        );
        assert_eq!(cmp_value(Null, Integer(i64::MIN)), Ordering::Less);
        assert_eq!(cmp_value(Text(b"a"), Blob(b"")), Ordering::Less);
        assert_eq!(cmp_value(Integer(-1), Real(-0.5)), Ordering::Less);
    }

    #[test]
    fn equality_keeps_storage_class_and_bits() {
        assert_ne!(Value::Integer(1), Value::Real(1.0));
        assert_ne!(Value::Integer(1), Value::text("1"));
        assert_ne!(Value::Real(0.0), Value::Real(-0.0));
        assert_ne!(Value::Blob(vec![]), Value::Null);
        assert_ne!(Value::Blob(vec![]), Value::text(""));
        assert_ne!(Value::Text(vec![0xe9]), Value::text("\u{fffd}"));
        assert_eq!(Value::Real(5e-324), Value::Real(5e-324));
    }

    #[test]
    fn text_that_is_not_utf8_keeps_its_bytes() {
        let conn = rusqlite::Connection::open_in_memory().unwrap();
        let v: Value = conn
            .query_row("SELECT CAST(X'4361666ce9' AS TEXT)", [], |r| r.get(0))
            .unwrap();
        assert_eq!(v, Value::Text(b"Cafl\xe9".to_vec()));
    }
}
