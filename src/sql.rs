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
    push_text(&mut out, s);
    out
}

fn push_text(out: &mut String, s: &str) {
    // A NUL inside a literal would cut the statement short in most loaders, so such strings
    // are spelled as a cast blob, which keeps every byte.
    if s.contains('\0') {
        out.push_str("CAST(");
        push_blob(out, s.as_bytes());
        out.push_str(" AS TEXT)");
        return;
    }
    out.push('\'');
    for c in s.chars() {
        if c == '\'' {
            out.push('\'');
        }
        out.push(c);
    }
    out.push('\'');
}

fn push_blob(out: &mut String, b: &[u8]) {
    out.push_str("X'");
    for byte in b {
        let _ = write!(out, "{byte:02X}");
    }
    out.push('\'');
}

/// Appends `v` as a SQL literal that SQLite reads back as the same class and bytes.
pub fn push_literal(out: &mut String, v: &Value) {
    match v {
        Value::Null => out.push_str("NULL"),
        Value::Integer(i) => {
            let _ = write!(out, "{i}");
        }
        Value::Real(f) => push_real(out, *f),
        Value::Text(s) => push_text(out, s),
        Value::Blob(b) => push_blob(out, b),
    }
}

/// Appends `q` with each `?` placeholder (outside quotes) replaced by the literal of the next
/// argument: the text form of a parameterized statement.
pub fn push_bound(out: &mut String, q: &str, args: &[Value]) {
    let mut args = args.iter();
    let mut quote = None;
    for c in q.chars() {
        match (quote, c) {
            (Some(open), c) if c == open => quote = None,
            (None, '"' | '\'' | '`') => quote = Some(c),
            (None, '[') => quote = Some(']'),
            (None, '?') => {
                if let Some(v) = args.next() {
                    push_literal(out, v);
                    continue;
                }
            }
            _ => {}
        }
        out.push(c);
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
    let _ = write!(out, "(CAST({m} AS REAL)");
    let op = if e < 0 { '/' } else { '*' };
    let mut left = e.unsigned_abs();
    while left > 0 {
        let step = left.min(62);
        let _ = write!(out, "{op}{}", 1u64 << step);
        left -= step;
    }
    out.push(')');
}

/// Rewrites a parameterized statement so that the REAL arguments `inline` picks travel in the
/// text instead: each `?` or `?N` whose argument is such a REAL becomes [`push_exact_real`]'s
/// expression, and the remaining placeholders are renumbered over the remaining arguments.
pub fn inline_reals(q: &str, args: &[Value], inline: impl Fn(f64) -> bool) -> (String, Vec<Value>) {
    let inlined = |v: &Value| matches!(v, Value::Real(f) if inline(*f));
    if !args.iter().any(inlined) {
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
                    Some(Value::Real(f)) if inline(*f) => push_exact_real(&mut out, *f),
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

#[cfg(test)]
mod tests {
    use super::*;
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
            &[Value::Integer(1), Value::Text("?".into())],
        );
        assert_eq!(out, "UPDATE \"a?\" SET 'x?' = 1 WHERE [b?] = '?'");
    }

    #[test]
    fn reals_are_inlined_exactly_and_placeholders_renumbered() {
        let args = [
            Value::Integer(7),
            Value::Real(0.1),
            Value::Text("?".into()),
            Value::Real(-5e-324),
        ];
        let (q, kept) = inline_reals("SELECT ?, ?, \"a?\", ?, ?4, ?1", &args, |_| true);
        assert_eq!(kept, vec![Value::Integer(7), Value::Text("?".into())]);
        assert!(
            q.starts_with("SELECT ?1, (CAST(") && q.ends_with(", ?1"),
            "{q}"
        );
        let conn = rusqlite::Connection::open_in_memory().unwrap();
        let row: Vec<Value> = conn
            .query_row(&q, rusqlite::params_from_iter(kept.iter()), |r| {
                (0..6).map(|i| r.get(i)).collect()
            })
            .unwrap();
        assert_eq!(row[1], Value::Real(0.1));
        assert_eq!(row[4], Value::Real(-5e-324));
        assert_eq!(row[3], Value::Text("?".into()));
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
    }

    #[test]
    fn identifiers_quote_everything() {
        assert_eq!(ident("a\"b"), "\"a\"\"b\"");
        assert_eq!(ident("select"), "\"select\"");
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
            Value::Text("it's\n\t\\ \u{1F600} \u{0}x".into()),
            Value::Text(String::new()),
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
