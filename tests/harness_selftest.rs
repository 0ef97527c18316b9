//! Checks the test harness itself against a real sqld, so that the other
//! integration tests can trust it: auth behaves as the tests assume, and
//! values are decoded with their exact storage class and bits.
//! Uses nothing from the `tursync` crate.

use crate::common::{assert_table_eq, local_query, tempdir, Cell, Sqld};
use serde_json::json;

fn execute(sql: &str) -> serde_json::Value {
    json!({"baton": null, "requests": [{"type": "execute", "stmt": {"sql": sql}}, {"type": "close"}]})
}

#[test]
fn auth_levels() {
    let sqld = Sqld::start();

    let (status, body) = sqld.pipeline_raw(None, &execute("select 1"));
    assert_eq!(status, 401, "no token: {body}");
    let (status, body) = sqld.pipeline_raw(Some("not-a-jwt"), &execute("select 1"));
    assert_eq!(status, 401, "bad token: {body}");

    sqld.exec("create table t(x); insert into t values (1), (2);");
    assert_eq!(
        sqld.query("select x from t order by x"),
        vec![vec![Cell::Integer(1)], vec![Cell::Integer(2)]]
    );

    let (status, body) =
        sqld.pipeline_raw(Some(&sqld.ro_token), &execute("select count(*) from t"));
    assert_eq!(status, 200, "ro read: {body}");
    assert!(
        body.contains(r#"{"type":"integer","value":"2"}"#),
        "ro read: {body}"
    );

    // A write with a read-only token fails the whole pipeline with HTTP 403
    // and a body `{"error":"Authorization forbidden: ... Write permission ..."}`,
    // not with an error entry in `results`.
    let (status, body) =
        sqld.pipeline_raw(Some(&sqld.ro_token), &execute("insert into t values (3)"));
    assert_eq!(status, 403, "ro write: {body}");
    assert!(body.contains("Write permission"), "ro write: {body}");
    assert_eq!(
        sqld.query("select count(*) from t"),
        vec![vec![Cell::Integer(2)]]
    );
}

const EDGE_VALUES: &str =
    "select -0.0, 0.0, 5e-324, 0.1 + 0.2, 1.7976931348623157e308, 2.2250738585072011e-308, \
     -9223372036854775808, 9223372036854775807, 0, '', x'', NULL, 'é\u{1F600}', x'00fbff'";

#[test]
fn decodes_values_exactly() {
    let sqld = Sqld::start();
    let rows = sqld.query(EDGE_VALUES);
    assert_eq!(
        rows,
        vec![vec![
            Cell::Real(0x8000_0000_0000_0000),
            Cell::Real(0),
            Cell::Real(1),
            Cell::Real(0x3FD3_3333_3333_3334),
            Cell::real(f64::MAX),
            // The classic hard case for decimal parsers: largest subnormal.
            Cell::Real(0x000F_FFFF_FFFF_FFFF),
            Cell::Integer(i64::MIN),
            Cell::Integer(i64::MAX),
            Cell::Integer(0),
            Cell::text(""),
            Cell::Blob(vec![]),
            Cell::Null,
            Cell::text("é\u{1F600}"),
            Cell::Blob(vec![0x00, 0xfb, 0xff]),
        ]]
    );
    assert_eq!(rows, local_query_in_memory(EDGE_VALUES));
}

/// The same statement through rusqlite, via a scratch file (`local_query` only opens files).
fn local_query_in_memory(sql: &str) -> Vec<Vec<Cell>> {
    let dir = tempdir();
    let path = dir.path().join("scratch.db");
    rusqlite::Connection::open(&path).expect("create scratch db");
    local_query(&path, sql)
}

#[test]
fn same_script_gives_equal_tables_remote_and_local() {
    let script = "create table t(id integer primary key, v);
        insert into t(v) values (1), (-0.0), (1.5), ('1'), (x'01'), (null), (''), (x'');";
    let sqld = Sqld::start();
    sqld.exec(script);
    let dir = tempdir();
    let local = dir.path().join("local.db");
    rusqlite::Connection::open(&local)
        .expect("create local db")
        .execute_batch(script)
        .expect("run script locally");
    assert_table_eq(&sqld, &local, "select id, v, typeof(v) from t order by id");
}

#[test]
fn restart_keeps_data_url_and_tokens() {
    let mut sqld = Sqld::start();
    sqld.exec("create table t(x); insert into t values (42);");
    let url = sqld.url.clone();
    sqld.restart();
    assert_eq!(sqld.url, url);
    assert_eq!(sqld.query("select x from t"), vec![vec![Cell::Integer(42)]]);
}

#[test]
#[should_panic(expected = "non-finite REAL")]
fn infinity_is_reported_not_decoded() {
    Sqld::start().query("select 1e999");
}

#[test]
#[should_panic(expected = "exited during restart")]
fn restart_reports_a_taken_port() {
    let mut sqld = Sqld::start();
    sqld.kill();
    let addr = sqld.url.trim_start_matches("http://");
    let _squatter = std::net::TcpListener::bind(addr).expect("bind the killed server's port");
    sqld.restart();
}
