//! A SQLite value that never loses its storage class.
//!
//! Every comparison in tursync goes through [`Value`]'s equality, which looks at the storage
//! class and the exact bytes: `1`, `1.0` and `'1'` are three different values, and so are
//! `0.0` and `-0.0`. SQL's own `=` and `IS` would call some of those equal and silently drop a
//! change.

use rusqlite::types::{FromSql, FromSqlResult, ToSqlOutput, ValueRef};
use rusqlite::ToSql;

/// One SQLite value, by storage class.
#[derive(Debug, Clone)]
pub enum Value {
    Null,
    Integer(i64),
    Real(f64),
    Text(String),
    Blob(Vec<u8>),
}

impl Value {
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
            // SQLite TEXT may hold bytes that are not UTF-8; keep what can be kept.
            ValueRef::Text(t) => Value::Text(String::from_utf8_lossy(t).into_owned()),
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
            Value::Text(s) => ValueRef::Text(s.as_bytes()),
            Value::Blob(b) => ValueRef::Blob(b),
        }
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
    fn equality_keeps_storage_class_and_bits() {
        assert_ne!(Value::Integer(1), Value::Real(1.0));
        assert_ne!(Value::Integer(1), Value::Text("1".into()));
        assert_ne!(Value::Real(0.0), Value::Real(-0.0));
        assert_ne!(Value::Blob(vec![]), Value::Null);
        assert_ne!(Value::Blob(vec![]), Value::Text(String::new()));
        assert_eq!(Value::Real(5e-324), Value::Real(5e-324));
    }
}
