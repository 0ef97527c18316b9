//! The Hrana 3 JSON messages tursync sends and reads (`docs/HRANA_3_SPEC.md` in libSQL).
//!
//! These are our own small types rather than `libsql-hrana`'s: that crate's response enums are
//! internally tagged, so serde buffers every result (every row of a page) once more before
//! decoding it, and its protobuf impls are server-side only (requests cannot be encoded nor
//! responses decoded). Here responses are flat structs with optional fields, and a value
//! decodes straight into [`Value`] with no intermediate tree.

use std::fmt;

use base64::Engine as _;
use serde::de::{self, MapAccess, Visitor};
use serde::ser::SerializeMap;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::value::Value;

#[derive(Serialize)]
pub struct PipelineReq<'a> {
    pub baton: Option<&'a str>,
    pub requests: &'a [StreamRequest],
}

/// A request on a stream. Only the kinds tursync uses.
#[derive(Serialize, Debug, Clone)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum StreamRequest {
    Execute { stmt: Stmt },
    Sequence { sql: String },
    Close,
    Batch { batch: Batch },
}

/// Statements run in order, each only when its condition holds ([`BatchCond`]). Servers
/// without streams (Turso Sync) run a transaction as one batch: `BEGIN`, every statement on
/// condition that the one before succeeded, `COMMIT` likewise, `ROLLBACK` otherwise.
#[derive(Serialize, Debug, Clone, Default)]
pub struct Batch {
    pub steps: Vec<BatchStep>,
}

#[derive(Serialize, Debug, Clone)]
pub struct BatchStep {
    pub stmt: Stmt,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub condition: Option<BatchCond>,
}

#[derive(Serialize, Debug, Clone)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum BatchCond {
    Ok { step: usize },
    Not { cond: Box<BatchCond> },
    And { conds: Vec<BatchCond> },
}

/// One entry per step: its result if it ran and succeeded, its error if it failed; both
/// `null` when its condition did not hold.
#[derive(Deserialize, Debug, Default)]
pub struct BatchResult {
    /// sqld's replication index after the whole batch (no step carries one of its own).
    #[serde(default)]
    pub replication_index: Option<serde_json::Value>,
    #[serde(default)]
    pub step_results: Vec<Option<StmtResult>>,
    #[serde(default)]
    pub step_errors: Vec<Option<ErrorBody>>,
}

#[derive(Debug, Clone)]
pub struct Stmt {
    pub sql: String,
    pub args: Vec<Value>,
    pub want_rows: bool,
}

/// A REAL argument travels as a JSON number only when sqld reads that number back to the same
/// bits: sqld parses JSON floats the fast way, `significand` times or divided by a power of ten,
/// which is off in the last bit for about one value in four (measured), and JSON has no
/// infinity. TEXT travels as a JSON string only when it is UTF-8. The others go as exact SQL
/// expressions in the statement text ([`crate::sql::inline_args`]).
impl Serialize for Stmt {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let (sql, args) = crate::sql::inline_args(&self.sql, &self.args, |v| match v {
            Value::Real(f) => !survives_sqld_json(*f),
            Value::Text(t) => std::str::from_utf8(t).is_err(),
            _ => false,
        });
        let mut m = s.serialize_map(Some(3))?;
        m.serialize_entry("sql", &sql)?;
        if !args.is_empty() {
            m.serialize_entry("args", &args)?;
        }
        m.serialize_entry("want_rows", &self.want_rows)?;
        m.end()
    }
}

/// The answer to a pipeline whose results are all `R`: [`StmtResult`] for `execute` requests
/// (and `close`, which has none), [`BatchResult`] for one `batch`, or `serde_json::Value` for a
/// mix, each then read as its request's kind.
#[derive(Deserialize, Debug)]
pub struct PipelineResp<R = StmtResult> {
    pub baton: Option<String>,
    pub base_url: Option<String>,
    pub results: Vec<StreamResult<R>>,
}

/// `{"type":"ok","response":…}` or `{"type":"error","error":…}`, read flat.
#[derive(Deserialize, Debug)]
pub struct StreamResult<R = StmtResult> {
    #[serde(rename = "type")]
    pub kind: String,
    pub response: Option<StreamResponse<R>>,
    pub error: Option<ErrorBody>,
}

#[derive(Deserialize, Debug)]
pub struct StreamResponse<R = StmtResult> {
    /// Present for `execute` and `batch`; `close` carries nothing.
    pub result: Option<R>,
}

#[derive(Deserialize, Debug, Clone)]
pub struct ErrorBody {
    pub message: String,
    #[serde(default)]
    pub code: Option<String>,
}

#[derive(Deserialize, Debug, Default)]
pub struct StmtResult {
    #[serde(default)]
    pub cols: Vec<Col>,
    #[serde(default)]
    pub rows: Vec<Vec<Value>>,
    #[serde(default)]
    pub affected_row_count: u64,
    /// The server's replication frame number when the statement ran (sqld sends it as a
    /// string). It moves with every write, which makes it the cheap "did the remote change?"
    /// signal pull relies on.
    #[serde(default)]
    pub replication_index: Option<serde_json::Value>,
}

impl StmtResult {
    /// The rows of a statement whose select list was [`crate::sql::exact_select_list`].
    pub fn exact_rows(self) -> Result<Vec<Vec<Value>>, super::RemoteError> {
        self.rows
            .into_iter()
            .map(|r| {
                crate::sql::decode_exact_row(r).map_err(|e| {
                    super::RemoteError::Protocol(format!("unexpected exact-read row: {e}"))
                })
            })
            .collect()
    }

    pub fn replication_index(&self) -> Option<u64> {
        index_of(self.replication_index.as_ref())
    }
}

impl BatchResult {
    pub fn replication_index(&self) -> Option<u64> {
        index_of(self.replication_index.as_ref())
    }
}

/// A replication index as sqld sends it (a string) or as a number.
fn index_of(v: Option<&serde_json::Value>) -> Option<u64> {
    match v? {
        serde_json::Value::String(s) => s.parse().ok(),
        serde_json::Value::Number(n) => n.as_u64(),
        _ => None,
    }
}

#[derive(Deserialize, Debug)]
pub struct Col {
    pub name: Option<String>,
}

/// Hrana's value objects. Two values Hrana has no form for get one that nothing reads by
/// mistake, for `diff --json`: TEXT that is not UTF-8 as `{"type":"text","base64":…}`, and an
/// infinite REAL as the string `"Infinity"` or `"-Infinity"`. Statements never carry them
/// (see [`Stmt`]'s serialization).
impl Serialize for Value {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(Some(2))?;
        let kind = match self {
            Value::Real(_) => "float",
            other => other.type_name(),
        };
        m.serialize_entry("type", kind)?;
        match self {
            Value::Null => {}
            Value::Integer(i) => m.serialize_entry("value", &i.to_string())?,
            Value::Real(f) if f.is_infinite() => {
                m.serialize_entry("value", if *f > 0.0 { "Infinity" } else { "-Infinity" })?
            }
            Value::Real(f) => m.serialize_entry("value", f)?,
            Value::Text(t) => match std::str::from_utf8(t) {
                Ok(s) => m.serialize_entry("value", s)?,
                Err(_) => m.serialize_entry(
                    "base64",
                    &base64::engine::general_purpose::STANDARD.encode(t),
                )?,
            },
            Value::Blob(b) => m.serialize_entry(
                "base64",
                &base64::engine::general_purpose::STANDARD.encode(b),
            )?,
        }
        m.end()
    }
}

/// About how many bytes `v` takes in a Hrana JSON message: what clone pages and push requests
/// are sized by, to stay well under sqld's 10 MB cap.
pub fn json_size(v: &Value) -> usize {
    match v {
        Value::Null => 16,
        Value::Integer(_) | Value::Real(_) => 40,
        Value::Text(s) => s.len() + 30,
        Value::Blob(b) => b.len() * 4 / 3 + 30,
    }
}

/// What a `value` field held before the `type` field said how to read it.
enum Scalar {
    Str(String),
    Num(f64),
    Int(i64),
    Null,
}

struct ScalarVisitor;

impl<'de> Visitor<'de> for ScalarVisitor {
    type Value = Scalar;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a string, a number or null")
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Scalar, E> {
        Ok(Scalar::Str(v.to_owned()))
    }
    fn visit_string<E: de::Error>(self, v: String) -> Result<Scalar, E> {
        Ok(Scalar::Str(v))
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Scalar, E> {
        Ok(Scalar::Num(v))
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Scalar, E> {
        Ok(Scalar::Int(v))
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Scalar, E> {
        i64::try_from(v)
            .map(Scalar::Int)
            .map_err(|_| E::custom("integer out of range"))
    }
    fn visit_unit<E: de::Error>(self) -> Result<Scalar, E> {
        Ok(Scalar::Null)
    }
}

impl<'de> Deserialize<'de> for Scalar {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Scalar, D::Error> {
        d.deserialize_any(ScalarVisitor)
    }
}

impl<'de> Deserialize<'de> for Value {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Value, D::Error> {
        d.deserialize_map(ValueVisitor)
    }
}

struct ValueVisitor;

#[derive(Deserialize)]
#[serde(field_identifier, rename_all = "lowercase")]
enum Field {
    Type,
    Value,
    Base64,
    #[serde(other)]
    Other,
}

impl<'de> Visitor<'de> for ValueVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a Hrana value object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut kind: Option<String> = None;
        let mut scalar: Option<Scalar> = None;
        let mut b64: Option<String> = None;
        while let Some(key) = map.next_key::<Field>()? {
            match key {
                Field::Type => kind = Some(map.next_value()?),
                Field::Value => scalar = Some(map.next_value()?),
                Field::Base64 => b64 = Some(map.next_value()?),
                Field::Other => {
                    map.next_value::<de::IgnoredAny>()?;
                }
            }
        }
        let kind = kind.ok_or_else(|| de::Error::missing_field("type"))?;
        Ok(match (kind.as_str(), scalar) {
            ("null", _) => Value::Null,
            ("integer", Some(Scalar::Str(s))) => Value::Integer(
                s.parse()
                    .map_err(|_| de::Error::custom(format!("bad integer {s:?}")))?,
            ),
            ("integer", Some(Scalar::Int(i))) => Value::Integer(i),
            ("float", Some(Scalar::Num(f))) => Value::Real(f),
            ("float", Some(Scalar::Int(i))) => Value::Real(i as f64),
            ("float", Some(Scalar::Str(s))) if s == "Infinity" => Value::Real(f64::INFINITY),
            ("float", Some(Scalar::Str(s))) if s == "-Infinity" => Value::Real(f64::NEG_INFINITY),
            // JSON has no infinity: the server writes a non-finite REAL as null.
            ("float", Some(Scalar::Null)) => return Err(de::Error::custom(NON_FINITE)),
            ("text", Some(Scalar::Str(s))) => Value::Text(s.into_bytes()),
            ("text", None) => Value::Text(decode_base64(b64)?),
            ("blob", _) => Value::Blob(decode_base64(b64)?),
            (other, _) => {
                return Err(de::Error::custom(format!(
                    "unexpected Hrana value of type {other:?}"
                )))
            }
        })
    }
}

/// A `base64` field, padded or not (sqld leaves the padding out).
fn decode_base64<E: de::Error>(b64: Option<String>) -> Result<Vec<u8>, E> {
    let text = b64.ok_or_else(|| de::Error::missing_field("base64"))?;
    base64::engine::general_purpose::STANDARD_NO_PAD
        .decode(text.trim_end_matches('='))
        .map_err(|e| de::Error::custom(format!("bad base64: {e}")))
}

/// Whether sqld's JSON parser (serde_json without exact float parsing) reads the number we
/// write for `f` back as `f`. It mirrors that parser: the digits as an integer significand, then
/// one multiplication or division by an exactly written power of ten (two steps below 1e-308).
pub fn survives_sqld_json(f: f64) -> bool {
    if !f.is_finite() {
        return false;
    }
    let text = match serde_json::to_string(&f) {
        Ok(t) => t,
        Err(_) => return false,
    };
    let (mantissa, exp) = match text.split_once(['e', 'E']) {
        Some((m, e)) => (m, e.parse::<i32>().unwrap_or(0)),
        None => (text.as_str(), 0),
    };
    let (negative, mantissa) = match mantissa.strip_prefix('-') {
        Some(m) => (true, m),
        None => (false, mantissa),
    };
    let (int, frac) = mantissa.split_once('.').unwrap_or((mantissa, ""));
    let Ok(significand) = format!("{int}{frac}").parse::<u64>() else {
        return false;
    };
    let mut exponent = exp - frac.len() as i32;
    let pow10 = |k: i32| format!("1e{k}").parse::<f64>().unwrap_or(f64::INFINITY);
    let mut v = significand as f64;
    loop {
        if exponent.unsigned_abs() <= 308 {
            if exponent >= 0 {
                v *= pow10(exponent);
            } else {
                v /= pow10(-exponent);
            }
            break;
        }
        if v == 0.0 || exponent > 0 {
            break;
        }
        v /= 1e308;
        exponent += 308;
    }
    let v = if negative { -v } else { v };
    v.to_bits() == f.to_bits()
}

/// The decoding error for an infinite REAL; the client turns it into a clear message.
pub const NON_FINITE: &str = "non-finite REAL value (Infinity) cannot be carried over Hrana JSON";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_round_trip_through_json() {
        for v in [
            Value::Null,
            Value::Integer(i64::MIN),
            Value::Real(-0.0),
            Value::Real(5e-324),
            Value::text("q\"\n"),
            Value::Text(vec![0xe9, 0]),
            Value::Real(f64::INFINITY),
            Value::Real(f64::NEG_INFINITY),
            Value::Blob(vec![]),
            Value::Blob(vec![1, 2, 3, 4]),
        ] {
            let json = serde_json::to_string(&v).unwrap();
            let back: Value = serde_json::from_str(&json).unwrap();
            assert_eq!(back, v, "{json}");
        }
    }

    #[test]
    fn value_fields_may_come_in_any_order() {
        let v: Value = serde_json::from_str(r#"{"value":"7","type":"integer"}"#).unwrap();
        assert_eq!(v, Value::Integer(7));
        let v: Value = serde_json::from_str(r#"{"base64":"AA","type":"blob"}"#).unwrap();
        assert_eq!(v, Value::Blob(vec![0]));
    }
}
