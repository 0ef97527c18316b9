//! What a database holds, read the same way from the remote and from a local file.
//!
//! The schema is read with plain SQL (`sqlite_schema`, `PRAGMA table_list`, `table_xinfo`,
//! `index_list`) so one reader serves both sides; only the way the statements travel differs
//! (see [`Catalog`]).

use crate::sql;
use crate::value::Value;

/// Runs read-only statements and returns every row of each, in order.
pub trait Catalog {
    type Error;
    fn query_all(
        &mut self,
        stmts: &[(String, Vec<Value>)],
    ) -> Result<Vec<Vec<Vec<Value>>>, Self::Error>;
}

impl Catalog for &rusqlite::Connection {
    type Error = rusqlite::Error;
    fn query_all(
        &mut self,
        stmts: &[(String, Vec<Value>)],
    ) -> rusqlite::Result<Vec<Vec<Vec<Value>>>> {
        stmts
            .iter()
            .map(|(q, args)| {
                let mut st = self.prepare_cached(q)?;
                let n = st.column_count();
                let rows = st.query_map(rusqlite::params_from_iter(args.iter()), |r| {
                    (0..n).map(|i| r.get::<_, Value>(i)).collect()
                })?;
                rows.collect()
            })
            .collect()
    }
}

impl Catalog for &crate::remote::Remote {
    type Error = crate::remote::RemoteError;
    fn query_all(
        &mut self,
        stmts: &[(String, Vec<Value>)],
    ) -> Result<Vec<Vec<Vec<Value>>>, Self::Error> {
        let stmts = stmts
            .iter()
            .map(|(sql, args)| crate::remote::Stmt {
                sql: sql.clone(),
                args: args.clone(),
                want_rows: true,
            })
            .collect();
        self.execute_many(stmts)?
            .into_iter()
            .map(|r| r.map(|res| res.rows))
            .collect()
    }
}

/// A column as stored; generated columns are kept in the list but never read or written as
/// data, because SQLite computes them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Column {
    pub name: String,
    pub decl_type: String,
    /// 1-based position in the primary key, 0 when not part of it.
    pub pk: u32,
    pub generated: bool,
    /// The DEFAULT expression as SQL text, which is what rows had in a column that `ALTER
    /// TABLE ADD COLUMN` appended.
    pub default: Option<String>,
}

/// How a table stores its rows, which says how a row is found and identified.
///
/// ```text
/// CREATE TABLE t(id INTEGER PRIMARY KEY, v)           Rowid { ipk: Some(0), alias: Some("rowid"), declared: [] }
/// CREATE TABLE t(id INTEGER PRIMARY KEY DESC, v)      Rowid { ipk: None, alias: Some("rowid"), declared: [0] }
///                                                     (DESC makes it no rowid alias: SQLite gives it an index)
/// CREATE TABLE t(email TEXT PRIMARY KEY, v)           Rowid { ipk: None, alias: Some("rowid"), declared: [0] }
/// CREATE TABLE t(v, rowid)                            Rowid { ipk: None, alias: Some("_rowid_"), declared: [] }
/// CREATE TABLE t(rowid, _rowid_, oid)                 Rowid { ipk: None, alias: None, declared: [] }
///                                                     (the rowid cannot be read: refused where needed)
/// CREATE TABLE t(a, b, PRIMARY KEY(b, a)) WITHOUT ROWID   Primary([1, 0])
/// CREATE VIRTUAL TABLE t USING fts5(x)                Virtual
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RowKey {
    /// A rowid table. `ipk` is the INTEGER PRIMARY KEY column that is the rowid, if any;
    /// otherwise the rowid is a hidden value read and written through `alias`. `declared` is
    /// the table's own PRIMARY KEY when it is not the rowid (TEXT, composite), in key order:
    /// then that key identifies a row, and the hidden rowid only locates it.
    Rowid {
        ipk: Option<usize>,
        alias: Option<String>,
        declared: Vec<usize>,
    },
    /// A WITHOUT ROWID table, by its primary key columns in key order.
    Primary(Vec<usize>),
    /// A virtual table: its rows live in its shadow tables.
    Virtual,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Table {
    pub name: String,
    pub sql: String,
    pub columns: Vec<Column>,
    pub key: RowKey,
    /// A shadow table of a virtual table (an FTS5 index, say). `CREATE VIRTUAL TABLE` makes
    /// it, and may put rows in it at once.
    pub shadow: bool,
}

impl Table {
    /// The columns that hold data: every column that is not generated.
    pub fn stored(&self) -> impl Iterator<Item = (usize, &Column)> {
        self.columns
            .iter()
            .enumerate()
            .filter(|(_, c)| !c.generated)
    }

    /// Whether rows carry a rowid that no column holds, which data rows then lead with.
    pub fn has_hidden_rowid(&self) -> bool {
        matches!(self.key, RowKey::Rowid { ipk: None, .. })
    }

    /// The names of the values in a data row: the hidden rowid first (if the table has one),
    /// then every stored column. Both reading and writing use this one order.
    pub fn data_names(&self) -> Result<Vec<String>, SchemaError> {
        let mut cols = Vec::with_capacity(self.columns.len() + 1);
        if self.has_hidden_rowid() {
            cols.push(self.rowid_alias()?.to_owned());
        }
        cols.extend(self.stored().map(|(_, c)| c.name.clone()));
        Ok(cols)
    }

    /// [`Table::data_names`], quoted.
    pub fn data_columns(&self) -> Result<Vec<String>, SchemaError> {
        Ok(self.data_names()?.iter().map(|c| sql::ident(c)).collect())
    }

    /// The name that reaches the hidden rowid.
    pub fn rowid_alias(&self) -> Result<&str, SchemaError> {
        match &self.key {
            RowKey::Rowid { alias: Some(a), .. } => Ok(a),
            _ => Err(SchemaError::RowidShadowed(self.name.clone())),
        }
    }

    /// Positions, within a data row, of the values that identify the row: the declared
    /// PRIMARY KEY whatever the table's storage, else the rowid. Rows of two sides with the same
    /// values there are the same row.
    ///
    /// ```text
    /// CREATE TABLE t(id INTEGER PRIMARY KEY, v)            row (id, v)         -> [0]
    /// CREATE TABLE t(v)                                    row (rowid, v)      -> [0]
    /// CREATE TABLE t(email TEXT PRIMARY KEY, v)            row (rowid, email, v) -> [1]
    /// CREATE TABLE t(v, a, b, PRIMARY KEY(b, a))           row (rowid, v, a, b) -> [3, 2]
    /// CREATE TABLE t(a, g AS (a+1), b, PRIMARY KEY(b)) WITHOUT ROWID  row (a, b) -> [1]
    /// ```
    pub fn key_positions(&self) -> Vec<usize> {
        match &self.key {
            RowKey::Rowid { declared, .. } if !declared.is_empty() => {
                declared.iter().map(|&c| self.stored_position(c)).collect()
            }
            _ => self.scan_key_positions(),
        }
    }

    /// The quoted expressions of [`Table::key_positions`], in key order.
    pub fn key_exprs(&self) -> Result<Vec<String>, SchemaError> {
        match &self.key {
            RowKey::Rowid { declared, .. } if !declared.is_empty() => Ok(declared
                .iter()
                .map(|&c| sql::ident(&self.columns[c].name))
                .collect()),
            _ => self.scan_key_exprs(),
        }
    }

    /// Where the hidden rowid sits in a data row when it locates a row without identifying
    /// it (a rowid table with a declared TEXT or composite PRIMARY KEY): it is copied, so
    /// clones stay exact, but it is no data of the row. `None` for every other table.
    pub fn locator(&self) -> Option<usize> {
        match &self.key {
            RowKey::Rowid {
                ipk: None,
                declared,
                ..
            } if !declared.is_empty() => Some(0),
            _ => None,
        }
    }

    /// Positions of the B-tree's own key within a data row: the rowid of a rowid table, the
    /// primary key of a WITHOUT ROWID table. The order rows are stored in, so the cheapest to
    /// page through (clone).
    pub fn scan_key_positions(&self) -> Vec<usize> {
        match &self.key {
            RowKey::Rowid { ipk: None, .. } => vec![0],
            RowKey::Rowid { ipk: Some(c), .. } => vec![self.stored_position(*c)],
            RowKey::Primary(cols) => cols.iter().map(|c| self.stored_position(*c)).collect(),
            RowKey::Virtual => vec![],
        }
    }

    /// The quoted expressions of [`Table::scan_key_positions`], for `ORDER BY` and paging.
    pub fn scan_key_exprs(&self) -> Result<Vec<String>, SchemaError> {
        Ok(match &self.key {
            RowKey::Rowid { ipk: None, .. } => vec![sql::ident(self.rowid_alias()?)],
            RowKey::Rowid { ipk: Some(c), .. } => vec![sql::ident(&self.columns[*c].name)],
            RowKey::Primary(cols) => cols
                .iter()
                .map(|c| sql::ident(&self.columns[*c].name))
                .collect(),
            RowKey::Virtual => vec![],
        })
    }

    /// Where stored column `col` sits in a data row (after the hidden rowid, if any).
    fn stored_position(&self, col: usize) -> usize {
        let offset = usize::from(self.has_hidden_rowid());
        self.stored()
            .position(|(i, _)| i == col)
            .map(|p| p + offset)
            .unwrap_or(0)
    }
}

/// Indexes, views and triggers: replayed from their SQL text, after the data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Object {
    pub kind: ObjectKind,
    pub name: String,
    pub table: String,
    pub sql: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum ObjectKind {
    Index,
    View,
    Trigger,
}

impl ObjectKind {
    /// `DROP INDEX IF EXISTS "name"` and the like: an object may already be gone with its
    /// table, which is dropped after it in the same transaction or was dropped before.
    pub fn drop_sql(self, name: &str) -> String {
        format!(
            "DROP {} IF EXISTS {}",
            self.as_str().to_uppercase(),
            sql::ident(name)
        )
    }

    pub fn as_str(self) -> &'static str {
        match self {
            ObjectKind::Index => "index",
            ObjectKind::View => "view",
            ObjectKind::Trigger => "trigger",
        }
    }
}

/// Everything tursync copies from a database, in `sqlite_schema` order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Schema {
    /// User tables, shadow tables and virtual tables; internal tables are left out.
    pub tables: Vec<Table>,
    pub objects: Vec<Object>,
    /// Whether `sqlite_sequence` exists (some table uses AUTOINCREMENT).
    pub has_sequence: bool,
    pub user_version: i64,
    pub application_id: i64,
    /// Internal tables that exist but are not copied, for the record.
    pub skipped: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum SchemaError {
    #[error("table {0:?} has columns named rowid, _rowid_ and oid, so its rowid cannot be read")]
    RowidShadowed(String),
    #[error("unexpected schema row: {0}")]
    Malformed(String),
}

/// Tables that belong to SQLite, libSQL, Litestream or Turso Sync's clients rather than to the
/// app. They are never copied (`sqlite_sequence` is copied on its own, after the data).
pub fn is_internal(name: &str) -> bool {
    let n = name.to_ascii_lowercase();
    n.starts_with("sqlite_")
        || n.starts_with("_litestream_")
        || n.starts_with("libsql_")
        || n.starts_with("__turso_internal")
        || matches!(
            n.as_str(),
            "turso_cdc" | "turso_cdc_version" | "turso_sync_last_change_id"
        )
}

/// A catalog cell that holds a name or SQL text: TEXT in UTF-8, or an error naming `what` was
/// read and what came instead.
pub(crate) fn text(v: &Value, what: &str) -> Result<String, SchemaError> {
    match v {
        Value::Text(t) => String::from_utf8(t.clone()).map_err(|_| {
            SchemaError::Malformed(format!(
                "{what} is TEXT that is not UTF-8: {}",
                sql::literal(v)
            ))
        }),
        other => Err(unexpected(what, "TEXT", other)),
    }
}

/// Like [`text`], with NULL read as `None` (the SQL of an automatic index, a column without a
/// default).
fn text_or_null(v: &Value, what: &str) -> Result<Option<String>, SchemaError> {
    match v {
        Value::Null => Ok(None),
        v => text(v, what).map(Some),
    }
}

fn int(v: &Value, what: &str) -> Result<i64, SchemaError> {
    match v {
        Value::Integer(i) => Ok(*i),
        other => Err(unexpected(what, "an INTEGER", other)),
    }
}

fn unexpected(what: &str, expected: &str, got: &Value) -> SchemaError {
    SchemaError::Malformed(format!(
        "{what}: expected {expected}, read {} {}",
        got.type_name(),
        sql::literal(got)
    ))
}

/// The cell `i` of a catalog row, or an error naming the row.
fn cell<'r>(row: &'r [Value], i: usize, what: &str) -> Result<&'r Value, SchemaError> {
    row.get(i)
        .ok_or_else(|| SchemaError::Malformed(format!("{what}: a row with {} cells", row.len())))
}

/// The single integer a pragma or an aggregate answered.
fn single_int(rows: &[Vec<Value>], what: &str) -> Result<i64, SchemaError> {
    match rows {
        [row] => int(cell(row, 0, what)?, what),
        _ => Err(SchemaError::Malformed(format!(
            "{what}: expected one row, read {}",
            rows.len()
        ))),
    }
}

/// Errors of the catalog, or of the rows it returned.
#[derive(Debug, thiserror::Error)]
pub enum LoadError<E> {
    #[error(transparent)]
    Source(E),
    #[error(transparent)]
    Schema(#[from] SchemaError),
}

/// Reads the schema in two round trips: the object list, then every table's columns. The
/// same statements run on either side ([`Catalog`]), so a remote and a local file holding the
/// same database give equal `Schema`s.
///
/// ```text
/// CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT);  CREATE INDEX t_v ON t(v);  (AUTOINCREMENT elsewhere)
///   -> tables: [t (columns id, v; key Rowid { ipk: Some(0), .. })]
///      objects: [Index t_v on t]     has_sequence: true
///      sqlite_sequence, sqlite_stat1, _litestream_* and libsql_* tables are never listed as tables
///      (internal ones go to `skipped`); automatic indexes (no SQL) are no objects
/// ```
pub fn load<C: Catalog>(mut cat: C) -> Result<Schema, LoadError<C::Error>> {
    let first = cat
        .query_all(&[
            (
                "SELECT type, name, tbl_name, sql FROM sqlite_schema ORDER BY rowid".into(),
                vec![],
            ),
            // Plain pragmas, filtered here (see `sql::pragma_of`): schema, name, type, ncol,
            // wr, strict.
            ("PRAGMA main.table_list".into(), vec![]),
            ("PRAGMA user_version".into(), vec![]),
            ("PRAGMA application_id".into(), vec![]),
        ])
        .map_err(LoadError::Source)?;
    let [objects, kinds, uv, aid]: [Vec<Vec<Value>>; 4] = first
        .try_into()
        .map_err(|_| SchemaError::Malformed("wrong number of results".into()))?;

    let mut schema = Schema {
        user_version: single_int(&uv, "PRAGMA user_version")?,
        application_id: single_int(&aid, "PRAGMA application_id")?,
        ..Schema::default()
    };
    let mut kinds_by_name = std::collections::HashMap::new();
    for r in &kinds {
        let what = "PRAGMA table_list";
        if text(cell(r, 0, what)?, "PRAGMA table_list: schema")? != "main" {
            continue;
        }
        kinds_by_name.insert(
            text(cell(r, 1, what)?, "PRAGMA table_list: name")?,
            (
                text(cell(r, 2, what)?, "PRAGMA table_list: type")?,
                int(cell(r, 4, what)?, "PRAGMA table_list: wr")? != 0,
            ),
        );
    }

    let mut tables = Vec::new();
    for row in &objects {
        let [ty, name, tbl, sqltext] = match row.as_slice() {
            [a, b, c, d] => [a, b, c, d],
            _ => return Err(SchemaError::Malformed(format!("sqlite_schema row {row:?}")).into()),
        };
        let name = text(name, "sqlite_schema.name")?;
        let what = |field: &str| format!("sqlite_schema.{field} of {name:?}");
        let ty = text(ty, &what("type"))?;
        let tbl = text(tbl, &what("tbl_name"))?;
        let sqltext = text_or_null(sqltext, &what("sql"))?;
        if name.eq_ignore_ascii_case("sqlite_sequence") {
            schema.has_sequence = true;
            continue;
        }
        if is_internal(&name) || is_internal(&tbl) {
            if ty == "table" {
                schema.skipped.push(name);
            }
            continue;
        }
        // Automatic indexes have no SQL: their table's definition makes them.
        let Some(sqltext) = sqltext else {
            continue;
        };
        match ty.as_str() {
            "table" => {
                let (kind, without_rowid) = kinds_by_name.remove(&name).ok_or_else(|| {
                    SchemaError::Malformed(format!(
                        "table {name:?} is in sqlite_schema but not in PRAGMA table_list"
                    ))
                })?;
                tables.push((name, sqltext, kind, without_rowid));
            }
            "index" | "view" | "trigger" => schema.objects.push(Object {
                kind: match ty.as_str() {
                    "index" => ObjectKind::Index,
                    "view" => ObjectKind::View,
                    _ => ObjectKind::Trigger,
                },
                name,
                table: tbl,
                sql: sqltext,
            }),
            other => {
                return Err(SchemaError::Malformed(format!(
                    "{}: unknown object type {other:?}",
                    what("type")
                ))
                .into())
            }
        }
    }

    let mut stmts = Vec::with_capacity(tables.len() * 2);
    for (name, ..) in &tables {
        // cid, name, type, notnull, dflt_value, pk, hidden.
        stmts.push((sql::pragma_of("table_xinfo", name), vec![]));
        // seq, name, unique, origin, partial.
        stmts.push((sql::pragma_of("index_list", name), vec![]));
    }
    let details = if stmts.is_empty() {
        Vec::new()
    } else {
        cat.query_all(&stmts).map_err(LoadError::Source)?
    };
    for ((name, sqltext, kind, without_rowid), pair) in tables.into_iter().zip(details.chunks(2)) {
        let [cols, indexes] = pair else {
            return Err(SchemaError::Malformed("missing table details".into()).into());
        };
        let mut columns = Vec::with_capacity(cols.len());
        for r in cols {
            let what = |field: &str| format!("PRAGMA table_xinfo({name:?}): {field}");
            let hidden = int(cell(r, 6, &what("hidden"))?, &what("hidden"))?;
            // Hidden columns of virtual tables hold no data of their own.
            if hidden == 1 {
                continue;
            }
            let column = text(cell(r, 1, &what("name"))?, &what("name"))?;
            let what = |field: &str| format!("PRAGMA table_xinfo({name:?}): {field} of {column:?}");
            let pk = int(cell(r, 5, &what("pk"))?, &what("pk"))?;
            columns.push(Column {
                decl_type: text(cell(r, 2, &what("type"))?, &what("type"))?,
                pk: u32::try_from(pk).map_err(|_| {
                    SchemaError::Malformed(format!("{}: {pk} is no key position", what("pk")))
                })?,
                generated: matches!(hidden, 2 | 3),
                default: text_or_null(cell(r, 4, &what("dflt_value"))?, &what("dflt_value"))?,
                name: column,
            });
        }
        let mut has_pk_index = false;
        for r in indexes {
            let what = format!("PRAGMA index_list({name:?}): origin");
            has_pk_index |= text(cell(r, 3, &what)?, &what)? == "pk";
        }
        let key = if kind == "virtual" {
            RowKey::Virtual
        } else if without_rowid {
            let mut pk: Vec<(u32, usize)> = columns
                .iter()
                .enumerate()
                .filter(|(_, c)| c.pk > 0)
                .map(|(i, c)| (c.pk, i))
                .collect();
            pk.sort();
            RowKey::Primary(pk.into_iter().map(|(_, i)| i).collect())
        } else {
            let pk_cols: Vec<usize> = (0..columns.len()).filter(|&i| columns[i].pk > 0).collect();
            // A rowid table's primary key is the rowid itself exactly when SQLite made no
            // index for it (INTEGER PRIMARY KEY); any other primary key gets an autoindex.
            let ipk = match pk_cols.as_slice() {
                [c] if !has_pk_index => Some(*c),
                _ => None,
            };
            let alias = ["rowid", "_rowid_", "oid"]
                .into_iter()
                .find(|a| !columns.iter().any(|c| c.name.eq_ignore_ascii_case(a)))
                .map(str::to_owned);
            // Any other primary key identifies the row in its place.
            let declared = if ipk.is_none() {
                let mut pk: Vec<(u32, usize)> =
                    pk_cols.iter().map(|&i| (columns[i].pk, i)).collect();
                pk.sort();
                pk.into_iter().map(|(_, i)| i).collect()
            } else {
                Vec::new()
            };
            RowKey::Rowid {
                ipk,
                alias,
                declared,
            }
        };
        schema.tables.push(Table {
            name,
            sql: sqltext,
            columns,
            key,
            shadow: kind == "shadow",
        });
    }
    Ok(schema)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_sqlites_unique_failure_messages() {
        assert_eq!(
            parse_unique_failure("UNIQUE constraint failed: users.email"),
            Some(UniqueFailure::Columns {
                table: "users",
                columns: vec!["email"]
            })
        );
        assert_eq!(
            parse_unique_failure("SQLite error: UNIQUE constraint failed: t.a, t.b"),
            Some(UniqueFailure::Columns {
                table: "t",
                columns: vec!["a", "b"]
            })
        );
        assert_eq!(
            parse_unique_failure("UNIQUE constraint failed: index 'it_v'"),
            Some(UniqueFailure::Index("it_v"))
        );
        assert_eq!(
            parse_unique_failure("Runtime error: UNIQUE constraint failed: parent.name (19)"),
            Some(UniqueFailure::Columns {
                table: "parent",
                columns: vec!["name"]
            })
        );
        assert_eq!(
            parse_unique_failure("NOT NULL constraint failed: t.a"),
            None
        );
    }

    /// A catalog answering canned rows: the first request gets `first`, the second `details`.
    struct Canned(Vec<Vec<Vec<Vec<Value>>>>);

    impl Catalog for Canned {
        type Error = std::convert::Infallible;
        fn query_all(
            &mut self,
            _: &[(String, Vec<Value>)],
        ) -> Result<Vec<Vec<Vec<Value>>>, Self::Error> {
            Ok(self.0.remove(0))
        }
    }

    fn first(objects: Vec<Vec<Value>>, uv: Value) -> Vec<Vec<Vec<Value>>> {
        // PRAGMA table_list: schema, name, type, ncol, wr, strict.
        let list = vec![vec![
            Value::text("main"),
            Value::text("t"),
            Value::text("table"),
            Value::Integer(1),
            Value::Integer(0),
            Value::Integer(0),
        ]];
        vec![objects, list, vec![vec![uv]], vec![vec![Value::Integer(0)]]]
    }

    fn table_row(name: Value) -> Vec<Value> {
        let create = Value::text("CREATE TABLE t(a)");
        vec![Value::text("table"), name, Value::text("t"), create]
    }

    fn details(pk: Value) -> Vec<Vec<Vec<Value>>> {
        // PRAGMA table_xinfo: cid, name, type, notnull, dflt_value, pk, hidden; no index.
        let col = vec![
            Value::Integer(0),
            Value::text("a"),
            Value::text(""),
            Value::Integer(0),
            Value::Null,
            pk,
            Value::Integer(0),
        ];
        vec![vec![col], vec![]]
    }

    fn error(c: Canned) -> String {
        match load(c) {
            Err(LoadError::Schema(e)) => e.to_string(),
            other => panic!("expected a schema error, got {other:?}"),
        }
    }

    #[test]
    fn reads_a_well_formed_catalog() {
        let s = load(Canned(vec![
            first(vec![table_row(Value::text("t"))], Value::Integer(3)),
            details(Value::Integer(0)),
        ]))
        .unwrap();
        assert_eq!(s.user_version, 3);
        assert_eq!(s.tables[0].columns[0].name, "a");
    }

    /// The plain pragmas take each name as a quoted literal: a quote, a CR LF and a
    /// WITHOUT ROWID table's key read as from the table-valued ones.
    #[test]
    fn reads_tables_whose_names_need_quoting() {
        let conn = rusqlite::Connection::open_in_memory().unwrap();
        conn.execute_batch(
            "CREATE TABLE \"it's\r\nodd\"(id INTEGER PRIMARY KEY, \"b'c\" TEXT DEFAULT 'q');
             CREATE TABLE w(k TEXT, j INT, v, PRIMARY KEY (j, k)) WITHOUT ROWID;
             CREATE TABLE u(id TEXT PRIMARY KEY, v);",
        )
        .unwrap();
        let s = load(&conn).unwrap();
        let odd = &s.tables[0];
        assert_eq!(odd.name, "it's\r\nodd");
        assert_eq!(odd.columns[1].name, "b'c");
        assert_eq!(odd.columns[1].default.as_deref(), Some("'q'"));
        assert!(matches!(odd.key, RowKey::Rowid { ipk: Some(0), .. }));
        assert!(matches!(&s.tables[1].key, RowKey::Primary(k) if k == &[1, 0]));
        assert!(
            matches!(&s.tables[2].key, RowKey::Rowid { ipk: None, declared, .. } if declared == &[0])
        );
    }

    #[test]
    fn unexpected_cells_are_errors_naming_what_was_read() {
        let e = error(Canned(vec![first(
            vec![table_row(Value::Integer(7))],
            Value::Integer(0),
        )]));
        assert!(
            e.contains("sqlite_schema.name") && e.contains("integer 7"),
            "{e}"
        );
        let e = error(Canned(vec![first(
            vec![table_row(Value::Text(vec![0xe9]))],
            Value::Integer(0),
        )]));
        assert!(e.contains("not UTF-8"), "{e}");
        let e = error(Canned(vec![first(
            vec![table_row(Value::text("t"))],
            Value::text("3"),
        )]));
        assert!(e.contains("PRAGMA user_version"), "{e}");
        let e = error(Canned(vec![
            first(vec![table_row(Value::text("t"))], Value::Integer(0)),
            details(Value::Real(1.0)),
        ]));
        assert!(e.contains("pk of \"a\"") && e.contains("real"), "{e}");
    }
}

/// What SQLite's message for a broken UNIQUE (or PRIMARY KEY) constraint names.
#[derive(Debug, PartialEq, Eq)]
pub enum UniqueFailure<'a> {
    /// `UNIQUE constraint failed: users.email` (or `t.a, t.b`): the table and its columns.
    Columns {
        table: &'a str,
        columns: Vec<&'a str>,
    },
    /// `UNIQUE constraint failed: index 'it_v'`: an index, possibly on expressions.
    Index(&'a str),
}

/// Reads SQLite's message for a broken UNIQUE constraint, wherever it sits in `message` (sqld
/// prefixes it with `SQLite error: `). The one place that knows its wording:
///
/// ```text
/// "UNIQUE constraint failed: users.email"      -> Columns { table: "users", columns: ["email"] }
/// "SQLite error: UNIQUE constraint failed: t.a, t.b" -> Columns { table: "t", columns: ["a", "b"] }
/// "UNIQUE constraint failed: index 'it_v'"     -> Index("it_v")
/// "NOT NULL constraint failed: t.a"            -> None
/// ```
pub fn parse_unique_failure(message: &str) -> Option<UniqueFailure<'_>> {
    let (_, what) = message.split_once("UNIQUE constraint failed: ")?;
    let what = what.trim();
    // tursodb ends the message with SQLite's result code: `… parent.name (19)`.
    let what = match what.rsplit_once(" (") {
        Some((head, code))
            if code
                .strip_suffix(')')
                .is_some_and(|c| !c.is_empty() && c.bytes().all(|b| b.is_ascii_digit())) =>
        {
            head
        }
        _ => what,
    };
    if let Some(index) = what
        .strip_prefix("index '")
        .and_then(|i| i.strip_suffix('\''))
    {
        return Some(UniqueFailure::Index(index));
    }
    let named: Vec<(&str, &str)> = what
        .split(", ")
        .map(|c| c.split_once('.'))
        .collect::<Option<_>>()?;
    let table = named.first()?.0;
    Some(UniqueFailure::Columns {
        table,
        columns: named.iter().map(|(_, c)| *c).collect(),
    })
}

/// A foreign key column of the working copy: `child.from REFERENCES parent(to)`, with `to`
/// resolved to the parent's primary key where the declaration leaves it out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ForeignKey {
    pub child: String,
    /// Which of the child's foreign keys this column belongs to (`pragma_foreign_key_list`'s
    /// `id`): the columns of a composite key share it, in key order.
    pub id: i64,
    pub from: String,
    pub parent: String,
    pub to: String,
    /// The `ON DELETE` action as SQLite names it: `NO ACTION`, `RESTRICT`, `CASCADE`,
    /// `SET NULL` or `SET DEFAULT`.
    pub on_delete: String,
}

/// Every foreign key of every table of `conn`'s main database, a column each, composite keys
/// in key order.
pub fn foreign_keys(conn: &rusqlite::Connection) -> rusqlite::Result<Vec<ForeignKey>> {
    let mut st = conn.prepare(
        "SELECT m.name, f.id, f.\"from\", f.\"table\",
                coalesce(f.\"to\", (SELECT p.name FROM pragma_table_info(f.\"table\") p WHERE p.pk = f.seq + 1)),
                f.on_delete
         FROM sqlite_schema m JOIN pragma_foreign_key_list(m.name) f
         WHERE m.type = 'table' ORDER BY m.name, f.id, f.seq",
    )?;
    let rows = st.query_map([], |r| {
        Ok((
            r.get::<_, String>(0)?,
            r.get::<_, i64>(1)?,
            r.get::<_, String>(2)?,
            r.get::<_, String>(3)?,
            r.get::<_, Option<String>>(4)?,
            r.get::<_, String>(5)?,
        ))
    })?;
    let mut out = Vec::new();
    for row in rows {
        let (child, id, from, parent, to, on_delete) = row?;
        // A parent without a matching primary key column is an error SQLite itself reports
        // on use; nothing here can point at it.
        if let Some(to) = to {
            out.push(ForeignKey {
                child,
                id,
                from,
                parent,
                to,
                on_delete,
            });
        }
    }
    Ok(out)
}

/// The tables whose foreign keys a change to `touched` may break: the touched tables
/// themselves (a new or changed child row) and every table referencing one of them (a parent
/// row deleted or re-keyed under its children).
pub fn foreign_key_scope<'a>(
    fks: &[ForeignKey],
    touched: impl IntoIterator<Item = &'a str>,
) -> std::collections::BTreeSet<String> {
    let mut scope = std::collections::BTreeSet::new();
    for t in touched {
        if fks.iter().any(|f| f.child == t) {
            scope.insert(t.to_owned());
        }
        for f in fks.iter().filter(|f| f.parent.eq_ignore_ascii_case(t)) {
            scope.insert(f.child.clone());
        }
    }
    scope
}

/// A row whose foreign key points at nothing, as SQLite's `foreign_key_check` lists it: the
/// child table, its rowid (`None` in a WITHOUT ROWID table), the parent table and which of
/// the child's foreign keys (`fkid`, as in `pragma_foreign_key_list`).
pub type Orphan = (String, Option<i64>, String, i64);
